"""Whether a backup already taken can stand as a restore's safety backup (issue 15: one emergency
backup per incident).

A safety backup keeps the target's state just before the restore replaces it. A backup of the
same database whose snapshot already holds that state does the same, and in an outage a second
full dump of an unchanged database is an hour of waiting on a big one. "Unchanged" is decided
from the server, never from the clock: every write takes a transaction ID, and transaction IDs
are the cluster's, so when none has been assigned anywhere in the cluster since the backup's
snapshot, nothing can have been written to the database since. Concretely, with the snapshot's
xmin, xmax and in-progress list (recorded in the backup's metadata as `snapshot`):

- no transaction was in progress when it was taken (an in-progress one could commit later,
  with writes the dump does not hold);
- the server's snapshot now still ends at the same xmax (no transaction has ended since);
- the next transaction ID to be assigned is still that xmax (none has begun writing since,
  even one still running: `age(xid)` counts from the next ID in a transaction that has none);
- and the server has not restarted since.

Any doubt (writes in another database of the cluster, an autovacuum ANALYZE, a backup made
before the snapshot was recorded) means a fresh safety backup, with the reason said."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psycopg

from tui.core.inventory import BackupEntry, load_entry
from tui.core.metadata import ARCHIVE_SUFFIX
from tui.core.settings import Settings

XID_MODULUS = 2**32


@dataclass(frozen=True)
class Reuse:
    """The decision: `entry` stands as the safety backup, or None and `why` it cannot."""

    entry: BackupEntry | None
    why: str


def snapshot_record(conn: psycopg.Connection[Any]) -> dict[str, Any]:
    """The current transaction's snapshot (the one a backup exports) and the server's start,
    for its metadata."""
    row = conn.execute(
        "SELECT pg_snapshot_xmin(s)::text, pg_snapshot_xmax(s)::text,"
        " ARRAY(SELECT x::text FROM pg_snapshot_xip(s) AS x ORDER BY 1),"
        " pg_postmaster_start_time()::text, now()::text"
        " FROM pg_current_snapshot() AS s").fetchone()
    assert row is not None
    return {"xmin": int(row[0]), "xmax": int(row[1]), "xip": [int(x) for x in row[2]],
            "server_started_at": str(row[3]), "taken_at": str(row[4])}


def written_since(conn: psycopg.Connection[Any], snapshot: Any) -> str | None:
    """None when no transaction ID has been assigned in the cluster since `snapshot` (a
    backup's metadata `snapshot`), else why it may have been written to, in words. `conn` is
    in autocommit with no transaction ID of its own."""
    if not isinstance(snapshot, dict) or not isinstance(snapshot.get("xmax"), int):
        return "its metadata records no snapshot (it was made by an older pgrunbook)"
    if snapshot.get("xip"):
        return (f"{len(snapshot['xip'])} transaction(s) were in progress when it was taken, "
                "and could have committed writes it does not hold")
    xmax = int(snapshot["xmax"])
    row = conn.execute(
        "SELECT pg_snapshot_xmax(pg_current_snapshot())::text, age(%s::text::xid),"
        " pg_postmaster_start_time()::text", [str(xmax % XID_MODULUS)]).fetchone()
    assert row is not None
    now_xmax, assigned, started = int(row[0]), int(row[1]), str(row[2])
    if started != snapshot.get("server_started_at"):
        return f"the server has restarted since (up since {started})"
    if now_xmax != xmax:
        return (f"{now_xmax - xmax:,} transaction(s) have ended in the cluster since its "
                "snapshot (writes in any of its databases"
                + _autovacuum_since(conn, snapshot.get("taken_at")) + ")")
    if assigned != 0:
        return (f"{assigned:,} transaction ID(s) have been assigned in the cluster since its "
                "snapshot (a write is in progress)")
    return None


def _autovacuum_since(conn: psycopg.Connection[Any], taken_at: Any) -> str:
    """", among them an ANALYZE of N of this database's tables" when the statistics say so
    (autovacuum's, most often, soon after an incident's mass changes): an ANALYZE writes its
    statistics, so it counts, though it changes no row. Only
    an explanation for the operator; the decision never rests on it (an ANALYZE of an empty
    table writes nothing, so the counts cannot be matched up)."""
    if not isinstance(taken_at, str):
        return ""
    row = conn.execute(
        "SELECT count(*) FROM pg_stat_all_tables"
        " WHERE greatest(last_autoanalyze, last_analyze) > %s::timestamptz",
        [taken_at]).fetchone()
    n = int(row[0]) if row else 0
    return f", among them an ANALYZE of {n} of this database's tables" if n else ""


def find_candidate(settings: Settings, name: str) -> BackupEntry | str:
    """The local backup called `name` (as `list` shows it, or a path to its archive), or why
    there is none."""
    path = Path(name).expanduser()
    if not path.name.endswith(ARCHIVE_SUFFIX):
        path = settings.backup_dir / f"{name}{ARCHIVE_SUFFIX}"
    if not path.exists():
        return f"there is no local backup {name} in {settings.backup_dir}"
    return load_entry(path)


def decide(settings: Settings, conn: psycopg.Connection[Any], name: str) -> Reuse:
    """Whether the backup `name` can stand as the safety backup of `settings.target` now: the
    same database (host, port, database), complete, whole (no schema or table data left out),
    and nothing written since its snapshot. Its checksum is the caller's to verify."""
    found = find_candidate(settings, name)
    if isinstance(found, str):
        return Reuse(None, found)
    entry = found
    meta = entry.meta or {}
    if not entry.complete:
        return Reuse(None, f"{entry.name} is not a complete backup")
    source = meta.get("source") or {}
    target = settings.target
    where = (str(source.get("host", "")).lower(), source.get("port"), source.get("database"))
    if where != target.endpoint:
        return Reuse(None, f"{entry.name} is a backup of {where[0]}:{where[1]}/{where[2]}, "
                           f"not of {target.host}:{target.port}/{target.dbname}")
    options = meta.get("options") or {}
    if options.get("exclude_schema") or options.get("exclude_table_data"):
        return Reuse(None, f"{entry.name} leaves schemas or table data out")
    why = written_since(conn, meta.get("snapshot"))
    if why is not None:
        return Reuse(None, why)
    return Reuse(entry, "no transaction ID has been assigned in the cluster since its snapshot "
                        f"(xmax {meta['snapshot']['xmax']})")
