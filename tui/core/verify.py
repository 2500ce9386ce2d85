"""Post-restore verification: exact row counts on the target compared with the counts the backup
recorded in its own snapshot, plus tables per schema and the SOP's key tables."""

from __future__ import annotations

import queue
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from typing import Any

from psycopg import sql

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


def _count_worker(target: Target, settings: Settings, dbname: str,
                  work: queue.SimpleQueue[tuple[str, str]], analyze: bool,
                  out: dict[tuple[str, str], int | None]) -> None:
    """One connection: take the next table (largest first) until none is left; count it, then
    ANALYZE it while its pages are still in cache (the count has just set their hint bits)."""
    with connect(target, settings, dbname=dbname) as conn:
        present = {
            (str(r[0]), str(r[1])) for r in conn.execute(
                "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n"
                " ON n.oid = c.relnamespace WHERE c.relkind IN ('r', 'p')").fetchall()
        }
        while True:
            try:
                schema, name = work.get_nowait()
            except queue.Empty:
                return
            if (schema, name) not in present:
                out[(schema, name)] = None
                continue
            ident = sql.SQL("{}.{}").format(sql.Identifier(schema), sql.Identifier(name))
            row = conn.execute(sql.SQL("SELECT count(*) FROM ONLY {}").format(ident)).fetchone()
            out[(schema, name)] = int(str(row[0])) if row else None
            if analyze:
                conn.execute(sql.SQL("ANALYZE {}").format(ident))


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
    each connection counts a table and then analyzes it, taking the next table from one queue,
    largest first, so the work spreads over the connections however uneven the tables are."""
    target = target or settings.target
    dbname = dbname or target.dbname
    started = time.monotonic()
    expected = {(str(t["schema"]), str(t["name"])): int(t["rows"]) for t in meta["tables"]}
    n = max(1, min(jobs, len(expected)))
    emit(PhaseStarted("counting" + (" and analyzing" if analyze else ""),
                      f"{len(expected)} tables in {dbname}, {n} connections"))
    work: queue.SimpleQueue[tuple[str, str]] = queue.SimpleQueue()
    for table in sorted(expected, key=lambda k: -expected[k]):
        work.put(table)
    actual: dict[tuple[str, str], int | None] = {}
    with ThreadPoolExecutor(max_workers=n) as pool:
        for done in [pool.submit(_count_worker, target, settings, dbname, work, analyze, actual)
                     for _ in range(n)]:
            done.result()
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
