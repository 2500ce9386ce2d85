"""Post-restore verification: exact row counts on the target compared with the counts the backup
recorded in its own snapshot, plus tables per schema and the SOP's key tables."""

from __future__ import annotations

import contextlib
import threading
import time
from collections import Counter
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

import psycopg
from psycopg import sql

from tui.core.archive import TocEntry
from tui.core.events import Emit, PhaseStarted, ignore
from tui.core.pgtools import connect
from tui.core.settings import Settings, Target

KEY_TABLES = (("auth", "users"), ("public", "transactions"), ("public", "vendors"))


@dataclass(frozen=True)
class CountRow:
    schema: str
    table: str
    expected: int
    actual: int | None  # None: the table is missing on the target

    @property
    def difference(self) -> int | None:
        return None if self.actual is None else self.actual - self.expected

    @property
    def status(self) -> str:
        if self.actual is None:
            return "missing"
        return "ok" if self.actual == self.expected else "differs"


@dataclass
class VerifyReport:
    backup: str
    target: dict[str, Any]
    rows: list[CountRow]
    tables_per_schema: dict[str, dict[str, int]] = field(default_factory=dict)
    key_tables: list[CountRow] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return all(r.status == "ok" for r in self.rows)

    @property
    def mismatches(self) -> list[CountRow]:
        return [r for r in self.rows if r.status != "ok"]

    def ordered(self) -> list[CountRow]:
        """Mismatches first, then the rest by name."""
        return sorted(self.rows, key=lambda r: (r.status == "ok", r.schema, r.table))

    def as_json(self) -> dict[str, Any]:
        return {
            "backup": self.backup,
            "target": self.target,
            "result": "PASS" if self.passed else "FAIL",
            "seconds": round(self.seconds, 3),
            "tables": [
                {**asdict(r), "difference": r.difference, "status": r.status}
                for r in self.ordered()
            ],
            "tables_per_schema": self.tables_per_schema,
            "key_tables": [{**asdict(r), "status": r.status} for r in self.key_tables],
        }


def _present(conn: psycopg.Connection[Any]) -> set[tuple[str, str]]:
    return {(str(r[0]), str(r[1])) for r in conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n"
        " ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p')").fetchall()}


def _count_one(conn: psycopg.Connection[Any], schema: str, name: str, analyze: bool) -> int:
    """The exact count, then ANALYZE while the table's pages are still in cache (the count has
    just set their hint bits)."""
    ident = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))
    row = conn.execute(sql.SQL("SELECT count(*) FROM ONLY {}").format(ident)).fetchone()
    if analyze:
        conn.execute(sql.SQL("ANALYZE {}").format(ident))
    return int(str(row[0])) if row else 0


def verify_counts(
    settings: Settings,
    meta: dict[str, Any],
    *,
    target: Target | None = None,
    dbname: str | None = None,
    jobs: int = 4,
    emit: Emit = ignore,
    analyze: bool = True,
) -> VerifyReport:
    """Compare the target's exact counts with the backup's, using `jobs` connections at once.

    With `analyze`, every restored table is also ANALYZEd (pg_restore leaves no statistics):
    each connection counts a table and then analyzes it, taking the next table largest first,
    so the work spreads over the connections however uneven the tables are."""
    return TableVerifier(settings, meta, target=target, dbname=dbname, jobs=jobs,
                         analyze=analyze, emit=emit).finish()


def build_report(settings: Settings, meta: dict[str, Any], target: Target, dbname: str,
                 actual: dict[tuple[str, str], int | None], started: float) -> VerifyReport:
    expected = {(str(t["schema"]), str(t["name"])): int(t["rows"]) for t in meta["tables"]}
    rows = [CountRow(s, t, expected[(s, t)], actual.get((s, t))) for s, t in sorted(expected)]
    per_schema_expected = Counter(s for s, _ in expected)
    with connect(target, settings, dbname=dbname) as conn:
        restored = Counter(str(r[0]) for r in conn.execute(
            "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
            " AND n.nspname NOT LIKE 'pg\\_toast%'").fetchall())
    tables_per_schema = {
        schema: {"expected": per_schema_expected.get(schema, 0),
                 "actual": restored.get(schema, 0)}
        for schema in sorted(set(per_schema_expected) | set(restored))
    }
    key = [r for r in rows if (r.schema, r.table) in KEY_TABLES]
    return VerifyReport(
        backup=str(meta.get("name")),
        target={**target.public(), "database": dbname},
        rows=rows,
        tables_per_schema=tables_per_schema,
        key_tables=key,
        seconds=time.monotonic() - started,
    )


def run_verify(settings: Settings, meta: dict[str, Any], *, jobs: int = 4, emit: Emit = ignore,
               origin: str = "cli") -> VerifyReport:
    """`pgrunbook verify` and the runbooks' verify step: the counts, recorded in the audit trail
    with their verdict and the tables that differ."""
    from tui.core.audit import AuditLog
    from tui.core.backup import secrets_of

    record = AuditLog(settings.backup_dir, secrets_of(settings)).start(
        "verify", target=settings.target.public(),
        arguments={"backup": meta.get("name"), "jobs": jobs}, reason=None, origin=origin)
    try:
        report = verify_counts(settings, meta, jobs=jobs, emit=emit)
    except BaseException as exc:
        record.finish("failed", str(exc), backup=meta.get("name"))
        raise
    differing = [f"{r.schema}.{r.table}" for r in report.mismatches]
    record.finish("ok" if report.passed else "verify-failed",
                  None if report.passed else f"{len(differing)} tables differ",
                  backup=meta.get("name"), tables=len(report.rows), differing=differing[:50])
    return report


# Entries that carry a table's rows; every entry after the first of them in the archive's table
# of contents is restored in pg_restore's parallel phase (before it: the pre-data section, done
# by pg_restore's leader before any worker starts).
DATA_DESCS = ("TABLE DATA", "SEQUENCE SET", "BLOBS", "LARGE OBJECT", "MATERIALIZED VIEW DATA")
ACL_DESCS = ("ACL", "DEFAULT ACL")


def table_blockers(entries: list[TocEntry], deps: dict[int, list[int]],
                   tables: list[tuple[str, str]], *, skipped: set[int],
                   privileges: bool) -> dict[tuple[str, str], set[int]]:
    """For each table: the dump ids pg_restore must have finished before the table can be
    counted and analyzed while the restore goes on. That is its TABLE DATA and every entry that
    depends on its TABLE or TABLE DATA entry, directly or through others (indexes, constraints,
    foreign keys of other tables that reference it, triggers, policies, comments, grants): any of
    them may take a lock that a running count (ACCESS SHARE) or ANALYZE (SHARE UPDATE
    EXCLUSIVE) would hold up. Entries the restore will not run (filtered out, or grants with
    --no-privileges) and the pre-data section (finished before the parallel phase) are left
    out. A table whose entries cannot be found is not in the result: it is verified after the
    restore."""
    position = {e.dump_id: i for i, e in enumerate(entries)}
    first_data = next((i for i, e in enumerate(entries) if e.desc in DATA_DESCS), len(entries))
    dependents: dict[int, list[int]] = {}
    for dump_id, on in deps.items():
        for d in on:
            dependents.setdefault(d, []).append(dump_id)
    # "TABLE DATA public film postgres": found by its text without the owner. A name that does
    # not come out whole this way (an owner with a space in it) is simply not found.
    by_head: dict[str, TocEntry] = {}
    for e in entries:
        by_head.setdefault(e.text, e)
        by_head.setdefault(e.text.rsplit(" ", 1)[0], e)
    kinds = {e.dump_id: e.desc for e in entries}
    out: dict[tuple[str, str], set[int]] = {}
    for schema, name in tables:
        table = by_head.get(f"TABLE {schema} {name}")
        data = by_head.get(f"TABLE DATA {schema} {name}")
        if table is None or table.desc != "TABLE" or (data and data.desc != "TABLE DATA"):
            continue
        roots = [table.dump_id] + ([data.dump_id] if data else [])
        seen: set[int] = set(roots)
        todo = list(roots)
        while todo:
            for d in dependents.get(todo.pop(), []):
                if d not in seen:
                    seen.add(d)
                    todo.append(d)
        out[(schema, name)] = {
            d for d in seen
            if d in position and position[d] >= first_data and d not in skipped
            and not (not privileges and kinds.get(d) in ACL_DESCS)
        }
    return out


class TableVerifier:
    """Counts and analyzes the backup's tables on `jobs` connections of its own.

    During a restore (`blockers` from `table_blockers`), each table is taken as soon as
    pg_restore has finished every entry that could lock it (`item_finished`), while pg_restore
    still builds other tables' indexes; tables are never touched before their turn, so the
    restore cannot be held up. `finish()` does the rest, largest first, and returns the report."""

    def __init__(self, settings: Settings, meta: dict[str, Any],
                 blockers: dict[tuple[str, str], set[int]] | None = None, *,
                 target: Target | None = None, dbname: str | None = None, jobs: int = 4,
                 analyze: bool = True, emit: Emit = ignore) -> None:
        self.settings = settings
        self.meta = meta
        self.target = target or settings.target
        self.dbname = dbname or self.target.dbname
        self.analyze = analyze
        self.jobs = max(1, jobs)
        self.emit = emit
        self.rows = {(str(t["schema"]), str(t["name"])): int(t["rows"]) for t in meta["tables"]}
        self.waiting = {t: set(b) for t, b in (blockers or {}).items() if t in self.rows}
        self.actual: dict[tuple[str, str], int | None] = {}
        self.early = 0
        self.pool = ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="verify")
        self.futures: list[Future[None]] = []
        self._local = threading.local()
        self._conns: list[psycopg.Connection[Any]] = []
        self._lock = threading.Lock()
        self._stopped = False
        # While pg_restore runs, the counts take no parallel workers: the cores are busy with
        # the restore, and workers would only add processes competing with it.
        self._restoring = blockers is not None

    def item_finished(self, dump_id: int) -> None:
        """pg_restore reported `finished item <dump_id>` (called from the event loop)."""
        ready = []
        for table, blockers in self.waiting.items():
            blockers.discard(dump_id)
            if not blockers:
                ready.append(table)
        for table in ready:
            del self.waiting[table]
            self.early += 1
            self._submit(table)

    def _submit(self, table: tuple[str, str]) -> None:
        if not self._stopped:
            self.futures.append(self.pool.submit(self._verify_one, table))

    def _conn(self) -> psycopg.Connection[Any]:
        conn = getattr(self._local, "conn", None)
        if conn is None:
            conn = connect(self.target, self.settings, dbname=self.dbname)
            # A plain count gains nothing from JIT compilation, which costs CPU per query.
            conn.execute("SET jit = off")
            self._local.conn = conn
            self._local.serial = False
            self._local.present = _present(conn)
            with self._lock:
                self._conns.append(conn)
        return conn

    def _verify_one(self, table: tuple[str, str]) -> None:
        if self._stopped:
            return
        conn = self._conn()
        if self._local.serial != self._restoring:
            conn.execute("SET max_parallel_workers_per_gather = 0" if self._restoring
                         else "RESET max_parallel_workers_per_gather")
            self._local.serial = self._restoring
        if table not in self._local.present:  # created by the restore after this connection
            self._local.present = _present(conn)
        self.actual[table] = (_count_one(conn, *table, analyze=self.analyze)
                              if table in self._local.present else None)

    def finish(self) -> VerifyReport:
        """Verify what is left (largest first) and gather everything; during a restore, once
        pg_restore has exited cleanly. The report's seconds are the time from here: what the
        verification adds to the restore."""
        started = time.monotonic()
        done = (f"{self.early} of them already while pg_restore ran" if self.early
                else f"{min(self.jobs, len(self.rows)) or 1} connections")
        self.emit(PhaseStarted("counting" + (" and analyzing" if self.analyze else ""),
                               f"{len(self.rows)} tables in {self.dbname}, {done}"))
        try:
            for f in list(self.futures):
                f.result()
            self._restoring = False
            self.waiting.clear()
            for table in sorted((t for t in self.rows if t not in self.actual),
                                key=lambda t: self.rows[t], reverse=True):
                self._submit(table)
            for f in self.futures:
                f.result()
        finally:
            self.close()
        return build_report(self.settings, self.meta, self.target, self.dbname, self.actual,
                            started)

    def abort(self) -> None:
        """The restore failed or was interrupted: stop at once (running queries cancelled)."""
        self._stopped = True
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(Exception):
                    conn.cancel()
        self.close()

    def close(self) -> None:
        self.pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(Exception):
                    conn.close()
            self._conns.clear()
