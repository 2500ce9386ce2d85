#!/usr/bin/env python3
"""Many-tables benchmark: `pgrunbook backup` and `restore` of 3,000 small tables against the bare
PostgreSQL tools, at default lock settings (issue 10, item 8).

A plain script, not a pytest test:

    .venv/bin/python tests/bench/bench_many_tables.py [--tables N] [--repeat N] [--jobs J]
                                                      [--keep-going] [--json OUT]

It reuses the backup and restore benchmarks (`bench_backup.py`, `bench_restore.py`, imported):
the same process measuring (wall clock, VmHWM polled every 20 ms, wait4's ru_maxrss), the same
variants. The throwaway PostgreSQL runs with max_connections 50 and max_locks_per_transaction
64 (a shared lock table of about 64 x 50 locks); its `postgres` database holds N tables (default
3,000: id bigint primary key, a text column, 1 to 5 rows each, every 300th with values stored
out of line in its TOAST table), built the way tests/test_many_tables.py builds them. In one run
and alternating per round (--repeat N, default 3):

    backup bare     pg_dump -Fc -Z0 | zstd -3 > FILE   (pgrunbook's compression on PostgreSQL 15:
                    its zstd:3 container)
    backup tool     pgrunbook backup bench             (also the exact row counts in the dump's
                    snapshot, the checksum, the TOC read-back, the metadata)
    restore bare    zstd -dq -o TMP ARCHIVE, then pg_restore --jobs=J --no-owner
                    --no-privileges -d EMPTYDB TMP      (the stored archive, as an operator would)
    restore tool    pgrunbook restore NAME --yes --jobs J --no-verify into EMPTYDB
    restore tool+verify  the same with the verification (exact counts and ANALYZE of every
                    table)
Shown beside them, not judged: bare pg_restore -jJ of the archive decompressed beforehand
(untimed), and once, the full operation over the POPULATED database (a safety backup taken and
verified, the schemas emptied in batches that fit the lock table, the restore, the
verification): the case the issue reported.

Goals (median of the per-round ratios; best/best printed as well):
    pgrunbook backup / bare pg_dump | zstd -3                       <= 1.3
    pgrunbook restore (with verify) / bare zstd -d + pg_restore -jJ  <= 1.3

MB means 10^6 bytes. Exit code: 0 when all goals pass, 1 when a goal fails, 2 when a variant
could not run.
"""

from __future__ import annotations

import argparse
import functools
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_backup as bb  # noqa: E402  (also puts the project root on sys.path)
from bench_backup import HwmPoller, Result, log, wait_all  # noqa: E402
from bench_restore import RestoreBench, paired, print_table  # noqa: E402

from tests.test_many_tables import CREATE_BATCH, PER_TRANSACTION, SMALL_LOCKS  # noqa: E402
from tui.core.cluster import ThrowawayCluster  # noqa: E402

GOAL_RATIO = 1.3
DEFAULT_TABLES = 3000
DEFAULT_REPEAT = 3


class ManyTablesBench(RestoreBench):
    def build(self, tables: int) -> dict[str, Any]:
        log(f"building {tables:,} tables in {bb.DBNAME} ({PER_TRANSACTION} per transaction) ...")
        t0 = time.perf_counter()
        with self.connect() as conn:
            conn.execute("CREATE SCHEMA app")
            for first in range(1, tables + 1, PER_TRANSACTION):
                conn.execute(CREATE_BATCH.format(first=first,
                                                 last=min(first + PER_TRANSACTION - 1, tables)))
            conn.execute("VACUUM ANALYZE")
            row = conn.execute(
                "SELECT pg_database_size(current_database()), current_setting('server_version'),"
                " (SELECT count(*) FROM pg_class WHERE relnamespace::regnamespace::text"
                "  IN ('public', 'app'))").fetchone()
            settings = dict(conn.execute(
                "SELECT name, setting FROM pg_settings WHERE name IN ('max_connections',"
                " 'max_locks_per_transaction')").fetchall())
        assert row is not None
        took = time.perf_counter() - t0
        info = {"tables": tables, "relations": int(row[2]), "database_size_bytes": int(row[0]),
                "server_version": str(row[1]).split()[0], "settings": settings,
                "build_seconds": round(took, 1)}
        log(f"  {row[2]:,} tables and indexes (each table also has a TOAST table and its "
            f"index), {int(row[0]) / bb.MB:.1f} MB, "
            f"{took:.1f} s; {settings}")
        return info

    def stored_bare(self, result: Result, *, dbname: str, jobs: int) -> None:
        """What an operator does by hand with the stored archive: `zstd -dq -o TMP ARCHIVE`,
        then plain `pg_restore --jobs=J --no-owner --no-privileges -d DB TMP`."""
        assert self.archive is not None
        tmp = self.backup_dir / f".bare_{result.key}.dump"
        try:
            with self._err_file(result.key).open("wb") as err:
                t0 = time.perf_counter()
                unzstd = subprocess.Popen(["zstd", "-dq", "-o", str(tmp), str(self.archive)],
                                          stdout=err, stderr=err, stdin=subprocess.DEVNULL)
                poller = HwmPoller([unzstd.pid])
                poller.start()
                stats = wait_all([("zstd", unzstd)], poller)
                self._check(stats, result.key)
                proc = subprocess.Popen(self._pg_restore_argv(dbname, jobs, False, tmp),
                                        stdout=err, stderr=err, stdin=subprocess.DEVNULL,
                                        env=self.pg_env)
                poller = HwmPoller([proc.pid])
                poller.start()
                stats += wait_all([("pg_restore", proc)], poller)
                result.seconds = time.perf_counter() - t0
            result.procs = stats
            self._check(stats, result.key)
            self.check_restored(dbname, result)
        finally:
            tmp.unlink(missing_ok=True)
            self.drop_db(dbname)


def ratio(results: list[Result], num: str, den: str) -> dict[str, Any] | None:
    pairs = paired(results, den, num)  # (den_i, num_i)
    ratios = [n.seconds / d.seconds for d, n in pairs if n.seconds and d.seconds]
    if not ratios:
        return None
    n_best = min(n.seconds or 0.0 for _, n in pairs)
    d_best = min(d.seconds or 0.0 for d, _ in pairs)
    return {"median": statistics.median(ratios), "per_round": ratios,
            "best_over_best": n_best / d_best, "num_best": n_best, "den_best": d_best}


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--tables", type=int, default=DEFAULT_TABLES,
                        help=f"how many tables (default {DEFAULT_TABLES})")
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT, metavar="N",
                        help=f"rounds of every variant, alternating (default {DEFAULT_REPEAT})")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2, metavar="J",
                        help="pg_restore --jobs for every restore (default: CPUs)")
    parser.add_argument("--keep-going", action="store_true",
                        help="record a failing variant and run the rest instead of stopping")
    parser.add_argument("--json", metavar="OUT", help="also write all numbers to this file")
    parser.add_argument("--workdir", metavar="DIR",
                        help="where outputs are written (default: a new temp dir under "
                             f"{tempfile.gettempdir()}); removed afterwards")
    args = parser.parse_args(argv)
    if shutil.which("zstd") is None:
        log("zstd is not installed (apt install zstd).")
        return 2
    jobs = max(1, args.jobs)
    started_at = datetime.now(UTC)
    workdir = Path(tempfile.mkdtemp(prefix="pgrb-bench-many-", dir=args.workdir))
    cluster = ThrowawayCluster(extra_conf=SMALL_LOCKS)
    exit_code = 0
    try:
        log(f"starting a throwaway PostgreSQL with {SMALL_LOCKS} (outputs in {workdir}) ...")
        cluster.start()
        log(f"  port {cluster.port}, binaries {cluster.bindir}")
        bench = ManyTablesBench(cluster, workdir, args.keep_going, jobs)
        db = bench.build(args.tables)
        log("")
        log("measuring (restores into a freshly created empty database unless noted; "
            "sync(2) before each):")

        def run(key: str, label: str, body: Callable[[Result], None],
                dbname: str | None = None, record: bool = True) -> Result:
            if dbname is not None:
                bench.fresh_db(dbname)
            return bench.measure(key, label, body, record=record)

        rounds = max(args.repeat, 1)
        try:
            # The backups first: each tool run removes its archive, and the restores need one.
            run("warmup", "warm-up: pgrunbook backup (discarded)", bench.tool, record=False)
            for i in range(1, rounds + 1):
                run(f"bkbare{i}", f"backup bare: pg_dump -Fc -Z0 | zstd -3 #{i}", bench.bare)
                run(f"bktool{i}", f"backup tool: pgrunbook backup #{i}", bench.tool)
            bench.take_backup()
            for i in range(1, rounds + 1):
                run(f"plain{i}", f"restore: pg_restore -j{jobs} of the decompressed dump #{i}",
                    functools.partial(bench.bare_restore, dbname=f"mt_plain{i}", jobs=jobs),
                    f"mt_plain{i}")
                run(f"rsbare{i}", f"restore bare: zstd -dq + pg_restore -j{jobs} #{i}",
                    functools.partial(bench.stored_bare, dbname=f"mt_bare{i}", jobs=jobs),
                    f"mt_bare{i}")
                run(f"rstool{i}", f"restore tool: pgrunbook --no-verify #{i}",
                    functools.partial(bench.tool_restore, dbname=f"mt_tool{i}", jobs=jobs,
                                      verify=False), f"mt_tool{i}")
                run(f"rstoolv{i}", f"restore tool: pgrunbook with verify #{i}",
                    functools.partial(bench.tool_restore, dbname=f"mt_toolv{i}", jobs=jobs,
                                      verify=True), f"mt_toolv{i}")
            run("full", "full operation: pgrunbook restore over the populated database",
                functools.partial(bench.tool_restore, dbname=bb.DBNAME, jobs=jobs, verify=True,
                                  keep=True))
        except Exception:  # noqa: BLE001 - measure() printed it; stop without --keep-going
            exit_code = 2
        results = bench.results

        log("")
        log(f"Results ({args.tables:,} tables, {db['relations']:,} tables and indexes, "
            f"{db['database_size_bytes'] / bb.MB:,.1f} MB, PostgreSQL {db['server_version']}, "
            f"{os.cpu_count()} CPUs, --jobs {jobs}, {started_at:%Y-%m-%d}):")
        print_table(results, None)
        ratios = {
            "backup: pgrunbook / pg_dump | zstd -3": ratio(results, "bktool", "bkbare"),
            "restore: pgrunbook with verify / zstd -d + pg_restore":
                ratio(results, "rstoolv", "rsbare"),
            "restore: pgrunbook --no-verify / zstd -d + pg_restore":
                ratio(results, "rstool", "rsbare"),
            "restore: pgrunbook with verify / pg_restore of the decompressed dump":
                ratio(results, "rstoolv", "plain"),
        }
        judged = ("backup: pgrunbook / pg_dump | zstd -3",
                  "restore: pgrunbook with verify / zstd -d + pg_restore")
        log("")
        log(f"Ratios (median of rounds; goal <= {GOAL_RATIO} for the first two):")
        goals = []
        for name, r in ratios.items():
            if r is None:
                log(f"  {name}: missing runs")
                if name in judged:
                    goals.append({"goal": name, "status": "N/A"})
                    exit_code = max(exit_code, 2)
                continue
            status = ("PASS" if r["median"] <= GOAL_RATIO else "FAIL") if name in judged \
                else "(not judged)"
            log(f"  {name}: {r['median']:.3f} {status}  (per round "
                f"{', '.join(f'{x:.3f}' for x in r['per_round'])}; best/best "
                f"{r['best_over_best']:.3f} = {r['num_best']:.2f} s / {r['den_best']:.2f} s, "
                f"{r['num_best'] - r['den_best']:+.2f} s)")
            if name in judged:
                goals.append({"goal": name, "target": f"<= {GOAL_RATIO}", "status": status, **r})
                if status == "FAIL":
                    exit_code = max(exit_code, 1)
        full = next((r for r in results if r.key == "full" and r.error is None), None)
        if full is not None:
            log(f"  full operation over the populated database: {full.seconds:.2f} s "
                f"(safety backup {full.extra.get('safety_backup_seconds')} s inside)")

        if args.json:
            bb.write_json(args.json, started_at,
                database=db,
                jobs=jobs,
                results=[asdict(r) for r in results],
                ratios=ratios,
                goals=goals,
            )
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return exit_code


if __name__ == "__main__":
    raise SystemExit(main())
