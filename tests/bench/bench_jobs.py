#!/usr/bin/env python3
"""How soon a job's viewer shows what the job did: the delay from a journal line's write (its
"t" stamp) to the viewer's handing it on, for a backup job started the CLI's way (forked) and
the TUI's way (a fresh interpreter, as from a process with threads).

    .venv/bin/python tests/bench/bench_jobs.py [--repeat N] [--json OUT]

It starts a throwaway PostgreSQL with one small table, runs N backups each way, and prints the
delays of the first event and of all events (median, 95th percentile, max) and the time from
the start call to the first event. Goal (issue 11): the viewer renders within 0.2 s of the
job's first event. Exit code 0 when the goal passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from tests.bench.bench_backup import write_json  # noqa: E402
from tui.core import jobs, journal  # noqa: E402
from tui.core.backup import BackupRequest  # noqa: E402
from tui.core.cluster import ThrowawayCluster, new_password  # noqa: E402
from tui.core.settings import load_settings  # noqa: E402

GOAL_SECONDS = 0.2


def run_once(settings: Any, spawn: bool) -> dict[str, float]:
    received: list[float] = []
    started = time.time()
    job = jobs.start(settings, "backup", BackupRequest(label="bench", reason="bench"),
                     origin="bench", arguments={}, fork=not spawn)
    follower = jobs.Follower(job, lambda _event: received.append(time.time()))
    while (outcome := follower.poll()) is None:
        time.sleep(jobs.POLL_SECONDS)
    outcome.unwrap()
    written = [r["t"] for r in journal.JournalReader(job.journal_path).read()
               if r.get("kind") == "event"
               and journal.decode_event(r) is not None]
    delays = [max(0.0, got - wrote) for got, wrote in zip(received, written, strict=True)]
    return {"first": delays[0], "median": statistics.median(delays),
            "p95": sorted(delays)[int(0.95 * (len(delays) - 1))], "max": max(delays),
            "start_to_first_event": written[0] - started, "events": len(delays)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=10)
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args()
    started_at = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="pgrb-bench-jobs-") as tmp:
        cluster = ThrowawayCluster(password=new_password())
        cluster.start()
        try:
            with psycopg.connect(host=cluster.host, port=cluster.port, user="postgres",
                                 password=cluster.password, dbname="postgres",
                                 autocommit=True) as conn:
                conn.execute("CREATE TABLE t AS SELECT g AS id, md5(g::text) AS v "
                             "FROM generate_series(1, 20000) g")
            env = {"SUPABASE_DB_HOST": cluster.host, "SUPABASE_DB_PORT": str(cluster.port),
                   "SUPABASE_DB_NAME": "postgres", "SUPABASE_DB_USER": "postgres",
                   "SUPABASE_DB_PASSWORD": cluster.password or "", "BACKUP_DIR": tmp,
                   "PGRUNBOOK_DEFAULT_TARGET": "bench"}
            settings = load_settings(environ=env, cwd=Path(tmp))
            results: dict[str, list[dict[str, float]]] = {"fork": [], "spawn": []}
            for _ in range(args.repeat):
                for way in results:
                    results[way].append(run_once(settings, spawn=way == "spawn"))
        finally:
            cluster.stop()
    summary: dict[str, Any] = {}
    ok = True
    print(f"viewer delays over {args.repeat} backups each way (seconds)")  # noqa: T201
    for way, runs in results.items():
        row = {k: statistics.median(r[k] for r in runs) for k in runs[0]}
        row["max_of_max"] = max(r["max"] for r in runs)
        summary[way] = row
        ok = ok and row["max_of_max"] <= GOAL_SECONDS
        print(f"  {way:5}: first event {row['first']:.3f}, all events median "  # noqa: T201
              f"{row['median']:.3f} p95 {row['p95']:.3f}, worst {row['max_of_max']:.3f}; "
              f"start call to first event {row['start_to_first_event']:.3f}; "
              f"{row['events']:.0f} events")
    print(f"goal: every event shown within {GOAL_SECONDS} s: "  # noqa: T201
          f"{'PASS' if ok else 'FAIL'}")
    if args.json:
        write_json(args.json, started_at, repeat=args.repeat, results=results, summary=summary,
                   goal_seconds=GOAL_SECONDS, passed=ok)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
