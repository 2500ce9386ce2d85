#!/usr/bin/env python3
"""How long `pgrunbook health` takes over a large history: N local backups (one an hour) with
an audit trail of their N backup jobs, then a bucket of N backups in S3 (moto's server on
127.0.0.1), timed as the operator runs it (`pgrunbook health --no-notify`, a fresh process each
time) beside what it cannot avoid: reading the local metadata (`list_backups`) and listing the
bucket (boto3's paginated ListObjectsV2, nothing else).

    .venv/bin/python tests/bench/bench_health.py [--count N] [--repeat R] [--no-s3] [--json OUT]

The local history is bench_prune's: one real backup of the pagila fixture, hardlinked under N
dated names with rewritten metadata. The audit trail has a start and an end line per backup
(the real lines' shape and size). Each figure is the median of R runs, page cache warm.

Goals (issue 13): over 10,000 local backups, health answers in under 1 s; with S3, within the
listing's time (the metadata comes from the cache, BACKUP_DIR/.s3-metadata-cache.json, after
the first run): less than 1 s more than the bare listing. Exit code 0 when both pass, 1
otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.bench.bench_backup import byte_compile, write_json  # noqa: E402
from tests.bench.bench_prune import build_history, real_backup  # noqa: E402
from tui.core.inventory import list_backups  # noqa: E402
from tui.core.metadata import read_meta  # noqa: E402
from tui.core.prune import collector_paused  # noqa: E402

GOAL_LOCAL_SECONDS = 1.0
PGRUNBOOK = Path(sys.executable).parent / "pgrunbook"


def write_audit(backup_dir: Path, newest: datetime, count: int) -> int:
    """A start and an end line per backup, oldest first, as `operation` writes them."""
    target = {"name": "bench", "host": "127.0.0.1", "port": 5432, "database": "postgres",
              "user": "postgres", "production": False,
              "endpoint_overridden_by_environment": False}
    operator = {"user": "backup", "sudo_user": None, "ssh_client": None, "host": "bastion"}
    lines = []
    for n in reversed(range(count)):
        when = newest - timedelta(hours=n)
        op_id = f"{n:012x}"
        base = {"id": op_id, "operation": "backup", "operator": operator, "origin": "cli",
                "target": target, "arguments": {"name": None, "kind": "scheduled",
                                                "compression": "zstd:3", "exclude_schema": [],
                                                "exclude_table_data": []},
                "reason": "scheduled daily backup"}
        stamp = when.isoformat(timespec="milliseconds").replace("+00:00", "Z")
        lines.append(json.dumps({"time": stamp, "event": "start", **base}))
        lines.append(json.dumps({"time": stamp, **base, "event": "end", "result": "ok",
                                 "duration_seconds": 1.2, "error": None,
                                 "backup": f"{when:%Y%m%d_%H%M%S}_manual",
                                 "log": f"{backup_dir}/logs/{op_id}_backup.log"}))
    path = backup_dir / "audit.log"
    path.write_text("\n".join(lines) + "\n")
    return path.stat().st_size


def env_file(work: Path, backup_dir: Path, extra: dict[str, str]) -> Path:
    path = work / "bench.env"
    values = {"SUPABASE_DB_HOST": "127.0.0.1", "SUPABASE_DB_NAME": "postgres",
              "PGRUNBOOK_DEFAULT_TARGET": "bench", "BACKUP_DIR": str(backup_dir), **extra}
    path.write_text("".join(f"{k}={v}\n" for k, v in values.items()))
    path.chmod(0o600)
    return path


def time_health(settings_file: Path, repeat: int) -> tuple[list[float], int]:
    times, code = [], -1
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("SUPABASE_", "PGRUNBOOK_", "BACKUP_", "AWS_", "HEALTH_"))}
    for _ in range(repeat):
        began = time.perf_counter()
        proc = subprocess.run([str(PGRUNBOOK), "--env-file", str(settings_file), "health",
                               "--no-notify"], capture_output=True, text=True, env=env,
                              check=False)
        times.append(time.perf_counter() - began)
        code = proc.returncode
        if code == 3 or "Traceback" in proc.stderr:
            raise SystemExit(f"health could not run:\n{proc.stdout}{proc.stderr}")
    return times, code


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--no-s3", action="store_true", help="the local history only")
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args()
    byte_compile()
    started_at = datetime.now(UTC)
    figures: dict[str, dict[str, float]] = {}
    out = sys.stdout
    with tempfile.TemporaryDirectory(prefix="pgrb-bench-health-") as tmp:
        work = Path(tmp)
        archive = real_backup(work)
        meta = read_meta(archive.with_name(archive.name + ".meta"))
        backup_dir = work / "backups"
        newest = build_history(backup_dir, archive, meta, args.count)
        audit_bytes = write_audit(backup_dir, newest, args.count)
        local_env = env_file(work, backup_dir, {})
        listing = []
        for _ in range(args.repeat):
            with collector_paused():
                began = time.perf_counter()
                list_backups(backup_dir)
                listing.append(time.perf_counter() - began)
        health_local, code = time_health(local_env, args.repeat)
        figures["local: list_backups (in-process)"] = _fig(listing)
        figures["local: pgrunbook health"] = _fig(health_local)
        out.write(f"{args.count:,} local backups ({len(meta.get('tables', []))} tables each), "
                  f"an audit trail of {audit_bytes / 1e6:.1f} MB; {args.repeat} runs; health "
                  f"exit {code}\n")
        local_ok = figures["local: pgrunbook health"]["median"] < GOAL_LOCAL_SECONDS
        s3_ok = True
        if not args.no_s3:
            s3_figures = s3_runs(work, args.count, args.repeat, out)
            figures.update(s3_figures)
            s3_ok = (figures["s3: pgrunbook health, warm"]["median"]
                     - figures["s3: bare listing (boto3)"]["median"]) < GOAL_LOCAL_SECONDS
    for name, f in figures.items():
        out.write(f"  {name:40} median {f['median']:.3f} s, worst {f['max']:.3f} s\n")
    out.write(f"goal: local health under {GOAL_LOCAL_SECONDS:.0f} s: "
              f"{'PASS' if local_ok else 'FAIL'}\n")
    if not args.no_s3:
        warm = figures["s3: pgrunbook health, warm"]["median"]
        bare = figures["s3: bare listing (boto3)"]["median"]
        out.write(f"goal: S3 health within the listing's time, less than "
                  f"{GOAL_LOCAL_SECONDS:.0f} s more: {warm - bare:+.2f} s ({warm / bare:.2f}x the "
                  f"bare listing): {'PASS' if s3_ok else 'FAIL'}\n")
    if args.json:
        write_json(args.json, started_at, count=args.count, repeat=args.repeat,
                   figures=figures, local_ok=local_ok, s3_ok=s3_ok)
    return 0 if local_ok and s3_ok else 1


def _fig(values: list[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "max": max(values)}


def s3_runs(work: Path, count: int, repeat: int, out: Any) -> dict[str, dict[str, float]]:
    from tests.bench.bench_prune_s3 import fill_bucket, moto_bucket

    with moto_bucket() as (endpoint, client):
        fill_bucket(client, count, kind="scheduled", schema_version=1, duration_seconds=1.2,
                    source={"name": "bench", "host": "127.0.0.1", "port": 5432,
                            "database": "postgres"})
        backup_dir = work / "s3-backups"
        backup_dir.mkdir(mode=0o700)
        settings_file = env_file(work, backup_dir, {
            "BACKUP_S3_BUCKET": "bench", "AWS_ENDPOINT_URL": endpoint,
            "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
            "AWS_REGION": "us-east-1"})
        bare = []
        for _ in range(repeat):
            began = time.perf_counter()
            pages = client.get_paginator("list_objects_v2").paginate(Bucket="bench",
                                                                     Prefix="backups/")
            n = sum(len(p.get("Contents", [])) for p in pages)
            bare.append(time.perf_counter() - began)
        assert n == 2 * count, n
        cold, _ = time_health(settings_file, 1)
        warm, code = time_health(settings_file, repeat)
        out.write(f"{count:,} backups in S3 ({2 * count:,} objects); health exit {code}; the "
                  f"first health (every metadata.json fetched) {cold[0]:.2f} s\n")
        return {"s3: bare listing (boto3)": _fig(bare), "s3: pgrunbook health, warm": _fig(warm)}


if __name__ == "__main__":
    raise SystemExit(main())
