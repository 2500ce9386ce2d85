#!/usr/bin/env python3
"""Backup benchmark: `pgrunbook backup` against the SOP's `pg_dump -Fc -Z9` and the bare pipeline.

A plain script, not a pytest test:

    .venv/bin/python tests/bench/bench_backup.py [--scale N] [--repeat N] [--keep-going]
                                                 [--json OUT] [--diagnose | --no-diagnose]
                                                 [--no-encryption]

It starts a throwaway PostgreSQL (the engine's own `ThrowawayCluster`), loads `pgbench -i -s N`
plus two jsonb tables sized in proportion to N (the default N gives a database of more than
1 GB), and then times, in one run and on one disk:

    floor  pg_dump -Fc -Z0 > /dev/null          (one discarded run first, to warm the page cache)
    sop    pg_dump -Fc -Z9 -f FILE               (the SOP's command)
    bare   pg_dump -Fc -Z0 | zstd -3 -q -c > FILE
    tool   pgrunbook --env-file ENV backup bench
    gpg    the same, ENV plus BACKUP_ENCRYPTION=gpg and BACKUP_GPG_PASSPHRASE_FILE
    age    the same, ENV plus BACKUP_ENCRYPTION=age and BACKUP_AGE_RECIPIENTS (a new key pair)
    (rounds of bare, then tool, gpg and age in an order rotating from round to round:
    round 1 tool, gpg, age; round 2 gpg, age, tool; ...; --repeat N rounds. --no-encryption
    leaves gpg and age out: bare, tool, bare, tool, ... as before)

Each variant is timed with time.perf_counter (wall clock) from the first spawn to the last exit.
Before each measured variant the script runs sync(2), so that write-back of the previous
variant's output does not land in the next one; no variant's output is fsynced by the script
(pgrunbook fsyncs its own archive, which is part of what it does). Every output is removed
after its size is read.

Peak RSS: for every process the script waits for with wait4(2) and, independently, polls
/proc/PID/status VmHWM every 20 ms while it runs.
  * VmHWM is the high-water mark of that one process only (for the tool: the Python process,
    without pg_dump, zstd or pg_restore). It only grows, so the last value seen before exit is
    its peak, unless the peak was reached in the last 20 ms.
  * wait4's ru_maxrss is, on Linux, the largest of: the process's own peak, the peak of any
    descendant it has waited for (for the tool: pg_dump, zstd, pg_restore), and the RSS of the
    image that exec replaced, i.e. the forking parent's RSS at spawn time (Linux keeps the
    old mm's high-water mark across exec). So it is an upper bound, not the process's own
    peak: for pg_dump and zstd it mostly shows this script's own ~40 MB.
The goal "peak RSS < 100 MB" is checked on VmHWM of the pgrunbook Python process.
(pgrunbook runs the backup in a job it forks: that process, which runs pg_dump and zstd, is
not in the VmHWM above, only in wait4's bound.) With the encrypted variants, one more untimed
run of each of tool, gpg and age measures the whole process tree: every 20 ms the script finds
all descendants of the pgrunbook process (the children of each of its threads, recursively:
the job, pg_dump, zstd, gpg or the age process, pg_restore --list, ...) and sums their PSS
(/proc/PID/smaps_rollup; a page shared by n processes counts 1/n in each); the peak of that
sum ("tree PSS") is the memory the whole backup held at one moment. Reading PSS costs about
1 ms of CPU per Python process, which is why the timed runs do not do it.
MB means 10^6 bytes everywhere in the output.

Encryption goals (issue 14), per method: the median over rounds of (encrypted pgrunbook time /
unencrypted pgrunbook time of the same round) <= 1.10, and the encrypted backup's tree PSS
< 100 MB. The key material (a random passphrase; an age identity) is written 0600 into the
work directory; each encrypted archive is checked, untimed, to start like its cipher's output
(`age-encryption.org/v1`, or an OpenPGP symmetric-key session key packet, 0x8c) and to have
metadata `archive.encryption` naming the method and the benchmark's key.

When the goal "tool time / bare time <= 1.05" fails (or with --diagnose), extra variants
measure where the difference goes: bare + fsync, bare + a Python relay (read 1 MiB chunks,
SHA-256, write, fsync, as the tool does), the row counts alone, bare with the row counts running
concurrently, the table-of-contents read-back, and the CLI's start-up time.

Exit code: 0 when all goals pass, 1 when a goal fails, 2 when a variant could not run.
Without --keep-going the first variant that fails stops the benchmark; with it, the failure is
recorded and the remaining variants run.
"""

from __future__ import annotations

import argparse
import contextlib
import functools
import hashlib
import json
import os
import platform
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import psycopg  # noqa: E402

from tui.core.cluster import ThrowawayCluster  # noqa: E402

MB = 1_000_000
CHUNK = 1 << 20
POLL_INTERVAL = 0.02
DEFAULT_SCALE = 50
DBNAME = "postgres"
LABEL = "bench"

GOAL_SPEEDUP = 3.5
GOAL_SIZE_RATIO = 1.0
GOAL_TIME_RATIO = 1.05
GOAL_RSS_MB = 100.0
GOAL_ENCRYPTED_TIME_RATIO = 1.10
ENCRYPTION_METHODS = ("gpg", "age")
AGE_MAGIC = b"age-encryption.org/v1"
# gpg --symmetric starts with a symmetric-key session key packet: tag 3, 0x8c in the old packet
# format gpg writes (0xc3 in the new one).
GPG_FIRST_BYTES = (0x8C, 0xC3)

# Variables that must not leak from the caller's shell into the CLI under test.
_SETTING_PREFIXES = ("SUPABASE_DB_", "PGRUNBOOK_", "BACKUP_", "DATABASE_URL", "PG", "AWS_")


def log(text: str = "") -> None:
    print(text, flush=True)  # noqa: T201


# -- measuring processes ----------------------------------------------------------------------


class HwmPoller(threading.Thread):
    """Polls VmHWM (and VmRSS) of some pids until stopped; keeps the largest value seen."""

    def __init__(self, pids: Sequence[int]) -> None:
        super().__init__(daemon=True)
        self.pids = list(pids)
        self.hwm: dict[int, int] = {}
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            self.sample()
            self._stop_event.wait(POLL_INTERVAL)

    def sample(self) -> None:
        for pid in self.pids:
            try:
                with open(f"/proc/{pid}/status", "rb") as f:
                    text = f.read()
            except OSError:
                continue
            for line in text.splitlines():
                if line.startswith(b"VmHWM:"):
                    kib = int(line.split()[1])
                    if kib * 1024 > self.hwm.get(pid, 0):
                        self.hwm[pid] = kib * 1024
                    break

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def descendants(pid: int) -> list[int]:
    """Every process below `pid` now: the children of each of its threads, recursively (a
    Python program starts some from worker threads). Empty once it is gone."""
    found: list[int] = []
    todo = [pid]
    while todo:
        parent = todo.pop()
        try:
            tids = os.listdir(f"/proc/{parent}/task")
        except OSError:
            continue
        for tid in tids:
            try:
                with open(f"/proc/{parent}/task/{tid}/children", "rb") as f:
                    kids = [int(x) for x in f.read().split()]
            except (OSError, ValueError):
                continue
            found += kids
            todo += kids
    return found


class TreePoller(HwmPoller):
    """HwmPoller over a process and all its descendants, found anew at every poll: VmHWM of
    each (for wait_all, the root's), and the peak of the memory the tree holds at one poll,
    as the sum of their PSS (/proc/PID/smaps_rollup: a page shared by n processes counts 1/n
    in each, as between the CLI and the job it forks) and, an upper bound, of their RSS.
    smaps_rollup costs about 1 ms of CPU per Python process read: use it in untimed runs."""

    def __init__(self, root: int) -> None:
        super().__init__([root])
        self.root = root
        self.names: dict[int, str] = {}
        self.peak_pss = 0
        self.peak_parts: list[tuple[str, int]] = []  # (program, PSS) at the peak
        self.peak_rss = 0

    def sample(self) -> None:
        pss_sum = rss_sum = 0
        parts = []
        for pid in [self.root, *descendants(self.root)]:
            try:
                with open(f"/proc/{pid}/status", "rb") as f:
                    status = proc_fields(f.read())
                with open(f"/proc/{pid}/smaps_rollup", "rb") as f:
                    rollup = proc_fields(f.read())
            except OSError:
                continue
            if b"Pss" not in rollup or b"VmHWM" not in status:  # gone, or a zombie
                continue
            name = status[b"Name"].strip().decode(errors="replace")
            self.names[pid] = name
            hwm = kib(status[b"VmHWM"])
            if hwm > self.hwm.get(pid, 0):
                self.hwm[pid] = hwm
            pss_sum += kib(rollup[b"Pss"])
            rss_sum += kib(rollup[b"Rss"])
            parts.append((name, kib(rollup[b"Pss"])))
        if pss_sum > self.peak_pss:
            self.peak_pss, self.peak_parts = pss_sum, parts
        self.peak_rss = max(self.peak_rss, rss_sum)

    def extra(self) -> dict[str, Any]:
        """The tree's figures for Result.extra: the peaks of the sums, what the PSS peak was
        made of, and the largest VmHWM seen of each program."""
        largest: dict[str, int] = {}
        for pid, hwm in self.hwm.items():
            name = self.names.get(pid, "?")
            largest[name] = max(largest.get(name, 0), hwm)
        return {"tree_peak_pss": self.peak_pss or None,
                "tree_peak_parts": [list(p) for p in self.peak_parts],
                "tree_peak_rss_sum": self.peak_rss or None,
                "tree_hwm_by_program": dict(sorted(largest.items(), key=lambda kv: -kv[1]))}


def proc_fields(text: bytes) -> dict[bytes, bytes]:
    """The `Key: value` lines of a /proc file."""
    return dict(line.split(b":", 1) for line in text.splitlines() if b":" in line)


def kib(value: bytes) -> int:
    """Bytes, from a /proc value in kB ("  1234 kB")."""
    return int(value.split()[0]) * 1024


@dataclass
class ProcStats:
    name: str
    returncode: int
    maxrss_wait4: int  # bytes: the process and the descendants it waited for
    hwm_polled: int | None  # bytes: VmHWM of the process itself (last seen)
    cpu_seconds: float  # user + system, including the descendants it waited for


def wait_all(procs: Sequence[tuple[str, subprocess.Popen[bytes]]],
             poller: HwmPoller) -> list[ProcStats]:
    stats = []
    for name, proc in procs:
        _pid, status, ru = os.wait4(proc.pid, 0)
        proc.returncode = os.waitstatus_to_exitcode(status)
        stats.append(ProcStats(name, proc.returncode, ru.ru_maxrss * 1024, None,
                               ru.ru_utime + ru.ru_stime))
    poller.stop()
    for st, (_name, proc) in zip(stats, procs, strict=True):
        st.hwm_polled = poller.hwm.get(proc.pid)
    return stats


@dataclass
class Result:
    key: str
    label: str
    seconds: float | None = None
    size_bytes: int | None = None
    procs: list[ProcStats] = field(default_factory=list)
    error: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def cpu_seconds(self) -> float:
        return sum(p.cpu_seconds for p in self.procs)

    def proc(self, name: str) -> ProcStats | None:
        return next((p for p in self.procs if p.name == name), None)


class VariantFailed(Exception):
    pass


def tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").strip().splitlines()
    except OSError:
        return ""
    return " / ".join(text[-lines:])


# -- the benchmark ----------------------------------------------------------------------------


class Bench:
    def __init__(self, cluster: ThrowawayCluster, workdir: Path, keep_going: bool) -> None:
        assert cluster.bindir is not None
        self.cluster = cluster
        self.bindir = cluster.bindir
        self.workdir = workdir
        self.keep_going = keep_going
        self.results: list[Result] = []
        self.pg_env = clean_env()
        self.pg_env.update({"PGHOST": cluster.host, "PGPORT": str(cluster.port),
                            "PGUSER": cluster.user, "PGDATABASE": DBNAME})
        self.backup_dir = workdir / "backups"
        self.env_file = workdir / "bench.env"
        self.env_file.write_text(
            "SUPABASE_DB_HOST=127.0.0.1\n"
            f"SUPABASE_DB_PORT={cluster.port}\n"
            "SUPABASE_DB_USER=postgres\n"
            f"SUPABASE_DB_NAME={DBNAME}\n"
            f"BACKUP_DIR={self.backup_dir}\n"
            f"PGRUNBOOK_DEFAULT_TARGET={LABEL}\n",
            encoding="utf-8",
        )
        self.pgrunbook = Path(sys.executable).parent / "pgrunbook"
        if not self.pgrunbook.exists():
            self.pgrunbook = ROOT / ".venv" / "bin" / "pgrunbook"
        # Per method: the settings lines that turn it on, and the key its metadata must name.
        self.encryption: dict[str, tuple[str, str]] = {}
        byte_compile()

    # -- helpers ---------------------------------------------------------------------------
    def connect(self) -> psycopg.Connection[tuple[Any, ...]]:
        return psycopg.connect(host=self.cluster.host, port=self.cluster.port,
                               user=self.cluster.user, dbname=DBNAME, autocommit=True)

    def pg_dump(self, *extra: str) -> list[str]:
        return [str(self.bindir / "pg_dump"), "-h", self.cluster.host, "-p",
                str(self.cluster.port), "-U", self.cluster.user, "-Fc", *extra, DBNAME]

    def _err_file(self, key: str) -> Path:
        return self.workdir / f"{key}.stderr"

    def encryption_settings(self, method: str) -> str:
        """The settings lines that turn on `method` (gpg or age), the key material written 0600
        into the workdir on first use: a random passphrase, or a new age key pair."""
        if method not in self.encryption:
            from tui.core.encryption import gpg_key_id

            if method == "gpg":
                passphrase = secrets.token_urlsafe(32)
                path = write_private(self.workdir / "bench.gpg-passphrase", passphrase + "\n")
                self.encryption[method] = (
                    f"BACKUP_ENCRYPTION=gpg\nBACKUP_GPG_PASSPHRASE_FILE={path}\n",
                    gpg_key_id(passphrase.encode()))
            else:
                from pyrage import x25519

                identity = x25519.Identity.generate()
                recipient = str(identity.to_public())
                path = write_private(self.workdir / "bench.age-identity", f"{identity}\n")
                self.encryption[method] = (
                    f"BACKUP_ENCRYPTION=age\nBACKUP_AGE_RECIPIENTS={recipient}\n"
                    f"BACKUP_AGE_IDENTITY_FILE={path}\n", recipient)
        return self.encryption[method][0]

    def encryption_env(self, method: str) -> Path:
        """The benchmark's settings file plus the settings of `method`."""
        path = self.workdir / f"bench_{method}.env"
        if not path.exists():
            write_private(path, self.env_file.read_text(encoding="utf-8")
                          + self.encryption_settings(method))
        return path

    def check_encrypted(self, archive: Path, meta: dict[str, Any], method: str
                        ) -> dict[str, Any]:
        """That `archive` really is encrypted with `method` and the benchmark's key: its first
        bytes, and its metadata's `archive.encryption`. Returns the latter."""
        with archive.open("rb") as f:
            head = f.read(len(AGE_MAGIC))
        if not (head.startswith(AGE_MAGIC) if method == "age"
                else bool(head) and head[0] in GPG_FIRST_BYTES):
            raise VariantFailed(f"{archive.name} does not start like {method} output: "
                                f"{head[:8].hex()}")
        enc = (meta.get("archive") or {}).get("encryption")
        if not isinstance(enc, dict) or enc.get("method") != method:
            raise VariantFailed(f"the metadata of {archive.name} says archive.encryption = "
                                f"{enc!r}, not {method}")
        key = enc.get("key_id") if method == "gpg" else ",".join(enc.get("recipients") or [])
        if key != self.encryption[method][1]:
            raise VariantFailed(f"the metadata of {archive.name} names the key {key!r}, not "
                                f"the benchmark's {self.encryption[method][1]!r}")
        return enc

    def measure(self, key: str, label: str, body: Callable[[Result], None],
                record: bool = True) -> Result:
        result = Result(key, label)
        os.sync()
        time.sleep(0.5)
        log(f"  running {label} ...")
        try:
            body(result)
        except Exception as exc:
            result.error = f"{exc.__class__.__name__}: {exc}" if not isinstance(
                exc, VariantFailed) else str(exc)
            log(f"    FAILED: {result.error}")
            if record:
                self.results.append(result)
            if not self.keep_going:
                raise
            return result
        size = f", {result.size_bytes / MB:.1f} MB" if result.size_bytes is not None else ""
        log(f"    {result.seconds:.2f} s{size}")
        if record:
            self.results.append(result)
        return result

    def _check(self, stats: list[ProcStats], key: str) -> None:
        bad = [s for s in stats if s.returncode != 0]
        if bad:
            raise VariantFailed(
                ", ".join(f"{s.name} exited {s.returncode}" for s in bad)
                + f": {tail(self._err_file(key))}"
            )

    # -- variants --------------------------------------------------------------------------
    def floor(self, result: Result) -> None:
        with self._err_file(result.key).open("wb") as err:
            t0 = time.perf_counter()
            dump = subprocess.Popen(self.pg_dump("-Z0"), stdout=subprocess.DEVNULL, stderr=err,
                                    stdin=subprocess.DEVNULL, env=self.pg_env)
            poller = HwmPoller([dump.pid])
            poller.start()
            stats = wait_all([("pg_dump", dump)], poller)
            result.seconds = time.perf_counter() - t0
        result.procs = stats
        self._check(stats, result.key)

    def sop(self, result: Result) -> None:
        out = self.workdir / "sop_Z9.dump"
        with self._err_file(result.key).open("wb") as err:
            t0 = time.perf_counter()
            dump = subprocess.Popen(self.pg_dump("-Z9", "-f", str(out)),
                                    stdout=subprocess.DEVNULL, stderr=err,
                                    stdin=subprocess.DEVNULL, env=self.pg_env)
            poller = HwmPoller([dump.pid])
            poller.start()
            stats = wait_all([("pg_dump", dump)], poller)
            result.seconds = time.perf_counter() - t0
        result.procs = stats
        try:
            self._check(stats, result.key)
            result.size_bytes = out.stat().st_size
        finally:
            out.unlink(missing_ok=True)

    def _bare_pipeline(self, err: Any, stdout_to: Any
                       ) -> tuple[list[tuple[str, subprocess.Popen[bytes]]], HwmPoller]:
        dump = subprocess.Popen(self.pg_dump("-Z0"), stdout=subprocess.PIPE, stderr=err,
                                stdin=subprocess.DEVNULL, env=self.pg_env)
        try:
            zstd = subprocess.Popen(["zstd", "-3", "-q", "-c"], stdin=dump.stdout,
                                    stdout=stdout_to,
                                    stderr=err)
        except BaseException:
            dump.kill()
            raise
        finally:
            assert dump.stdout is not None
            dump.stdout.close()
        poller = HwmPoller([dump.pid, zstd.pid])
        poller.start()
        return [("pg_dump", dump), ("zstd", zstd)], poller

    def bare(self, result: Result, *, fsync: bool = False, read_toc: bool = False,
             counts_concurrently: bool = False) -> None:
        out = self.workdir / f"{result.key}.dump.zst"
        counter: threading.Thread | None = None
        count_box: dict[str, Any] = {}
        try:
            with self._err_file(result.key).open("wb") as err, out.open("wb") as f:
                t0 = time.perf_counter()
                if counts_concurrently:
                    counter = threading.Thread(target=self._count_into, args=(count_box,))
                    counter.start()
                procs, poller = self._bare_pipeline(err, f)
                stats = wait_all(procs, poller)
                t_pipe = time.perf_counter()
                if fsync:
                    os.fsync(f.fileno())
                t_fsync = time.perf_counter()
                if counter is not None:
                    counter.join()
                result.seconds = time.perf_counter() - t0
            result.procs = stats
            self._check(stats, result.key)
            if "error" in count_box:
                raise VariantFailed(f"row counts failed: {count_box['error']}")
            result.size_bytes = out.stat().st_size
            result.extra["pipeline_seconds"] = t_pipe - t0
            if fsync:
                result.extra["fsync_seconds"] = t_fsync - t_pipe
            if counts_concurrently:
                result.extra["counts_seconds"] = count_box.get("seconds")
            if read_toc:
                t = time.perf_counter()
                self._read_toc(out)
                result.extra["toc_readback_seconds"] = time.perf_counter() - t
        finally:
            out.unlink(missing_ok=True)

    def _read_toc(self, path: Path) -> None:
        """What the tool does after the dump: `zstd -dcq FILE | pg_restore --list`."""
        with subprocess.Popen(["zstd", "-dcq", str(path)], stdout=subprocess.PIPE,
                              stderr=subprocess.DEVNULL) as unzstd:
            assert unzstd.stdout is not None
            proc = subprocess.run([str(self.bindir / "pg_restore"), "--list"],
                                  stdin=unzstd.stdout, capture_output=True, check=False)
            unzstd.stdout.close()
            unzstd.kill()
        if proc.returncode != 0:
            raise VariantFailed(f"pg_restore --list failed: {proc.stderr.decode()[-300:]}")

    def relay(self, result: Result) -> None:
        """bare, with this process in the middle doing what the tool does with the bytes:
        read 1 MiB chunks from zstd's stdout, SHA-256 them, write them to a file, fsync."""
        out = self.workdir / f"{result.key}.dump.zst"
        try:
            with self._err_file(result.key).open("wb") as err:
                fd = os.open(out, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
                try:
                    t0 = time.perf_counter()
                    procs, poller = self._bare_pipeline(err, subprocess.PIPE)
                    zstd = procs[1][1]
                    assert zstd.stdout is not None
                    src = zstd.stdout.fileno()
                    digest = hashlib.sha256()
                    while True:
                        chunk = os.read(src, CHUNK)
                        if not chunk:
                            break
                        digest.update(chunk)
                        view = memoryview(chunk)
                        while view:
                            view = view[os.write(fd, view):]
                    zstd.stdout.close()
                    stats = wait_all(procs, poller)
                    t_pipe = time.perf_counter()
                    os.fsync(fd)
                    result.seconds = time.perf_counter() - t0
                finally:
                    os.close(fd)
            result.procs = stats
            self._check(stats, result.key)
            result.size_bytes = out.stat().st_size
            result.extra["pipeline_seconds"] = t_pipe - t0
            result.extra["fsync_seconds"] = result.seconds - (t_pipe - t0)
        finally:
            out.unlink(missing_ok=True)

    def _count_into(self, box: dict[str, Any]) -> None:
        # The tool's own table selection and counting code, in the same kind of transaction.
        from psycopg import sql

        from tui.core.backup import _dumpable_tables

        try:
            t0 = time.perf_counter()
            with self.connect() as conn:
                conn.execute("BEGIN ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                conn.execute("SET LOCAL max_parallel_workers_per_gather = 0")
                conn.execute("SET LOCAL jit = off")
                # One table per statement, in one transaction: how the counts were taken before
                # the engine's batches (kept here as the diagnostic's reference).
                total = 0
                for _oid, schema, name in _dumpable_tables(conn):
                    row = conn.execute(sql.SQL("SELECT count(*) FROM ONLY {}.{}").format(
                        sql.Identifier(schema), sql.Identifier(name))).fetchone()
                    total += int(row[0]) if row else 0
                conn.execute("ROLLBACK")
            box["seconds"] = time.perf_counter() - t0
            box["rows"] = total
        except Exception as exc:  # noqa: BLE001 - reported by the caller
            box["error"] = f"{exc.__class__.__name__}: {exc}"

    def counts_only(self, result: Result) -> None:
        box: dict[str, Any] = {}
        t0 = time.perf_counter()
        self._count_into(box)
        result.seconds = time.perf_counter() - t0
        if "error" in box:
            raise VariantFailed(box["error"])
        result.extra["rows"] = box["rows"]

    def cli_startup(self, result: Result) -> None:
        best = None
        for _ in range(3):
            t0 = time.perf_counter()
            proc = subprocess.run([str(self.pgrunbook), "--version"], capture_output=True,
                                  env=clean_env(), check=False)
            took = time.perf_counter() - t0
            if proc.returncode != 0:
                raise VariantFailed(f"pgrunbook --version exited {proc.returncode}")
            best = took if best is None else min(best, took)
        result.seconds = best

    def tool(self, result: Result, *, encryption: str | None = None,
             tree: bool = False) -> None:
        """`pgrunbook backup`; with `encryption` (gpg or age), with that method's settings
        added; with `tree`, the peak RSS of its whole process tree measured as well."""
        env = clean_env()
        env_file = self.encryption_env(encryption) if encryption else self.env_file
        out_file = self.workdir / f"{result.key}.stdout"
        with self._err_file(result.key).open("wb") as err, out_file.open("wb") as out:
            t0 = time.perf_counter()
            proc = subprocess.Popen(
                [str(self.pgrunbook), "--env-file", str(env_file), "backup", LABEL],
                stdout=out, stderr=err, stdin=subprocess.DEVNULL, env=env, cwd=self.workdir)
            poller = TreePoller(proc.pid) if tree else HwmPoller([proc.pid])
            poller.start()
            stats = wait_all([("pgrunbook", proc)], poller)
            result.seconds = time.perf_counter() - t0
        result.procs = stats
        if isinstance(poller, TreePoller):
            result.extra.update(poller.extra())
        archives = sorted(self.backup_dir.glob(f"*_{LABEL}.backup"))
        try:
            self._check(stats, result.key)
            if len(archives) != 1:
                raise VariantFailed(f"expected one archive in {self.backup_dir}, "
                                    f"found {len(archives)}")
            archive = archives[0]
            meta_path = archive.with_name(archive.name + ".meta")
            meta = json.loads(meta_path.read_text(encoding="utf-8"))
            result.size_bytes = int(meta["archive"]["size_bytes"])
            on_disk = archive.stat().st_size
            if on_disk != result.size_bytes:
                raise VariantFailed(f"metadata says {result.size_bytes} bytes, file has {on_disk}")
            result.extra.update({
                "archive": archive.name,
                "compression": meta["archive"].get("compression"),
                "container": meta["archive"].get("container"),
                "internal_duration_seconds": meta.get("duration_seconds"),
                "tables": len(meta.get("tables", [])),
                "total_rows": meta.get("total_rows"),
            })
            if encryption:
                result.extra["encryption"] = self.check_encrypted(archive, meta, encryption)
        finally:
            for path in self.backup_dir.glob(f"*_{LABEL}.backup*"):
                path.unlink(missing_ok=True)
            for path in self.backup_dir.glob(f".*_{LABEL}.backup.partial-*"):
                path.unlink(missing_ok=True)


def byte_compile() -> None:
    """Compile the package's modules as `pip install` does, so that the tool is timed as it
    runs installed. From an editable checkout with PYTHONDONTWRITEBYTECODE set (this machine's
    environment) every command would otherwise compile its 60 modules from source: about 40 ms
    of a 0.8 s many-table backup."""
    import compileall

    import tui

    compileall.compile_dir(str(Path(tui.__file__).parent), quiet=1)


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(_SETTING_PREFIXES)}


def write_private(path: Path, text: str) -> Path:
    """A new file only its owner can read (0600, whatever the umask), holding `text`."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        os.fchmod(fd, 0o600)
        f.write(text)
    return path


# -- building the database --------------------------------------------------------------------

EVENTS_SQL = """
CREATE TABLE events (
    id          bigint PRIMARY KEY,
    created_at  timestamptz NOT NULL,
    kind        text NOT NULL,
    user_id     uuid NOT NULL,
    payload     jsonb NOT NULL
);
INSERT INTO events
SELECT g,
       timestamptz '2026-01-01 00:00:00+00' + (g * interval '2 seconds')
           + random() * interval '2 seconds',
       (ARRAY['page_view','click','login','logout','purchase','signup','search'])
           [1 + floor(random() * 7)::int],
       gen_random_uuid(),
       jsonb_build_object(
           'session', md5(random()::text),
           'ip', format('%s.%s.%s.%s', floor(random()*223)::int + 1, floor(random()*256)::int,
                        floor(random()*256)::int, floor(random()*256)::int),
           'path', '/' || (ARRAY['home','cart','checkout','product','search','account'])
                              [1 + floor(random() * 6)::int]
                   || '/' || floor(random() * 100000)::int,
           'amount', round((random() * 1000)::numeric, 2),
           'latency_ms', floor(random() * 2000)::int,
           'ua', (ARRAY['Mozilla/5.0 (X11; Linux x86_64)', 'Mozilla/5.0 (Macintosh)',
                        'Mozilla/5.0 (iPhone; CPU iPhone OS 17_0)', 'curl/8.4.0'])
                     [1 + floor(random() * 4)::int],
           'tags', jsonb_build_array(substr(md5(random()::text), 1, 8),
                                     substr(md5(random()::text), 1, 8)),
           'trace', jsonb_build_object('id', gen_random_uuid(), 'span', floor(random() * 1e9)::int8,
                                       'sampled', random() < 0.1)
       )
FROM generate_series(1, %(rows)s) AS g;
"""

PROFILES_SQL = """
CREATE TABLE profiles (
    id          uuid PRIMARY KEY,
    email       text NOT NULL,
    created_at  timestamptz NOT NULL,
    settings    jsonb NOT NULL
);
INSERT INTO profiles
SELECT gen_random_uuid(),
       'user' || g || '@' || (ARRAY['example.com','mail.test','corp.invalid'])
                                [1 + floor(random() * 3)::int],
       timestamptz '2024-01-01 00:00:00+00' + random() * interval '700 days',
       jsonb_build_object(
           'display_name', initcap(substr(md5(random()::text), 1, 6)) || ' '
                           || initcap(substr(md5(random()::text), 1, 9)),
           'locale', (ARRAY['en-US','de-DE','fr-FR','es-ES','ja-JP'])[1 + floor(random()*5)::int],
           'theme', CASE WHEN random() < 0.5 THEN 'dark' ELSE 'light' END,
           'notifications', jsonb_build_object('email', random() < 0.7, 'push', random() < 0.4,
                                               'digest', (ARRAY['daily','weekly','never'])
                                                             [1 + floor(random()*3)::int]),
           'address', jsonb_build_object('street', floor(random()*9999)::int || ' '
                                                   || initcap(substr(md5(random()::text), 1, 10))
                                                   || ' St',
                                         'zip', lpad(floor(random()*99999)::int::text, 5, '0'),
                                         'country', (ARRAY['US','DE','FR','ES','JP'])
                                                        [1 + floor(random()*5)::int]),
           'api_keys', jsonb_build_array(encode(sha256(random()::text::bytea), 'base64'),
                                         encode(sha256(random()::text::bytea), 'base64')),
           'recent_ids', (SELECT jsonb_agg(x) FROM (SELECT floor(random() * 1e9)::int8 + g * 0
                                                      FROM generate_series(1, 12)) AS s(x)),
           'bio', repeat(substr(md5(random()::text), 1, 16) || ' ', 4 + floor(random()*8)::int)
       )
FROM generate_series(1, %(rows)s) AS g;
"""


def build_database(bench: Bench, scale: int) -> dict[str, Any]:
    env = bench.pg_env
    t0 = time.perf_counter()
    log(f"loading pgbench -i -s {scale} (server-side generation) ...")
    proc = subprocess.run(
        [str(bench.bindir / "pgbench"), "-i", "-s", str(scale), "-I", "dtGvp", "-q",
         "-h", bench.cluster.host, "-p", str(bench.cluster.port), "-U", bench.cluster.user,
         DBNAME],
        env=env, capture_output=True, text=True, check=False,
    )
    if proc.returncode != 0:
        raise SystemExit(f"pgbench -i failed: {proc.stderr.strip()[-500:]}")
    events_rows = scale * 20_000
    profiles_rows = scale * 5_000
    log(f"loading events ({events_rows:,} rows) and profiles ({profiles_rows:,} rows) ...")
    with bench.connect() as conn:
        # No parameters: psycopg sends the text as is (the '%s' belong to format()).
        conn.execute(EVENTS_SQL.replace("%(rows)s", str(events_rows)))
        conn.execute(PROFILES_SQL.replace("%(rows)s", str(profiles_rows)))
        conn.execute("CREATE INDEX ON events (created_at)")
        conn.execute("VACUUM (FREEZE, ANALYZE)")
        conn.execute("CHECKPOINT")
        row = conn.execute("SELECT pg_database_size(current_database()),"
                           " current_setting('server_version')").fetchone()
        assert row is not None
        size, version = int(row[0]), str(row[1])
        tables = conn.execute(
            """SELECT c.relname, c.reltuples::int8, pg_total_relation_size(c.oid),
                      pg_table_size(c.oid)
               FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
               WHERE n.nspname = 'public' AND c.relkind = 'r' ORDER BY 3 DESC"""
        ).fetchall()
    took = time.perf_counter() - t0
    log(f"database built in {took:.0f} s: pg_database_size = {size / MB:,.1f} MB "
        f"({size:,} bytes), PostgreSQL {version}")
    for name, rows, total, table in tables:
        log(f"  {name:18} {rows:>12,} rows  {table / MB:8.1f} MB table+toast  "
            f"{total / MB:8.1f} MB with indexes")
    if size < 1_000_000_000:
        log(f"  note: the database is smaller than 1 GB (scale {scale}); "
            "the numbers are for a quick check only.")
    return {"database_size_bytes": size, "server_version": version, "build_seconds": took,
            "scale": scale, "tables": [
                {"name": t[0], "rows": int(t[1]), "table_bytes": int(t[3]),
                 "total_bytes": int(t[2])} for t in tables]}


# -- report -----------------------------------------------------------------------------------


def mb(n: int | None) -> str:
    return "-" if n is None else f"{n / MB:.1f}"


def rss_of(result: Result) -> str:
    parts = []
    for p in result.procs:
        hwm = f"{p.hwm_polled / MB:.1f}" if p.hwm_polled is not None else "?"
        parts.append(f"{p.name} {hwm}/{p.maxrss_wait4 / MB:.1f}")
    if result.extra.get("tree_peak_pss"):
        parts.append(f"tree PSS {result.extra['tree_peak_pss'] / MB:.1f}")
    return ", ".join(parts) or "-"


def print_table(results: list[Result], sop: Result | None) -> None:
    headers = ["variant", "seconds", "size MB", "time vs SOP", "size vs SOP", "client CPU s",
               "peak RSS MB (VmHWM/wait4)"]
    rows = []
    for r in results:
        if r.error:
            rows.append([r.label, "FAILED", "-", "-", "-", "-", r.error[:60]])
            continue
        t_ratio = s_ratio = "-"
        if sop is not None and sop.seconds and r.seconds is not None:
            t_ratio = f"{r.seconds / sop.seconds:.3f}"
        if sop is not None and sop.size_bytes and r.size_bytes is not None:
            s_ratio = f"{r.size_bytes / sop.size_bytes:.3f}"
        rows.append([r.label, f"{r.seconds:.2f}" if r.seconds is not None else "-",
                     mb(r.size_bytes), t_ratio, s_ratio,
                     f"{r.cpu_seconds:.1f}" if r.procs else "-", rss_of(r)])
    widths = [max(len(h), *(len(row[i]) for row in rows)) for i, h in enumerate(headers)]
    log("  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)))
    log("  ".join("-" * w for w in widths))
    for row in rows:
        log("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())


def best(results: list[Result], key: str) -> Result | None:
    ok = [r for r in results if r.key.startswith(key) and r.error is None and r.seconds]
    return min(ok, key=lambda r: r.seconds or 0.0) if ok else None


def evaluate(results: list[Result]) -> list[dict[str, Any]]:
    sop = next((r for r in results if r.key == "sop" and r.error is None), None)
    bares = [r for r in results if r.key.startswith("bare") and r.error is None]
    tools = [r for r in results if r.key.startswith("tool") and r.error is None]
    b_best, t_best = best(results, "bare"), best(results, "tool")
    goals: list[dict[str, Any]] = []

    def goal(name: str, value: float | None, target: str, ok: bool | None, detail: str) -> None:
        goals.append(goal_entry(name, value, target, ok, detail))

    if sop and t_best and sop.seconds and t_best.seconds:
        v = sop.seconds / t_best.seconds
        goal("speed-up of pgrunbook backup over SOP -Z9", v, f">= {GOAL_SPEEDUP}",
             v >= GOAL_SPEEDUP, f"{sop.seconds:.2f} s / {t_best.seconds:.2f} s (best tool run)")
    else:
        goal("speed-up of pgrunbook backup over SOP -Z9", None, f">= {GOAL_SPEEDUP}", None,
             "missing runs")
    if sop and tools and sop.size_bytes:
        worst = max(r.size_bytes or 0 for r in tools)
        v = worst / sop.size_bytes
        goal("pgrunbook size / SOP size", v, f"<= {GOAL_SIZE_RATIO}", v <= GOAL_SIZE_RATIO,
             f"{worst / MB:.1f} MB / {sop.size_bytes / MB:.1f} MB (larger tool archive)")
    else:
        goal("pgrunbook size / SOP size", None, f"<= {GOAL_SIZE_RATIO}", None, "missing runs")
    if b_best and t_best and b_best.seconds and t_best.seconds:
        # Each pair runs back to back, so it shares the machine's momentary speed; on a shared
        # 2-vCPU VM single runs swing by +-0.5 s, so the median pair ratio is the figure judged.
        ratios = [t.seconds / b.seconds for b, t in zip(bares, tools, strict=False)
                  if b.seconds and t.seconds]
        v = statistics.median(ratios)
        pairs = ", ".join(f"{r:.3f}" for r in ratios)
        goal("pgrunbook time / bare pg_dump -Z0 | zstd -3 time (median of pairs)", v,
             f"<= {GOAL_TIME_RATIO}", v <= GOAL_TIME_RATIO,
             f"per pair: {pairs}; best/best {t_best.seconds / b_best.seconds:.3f} "
             f"({t_best.seconds:.2f} s / {b_best.seconds:.2f} s)")
    else:
        goal("pgrunbook time / bare pg_dump -Z0 | zstd -3 time", None, f"<= {GOAL_TIME_RATIO}",
             None, "missing runs")
    hwms = [p.hwm_polled for r in tools for p in r.procs if p.hwm_polled is not None]
    if hwms:
        v = max(hwms) / MB
        w4 = max(p.maxrss_wait4 for r in tools for p in r.procs) / MB
        goal("pgrunbook peak RSS (MB, Python process itself)", v, f"< {GOAL_RSS_MB:.0f}",
             v < GOAL_RSS_MB,
             f"VmHWM polled every {POLL_INTERVAL * 1000:.0f} ms; wait4 ru_maxrss incl. "
             f"pg_dump/zstd/pg_restore children: {w4:.1f} MB")
    else:
        goal("pgrunbook peak RSS (MB, Python process itself)", None, f"< {GOAL_RSS_MB:.0f}",
             None, "missing runs")
    return goals


def goal_entry(name: str, value: float | None, target: str, ok: bool | None,
               detail: str) -> dict[str, Any]:
    return {"goal": name, "value": value, "target": target,
            "status": "N/A" if ok is None else ("PASS" if ok else "FAIL"), "detail": detail}


def rounds_of(results: list[Result], a: str, b: str) -> list[tuple[Result, Result]]:
    """(a_i, b_i) for every round i where both ran: keys a1, b1, a2, b2, ..."""
    by_key = {r.key: r for r in results if r.error is None and r.seconds}
    return [(by_key[k], by_key[b + k[len(a):]]) for k in by_key
            if k.startswith(a) and k[len(a):].isdigit() and b + k[len(a):] in by_key]


def evaluate_encryption(results: list[Result], methods: Sequence[str]) -> list[dict[str, Any]]:
    """Issue 14's goals, per method: encrypted / unencrypted pgrunbook backup time (median of
    the rounds), and the peak memory of the encrypted backup's whole process tree."""
    goals = []
    plain_tree = next((r.extra.get("tree_peak_pss") for r in results
                       if r.key == "mem_tool" and r.error is None), None)
    for m in methods:
        name = f"pgrunbook backup, {m} / pgrunbook backup time (median of rounds)"
        target = f"<= {GOAL_ENCRYPTED_TIME_RATIO}"
        pairs = rounds_of(results, "tool", m)
        if pairs:
            ratios = [e.seconds / t.seconds for t, e in pairs if e.seconds and t.seconds]
            v = statistics.median(ratios)
            t_best = min(t.seconds or 0.0 for t, _ in pairs)
            e_best = min(e.seconds or 0.0 for _, e in pairs)
            goals.append(goal_entry(
                name, v, target, v <= GOAL_ENCRYPTED_TIME_RATIO,
                f"per round: {', '.join(f'{x:.3f}' for x in ratios)}; best/best "
                f"{e_best / t_best:.3f} ({e_best:.2f} s / {t_best:.2f} s)"))
        else:
            goals.append(goal_entry(name, None, target, None, "missing runs"))
        name = f"pgrunbook backup, {m}: peak memory (MB, PSS of the whole process tree)"
        target = f"< {GOAL_RSS_MB:.0f}"
        mem = next((r for r in results if r.key == f"mem_{m}" and r.error is None
                    and r.extra.get("tree_peak_pss")), None)
        if mem is not None:
            v = mem.extra["tree_peak_pss"] / MB
            parts = ", ".join(f"{n} {b / MB:.1f}" for n, b in mem.extra["tree_peak_parts"])
            top = max(mem.extra["tree_hwm_by_program"].items(), key=lambda nb: nb[1])
            plain = f"{plain_tree / MB:.1f} MB" if plain_tree else "-"
            goals.append(goal_entry(
                name, v, target, v < GOAL_RSS_MB,
                f"untimed run of its own, polled every {POLL_INTERVAL * 1000:.0f} ms; at the "
                f"peak: {parts}; summed RSS (shared pages in each) up to "
                f"{mem.extra['tree_peak_rss_sum'] / MB:.1f}; largest process {top[0]} "
                f"{top[1] / MB:.1f} (VmHWM); the unencrypted pgrunbook backup's tree: {plain}"))
        else:
            goals.append(goal_entry(name, None, target, None, "missing runs"))
    return goals


def print_goals(goals: list[dict[str, Any]]) -> None:
    for g in goals:
        value = "-" if g["value"] is None else f"{g['value']:.3f}"
        log(f"  [{g['status']}] {g['goal']}: {value} (goal {g['target']}) - {g['detail']}")


def print_diagnostics(diag: list[Result], tool_results: list[Result],
                      bare_best: Result | None) -> None:
    log("")
    log("Where the time goes (diagnostics):")
    for r in diag:
        if r.error:
            log(f"  {r.label:48} FAILED: {r.error}")
            continue
        extra = ", ".join(
            f"{k} {v:.2f}" if isinstance(v, float) else f"{k} {v}" for k, v in r.extra.items()
            if v is not None)
        delta = ""
        if (bare_best and bare_best.seconds and r.seconds is not None
                and r.key.startswith(("bare", "relay"))):
            delta = f" ({r.seconds - bare_best.seconds:+.2f} s vs best bare)"
        log(f"  {r.label:48} {r.seconds:7.2f} s{delta}{'; ' + extra if extra else ''}")
    by_key = {r.key: r for r in diag if r.error is None and r.seconds is not None}
    secs: dict[str, float] = {k: r.seconds for k, r in by_key.items() if r.seconds is not None}
    tool_best = best(tool_results, "tool")
    if tool_best and bare_best and tool_best.seconds and bare_best.seconds:
        log(f"  tool - bare (best runs): {tool_best.seconds - bare_best.seconds:+.2f} s; "
            "estimates of the parts (single runs, noisy):")
        if "bare_fsync" in by_key:
            bf = by_key["bare_fsync"]
            log(f"    fsync of the archive            {bf.extra.get('fsync_seconds', 0.0):6.2f} s")
            log(f"    TOC read-back                   "
                f"{bf.extra.get('toc_readback_seconds', 0.0):6.2f} s")
            if "relay" in by_key:
                log(f"    Python relay (sha256 + write)   "
                    f"{secs['relay'] - secs['bare_fsync']:+6.2f} s (relay - bare+fsync)")
            if "bare_counts" in by_key:
                log(f"    concurrent count(*)             "
                    f"{secs['bare_counts'] - secs['bare_fsync']:+6.2f} s "
                    "(bare+fsync+counts - bare+fsync)")
        if "startup" in by_key:
            log(f"    CLI start-up (--version)        {secs['startup']:6.2f} s")
    for t in tool_results:
        if t.error is None and t.extra.get("internal_duration_seconds") is not None:
            log(f"  {t.label}: wall {t.seconds:.2f} s, the tool's own duration_seconds "
                f"{t.extra['internal_duration_seconds']:.2f} s (the rest is start-up and exit)")


# -- main -------------------------------------------------------------------------------------



def write_json(path: str, started_at: datetime, **fields: Any) -> None:
    """The run's numbers as JSON: when, on what machine, the fields given, and the units."""
    payload = {
        "started_at": started_at.isoformat(),
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "python": platform.python_version()},
        **fields,
        "units": {"size": "bytes", "rss": "bytes", "time": "seconds"},
    }
    Path(path).write_text(json.dumps(payload, indent=2) + "\n", encoding="utf-8")
    log(f"\nwrote {path}")

def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--scale", type=int, default=DEFAULT_SCALE,
                        help=f"pgbench scale; the jsonb tables grow with it (default "
                             f"{DEFAULT_SCALE}, over 1 GB in total; try 5 for a quick check)")
    parser.add_argument("--repeat", type=int, default=5, metavar="N",
                        help="runs of bare and of pgrunbook, alternating (default 2)")
    parser.add_argument("--keep-going", action="store_true",
                        help="record a failing variant and run the rest instead of stopping")
    parser.add_argument("--json", metavar="OUT", help="also write all numbers to this file")
    parser.add_argument("--workdir", metavar="DIR",
                        help="where outputs are written (default: a new temp dir under "
                             f"{tempfile.gettempdir()}); removed afterwards")
    diag = parser.add_mutually_exclusive_group()
    diag.add_argument("--diagnose", action="store_true", default=None,
                      help="always run the diagnostic variants")
    diag.add_argument("--no-diagnose", dest="diagnose", action="store_false",
                      help="never run them (default: only when the time-ratio goal fails)")
    parser.add_argument("--no-encryption", dest="encryption", action="store_false",
                        help="leave out the encrypted variants (pgrunbook backup with "
                             "BACKUP_ENCRYPTION=gpg and =age) and their goals")
    args = parser.parse_args(argv)
    methods = ENCRYPTION_METHODS if args.encryption else ()

    if shutil.which("zstd") is None:
        log("zstd is not installed (apt install zstd).")
        return 2
    started_at = datetime.now(UTC)
    workdir = Path(tempfile.mkdtemp(prefix="pgrb-bench-", dir=args.workdir))
    cluster = ThrowawayCluster()
    exit_code = 0
    try:
        log(f"starting a throwaway PostgreSQL (outputs in {workdir}) ...")
        cluster.start()
        log(f"  port {cluster.port}, binaries {cluster.bindir}")
        bench = Bench(cluster, workdir, args.keep_going)
        db = build_database(bench, args.scale)
        log("")
        log("measuring (each variant preceded by sync(2)):")
        try:
            bench.measure("warmup", "warm-up: pg_dump -Z0 > /dev/null (discarded)", bench.floor,
                          record=False)
            bench.measure("floor", "floor: pg_dump -Fc -Z0 > /dev/null", bench.floor)
            bench.measure("sop", "SOP: pg_dump -Fc -Z9 -f FILE", bench.sop)
            for i in range(1, max(args.repeat, 1) + 1):
                bench.measure(f"bare{i}", f"bare #{i}: pg_dump -Fc -Z0 | zstd -3",
                              bench.bare)
                # With the encrypted variants, the pgrunbook runs of a round take turns at
                # going first.
                tools: list[tuple[str, str, Callable[[Result], None]]] = [
                    (f"tool{i}", f"pgrunbook backup #{i}", bench.tool)]
                tools += [(f"{m}{i}", f"pgrunbook backup, {m} #{i}",
                           functools.partial(bench.tool, encryption=m)) for m in methods]
                turn = (i - 1) % len(tools)
                for key, label, body in tools[turn:] + tools[:turn]:
                    bench.measure(key, label, body)
            # The memory of the whole process tree, in runs of their own: reading PSS costs CPU
            # the timed runs must not pay.
            for method in (None, *methods) if methods else ():
                what = f"pgrunbook backup{', ' + method if method else ''}"
                bench.measure(f"mem_{method or 'tool'}", f"memory: {what} (process tree, untimed)",
                              functools.partial(bench.tool, encryption=method, tree=True))
        except Exception:  # noqa: BLE001 - measure() printed it; stop without --keep-going
            exit_code = 2
        results = bench.results
        sop = next((r for r in results if r.key == "sop" and r.error is None), None)
        goals = evaluate(results) + evaluate_encryption(results, methods)
        time_goal = next(g for g in goals if g["goal"].startswith("pgrunbook time"))
        run_diag = args.diagnose if args.diagnose is not None else time_goal["status"] == "FAIL"
        diag_results: list[Result] = []
        if run_diag and exit_code == 0:
            log("")
            log("diagnostics:")
            variants: list[tuple[str, str, Callable[[Result], None]]] = [
                ("bare_fsync", "bare + fsync of the output (+ TOC read-back, untimed)",
                 lambda r: bench.bare(r, fsync=True, read_toc=True)),
                ("relay", "bare | python relay (1 MiB, sha256, write, fsync)", bench.relay),
                ("counts", "count(*) of every table alone (REPEATABLE READ)",
                 bench.counts_only),
                ("bare_counts", "bare + fsync, count(*) running concurrently",
                 lambda r: bench.bare(r, fsync=True, counts_concurrently=True)),
                ("startup", "pgrunbook --version (CLI start-up, best of 3)",
                 bench.cli_startup),
            ]
            for key, label, body in variants:
                with contextlib.suppress(Exception):
                    diag_results.append(bench.measure(key, label, body, record=False))
            if any(r.error for r in diag_results):
                exit_code = max(exit_code, 2)

        log("")
        log(f"Results ({db['database_size_bytes'] / MB:,.1f} MB database, scale {args.scale}, "
            f"PostgreSQL {db['server_version']}, {os.cpu_count()} CPUs, "
            f"{started_at:%Y-%m-%d}):")
        print_table(results, sop)
        log("  peak RSS: VmHWM = that process alone (polled every 20 ms); wait4 = ru_maxrss, an "
            "upper bound that also covers\n  the children it waited for and the forking "
            "parent's image before exec (this script, ~40 MB)")
        if methods:
            log("  tree PSS = the peak of the PSS of pgrunbook and all its descendants summed "
                "(polled every 20 ms; the memory runs only)")
        log("  client CPU s: user+sys of the client processes (and their children); the server's "
            "backend is not included")
        log("")
        log("Goals:")
        print_goals(goals)
        if diag_results:
            print_diagnostics(diag_results, [r for r in results if r.key.startswith("tool")],
                              best(results, "bare"))
        if any(g["status"] != "PASS" for g in goals):
            exit_code = max(exit_code, 1)

        if args.json:
            write_json(args.json, started_at,
                database=db,
                results=[asdict(r) for r in results],
                diagnostics=[asdict(r) for r in diag_results],
                goals=goals,
                **({"encryption_methods": list(methods)} if methods else {}),
            )
    finally:
        cluster.stop()
        shutil.rmtree(workdir, ignore_errors=True)
    return exit_code


if __name__ == "__main__":
    raise SystemExit(main())
