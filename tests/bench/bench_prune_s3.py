#!/usr/bin/env python3
"""The prune plan over a bucket of N backups (S3 only, moto's server on 127.0.0.1): the first
plan lists the bucket and fetches every metadata.json; the next ones list once and reuse the
metadata cache (BACKUP_DIR/.s3-metadata-cache.json, by ETag).

    .venv/bin/python tests/bench/bench_prune_s3.py [--count N] [--repeat R]

Each backup is a small database.backup and a metadata.json copied from a template (dated one an
hour apart). Prints the cold plan's time, the warm plans' median, and how many metadata GETs
each made. Goal (issue 12): a warm plan over 10,000 backups lists once and fetches nothing.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import statistics
import sys
import tempfile
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import boto3  # noqa: E402
from moto.server import ThreadedMotoServer  # noqa: E402

from tui.core.cluster import free_port  # noqa: E402
from tui.core.prune import current_plan  # noqa: E402
from tui.core.settings import load_settings  # noqa: E402


@contextlib.contextmanager
def moto_bucket(name: str = "bench") -> Iterator[tuple[str, Any]]:
    """moto's S3 server on a free port of 127.0.0.1 with an empty bucket: (endpoint, client)."""
    port = free_port()
    server = ThreadedMotoServer(ip_address="127.0.0.1", port=port, verbose=False)
    server.start()
    try:
        endpoint = f"http://127.0.0.1:{port}"
        client = boto3.client("s3", endpoint_url=endpoint, aws_access_key_id="testing",
                              aws_secret_access_key="testing", region_name="us-east-1")
        client.create_bucket(Bucket=name)
        yield endpoint, client
    finally:
        server.stop()


def fill_bucket(client: Any, count: int, kind: str = "manual", bucket: str = "bench",
                **meta_extra: Any) -> None:
    """`count` backups one hour apart back from 2026-12-01: a 4-byte database.backup and a
    metadata.json with 20 tables each, put 16 at a time."""
    newest = datetime(2026, 12, 1, tzinfo=UTC)

    def put(i: int) -> None:
        when = newest - timedelta(hours=i)
        stamp = when.strftime("%Y%m%d_%H%M%S")
        name = f"{stamp}_{kind}"
        meta = {"name": name, "kind": kind, "created_at": when.isoformat(),
                "archive": {"file": f"{name}.backup", "size_bytes": 4,
                            "sha256": "0" * 64, "compression": "zstd:3"},
                "tables": [{"schema": "public", "name": f"t{n}", "rows": n} for n in range(20)],
                **meta_extra}
        client.put_object(Bucket=bucket, Key=f"backups/{stamp}/database.backup", Body=b"data")
        client.put_object(Bucket=bucket, Key=f"backups/{stamp}/metadata.json",
                          Body=json.dumps(meta).encode())

    with ThreadPoolExecutor(16) as pool:
        list(pool.map(put, range(count)))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    with moto_bucket() as (endpoint, client):
        started = time.perf_counter()
        fill_bucket(client, args.count)
        print(f"{args.count:,} backups put in {time.perf_counter() - started:.1f} s")  # noqa: T201
        with tempfile.TemporaryDirectory(prefix="pgrb-bench-prune-s3-") as tmp:
            settings = load_settings(environ={
                "SUPABASE_DB_HOST": "127.0.0.1", "BACKUP_DIR": tmp, "BACKUP_S3_BUCKET": "bench",
                "AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing",
                "AWS_SECRET_ACCESS_KEY": "testing", "AWS_REGION": "us-east-1"}, cwd=Path(tmp))
            times = []
            for _ in range(args.repeat + 1):
                began = time.perf_counter()
                found, warning = current_plan(settings)
                times.append(time.perf_counter() - began)
                assert warning is None, warning
                assert len(found.decisions) == args.count, len(found.decisions)
            cache = Path(tmp) / ".s3-metadata-cache.json"
            print(f"cold plan (lists, fetches every metadata.json): {times[0]:.2f} s; "  # noqa: T201
                  f"warm plans (list once, metadata from the cache, {cache.stat().st_size / 1e6:.1f}"
                  f" MB): median {statistics.median(times[1:]):.2f} s over {args.repeat}; "
                  f"{len(found.deletions):,} of {len(found.decisions):,} copies would go")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
