"""Post-restore verification: exact row counts on the target compared with the counts the backup
recorded in its own snapshot, plus tables per schema and the SOP's key tables, and (when the
backup recorded it) the application state of `tui.core.appstate`: grants, RLS, policies,
sequences, extensions, publications, event triggers."""

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

from tui.core.appstate import AppDifference, verify_app_state
from tui.core.archive import TocEntry
from tui.core.events import Emit, PhaseStarted, TableChecked, ignore
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
    # None: the backup recorded no application state (older metadata), so none was compared.
    differences: list[AppDifference] | None = None

    @property
    def passed(self) -> bool:
        return all(r.status == "ok" for r in self.rows) and not self.failures

    @property
    def failures(self) -> list[AppDifference]:
        return [d for d in self.differences or [] if d.severity == "fail"]

    @property
    def warnings(self) -> list[AppDifference]:
        return [d for d in self.differences or [] if d.severity != "fail"]

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
            "app_state": None if self.differences is None else {
                "failures": [d.as_json() for d in self.failures],
                "warnings": [d.as_json() for d in self.warnings],
            },
        }


def _present(conn: psycopg.Connection[Any]) -> set[tuple[str, str]]:
    return {(str(r[0]), str(r[1])) for r in conn.execute(
        "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n"
        " ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p')").fetchall()}


def verify_counts(
    settings: Settings,
    meta: dict[str, Any],
    *,
    target: Target | None = None,
    dbname: str | None = None,
    jobs: int = 4,
    emit: Emit = ignore,
    analyze: bool = True,
    app_schemas: set[str] | None = None,
) -> VerifyReport:
    """Compare the target's exact counts with the backup's, using `jobs` connections at once.

    With `analyze`, every restored table is also ANALYZEd (pg_restore leaves no statistics).
    The counts and the ANALYZEs are separate tasks taken largest table first by whichever
    connection is free, so the work spreads over the connections however uneven the tables
    are. `app_schemas`: the schemas the restore restored, where the application state is
    compared (None: all)."""
    return TableVerifier(settings, meta, target=target, dbname=dbname, jobs=jobs,
                         analyze=analyze, emit=emit, app_schemas=app_schemas).finish()


def build_report(settings: Settings, meta: dict[str, Any], target: Target, dbname: str,
                 actual: dict[tuple[str, str], int | None], started: float,
                 app_schemas: set[str] | None = None) -> VerifyReport:
    expected = {(str(t["schema"]), str(t["name"])): int(t["rows"]) for t in meta["tables"]}
    rows = [CountRow(s, t, expected[(s, t)], actual.get((s, t))) for s, t in sorted(expected)]
    per_schema_expected = Counter(s for s, _ in expected)
    with connect(target, settings, dbname=dbname) as conn:
        restored = Counter(str(r[0]) for r in conn.execute(
            "SELECT n.nspname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace"
            " WHERE c.relkind = 'r' AND n.nspname NOT IN ('pg_catalog', 'information_schema')"
            " AND n.nspname NOT LIKE 'pg\\_toast%'").fetchall())
        differences = verify_app_state(meta, conn, app_schemas)
    tables_per_schema = {
        schema: {"expected": per_schema_expected.get(schema, 0),
                 "actual": restored.get(schema, 0)}
        # Schemas the restore did not touch (Supabase's auth, kept by the target) are not shown.
        for schema in sorted(set(per_schema_expected) | (
            set(restored) if app_schemas is None else set(restored) & app_schemas))
    }
    key = [r for r in rows if (r.schema, r.table) in KEY_TABLES]
    return VerifyReport(
        backup=str(meta.get("name")),
        target={**target.public(), "database": dbname},
        rows=rows,
        tables_per_schema=tables_per_schema,
        key_tables=key,
        seconds=time.monotonic() - started,
        differences=differences,
    )


def run_verify(settings: Settings, meta: dict[str, Any], *, jobs: int = 4, emit: Emit = ignore,
               origin: str = "cli") -> VerifyReport:
    """`pgrunbook verify` and the runbooks' verify step: the counts, recorded in the audit trail
    with their verdict and the tables that differ."""
    from tui.core.operation import operation

    with operation(settings, "verify", emit, origin=origin,
                   arguments={"backup": meta.get("name"), "jobs": jobs}) as op:
        report = verify_counts(settings, meta, jobs=jobs, emit=op.emit)
        differing = [f"{r.schema}.{r.table}" for r in report.mismatches]
        op.end.update(backup=meta.get("name"), tables=len(report.rows),
                      differing=differing[:50],
                      app_failures=[d.detail for d in report.failures][:50])
        if not report.passed:
            op.verdict = "verify-failed"
            op.problem = (f"{len(differing)} tables differ, {len(report.failures)} application "
                          "state failures")
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


# How long after pg_restore's "finished item" line a free job slot is taken as free: when it
# has an item ready it prints "launching item" right after (in the same pass of its loop).
SLOT_GRACE = 0.05


class TableVerifier:
    """Counts and analyzes the backup's tables on `jobs` connections of its own.

    Each table is two tasks, its exact count and its ANALYZE (they take locks that do not
    conflict, so two connections can share one large table). During a restore (`blockers` from
    `table_blockers`), a table's tasks are ready as soon as pg_restore has finished every entry
    that could lock it (`item_finished`), and one runs only while pg_restore leaves one of its
    `--jobs` slots free (`item_launched`/`item_finished` keep count, `dispatch` starts what
    fits): the verification never adds to the concurrency the operator chose, so it works in
    the gaps of the restore (its last items run on fewer jobs) instead of slowing the items on
    its critical path. Tables are never touched before their turn, so the restore cannot be
    held up. `finish()` does the rest, largest first, on every connection, and returns the
    report."""

    def __init__(self, settings: Settings, meta: dict[str, Any],
                 blockers: dict[tuple[str, str], set[int]] | None = None, *,
                 target: Target | None = None, dbname: str | None = None, jobs: int = 4,
                 analyze: bool = True, emit: Emit = ignore,
                 app_schemas: set[str] | None = None) -> None:
        self.settings = settings
        self.app_schemas = app_schemas
        self.meta = meta
        self.target = target or settings.target
        self.dbname = dbname or self.target.dbname
        self.analyze = analyze
        self.jobs = max(1, jobs)
        self.emit = emit
        self.rows = {(str(t["schema"]), str(t["name"])): int(t["rows"]) for t in meta["tables"]}
        self.waiting = {t: set(b) for t, b in (blockers or {}).items() if t in self.rows}
        self.actual: dict[tuple[str, str], int | None] = {}
        self.early: set[tuple[str, str]] = set()  # tables begun while pg_restore ran
        self.pool = ThreadPoolExecutor(max_workers=self.jobs, thread_name_prefix="verify")
        self.futures: list[Future[None]] = []
        self._local = threading.local()
        self._conns: list[psycopg.Connection[Any]] = []
        # Scheduling state, shared by the event loop (pg_restore's lines) and the workers.
        self._lock = threading.RLock()
        self._queue: list[tuple[str, tuple[str, str]]] = []  # (task, table), in order
        self._queued: set[tuple[str, str]] = set()
        self._restore_items = 0  # pg_restore items launched and not finished
        self._tasks = 0  # verification tasks submitted and not done
        self._stopped = False
        # While pg_restore runs, the counts take no parallel workers and the tasks wait for a
        # free job slot; once it has exited, every connection (and parallel worker) may work.
        self._restoring = blockers is not None

    @property
    def tasks_running(self) -> int:
        """Verification tasks submitted and not yet done."""
        with self._lock:
            return self._tasks

    def item_launched(self, dump_id: int) -> None:
        """pg_restore reported `launching item <dump_id>`: one of its job slots is taken."""
        with self._lock:
            self._restore_items += 1

    def item_finished(self, dump_id: int) -> None:
        """pg_restore reported `finished item <dump_id>`: the tables it was the last blocker of
        are queued. Nothing starts yet: pg_restore launches its next item at once when it has
        one ready, so call `dispatch()` a moment later, when the freed slot is known to be
        free (`SLOT_GRACE`)."""
        with self._lock:
            self._restore_items = max(0, self._restore_items - 1)
            ready = []
            for table, blockers in self.waiting.items():
                blockers.discard(dump_id)
                if not blockers:
                    ready.append(table)
            for table in ready:
                del self.waiting[table]
            self._enqueue(sorted(ready, key=lambda t: self.rows[t], reverse=True))

    def dispatch(self) -> None:
        """Start queued tasks while there is a free slot."""
        with self._lock:
            self._dispatch()

    def _enqueue(self, tables: list[tuple[str, str]]) -> None:
        for table in tables:
            if table not in self._queued:
                self._queued.add(table)
                self._queue.append(("count", table))
                if self.analyze:
                    self._queue.append(("analyze", table))

    def _dispatch(self) -> None:
        """Submit queued tasks while there is room (called with the lock held)."""
        while self._queue and not self._stopped and (
                not self._restoring or self._tasks + self._restore_items < self.jobs):
            task, table = self._queue.pop(0)
            if self._restoring:
                self.early.add(table)
            self._tasks += 1
            future = self.pool.submit(self._run_task, task, table)
            self.futures.append(future)
            future.add_done_callback(self._task_done)

    def _task_done(self, _future: Future[None]) -> None:
        with self._lock:
            self._tasks -= 1
            self._dispatch()

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

    def _run_task(self, task: str, table: tuple[str, str]) -> None:
        if self._stopped:
            return
        conn = self._conn()
        restoring = self._restoring
        if self._local.serial != restoring:
            conn.execute("SET max_parallel_workers_per_gather = 0" if restoring
                         else "RESET max_parallel_workers_per_gather")
            self._local.serial = restoring
        if table not in self._local.present:  # created by the restore after this connection
            self._local.present = _present(conn)
        present = table in self._local.present
        ident = sql.SQL("{}.{}").format(sql.Identifier(table[0]), sql.Identifier(table[1]))
        began = time.monotonic()
        rows = None
        if task == "count":
            row = (conn.execute(sql.SQL("SELECT count(*) FROM ONLY {}").format(ident)).fetchone()
                   if present else None)
            rows = self.actual[table] = int(str(row[0])) if row else None
        elif present:
            conn.execute(sql.SQL("ANALYZE {}").format(ident))
        else:
            return
        self.emit(TableChecked(table[0], table[1], task, time.monotonic() - began, rows,
                               restoring))

    def finish(self) -> VerifyReport:
        """Verify what is left (largest first) and gather everything; during a restore, once
        pg_restore has exited cleanly. The report's seconds are the time from here: what the
        verification adds to the restore."""
        started = time.monotonic()
        done = (f"{len(self.early)} of them begun while pg_restore ran" if self.early
                else f"{min(self.jobs, len(self.rows)) or 1} connections")
        self.emit(PhaseStarted("counting" + (" and analyzing" if self.analyze else ""),
                               f"{len(self.rows)} tables in {self.dbname}, {done}"))
        try:
            with self._lock:
                self._restoring = False
                self._restore_items = 0
                self.waiting.clear()
                self._enqueue(sorted((t for t in self.rows if t not in self._queued),
                                     key=lambda t: self.rows[t], reverse=True))
                self._dispatch()
                futures = list(self.futures)
            # Every task is submitted by now (tasks that end only submit queued ones, and the
            # queue is empty), so these are all of them.
            for f in futures:
                f.result()
        finally:
            self.close()
        return build_report(self.settings, self.meta, self.target, self.dbname, self.actual,
                            started, self.app_schemas)

    def abort(self) -> None:
        """The restore failed or was interrupted: stop at once (running queries cancelled)."""
        with self._lock:
            self._stopped = True
            self._queue.clear()
            for conn in self._conns:
                with contextlib.suppress(Exception):
                    conn.cancel()
        self.close()

    def close(self) -> None:
        with self._lock:
            self._stopped = True
        self.pool.shutdown(wait=True, cancel_futures=True)
        with self._lock:
            for conn in self._conns:
                with contextlib.suppress(Exception):
                    conn.close()
            self._conns.clear()
