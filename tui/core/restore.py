"""Restoring a backup into a target without losing data.

Before the target is touched, in this order: the archive's SHA-256 matches its metadata and
pg_restore can read it; the pg_restore found is new enough for the archive; the target answers;
the operator confirms (a production target needs its database name typed); other sessions on the
target are listed (and ended only when asked); a safety backup of the target's current state is
taken and verified. Then the schemas the archive restores are emptied, pg_restore runs from a
regular local file with what the target may not take left out (`restore_scope`), and exact row
counts and the application's state are compared with the backup's. pg_restore's errors are
classified (`restore_errors`): known-harmless ones are warnings, any other fails the restore.
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import json
import os
import re
import shutil
import signal
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from tui.core.archive import Toc, TocEntry, container_of, read_toc
from tui.core.audit import AuditLog
from tui.core.backup import BackupRequest, run_backup, secrets_of
from tui.core.dataoffsets import DataEntry, DataIndexer, NotIndexable
from tui.core.errors import ConfigError, OperationFailed, PgRunbookError
from tui.core.events import Emit, Notice, PhaseStarted, Progress, RestoreLine, ignore
from tui.core.fsutil import atomic_write_bytes, ensure_private_dir, publish, temp_path_for
from tui.core.inventory import HASH_CHUNK, BackupEntry, list_backups, load_entry, sha256_file
from tui.core.locks import lock_batches, lock_table, take_advisory_lock, target_lock_file
from tui.core.metadata import ARCHIVE_SUFFIX, meta_path_for, write_meta
from tui.core.oplog import OperationLog
from tui.core.pgtools import DatabaseMissing, PgTool, connect, find_tool, libpq_env
from tui.core.restore_errors import ErrorReader, RestoreError, Warned, classify
from tui.core.restore_scope import (
    EntryName,
    LeftOut,
    ManagedData,
    OutsideDependents,
    TargetKind,
    deferred_foreign_keys,
    detect_kind,
    managed_data,
    names_of,
    plan_entries,
)
from tui.core.roles import create_missing, roles_path_for
from tui.core.s3 import S3Config, s3_config
from tui.core.settings import Settings, Target
from tui.core.verify import (
    ACL_DESCS,
    SLOT_GRACE,
    TableVerifier,
    VerifyReport,
    table_blockers,
    verify_counts,
)

MAX_DEFAULT_JOBS = 8


@dataclass(frozen=True)
class RestoreRequest:
    backup: str
    jobs: int | None = None
    reason: str | None = None
    confirm_name: str | None = None  # the typed database name (--confirm NAME)
    confirmed: bool = False  # --yes: enough for a non-production target only
    terminate_connections: bool = False
    safety_backup: bool = True
    owners: str = "auto"  # keep | drop | auto (drop for non-production targets)
    app_schemas_only: bool = False
    lock_timeout: str = "30s"
    verify: bool = True
    create_roles: bool = False  # drills: create the roles the source had, then keep owners
    origin: str = "cli"


@dataclass(frozen=True)
class ConfirmationNeeded:
    """What the face shows the operator before anything is changed."""

    target: Target
    backup: str
    typed_name_required: bool
    reason: str  # why typing is required, or ""


# Returns the operator's answer: the typed name, or "yes".
Ask = Callable[[ConfirmationNeeded], Awaitable[str | None]]


@dataclass
class RestoreResult:
    backup: str
    target: Target
    safety_backup: str | None
    safety_note: str
    seconds: float
    restore_seconds: float
    filtered: list[str] = field(default_factory=list)  # entries left out, with why
    verify: VerifyReport | None = None
    undo_command: str | None = None
    target_kind: str = "superuser"
    # pg_restore's errors known to be harmless on this kind of target, as warnings.
    warnings: list[str] = field(default_factory=list)
    not_restored: list[str] = field(default_factory=list)  # tables whose data was left out
    recreated: list[str] = field(default_factory=list)  # outside objects put back
    gone: list[str] = field(default_factory=list)  # outside objects the restore lost
    notes: list[str] = field(default_factory=list)  # what a fresh cluster got (roles made)

    @property
    def passed(self) -> bool:
        """The verdict: the verification passed and nothing outside the restore was lost."""
        return (self.verify is None or self.verify.passed) and not self.gone


class SessionsConnected(OperationFailed):
    """Other sessions use the target database and ending them was not asked for."""


class RestoreFailed(OperationFailed):
    """pg_restore reported errors that are not known to be harmless; `result` holds the
    verification that still ran after it."""

    result: RestoreResult | None = None


def default_jobs() -> int:
    return max(1, min(os.cpu_count() or 1, MAX_DEFAULT_JOBS))


# -- choosing the backup -----------------------------------------------------------------------


def resolve_backup(settings: Settings, spec: str, emit: Emit = ignore) -> BackupEntry:
    """`latest`, a path to an archive, a backup's name as `list` shows it, or the SOP's S3 key
    `<prefix>YYYYMMDD_HHMMSS/database.backup`. A backup only in S3 is downloaded first."""
    s3 = s3_config(settings)
    key_match = re.fullmatch(r"(?:.*/)?(\d{8}_\d{6})/database\.backup", spec)
    if key_match and s3 is not None and not Path(spec).exists():
        return fetch_from_s3(settings, s3, key_match.group(1), emit)
    if spec == "latest":
        for entry in list_backups(settings.backup_dir):
            if not entry.complete or entry.kind == "emergency":
                continue  # never a partial one, and never a safety copy of a bad state
            newer_remote = _newest_remote(settings, s3, after=entry)
            if newer_remote is not None and s3 is not None:
                return fetch_from_s3(settings, s3, newer_remote, emit)
            if sha256_matches(entry):
                return entry
        remote = _newest_remote(settings, s3, after=None)
        if remote is not None and s3 is not None:
            return fetch_from_s3(settings, s3, remote, emit)
        raise OperationFailed(
            f"no complete backup with a matching checksum in {settings.backup_dir}"
            + (" or S3" if s3 else "") + ".",
            "Check `pgrunbook list --verify`, or name a backup explicitly.",
        )
    path = Path(spec).expanduser()
    if "/" in spec or spec.endswith(ARCHIVE_SUFFIX):
        if not path.exists():
            raise ConfigError(f"no backup file at {spec}.", "Check the path (pgrunbook list).")
        return load_entry(path.resolve())
    candidate = settings.backup_dir / f"{spec}{ARCHIVE_SUFFIX}"
    if not candidate.exists() and not (settings.backup_dir / f"{spec}{ARCHIVE_SUFFIX}.meta").exists():
        if s3 is not None and re.match(r"\d{8}_\d{6}", spec):
            return fetch_from_s3(settings, s3, spec[:15], emit)
        raise ConfigError(f"no backup named {spec!r} in {settings.backup_dir}"
                          + (" or S3" if s3 else "") + ".",
                          "Run `pgrunbook list` to see the names.")
    return load_entry(candidate)


def _newest_remote(settings: Settings, s3: S3Config | None,
                   after: BackupEntry | None) -> str | None:
    """The stamp of the newest complete non-emergency backup that exists only in S3 and is
    newer than `after` (a local candidate)."""
    if s3 is None:
        return None
    from tui.core.s3 import list_s3

    local = {e.name[:15] for e in list_backups(settings.backup_dir)}
    best = None
    for stamp, rb in list_s3(s3).backups.items():
        if stamp in local or rb.meta is None or rb.archive_key is None:
            continue
        if rb.meta.get("kind") == "emergency":
            continue
        if after is not None and stamp <= after.name[:15]:
            continue
        if best is None or stamp > best:
            best = stamp
    return best


def fetch_from_s3(settings: Settings, s3: S3Config, stamp: str, emit: Emit) -> BackupEntry:
    """Download a backup from S3 into BACKUP_DIR and verify it against metadata.json."""
    from tui.core.s3 import ARCHIVE_KEY, META_KEY, describe_error, download

    client = s3.client()
    meta_key = s3.key_for(stamp, META_KEY)
    try:
        meta = json.loads(client.get_object(Bucket=s3.bucket, Key=meta_key)["Body"].read())
    except Exception as exc:
        raise OperationFailed(
            f"backup {stamp} in S3 has no readable metadata.json ({describe_error(exc)}): "
            "it is incomplete or missing.",
            "Choose another backup (pgrunbook list).",
        ) from None
    name = str(meta["name"])
    ensure_private_dir(settings.backup_dir)
    final = settings.backup_dir / f"{name}{ARCHIVE_SUFFIX}"
    if final.exists():
        return load_entry(final)
    tmp = temp_path_for(final)
    key = s3.key_for(stamp, ARCHIVE_KEY)
    record = AuditLog(settings.backup_dir, secrets_of(settings)).start(
        "download", target=None, arguments={"backup": name, "bucket": s3.bucket, "key": key},
        reason=None)
    try:
        emit(PhaseStarted("downloading", f"s3://{s3.bucket}/{key}"))
        started = time.monotonic()
        download(s3, key, tmp, lambda done, total: emit(
            Progress("download", done, total, time.monotonic() - started)))
        if sha256_file(tmp) != meta["archive"]["sha256"]:
            raise OperationFailed(
                f"the copy of {name} in S3 is damaged: its SHA-256 differs from metadata.json. "
                "Nothing was changed.",
                "Use another backup, and check the bucket (pgrunbook list).",
            )
        publish(tmp, final)
        _fetch_roles(client, s3, stamp, final, meta, emit)
        write_meta(meta_path_for(final), meta)
    except BaseException as exc:
        tmp.unlink(missing_ok=True)
        message = exc.message if isinstance(exc, PgRunbookError) else \
            f"{exc.__class__.__name__}: {exc}"
        record.finish("interrupted" if isinstance(exc, KeyboardInterrupt | asyncio.CancelledError)
                      else "failed", message, backup=name)
        raise
    record.finish("ok", None, backup=name, sha256=meta["archive"]["sha256"])
    emit(Notice("info", f"downloaded {name} from S3 and verified its checksum."))
    return load_entry(final)


def _fetch_roles(client: Any, s3: S3Config, stamp: str, final: Path, meta: dict[str, Any],
                 emit: Emit) -> None:
    """The backup's roles.sql beside the downloaded archive, checked against the metadata; a
    backup without one (or whose copy is unreadable) restores all the same."""
    from tui.core.s3 import ROLES_KEY, describe_error

    want = (meta.get("roles_sql") or {}).get("sha256")
    if not want:
        return
    try:
        data = client.get_object(Bucket=s3.bucket, Key=s3.key_for(stamp, ROLES_KEY))["Body"].read()
    except Exception as exc:
        emit(Notice("warning", f"roles.sql of {stamp} not fetched ({describe_error(exc)}): "
                               "a drill creates the roles without their attributes."))
        return
    if hashlib.sha256(data).hexdigest() != want:
        emit(Notice("warning", f"roles.sql of {stamp} in S3 does not match its checksum; "
                               "not kept."))
        return
    atomic_write_bytes(roles_path_for(final), data)


def sha256_matches(entry: BackupEntry, emit: Emit = ignore) -> bool:
    if entry.sha256 is None:
        return False
    digest = hashlib.sha256()
    started = time.monotonic()
    done, last = 0, 0.0
    with entry.path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
            done += len(chunk)
            now = time.monotonic()
            if now - last > 0.25:
                last = now
                emit(Progress("checksum", done, entry.size_bytes, now - started))
    return digest.hexdigest() == entry.sha256


def check_metadata(entry: BackupEntry) -> None:
    """A backup is restorable only with complete metadata (its checksum) and its archive."""
    if entry.meta is None or "archive missing" in entry.problems:
        raise OperationFailed(
            f"backup {entry.name} cannot be restored: {'; '.join(entry.problems)}.",
            "A backup without complete metadata has no checksum to trust; choose another.",
        )


def check_archive(settings: Settings, entry: BackupEntry, emit: Emit) -> tuple[PgTool, Toc]:
    """Steps 1 and 2 for a backup that passed `check_metadata`: checksum, readable table of
    contents, a pg_restore new enough."""
    assert entry.meta is not None
    emit(PhaseStarted("checksum", f"{entry.name} ({entry.size_bytes or 0:,} bytes)"))
    if not sha256_matches(entry, emit):
        raise OperationFailed(
            f"backup {entry.name} is damaged: its SHA-256 does not match its metadata.",
            "Nothing was changed. Use another backup (pgrunbook list --verify).",
        )
    dumped_by = str(entry.meta.get("pg_dump_version", "0"))
    need = int(dumped_by.split(".")[0] or 0)
    pg_restore = find_tool("pg_restore", settings, need,
                           f"the archive {entry.name} (made by pg_dump {dumped_by})")
    emit(PhaseStarted("reading archive", f"pg_restore {pg_restore.version} --list"))
    toc = read_toc(entry.path, pg_restore.path)
    return pg_restore, toc


# -- the target --------------------------------------------------------------------------------


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


HEADER_DESCS = ("ENCODING", "STDSTRINGS", "SEARCHPATH", "DATABASE")
# pg_restore's processes share one stderr, and each message is three writes: "pg_restore:", " "
# and the text with its newline. Interleaved, a line can start "pg_restore:pg_restore:  ",
# "pg_restore: pg_restore:" or " ", and the next carry no prefix at all.
_PREFIXES = r"(?:pg_restore:| )*"
_PREFIXES_RE = re.compile(r"^pg_restore:" + _PREFIXES)
_SERIAL_ITEM_RE = re.compile("^" + _PREFIXES + r"(creating|processing data for table|executing) ")
_NUMBERED_ITEM_RE = re.compile(
    "^" + _PREFIXES + r"(processing|processing missed|launching|finished) item (\d+) ")


def tidy_line(line: str) -> str:
    """`line` with a run of interleaved "pg_restore:" prefixes and spaces shown as one prefix."""
    m = _PREFIXES_RE.match(line)
    if m is None or m.group() == "pg_restore: ":
        return line
    return "pg_restore: " + line[m.end():]


class ItemProgress:
    """How many of the archive's items pg_restore has done, from its --verbose lines.

    A parallel restore names every item by its dump id: "processing item N" for those its
    leader does alone (the pre-data section, and "processing missed item N" after the parallel
    phase), "launching item N" and "finished item N" for those its workers do; the workers'
    "creating ..." lines repeat those items, so only numbered lines of the archive's own
    entries count there. A serial restore prints one "creating", "processing data for table" or
    "executing" line per item. Lines are read with or without their "pg_restore: " prefix,
    or with several (processes writing at once move prefixes and spaces between lines)."""

    def __init__(self, dump_ids: set[int]) -> None:
        self.dump_ids = dump_ids
        self.done = 0
        self.parallel = False
        self._seen: set[int] = set()

    def feed(self, line: str) -> tuple[str, int] | None:
        """Count `line`; for a parallel restore's "launching"/"finished" lines, return
        (that word, the dump id)."""
        numbered = _NUMBERED_ITEM_RE.match(line)
        if numbered:
            self.parallel = True
            word, dump_id = numbered.group(1), int(numbered.group(2))
            if word != "launching" and dump_id in self.dump_ids and dump_id not in self._seen:
                self._seen.add(dump_id)
                self.done += 1
            return (word, dump_id) if word in ("launching", "finished") else None
        if not self.parallel and _SERIAL_ITEM_RE.match(line):
            self.done = min(self.done + 1, len(self.dump_ids))
        return None


def explain_restore_errors(errors: list[str]) -> str:
    text = "\n".join(errors)
    m = re.search(r'role "([^"]+)" does not exist', text)
    if m:
        return (f"The archive names role {m.group(1)!r}, which the target lacks (a grant to it "
                "also loses the object's other grants): create the role on the target first, "
                "or restore with --owners drop.")
    if "must be owner of" in text or "must be able to SET ROLE" in text:
        return ("The target user may not take over these objects: restore with --owners drop, "
                "or restore as the objects' owner.")
    if "lock timeout" in text:
        return ("Another session held a lock: end the application's sessions "
                "(--terminate-connections) or retry with a longer --lock-timeout.")
    if "already exists" in text or "multiple primary keys" in text:
        return ("Objects outside the archive's clean-up already exist: restore Supabase projects "
                "with --app-schemas-only, or into an empty database.")
    if "No space left on device" in text or "could not extend file" in text:
        return "The database server ran out of disk space: free space on it, then retry."
    if 'unrecognized configuration parameter "transaction_timeout"' in text:
        return "The archive came from pg_dump 17+ and the server is older: restore into 17+."
    if "permission denied" in text:
        return "The target user lacks a privilege the archive needs: restore as the owner."
    if "event trigger" in text.lower() and "superuser" in text:
        return "Event triggers need a superuser: they are filtered out for non-superusers."
    return "See the error lines above."


# -- the restore -------------------------------------------------------------------------------


async def run_restore(
    settings: Settings,
    request: RestoreRequest,
    emit: Emit = ignore,
    *,
    ask: Ask | None = None,
    audit: AuditLog | None = None,
) -> RestoreResult:
    target = settings.target
    audit = audit or AuditLog(settings.backup_dir, secrets_of(settings))
    record = audit.start(
        "restore", target=target.public(),
        arguments={"backup": request.backup, "jobs": request.jobs, "owners": request.owners,
                   "safety_backup": request.safety_backup,
                   "terminate_connections": request.terminate_connections,
                   "app_schemas_only": request.app_schemas_only},
        reason=request.reason, origin=request.origin,
    )
    state: dict[str, Any] = {}
    log = OperationLog(settings.backup_dir, "restore", emit)
    emit = log
    try:
        result = await _run_restore(settings, request, emit, ask, state)
    except asyncio.CancelledError:
        safety = state.get("safety")
        if state.get("restoring"):
            undo = f" Undo with: {undo_command(target, safety)}" if safety else ""
            emit(Notice("warning", f"restore interrupted: pg_restore was stopped and "
                                   f"{target.name!r} may be partly restored.{undo}"))
        record.finish("interrupted", "interrupted by the operator", backup=state.get("backup"),
                      safety_backup=safety)
        raise
    except PgRunbookError as exc:
        log.write(f"FAILED: {exc}\n{exc.detail or ''}")
        record.finish("failed", str(exc), backup=state.get("backup"),
                      safety_backup=state.get("safety"), log=str(log.path))
        exc.log_path = str(log.path)
        raise
    except BaseException as exc:
        record.finish("failed", f"{exc.__class__.__name__}: {exc}", backup=state.get("backup"))
        raise
    finally:
        log.close()
    verdict = "ok" if result.passed else "verify-failed"
    record.finish(verdict, None if verdict == "ok" else
                  "row counts differ after the restore" if result.verify is not None
                  and not result.verify.passed else "objects outside the restore were lost",
                  backup=result.backup, safety_backup=result.safety_backup,
                  safety_note=result.safety_note, filtered=result.filtered,
                  target_kind=result.target_kind, warnings=result.warnings,
                  not_restored=result.not_restored, recreated=result.recreated,
                  gone=result.gone, restore_seconds=round(result.restore_seconds, 3),
                  log=str(log.path))
    return result


def undo_command(target: Target, safety: str) -> str:
    return (f"pgrunbook --target {target.name} restore {safety} "
            f"--reason 'undo restore' --confirm {target.dbname}")


async def _run_restore(settings: Settings, request: RestoreRequest, emit: Emit,
                       ask: Ask | None, state: dict[str, Any]) -> RestoreResult:
    started = time.monotonic()
    entry = await asyncio.to_thread(resolve_backup, settings, request.backup, emit)
    state["backup"] = entry.name
    check_metadata(entry)
    unpacker = _Unpacker(settings, entry)
    try:
        # Decompression starts beside the checksum on the other core; its output is used only
        # once the checksum has passed, and removed whatever happens.
        await unpacker.start(emit)
        pg_restore, toc = await asyncio.to_thread(check_archive, settings, entry, emit)
        return await _restore_checked(settings, request, emit, ask, state, entry, pg_restore,
                                      toc, unpacker, started)
    finally:
        await asyncio.shield(unpacker.discard())


async def _restore_checked(settings: Settings, request: RestoreRequest, emit: Emit,
                           ask: Ask | None, state: dict[str, Any], entry: BackupEntry,
                           pg_restore: PgTool, toc: Toc, unpacker: _Unpacker,
                           started: float) -> RestoreResult:
    target = settings.target
    assert entry.meta is not None

    # 3. The target answers.
    emit(PhaseStarted("connecting", target.describe()))
    missing_db = False
    try:
        conn = await asyncio.to_thread(connect, target, settings)
    except DatabaseMissing:
        if target.dbname == "postgres":
            raise
        missing_db = True
        conn = await asyncio.to_thread(connect, target, settings, dbname="postgres")
    try:
        with target_lock_file(settings.backup_dir, target.name, "restore"):
            take_advisory_lock(conn, target.name)
            kind = detect_kind(conn)

            # 4. The operator confirms.
            await _confirm(target, entry.name, request, ask)

            # 5. Other sessions.
            if not missing_db:
                await _handle_sessions(conn, target, request, emit)

            # 6. The safety backup.
            tables = 0 if missing_db else _user_tables(conn)
            safety_name, safety_note = await _safety_backup(
                settings, request, entry, tables, missing_db, emit)
            state["safety"] = safety_name

            if missing_db:
                emit(Notice("info", f"database {target.dbname!r} does not exist: creating it."))
                conn.execute(sql.SQL("CREATE DATABASE {}").format(sql.Identifier(target.dbname)))
            names = names_of(toc, entry.meta.get("schemas") or [], entry.meta.get("roles") or [])
            notes: list[str] = []
            if request.create_roles and kind.superuser:
                # Event triggers must be owned by a superuser: their owners are made one here.
                notes = _create_roles(conn, entry, emit, superusers={
                    names[e.dump_id].owner for e in toc.entries if e.desc == "EVENT TRIGGER"})
            if request.terminate_connections and not missing_db:
                _terminate(conn, target.dbname)

            plan = plan_entries(toc, names, kind, app_schemas_only=request.app_schemas_only)
            skipped = [item.entry for item in plan.left_out]  # by the main pg_restore
            restored = [schema for schema in restored_schemas(toc, names, skipped)
                        if schema not in plan.keep_schemas]
            outside = OutsideDependents()
            managed = ManagedData()
            if not missing_db:
                conn.execute(sql.SQL("SET lock_timeout = {}").format(
                    sql.Literal(request.lock_timeout)))
                outside = await _blocking(conn, OutsideDependents.read, conn, restored)
                await _blocking(conn, _replace_schemas, conn, restored, emit, target,
                                safety_name)
                if kind.kind == "supabase":
                    managed = await _blocking(conn, managed_data, conn, toc, names,
                                              plan.left_out, entry.meta)
            loaded = {e.dump_id for e in managed.entries}
            left_out = [item for item in plan.left_out if item.entry.dump_id not in loaded]
            _report_left_out(left_out, kind, emit)
            _report_managed(managed, emit)
            not_loaded = [item.entry for item in left_out]  # what the restore leaves out
            options = session_options(conn, settings, request)
            restore_started = time.monotonic()
            state["restoring"] = True
            early, reader, code = await _pg_restore(
                settings, request, entry, toc, skipped, pg_restore, emit, unpacker, options,
                kind, _verified_meta(entry.meta, names, toc, not_loaded),
                deferred_foreign_keys(toc, names, {e.dump_id for e in skipped}),
                app_schemas=set(restored),
                clean=needs_clean(toc, names, skipped, None if missing_db else restored),
                preload=managed.entries)
            restore_seconds = time.monotonic() - restore_started
            state["restoring"] = False
            await _blocking(conn, outside.restore, conn)
            for text in outside.recreated:
                emit(Notice("info", f"recreated after the restore (it hangs on the restored "
                                    f"schemas): {text}"))
            for text in outside.gone:
                emit(Notice("error", f"lost with the restored schemas and not recreated: {text}"))
    finally:
        with contextlib.suppress(psycopg.Error):
            conn.close()

    warned, failed = classify(reader.errors, kind.kind)
    if code != 0 and not reader.errors:
        failed = [RestoreError(f"pg_restore exited {code} without an error line")]
    for w in warned:
        emit(Notice("warning", f"pg_restore, harmless here: {w.describe()}"))
    report = None
    if request.verify:
        emit(PhaseStarted("verifying", "exact row counts against the backup's"))
        if early is not None:
            report = await asyncio.to_thread(early.finish)
        else:
            report = await asyncio.to_thread(
                verify_counts, settings, _verified_meta(entry.meta, names, toc, not_loaded),
                jobs=request.jobs or default_jobs(), emit=emit, app_schemas=set(restored))
    result = RestoreResult(
        backup=entry.name, target=target, safety_backup=safety_name, safety_note=safety_note,
        seconds=time.monotonic() - started, restore_seconds=restore_seconds,
        filtered=[item.describe() for item in left_out], verify=report,
        undo_command=undo_command(target, safety_name) if safety_name else None,
        target_kind=kind.kind, warnings=[w.describe() for w in warned],
        not_restored=_not_restored(entry.meta, names, toc, not_loaded),
        recreated=outside.recreated, gone=outside.gone, notes=notes,
    )
    if failed:
        raise _failure(entry, target, code, failed, warned, result)
    return result


# Entries outside any schema that pg_restore can run again over what already exists: CREATE
# EXTENSION IF NOT EXISTS, comments, grants, the archive's header.
_RERUNNABLE = frozenset({"EXTENSION", "COMMENT", "ACL", "DEFAULT ACL", *HEADER_DESCS})


def needs_clean(toc: Toc, names: dict[int, EntryName], skipped: list[TocEntry],
                emptied: list[str] | None) -> bool:
    """Whether pg_restore needs `--clean --if-exists`. It costs one DROP ... IF EXISTS per
    object of the archive, run one after another by pg_restore's leader before anything else
    (with thousands of tables, longer than creating them), and finds nothing to drop once
    pgrunbook has emptied the schemas the archive restores (`emptied`; None when that did not
    happen). So it is left out when every restored entry lies in those schemas, or is a schema
    among them other than `public` (which pgrunbook recreates), or can run again over what
    exists (`_RERUNNABLE`); anything else (large objects, event triggers, publications, entries
    in a schema that was kept) keeps it."""
    if emptied is None:
        return True
    done = set(emptied)
    skip = {e.dump_id for e in skipped}
    for e in toc.entries:
        if e.dump_id in skip:
            continue
        name = names[e.dump_id]
        if name.schema in done or e.desc in _RERUNNABLE:
            continue
        if e.desc == "SCHEMA" and name.tag in done and name.tag != "public":
            continue
        return True
    return False


def restored_schemas(toc: Toc, names: dict[int, EntryName], skipped: list[TocEntry]) -> list[str]:
    """The schemas the archive's restored entries live in (or create)."""
    skip = {e.dump_id for e in skipped}
    schemas = set()
    for e in toc.entries:
        if e.dump_id in skip:
            continue
        name = names[e.dump_id]
        if e.desc == "SCHEMA":
            schemas.add(name.tag)
        elif name.schema not in ("-", ""):
            schemas.add(name.schema)
    return sorted(schemas - {"pg_catalog", "information_schema"})


def _left_out_tables(names: dict[int, EntryName],
                     skipped: list[TocEntry]) -> set[tuple[str, str]]:
    return {(names[e.dump_id].schema, names[e.dump_id].tag) for e in skipped
            if e.desc == "TABLE DATA"}


def _verified_meta(meta: dict[str, Any], names: dict[int, EntryName], toc: Toc,
                   skipped: list[TocEntry]) -> dict[str, Any]:
    """The backup's metadata without the tables whose data this restore leaves out: a table
    the target keeps as its own (Supabase's auth.users) is not compared. Every other table is
    (a name read wrongly from the table of contents means more is verified, never less)."""
    left = _left_out_tables(names, skipped)
    if not left:
        return meta
    return {**meta, "tables": [t for t in meta.get("tables", [])
                               if (str(t["schema"]), str(t["name"])) not in left]}


def _not_restored(meta: dict[str, Any], names: dict[int, EntryName], toc: Toc,
                  skipped: list[TocEntry]) -> list[str]:
    left = _left_out_tables(names, skipped)
    return [f"{t['schema']}.{t['name']}" for t in meta.get("tables", [])
            if (str(t["schema"]), str(t["name"])) in left]


async def _preload(pg_restore: PgTool, target: Target, archive: Path, entries: list[TocEntry],
                   env: dict[str, str], emit: Emit,
                   use_list: Callable[..., str]) -> tuple[ErrorReader, int]:
    """The managed tables' data (ManagedData), loaded first, serially, in the list's order:
    their foreign keys exist on the target, so referenced tables go first."""
    emit(PhaseStarted("restoring", f"the data of {len(entries)} managed entries the target "
                                   "has none of, referenced tables first"))
    argv = [str(pg_restore.path), "--verbose", "--data-only", "--no-password",
            f"--dbname={target.dbname}", use_list(set(), "managed", entries), str(archive)]
    return await _run_pg_restore(argv, env, {e.dump_id for e in entries}, emit)


def _report_managed(managed: ManagedData, emit: Emit) -> None:
    if managed.tables:
        emit(Notice("info", f"loading the data of {len(managed.tables)} managed table(s) that "
                            f"are empty on the target: {', '.join(managed.tables)}"))
    for table, why in sorted(managed.kept.items()):
        emit(RestoreLine(f"data of {table} kept as the target has it: {why}", False))


def _report_left_out(left_out: list[LeftOut], kind: TargetKind, emit: Emit) -> None:
    """One warning per reason, with a few of the entries; each entry goes to the log."""
    by_reason: dict[str, list[str]] = {}
    for item in left_out:
        by_reason.setdefault(item.reason, []).append(item.entry.text.strip())
    if left_out:
        emit(Notice("info", f"target: {kind.describe()}"))
    for reason, texts in by_reason.items():
        shown = "; ".join(texts[:3]) + (f"; and {len(texts) - 3} more" if len(texts) > 3 else "")
        emit(Notice("warning", f"left out {len(texts)} entr{'y' if len(texts) == 1 else 'ies'}"
                               f" ({reason}): {shown}"))
        for text in texts:
            emit(RestoreLine(f"left out: {text}", False))


def _failure(entry: BackupEntry, target: Target, code: int, failed: list[RestoreError],
             warned: list[Warned], result: RestoreResult) -> RestoreFailed:
    verdict = ""
    if result.verify is not None:
        verdict = (f" The verification that ran after it: "
                   f"{'PASS' if result.verify.passed else 'FAIL'}.")
    undo = f" Undo with: {result.undo_command}" if result.undo_command else ""
    shown = [e.describe() for e in failed[:3]]
    exc = RestoreFailed(
        f"the restore of {entry.name} FAILED (pg_restore exit {code}, {len(failed)} error(s) "
        f"not known to be harmless"
        + (f", {len(warned)} harmless" if warned else "") + "): " + " | ".join(shown)
        + "." + verdict,
        explain_restore_errors([e.message for e in failed]) + undo,
        detail="\n".join(e.describe() + (f"\n  Command was: {e.command}" if e.command else "")
                         for e in failed),
    )
    exc.result = result
    return exc


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
                         tables: int, missing_db: bool, emit: Emit) -> tuple[str | None, str]:
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
    note = f"safety backup {safety.name} taken and verified."
    emit(Notice("info", note))
    return safety.name, note


class _Unpacker:
    """The zstd container decompressed to a hidden temp file beside it (parallel pg_restore
    needs a regular file it can seek in). It starts beside the checksum and runs while the
    target is checked, confirmed and backed up, none of which it touches; the restore awaits it
    (so only an archive whose checksum passed is ever restored). Behind zstd, a thread finds
    where each table's data starts (`DataIndexer`), and once zstd is done those positions are
    written into the copy's table of contents, as pg_dump writes them into a file it can seek
    in: pg_restore's jobs then seek to their tables instead of reading through the archive, and
    schedule the largest first. Whatever happens, the temp file is removed at the end."""

    def __init__(self, settings: Settings, entry: BackupEntry) -> None:
        self.settings = settings
        self.entry = entry
        self.path: Path | None = None
        self.fd: int | None = None
        self.proc: asyncio.subprocess.Process | None = None
        self.indexer: DataIndexer | None = None
        self.index_task: asyncio.Future[list[DataEntry]] | None = None

    async def start(self, emit: Emit) -> None:
        if container_of(self.entry.path) != "zstd":
            return
        if shutil.which("zstd") is None:
            raise OperationFailed(f"{self.entry.name} is zstd-compressed and zstd is not "
                                  "installed.", "Install it: apt install zstd.")
        self.path = temp_path_for(self.settings.backup_dir / f"{self.entry.name}.restore")
        emit(PhaseStarted("decompressing", "to a seekable file for parallel pg_restore, "
                                           "in the background"))
        # zstd writes into a descriptor of ours: the file stays the one created here, 0600
        # whatever the umask (zstd -o would replace it with a file of its own making).
        self.fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
        self.proc = await asyncio.create_subprocess_exec(
            "zstd", "-dqc", str(self.entry.path),
            stdout=self.fd, stderr=asyncio.subprocess.PIPE,
            stdin=asyncio.subprocess.DEVNULL, process_group=0)
        proc = self.proc
        self.indexer = DataIndexer(self.fd, lambda: proc.returncode is None)
        self.index_task = asyncio.ensure_future(asyncio.to_thread(self.indexer.run))

    async def archive(self, emit: Emit) -> Path:
        """The file pg_restore reads: the decompressed copy once zstd is done, or the stored
        archive itself when it is not in a container."""
        if self.proc is None or self.path is None:
            return self.entry.path
        if self.proc.returncode is None:
            emit(PhaseStarted("decompressing", "waiting for it to finish"))
        _, err = await self.proc.communicate()
        if self.proc.returncode != 0:
            raise OperationFailed(
                f"could not decompress {self.entry.name}: "
                f"{err.decode(errors='replace').strip() or f'zstd exit {self.proc.returncode}'}",
                f"Check free space in {self.settings.backup_dir}.",
            )
        await self._index(emit)
        return self.path

    async def _index(self, emit: Emit) -> None:
        assert self.index_task is not None and self.indexer is not None
        try:
            found = await self.index_task
            if found:
                await asyncio.to_thread(self.indexer.patch, found)
                emit(Notice("info", f"data of {len(found)} tables located in the decompressed "
                                    "copy: pg_restore's jobs seek to it"))
        except (NotIndexable, OSError) as exc:
            emit(Notice("info", f"pg_restore reads through the archive to find each table's "
                                f"data ({exc})"))

    async def discard(self) -> None:
        if self.proc is not None and self.proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGTERM)
            await self.proc.wait()
        if self.indexer is not None and self.index_task is not None:
            self.indexer.stop.set()
            with contextlib.suppress(Exception):
                await self.index_task
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None
        if self.path is not None:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()


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


def _pgoptions(env: dict[str, str], options: dict[str, str]) -> str:
    given = env.get("PGOPTIONS", "")
    return " ".join([given, *(f"-c {k}={v}" for k, v in options.items())]).strip()


async def _pg_restore(settings: Settings, request: RestoreRequest, entry: BackupEntry, toc: Toc,
                      skipped: list[TocEntry], pg_restore: PgTool, emit: Emit,
                      unpacker: _Unpacker, options: dict[str, str], kind: TargetKind,
                      verified_meta: dict[str, Any], deferred: set[int],
                      app_schemas: set[str] | None = None, clean: bool = True,
                      preload: list[TocEntry] | None = None,
                      ) -> tuple[TableVerifier | None, ErrorReader, int]:
    """Run pg_restore; (the early verifier, its errors, its exit code). Its errors are
    classified by the caller, which runs the verification whatever they are. The `deferred`
    entries (foreign keys of partitioned tables) run after it, in a second, serial pg_restore."""
    target = settings.target
    jobs = request.jobs or default_jobs()
    work: list[Path] = []
    try:
        archive = await unpacker.archive(emit)
        owners = _owners_flags(request, target, kind)
        argv = [str(pg_restore.path), "--verbose",
                *(["--clean", "--if-exists"] if clean else []), "--no-password",
                f"--jobs={jobs}", f"--dbname={target.dbname}", *owners]
        skip = {e.dump_id for e in skipped}

        def use_list(leave_out: set[int], suffix: str, only: list[TocEntry] | None = None) -> str:
            """A --use-list file: the archive's entries but `leave_out`, or `only` these, in
            this order (a serial pg_restore follows the list's order)."""
            listfile = temp_path_for(settings.backup_dir / f"{entry.name}.{suffix}")
            work.append(listfile)
            lines = [e.line for e in only] if only is not None else [
                (";" if e.dump_id in leave_out else "") + e.line for e in toc.entries]
            fd = os.open(listfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write("\n".join(lines) + "\n")
            return f"--use-list={listfile}"

        if skipped or deferred:
            argv.append(use_list(skip | deferred, "list"))
        argv.append(str(archive))
        privileges = "--no-privileges" not in argv
        # The items pg_restore will do: not the session settings and the database entry it
        # reads from the archive's header, nor grants with --no-privileges.
        dump_ids = {e.dump_id for e in toc.entries if e.dump_id not in skip
                    and e.desc not in HEADER_DESCS and (privileges or e.desc not in ACL_DESCS)}
        memory = options.get("maintenance_work_mem")
        emit(PhaseStarted("restoring", f"pg_restore {pg_restore.version}, {jobs} jobs, "
                                       f"{len(dump_ids)} items" +
                          (f", maintenance_work_mem {memory} each" if memory else "")))
        early = None
        if request.verify and jobs > 1:
            # Tables whose every dependent entry pg_restore has finished are counted and
            # analyzed while it works on the others, in the job slots it leaves free
            # (pg_restore reports launched and finished items only with --jobs > 1).
            deps = toc.deps
            if any(deps.values()):
                tables = [(str(t["schema"]), str(t["name"])) for t in verified_meta["tables"]]
                blockers = table_blockers(
                    toc.entries, deps, tables, skipped=skip, privileges=privileges)
                early = TableVerifier(settings, verified_meta, blockers, jobs=jobs, emit=emit,
                                      app_schemas=app_schemas)
        with libpq_env(target, settings) as env:
            env["PGOPTIONS"] = _pgoptions(env, options)
            try:
                pre_reader, pre_code = ErrorReader(), 0
                if preload:
                    pre_reader, pre_code = await _preload(
                        pg_restore, target, archive, preload, env, emit, use_list)
                reader, code = await _run_pg_restore(argv, env, dump_ids - deferred, emit, early,
                                                     total=len(dump_ids))
                reader.errors[:0] = pre_reader.errors
                code = code or pre_code
                if deferred:
                    emit(PhaseStarted("restoring", f"{len(deferred)} foreign key(s) of "
                                                   "partitioned tables, once all data is in"))
                    second = [str(pg_restore.path), "--verbose", "--no-password",
                              f"--dbname={target.dbname}", *owners,
                              use_list({e.dump_id for e in toc.entries} - deferred, "fks"),
                              str(archive)]
                    late, late_code = await _run_pg_restore(
                        second, env, deferred, emit, done_before=len(dump_ids - deferred),
                        total=len(dump_ids))
                    reader.errors.extend(late.errors)
                    code = code or late_code
            except BaseException:
                if early is not None:
                    await asyncio.shield(asyncio.to_thread(early.abort))
                raise
        return early, reader, code
    finally:
        for path in work:
            with contextlib.suppress(FileNotFoundError):
                path.unlink()


async def _run_pg_restore(argv: list[str], env: dict[str, str], dump_ids: set[int],
                          emit: Emit, verifier: TableVerifier | None = None,
                          done_before: int = 0, total: int | None = None,
                          ) -> tuple[ErrorReader, int]:
    """One pg_restore; progress counts its `dump_ids` on top of `done_before` items of
    `total` (a second pg_restore continues the first one's bar)."""
    proc = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT, env=env,
        stdin=asyncio.subprocess.DEVNULL, process_group=0)
    reader = ErrorReader()
    items = ItemProgress(dump_ids)
    total = total or done_before + len(dump_ids)
    started = time.monotonic()
    last = 0.0
    finished = False
    try:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            line = tidy_line(raw.decode("utf-8", errors="replace").rstrip())
            emit(RestoreLine(line, reader.feed(line)))
            item = items.feed(line)
            if item is not None and verifier is not None:
                if item[0] == "launching":
                    verifier.item_launched(item[1])
                else:
                    verifier.item_finished(item[1])
                    asyncio.get_running_loop().call_later(SLOT_GRACE, verifier.dispatch)
            now = time.monotonic()
            if now - last > 0.2:
                last = now
                emit(Progress("restore", done_before + items.done, total, now - started,
                              unit="items"))
        code = await proc.wait()
        finished = True
    finally:
        if not finished:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 10)
            except TimeoutError:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(proc.pid, signal.SIGKILL)
                await proc.wait()
    done = done_before + (len(dump_ids) if code == 0 else items.done)
    emit(Progress("restore", done, total, time.monotonic() - started, unit="items"))
    return reader, code


def with_target(settings: Settings, target: Target) -> Settings:
    return replace(settings, target=target)

