#!/usr/bin/env python3
"""The emergency runbook's operations, before and after "one emergency backup" (issue 15,
item 3), on the restore benchmark's database.

A plain script, not a pytest test:

    .venv/bin/python tests/bench/bench_emergency.py [--scale N] [--repeat N] [--jobs J]
                                                    [--json OUT]

The database is the one `bench_restore.py` builds (`pgbench -i -s N` plus the jsonb tables,
1.47 GB at the default scale) in a throwaway PostgreSQL, with autovacuum off so that nothing
but the benchmark writes (an autovacuum ANALYZE is a write, and would rightly make the engine
take a fresh safety backup). One `pgrunbook backup` of it is the last good backup. Then, in
rounds, over the POPULATED database, what the runbook's operations do (step 4, the emergency
backup, and step 6, the restore with its verification), timed as whole commands:

    before   pgrunbook backup --kind emergency, then pgrunbook restore GOOD --yes
             (the restore takes and verifies a safety backup of its own: two dumps)
    after    pgrunbook backup --kind emergency, then pgrunbook restore GOOD --yes
             --safety-backup EMERGENCY (nothing was written since: the emergency backup is
             checked on the server and its checksum verified, and stands as the safety backup)
    written  as `after`, with one row written between the two (the engine takes a fresh
             safety backup and says why): the cost of the check itself

The variants take turns at going first in each round. Printed: each variant's backup, restore
and total seconds per round, the medians, the ratio after/before (median of the per-round
ratios), the number of dumps each took, and what the restore said about its safety backup.
Exit code 0 when `after` took one dump and `written` two in every round, 1 otherwise."""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_backup as bb  # noqa: E402  (also puts the project root on sys.path)
from bench_backup import build_database, clean_env, log  # noqa: E402
from bench_restore import RestoreBench  # noqa: E402

from tui.core.cluster import ThrowawayCluster  # noqa: E402

VARIANTS = ("before", "after", "written")


def pgrunbook(bench: RestoreBench, *args: str) -> tuple[dict[str, Any], float]:
    t0 = time.perf_counter()
    proc = subprocess.run([str(bench.pgrunbook), "--env-file", str(bench.env_file), *args,
                           "--json"], capture_output=True, env=clean_env(), cwd=bench.workdir,
                          stdin=subprocess.DEVNULL, check=False)
    took = time.perf_counter() - t0
    if proc.returncode != 0:
        raise SystemExit(f"pgrunbook {' '.join(args)} failed ({proc.returncode}): "
                         f"{proc.stderr.decode(errors='replace').strip()[-800:]}")
    return json.loads(proc.stdout), took


def dumps(bench: RestoreBench) -> int:
    return len(list(bench.backup_dir.glob("*.backup")))


def one(bench: RestoreBench, variant: str, good: str, jobs: int) -> dict[str, Any]:
    before = dumps(bench)
    emergency, backup_s = pgrunbook(bench, "backup", "--kind", "emergency")
    if variant == "written":
        with bench.connect() as conn:
            conn.execute("UPDATE pgbench_branches SET filler = 'written' WHERE bid = 1")
    args = ["restore", good, "--yes", "--jobs", str(jobs)]
    if variant != "before":
        args += ["--safety-backup", str(emergency["name"])]
    restored, restore_s = pgrunbook(bench, *args)
    if restored.get("result") != "PASS":
        raise SystemExit(f"{variant}: the restore did not pass: {restored.get('result')}")
    return {"variant": variant, "backup_seconds": backup_s, "restore_seconds": restore_s,
            "total_seconds": backup_s + restore_s, "dumps": dumps(bench) - before,
            "pg_restore_seconds": restored.get("restore_seconds"),
            "safety_backup": restored.get("safety_backup"),
            "safety_note": restored.get("safety_note")}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--scale", type=int, default=bb.DEFAULT_SCALE,
                        help=f"pgbench scale (default {bb.DEFAULT_SCALE}, 1.47 GB in total; "
                             "try 5 for a quick check)")
    parser.add_argument("--repeat", type=int, default=2, metavar="N",
                        help="rounds of the three variants (default 2)")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2, metavar="J")
    parser.add_argument("--json", metavar="OUT", help="also write all numbers to this file")
    args = parser.parse_args(argv)
    workdir = Path(tempfile.mkdtemp(prefix="pgrb-bench-emergency-"))
    cluster = ThrowawayCluster(extra_conf={"autovacuum": "off"})
    rows: list[dict[str, Any]] = []
    started_at = datetime.now(UTC)
    try:
        log(f"starting a throwaway PostgreSQL, autovacuum off (outputs in {workdir}) ...")
        cluster.start()
        bench = RestoreBench(cluster, workdir, False, args.jobs)
        db = build_database(bench, args.scale)
        good, took = pgrunbook(bench, "backup")
        log(f"the last good backup: {good['name']}, {good['size_bytes'] / 1e6:.1f} MB, "
            f"{took:.1f} s")
        for i in range(max(1, args.repeat)):
            turn = i % len(VARIANTS)
            for variant in VARIANTS[turn:] + VARIANTS[:turn]:
                row = one(bench, variant, str(good["name"]), args.jobs)
                row["round"] = i + 1
                rows.append(row)
                log(f"  round {i + 1} {variant:8} backup {row['backup_seconds']:6.1f} s  "
                    f"restore {row['restore_seconds']:6.1f} s  total "
                    f"{row['total_seconds']:6.1f} s  dumps {row['dumps']}  "
                    f"({row['safety_note']})")
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)

    log("")
    log("| variant | dumps | backup (median) | restore (median) | total (median) |")
    log("|---|---:|---:|---:|---:|")
    medians: dict[str, float] = {}
    for variant in VARIANTS:
        mine = [r for r in rows if r["variant"] == variant]
        medians[variant] = statistics.median(r["total_seconds"] for r in mine)
        log(f"| {variant} | {'/'.join(str(r['dumps']) for r in mine)} | "
            f"{statistics.median(r['backup_seconds'] for r in mine):.1f} s | "
            f"{statistics.median(r['restore_seconds'] for r in mine):.1f} s | "
            f"{medians[variant]:.1f} s |")
    ratios = {}
    for variant in ("after", "written"):
        per_round = [a["total_seconds"] / b["total_seconds"]
                     for a, b in zip([r for r in rows if r["variant"] == variant],
                                     [r for r in rows if r["variant"] == "before"], strict=True)]
        ratios[variant] = statistics.median(per_round)
        log(f"{variant} / before (total, median of rounds): {ratios[variant]:.3f}")
    ok = (all(r["dumps"] == 1 for r in rows if r["variant"] == "after")
          and all(r["dumps"] == 2 for r in rows if r["variant"] in ("before", "written")))
    log("one dump when nothing was written, two otherwise: " + ("yes" if ok else "NO"))
    if args.json:
        Path(args.json).write_text(json.dumps({
            "started_at": started_at.isoformat(), "scale": args.scale, "jobs": args.jobs,
            "database": db, "good_backup": good, "rounds": rows, "medians": medians,
            "ratios": ratios, "ok": ok}, indent=2, default=str))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
