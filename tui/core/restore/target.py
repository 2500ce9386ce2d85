"""Preparing the target before pg_restore runs: the operator's confirmation, the other sessions
(listed, ended only when asked), the safety backup, the roles a drill creates, emptying the
schemas the archive restores (in batches that fit the server's lock table), the owners flags
and the session settings for pg_restore, and running blocking SQL so that cancelling it
cancels the query on the server."""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
from collections.abc import Callable
from dataclasses import replace
from typing import Any

import psycopg
from psycopg import sql

from tui.core.errors import ConfigError, OperationFailed, PgRunbookError
from tui.core.events import Emit, Notice, PhaseStarted
from tui.core.inventory import BackupEntry, load_entry
from tui.core.locks import lock_batches, lock_table
from tui.core.restore.request import (
    Ask,
    ConfirmationNeeded,
    RestoreRequest,
    SessionsConnected,
    default_jobs,
    undo_command,
)
from tui.core.restore.safety import decide
from tui.core.restore.scope import TargetKind
from tui.core.restore.source import preview_backup, sha256_matches
from tui.core.roles import create_missing, roles_path_for
from tui.core.settings import Settings, Target


def _user_tables(conn: psycopg.Connection[Any]) -> int:
    row = conn.execute(
        """SELECT count(*) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE c.relkind IN ('r', 'p', 'm')
             AND n.nspname NOT IN ('pg_catalog', 'information_schema')
             AND n.nspname NOT LIKE 'pg\\_toast%'
             AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                             AND d.objid = c.oid AND d.deptype = 'e')"""
    ).fetchone()
    return int(row[0]) if row else 0


def _other_sessions(conn: psycopg.Connection[Any], dbname: str) -> list[tuple[Any, ...]]:
    return conn.execute(
        """SELECT pid, usename, application_name, client_addr::text, state,
                  date_trunc('second', now() - coalesce(xact_start, backend_start))::text
           FROM pg_stat_activity
           WHERE datname = %s AND pid <> pg_backend_pid() AND backend_type = 'client backend'
           ORDER BY backend_start""",
        [dbname],
    ).fetchall()


def _describe_sessions(rows: list[tuple[Any, ...]]) -> str:
    return "; ".join(
        f"pid {r[0]} {r[1]} ({r[2] or 'no application name'}) from {r[3] or 'local socket'}, "
        f"{r[4] or '?'} for {r[5]}" for r in rows[:5]
    ) + (f"; and {len(rows) - 5} more" if len(rows) > 5 else "")


def _owners_flags(request: RestoreRequest, target: Target, kind: TargetKind) -> list[str]:
    """keep: owners and grants as the archive has them; drop: neither (--no-owner
    --no-privileges); auto: objects become the operator's (--no-owner) unless a superuser
    restores a production target, and grants are always restored, so the API roles'
    privileges come back (a grant to a role the target lacks is a listed warning)."""
    if request.create_roles or request.owners == "keep":
        return []
    if request.owners == "drop":
        return ["--no-owner", "--no-privileges"]
    return [] if kind.superuser and target.production else ["--no-owner"]


def typed_confirmation_reason(target: Target, safety_backup: bool = True) -> str:
    """Why writing to `target` needs its database name typed, or "" when a yes will do."""
    if target.production:
        return ("it is a production target" if target.production_reason.startswith("named")
                else target.production_reason)
    if target.overridden:
        return "the environment moved the settings file's target to this endpoint"
    if not safety_backup:
        return "the safety backup is skipped"
    return ""


def confirmation_needed(settings: Settings, request: RestoreRequest) -> ConfirmationNeeded | None:
    """What a face asks before a restore job starts (the job itself never asks), or None when
    the request's own flags decide (they confirm it, or the job refuses with why)."""
    target = settings.target
    why = typed_confirmation_reason(target, request.safety_backup)
    if request.confirm_name is not None or (request.confirmed and not why):
        return None
    return ConfirmationNeeded(target, preview_backup(settings, request.backup), bool(why), why)


def confirmed_request(request: RestoreRequest, confirmation: ConfirmationNeeded,
                      answer: str | None) -> RestoreRequest:
    """The request confirmed by the operator's answer, for exactly the backup they were shown;
    an answer that does not confirm raises, and nothing is changed."""
    if confirmation.typed_name_required:
        if answer != confirmation.target.dbname:
            raise OperationFailed("the typed name did not match; nothing was changed.")
        return replace(request, backup=confirmation.backup, confirm_name=answer)
    if (answer or "").strip().lower() not in ("y", "yes"):
        raise OperationFailed("not confirmed; nothing was changed.")
    return replace(request, backup=confirmation.backup, confirmed=True)


async def _confirm(target: Target, backup: str, request: RestoreRequest, ask: Ask | None) -> None:
    why = typed_confirmation_reason(target, request.safety_backup)
    typed_required = bool(why)
    if request.confirm_name is not None:
        if request.confirm_name != target.dbname:
            raise ConfigError(
                f"--confirm {request.confirm_name!r} does not match the database of target "
                f"{target.name!r} ({target.describe()}); nothing was changed.",
                f"Type the database name of target {target.name!r} exactly.",
            )
        return
    if request.confirmed and not typed_required:
        return
    if ask is None:
        if typed_required:
            raise ConfigError(
                f"refusing to restore into {target.name!r} ({target.describe()}) without its "
                f"database name typed, because {why}; --yes alone is not enough.",
                f"Add --confirm {target.dbname} if that endpoint is the one to overwrite.",
            )
        raise ConfigError(
            f"restoring replaces the data in {target.name!r} ({target.describe()}): confirm it.",
            "Add --yes, or run on a terminal to be asked.",
        )
    answer = await ask(ConfirmationNeeded(target, backup, typed_required, why))
    if typed_required and answer != target.dbname:
        raise OperationFailed("the typed name did not match; nothing was changed.")
    if not typed_required and (answer or "").strip().lower() not in ("y", "yes"):
        raise OperationFailed("not confirmed; nothing was changed.")


async def _handle_sessions(conn: psycopg.Connection[Any], target: Target,
                           request: RestoreRequest, emit: Emit) -> None:
    sessions = _other_sessions(conn, target.dbname)
    if not sessions:
        return
    listing = _describe_sessions(sessions)
    if not request.terminate_connections:
        raise SessionsConnected(
            f"{len(sessions)} other session(s) are connected to {target.dbname!r}: {listing}.",
            "Put the application in maintenance mode and retry, or add "
            "--terminate-connections to end them.",
        )
    emit(Notice("warning", f"ending {len(sessions)} session(s) on {target.dbname!r}: {listing}"))
    _terminate(conn, target.dbname)


def _terminate(conn: psycopg.Connection[Any], dbname: str) -> None:
    try:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s "
            "AND pid <> pg_backend_pid() AND backend_type = 'client backend'"
            " AND application_name <> 'pgrunbook'",
            [dbname],
        )
    except psycopg.errors.InsufficientPrivilege:
        raise OperationFailed(
            "the target user may not end other sessions (needs pg_signal_backend).",
            "Stop the application (maintenance mode) so its sessions close, then retry.",
        ) from None


async def _blocking(conn: psycopg.Connection[Any], fn: Callable[..., Any], *args: Any) -> Any:
    """Run a blocking database call in a thread; cancelling cancels the server-side query."""
    task = asyncio.ensure_future(asyncio.to_thread(fn, *args))
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        with contextlib.suppress(Exception):
            conn.cancel_safe()
        with contextlib.suppress(BaseException):
            await task
        raise


# What DROP statement each kind of relation takes, and the order the batches drop them in:
# what depends on tables first (views), partitions before their parents, sequences last.
_DROP_KINDS = {"v": "VIEW", "m": "MATERIALIZED VIEW", "f": "FOREIGN TABLE", "r": "TABLE",
               "p": "TABLE", "S": "SEQUENCE"}


def _relations_to_drop(conn: psycopg.Connection[Any],
                       schemas: list[str]) -> list[tuple[str, str, str, int]]:
    """(kind, schema, name, locks) of the relations in `schemas` that DROP SCHEMA would drop,
    in an order that drops dependents first; `locks` counts the relation, its indexes and its
    TOAST table and index. Extension members are left to DROP SCHEMA (with their extension),
    and sequences owned by a column to their table."""
    rows = conn.execute(
        """SELECT c.relkind::text, n.nspname::text, c.relname::text,
                  1 + CASE WHEN c.reltoastrelid <> 0 THEN 2 ELSE 0 END
                    + (SELECT count(*) FROM pg_index i WHERE i.indrelid = c.oid)::int
           FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
           WHERE n.nspname = ANY(%s) AND c.relkind IN ('r', 'p', 'v', 'm', 'f', 'S')
             AND NOT EXISTS (SELECT 1 FROM pg_depend d WHERE d.classid = 'pg_class'::regclass
                             AND d.objid = c.oid AND (d.deptype = 'e' OR (c.relkind = 'S'
                                 AND d.deptype IN ('a', 'i')
                                 AND d.refclassid = 'pg_class'::regclass)))
           ORDER BY CASE WHEN c.relkind IN ('v', 'm') THEN 0 WHEN c.relkind = 'f' THEN 1
                         WHEN c.relispartition AND c.relkind = 'r' THEN 2
                         WHEN c.relispartition THEN 3 WHEN c.relkind = 'r' THEN 4
                         WHEN c.relkind = 'p' THEN 5 ELSE 6 END,
                    n.nspname, c.relname""", [schemas]).fetchall()
    return [(str(r[0]), str(r[1]), str(r[2]), int(r[3])) for r in rows]


def _drop_batch(conn: psycopg.Connection[Any], batch: list[tuple[str, str, str, int]]) -> None:
    """One DROP ... IF EXISTS ... CASCADE per run of one kind (an earlier drop in the batch, or
    an earlier batch, may have taken a relation with it already)."""
    i = 0
    while i < len(batch):
        word = _DROP_KINDS[batch[i][0]]
        j = i
        while j < len(batch) and _DROP_KINDS[batch[j][0]] == word:
            j += 1
        conn.execute(sql.SQL("DROP {} IF EXISTS {} CASCADE").format(
            sql.SQL(word), sql.SQL(", ").join(
                sql.Identifier(schema, name) for _k, schema, name, _l in batch[i:j])))
        i = j


def _replace_schemas(conn: psycopg.Connection[Any], schemas: list[str], emit: Emit,
                     target: Target | None = None, safety: str | None = None) -> list[str]:
    """Empty the schemas the archive restores, so the target ends up exactly as the backup.

    `pg_restore --clean` alone drops only what the archive holds: objects created since (a view
    on a restored table, say) make its DROPs fail, and partitions' inherited keys cannot be
    dropped at all. The safety backup taken just before holds everything dropped here.

    A drop locks every relation it removes (each table with its indexes and TOAST table) until
    its transaction ends, and the server's lock table holds only so many: the relations go in
    batches, each a transaction of its own that fits (`LockTable.batch`), and the last batch
    goes with the DROP SCHEMAs. A target whose relations fit one batch is emptied in one
    transaction, all or nothing; a larger one can be left partly emptied by a failure, which
    then says so and how to undo it with the safety backup.
    """
    existing = {str(r[0]) for r in conn.execute("SELECT nspname FROM pg_namespace").fetchall()}
    todo = sorted((set(schemas) & existing) - {"pg_catalog", "information_schema"})
    if not todo:
        return []
    locks = lock_table(conn)
    relations = _relations_to_drop(conn, todo)
    batches = lock_batches(relations, lambda r: r[3], locks.batch) or [[]]
    dropped = 0  # relations dropped by committed transactions

    def changed() -> str:
        if dropped == 0:
            return "nothing was changed."
        undo = (f"restore the safety backup to undo: {undo_command(target, safety)}"
                if target is not None and safety else "no safety backup was taken")
        return (f"the target is PARTLY EMPTIED: {dropped:,} of {len(relations):,} tables, "
                f"views and sequences in {', '.join(todo)} were dropped before this "
                f"(in batches, to fit the server's lock table); {undo}.")

    if len(batches) > 1:
        emit(Notice("info", f"emptying {', '.join(todo)}: {len(relations):,} relations in "
                            f"{len(batches)} transactions that fit the server's lock table"))
    try:
        for number, batch in enumerate(batches, 1):
            with conn.transaction():
                _drop_batch(conn, batch)
                if number == len(batches):
                    for schema in todo:
                        conn.execute(sql.SQL("DROP SCHEMA {} CASCADE").format(
                            sql.Identifier(schema)))
                        if schema == "public":  # pg_dump leaves `public` for initdb to create
                            _recreate_public(conn)
            dropped += len(batch)
    except psycopg.errors.InsufficientPrivilege as exc:
        raise OperationFailed(
            f"the target user may not replace the schemas the backup restores: {exc}; "
            + changed(),
            "Restore as the schemas' owner, or with --app-schemas-only on Supabase.",
        ) from None
    except psycopg.errors.LockNotAvailable:
        raise OperationFailed(
            "another session holds a lock on the target's tables (lock timeout); " + changed(),
            "End the application's sessions (--terminate-connections, maintenance mode) or "
            "retry with a longer --lock-timeout.",
        ) from None
    except psycopg.errors.OutOfMemory:
        # SQLSTATE 53200: the lock table is full even for one batch (other sessions hold
        # most of it, or one table has that many indexes and partitions).
        busiest = max((sum(r[3] for r in b) for b in batches), default=0)
        raise locks.too_small("emptying the schemas the backup restores", busiest,
                              "its largest batch of tables, indexes and TOAST tables",
                              changed()) from None
    emit(Notice("info", f"emptied the schemas the backup restores: {', '.join(todo)}"))
    return todo


def _recreate_public(conn: psycopg.Connection[Any]) -> None:
    """`public` as initdb makes it; the archive then applies only its differences."""
    row = conn.execute("SELECT current_setting('server_version_num')::int").fetchone()
    version = int(row[0]) if row else 0
    if version >= 150000:
        conn.execute("CREATE SCHEMA public AUTHORIZATION pg_database_owner")
        conn.execute("GRANT USAGE ON SCHEMA public TO PUBLIC")
    else:
        conn.execute("CREATE SCHEMA public")
        conn.execute("GRANT USAGE, CREATE ON SCHEMA public TO PUBLIC")
    conn.execute("COMMENT ON SCHEMA public IS 'standard public schema'")


def _roles_sql(entry: BackupEntry) -> str | None:
    """The backup's roles file, when it has one and it matches its checksum."""
    info = (entry.meta or {}).get("roles_sql") or {}
    path = roles_path_for(entry.path)
    if not info.get("sha256") or not path.exists():
        return None
    data = path.read_bytes()
    if hashlib.sha256(data).hexdigest() != info["sha256"]:
        raise OperationFailed(
            f"{path.name} does not match the checksum in {entry.name}'s metadata.",
            "The roles file is damaged: drill another backup, or remove the file to create "
            "the roles without their attributes.")
    return data.decode("utf-8")


def _create_roles(conn: psycopg.Connection[Any], entry: BackupEntry, emit: Emit,
                  superusers: set[str]) -> list[str]:
    """The roles the archive names, for a restore into a fresh cluster (a drill): from the
    backup's roles file with their attributes and memberships (no passwords), else NOLOGIN;
    event triggers' owners must be superusers and are made so. Existing roles are left as
    they are."""
    assert entry.meta is not None
    text = _roles_sql(entry)
    made: list[str] = []
    if text is not None:
        result = create_missing(conn, text)
        made += result.created
        for failure in result.failed:
            emit(Notice("warning", f"roles file: not applied: {failure}"))
    existing = {str(r[0]): bool(r[1]) for r in
                conn.execute("SELECT rolname, rolsuper FROM pg_roles").fetchall()}
    plain = []
    for role in entry.meta.get("roles") or []:
        if role not in existing:
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
            plain.append(role)
    raised = []
    for role in sorted(superusers):
        if role in made + plain and not existing.get(role, False):
            conn.execute(sql.SQL("ALTER ROLE {} SUPERUSER").format(sql.Identifier(role)))
            raised.append(role)
    notes = []
    if made:
        notes.append(f"created {len(made)} role(s) from the backup's roles file (attributes "
                     "and memberships, without passwords)")
    if plain:
        notes.append(f"created {len(plain)} role(s) the archive names as NOLOGIN, without "
                     "attributes or memberships"
                     + ("" if text else " (the backup has no roles file)"))
    if raised:
        notes.append(f"made superusers, to own event triggers: {', '.join(raised)}")
    for note in notes:
        emit(Notice("info", note))
    return notes


async def _safety_backup(settings: Settings, request: RestoreRequest, entry: BackupEntry,
                         tables: int, missing_db: bool, emit: Emit,
                         conn: psycopg.Connection[Any] | None = None) -> tuple[str | None, str]:
    """(the safety backup's name or None, what was done, in one sentence). With a
    `request.safety_candidate` (the runbook's emergency backup, --safety-backup NAME), that
    backup stands as the safety backup when nothing has been written since its snapshot
    (`tui.core.restore.safety`); otherwise a fresh one is taken and the reason said."""
    # Imported here: tui.core.backup imports tui.core.restore.scope, which loads this package.
    from tui.core.backup import BackupRequest, run_backup

    target = settings.target
    if missing_db:
        note = f"database {target.dbname!r} does not exist yet: no safety backup needed."
        emit(Notice("info", note))
        return None, note
    if tables == 0:
        note = f"database {target.dbname!r} holds no tables: no safety backup needed."
        emit(Notice("info", note))
        return None, note
    if not request.safety_backup:
        note = "safety backup skipped by the operator (--no-safety-backup, confirmed)."
        emit(Notice("warning", note))
        return None, note
    fresh_because = ""
    if request.safety_candidate and conn is not None:
        reuse = await asyncio.to_thread(decide, settings, conn, request.safety_candidate)
        if reuse.entry is not None:
            emit(PhaseStarted("safety backup", f"checking {reuse.entry.name}"))
            if await asyncio.to_thread(sha256_matches, reuse.entry, emit):
                note = (f"safety backup {reuse.entry.name} reused, not taken again: "
                        f"{reuse.why}.")
                emit(Notice("info", note))
                return reuse.entry.name, note
            fresh_because = f"{reuse.entry.name}'s checksum does not match its metadata"
        else:
            fresh_because = reuse.why
        emit(Notice("info", f"taking a fresh safety backup: {request.safety_candidate} cannot "
                            f"stand in for one, because {fresh_because}."))
    emit(PhaseStarted("safety backup", f"of {target.name}'s current state"))
    try:
        safety = await run_backup(settings, BackupRequest(
            label="emergency_pre_rollback", kind="emergency",
            reason=f"safety backup before restoring {entry.name}"
                   + (f": {request.reason}" if request.reason else ""),
            origin=request.origin, lock_wait_timeout=request.lock_timeout,
        ), emit)
    except PgRunbookError as exc:
        raise OperationFailed(
            f"the safety backup failed, so the restore did not start: {exc.message}",
            exc.hint,
        ) from None
    check = load_entry(safety.path)
    if not (check.complete and await asyncio.to_thread(sha256_matches, check)):
        raise OperationFailed(
            f"the safety backup {safety.name} did not verify, so the restore did not start.",
            "Check the backup disk, then retry.",
        )
    note = f"safety backup {safety.name} taken and verified" + (
        f" ({request.safety_candidate} could not stand in: {fresh_because})."
        if fresh_because else ".")
    emit(Notice("info", note))
    return safety.name, note


def session_options(conn: psycopg.Connection[Any], settings: Settings,
                    request: RestoreRequest) -> dict[str, str]:
    """Settings for pg_restore's sessions (PGOPTIONS): more memory for building indexes and
    constraints (PostgreSQL's advice for loading data: "Increase maintenance_work_mem"),
    RESTORE_INDEX_MEMORY shared among the jobs, never less than the server's own setting.

    Not the lock timeout: pg_restore starts every session with the archive's `SET lock_timeout
    = 0`, which would override it. The DROPs that could queue behind the application are
    pgrunbook's own, emptying the archive's schemas under `--lock-timeout` before pg_restore
    starts; pg_restore's `--clean` then finds nothing to drop."""
    options: dict[str, str] = {}
    jobs = request.jobs or default_jobs()
    share_mb = settings.restore_index_memory // (1024 * 1024) // jobs
    row = conn.execute("SELECT setting::bigint FROM pg_settings "
                       "WHERE name = 'maintenance_work_mem'").fetchone()  # in kB
    if row and share_mb * 1024 > int(row[0]):
        options["maintenance_work_mem"] = f"{share_mb}MB"
    return options
