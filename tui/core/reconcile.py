"""Jobs whose process died without finishing (kill -9, a reboot, out of memory): found by the
next pgrunbook command (or a viewer that sees the process gone), and cleaned up from what their
journal recorded: leftover child processes stopped, temp files removed, the target lock
cleared, open audit records closed as `abandoned`, and an outcome that says what state the
target may be in and what to run."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import signal
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tui.core import notify
from tui.core.audit import AuditLog, iso, utcnow
from tui.core.errors import EXIT_FAILED
from tui.core.jobs import (
    ABANDONED,
    Job,
    JobAbandoned,
    JobNotFound,
    JobState,
    Outcome,
    _proc_stat,
    finish,
    unfinished,
)
from tui.core.journal import JournalReader, JournalWriter


def _session_of(pid: int) -> int | None:
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return int(raw[raw.rfind(")") + 2:].split()[3])


def reconcile(backup_dir: Path) -> list[Outcome]:
    """Reconcile every unfinished job whose process is gone; returns what was found (each
    outcome's error says what happened and what to run)."""
    found = []
    for job in unfinished(backup_dir):
        try:
            state = job.state()
        except JobNotFound:
            continue
        if state.finished:
            job.active_marker.unlink(missing_ok=True)
            continue
        if job.alive(state):
            continue
        outcome = reconcile_job(job)
        if outcome is not None:
            found.append(outcome)
    return found


@dataclass
class _Trace:
    """What a dead job's journal says it had done."""

    audit_ids: dict[str, str] = field(default_factory=dict)  # open audit records: id -> op
    temps: list[str] = field(default_factory=list)
    last_phase: str | None = None
    changing: dict[str, Any] | None = None  # TargetChanging's fields, once the target changes
    ended: bool = False


def _trace(job: Job) -> _Trace:
    trace = _Trace()
    for record in JournalReader(job.journal_path).read():
        kind = record.get("kind")
        if kind == "temp":
            trace.temps.append(str(record.get("path")))
        elif kind == "end":
            trace.ended = True
        elif kind == "event":
            data = record.get("data") or {}
            if record.get("type") == "OperationStarted":
                trace.audit_ids[str(data.get("audit_id"))] = str(data.get("operation"))
            elif record.get("type") == "OperationEnded":
                trace.audit_ids.pop(str(data.get("audit_id")), None)
            elif record.get("type") == "PhaseStarted":
                trace.last_phase = str(data.get("phase"))
            elif record.get("type") == "TargetChanging":
                trace.changing = data
    return trace


def reconcile_job(job: Job) -> Outcome:
    """A job whose process is gone without an end line: end its leftover processes, remove
    its temp files, release its lock, close its audit records as `abandoned`, and record the
    outcome (an error saying what state the target may be in and what to run)."""
    lock_fd = os.open(job.directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(lock_fd, fcntl.LOCK_EX)  # one reconciler at a time
        state = job.state()
        if state.finished:
            return job.outcome()
        trace = _trace(job)
        if trace.ended:
            return job.outcome()
        if state.pid is not None:
            _end_session(state.pid)
        for path in trace.temps:
            p = Path(path)
            if p.is_dir():
                shutil.rmtree(p, ignore_errors=True)
            else:
                p.unlink(missing_ok=True)
        _release_locks(job.backup_dir, state.pid)
        message, hint = _advice(state, trace)
        audit = AuditLog(job.backup_dir)
        starts = {e.get("id"): e for e in audit.entries()
                  if e.get("event") == "start" and e.get("id") in trace.audit_ids}
        for audit_id in trace.audit_ids:
            base = {k: v for k, v in (starts.get(audit_id) or {"id": audit_id}).items()
                    if k not in ("time", "event")}
            audit.append({"time": iso(utcnow()), **base, "event": "end", "result": ABANDONED,
                          "error": message, "job": job.id, "last_phase": trace.last_phase})
        error = JobAbandoned(message, hint)
        outcome = Outcome(ABANDONED, EXIT_FAILED, error=error)
        journal = JournalWriter(job.journal_path)
        finish(job, journal, outcome, f"{message} {hint}")
        # A dead backup or drill (a killed cron job) posts its failure; never raises.
        notify.job_abandoned(job.backup_dir, trace.audit_ids, message, hint)
        return outcome
    finally:
        os.close(lock_fd)


def _end_session(pid: int) -> None:
    """Stop what the dead job left running: its session's processes (pg_restore, pg_dump,
    zstd, a drill's server), SIGTERM first, SIGKILL after a few seconds."""
    def members() -> list[int]:
        found = []
        for name in os.listdir("/proc"):
            if name.isdigit() and int(name) != os.getpid() and _session_of(int(name)) == pid:
                found.append(int(name))
        return found

    left = members()
    for sig in (signal.SIGTERM, signal.SIGKILL):
        for member in left:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(member, sig)
        deadline = time.monotonic() + 5
        while left and time.monotonic() < deadline:
            time.sleep(0.05)
            left = [m for m in members() if (_proc_stat(m) or ("Z",))[0] != "Z"]
        if not left:
            return


def _release_locks(backup_dir: Path, pid: int | None) -> None:
    """Clear the target lock files the dead process held (the lock itself died with it)."""
    for path in backup_dir.glob(".lock-*"):
        with contextlib.suppress(OSError, ValueError):
            fd = os.open(path, os.O_RDWR | os.O_CLOEXEC)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
                if holder.get("pid") == pid:
                    os.ftruncate(fd, 0)
            except BlockingIOError:
                pass
            finally:
                os.close(fd)


def _advice(state: JobState, trace: _Trace) -> tuple[str, str]:
    what = f"{state.operation} job {state.id}"
    head = (f"{what} ended without finishing (its process was killed, the machine restarted "
            f"or it ran out of memory){f' during {trace.last_phase}' if trace.last_phase else ''}")
    target = (state.target or {}).get("name", "the target")
    if state.operation == "restore":
        if trace.changing is not None:
            safety = trace.changing.get("safety_backup")
            undo = trace.changing.get("undo_command")
            return (f"{head}: target {target!r} is INCOMPLETE (the restore had begun "
                    "changing it).",
                    f"The safety backup {safety} is intact; put it back with: {undo}"
                    if safety and undo else
                    "Restore a backup into it again (pgrunbook restore latest).")
        return (f"{head}, before it changed target {target!r}: the target is as it was.",
                "Run the restore again.")
    if state.operation == "backup":
        return (f"{head}: its partial file was removed and no backup was recorded.",
                "Run the backup again.")
    if state.operation == "drill":
        return (f"{head}: its throwaway server was stopped; no drill was recorded.",
                "Run the drill again.")
    return (f"{head}.", f"Run the {state.operation} again.")


