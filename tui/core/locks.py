"""Keeping two restores off one target: a lock file in the backup directory (who, since when)
and a PostgreSQL advisory lock on the target database itself (covers other hosts)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psycopg

from tui.core.audit import iso, operator_identity, utcnow
from tui.core.errors import OperationFailed
from tui.core.fsutil import PRIVATE_FILE, ensure_private_dir

# pg_try_advisory_lock(classid, objid): a constant for pgrunbook, and the database's name hash.
ADVISORY_CLASS = 0x70677262  # "pgrb"


@contextlib.contextmanager
def target_lock_file(backup_dir: Path, target_name: str, operation: str) -> Iterator[Path]:
    ensure_private_dir(backup_dir)
    safe = re.sub(r"[^A-Za-z0-9_-]", "_", target_name)
    path = backup_dir / f".lock-{safe}"
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder: dict[str, Any] = {}
            with contextlib.suppress(ValueError, OSError):
                holder = json.loads(os.pread(fd, 4096, 0).decode() or "{}")
            who = (holder.get("operator") or {}).get("user", "another process")
            raise OperationFailed(
                f"another {holder.get('operation', 'operation')} on target {target_name!r} is "
                f"running: started by {who} (pid {holder.get('pid', '?')}) at "
                f"{holder.get('since', '?')}.",
                "Wait for it to finish (pgrunbook audit shows it), then try again.",
            ) from None
        info = {"operation": operation, "pid": os.getpid(), "since": iso(utcnow()),
                "operator": operator_identity()}
        os.ftruncate(fd, 0)
        os.pwrite(fd, json.dumps(info).encode(), 0)
        yield path
    finally:
        with contextlib.suppress(OSError):
            os.ftruncate(fd, 0)
        os.close(fd)


def take_advisory_lock(conn: psycopg.Connection[Any], target_name: str) -> None:
    """Session-level advisory lock on the target database; refuses with who holds it."""
    row = conn.execute(
        "SELECT pg_try_advisory_lock(%s, hashtext(current_database()))", [ADVISORY_CLASS]
    ).fetchone()
    if row and row[0]:
        return
    holder = conn.execute(
        """SELECT a.pid, a.usename, a.client_addr::text, a.application_name, a.backend_start
           FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
           WHERE l.locktype = 'advisory' AND l.classid = %s::oid
             AND l.objid = hashtext(current_database())::oid AND l.granted LIMIT 1""",
        [ADVISORY_CLASS],
    ).fetchone()
    since = holder[4].isoformat(timespec="seconds") if holder and holder[4] else "?"
    who = (f"session {holder[0]} of {holder[1]} from {holder[2] or 'local'} "
           f"({holder[3] or 'no application name'}) since {since}") if holder else "another session"
    raise OperationFailed(
        f"another restore into target {target_name!r} holds its lock: {who}.",
        "Wait for it to finish, then try again.",
    )
