"""Typed progress events. The engine emits them; the CLI and the TUI render them; the audit
trail and operation logs record them; a job's journal carries them to its viewers. Nothing in
the engine prints. Each event's one line of text is its `describe()`, the same in the CLI, the
TUI and the log (a face adds only its own marks: a bullet, a prefix)."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass


@dataclass(frozen=True)
class Event:
    """Base class of every progress event."""

    def describe(self) -> str:
        return repr(self)


@dataclass(frozen=True)
class PhaseStarted(Event):
    """A named phase of a long operation began (connecting, dumping, counting, ...)."""

    phase: str
    detail: str = ""

    def describe(self) -> str:
        return f"{self.phase} ({self.detail})" if self.detail else self.phase


@dataclass(frozen=True)
class Notice(Event):
    """Something the operator should read: level is "info" or "warning"."""

    level: str
    message: str

    def describe(self) -> str:
        return f"{self.level}: {self.message}"


@dataclass(frozen=True)
class DumpProgress(Event):
    """Bytes of archive written so far."""

    bytes_written: int
    elapsed: float
    rate: float
    expected_bytes: int | None
    eta: float | None

    def describe(self) -> str:
        of = f" of about {self.expected_bytes:,}" if self.expected_bytes else ""
        return f"written {self.bytes_written:,}{of} bytes in {self.elapsed:.0f} s"


@dataclass(frozen=True)
class ToolOutput(Event):
    """One line a child process (pg_dump, pg_restore, ...) printed."""

    tool: str
    line: str

    def describe(self) -> str:
        # pg_dump and pg_restore name themselves at the start of their lines already.
        return self.line if self.line.startswith(f"{self.tool}:") else f"{self.tool}: {self.line}"


@dataclass(frozen=True)
class BackupFinished(Event):
    """The archive and its metadata are in place."""

    name: str
    path: str
    size_bytes: int
    sha256: str
    duration: float

    def describe(self) -> str:
        return f"backup {self.name} complete: {self.size_bytes:,} bytes, sha256 {self.sha256}"


Emit = Callable[[Event], None]


def ignore(_event: Event) -> None:
    """An `Emit` that drops everything (for callers that want no progress)."""


@dataclass(frozen=True)
class Progress(Event):
    """Progress of a phase other than the dump: checksum, decompression, restore items."""

    phase: str
    done: int
    total: int | None
    elapsed: float
    unit: str = "bytes"  # or "items"

    def describe(self) -> str:
        of = f" of {self.total:,}" if self.total else ""
        return f"{self.phase}: {self.done:,}{of} {self.unit} in {self.elapsed:.0f} s"

    @property
    def eta(self) -> float | None:
        if not self.total or not self.done or self.elapsed <= 0:
            return None
        return max(self.total - self.done, 0) * self.elapsed / self.done


@dataclass(frozen=True)
class RestoreLine(Event):
    """One line of pg_restore's output, as it arrives."""

    line: str
    is_error: bool = False

    def describe(self) -> str:
        return self.line


@dataclass(frozen=True)
class TableChecked(Event):
    """One table's exact count ("count", with its rows) or ANALYZE ("analyze") is done;
    `during_restore` when it ran while pg_restore was still working."""

    schema: str
    table: str
    task: str
    seconds: float
    rows: int | None = None
    during_restore: bool = False

    def describe(self) -> str:
        return f"verify: {self.outcome()}"

    def outcome(self) -> str:
        what = (f"counted {self.rows:,} rows" if self.task == "count" and self.rows is not None
                else "missing on the target" if self.task == "count" else "analyzed")
        when = ", while pg_restore ran" if self.during_restore else ""
        return f"{self.schema}.{self.table}: {what} in {self.seconds:.2f} s{when}"


@dataclass(frozen=True)
class OperationStarted(Event):
    """An operation opened its audit record (`audit_id`) and its log."""

    operation: str
    audit_id: str
    log_path: str

    def describe(self) -> str:
        return f"{self.operation} started (audit record {self.audit_id}, log {self.log_path})"


@dataclass(frozen=True)
class OperationEnded(Event):
    """An operation closed its audit record with `result` (ok, failed, interrupted, ...)."""

    operation: str
    audit_id: str
    result: str

    def describe(self) -> str:
        return f"{self.operation} ended: {self.result} (audit record {self.audit_id})"


@dataclass(frozen=True)
class TargetChanging(Event):
    """A restore is about to change the target: from here until it ends, a restore that dies
    leaves the target incomplete, and `safety_backup` (if any) holds its state before."""

    target: str
    database: str
    safety_backup: str | None
    undo_command: str | None

    def describe(self) -> str:
        return (f"changing target {self.target} (database {self.database}) from here; safety "
                f"backup: {self.safety_backup or 'none'}")
