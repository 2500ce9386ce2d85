"""The restore, step by step (see the package's docstring): `run_restore` records it in the
audit log and the operation log; the backup is resolved and checked, the target prepared,
pg_restore run (with the entries the target may not take left out, and the managed tables'
data preloaded) and its output read, its errors classified, and the row counts verified."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

from tui.core import encryption
from tui.core.archive import Toc, TocEntry
from tui.core.events import (
    Emit,
    Notice,
    PhaseStarted,
    Progress,
    RestoreLine,
    TargetChanging,
    ignore,
)
from tui.core.fsutil import temp_path_for
from tui.core.inventory import BackupEntry
from tui.core.locks import take_advisory_lock, target_lock_file
from tui.core.operation import operation
from tui.core.pgtools import DatabaseMissing, PgTool, connect, libpq_env
from tui.core.restore.errors import ErrorReader, RestoreError, Warned, classify
from tui.core.restore.output import ItemProgress, explain_restore_errors, tidy_line
from tui.core.restore.request import (
    Ask,
    RestoreFailed,
    RestoreRequest,
    RestoreResult,
    default_jobs,
    undo_command,
)
from tui.core.restore.scope import (
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
from tui.core.restore.source import check_archive, check_metadata, resolve_backup
from tui.core.restore.target import (
    _blocking,
    _confirm,
    _create_roles,
    _handle_sessions,
    _owners_flags,
    _replace_schemas,
    _safety_backup,
    _terminate,
    _user_tables,
    session_options,
)
from tui.core.restore.unpack import Unpacker
from tui.core.settings import Settings, Target
from tui.core.verify import (
    ACL_DESCS,
    SLOT_GRACE,
    TableVerifier,
    table_blockers,
    verify_counts,
)

# The archive's header entries: pg_restore reads them, they are not items it restores.
HEADER_DESCS = ("ENCODING", "STDSTRINGS", "SEARCHPATH", "DATABASE")


async def run_restore(
    settings: Settings,
    request: RestoreRequest,
    emit: Emit = ignore,
    *,
    ask: Ask | None = None,
) -> RestoreResult:
    target = settings.target
    arguments = {"backup": request.backup, "jobs": request.jobs, "owners": request.owners,
                 "safety_backup": request.safety_backup,
                 "safety_candidate": request.safety_candidate,
                 "terminate_connections": request.terminate_connections,
                 "app_schemas_only": request.app_schemas_only}
    with operation(settings, "restore", emit, arguments=arguments, reason=request.reason,
                   origin=request.origin) as op:
        state: dict[str, Any] = {}
        try:
            result = await _run_restore(settings, request, op.emit, ask, state)
        except asyncio.CancelledError:
            safety = state.get("safety")
            if state.get("restoring"):
                undo = f" Undo with: {undo_command(target, safety)}" if safety else ""
                op.emit(Notice("warning", f"restore interrupted: pg_restore was stopped and "
                                          f"{target.name!r} may be partly restored.{undo}"))
            op.interrupted_text = "interrupted by the operator"
            raise
        finally:
            op.end.update(backup=state.get("backup"), safety_backup=state.get("safety"))
        op.end.update(
            backup=result.backup, safety_backup=result.safety_backup,
            safety_note=result.safety_note, filtered=result.filtered,
            target_kind=result.target_kind, warnings=result.warnings,
            not_restored=result.not_restored, recreated=result.recreated, gone=result.gone,
            restore_seconds=round(result.restore_seconds, 3))
        if not result.passed:
            op.verdict = "verify-failed"
            op.problem = ("row counts differ after the restore" if result.verify is not None
                          and not result.verify.passed else
                          "objects outside the restore were lost")
    return result


async def _run_restore(settings: Settings, request: RestoreRequest, emit: Emit,
                       ask: Ask | None, state: dict[str, Any]) -> RestoreResult:
    started = time.monotonic()
    entry = await asyncio.to_thread(resolve_backup, settings, request.backup, emit)
    state["backup"] = entry.name
    check_metadata(entry)
    # An encrypted backup's key is found (or refused, naming the key it needs) before anything
    # reads the archive or touches the target.
    cipher = await asyncio.to_thread(encryption.for_restore, settings, entry.name, entry.meta)
    unpacker = Unpacker(settings, entry, cipher)
    try:
        # Decompression (and decryption) starts beside the checksum on the other core; its
        # output is used only once the checksum has passed, and removed whatever happens.
        await unpacker.start(emit)
        pg_restore, toc = await asyncio.to_thread(check_archive, settings, entry, emit, cipher)
        return await _restore_checked(settings, request, emit, ask, state, entry, pg_restore,
                                      toc, unpacker, started)
    finally:
        await asyncio.shield(unpacker.discard())


async def _restore_checked(settings: Settings, request: RestoreRequest, emit: Emit,
                           ask: Ask | None, state: dict[str, Any], entry: BackupEntry,
                           pg_restore: PgTool, toc: Toc, unpacker: Unpacker,
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
                settings, request, entry, tables, missing_db, emit,
                None if missing_db else conn)
            state["safety"] = safety_name
            # From here a restore that dies leaves the target incomplete (`jobs.reconcile`).
            emit(TargetChanging(target.name, target.dbname, safety_name,
                                undo_command(target, safety_name) if safety_name else None))

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


def _pgoptions(env: dict[str, str], options: dict[str, str]) -> str:
    given = env.get("PGOPTIONS", "")
    return " ".join([given, *(f"-c {k}={v}" for k, v in options.items())]).strip()


async def _pg_restore(settings: Settings, request: RestoreRequest, entry: BackupEntry, toc: Toc,
                      skipped: list[TocEntry], pg_restore: PgTool, emit: Emit,
                      unpacker: Unpacker, options: dict[str, str], kind: TargetKind,
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
