"""A job's journal: its typed events as JSON lines (with the secrets masked), read back by
viewers from where they stopped, however many of them follow at once."""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import threading
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tui.core import events as _events
from tui.core.audit import redact
from tui.core.events import Event
from tui.core.fsutil import PRIVATE_FILE


def encode_event(event: Event) -> dict[str, Any]:
    return {"kind": "event", "type": type(event).__name__, "data": dataclasses.asdict(event)}


def decode_event(record: dict[str, Any]) -> Event | None:
    cls = getattr(_events, str(record.get("type")), None)
    if not (isinstance(cls, type) and issubclass(cls, Event)):
        return None
    try:
        event: Event = cls(**record.get("data", {}))
    except TypeError:  # a journal from another version of pgrunbook
        return None
    return event


class JournalWriter:
    """Appends records to a job's journal; string values have the secrets masked."""

    def __init__(self, path: Path, secrets: Iterable[str] = (),
                 wake_fd: int | None = None) -> None:
        self.path = path
        self.wake_fd = wake_fd  # a pipe to the viewer that started the job: poked per line
        self.secrets = [s for s in secrets if s]
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                           PRIVATE_FILE)
        self._lock = threading.Lock()  # events also come from the engine's worker threads

    def write(self, record: dict[str, Any]) -> None:
        record = {"t": round(time.time(), 3), **record}
        line = json.dumps(redact(record, self.secrets) if self.secrets else record,
                          ensure_ascii=False, default=str) + "\n"
        with self._lock, contextlib.suppress(OSError):
            os.write(self._fd, line.encode("utf-8"))
            if self.wake_fd is not None:  # full (the viewer is slow) or gone: either is fine
                os.write(self.wake_fd, b".")

    def event(self, event: Event) -> None:
        self.write(encode_event(event))

    def close(self) -> None:
        with contextlib.suppress(OSError):
            os.fsync(self._fd)
            os.close(self._fd)


class JournalReader:
    """Reads a journal's complete lines from where the last read stopped."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.offset = 0
        self._partial = b""

    def read(self) -> list[dict[str, Any]]:
        try:
            with self.path.open("rb") as f:
                f.seek(self.offset)
                data = f.read()
        except FileNotFoundError:
            return []
        self.offset += len(data)
        data = self._partial + data
        lines = data.split(b"\n")
        self._partial = lines.pop()
        records = []
        for line in lines:
            with contextlib.suppress(ValueError):
                records.append(json.loads(line))
        return records
