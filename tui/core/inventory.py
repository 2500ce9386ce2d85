"""The local backup inventory: every archive and sidecar in BACKUP_DIR, problems included.

A backup whose metadata is missing or damaged is listed with that problem, never hidden.
"""

from __future__ import annotations

import fcntl
import hashlib
import os
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tui.core.errors import PgRunbookError
from tui.core.metadata import (
    ARCHIVE_SUFFIX,
    META_SUFFIX,
    STAMP_RE,
    MetaError,
    meta_path_for,
    read_meta,
)

HASH_CHUNK = 1 << 20

# What is wrong with a backup, as codes beside the texts the operator reads (`problems`): the
# health checks and the retention policy branch on these, never on the words.
ARCHIVE_MISSING = "archive-missing"
META_MISSING = "metadata-missing"
META_DAMAGED = "metadata-damaged"
SIZE_MISMATCH = "size-mismatch"
CHECKSUM_MISMATCH = "checksum-mismatch"
PARTIAL_FILE = "partial-file"
S3_NO_METADATA = "s3-no-metadata"  # local and S3: the S3 copy lacks metadata.json
S3_CHECKSUM = "s3-checksum"  # local and S3: the checksums differ
S3_ONLY_NO_ARCHIVE = "s3-only-no-archive"  # S3 only: metadata.json without database.backup
S3_ONLY_NO_METADATA = "s3-only-no-metadata"  # S3 only: database.backup without metadata.json
S3_ONLY_SIZE = "s3-only-size"  # S3 only: the object's size differs from its metadata.json
S3_MULTIPART = "s3-multipart"  # an abandoned multipart upload
NOT_UPLOADED = "not-uploaded"  # local only, while S3 is configured


@dataclass
class BackupEntry:
    """One backup as the inventory sees it."""

    name: str
    path: Path
    meta_path: Path
    kind: str | None = None
    created_at: datetime | None = None
    size_bytes: int | None = None
    sha256: str | None = None
    meta: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)
    location: str = "local"  # local, s3, both
    s3_key: str | None = None
    problem_codes: list[str] = field(default_factory=list)  # one per problem, same order

    def add_problem(self, code: str, text: str) -> None:
        self.problem_codes.append(code)
        self.problems.append(text)

    @property
    def complete(self) -> bool:
        return self.meta is not None and not self.problems

    def as_json(self) -> dict[str, Any]:
        from tui.core.encryption import needed_key

        drill = (self.meta or {}).get("drill") or {}
        return {
            "name": self.name,
            "kind": self.kind,
            "created_at": self.created_at.isoformat().replace("+00:00", "Z")
            if self.created_at else None,
            "size_bytes": self.size_bytes,
            "path": str(self.path),
            "sha256": self.sha256,
            "reason": (self.meta or {}).get("reason"),
            "drill": drill or None,
            "encryption": needed_key(self.meta),
            "location": self.location,
            "s3_key": self.s3_key,
            "problems": list(self.problems),
        }


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def _parse_time(text: object) -> datetime | None:
    if not isinstance(text, str):
        return None
    try:
        dt = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return dt if dt.tzinfo else dt.replace(tzinfo=UTC)


def _stamp_time(name: str) -> datetime | None:
    m = STAMP_RE.match(name)
    if not m:
        return None
    try:
        return datetime.strptime(m.group(1), "%Y%m%d_%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None


def _is_abandoned(partial: Path) -> bool:
    """A partial file whose writer is gone: its writer holds an exclusive lock while alive."""
    try:
        fd = os.open(partial, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        return False
    finally:
        os.close(fd)
    return True


def load_entry(archive: Path, verify: bool = False) -> BackupEntry:
    name = archive.name[: -len(ARCHIVE_SUFFIX)]
    entry = BackupEntry(name=name, path=archive, meta_path=meta_path_for(archive))
    try:
        st = archive.stat()
        entry.size_bytes = st.st_size
    except FileNotFoundError:
        st = None
        entry.add_problem(ARCHIVE_MISSING, "archive missing")
    try:
        meta = read_meta(entry.meta_path)
    except MetaError as exc:
        entry.add_problem(META_MISSING if exc.missing else META_DAMAGED, str(exc))
        meta = None
    if meta is not None:
        entry.meta = meta
        entry.kind = str(meta.get("kind"))
        entry.created_at = _parse_time(meta.get("created_at"))
        entry.sha256 = str(meta["archive"]["sha256"])
        expected = meta["archive"].get("size_bytes")
        if st is not None and isinstance(expected, int) and expected != st.st_size:
            entry.add_problem(
                SIZE_MISMATCH, f"size differs from metadata ({st.st_size} bytes, expected {expected})"
            )
        elif st is not None and verify and sha256_file(archive) != entry.sha256:
            entry.add_problem(CHECKSUM_MISMATCH, "checksum mismatch")
    if entry.created_at is None:
        entry.created_at = _stamp_time(name) or (
            datetime.fromtimestamp(st.st_mtime, UTC) if st is not None else None
        )
    return entry


def list_backups(backup_dir: Path, verify: bool = False) -> list[BackupEntry]:
    """Newest first."""
    if not backup_dir.is_dir():
        return []
    entries: list[BackupEntry] = []
    # One scandir (names as strings, file types from the directory itself): with thousands of
    # backups, sorting Path objects and a stat per name cost more than reading the metadata.
    with os.scandir(backup_dir) as it:
        listing = {d.name: d for d in it}
    for fname in sorted(listing):
        child = backup_dir / fname
        if fname.startswith("."):
            if ARCHIVE_SUFFIX + ".partial-" in fname and _is_abandoned(child):
                stem = fname[1:].split(".partial-")[0]
                e = BackupEntry(name=stem, path=child, meta_path=child)
                st = child.stat()
                e.size_bytes = st.st_size
                e.created_at = datetime.fromtimestamp(st.st_mtime, UTC)
                e.add_problem(PARTIAL_FILE,
                              "partial file left by an interrupted write (safe to delete)")
                entries.append(e)
            continue
        if fname.endswith(ARCHIVE_SUFFIX) and listing[fname].is_file():
            entries.append(load_entry(child, verify))
        elif fname.endswith(ARCHIVE_SUFFIX + META_SUFFIX):
            archive_name = fname[: -len(META_SUFFIX)]
            if archive_name not in listing:
                entries.append(load_entry(backup_dir / archive_name, verify))
    epoch = datetime.min.replace(tzinfo=UTC)
    entries.sort(key=lambda e: (e.created_at or epoch, e.name), reverse=True)
    return entries


def last_complete(backup_dir: Path) -> BackupEntry | None:
    """The newest complete backup (its size sizes the next one's space check and ETA). Names
    begin with their UTC time, so the metadata is read newest name first until one is complete:
    a year of backups of thousands of tables is hundreds of MB of metadata, not read whole at
    every backup."""
    if not backup_dir.is_dir():
        return None
    names = sorted((n for n in os.listdir(backup_dir)
                    if n.endswith(ARCHIVE_SUFFIX) and not n.startswith(".")), reverse=True)
    for name in names:
        entry = load_entry(backup_dir / name)
        if entry.complete:
            return entry
    return None


def merged_inventory(backup_dir: Path, s3: Any | None, verify: bool = False) -> list[BackupEntry]:
    """Local backups and, when S3 is configured, the bucket's: one list, newest first."""
    entries = list_backups(backup_dir, verify)
    if s3 is None:
        return entries
    from tui.core.s3 import list_s3

    remote = list_s3(s3, cache_path=backup_dir / ".s3-metadata-cache.json")
    by_stamp = {e.name[:15]: e for e in entries if STAMP_RE.match(e.name)}
    for stamp, rb in remote.backups.items():
        local = by_stamp.get(stamp)
        remote_sha = (rb.meta or {}).get("archive", {}).get("sha256") if rb.meta else None
        if local is not None and not local.path.name.startswith("."):
            if rb.archive_key:
                local.location = "both"
                local.s3_key = rb.archive_key
            if rb.archive_key and rb.meta is None:
                local.add_problem(S3_NO_METADATA, "S3 copy incomplete (no metadata.json)")
            elif remote_sha and local.sha256 and remote_sha != local.sha256:
                local.add_problem(S3_CHECKSUM, "checksum differs between local and S3")
            continue
        name = str((rb.meta or {}).get("name") or stamp)
        e = BackupEntry(name=name, path=backup_dir / f"{name}{ARCHIVE_SUFFIX}",
                        meta_path=backup_dir / f"{name}{ARCHIVE_SUFFIX}{META_SUFFIX}",
                        location="s3", s3_key=rb.archive_key, meta=rb.meta)
        e.size_bytes = rb.size_bytes
        if rb.meta:
            e.kind = str(rb.meta.get("kind"))
            e.created_at = _parse_time(rb.meta.get("created_at"))
            e.sha256 = remote_sha
        e.created_at = e.created_at or _stamp_time(f"{stamp}_x") or rb.last_modified
        if rb.archive_key is None:
            e.add_problem(S3_ONLY_NO_ARCHIVE, "metadata.json without database.backup in S3")
        elif rb.meta is None:
            e.add_problem(S3_ONLY_NO_METADATA,
                          rb.meta_error or "incomplete upload (no metadata.json)")
        elif rb.meta.get("archive", {}).get("size_bytes") != rb.size_bytes:
            e.add_problem(S3_ONLY_SIZE, "S3 object size differs from metadata.json")
        entries.append(e)
    for up in remote.orphaned_uploads:
        e = BackupEntry(name=up["key"], path=backup_dir / up["key"], meta_path=backup_dir,
                        location="s3", s3_key=up["key"])
        e.created_at = _parse_time(up["initiated"])
        e.add_problem(S3_MULTIPART, f"orphaned multipart upload since {up['initiated'][:19]} "
                                    f"(abort it: upload id {up['upload_id']})")
        entries.append(e)
    for e in entries:
        if e.location == "local" and e.complete:
            e.add_problem(NOT_UPLOADED, "never uploaded to S3 (pgrunbook upload NAME)")
    epoch = datetime.min.replace(tzinfo=UTC)
    entries.sort(key=lambda x: (x.created_at or epoch, x.name), reverse=True)
    return entries


def inventory_or_local(backup_dir: Path, s3: Any | None,
                       verify: bool = False) -> tuple[list[BackupEntry], str | None]:
    """The merged inventory and None; when S3 is configured but cannot be listed, the local
    backups alone and a one-line warning saying so. Errors of pgrunbook's own are raised."""
    try:
        return merged_inventory(backup_dir, s3, verify=verify), None
    except PgRunbookError:
        raise
    except Exception as exc:
        if s3 is None:
            raise
        from tui.core.s3 import describe_error

        warning = (f"cannot list s3://{s3.bucket}/{s3.prefix}: {describe_error(exc)}; "
                   "showing local backups only.")
        return list_backups(backup_dir, verify=verify), warning
