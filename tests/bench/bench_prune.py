#!/usr/bin/env python3
"""How long the retention plan takes over a large local history: `list_backups` (the inventory
read: a stat and a metadata read per backup) and `retention.plan`, over N backups, one an hour.

    .venv/bin/python tests/bench/bench_prune.py [--count N] [--repeat R] [--meta PATH]
                                                [--json OUT]

Without --meta it starts a throwaway PostgreSQL, loads the pagila fixture and takes ONE real
backup with pgrunbook; with --meta it uses that backup's metadata (and its archive beside it,
when there is one). The history is N copies of it under dated names: the archive hardlinked
(so sizes match the metadata), the metadata rewritten with the new name, time and file, written
without fsync (the bench measures reading). Each figure is the median of R runs, page cache
warm (the files were just written); the worst run is printed too. list_backups and plan are
timed as `pgrunbook prune` runs them (`prune.current_plan`: the cyclic garbage collector paused),
then `current_plan` itself, then both with the collector on, for reference.

Goal (issue 12): list_backups + plan over 10,000 local backups in under 1 s. Exit code 0 when
the goal passes, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import copy
import json
import os
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from tests.bench.bench_backup import write_json  # noqa: E402
from tui.core.inventory import list_backups  # noqa: E402
from tui.core.metadata import read_meta  # noqa: E402
from tui.core.prune import collector_paused, current_plan  # noqa: E402
from tui.core.retention import Policy, plan  # noqa: E402
from tui.core.settings import load_settings  # noqa: E402

GOAL_SECONDS = 1.0
PAGILA = ROOT.parent / "shared" / "fixtures" / "pagila"


def real_backup(workdir: Path) -> Path:
    """One real pgrunbook backup of the pagila fixture; returns its archive."""
    import subprocess

    from tui.core.backup import BackupRequest, run_backup
    from tui.core.cluster import ThrowawayCluster, new_password
    cluster = ThrowawayCluster(password=new_password())
    cluster.start()
    try:
        assert cluster.bindir is not None
        for part in ("pagila-schema.sql", "pagila-data.sql"):  # COPY ... FROM stdin: psql
            subprocess.run([str(cluster.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1",
                            "-h", cluster.host, "-p", str(cluster.port), "-U", "postgres",
                            "-d", "postgres", "-f", str(PAGILA / part)],
                           env={**os.environ, "PGPASSWORD": cluster.password or ""},
                           check=True, capture_output=True)
        env = {"SUPABASE_DB_HOST": cluster.host, "SUPABASE_DB_PORT": str(cluster.port),
               "SUPABASE_DB_NAME": "postgres", "SUPABASE_DB_USER": "postgres",
               "SUPABASE_DB_PASSWORD": cluster.password or "",
               "BACKUP_DIR": str(workdir / "golden"), "PGRUNBOOK_DEFAULT_TARGET": "bench"}
        settings = load_settings(environ=env, cwd=workdir)
        result = asyncio.run(run_backup(settings, BackupRequest(label="golden", origin="bench")))
        return result.path
    finally:
        cluster.stop()


def build_history(backup_dir: Path, archive: Path | None, meta: dict[str, Any],
                  count: int) -> datetime:
    """`count` dated copies, one an hour back from a fixed newest; returns the newest's time."""
    backup_dir.mkdir(mode=0o700, parents=True)
    newest = datetime(2026, 6, 30, 23, tzinfo=UTC)
    for n in range(count):
        when = newest - timedelta(hours=n)
        name = f"{when:%Y%m%d_%H%M%S}_manual"
        target = backup_dir / f"{name}.backup"
        if archive is not None:
            os.link(archive, target)
        else:
            target.write_bytes(b"\0" * int(meta["archive"]["size_bytes"]))
        m = copy.deepcopy(meta)
        m.update(name=name, kind="manual", created_at=when.isoformat().replace("+00:00", "Z"))
        m["archive"]["file"] = target.name
        (backup_dir / f"{name}.backup.meta").write_text(json.dumps(m, indent=2))
    return newest


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--meta", metavar="PATH", help="a real backup's .meta (default: take "
                                                       "one of pagila)")
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args()
    started_at = datetime.now(UTC)
    with tempfile.TemporaryDirectory(prefix="pgrb-bench-prune-") as tmp:
        work = Path(tmp)
        if args.meta:
            meta_path = Path(args.meta)
            archive: Path | None = meta_path.with_name(meta_path.name[:-len(".meta")])
            if archive is not None and not archive.exists():
                archive = None
        else:
            archive = real_backup(work)
            meta_path = archive.with_name(archive.name + ".meta")
        meta = read_meta(meta_path)
        meta_size = meta_path.stat().st_size
        if archive is not None and archive.stat().st_dev != work.stat().st_dev:
            archive = None  # no hardlinks across filesystems: sparse stand-ins of its size
        backup_dir = work / "backups"
        t0 = time.perf_counter()
        newest = build_history(backup_dir, archive, meta, args.count)
        built = time.perf_counter() - t0
        now = newest + timedelta(days=1)
        settings = load_settings(environ={"BACKUP_DIR": str(backup_dir),
                                          "SUPABASE_DB_HOST": "127.0.0.1"}, cwd=work)
        runs: dict[str, list[float]] = {"list_backups": [], "plan": [], "total": [],
                                        "current_plan": [], "total, collector on": []}
        for _ in range(args.repeat):
            with collector_paused():  # as `pgrunbook prune` runs them (prune.current_plan)
                t0 = time.perf_counter()
                entries = list_backups(backup_dir)
                t1 = time.perf_counter()
                p = plan(entries, Policy(), now, s3_configured=False)
                t2 = time.perf_counter()
            runs["list_backups"].append(t1 - t0)
            runs["plan"].append(t2 - t1)
            runs["total"].append(t2 - t0)
            del entries, p
            t0 = time.perf_counter()
            p, _ = current_plan(settings, now=now)  # the same, with the policy read too
            runs["current_plan"].append(time.perf_counter() - t0)
            del p
            t0 = time.perf_counter()
            p = plan(list_backups(backup_dir), Policy(), now, s3_configured=False)
            runs["total, collector on"].append(time.perf_counter() - t0)
        assert len(p.decisions) == args.count and p.deletions
    figures = {name: {"median": statistics.median(v), "max": max(v)} for name, v in runs.items()}
    ok = figures["total"]["median"] < GOAL_SECONDS
    out = sys.stdout
    out.write(f"{args.count:,} local backups (metadata {meta_size:,} bytes each, "
              f"{len(meta.get('tables', []))} tables), built in {built:.1f} s; "
              f"{args.repeat} runs, page cache warm\n")
    for name, f in figures.items():
        out.write(f"  {name:20} median {f['median']:.3f} s, worst {f['max']:.3f} s\n")
    out.write(f"  plan: keep {len(p.kept)}, delete {len(p.deletions)}\n")
    out.write(f"goal: list_backups + plan under {GOAL_SECONDS:.0f} s: "
              f"{'PASS' if ok else 'FAIL'}\n")
    if args.json:
        write_json(args.json, started_at, count=args.count, repeat=args.repeat,
                   figures=figures, kept=len(p.kept), deleted=len(p.deletions),
                   goal_seconds=GOAL_SECONDS, passed=ok)
    return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(main())
