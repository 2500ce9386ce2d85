"""What a restore is asked to do and what it answers: the request, the confirmation shown to
the operator, the result, the ways it fails, and the defaults (jobs, the undo command) they
share. The other modules of the package import these; this one imports none of them."""

from __future__ import annotations

import os
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field

from tui.core.errors import OperationFailed
from tui.core.settings import Target
from tui.core.verify import VerifyReport

MAX_DEFAULT_JOBS = 8


@dataclass(frozen=True)
class RestoreRequest:
    backup: str
    jobs: int | None = None
    reason: str | None = None
    confirm_name: str | None = None  # the typed database name (--confirm NAME)
    confirmed: bool = False  # --yes: enough for a non-production target only
    terminate_connections: bool = False
    safety_backup: bool = True
    # A backup already taken that stands as the safety backup when nothing has been written
    # to the target since its snapshot (the runbook's emergency backup, --safety-backup NAME).
    safety_candidate: str | None = None
    owners: str = "auto"  # keep | drop | auto (drop for non-production targets)
    app_schemas_only: bool = False
    lock_timeout: str = "30s"
    verify: bool = True
    create_roles: bool = False  # drills: create the roles the source had, then keep owners
    origin: str = "cli"


@dataclass(frozen=True)
class ConfirmationNeeded:
    """What the face shows the operator before anything is changed."""

    target: Target
    backup: str
    typed_name_required: bool
    reason: str  # why typing is required, or ""


# Returns the operator's answer: the typed name, or "yes".
Ask = Callable[[ConfirmationNeeded], Awaitable[str | None]]


@dataclass
class RestoreResult:
    backup: str
    target: Target
    safety_backup: str | None
    safety_note: str
    seconds: float
    restore_seconds: float
    filtered: list[str] = field(default_factory=list)  # entries left out, with why
    verify: VerifyReport | None = None
    undo_command: str | None = None
    target_kind: str = "superuser"
    # pg_restore's errors known to be harmless on this kind of target, as warnings.
    warnings: list[str] = field(default_factory=list)
    not_restored: list[str] = field(default_factory=list)  # tables whose data was left out
    recreated: list[str] = field(default_factory=list)  # outside objects put back
    gone: list[str] = field(default_factory=list)  # outside objects the restore lost
    notes: list[str] = field(default_factory=list)  # what a fresh cluster got (roles made)

    @property
    def passed(self) -> bool:
        """The verdict: the verification passed and nothing outside the restore was lost."""
        return (self.verify is None or self.verify.passed) and not self.gone


class SessionsConnected(OperationFailed):
    """Other sessions use the target database and ending them was not asked for."""


class RestoreFailed(OperationFailed):
    """pg_restore reported errors that are not known to be harmless; `result` holds the
    verification that still ran after it."""

    result: RestoreResult | None = None


def default_jobs() -> int:
    return max(1, min(os.cpu_count() or 1, MAX_DEFAULT_JOBS))


def undo_command(target: Target, safety: str) -> str:
    return (f"pgrunbook --target {target.name} restore {safety} "
            f"--reason 'undo restore' --confirm {target.dbname}")
