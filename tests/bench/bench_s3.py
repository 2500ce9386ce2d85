#!/usr/bin/env python3
"""S3 upload benchmark: `pgrunbook backup` with its overlapped upload against the backup alone
and against the SOP's dump-then-copy.

A plain script, not a pytest test:

    .venv/bin/python tests/bench/bench_s3.py [--scale N] [--repeat N] [--keep-going]
                                             [--json OUT]

It reuses the backup benchmark (`bench_backup.py`, imported): the same throwaway PostgreSQL
(`ThrowawayCluster`), the same database (`pgbench -i -s N` plus the jsonb tables `events` and
`profiles`; 1.47 GB at the default scale), the same process measuring (wall clock with
time.perf_counter, VmHWM polled every 20 ms, wait4's ru_maxrss and CPU time). The S3 endpoint
is moto's server (`moto.server.ThreadedMotoServer` on 127.0.0.1), started inside this process,
with one bucket; every pgrunbook run gets an env file with BACKUP_S3_BUCKET, AWS_ENDPOINT_URL
and dummy credentials, so pgrunbook talks to moto exactly as it would to S3 (multipart, 8 MiB
parts, 4 in flight, SSE AES256 and SHA-256 part checksums by default).

Variants, in rounds (--repeat N, default 5); round 1 runs them in this order, round 2 starts
with (b), round 3 with (c), and so on (the order rotates, so that no variant always runs first
or always follows the same one; raw always follows its (a)):

    alone     pgrunbook --env-file ENV backup bench --no-upload --json        (a)
    raw       boto3 upload_file of (a)'s archive to moto, in a separate Python process,
              8 MiB parts, 4 threads (the transfer alone; a reference, not a goal)
    overlap   pgrunbook --env-file ENV backup bench --json                      (b)
              (dump and upload at once: the upload follows the growing temp file)
    sop       pgrunbook ... backup bench --no-upload --json, then
              pgrunbook ... upload NAME (the SOP's dump-then-copy), timed together  (c)

One discarded overlap run first warms the page cache and moto. Before each variant: sync(2).
After each (b) and (c) run the script checks that the object exists in the bucket, that its
size equals the local archive's, that its `sha256` tag equals the archive's checksum and that
metadata.json exists; after every run it deletes every object (and version, and unfinished
multipart upload) in the bucket and the local backup, resets moto through its reset API (moto
keeps every key it ever created, with its buffer, until then) and recreates the bucket, so
neither moto's memory nor the disk grows from run to run.

Because moto runs in this process, this process's CPU time (getrusage RUSAGE_SELF: moto's
request threads, plus this script's pollers, which are negligible) is reported per run as
"moto CPU", and its peak RSS per run (VmHWM, reset through /proc/self/clear_refs before each
run) as "moto RSS". moto's time inside its upload_part / complete_multipart_upload handlers
is summed per run. The whole machine's busy CPU time (/proc/stat) and the PostgreSQL server's
(the postmaster, its live children and the backends it reaped) are reported too; what the
machine spent beyond the client processes, the server and moto is "other CPU" (other work on
the shared VM), an indicator of how disturbed a run was. With 2 vCPUs the machine has
2 CPU-seconds per wall second.

Goals (each round's runs share the noisy VM's momentary speed, so the time goal is judged by
the MEDIAN of the per-round ratios; best/best is printed as well):
    (b) overlapped upload / (a) backup alone                       <= 1.15 (median of rounds)
    pgrunbook peak RSS in (b) (VmHWM of the Python process)        <  150 MB
Printed for comparison: (c) / (a), (b) / (c), and the raw transfer time.

MB means 10^6 bytes. Exit code: 0 when all goals pass, 1 when a goal fails, 2 when a variant
could not run. Without --keep-going the first variant that fails stops the benchmark.
"""

from __future__ import annotations

import argparse
import contextlib
import ctypes
import gc
import json
import logging
import os
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_backup as bb  # noqa: E402  (also puts the project root on sys.path)
from bench_backup import (  # noqa: E402
    MB,
    POLL_INTERVAL,
    Bench,
    HwmPoller,
    ProcStats,
    Result,
    VariantFailed,
    build_database,
    clean_env,
    log,
    wait_all,
)
from bench_restore import ChildWatcher, fmt, ok_runs, paired  # noqa: E402

from tui.core.cluster import ThrowawayCluster  # noqa: E402
from tui.core.s3 import BASE_PART, CONCURRENCY  # noqa: E402

GOAL_TIME_RATIO = 1.15
GOAL_RSS_MB = 150.0
DEFAULT_REPEAT = 5
BUCKET = "pgrb-bench"
REGION = "us-east-1"
PREFIX = "backups/"  # pgrunbook's default BACKUP_S3_PREFIX
DISTURBED = 0.10  # "other CPU" above this share of the machine's CPU time: a disturbed run
ORDER = ("alone", "overlap", "sop")  # round i runs this order rotated by i-1


def rotated(order: Sequence[str], n: int) -> list[str]:
    n %= len(order)
    return list(order[n:]) + list(order[:n])

# The raw reference, run in its own interpreter so that it does not share this process's GIL
# with moto's request threads (pgrunbook does not either). Prints the transfer time alone.
RAW_UPLOAD = r"""
import json, sys, time
import boto3
from boto3.s3.transfer import TransferConfig
path, endpoint, bucket, key, part, threads = sys.argv[1:7]
client = boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1",
                      aws_access_key_id="testing", aws_secret_access_key="testing")
config = TransferConfig(multipart_threshold=int(part), multipart_chunksize=int(part),
                        max_concurrency=int(threads), use_threads=True)
t0 = time.perf_counter()
client.upload_file(path, bucket, key, Config=config)
print(json.dumps({"seconds": time.perf_counter() - t0}))
"""


# -- moto, in this process --------------------------------------------------------------------


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU-seconds of the whole machine since boot, from /proc/stat."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:]]
    hz = os.sysconf("SC_CLK_TCK")
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    total = sum(fields[:8])  # without guest time, which is already in user
    return (total - idle) / hz, total / hz


def self_cpu() -> float:
    ru = resource.getrusage(resource.RUSAGE_SELF)
    return ru.ru_utime + ru.ru_stime


def self_status(field: bytes) -> int | None:
    """VmHWM or VmRSS of this process, in bytes."""
    with (contextlib.suppress(OSError, ValueError, IndexError),
          open("/proc/self/status", "rb") as f):
        for line in f:
            if line.startswith(field + b":"):
                return int(line.split()[1]) * 1024
    return None


def tree_cpu(pid: int) -> float | None:
    """CPU-seconds of a process, its live children, and the children it has reaped (for the
    postmaster: every backend that has exited). Deltas of this are the server's CPU time."""
    hz = os.sysconf("SC_CLK_TCK")

    def stat(p: int) -> list[str] | None:
        try:
            with open(f"/proc/{p}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()
        except OSError:
            return None

    own = stat(pid)
    if own is None:
        return None
    total = sum(int(x) for x in own[11:15])  # utime stime cutime cstime
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            children = [int(x) for x in f.read().split()]
    except (OSError, ValueError):
        children = []
    for child in children:
        st = stat(child)
        if st is not None:
            total += int(st[11]) + int(st[12])
    return total / hz


def reset_self_hwm() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # resets the peak RSS (Linux >= 4.0)
        return True
    except OSError:
        return False


class MotoS3:
    """moto's S3 server on 127.0.0.1 in a thread of this process, one bucket, and a timer around
    moto's upload_part and complete_multipart_upload handlers."""

    TIMED = ("upload_part", "complete_multipart_upload", "put_object_tagging")

    def __init__(self) -> None:
        self.server: Any = None
        self.endpoint = ""
        self.client: Any = None
        self._lock = threading.Lock()
        self.timings: dict[str, list[float]] = {}
        self._originals: dict[str, Any] = {}

    def start(self) -> None:
        import boto3
        from moto.s3.models import S3Backend
        from moto.server import ThreadedMotoServer

        logging.getLogger("werkzeug").setLevel(logging.ERROR)
        for name in self.TIMED:
            original = getattr(S3Backend, name)
            self._originals[name] = original
            setattr(S3Backend, name, self._timed(name, original))
        self.server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self.server.start()
        host, port = self.server.get_host_and_port()
        self.endpoint = f"http://{host}:{port}"
        self.client = boto3.client("s3", endpoint_url=self.endpoint, region_name=REGION,
                                   aws_access_key_id="testing",
                                   aws_secret_access_key="testing")
        self.client.create_bucket(Bucket=BUCKET)

    def _timed(self, name: str, original: Callable[..., Any]) -> Callable[..., Any]:
        def wrapper(*args: Any, **kwargs: Any) -> Any:
            t0 = time.perf_counter()
            try:
                return original(*args, **kwargs)
            finally:
                took = time.perf_counter() - t0
                with self._lock:
                    entry = self.timings.setdefault(name, [0, 0.0, 0.0])
                    entry[0] += 1
                    entry[1] += took
                    entry[2] = max(entry[2], took)
        return wrapper

    def reset_timings(self) -> None:
        with self._lock:
            self.timings = {}

    def take_timings(self) -> dict[str, dict[str, float]]:
        with self._lock:
            return {k: {"calls": int(v[0]), "seconds": round(v[1], 3),
                        "max_seconds": round(v[2], 3)} for k, v in self.timings.items()}

    def empty(self) -> int:
        """Delete every object, version, delete marker and unfinished multipart upload, then let
        moto release them (its reset API) and recreate the bucket."""
        removed = 0
        pages = self.client.get_paginator("list_object_versions").paginate(Bucket=BUCKET)
        for page in pages:
            for item in page.get("Versions", []) + page.get("DeleteMarkers", []):
                self.client.delete_object(Bucket=BUCKET, Key=item["Key"],
                                          VersionId=item["VersionId"])
                removed += 1
        uploads = self.client.list_multipart_uploads(Bucket=BUCKET).get("Uploads", [])
        for up in uploads:
            self.client.abort_multipart_upload(Bucket=BUCKET, Key=up["Key"],
                                               UploadId=up["UploadId"])
        left = self.client.list_objects_v2(Bucket=BUCKET).get("KeyCount", 0)
        if left:
            raise VariantFailed(f"the bucket still holds {left} objects after emptying it")
        # moto keeps every key and part it ever created in FakeKey.instances_tracked, each with
        # its buffer (a SpooledTemporaryFile: in memory up to ~5 MB, then an unlinked file in
        # /tmp), even after deletion; its reset API disposes of them. Then a fresh bucket, and
        # the freed heap handed back to the OS, so every run starts from the same footprint.
        urllib.request.urlopen(urllib.request.Request(  # noqa: S310 - our own local server
            f"{self.endpoint}/moto-api/reset", data=b"", method="POST"), timeout=60).read()
        self.client.create_bucket(Bucket=BUCKET)
        gc.collect()
        with contextlib.suppress(OSError, AttributeError):
            ctypes.CDLL("libc.so.6").malloc_trim(0)
        return removed

    def stop(self) -> None:
        if self.server is not None:
            with contextlib.suppress(Exception):
                self.server.stop()
        from moto.s3.models import S3Backend

        for name, original in self._originals.items():
            setattr(S3Backend, name, original)


# -- the benchmark ----------------------------------------------------------------------------


class S3Bench(Bench):
    def __init__(self, cluster: ThrowawayCluster, workdir: Path, keep_going: bool,
                 moto: MotoS3) -> None:
        super().__init__(cluster, workdir, keep_going)
        self.moto = moto
        self.s3_env_file = workdir / "bench_s3.env"
        self.s3_env_file.write_text(
            self.env_file.read_text(encoding="utf-8")
            + f"BACKUP_S3_BUCKET={BUCKET}\n"
            f"AWS_ENDPOINT_URL={moto.endpoint}\n"
            "AWS_ACCESS_KEY_ID=testing\n"
            "AWS_SECRET_ACCESS_KEY=testing\n"
            f"AWS_REGION={REGION}\n",
            encoding="utf-8",
        )
        self.kept_archive: Path | None = None
        self.info: dict[str, Any] = {}
        try:
            self.postmaster: int | None = int(
                (cluster.data_dir / "postmaster.pid").read_text().split()[0])
        except (OSError, ValueError, IndexError):
            self.postmaster = None

    # -- per-run accounting of moto and the machine -------------------------------------------
    @contextlib.contextmanager
    def accounting(self, result: Result) -> Any:
        self.moto.reset_timings()
        hwm_reset = reset_self_hwm()
        result.extra["moto_rss_start_bytes"] = self_status(b"VmRSS")
        server0 = tree_cpu(self.postmaster) if self.postmaster else None
        cpu0, (busy0, total0) = self_cpu(), machine_cpu()
        try:
            yield
        finally:
            cpu1, (busy1, total1) = self_cpu(), machine_cpu()
            server1 = tree_cpu(self.postmaster) if self.postmaster else None
            result.extra["moto_cpu_seconds"] = round(cpu1 - cpu0, 3)
            result.extra["server_cpu_seconds"] = (
                round(server1 - server0, 3) if server0 is not None and server1 is not None
                else None)
            result.extra["machine_busy_cpu_seconds"] = round(busy1 - busy0, 3)
            result.extra["machine_total_cpu_seconds"] = round(total1 - total0, 3)
            result.extra["moto_peak_rss_bytes"] = self_status(b"VmHWM") if hwm_reset else None
            result.extra["moto_handlers"] = self.moto.take_timings()

    # -- running pgrunbook ---------------------------------------------------------------------
    def _run_cli(self, result: Result, name: str, args: list[str], tag: str,
                 t_origin: float) -> tuple[ProcStats, str, dict[str, float]]:
        """Run `pgrunbook --env-file S3ENV ARGS`, polled; returns its stats, its stdout, and
        (relative to t_origin) when its longest-lived pg_dump and zstd children were last seen:
        those of the dump pipeline, not the `--version` probes or the TOC read-back."""
        out_file = self.workdir / f"{result.key}.{tag}.stdout"
        argv = [str(self.pgrunbook), "--env-file", str(self.s3_env_file), *args]
        with self._err_file(result.key).open("ab") as err, out_file.open("wb") as out:
            proc = subprocess.Popen(argv, stdout=out, stderr=err, stdin=subprocess.DEVNULL,
                                    env=clean_env(), cwd=self.workdir)
            poller = HwmPoller([proc.pid])
            poller.start()
            watcher = ChildWatcher(proc.pid)
            watcher.start()
            stats = wait_all([(name, proc)], poller)
            watcher.stop()
        marks: dict[str, float] = {}
        for comm in ("pg_dump", "zstd"):
            lives = [(last - first, last) for c, first, last in watcher.children.values()
                     if c == comm]
            if lives:
                marks[comm] = max(lives)[1] - t_origin
        self._check(stats, result.key)
        return stats[0], out_file.read_text(encoding="utf-8"), marks

    def _backup(self, result: Result, *, upload: bool, t_origin: float
                ) -> tuple[ProcStats, dict[str, Any], dict[str, float]]:
        args = ["backup", bb.LABEL, "--json"] + ([] if upload else ["--no-upload"])
        stats, stdout, marks = self._run_cli(result, "pgrunbook", args, "backup", t_origin)
        out = json.loads(stdout)
        if upload and (out.get("upload_error") or not out.get("s3_key")):
            raise VariantFailed(f"upload failed: {out.get('upload_error')}")
        if not upload and out.get("s3_key"):
            raise VariantFailed(f"--no-upload uploaded {out['s3_key']}")
        archive = Path(out["path"])
        if archive.stat().st_size != int(out["size_bytes"]):
            raise VariantFailed("the archive's size differs from the --json output")
        return stats, out, marks

    def verify_s3(self, out: dict[str, Any], key: str | None = None) -> dict[str, Any]:
        """The object is there, as large as the local archive, tagged with its SHA-256, and
        metadata.json is there (untimed)."""
        from botocore.exceptions import ClientError

        key = key or out.get("s3_key")
        stamp = str(out["name"])[:15]
        expected_key = f"{PREFIX}{stamp}/database.backup"
        if key != expected_key:
            raise VariantFailed(f"object key {key!r}, expected {expected_key!r}")
        local = Path(out["path"]).stat().st_size
        try:
            head = self.moto.client.head_object(Bucket=BUCKET, Key=key)
            tags = self.moto.client.get_object_tagging(Bucket=BUCKET, Key=key)["TagSet"]
            meta = self.moto.client.head_object(Bucket=BUCKET,
                                                Key=f"{PREFIX}{stamp}/metadata.json")
        except ClientError as exc:
            raise VariantFailed(f"S3 check failed: {exc}") from None
        if int(head["ContentLength"]) != local:
            raise VariantFailed(f"S3 object has {head['ContentLength']} bytes, the local "
                                f"archive {local}")
        tag_sha = {t["Key"]: t["Value"] for t in tags}.get("sha256")
        if tag_sha != out["sha256"]:
            raise VariantFailed(f"S3 sha256 tag {tag_sha!r} differs from the archive's")
        return {"object_bytes": int(head["ContentLength"]), "local_bytes": local,
                "metadata_json_bytes": int(meta["ContentLength"]),
                "server_side_encryption": head.get("ServerSideEncryption")}

    def cleanup(self, keep_local: bool = False) -> None:
        self.moto.empty()
        if keep_local:
            return
        for path in self.backup_dir.glob(f"*_{bb.LABEL}.backup*"):
            path.unlink(missing_ok=True)
        for path in self.backup_dir.glob(f".*_{bb.LABEL}.backup.partial-*"):
            path.unlink(missing_ok=True)

    def _record_backup(self, result: Result, out: dict[str, Any], marks: dict[str, float],
                       wall: float) -> None:
        end = marks.get("zstd", marks.get("pg_dump"))
        result.size_bytes = int(out["size_bytes"])
        result.extra.update({
            "name": out["name"],
            "internal_seconds": out.get("duration_seconds"),
            "pipeline_seconds": round(end, 3) if end is not None else None,
            "after_pipeline_seconds": round(wall - end, 3) if end is not None else None,
            "pg_dump_ended": round(marks["pg_dump"], 3) if "pg_dump" in marks else None,
            "s3_key": out.get("s3_key"),
        })

    # -- variants ------------------------------------------------------------------------------
    def alone(self, result: Result, keep: bool = False) -> None:
        """(a) the backup alone; with keep, its archive stays for the raw reference."""
        try:
            with self.accounting(result):
                t0 = time.perf_counter()
                stats, out, marks = self._backup(result, upload=False, t_origin=t0)
                result.seconds = time.perf_counter() - t0
            result.procs = [stats]
            self._record_backup(result, out, marks, result.seconds)
            if keep:
                self.kept_archive = Path(out["path"])
        finally:
            self.cleanup(keep_local=keep)

    def overlap(self, result: Result) -> None:
        """(b) the backup with its upload overlapping the dump."""
        try:
            with self.accounting(result):
                t0 = time.perf_counter()
                stats, out, marks = self._backup(result, upload=True, t_origin=t0)
                result.seconds = time.perf_counter() - t0
            result.procs = [stats]
            self._record_backup(result, out, marks, result.seconds)
            result.extra["s3_check"] = self.verify_s3(out)
        finally:
            self.cleanup()

    def sop(self, result: Result) -> None:
        """(c) backup --no-upload, then `pgrunbook upload NAME`: timed together."""
        try:
            with self.accounting(result):
                t0 = time.perf_counter()
                b_stats, out, marks = self._backup(result, upload=False, t_origin=t0)
                t1 = time.perf_counter()
                u_stats, u_out, _ = self._run_cli(result, "pgrunbook upload",
                                                  ["upload", str(out["name"])], "upload", t1)
                result.seconds = time.perf_counter() - t0
            result.procs = [b_stats, u_stats]
            self._record_backup(result, out, marks, t1 - t0)
            key = u_out.strip().rsplit(f"s3://{BUCKET}/", 1)[-1] if u_out.strip() else None
            result.extra.update({"backup_seconds": round(t1 - t0, 3),
                                 "upload_seconds": round(result.seconds - (t1 - t0), 3),
                                 "s3_key": key})
            result.extra["s3_check"] = self.verify_s3(out, key)
        finally:
            self.cleanup()

    def raw(self, result: Result) -> None:
        """boto3 upload_file of the kept archive to moto, in a separate process."""
        archive = self.kept_archive
        if archive is None:
            raise VariantFailed("no archive kept from the backup-alone run")
        key = f"raw/{archive.name}"
        try:
            with self.accounting(result):
                out_file = self.workdir / f"{result.key}.stdout"
                with self._err_file(result.key).open("wb") as err, out_file.open("wb") as out:
                    t0 = time.perf_counter()
                    proc = subprocess.Popen(
                        [sys.executable, "-c", RAW_UPLOAD, str(archive), self.moto.endpoint,
                         BUCKET, key, str(BASE_PART), str(CONCURRENCY)],
                        stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=clean_env())
                    poller = HwmPoller([proc.pid])
                    poller.start()
                    stats = wait_all([("boto3 upload_file", proc)], poller)
                    wall = time.perf_counter() - t0
            result.procs = stats
            self._check(stats, result.key)
            result.seconds = float(json.loads(out_file.read_text())["seconds"])
            result.size_bytes = archive.stat().st_size
            result.extra["process_wall_seconds"] = round(wall, 3)
            head = self.moto.client.head_object(Bucket=BUCKET, Key=key)
            if int(head["ContentLength"]) != result.size_bytes:
                raise VariantFailed(f"raw upload: {head['ContentLength']} bytes in S3, "
                                    f"{result.size_bytes} local")
        finally:
            self.kept_archive = None
            self.cleanup()


# -- report -----------------------------------------------------------------------------------


def round_of(key: str) -> str:
    return "".join(c for c in key if c.isdigit())


def other_cpu(r: Result) -> float | None:
    """Busy CPU-seconds of the machine not explained by the run's client processes, moto and the
    PostgreSQL server: other work on the VM (kernel threads, other users' processes)."""
    x = r.extra
    parts = [x.get("machine_busy_cpu_seconds"), x.get("moto_cpu_seconds"),
             x.get("server_cpu_seconds")]
    if any(p is None for p in parts) or not r.procs:
        return None
    busy, moto, server = (float(p) for p in parts)  # type: ignore[arg-type]
    return busy - moto - server - r.cpu_seconds


def print_table(results: list[Result]) -> None:
    alone = {round_of(r.key): r for r in ok_runs(results, "alone")}
    headers = ["variant", "seconds", "vs (a)", "tool s", "dump pipeline s", "after it s",
               "client CPU s", "server CPU s", "moto CPU s", "other CPU s", "machine busy",
               "moto RSS MB",
               "peak RSS MB (VmHWM/wait4)"]
    rows = []
    for r in results:
        if r.error:
            rows.append([r.label, "FAILED", *["-"] * 10, r.error[:60]])
            continue
        a = alone.get(round_of(r.key))
        ratio = f"{r.seconds / a.seconds:.3f}" if a and a.seconds and r.seconds else "-"
        x = r.extra
        busy, total = x.get("machine_busy_cpu_seconds"), x.get("machine_total_cpu_seconds")
        machine = f"{busy:.1f}/{total:.1f}" if busy is not None and total else "-"
        peak, start = x.get("moto_peak_rss_bytes"), x.get("moto_rss_start_bytes")
        moto_rss = "-" if peak is None or start is None else f"{start / MB:.0f}->{peak / MB:.0f}"
        tool_s = fmt(x.get("internal_seconds"))
        if r.key.startswith("sop"):
            tool_s = f"{x['backup_seconds']:.2f}+{x['upload_seconds']:.2f}"
        elif r.key.startswith("raw"):
            tool_s = f"(process {x['process_wall_seconds']:.2f})"
        rows.append([r.label, fmt(r.seconds), ratio, tool_s, fmt(x.get("pipeline_seconds")),
                     fmt(x.get("after_pipeline_seconds")),
                     f"{r.cpu_seconds:.1f}" if r.procs else "-",
                     fmt(x.get("server_cpu_seconds"), ".1f"),
                     fmt(x.get("moto_cpu_seconds"), ".1f"), fmt(other_cpu(r), ".1f"), machine,
                     moto_rss, bb.rss_of(r)])
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    log("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    log("  ".join("-" * w for w in widths))
    for row in rows:
        log("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def ratio_detail(pairs: list[tuple[Result, Result]]) -> tuple[float | None, str]:
    ratios = [n.seconds / d.seconds for d, n in pairs if n.seconds and d.seconds]
    if not ratios:
        return None, "missing runs"
    n_best = min(n.seconds or 0.0 for _, n in pairs)
    d_best = min(d.seconds or 0.0 for d, _ in pairs)
    return statistics.median(ratios), (
        f"per round: {', '.join(f'{x:.3f}' for x in ratios)}; best/best "
        f"{n_best / d_best:.3f} ({n_best:.2f} s / {d_best:.2f} s)")


def evaluate(results: list[Result]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    goals: list[dict[str, Any]] = []
    comparisons: list[dict[str, Any]] = []

    def goal(name: str, value: float | None, target: str, ok: bool | None, detail: str) -> None:
        goals.append({"goal": name, "value": value, "target": target,
                      "status": "N/A" if ok is None else ("PASS" if ok else "FAIL"),
                      "detail": detail})

    v, detail = ratio_detail(paired(results, "alone", "overlap"))
    goal("(b) backup with overlapped upload / (a) backup alone (median of rounds)", v,
         f"<= {GOAL_TIME_RATIO}", None if v is None else v <= GOAL_TIME_RATIO, detail)
    overlaps = ok_runs(results, "overlap")
    hwms = [p.hwm_polled for r in overlaps for p in r.procs if p.hwm_polled is not None]
    if hwms:
        v = max(hwms) / MB
        w4 = max(p.maxrss_wait4 for r in overlaps for p in r.procs) / MB
        goal("pgrunbook peak RSS in (b) (MB, Python process itself)", v, f"< {GOAL_RSS_MB:.0f}",
             v < GOAL_RSS_MB,
             f"VmHWM polled every {POLL_INTERVAL * 1000:.0f} ms over {len(overlaps)} runs; "
             f"wait4 ru_maxrss incl. pg_dump/zstd/pg_restore children: {w4:.1f} MB")
    else:
        goal("pgrunbook peak RSS in (b) (MB, Python process itself)", None,
             f"< {GOAL_RSS_MB:.0f}", None, "missing runs")

    for name, den, num in (("(c) SOP: backup, then upload / (a) backup alone", "alone", "sop"),
                           ("(b) overlapped / (c) SOP dump-then-copy", "sop", "overlap")):
        v, detail = ratio_detail(paired(results, den, num))
        comparisons.append({"comparison": name, "value": v, "detail": detail})
    raws = ok_runs(results, "raw")
    if raws:
        secs = [r.seconds or 0.0 for r in raws]
        comparisons.append({
            "comparison": "raw boto3 upload_file of the archive (transfer alone, seconds)",
            "value": statistics.median(secs),
            "detail": f"median; runs {', '.join(f'{s:.2f}' for s in secs)}"})
    return goals, comparisons


def med(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def breakdown(results: list[Result]) -> dict[str, Any]:
    """Medians per variant of the parts the script can see."""
    out: dict[str, Any] = {}
    for prefix in ("alone", "raw", "overlap", "sop"):
        runs = ok_runs(results, prefix)
        if not runs:
            continue

        def handler(name: str, field: str, runs: list[Result] = runs) -> float | None:
            return med([r.extra.get("moto_handlers", {}).get(name, {}).get(field)
                        for r in runs])

        out[prefix] = {
            "runs": len(runs),
            "seconds": med([r.seconds for r in runs]),
            "internal_seconds": med([r.extra.get("internal_seconds") for r in runs]),
            "pipeline_seconds": med([r.extra.get("pipeline_seconds") for r in runs]),
            "after_pipeline_seconds": med([r.extra.get("after_pipeline_seconds")
                                           for r in runs]),
            "backup_seconds": med([r.extra.get("backup_seconds") for r in runs]),
            "upload_seconds": med([r.extra.get("upload_seconds") for r in runs]),
            "client_cpu_seconds": med([r.cpu_seconds for r in runs]),
            "moto_cpu_seconds": med([r.extra.get("moto_cpu_seconds") for r in runs]),
            "server_cpu_seconds": med([r.extra.get("server_cpu_seconds") for r in runs]),
            "other_cpu_seconds": med([other_cpu(r) for r in runs]),
            "machine_busy_cpu_seconds": med([r.extra.get("machine_busy_cpu_seconds")
                                             for r in runs]),
            "machine_total_cpu_seconds": med([r.extra.get("machine_total_cpu_seconds")
                                              for r in runs]),
            "moto_peak_rss_bytes": med([r.extra.get("moto_peak_rss_bytes") for r in runs]),
            "moto_rss_growth_bytes": med([
                r.extra["moto_peak_rss_bytes"] - r.extra["moto_rss_start_bytes"] for r in runs
                if r.extra.get("moto_peak_rss_bytes") is not None
                and r.extra.get("moto_rss_start_bytes") is not None]),
            "moto_upload_part_calls": handler("upload_part", "calls"),
            "moto_upload_part_seconds_summed": handler("upload_part", "seconds"),
            "moto_complete_seconds": handler("complete_multipart_upload", "seconds"),
        }
    return out


def print_breakdown(parts: dict[str, Any]) -> None:
    log("")
    log("Where the time goes (medians per variant; dump pipeline = until the tool's dump-pipeline zstd "
        "(or pg_dump) was last seen,")
    log("  polled every 20 ms; moto CPU = this process's CPU time; machine busy = all CPUs, of "
        "2 x wall on 2 vCPUs):")
    labels = {"alone": "(a) backup alone", "raw": "raw boto3 upload_file",
              "overlap": "(b) backup + overlapped upload", "sop": "(c) backup, then upload"}
    for key, p in parts.items():
        bits = [f"wall {fmt(p['seconds'])}"]
        if p["pipeline_seconds"] is not None:
            bits.append(f"dump pipeline {fmt(p['pipeline_seconds'])}")
            after = p["after_pipeline_seconds"] if key != "sop" else None
            if after is not None:
                bits.append(f"after it {fmt(after)}")
        if p["backup_seconds"] is not None:
            bits.append(f"backup {fmt(p['backup_seconds'])} + upload {fmt(p['upload_seconds'])}")
        bits.append(f"client CPU {fmt(p['client_cpu_seconds'], '.1f')}")
        bits.append(f"server CPU {fmt(p['server_cpu_seconds'], '.1f')}")
        bits.append(f"moto CPU {fmt(p['moto_cpu_seconds'], '.1f')}")
        bits.append(f"other CPU {fmt(p['other_cpu_seconds'], '.1f')}")
        bits.append(f"machine busy {fmt(p['machine_busy_cpu_seconds'], '.1f')}/"
                    f"{fmt(p['machine_total_cpu_seconds'], '.1f')}")
        if p["moto_upload_part_calls"]:
            bits.append(f"moto upload_part x{p['moto_upload_part_calls']:.0f} "
                        f"{fmt(p['moto_upload_part_seconds_summed'])} s summed, complete "
                        f"{fmt(p['moto_complete_seconds'])} s")
        if p["moto_peak_rss_bytes"] is not None:
            bits.append(f"moto peak {p['moto_peak_rss_bytes'] / MB:.0f} MB "
                        f"(+{(p['moto_rss_growth_bytes'] or 0) / MB:.0f} MB in the run)")
        log(f"  {labels[key]:32} " + "; ".join(bits))


def disturbed(results: list[Result]) -> list[str]:
    """Runs in which other work on the VM took more than 10% of the machine's CPU time."""
    out = []
    for r in results:
        other, total = other_cpu(r), r.extra.get("machine_total_cpu_seconds")
        if r.error is None and other is not None and total and other > DISTURBED * total:
            out.append(f"{r.label} ({other:.1f} of {total:.1f} CPU-s)")
    return out


def print_comparisons(comparisons: list[dict[str, Any]]) -> None:
    for c in comparisons:
        value = "-" if c["value"] is None else f"{c['value']:.3f}"
        log(f"  [info] {c['comparison']}: {value} - {c['detail']}")


# -- main -------------------------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--scale", type=int, default=bb.DEFAULT_SCALE,
                        help=f"pgbench scale; the jsonb tables grow with it (default "
                             f"{bb.DEFAULT_SCALE}, 1.47 GB in total; try 5 for a quick check)")
    parser.add_argument("--repeat", type=int, default=DEFAULT_REPEAT, metavar="N",
                        help=f"rounds of (a), raw, (b), (c) (default {DEFAULT_REPEAT})")
    parser.add_argument("--keep-going", action="store_true",
                        help="record a failing variant and run the rest instead of stopping")
    parser.add_argument("--json", metavar="OUT", help="also write all numbers to this file")
    parser.add_argument("--workdir", metavar="DIR",
                        help="where the backups and outputs go (default: a new temp dir under "
                             f"{tempfile.gettempdir()}); removed afterwards")
    args = parser.parse_args(argv)

    if shutil.which("zstd") is None:
        log("zstd is not installed (apt install zstd).")
        return 2
    started_at = datetime.now(UTC)
    workdir = Path(tempfile.mkdtemp(prefix="pgrb-bench-s3-", dir=args.workdir))
    cluster = ThrowawayCluster()
    moto = MotoS3()
    exit_code = 0
    try:
        log(f"starting a throwaway PostgreSQL (outputs in {workdir}) ...")
        cluster.start()
        log(f"  port {cluster.port}, binaries {cluster.bindir}")
        moto.start()
        import moto as moto_pkg

        log(f"  moto {moto_pkg.__version__} S3 server at {moto.endpoint}, bucket {BUCKET}")
        bench = S3Bench(cluster, workdir, args.keep_going, moto)
        db = build_database(bench, args.scale)
        log("")
        log("measuring (sync(2) before each variant; the bucket and the backup dir emptied "
            "after each):")
        try:
            bench.measure("warmup", "warm-up: (b) backup + upload (discarded)", bench.overlap,
                          record=False)
            for i in range(1, max(args.repeat, 1) + 1):
                for variant in rotated(ORDER, i - 1):
                    if variant == "alone":
                        a = bench.measure(f"alone{i}", f"(a) backup --no-upload #{i}",
                                          lambda r: bench.alone(r, keep=True))
                        if a.error is None:
                            bench.measure(f"raw{i}", f"raw boto3 upload_file #{i}", bench.raw)
                        else:
                            bench.cleanup()
                    elif variant == "overlap":
                        bench.measure(f"overlap{i}", f"(b) backup + overlapped upload #{i}",
                                      bench.overlap)
                    else:
                        bench.measure(f"sop{i}", f"(c) backup, then upload #{i}", bench.sop)
        except Exception:  # noqa: BLE001 - measure() printed it; stop without --keep-going
            exit_code = 2
        with contextlib.suppress(Exception):
            bench.cleanup()
        results = bench.results
        if any(r.error for r in results):
            exit_code = max(exit_code, 2)
        goals, comparisons = evaluate(results)
        parts = breakdown(results)
        archive_sizes = sorted({r.size_bytes for r in ok_runs(results, "alone")
                                if r.size_bytes is not None})
        log("")
        log(f"Results ({db['database_size_bytes'] / MB:,.1f} MB database, scale {args.scale}, "
            f"archive {', '.join(f'{s / MB:.1f}' for s in archive_sizes) or '?'} MB, "
            f"PostgreSQL {db['server_version']}, {os.cpu_count()} CPUs, moto "
            f"{moto_pkg.__version__}, {started_at:%Y-%m-%d}):")
        print_table(results)
        log("  vs (a): against the backup-alone run of the same round. tool s: the tool's own "
            "duration_seconds (for (c): backup + upload wall).")
        log("  dump pipeline s: until the dump pipeline's zstd child was last seen (polled every 20 ms); "
            "after it s: the rest of the command.")
        log("  client CPU s: user+sys of the client processes and their children (pg_dump, "
            "zstd, pg_restore); not the PostgreSQL backend,")
        log("  not moto. server CPU s: the PostgreSQL postmaster and its backends. moto CPU s: "
            "this process (moto's threads).")
        log("  machine busy: busy/total CPU-seconds of all CPUs (/proc/stat); other CPU s = "
            "busy - client - server - moto: other work on the VM.")
        log("  moto RSS MB: this process's RSS at the start of the run -> its peak during it "
            "(VmHWM reset through /proc/self/clear_refs).")
        log("  peak RSS: VmHWM = that process alone (polled every 20 ms); wait4 = ru_maxrss, an "
            "upper bound incl. children and the forking parent's\n  image before exec (this "
            "script with moto's memory).")
        log("")
        log("Goals:")
        bb.print_goals(goals)
        print_comparisons(comparisons)
        print_breakdown(parts)
        noisy = disturbed(results)
        if noisy:
            log("")
            log(f"Warning: other work on the VM took more than {DISTURBED:.0%} of the CPU time "
                f"in {len(noisy)} runs; their times (and their rounds' ratios) are not "
                "representative:")
            for line in noisy:
                log(f"  {line}")
        if any(g["status"] != "PASS" for g in goals):
            exit_code = max(exit_code, 1)

        if args.json:
            bb.write_json(args.json, started_at,
                database=db,
                moto={"version": moto_pkg.__version__, "endpoint": moto.endpoint,
                         "bucket": BUCKET},
                upload={"part_bytes": BASE_PART, "concurrency": CONCURRENCY},
                results=[asdict(r) for r in results],
                goals=goals,
                comparisons=comparisons,
                breakdown=parts,
                disturbed_runs=noisy,
            )
    finally:
        moto.stop()
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return exit_code


if __name__ == "__main__":
    raise SystemExit(main())
