"""Taking a backup: a consistent, checksummed custom-format archive plus its metadata sidecar.

The dump and the per-table row counts share one exported snapshot, so the counts describe exactly
the dumped data while the application keeps writing. The archive streams through this process
once: hashed as it is written to a hidden temp file, fsynced, and renamed into place only after
pg_dump, the compressor and a read-back of the table of contents all succeeded. The metadata
sidecar is written last; it is the mark that the backup is complete.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import fcntl
import hashlib
import os
import re
import shutil
import signal
import threading
import time
from collections import deque
from collections.abc import Callable, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, cast

import psycopg
from psycopg import sql

import tui
from tui.core import encryption
from tui.core.appstate import FORMAT as APP_STATE_FORMAT
from tui.core.appstate import collect_for_backup
from tui.core.archive import Toc, read_toc
from tui.core.audit import iso, operator_identity
from tui.core.errors import ConfigError, Interrupted, OperationFailed, PgRunbookError
from tui.core.events import (
    BackupFinished,
    DumpProgress,
    Emit,
    Notice,
    PhaseStarted,
    Progress,
    ToolOutput,
    ignore,
)
from tui.core.fsutil import (
    atomic_write_bytes,
    ensure_private_dir,
    fsync_dir,
    open_private_exclusive,
    publish,
    temp_path_for,
)
from tui.core.inventory import BackupEntry, last_complete
from tui.core.locks import LockTable, lock_batches, lock_table
from tui.core.metadata import (
    ARCHIVE_SUFFIX,
    DEFAULT_LABELS,
    KINDS,
    META_SCHEMA_VERSION,
    meta_path_for,
    write_meta,
)
from tui.core.operation import operation
from tui.core.pgtools import (
    PgTool,
    connect,
    connection_error,
    find_tool,
    libpq_env,
    major_of,
    server_version,
    supports_zstd,
)
from tui.core.restore.safety import snapshot_record
from tui.core.restore.scope import MANAGED_SCHEMAS
from tui.core.roles import RolesUnreadable, dump_roles, roles_path_for
from tui.core.s3 import S3Config, StreamUpload, s3_config
from tui.core.settings import Settings, parse_compression

CHUNK = 1 << 20
PROGRESS_INTERVAL = 0.25
SPACE_MARGIN = 1.10
_LABEL_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")
SYSTEM_SCHEMAS = ("pg_catalog", "information_schema")


@dataclass(frozen=True)
class BackupRequest:
    """What the operator asked for."""

    label: str | None = None
    kind: str = "manual"
    reason: str | None = None
    compression: str | None = None
    exclude_schema: tuple[str, ...] = ()
    exclude_table_data: tuple[str, ...] = ()
    origin: str = "cli"
    # pg_dump gives up instead of queueing behind a lock held longer than this ("30s").
    lock_wait_timeout: str | None = None
    upload: bool = True  # to S3, when a bucket is configured


@dataclass(frozen=True)
class BackupResult:
    name: str
    path: Path
    meta_path: Path
    size_bytes: int
    sha256: str
    duration: float
    tables: int
    rows: int
    meta: dict[str, Any] = field(repr=False)
    s3_key: str | None = None
    upload_error: str | None = None


def backup_label(kind: str, label: str | None) -> str:
    """The `<name>` part of `YYYYMMDD_HHMMSS_<name>.backup`, validated."""
    if kind not in KINDS:
        raise ConfigError(f"unknown backup kind {kind!r}.", f"Use one of: {', '.join(KINDS)}.")
    if label is None or label == "":
        if kind == "release":
            raise ConfigError(
                "a release backup needs a name.",
                "For example: pgrunbook backup pre_major_release_v2.1 --kind release",
            )
        return DEFAULT_LABELS[kind]
    if "/" in label or "\\" in label or ".." in label or not _LABEL_RE.match(label):
        raise ConfigError(
            f"backup name {label!r} is not allowed.",
            "Use up to 100 letters, digits, '.', '_' and '-', starting with a letter or digit, "
            "with no '/' and no '..'.",
        )
    return label


@dataclass(frozen=True)
class _Plan:
    method: str  # "zstd" (external), "zstd-native", "gzip", "none"
    level: int
    description: str  # what the metadata says, such as "zstd:3"
    container: str  # "zstd" when the custom-format file is wrapped in zstd, else "custom"
    fallback: str | None = None  # why the archive is not compressed as asked, for the metadata


def _plan_compression(spec: str, pg_dump: PgTool, emit: Emit) -> _Plan:
    method, level = parse_compression(spec)
    if method == "zstd":
        if pg_dump.major >= 16 and supports_zstd(pg_dump):
            return _Plan("zstd-native", level, f"zstd:{level}", "custom")
        if shutil.which("zstd"):
            if pg_dump.major < 16:
                return _Plan("zstd", level, f"zstd:{level}", "zstd")
            why = f"pg_dump {pg_dump.version} ({pg_dump.path}) was built without zstd"
            emit(Notice("info", f"{why}: the archive is compressed by the zstd program instead "
                                "(a zstd container, which pgrunbook restores as usual)."))
            return _Plan("zstd", level, f"zstd:{level}", "zstd", fallback=why)
        emit(Notice("warning", "zstd is not installed (apt install zstd): using pg_dump's gzip "
                                "level 6, which is several times slower."))
        return _Plan("gzip", 6, "gzip:6", "custom")
    if method == "gzip":
        return _Plan("gzip", level, f"gzip:{level}", "custom")
    return _Plan("none", 0, "none", "custom")


def _pattern_regex(pattern: str) -> re.Pattern[str]:
    """A psql-style pattern (`*`, `?`, "quoted") as a regex, for pre-filtering only."""
    out, quoted = [], False
    for ch in pattern:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch == "*":
            out.append(".*")
        elif not quoted and ch == "?":
            out.append(".")
        else:
            out.append(re.escape(ch if quoted else ch.lower()))
    return re.compile("^" + "".join(out) + "$")


def _excluded(schema: str, table: str, schema_patterns: Sequence[str],
              table_patterns: Sequence[str]) -> bool:
    if any(_pattern_regex(p).match(schema) for p in schema_patterns):
        return True
    for p in table_patterns:
        if "." in p:
            sp, _, tp = p.partition(".")
            if _pattern_regex(sp).match(schema) and _pattern_regex(tp).match(table):
                return True
        elif _pattern_regex(p).match(table):
            return True
    return False


Conn = psycopg.Connection[tuple[Any, ...]]


def _dumpable_tables(conn: Conn) -> list[tuple[int, str, str]]:
    """Tables whose data pg_dump writes: ordinary tables and partitions outside the system
    schemas, except extension members that are not extension configuration tables."""
    rows = conn.execute(
        """
        SELECT c.oid::int8, n.nspname, c.relname
        FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
        WHERE c.relkind = 'r'
          AND n.nspname NOT IN ('pg_catalog', 'information_schema')
          AND n.nspname NOT LIKE 'pg\\_toast%' AND n.nspname NOT LIKE 'pg\\_temp\\_%'
          AND (NOT EXISTS (SELECT 1 FROM pg_depend d
                           WHERE d.classid = 'pg_class'::regclass AND d.objid = c.oid
                             AND d.deptype = 'e')
               OR EXISTS (SELECT 1 FROM pg_extension x WHERE c.oid = ANY (x.extconfig)))
        ORDER BY n.nspname, c.relname
        """
    ).fetchall()
    return [(int(r[0]), str(r[1]), str(r[2])) for r in rows]


def _managed_columns(conn: Conn, tables: Sequence[tuple[int, str, str]]) -> dict[str, list[str]]:
    """The columns of the tables in Supabase's managed schemas ("auth.users": [names in order]):
    a restore into a project whose managed table is empty loads their data only when the
    target's columns are the same (tui.core.restore_scope)."""
    oids = [t[0] for t in tables if t[1] in MANAGED_SCHEMAS]
    if not oids:
        return {}
    rows = conn.execute(
        "SELECT n.nspname || '.' || c.relname, array_agg(a.attname::text ORDER BY a.attnum)"
        " FROM pg_attribute a JOIN pg_class c ON c.oid = a.attrelid"
        " JOIN pg_namespace n ON n.oid = c.relnamespace"
        " WHERE a.attrelid = ANY(%s) AND a.attnum > 0 AND NOT a.attisdropped GROUP BY 1",
        [oids]).fetchall()
    return {str(r[0]): [str(x) for x in cast(list[str], r[1])] for r in rows}


class _SnapshotCounter:
    """Exact row counts in the dump's exported snapshot, in batches that fit the server's lock
    table: a count locks its table and the table's indexes until the transaction ends, and one
    transaction counting thousands of tables (beside pg_dump, which locks every table in its
    own) overflows it. Each batch is a transaction of its own on a second connection that
    imports the snapshot (SET TRANSACTION SNAPSHOT) and commits; the exporting transaction
    stays open meanwhile, so every batch sees exactly the data pg_dump writes."""

    def __init__(self, settings: Settings, snapshot: str, locks: LockTable) -> None:
        self.settings = settings
        self.snapshot = snapshot
        self.locks = locks
        self.conn: psycopg.Connection[tuple[object, ...]] | None = None
        self._lock = threading.Lock()
        self._cancelled = False

    def count(self, tables: Sequence[tuple[int, str, str]]) -> dict[int, int]:
        counts: dict[int, int] = {}
        if not tables:
            return counts
        with self._lock:
            if self._cancelled:
                return counts
            if self.conn is None:
                self.conn = connect(self.settings.target, self.settings)
            conn = self.conn
        indexes: dict[int, int] = {int(str(r[0])): int(str(r[1])) for r in conn.execute(
            "SELECT indrelid::int8, count(*) FROM pg_index WHERE indrelid = ANY(%s) GROUP BY 1",
            [[t[0] for t in tables]]).fetchall()}
        # Locks per table: the table and each of its indexes (the planner opens them all).
        for batch in lock_batches(tables, lambda t: 1 + int(indexes.get(t[0], 0)),
                                  self.locks.batch):
            if self._cancelled:
                raise Interrupted("the row counts were cancelled.")
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            try:
                conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(
                    sql.Literal(self.snapshot)))
                # The counts share two busy cores with the dump: plain scans, no parallel
                # workers or JIT compilation, which cost more CPU than they save here.
                conn.execute("SET LOCAL max_parallel_workers_per_gather = 0")
                conn.execute("SET LOCAL jit = off")
                row = conn.execute(sql.SQL("SELECT ARRAY[{}]::int8[]").format(sql.SQL(", ").join(
                    sql.SQL("(SELECT count(*) FROM ONLY {}.{})").format(
                        sql.Identifier(schema), sql.Identifier(name))
                    for _oid, schema, name in batch))).fetchone()
                conn.execute("COMMIT")
            except psycopg.errors.OutOfMemory:
                with contextlib.suppress(psycopg.Error):
                    conn.execute("ROLLBACK")
                raise self.locks.too_small(
                    "pg_dump", len(tables), f"one per table it dumps, {len(tables):,}, beside "
                    f"pgrunbook's row counts in batches of {self.locks.batch}") from None
            except BaseException:
                with contextlib.suppress(psycopg.Error):
                    conn.execute("ROLLBACK")
                raise
            assert row is not None
            for (oid, _schema, _name), n in zip(batch, cast(list[int], row[0]), strict=True):
                counts[oid] = int(n)
        return counts

    def cancel(self) -> None:
        """Stop the counts: no new batch starts, and the running statement is cancelled (call
        again until `count` returns: a cancel between two statements reaches none)."""
        self._cancelled = True
        with self._lock:
            if self.conn is not None:
                with contextlib.suppress(Exception):
                    self.conn.cancel_safe()

    def close(self) -> None:
        with self._lock:
            self._cancelled = True
            if self.conn is not None:
                with contextlib.suppress(Exception):
                    self.conn.close()
                self.conn = None


F_SETPIPE_SZ = 1031


def _grow_pipe(fd: int) -> None:
    """Bigger pipe buffers mean fewer, larger reads and context switches."""
    with contextlib.suppress(OSError):
        fcntl.fcntl(fd, F_SETPIPE_SZ, CHUNK)


def _sha256_fd(fd: int, size: int) -> str:
    """SHA-256 of the finished file, read back in chunks into one reused buffer (flat memory)."""
    digest = hashlib.sha256()
    buf = bytearray(4 * CHUNK)
    view = memoryview(buf)
    offset = 0
    while offset < size:
        n = os.preadv(fd, [buf], offset)
        if n == 0:
            break
        digest.update(view[:n])
        offset += n
    return digest.hexdigest()


def _kill_group(pgid: int | None) -> None:
    if pgid is None:
        return
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signal.SIGTERM)


async def _reap(procs: Sequence[asyncio.subprocess.Process], pgid: int | None) -> None:
    """Wait for children; escalate to SIGKILL if they do not go within 5 seconds."""
    try:
        await asyncio.wait_for(asyncio.gather(*(p.wait() for p in procs)), 5)
    except TimeoutError:
        if pgid is not None:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(pgid, signal.SIGKILL)
        await asyncio.gather(*(p.wait() for p in procs))


def _dump_error(stderr: str, settings: Settings, pg_dump: PgTool, code: int,
                locks: LockTable | None = None, tables: int = 0) -> PgRunbookError:
    target = settings.target
    if code < 0:
        try:
            signame = signal.Signals(-code).name
        except ValueError:
            signame = f"signal {-code}"
        return OperationFailed(
            f"pg_dump was killed by {signame} before it finished; the partial file was removed.",
            "Something outside pgrunbook stopped it (the OOM killer, an operator): check the "
            "system log, then run the backup again.",
            detail=stderr,
        )
    if "server version mismatch" in stderr:
        return OperationFailed(
            f"{pg_dump.path} ({pg_dump.version}) is older than the server.",
            "Install the client of the server's major version or set PG_BIN_DIR.",
            detail=stderr,
        )
    if "connection to server" in stderr or "could not translate host" in stderr:
        return connection_error(stderr, target)
    m = re.search(r"permission denied for (?:table|relation|schema|sequence) (\S+)", stderr)
    if m:
        return OperationFailed(
            f"user {target.user!r} may not read {m.group(1)} (permission denied).",
            "Back up as a role that can read every table (on Supabase: postgres), or leave it "
            "out with --exclude-table-data / --exclude-schema.",
            detail=stderr,
        )
    m = re.search(r"no matching (schemas|tables) were found for pattern \"([^\"]*)\"", stderr)
    if m:
        return ConfigError(f"no {m.group(1)} match the pattern {m.group(2)!r}.", detail=stderr)
    if locks is not None and "max_locks_per_transaction" in stderr:
        # The server's own hint (pg_dump's stderr is text: there is no error code to read).
        return locks.too_small("pg_dump", tables, "one per table it dumps")
    if "lock timeout" in stderr or "could not obtain lock" in stderr:
        return OperationFailed(
            "pg_dump could not get a lock: another session holds an exclusive lock on a table.",
            "Find it in pg_stat_activity, or retry when the migration or DDL has finished.",
            detail=stderr,
        )
    errors = [ln for ln in stderr.splitlines() if "error:" in ln or "FATAL" in ln]
    first = (errors or stderr.strip().splitlines() or ["no message"])[0]
    return OperationFailed(
        f"pg_dump failed: {first.strip()}",
        "See the lines above (pgrunbook -v shows all of pg_dump's output).",
        detail=stderr,
    )


def _write_error(exc: OSError, tmp: Path, written: int) -> PgRunbookError:
    where = tmp.parent
    if exc.errno in (errno.ENOSPC, errno.EDQUOT, errno.EFBIG):
        return OperationFailed(
            f"no space left in {where} after writing {written:,} bytes "
            f"({os.strerror(exc.errno or 0)}); the partial file was removed, "
            "older backups are intact.",
            "Free space (remove old backups) or set BACKUP_DIR to a larger disk.",
        )
    return OperationFailed(
        f"could not write the archive in {where}: {exc.strerror or exc}; "
        "the partial file was removed.",
        "Check the disk and the directory's permissions.",
    )


def _check_space(settings: Settings, previous: BackupEntry | None, db_size: int | None,
                 plan: _Plan) -> int | None:
    """Refuse early when the backup will not fit (`db_size` is read only when there is no
    `previous` backup to go by); returns the expected size for the ETA."""
    if previous is not None and previous.size_bytes:
        expected = previous.size_bytes
        basis = f"the last backup's size ({previous.name})"
    else:
        ratio = 1.0 if plan.method == "none" else 0.8
        expected = int((db_size or 0) * ratio)
        basis = "80% of the database size" if ratio < 1 else "the database size"
    free = shutil.disk_usage(settings.backup_dir).free
    need = int(expected * SPACE_MARGIN)
    if need > free:
        from humanize import naturalsize

        from tui.core.prune import space_hint

        raise OperationFailed(
            f"not enough free space in {settings.backup_dir}: about {naturalsize(need)} needed "
            f"({basis} plus 10%), {naturalsize(free)} free{space_hint(settings)}.",
            "Free space (pgrunbook prune, or remove old backups) or set BACKUP_DIR to a larger "
            "disk.",
        )
    return expected if previous is not None else None


async def run_backup(settings: Settings, request: BackupRequest,
                     emit: Emit = ignore) -> BackupResult:
    """Take one backup of `settings.target`. Raises PgRunbookError (or Interrupted)."""
    label = backup_label(request.kind, request.label)
    with operation(settings, "backup", emit, reason=request.reason, origin=request.origin,
                   arguments={"name": label, "kind": request.kind,
                              "compression": request.compression or settings.compression,
                              "exclude_schema": list(request.exclude_schema),
                              "exclude_table_data": list(request.exclude_table_data)}) as op:
        result = await _run_backup(settings, request, label, op.emit)
        op.end.update(backup=result.name, size_bytes=result.size_bytes, sha256=result.sha256,
                      s3_key=result.s3_key)
        if result.upload_error:
            op.verdict = "failed"
            op.problem = f"backed up locally, upload failed: {result.upload_error}"
    return result


async def _run_backup(settings: Settings, request: BackupRequest, label: str,
                      emit: Emit) -> BackupResult:
    target = settings.target
    try:
        ensure_private_dir(settings.backup_dir)
    except OSError as exc:
        raise OperationFailed(
            f"cannot create the backup directory {settings.backup_dir}: {exc.strerror}.",
            "Check BACKUP_DIR and its permissions.",
        ) from None
    # Names carry the second the backup started; two backups of one name within a second
    # (a script taking several) wait for the next second rather than collide.
    for _ in range(3):
        started_wall = datetime.now(UTC)
        name = f"{started_wall.strftime('%Y%m%d_%H%M%S')}_{label}"
        final = settings.backup_dir / f"{name}{ARCHIVE_SUFFIX}"
        # S3 keys carry only the stamp: one backup per second, whatever its name.
        if not any(settings.backup_dir.glob(f"{started_wall.strftime('%Y%m%d_%H%M%S')}_*")):
            break
        await asyncio.sleep(1.0 - started_wall.microsecond / 1e6)
    else:
        raise OperationFailed(f"a backup named {name} already exists.",
                              "Give the backup another name.")
    started = time.monotonic()
    # The key is read before anything runs: a backup that cannot be encrypted never starts.
    cipher = encryption.for_backup(settings)
    s3 = s3_config(settings) if request.upload else None
    # The S3 client is made while the database is checked, before the dump needs the CPUs.
    s3_client = s3.client_soon() if s3 is not None else None

    emit(PhaseStarted("connecting", target.describe()))
    conn = await asyncio.to_thread(connect, target, settings)
    try:
        version_num, version_text = server_version(conn)
        major = major_of(version_num)
        pg_dump = find_tool("pg_dump", settings, major, f"the server at {target.host}:{target.port}")
        pg_restore = find_tool("pg_restore", settings, major, "this archive")
        plan = _plan_compression(request.compression or settings.compression, pg_dump, emit)
        info = conn.execute(
            "SELECT ARRAY(SELECT nspname::text FROM pg_namespace"
            "       WHERE nspname NOT IN ('pg_catalog','information_schema')"
            "         AND nspname NOT LIKE 'pg\\_toast%' AND nspname NOT LIKE 'pg\\_temp\\_%'"
            "       ORDER BY 1)"
        ).fetchone()
        assert info is not None
        schemas = [str(s) for s in cast(list[str], info[0])]
        # Roles the archive may name (owners, grantees, policies), so a drill can create them.
        roles = [str(r[0]) for r in conn.execute(
            "SELECT rolname FROM pg_roles WHERE rolname !~ '^pg_' ORDER BY 1").fetchall()]
        is_superuser = conn.execute("SELECT rolsuper FROM pg_roles WHERE rolname = current_user"
                                    ).fetchone()
        # The database's size (a stat of every file: 26 ms with 3,000 tables) sizes the space
        # check only when there is no earlier backup; else it is read beside pg_dump.
        previous = last_complete(settings.backup_dir)
        db_size = None if previous is not None and previous.size_bytes else _database_size(conn)
        expected = _check_space(settings, previous, db_size, plan)
        locks = lock_table(conn)

        # One snapshot for the dump and the counts.
        conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
        # The counts share two busy cores with the dump: plain scans, no parallel workers or
        # JIT compilation, which cost more CPU than they save here.
        conn.execute("SET LOCAL max_parallel_workers_per_gather = 0")
        conn.execute("SET LOCAL jit = off")
        snap = conn.execute("SELECT pg_export_snapshot()").fetchone()
        assert snap is not None
        snapshot = str(snap[0])
        # What a restore's safety backup compares against to know nothing was written since.
        snapshot_meta = snapshot_record(conn)
        managed_columns: dict[str, list[str]] = {}

        def tables_of() -> list[tuple[int, str, str]]:
            """The tables to count, read in the snapshot while pg_dump starts."""
            found = [
                t for t in _dumpable_tables(conn)
                if not _excluded(t[1], t[2], request.exclude_schema, request.exclude_table_data)
            ]
            managed_columns.update(_managed_columns(conn, found))
            return found

        # Grants, RLS, sequences, publications...: catalog reads in the dump's snapshot, on a
        # connection of their own beside pg_dump (60 ms before it, on 3,000 tables).
        app_task = asyncio.ensure_future(asyncio.to_thread(
            _app_state, settings, snapshot, db_size is None))
        emit(PhaseStarted("dumping", f"pg_dump {pg_dump.version}, {plan.description}"
                                     + (f", encrypted ({cipher.describe()})" if cipher else "")))
        upload_box: list[StreamUpload] = []
        with libpq_env(target, settings) as env:
            # The cluster's roles, beside the dump (pg_dumpall is quick; not transactional).
            roles_task = asyncio.ensure_future(asyncio.to_thread(_read_roles, pg_dump, env))
            try:
                size, sha256, toc, counts, tables = await _dump(
                    settings, request, pg_dump, pg_restore, plan, snapshot, env, conn, tables_of,
                    final, expected, emit, s3, name[:15], upload_box, s3_client, locks=locks,
                    cipher=cipher,
                )
            finally:
                roles_sql, roles_note = await asyncio.shield(roles_task)
                app_state, side_size = await asyncio.shield(app_task)
                db_size = db_size if db_size is not None else side_size
        with contextlib.suppress(psycopg.Error):
            conn.execute("ROLLBACK")
    finally:
        await asyncio.to_thread(conn.close)

    table_info = {t[0]: t for t in tables}
    counted = [
        {"schema": table_info[oid][1], "name": table_info[oid][2], "rows": counts[oid]}
        for oid in counts
    ]
    counted.sort(key=lambda t: (str(t["schema"]), str(t["name"])))
    duration = time.monotonic() - started
    meta: dict[str, Any] = {
        "schema_version": META_SCHEMA_VERSION,
        "name": name,
        "label": label,
        "kind": request.kind,
        "reason": request.reason,
        "created_at": iso(started_wall),
        "finished_at": iso(datetime.now(UTC)),
        "duration_seconds": round(duration, 3),
        "archive": {
            "file": final.name,
            "size_bytes": size,
            "sha256": sha256,
            "format": "custom",
            "compression": plan.description,
            "container": plan.container,
            "compressed_by": "pg_dump" if plan.container == "custom" else "zstd program",
            **({"compression_fallback": plan.fallback} if plan.fallback else {}),
            "archive_version": toc.archive_version,
            **({"encryption": cipher.meta()} if cipher else {}),
        },
        "source": target.public(),
        "server_version": version_text,
        "server_version_num": version_num,
        "pg_dump_version": pg_dump.version,
        "database_size_bytes": db_size,
        "schemas": schemas,
        "roles": roles,
        "dumped_as_superuser": bool(is_superuser and is_superuser[0]),
        "options": {
            "exclude_schema": list(request.exclude_schema),
            "exclude_table_data": list(request.exclude_table_data),
        },
        "tables": counted,
        "total_rows": sum(counts.values()),
        "snapshot": snapshot_meta,
        "app_state": app_state,
        "managed_columns": managed_columns,
        "operator": operator_identity(),
        "tool": {"name": "pgrunbook", "version": tui.__version__},
    }
    meta["roles_sql"] = _keep_roles(final, roles_sql, roles_note, emit)
    write_meta(meta_path_for(final), meta)
    s3_key = upload_error = None
    if upload_box:
        emit(PhaseStarted("uploading", f"finishing s3://{s3.bucket if s3 else ''}/"
                                       f"{upload_box[0].key}"))
        try:
            s3_key = await asyncio.to_thread(upload_box[0].finish, size, sha256, request.kind,
                                             meta, roles_sql)
        except PgRunbookError as exc:
            upload_error = exc.message
            emit(Notice("warning", f"backed up locally, upload failed: {upload_error}"))
        except asyncio.CancelledError:
            upload_box[0].abort()
            raise
    emit(BackupFinished(name, str(final), size, sha256, time.monotonic() - started))
    return BackupResult(name, final, meta_path_for(final), size, sha256,
                        time.monotonic() - started, len(counted), sum(counts.values()), meta,
                        s3_key, upload_error)


def _database_size(conn: Conn) -> int:
    row = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    assert row is not None
    return int(str(row[0]))


def _app_state(settings: Settings, snapshot: str,
               with_size: bool) -> tuple[dict[str, Any], int | None]:
    """The application state (tui.core.appstate) in the dump's exported snapshot, and the
    database's size when asked, read on a connection of their own while pg_dump runs; a
    failure is recorded, never fatal."""
    try:
        with connect(settings.target, settings) as conn:
            size = _database_size(conn) if with_size else None
            conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
            conn.execute(sql.SQL("SET TRANSACTION SNAPSHOT {}").format(sql.Literal(snapshot)))
            return collect_for_backup(conn), size
    except (PgRunbookError, psycopg.Error) as exc:
        return {"format": APP_STATE_FORMAT, "error": str(exc).strip().splitlines()[0]}, None


def _read_roles(pg_dump: PgTool, env: dict[str, str]) -> tuple[bytes | None, str | None]:
    """(`pg_dumpall --roles-only --no-role-passwords`, None) or (None, why not)."""
    pg_dumpall = pg_dump.path.parent / "pg_dumpall"
    if not pg_dumpall.exists():
        return None, f"no pg_dumpall beside {pg_dump.path}"
    try:
        return dump_roles(pg_dumpall, env).encode(), None
    except RolesUnreadable as exc:
        return None, f"pg_dumpall could not read the roles: {exc}"


def _keep_roles(final: Path, roles_sql: bytes | None, note: str | None,
                emit: Emit) -> dict[str, Any]:
    """Write `<archive>.roles.sql` (0600, atomically) and say what the metadata records."""
    if roles_sql is None:
        emit(Notice("warning", f"the cluster's roles are not kept with this backup: {note}"))
        return {"error": note}
    path = roles_path_for(final)
    atomic_write_bytes(path, roles_sql)
    return {"file": path.name, "size_bytes": len(roles_sql),
            "sha256": hashlib.sha256(roles_sql).hexdigest()}


async def _dump(
    settings: Settings,
    request: BackupRequest,
    pg_dump: PgTool,
    pg_restore: PgTool,
    plan: _Plan,
    snapshot: str,
    env: dict[str, str],
    conn: Conn,
    tables_of: Callable[[], list[tuple[int, str, str]]],
    final: Path,
    expected: int | None,
    emit: Emit,
    s3: S3Config | None = None,
    stamp: str = "",
    upload_box: list[StreamUpload] | None = None,
    s3_client: Future[Any] | None = None,
    *,
    locks: LockTable,
    cipher: encryption.Cipher | None = None,
) -> tuple[int, str, Toc, dict[int, int], list[tuple[int, str, str]]]:
    """Run the pipeline into a temp file and publish it: (size, sha256, table of contents,
    exact counts by table oid, the tables counted). `tables_of` lists the tables on `conn`,
    in the snapshot, once pg_dump has started (10 ms with 3,000 tables, off the dump's path)."""
    argv = [str(pg_dump.path), "--format=custom", "--no-password", f"--snapshot={snapshot}",
            f"--dbname={settings.target.dbname}"]
    if plan.method == "zstd-native":
        argv.append(f"--compress=zstd:{plan.level}")
    else:
        argv.append(f"--compress={plan.level if plan.method == 'gzip' else 0}")
    if request.lock_wait_timeout:
        argv.append(f"--lock-wait-timeout={request.lock_wait_timeout}")
    argv += [f"--exclude-schema={p}" for p in request.exclude_schema]
    argv += [f"--exclude-table-data={p}" for p in request.exclude_table_data]

    tmp = temp_path_for(final)
    fd = open_private_exclusive(tmp)
    # Held while writing: the inventory tells an abandoned partial file from a live one by it.
    fcntl.flock(fd, fcntl.LOCK_EX)
    procs: list[asyncio.subprocess.Process] = []
    names: list[str] = []  # each process's tool, in pipeline order
    pgid: int | None = None
    tails: dict[str, deque[str]] = {"pg_dump": deque(maxlen=200), "zstd": deque(maxlen=20),
                                    "cipher": deque(maxlen=20)}
    step = encryption.encrypt_step(cipher) if cipher is not None else None
    written = 0
    tables: list[tuple[int, str, str]] = []
    count_task: asyncio.Task[dict[int, int]] | None = None
    counter = _SnapshotCounter(settings, snapshot, locks)
    published = False
    try:
        # The children write the temp file directly (one copy, no relay through Python); it
        # is hashed once it is complete and fsynced, so the checksum covers the bytes as stored.
        # With encryption the cipher is the last process, the only one that writes the file:
        # pg_dump | zstd | gpg (or age) > temp file.
        stages = (["zstd"] if plan.method == "zstd" else []) + (["cipher"] if step else [])
        pipes = [os.pipe() for _ in stages]
        for r, _w in pipes:
            _grow_pipe(r)
        try:
            dump = await asyncio.create_subprocess_exec(
                *argv, stdout=pipes[0][1] if pipes else fd, stderr=asyncio.subprocess.PIPE,
                env=env, stdin=asyncio.subprocess.DEVNULL, process_group=0)
            pgid = dump.pid
            procs.append(dump)
            names.append("pg_dump")
            for i, stage in enumerate(stages):
                out = pipes[i + 1][1] if i + 1 < len(pipes) else fd
                if stage == "zstd":
                    proc = await asyncio.create_subprocess_exec(
                        "zstd", f"-{plan.level}", "-q", "-c", stdin=pipes[i][0], stdout=out,
                        stderr=asyncio.subprocess.PIPE, process_group=pgid)
                else:
                    assert step is not None
                    proc = await asyncio.create_subprocess_exec(
                        *step.argv, stdin=pipes[i][0], stdout=out,
                        stderr=asyncio.subprocess.PIPE, process_group=pgid,
                        pass_fds=step.pass_fds())
                    step.close()  # the passphrase's pipe is the child's alone now
                procs.append(proc)
                names.append(stage)
        finally:
            for r, w in pipes:
                os.close(r)
                os.close(w)

        async def drain(tool: str, proc: asyncio.subprocess.Process) -> None:
            assert proc.stderr is not None
            async for raw in proc.stderr:
                line = raw.decode("utf-8", errors="replace").rstrip()
                tails[tool].append(line)
                # The cipher's lines are shown under its own name (gpg or age).
                emit(ToolOutput(cipher.method if tool == "cipher" and cipher else tool, line))

        drains = [asyncio.create_task(drain(t, p)) for t, p in zip(names, procs, strict=True)]
        tables = tables_of()
        count_task = asyncio.create_task(asyncio.to_thread(counter.count, tables))
        if s3 is not None and upload_box is not None:
            # The off-site copy follows the file while it is written (multipart, in parts).
            loop = asyncio.get_running_loop()
            up_started = time.monotonic()

            def uploaded(n: int) -> None:
                loop.call_soon_threadsafe(
                    emit, Progress("upload", n, None, time.monotonic() - up_started))

            upload = StreamUpload(s3, stamp, tmp, uploaded, s3_client)
            upload.start()
            upload_box.append(upload)

        begun = time.monotonic()
        waits = asyncio.ensure_future(asyncio.gather(*(p.wait() for p in procs)))
        while not waits.done():
            await asyncio.wait([waits], timeout=PROGRESS_INTERVAL)
            written = os.fstat(fd).st_size
            elapsed = time.monotonic() - begun
            rate = written / elapsed if elapsed > 0 else 0.0
            eta = (max(expected - written, 0) / rate) if expected and rate > 0 else None
            emit(DumpProgress(written, elapsed, rate, expected, eta))
        codes = dict(zip(names, waits.result(), strict=True))
        await asyncio.gather(*drains)
        # The archive's writer (the cipher, zstd, or pg_dump itself) hit the file-size limit
        # or a full disk.
        writer_text = "\n".join(tails[names[-1]])
        if codes[names[-1]] == -signal.SIGXFSZ or re.search(
                r"No space left|File too large|quota exceeded", writer_text, re.I):
            err = errno.EFBIG if codes[names[-1]] == -signal.SIGXFSZ else errno.ENOSPC
            raise _write_error(OSError(err, os.strerror(err)), tmp, os.fstat(fd).st_size)
        if codes.get("cipher", 0) != 0:  # before pg_dump's: its broken pipe follows from it
            assert cipher is not None
            cipher_text = " ".join(tails["cipher"])
            raise OperationFailed(
                f"{cipher.method} failed (exit {codes['cipher']}): {cipher_text or 'no message'}",
                "Nothing was kept. Check the encryption settings (BACKUP_ENCRYPTION and its "
                "key) and that " + ("gpg works (gpg --version)." if cipher.method == "gpg"
                                    else "pyrage is installed."),
            )
        if codes["pg_dump"] != 0:
            raise _dump_error("\n".join(tails["pg_dump"]), settings, pg_dump, codes["pg_dump"],
                              locks, len(tables))
        if codes.get("zstd", 0) != 0:
            zstd_text = " ".join(tails["zstd"])
            raise OperationFailed(
                f"zstd failed (exit {codes['zstd']}): {zstd_text or 'no message'}",
                "Check the disk and that zstd works (zstd --version).",
            )
        written = os.fstat(fd).st_size
        elapsed = time.monotonic() - begun
        emit(DumpProgress(written, elapsed, written / elapsed if elapsed else 0.0, written, 0.0))
        if upload_box:
            # The rest of the upload runs while the archive is fsynced, hashed and read back;
            # metadata.json, the mark of a complete backup in S3, still goes up only after.
            upload_box[0].writer_done(written)
        try:
            os.fsync(fd)
        except OSError as exc:
            raise _write_error(exc, tmp, written) from None
        # The checksum and the read-back of the table of contents read the stored file side
        # by side (the read-back is a pg_restore process of its own).
        emit(PhaseStarted("checking", "reading back the table of contents"))
        # Both are awaited to their end before either's failure is raised: the file descriptor
        # the checksum reads is closed on the way out.
        both = await asyncio.gather(asyncio.to_thread(_sha256_fd, fd, written),
                                    asyncio.to_thread(read_toc, tmp, pg_restore.path, env,
                                                      cipher, plan.container, depends=False),
                                    return_exceptions=True)
        for outcome in both:
            if isinstance(outcome, BaseException):
                raise outcome
        sha256, toc = cast(str, both[0]), cast(Toc, both[1])
        emit(PhaseStarted("counting", f"{len(tables)} tables in the dump's snapshot"))
        counts = await count_task
        # The archive decides which tables' data it holds: keep exactly those counts.
        in_archive = toc.table_data_oids()
        counts = {oid: n for oid, n in counts.items() if oid in in_archive}
        missing = in_archive - counts.keys()
        if missing:
            by_oid = dict(
                (int(r[0]), (str(r[1]), str(r[2])))
                for r in conn.execute(
                    "SELECT c.oid::int8, n.nspname, c.relname FROM pg_class c"
                    " JOIN pg_namespace n ON n.oid = c.relnamespace WHERE c.oid = ANY(%s)",
                    [sorted(missing)],
                ).fetchall()
            )
            extra = [(o, *by_oid[o]) for o in sorted(missing) if o in by_oid]
            tables.extend(extra)
            counts.update(await asyncio.to_thread(counter.count, extra))
        try:
            publish(tmp, final)
        except FileExistsError:
            raise OperationFailed(
                f"another backup named {final.stem} appeared while this one ran.",
                "Run the backup again (or give it another name).",
            ) from None
        published = True
        return written, sha256, toc, counts, tables
    except asyncio.CancelledError:
        raise
    finally:
        if not published:
            if upload_box:
                await asyncio.to_thread(upload_box[0].abort)
                upload_box.clear()
            _kill_group(pgid)
            if procs:
                await _reap(procs, pgid)
            if count_task is not None:
                # The count runs in a thread on a connection of its own: cancel its query, and
                # again while it runs (a cancel that reaches the server between two of its
                # statements, or before the first, cancels nothing; one waiting on a lock
                # would wait for as long as the lock is held).
                while not count_task.done():
                    counter.cancel()
                    await asyncio.wait([count_task], timeout=0.2)
                # Awaited whatever its end, so a failure of its own is not left unretrieved.
                with contextlib.suppress(BaseException):
                    await count_task
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
            with contextlib.suppress(OSError):
                fsync_dir(tmp.parent)
        await asyncio.to_thread(counter.close)
        os.close(fd)
        if step is not None:
            step.cleanup()


def interrupted_error() -> Interrupted:
    return Interrupted(
        "backup interrupted: pg_dump was stopped and the partial file removed; "
        "no backup was recorded.",
        "Run the backup again when ready.",
    )
