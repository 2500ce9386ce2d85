"""One operation's plumbing, written once: its audit record (start and end lines), its full
operation log under BACKUP_DIR/logs, the secrets redacted from both, and what a cancel or a
failure writes. Every long operation (backup, restore, verify, drill, upload, download) runs its
body inside `operation(...)`; the job runner (`jobs`) runs the outermost one in a detached
process. Nested operations (a restore's safety backup, its S3 download) get their own records.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from tui.core import notify
from tui.core.audit import AuditLog, AuditRecord
from tui.core.errors import PgRunbookError
from tui.core.events import Emit, OperationEnded, OperationStarted
from tui.core.oplog import OperationLog
from tui.core.settings import Settings

# Settings whose values are secrets wherever they appear (a webhook URL is a credential).
_SECRET_SETTING = re.compile(r"PASSWORD|SECRET|TOKEN|PASSPHRASE|WEBHOOK|_KEY$|PRIVATE", re.I)
# Set while an operation runs: one opened inside it (a restore's safety backup, a drill's
# restore) is nested, and does not post to the chat (its operator is right there).
_INSIDE_OPERATION: contextvars.ContextVar[bool] = contextvars.ContextVar("inside_operation",
                                                                         default=False)


def secrets_of(settings: Settings) -> list[str]:
    """Every secret the settings hold: the target's password, the settings the registry marks
    secret, and any other named like one. The audit trail, the operation logs and the journals
    mask them all."""
    from tui.core.settings import spec_for

    found = [settings.target.password.reveal()] if settings.target.password is not None else []
    for key, value in settings.values.items():
        spec = spec_for(key)
        # The registry decides for the settings it declares (BACKUP_GPG_PASSPHRASE_FILE is a
        # path, not a secret); any other variable named like a secret is one.
        if value and len(value) >= 4 and (spec.secret if spec is not None
                                          else bool(_SECRET_SETTING.search(key))):
            found.append(value)
    return sorted(set(found), key=len, reverse=True)


@dataclass
class Operation:
    """A running operation: `emit` tees into its log; `end` collects the fields its end line
    carries (the backup's name, the safety backup, ...); `verdict` is set by a body that
    finished but did not pass ("verify-failed"), with `problem` saying why."""

    name: str
    record: AuditRecord
    log: OperationLog
    end: dict[str, Any] = field(default_factory=dict)
    verdict: str = "ok"
    problem: str | None = None
    interrupted_text: str = "interrupted by the operator (Ctrl-C or SIGTERM)"

    @property
    def emit(self) -> Emit:
        return self.log

    @property
    def audit_id(self) -> str:
        return self.record.op_id


@contextlib.contextmanager
def operation(settings: Settings, name: str, emit: Emit, *, arguments: Mapping[str, Any],
              reason: str | None = None, origin: str = "cli",
              target: Mapping[str, Any] | None = None,
              no_target: bool = False) -> Iterator[Operation]:
    """Open the audit record and the log of operation `name`, run the body, and close both
    once, whatever happens: "interrupted" for a cancel, "failed" with the error's text (and
    the log's path on the error) for a failure, the body's verdict otherwise."""
    audit = AuditLog(settings.backup_dir, secrets_of(settings))
    where = None if no_target else (target if target is not None else settings.target.public())
    record = audit.start(name, target=where, arguments=arguments, reason=reason, origin=origin)
    log = OperationLog(settings.backup_dir, name, emit, secrets_of(settings))
    op = Operation(name, record, log)
    watch = None if _INSIDE_OPERATION.get() else notify.watch(settings, name, record.op_id,
                                                               str(log.path))
    failure: BaseException | None = None
    emit(OperationStarted(name, record.op_id, str(log.path)))
    result = "failed"
    inside = _INSIDE_OPERATION.set(True)
    try:
        yield op
        result = op.verdict
        record.finish(op.verdict, op.problem, **op.end, log=str(log.path))
    except (asyncio.CancelledError, KeyboardInterrupt):
        result = "interrupted"
        log.write(f"INTERRUPTED: {op.interrupted_text}")
        record.finish("interrupted", op.interrupted_text, **op.end, log=str(log.path))
        raise
    except PgRunbookError as exc:
        failure = exc
        log.write(f"FAILED: {exc}\n{exc.detail or ''}")
        record.finish("failed", str(exc), **op.end, log=str(log.path))
        exc.log_path = exc.log_path or str(log.path)
        raise
    except BaseException as exc:
        failure = exc
        log.write(f"FAILED: {exc.__class__.__name__}: {exc}")
        record.finish("failed", f"{exc.__class__.__name__}: {exc}", **op.end,
                      log=str(log.path))
        raise
    finally:
        with contextlib.suppress(ValueError):  # only if ended in another context (it is not)
            _INSIDE_OPERATION.reset(inside)
        log.close()
        emit(OperationEnded(name, record.op_id, result))
        if watch is not None:  # posts a failure (5 s at most) or clears it; never raises
            watch.ended(op, result, failure)
