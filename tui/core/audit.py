"""The audit trail: an append-only JSON-lines log in the backup directory (0600).

Every operation appends one line when it starts and one when it ends: time, operator, origin,
operation, target, arguments (secrets redacted), reason, result, duration, error.
"""

from __future__ import annotations

import contextlib
import getpass
import json
import os
import re
import socket
import time
import uuid
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from tui.core.fsutil import PRIVATE_FILE, ensure_private_dir

if TYPE_CHECKING:
    from tui.core.targets import Target

AUDIT_FILE = "audit.log"
_URL_PASSWORD = re.compile(r"(?P<scheme>[a-z][a-z0-9+.-]*://[^:/@\s]+):[^@\s]*@", re.I)
_SECRET_KEYS = re.compile(r"pass|secret|token|key|credential", re.I)


def utcnow() -> datetime:
    return datetime.now(UTC)


def iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def operator_identity() -> dict[str, str | None]:
    """Who is running this: the OS user, the sudo user behind it, and the SSH client address."""
    try:
        user = getpass.getuser()
    except (KeyError, OSError):
        user = str(os.getuid())
    ssh = os.environ.get("SSH_CLIENT") or os.environ.get("SSH_CONNECTION") or ""
    return {
        "user": user,
        "sudo_user": os.environ.get("SUDO_USER"),
        "ssh_client": ssh.split()[0] if ssh.split() else None,
        "host": socket.gethostname(),
    }


def redact(value: Any, secrets: Iterable[str] = ()) -> Any:
    """Copy `value` with passwords in URLs, secret-looking keys and known secret strings masked."""
    known = [s for s in secrets if s]
    if isinstance(value, Mapping):
        return {
            k: ("********" if _SECRET_KEYS.search(str(k)) and v not in (None, "", False)
                else redact(v, known))
            for k, v in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(v, known) for v in value]
    if isinstance(value, str):
        text = _URL_PASSWORD.sub(r"\g<scheme>:********@", value)
        for s in known:
            text = text.replace(s, "********")
        return text
    return value


@dataclass
class AuditRecord:
    """One running operation: `finish()` writes its end line."""

    log: AuditLog
    op_id: str
    operation: str
    started: float
    base: dict[str, Any] = field(default_factory=dict)
    finished: bool = False

    def finish(self, result: str, error: str | None = None, **extra: Any) -> None:
        if self.finished:
            return
        self.finished = True
        self.log.append(
            {"time": iso(utcnow()), **self.base, "event": "end", "result": result,
             "duration_seconds": round(time.monotonic() - self.started, 3),
             "error": error, **extra}
        )


class AuditLog:
    def __init__(self, backup_dir: Path, secrets: Iterable[str] = ()) -> None:
        self.path = backup_dir / AUDIT_FILE
        self.secrets = [s for s in secrets if s]

    def append(self, entry: dict[str, Any]) -> None:
        ensure_private_dir(self.path.parent)
        line = json.dumps(redact(entry, self.secrets), ensure_ascii=False, default=str) + "\n"
        fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE)
        try:
            os.write(fd, line.encode("utf-8"))
            os.fsync(fd)
        finally:
            os.close(fd)

    def start(self, operation: str, *, target: Mapping[str, Any] | None, arguments: Mapping[str, Any],
              reason: str | None, origin: str = "cli") -> AuditRecord:
        op_id = uuid.uuid4().hex[:12]
        base = {
            "id": op_id,
            "operation": operation,
            "operator": operator_identity(),
            "origin": origin,
            "target": dict(target) if target else None,
            "arguments": dict(arguments),
            "reason": reason,
        }
        self.append({"time": iso(utcnow()), "event": "start", **base})
        record = AuditRecord(self, op_id, operation, time.monotonic(), base)
        return record

    def resume(self, op_id: str) -> AuditRecord:
        """The record of an operation started earlier (by a process that is gone: a runbook
        run reopened after an SSH drop), to write its end line."""
        base: dict[str, Any] = {"id": op_id}
        elapsed = 0.0
        for e in self.entries():
            if e.get("id") == op_id and e.get("event") == "start":
                base = {k: v for k, v in e.items() if k not in ("time", "event")}
                with contextlib.suppress(TypeError, ValueError):
                    elapsed = (utcnow() - datetime.fromisoformat(
                        str(e["time"]).replace("Z", "+00:00"))).total_seconds()
        return AuditRecord(self, op_id, str(base.get("operation", "?")),
                           time.monotonic() - elapsed, base)

    def entries(self) -> Iterator[dict[str, Any]]:
        """Every readable line, oldest first (a damaged line is reported, not skipped)."""
        if not self.path.exists():
            return
        with self.path.open(encoding="utf-8", errors="replace") as f:
            for n, line in enumerate(f, 1):
                line = line.strip()
                if not line:
                    continue
                try:
                    yield json.loads(line)
                except json.JSONDecodeError:
                    yield {"event": "unreadable", "line": n}

    def newest_first(self) -> Iterator[dict[str, Any]]:
        """Every readable line, newest first (see `newest_lines`)."""
        for raw in self.newest_lines():
            if entry := parse_line(raw):
                yield entry

    def newest_lines(self, block: int = 1 << 16) -> Iterator[bytes]:
        """The raw lines, newest first, read from the end of the file in blocks: a health check
        after years of operations reads only as far back as it needs, and parses only the lines
        it wants."""
        try:
            f = self.path.open("rb")
        except FileNotFoundError:
            return
        with f:
            position = f.seek(0, os.SEEK_END)
            rest = b""
            while position > 0:
                step = min(block, position)
                position -= step
                f.seek(position)
                lines = (f.read(step) + rest).split(b"\n")
                rest = lines[0]  # may be the end of a line that began in the block before
                yield from reversed(lines[1:])
            yield rest


def parse_line(raw: bytes) -> dict[str, Any] | None:
    """One audit line as a dict; None for a blank line; an "unreadable" event for a damaged one."""
    raw = raw.strip()
    if not raw:
        return None
    try:
        entry = json.loads(raw.decode("utf-8", errors="replace"))
    except json.JSONDecodeError:
        return {"event": "unreadable"}
    return entry if isinstance(entry, dict) else {"event": "unreadable"}


def last_restored(backup_dir: Path, target: Target) -> str | None:
    """The backup most recently restored into `target` (same name and database) by the audit
    trail in `backup_dir`: the last restore that ended "ok" or "verify-failed", or None."""
    name: str | None = None
    for e in AuditLog(backup_dir).entries():
        if (e.get("operation") == "restore" and e.get("event") == "end"
                and e.get("result") in ("ok", "verify-failed")
                and (e.get("target") or {}).get("name") == target.name
                and (e.get("target") or {}).get("database") == target.dbname):
            name = e.get("backup")
    return name
