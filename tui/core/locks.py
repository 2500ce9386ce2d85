"""Keeping two restores off one target: a lock file in the backup directory (who, since when)
and a PostgreSQL advisory lock on the target database itself (covers other hosts)."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import psycopg

from tui.core.audit import iso, operator_identity, utcnow
from tui.core.errors import OperationFailed
from tui.core.fsutil import PRIVATE_FILE, ensure_private_dir

# pg_try_advisory_lock(classid, objid): a constant for pgrunbook, and the database's name hash.
ADVISORY_CLASS = 0x70677262  # "pgrb"
T = TypeVar("T")


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


# -- the server's shared lock table -----------------------------------------------------------


@dataclass(frozen=True)
class LockTable:
    """The server's shared lock table: PostgreSQL sizes it for max_locks_per_transaction x
    (max_connections + max_prepared_transactions) locks on relations and other objects, shared
    by every session. One transaction that locks more relations than fit (dropping or counting
    thousands of tables, each with its indexes and TOAST table) fails with "out of shared
    memory" (SQLSTATE 53200), so pgrunbook's own work goes in batches of `batch` locks."""

    max_locks: int
    max_connections: int
    max_prepared: int

    @property
    def slots(self) -> int:
        return self.max_locks * (self.max_connections + self.max_prepared)

    @property
    def batch(self) -> int:
        """Locks one of pgrunbook's transactions may take: an eighth of the table (at least
        max_locks_per_transaction), leaving the rest to pg_dump, pg_restore and the others."""
        return max(self.max_locks, self.slots // 8)

    def needed(self, locks: int) -> int:
        """max_locks_per_transaction for `locks` held by one transaction with room to spare:
        half the table free beside it, rounded up to a multiple of 64."""
        per = -(-2 * locks // (self.max_connections + self.max_prepared))
        return max(self.max_locks * 2, -(-per // 64) * 64)

    def too_small(self, what: str, locks: int, why: str = "", changed: str = ""
                  ) -> OperationFailed:
        return OperationFailed(
            f"the server's lock table is full (out of shared memory): {what} takes about "
            f"{locks:,} locks in one transaction{f' ({why})' if why else ''}, and the table "
            f"holds about {self.slots:,} "
            f"(max_locks_per_transaction {self.max_locks} x (max_connections "
            f"{self.max_connections} + max_prepared_transactions {self.max_prepared}))"
            + (f"; {changed}" if changed else "."),
            f"Set max_locks_per_transaction = {self.needed(locks)} on the server and restart it "
            f"(on Supabase: supabase postgres-config update --config "
            f"max_locks_per_transaction={self.needed(locks)}), then retry.",
        )


def lock_table(conn: psycopg.Connection[Any]) -> LockTable:
    values = dict(conn.execute(
        "SELECT name, setting::int FROM pg_settings WHERE name IN ('max_locks_per_transaction',"
        " 'max_connections', 'max_prepared_transactions')").fetchall())
    return LockTable(int(values.get("max_locks_per_transaction", 64)),
                     int(values.get("max_connections", 100)),
                     int(values.get("max_prepared_transactions", 0)))


def lock_batches(items: Sequence[T], cost: Callable[[T], int], budget: int) -> list[list[T]]:
    """`items` in order, cut into runs whose summed `cost` stays within `budget` (an item that
    costs more on its own gets a run of its own)."""
    batches: list[list[T]] = []
    current: list[T] = []
    used = 0
    for item in items:
        c = max(1, cost(item))
        if current and used + c > budget:
            batches.append(current)
            current, used = [], 0
        current.append(item)
        used += c
    if current:
        batches.append(current)
    return batches
