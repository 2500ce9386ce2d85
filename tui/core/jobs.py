"""Jobs: long operations that outlive the terminal that started them.

A job runs one operation (`job_ops.OPERATIONS`) in its own process and session, with no
controlling terminal (stdin is /dev/null, stdout and stderr go to a file in its directory), so a
hang-up of the SSH session or tmux does not reach it. Its directory, BACKUP_DIR/jobs/<id>/
(0700, files 0600), holds:
- `state.json`: process id and start time, operation, target, operator, arguments (redacted),
  status, exit code, a one-line outcome (written atomically);
- `journal.jsonl`: the typed events it emitted, one JSON line each, then its temp files as they
  are made, and an end line; viewers (the CLI, the TUI, `pgrunbook attach`) follow it;
- `outcome.pickle`: the operation's result or its error, for the viewers to render exactly as
  a foreground run would (written by the job itself, read back by the same user's pgrunbook).
BACKUP_DIR/jobs/active/<id> exists while a job is unfinished: the next pgrunbook command that
finds one whose process is gone reconciles it (`tui.core.reconcile`). The journal's format is
`tui.core.journal`; what each operation is as a job, `tui.core.job_ops`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import os
import pickle
import secrets as _secrets
import select
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tui.core.audit import iso, operator_identity, redact, utcnow
from tui.core.errors import EXIT_FAILED, OperationFailed, PgRunbookError
from tui.core.events import Emit
from tui.core.fsutil import (
    PRIVATE_FILE,
    atomic_write_bytes,
    ensure_private_dir,
    temp_listeners,
)
from tui.core.journal import JournalReader, JournalWriter, decode_event
from tui.core.settings import Settings
from tui.core.targets import pickle_with_secrets

JOBS_DIR = "jobs"
ACTIVE_DIR = "active"
STARTING, RUNNING = "starting", "running"
ABANDONED = "abandoned"
UNFINISHED = (STARTING, RUNNING)
POLL_SECONDS = 0.05  # how often a viewer looks for new journal lines
ALIVE_CHECK_SECONDS = 0.5  # how often a viewer checks that a silent job's process lives
STARTING_GRACE_SECONDS = 30.0  # a job that never wrote its state within this is dead


class JobAbandoned(OperationFailed):
    """The job's process ended without finishing (kill -9, reboot, out of memory)."""


class JobNotFound(PgRunbookError):
    """No job with that id (or none at all) in BACKUP_DIR/jobs."""

    exit_code = 2


# -- the state ---------------------------------------------------------------------------------


@dataclass
class JobState:
    id: str
    operation: str
    status: str
    started_at: str
    origin: str
    operator: dict[str, Any]
    target: dict[str, Any] | None
    arguments: dict[str, Any]
    reason: str | None = None
    pid: int | None = None
    proc_start: int | None = None  # /proc/<pid>/stat start time: guards against pid reuse
    finished_at: str | None = None
    exit_code: int | None = None
    summary: str | None = None

    def as_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> JobState:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})

    @property
    def finished(self) -> bool:
        return self.status not in UNFINISHED


# -- one job ------------------------------------------------------------------------------------


@dataclass
class Outcome:
    """How a job ended: its result (or error), exit code and status."""

    status: str
    exit_code: int
    result: Any = None
    error: BaseException | None = None

    def unwrap(self) -> Any:
        if self.error is not None:
            raise self.error
        return self.result


@dataclass
class Job:
    directory: Path
    pid: int | None = None  # known to the process that started it
    popen: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    wake_fd: int | None = None  # readable when the job forked by this process wrote or ended

    @property
    def id(self) -> str:
        return self.directory.name

    @property
    def backup_dir(self) -> Path:
        return self.directory.parent.parent

    @property
    def state_path(self) -> Path:
        return self.directory / "state.json"

    @property
    def journal_path(self) -> Path:
        return self.directory / "journal.jsonl"

    @property
    def outcome_path(self) -> Path:
        return self.directory / "outcome.pickle"

    @property
    def active_marker(self) -> Path:
        return self.backup_dir / JOBS_DIR / ACTIVE_DIR / self.id

    def state(self) -> JobState:
        try:
            return JobState.from_json(json.loads(self.state_path.read_text(encoding="utf-8")))
        except (OSError, ValueError) as exc:
            raise JobNotFound(f"job {self.id} has no readable state ({exc}).") from None

    def write_state(self, state: JobState) -> None:
        # Not fsynced: after a crash a job is reconciled from its journal whatever this says.
        atomic_write_bytes(self.state_path, json.dumps(state.as_json(), indent=1).encode(),
                           durable=False)

    def alive(self, state: JobState | None = None) -> bool:
        state = state or self.state()
        pid = state.pid or self.pid
        if pid is None:
            age = time.time() - self.state_path.stat().st_mtime
            return state.status == STARTING and age < STARTING_GRACE_SECONDS
        if self.popen is not None and self.popen.poll() is not None:
            return False
        stat = _proc_stat(pid)
        if stat is None or stat[0] == "Z":
            return False
        return state.proc_start is None or stat[1] == state.proc_start

    def outcome(self) -> Outcome:
        state = self.state()
        try:
            kind, value = pickle.loads(self.outcome_path.read_bytes())  # noqa: S301 - our own
        except (OSError, pickle.UnpicklingError, EOFError, AttributeError, ImportError,
                ValueError, TypeError):
            message = state.summary or f"job {self.id} ended ({state.status}) without a result."
            return Outcome(state.status, state.exit_code or EXIT_FAILED,
                           error=OperationFailed(message))
        if kind == "error":
            return Outcome(state.status, state.exit_code or EXIT_FAILED, error=value)
        return Outcome(state.status, state.exit_code or 0, result=value)

    def cancel(self) -> bool:
        """Ask the job to stop (it cleans up and ends as interrupted)."""
        state = self.state()
        pid = state.pid or self.pid
        if pid is None or not self.alive(state):
            return False
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        return True

    def wait_for_news(self, timeout: float) -> None:
        """Sleep until the job (forked by this process) writes, or `timeout` seconds."""
        if self.wake_fd is None:
            time.sleep(timeout)
            return
        ready, _, _ = select.select([self.wake_fd], [], [], timeout)
        if ready:
            data = os.read(self.wake_fd, 65536)
            if not data:  # the job closed its end: it has ended
                os.close(self.wake_fd)
                self.wake_fd = None

    def reap(self) -> None:
        """Collect the exit status of a job this process forked or spawned, if it has exited
        (one that is still closing its files is collected by init once this process ends)."""
        if self.popen is not None:
            self.popen.poll()
        elif self.pid is not None:
            with contextlib.suppress(ChildProcessError, OSError):
                os.waitpid(self.pid, os.WNOHANG)
        if self.wake_fd is not None:
            os.close(self.wake_fd)
            self.wake_fd = None


def _proc_stat(pid: int) -> tuple[str, int] | None:
    """(state letter, start time in clock ticks) of a process, or None when it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2:].split()
    return fields[0], int(fields[19])


def jobs_dir(backup_dir: Path) -> Path:
    return backup_dir / JOBS_DIR


def all_jobs(backup_dir: Path) -> list[Job]:
    """Every job, newest first."""
    root = jobs_dir(backup_dir)
    if not root.is_dir():
        return []
    return [Job(root / name) for name in sorted(os.listdir(root), reverse=True)
            if name != ACTIVE_DIR and (root / name / "state.json").exists()]


def find_job(backup_dir: Path, job_id: str | None) -> Job:
    """A job by its id (or a unique prefix); without one, the newest unfinished job, else the
    newest job."""
    jobs = all_jobs(backup_dir)
    if not jobs:
        raise JobNotFound(f"no jobs in {jobs_dir(backup_dir)} yet.",
                          "Jobs are made by backup, restore, verify, drill, upload, download, prune, "
                          "pin and unpin.")
    if job_id is None:  # the active markers name the unfinished ones: no state file read each
        active = unfinished(backup_dir)
        return active[-1] if active else jobs[0]
    found = [j for j in jobs if j.id == job_id] or [j for j in jobs if j.id.startswith(job_id)]
    if len(found) != 1:
        raise JobNotFound(f"{'no' if not found else 'more than one'} job matches {job_id!r}.",
                          "See them with: pgrunbook jobs")
    return found[0]


# -- starting a job ----------------------------------------------------------------------------


def start(settings: Settings, operation: str, request: Any, *, origin: str,
          arguments: dict[str, Any], reason: str | None = None,
          target: dict[str, Any] | None = None, fork: bool = False) -> Job:
    """Start `operation` with `request` detached; the caller follows the returned job.
    Questions for the operator are asked before this: the job never waits for a terminal.
    `fork`: the job is a fork of this process (quick: nothing to import again), which only a
    process without threads or a running event loop may do (the CLI); otherwise a fresh
    interpreter runs it (the TUI)."""
    from tui.core.job_ops import OPERATIONS
    from tui.core.operation import secrets_of

    OPERATIONS[operation].check(settings, request)
    root = ensure_private_dir(jobs_dir(settings.backup_dir))
    ensure_private_dir(root / ACTIVE_DIR)
    stamp = datetime.now(UTC).strftime("%Y%m%d_%H%M%S")
    directory = root / f"{stamp}_{operation}_{_secrets.token_hex(3)}"
    directory.mkdir(mode=0o700)
    job = Job(directory)
    secret_values = secrets_of(settings)
    state = JobState(
        id=job.id, operation=operation, status=STARTING, started_at=iso(utcnow()),
        origin=origin, operator=operator_identity(),
        target=target if target is not None else settings.target.public(),
        arguments=redact(arguments, secret_values), reason=reason)
    job.write_state(state)
    fd = os.open(job.journal_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, PRIVATE_FILE)
    os.close(fd)
    job.active_marker.touch(mode=PRIVATE_FILE)
    if fork and threading.active_count() == 1:
        _fork(job, settings, operation, request)
    else:
        _spawn(job, settings, operation, request)
    return job


def _fork(job: Job, settings: Settings, operation: str, request: Any) -> None:
    # A pipe only to wake the viewer that forked the job: the job writes a byte after each
    # journal line, and its end closes the pipe, so this viewer sees both at once instead of
    # at its next look (other viewers look every POLL_SECONDS).
    wake_r, wake_w = os.pipe()
    # The collector would walk (and so copy) every object the two processes share; frozen,
    # the objects stay shared pages until one of them really changes them.
    gc.freeze()
    gc.enable()  # held off by the CLI while it started (tui.cli.main)
    pid = os.fork()
    if pid == 0:  # the job
        code = EXIT_FAILED
        try:
            os.close(wake_r)
            os.setsid()
            os.set_blocking(wake_w, False)
            code = run_child(job, settings, operation, request, wake_fd=wake_w)
        finally:
            os._exit(code)
    os.close(wake_w)
    job.pid = pid
    job.wake_fd = wake_r


def _spawn(job: Job, settings: Settings, operation: str, request: Any) -> None:
    errors = os.open(job.directory / "stderr", os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                     PRIVATE_FILE)
    try:
        popen = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-m", "tui.core.jobrun", str(job.directory)],
            stdin=subprocess.PIPE, stdout=subprocess.DEVNULL, stderr=errors,
            start_new_session=True, close_fds=True)
    finally:
        os.close(errors)
    assert popen.stdin is not None
    # The settings travel through the pipe, never through a file: they hold the password.
    popen.stdin.write(pickle_with_secrets((settings, operation, request)))
    popen.stdin.close()
    job.pid = popen.pid
    job.popen = popen


def run_child(job: Job, settings: Settings, operation: str, request: Any,
              wake_fd: int | None = None) -> int:
    """The job's process: detach from any terminal, run, record the outcome, end."""
    import asyncio

    from tui.core.job_ops import OPERATIONS
    from tui.core.operation import secrets_of

    devnull = os.open(os.devnull, os.O_RDWR)
    os.dup2(devnull, 0)
    errors = os.open(job.directory / "stderr", os.O_WRONLY | os.O_CREAT | os.O_APPEND,
                     PRIVATE_FILE)
    os.dup2(errors, 1)
    os.dup2(errors, 2)
    signal.signal(signal.SIGHUP, signal.SIG_IGN)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    spec = OPERATIONS[operation]
    state = job.state()
    state.status, state.pid = RUNNING, os.getpid()
    state.proc_start = (_proc_stat(os.getpid()) or ("", None))[1]
    job.write_state(state)
    journal = JournalWriter(job.journal_path, secrets_of(settings), wake_fd=wake_fd)
    temp_listeners.append(lambda path: journal.write({"kind": "temp", "path": str(path)}))

    async def main() -> Outcome:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        try:
            result = await spec.run(settings, request, journal.event)
        except asyncio.CancelledError:
            error: BaseException = spec.interrupted()
            return Outcome("interrupted", error.exit_code if isinstance(
                error, PgRunbookError) else 130, error=error)
        except PgRunbookError as exc:
            return Outcome("failed", exc.exit_code, error=exc)
        except Exception as exc:  # a bug: the viewer says so, the traceback is kept
            import traceback

            traceback.print_exc()
            return Outcome("failed", EXIT_FAILED, error=exc)
        status, code = spec.verdict(result)
        return Outcome(status, code, result=result)

    try:
        outcome = asyncio.run(main())
    except BaseException as exc:  # noqa: BLE001 - the end must be written whatever happened
        outcome = Outcome("failed", EXIT_FAILED, error=OperationFailed(
            f"the job stopped unexpectedly: {exc.__class__.__name__}: {exc}"))
    summary = spec.summary(outcome)
    finish(job, journal, outcome, summary)
    return outcome.exit_code


def finish(job: Job, journal: JournalWriter, outcome: Outcome, summary: str) -> None:
    """Record a job's end: the outcome, then the state, then the journal's end line (a viewer
    that sees the end line finds the other two written), then the active marker goes."""
    try:
        payload = pickle.dumps(("error", outcome.error) if outcome.error is not None
                               else ("result", outcome.result))
    except (pickle.PicklingError, TypeError, AttributeError):
        payload = pickle.dumps(("error", OperationFailed(summary)))
    if any(secret.encode() in payload for secret in journal.secrets):  # never on disk
        payload = pickle.dumps(("error", OperationFailed(redact(summary, journal.secrets))))
    atomic_write_bytes(job.outcome_path, payload, durable=False)
    state = job.state()
    state.status, state.exit_code = outcome.status, outcome.exit_code
    state.summary, state.finished_at = summary, iso(utcnow())
    job.write_state(state)
    journal.write({"kind": "end", "status": outcome.status, "exit_code": outcome.exit_code,
                   "summary": summary})
    journal.close()
    job.active_marker.unlink(missing_ok=True)


# -- following a job ---------------------------------------------------------------------------


class Follower:
    """A viewer's reading of one job: `poll()` hands new events to `emit` and returns the
    outcome once the job has ended (or been found dead and reconciled), else None."""

    def __init__(self, job: Job, emit: Emit) -> None:
        self.job = job
        self.emit = emit
        self.reader = JournalReader(job.journal_path)
        self._last_alive_check = time.monotonic()

    def poll(self) -> Outcome | None:
        records = self.reader.read()
        outcome = self._hand_out(records)
        if outcome is not None or records:
            return outcome
        now = time.monotonic()
        if now - self._last_alive_check >= ALIVE_CHECK_SECONDS:
            self._last_alive_check = now
            if not self.job.alive():
                # Its last lines may have landed between the read and the check.
                outcome = self._hand_out(self.reader.read())
                if outcome is not None:
                    return outcome
                from tui.core.reconcile import reconcile_job

                self.job.reap()
                return reconcile_job(self.job)
        return None

    def _hand_out(self, records: list[dict[str, Any]]) -> Outcome | None:
        for record in records:
            kind = record.get("kind")
            if kind == "event":
                event = decode_event(record)
                if event is not None:
                    self.emit(event)
            elif kind == "end":
                self.job.reap()
                return self.job.outcome()
        return None


def follow(job: Job, emit: Emit) -> Outcome:
    """Follow `job` to its end in this thread (the CLI)."""
    follower = Follower(job, emit)
    while True:
        outcome = follower.poll()
        if outcome is not None:
            return outcome
        job.wait_for_news(POLL_SECONDS)


async def follow_async(job: Job, emit: Emit) -> Outcome:
    """Follow `job` to its end on the event loop (the TUI). Cancelling the follower only stops
    following (the app closed, the screen was left): the job runs on. To stop the job, call
    `job.cancel()` and keep following: it ends as interrupted once it has cleaned up."""
    import asyncio

    follower = Follower(job, emit)
    while True:
        outcome = follower.poll()
        if outcome is not None:
            return outcome
        await asyncio.sleep(POLL_SECONDS)


def unfinished(backup_dir: Path) -> list[Job]:
    root = jobs_dir(backup_dir) / ACTIVE_DIR
    if not root.is_dir():
        return []
    return [Job(jobs_dir(backup_dir) / name) for name in sorted(os.listdir(root))
            if (jobs_dir(backup_dir) / name / "state.json").exists()]


def describe_progress(job: Job) -> str:
    """The last phase (and progress) a job's journal recorded, for `pgrunbook jobs`."""
    phase, progress = "", ""
    with contextlib.suppress(OSError):
        size = job.journal_path.stat().st_size
        with job.journal_path.open("rb") as f:
            f.seek(max(0, size - 65536))
            tail = f.read().split(b"\n")
        for raw in reversed(tail):
            with contextlib.suppress(ValueError):
                record = json.loads(raw)
                kind, data = record.get("type"), record.get("data") or {}
                if not progress and kind in ("Progress", "DumpProgress"):
                    done = data.get("done", data.get("bytes_written"))
                    total = data.get("total", data.get("expected_bytes"))
                    if done is not None and total:
                        progress = f" {min(100, int(100 * done / total))}%"
                if kind == "PhaseStarted":
                    phase = str(data.get("phase"))
                    break
    return f"{phase}{progress}".strip()


def iter_states(backup_dir: Path, limit: int | None = None) -> Iterator[tuple[Job, JobState]]:
    for n, job in enumerate(all_jobs(backup_dir)):
        if limit is not None and n >= limit:
            return
        with contextlib.suppress(JobNotFound):
            yield job, job.state()
