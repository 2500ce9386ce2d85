"""Each long operation's full log: every event and every line its tools printed, in a private
file under BACKUP_DIR/logs, so the raw pg_dump/pg_restore output is there after the fact."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import TextIO

from tui.core.audit import redact
from tui.core.events import (
    DumpProgress,
    Emit,
    Event,
    PhaseStarted,
    Progress,
)
from tui.core.fsutil import PRIVATE_FILE, ensure_private_dir


class OperationLog:
    """Tees events into a log file; progress ticks are left out."""

    def __init__(self, backup_dir: Path, operation: str, downstream: Emit,
                 secrets: Iterable[str] = ()) -> None:
        directory = ensure_private_dir(backup_dir / "logs")
        stamp = datetime.now(UTC).strftime("%Y%m%d_%H%M%S_%f")
        self.path = directory / f"{stamp}_{operation}.log"
        fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE)
        self._file: TextIO | None = os.fdopen(fd, "w", encoding="utf-8", buffering=1)
        self._downstream = downstream
        self._secrets = [s for s in secrets if s]

    def __call__(self, event: Event) -> None:
        line = _describe(event)
        if line is not None and self._secrets:
            line = redact(line, self._secrets)
        if line is not None and self._file is not None:
            with contextlib.suppress(OSError):
                self._file.write(f"{datetime.now(UTC).strftime('%H:%M:%S.%f')[:-3]} {line}\n")
        self._downstream(event)

    def write(self, text: str) -> None:
        if self._file is not None:
            text = redact(text, self._secrets) if self._secrets else text
            with contextlib.suppress(OSError):
                self._file.write(text.rstrip("\n") + "\n")

    def close(self) -> None:
        if self._file is not None:
            with contextlib.suppress(OSError):
                self._file.close()
            self._file = None


def _describe(event: Event) -> str | None:
    if isinstance(event, (DumpProgress, Progress)):
        return None
    if isinstance(event, PhaseStarted):
        return f"== {event.describe()}"
    return event.describe()
