"""What each long operation is as a job: how it runs from its request, its verdict (status and
exit code), its one-line outcome for `pgrunbook jobs`, and the error an interrupt ends it with.
The engine's modules are imported when a job runs, so listing jobs stays light."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from tui.core.errors import (
    EXIT_FAILED,
    EXIT_MISMATCH,
    EXIT_OK,
    Interrupted,
    OperationFailed,
    PgRunbookError,
)
from tui.core.events import Emit
from tui.core.settings import Settings

if TYPE_CHECKING:
    from tui.core.jobs import Outcome


@dataclass(frozen=True)
class DrillRequest:
    backup: str = "latest"
    on_target: bool = False
    jobs: int | None = None
    origin: str = "cli"


@dataclass(frozen=True)
class VerifyRequest:
    backup: str
    jobs: int = 4
    origin: str = "cli"


@dataclass(frozen=True)
class UploadRequest:
    backup: str


@dataclass(frozen=True)
class DownloadRequest:
    backup: str


@dataclass(frozen=True)
class JobOperation:
    run: Callable[[Settings, Any, Emit], Awaitable[Any]]
    verdict: Callable[[Any], tuple[str, int]]
    describe: Callable[[Any], str]
    interrupted: Callable[[], BaseException]
    # Usage errors found before the job starts (nothing is written for a refused request).
    check: Callable[[Settings, Any], None] = lambda _settings, _request: None

    def summary(self, outcome: Outcome) -> str:
        if outcome.error is not None:
            err = outcome.error
            return str(err) if isinstance(err, PgRunbookError) else \
                f"unexpected internal error ({err.__class__.__name__}: {err})"
        return self.describe(outcome.result)


def _interrupted() -> BaseException:
    return Interrupted("interrupted: the operation was stopped and cleaned up.")


def _passed(result: Any) -> tuple[str, int]:
    return ("ok", EXIT_OK) if result.passed else ("verify-failed", EXIT_MISMATCH)


# -- backup ------------------------------------------------------------------------------------


async def _backup(settings: Settings, request: Any, emit: Emit) -> Any:
    from tui.core.backup import run_backup

    return await run_backup(settings, request, emit)


def _backup_check(_settings: Settings, request: Any) -> None:
    from tui.core.backup import backup_label

    backup_label(request.kind, request.label)


def _backup_verdict(result: Any) -> tuple[str, int]:
    return ("failed", EXIT_FAILED) if result.upload_error else ("ok", EXIT_OK)


def _backup_text(result: Any) -> str:
    from tui.core.fmt import size

    text = f"backup {result.name}: {size(result.size_bytes)}, {result.tables} tables, " \
           f"{result.rows:,} rows"
    return text + (f"; upload failed: {result.upload_error}" if result.upload_error else "")


def _backup_interrupted() -> BaseException:
    from tui.core.backup import interrupted_error

    return interrupted_error()


# -- restore -----------------------------------------------------------------------------------


async def _restore(settings: Settings, request: Any, emit: Emit) -> Any:
    from tui.core.restore import run_restore

    return await run_restore(settings, request, emit)


def _restore_text(result: Any) -> str:
    verdict = "PASS" if result.passed else "FAIL"
    return (f"{verdict}: {result.backup} restored into {result.target.name} in "
            f"{result.restore_seconds:.1f} s; safety backup {result.safety_backup or '-'}")


# -- drill -------------------------------------------------------------------------------------


async def _drill(settings: Settings, request: Any, emit: Emit) -> Any:
    from tui.core.drill import run_drill

    return await run_drill(settings, request.backup, on_target=request.on_target,
                           jobs=request.jobs, emit=emit, origin=request.origin)


def _drill_text(result: Any) -> str:
    return (f"drill {'PASS' if result.passed else 'FAIL'}: {result.backup} restored into "
            f"{result.where} in {result.restore_seconds:.1f} s")


# -- verify ------------------------------------------------------------------------------------


async def _verify(settings: Settings, request: Any, emit: Emit) -> Any:
    from tui.core.restore import resolve_backup
    from tui.core.verify import run_verify

    entry = await asyncio.to_thread(resolve_backup, settings, request.backup)
    if entry.meta is None:
        raise OperationFailed(f"backup {entry.name} has no readable metadata to compare with.")
    return await asyncio.to_thread(run_verify, settings, entry.meta, jobs=request.jobs,
                                   emit=emit, origin=request.origin)


def _verify_text(report: Any) -> str:
    return (f"verification {'PASS' if report.passed else 'FAIL'}: {len(report.rows)} tables, "
            f"{len(report.mismatches)} differ")


# -- S3 ----------------------------------------------------------------------------------------


async def _upload(settings: Settings, request: Any, emit: Emit) -> Any:
    from tui.core.s3 import upload_backup

    return await asyncio.to_thread(upload_backup, settings, request.backup, emit)


async def _download(settings: Settings, request: Any, emit: Emit) -> Any:
    from tui.core.restore import resolve_backup

    entry = await asyncio.to_thread(resolve_backup, settings, request.backup, emit)
    await asyncio.to_thread(_prove_key, settings, entry, emit)
    return entry


def _prove_key(settings: Settings, entry: Any, emit: Emit) -> None:
    """An encrypted backup fetched: its table of contents read through its key (decrypted in a
    pipe), or a warning that the key is not on this host (the copy is good all the same)."""
    from tui.core import encryption
    from tui.core.events import Notice
    from tui.core.restore.source import check_archive

    if encryption.encryption_of(entry.meta) is None:
        return
    try:
        cipher = encryption.for_restore(settings, entry.name, entry.meta)
    except encryption.KeyUnavailable as exc:
        emit(Notice("warning", f"{exc.message} It cannot be restored from this host."))
        return
    assert cipher is not None  # encrypted: for_restore found its key
    _tool, toc = check_archive(settings, entry, emit, cipher)
    emit(Notice("info", f"decrypted with {cipher.describe()}: {len(toc.entries)} entries in "
                        "its table of contents"))


def _ok(_result: Any) -> tuple[str, int]:
    return "ok", EXIT_OK


# -- retention: prune, pin, unpin --------------------------------------------------------------


async def _prune(settings: Settings, request: Any, emit: Emit) -> Any:
    from tui.core.prune import run_prune

    return await run_prune(settings, request, emit)


def _prune_verdict(result: Any) -> tuple[str, int]:
    return ("failed", EXIT_FAILED) if result.failed else ("ok", EXIT_OK)


def _prune_text(result: Any) -> str:
    from tui.core.fmt import size

    local = sum(1 for d in result.deleted if d["location"] == "local")
    text = (f"prune: deleted {len(result.deleted)} copies ({local} local, "
            f"{len(result.deleted) - local} in S3), freed {size(result.freed_bytes('local'))} "
            f"locally and {size(result.freed_bytes('s3'))} in S3")
    if result.skipped:
        text += f"; {len(result.skipped)} left (the plan changed)"
    return text + (f"; {len(result.failed)} failed" if result.failed else "")


def _prune_interrupted() -> BaseException:
    return Interrupted("interrupted: prune stopped after the copy it was deleting; what it "
                       "deleted is in the audit trail (pgrunbook audit --operation prune).")


async def _pin(settings: Settings, request: Any, emit: Emit) -> Any:
    from tui.core.prune import run_pin

    return await asyncio.to_thread(run_pin, settings, request, emit)


def _pin_check(settings: Settings, request: Any) -> None:
    from tui.core.prune import check_pin

    check_pin(settings, request)


def _pin_text(result: Any) -> str:
    where = " and ".join(result.locations)
    if result.pinned is None:
        return f"unpinned {result.name} ({where})" if result.changed else \
            f"{result.name} was not pinned"
    return f"pinned {result.name} ({where}): kept forever"


OPERATIONS: dict[str, JobOperation] = {
    "backup": JobOperation(_backup, _backup_verdict, _backup_text, _backup_interrupted,
                           _backup_check),
    "restore": JobOperation(_restore, _passed, _restore_text, _interrupted),
    "drill": JobOperation(_drill, _passed, _drill_text, _interrupted),
    "verify": JobOperation(_verify, _passed, _verify_text, _interrupted),
    "upload": JobOperation(_upload, _ok, lambda r: f"uploaded: {r}", _interrupted),
    "download": JobOperation(_download, _ok, lambda e: f"downloaded and verified {e.name}",
                             _interrupted),
    "prune": JobOperation(_prune, _prune_verdict, _prune_text, _prune_interrupted),
    "pin": JobOperation(_pin, _ok, _pin_text, _interrupted, _pin_check),
    "unpin": JobOperation(_pin, _ok, _pin_text, _interrupted, _pin_check),
}
