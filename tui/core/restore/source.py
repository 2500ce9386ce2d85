"""Choosing and fetching the backup to restore, and checking it before the target is touched:
`resolve_backup` (a name, a path, `latest` or an S3 key; a backup only in S3 is downloaded and
verified), its checksum (`sha256_matches`), its metadata and its archive (`check_metadata`,
`check_archive`: readable, and a pg_restore new enough for it)."""

from __future__ import annotations

import hashlib
import json
import re
import time
from pathlib import Path
from typing import Any

from tui.core.archive import Toc, read_toc
from tui.core.encryption import Cipher
from tui.core.errors import ConfigError, OperationFailed
from tui.core.events import Emit, Notice, PhaseStarted, Progress, ignore
from tui.core.fsutil import atomic_write_bytes, ensure_private_dir, publish, temp_path_for
from tui.core.inventory import (
    ARCHIVE_MISSING,
    HASH_CHUNK,
    BackupEntry,
    list_backups,
    load_entry,
    sha256_file,
)
from tui.core.metadata import ARCHIVE_SUFFIX, meta_path_for, write_meta
from tui.core.operation import operation
from tui.core.pgtools import PgTool, find_tool
from tui.core.roles import roles_path_for
from tui.core.s3 import S3Config, s3_config
from tui.core.settings import Settings


def resolve_backup(settings: Settings, spec: str, emit: Emit = ignore) -> BackupEntry:
    """`latest`, a path to an archive, a backup's name as `list` shows it, or the SOP's S3 key
    `<prefix>YYYYMMDD_HHMMSS/database.backup`. A backup only in S3 is downloaded first."""
    s3 = s3_config(settings)
    key_match = re.fullmatch(r"(?:.*/)?(\d{8}_\d{6})/database\.backup", spec)
    if key_match and s3 is not None and not Path(spec).exists():
        return fetch_from_s3(settings, s3, key_match.group(1), emit)
    if spec == "latest":
        for entry in list_backups(settings.backup_dir):
            if not entry.complete or entry.kind == "emergency":
                continue  # never a partial one, and never a safety copy of a bad state
            newer_remote = _newest_remote(settings, s3, after=entry)
            if newer_remote is not None and s3 is not None:
                return fetch_from_s3(settings, s3, newer_remote, emit)
            if sha256_matches(entry):
                return entry
        remote = _newest_remote(settings, s3, after=None)
        if remote is not None and s3 is not None:
            return fetch_from_s3(settings, s3, remote, emit)
        raise OperationFailed(
            f"no complete backup with a matching checksum in {settings.backup_dir}"
            + (" or S3" if s3 else "") + ".",
            "Check `pgrunbook list --verify`, or name a backup explicitly.",
        )
    path = Path(spec).expanduser()
    if "/" in spec or spec.endswith(ARCHIVE_SUFFIX):
        if not path.exists():
            raise ConfigError(f"no backup file at {spec}.", "Check the path (pgrunbook list).")
        return load_entry(path.resolve())
    candidate = settings.backup_dir / f"{spec}{ARCHIVE_SUFFIX}"
    if not candidate.exists() and not (
            settings.backup_dir / f"{spec}{ARCHIVE_SUFFIX}.meta").exists():
        if s3 is not None and re.match(r"\d{8}_\d{6}", spec):
            return fetch_from_s3(settings, s3, spec[:15], emit)
        raise ConfigError(f"no backup named {spec!r} in {settings.backup_dir}"
                          + (" or S3" if s3 else "") + ".",
                          "Run `pgrunbook list` to see the names.")
    return load_entry(candidate)


def _newest_remote(settings: Settings, s3: S3Config | None,
                   after: BackupEntry | None) -> str | None:
    """The stamp of the newest complete non-emergency backup that exists only in S3 and is
    newer than `after` (a local candidate)."""
    if s3 is None:
        return None
    from tui.core.s3 import list_s3

    local = {e.name[:15] for e in list_backups(settings.backup_dir)}
    best = None
    for stamp, rb in list_s3(s3).backups.items():
        if stamp in local or rb.meta is None or rb.archive_key is None:
            continue
        if rb.meta.get("kind") == "emergency":
            continue
        if after is not None and stamp <= after.name[:15]:
            continue
        if best is None or stamp > best:
            best = stamp
    return best


def fetch_from_s3(settings: Settings, s3: S3Config, stamp: str, emit: Emit) -> BackupEntry:
    """Download a backup from S3 into BACKUP_DIR and verify it against metadata.json."""
    from tui.core.s3 import ARCHIVE_KEY, META_KEY, describe_error, download

    client = s3.client()
    meta_key = s3.key_for(stamp, META_KEY)
    try:
        meta = json.loads(client.get_object(Bucket=s3.bucket, Key=meta_key)["Body"].read())
    except Exception as exc:
        raise OperationFailed(
            f"backup {stamp} in S3 has no readable metadata.json ({describe_error(exc)}): "
            "it is incomplete or missing.",
            "Choose another backup (pgrunbook list).",
        ) from None
    name = str(meta["name"])
    ensure_private_dir(settings.backup_dir)
    final = settings.backup_dir / f"{name}{ARCHIVE_SUFFIX}"
    if final.exists():
        return load_entry(final)
    tmp = temp_path_for(final)
    key = s3.key_for(stamp, ARCHIVE_KEY)
    with operation(settings, "download", emit, no_target=True,
                   arguments={"backup": name, "bucket": s3.bucket, "key": key}) as op:
        op.end["backup"] = name
        try:
            op.emit(PhaseStarted("downloading", f"s3://{s3.bucket}/{key}"))
            started = time.monotonic()
            download(s3, key, tmp, lambda done, total: op.emit(
                Progress("download", done, total, time.monotonic() - started)))
            if sha256_file(tmp) != meta["archive"]["sha256"]:
                raise OperationFailed(
                    f"the copy of {name} in S3 is damaged: its SHA-256 differs from "
                    "metadata.json. Nothing was changed.",
                    "Use another backup, and check the bucket (pgrunbook list).",
                )
            publish(tmp, final)
            _fetch_roles(client, s3, stamp, final, meta, op.emit)
            write_meta(meta_path_for(final), meta)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        op.end["sha256"] = meta["archive"]["sha256"]
    emit(Notice("info", f"downloaded {name} from S3 and verified its checksum."))
    return load_entry(final)


def _fetch_roles(client: Any, s3: S3Config, stamp: str, final: Path, meta: dict[str, Any],
                 emit: Emit) -> None:
    """The backup's roles.sql beside the downloaded archive, checked against the metadata; a
    backup without one (or whose copy is unreadable) restores all the same."""
    from tui.core.s3 import ROLES_KEY, describe_error

    want = (meta.get("roles_sql") or {}).get("sha256")
    if not want:
        return
    try:
        data = client.get_object(Bucket=s3.bucket, Key=s3.key_for(stamp, ROLES_KEY))["Body"].read()
    except Exception as exc:
        emit(Notice("warning", f"roles.sql of {stamp} not fetched ({describe_error(exc)}): "
                               "a drill creates the roles without their attributes."))
        return
    if hashlib.sha256(data).hexdigest() != want:
        emit(Notice("warning", f"roles.sql of {stamp} in S3 does not match its checksum; "
                               "not kept."))
        return
    atomic_write_bytes(roles_path_for(final), data)


def sha256_matches(entry: BackupEntry, emit: Emit = ignore) -> bool:
    if entry.sha256 is None:
        return False
    digest = hashlib.sha256()
    started = time.monotonic()
    done, last = 0, 0.0
    with entry.path.open("rb") as f:
        while chunk := f.read(HASH_CHUNK):
            digest.update(chunk)
            done += len(chunk)
            now = time.monotonic()
            if now - last > 0.25:
                last = now
                emit(Progress("checksum", done, entry.size_bytes, now - started))
    return digest.hexdigest() == entry.sha256


def check_metadata(entry: BackupEntry) -> None:
    """A backup is restorable only with complete metadata (its checksum) and its archive."""
    if entry.meta is None or ARCHIVE_MISSING in entry.problem_codes:
        raise OperationFailed(
            f"backup {entry.name} cannot be restored: {'; '.join(entry.problems)}.",
            "A backup without complete metadata has no checksum to trust; choose another.",
        )


def check_archive(settings: Settings, entry: BackupEntry, emit: Emit,
                  cipher: Cipher | None = None) -> tuple[PgTool, Toc]:
    """Steps 1 and 2 for a backup that passed `check_metadata`: checksum, readable table of
    contents, a pg_restore new enough."""
    assert entry.meta is not None
    emit(PhaseStarted("checksum", f"{entry.name} ({entry.size_bytes or 0:,} bytes)"))
    if not sha256_matches(entry, emit):
        raise OperationFailed(
            f"backup {entry.name} is damaged: its SHA-256 does not match its metadata.",
            "Nothing was changed. Use another backup (pgrunbook list --verify).",
        )
    dumped_by = str(entry.meta.get("pg_dump_version", "0"))
    need = int(dumped_by.split(".")[0] or 0)
    pg_restore = find_tool("pg_restore", settings, need,
                           f"the archive {entry.name} (made by pg_dump {dumped_by})")
    emit(PhaseStarted("reading archive", f"pg_restore {pg_restore.version} --list"))
    inner = str((entry.meta.get("archive") or {}).get("container") or "custom")
    toc = read_toc(entry.path, pg_restore.path, cipher=cipher, inner=inner)
    return pg_restore, toc


def preview_backup(settings: Settings, spec: str) -> str:
    """The backup `spec` names, as the confirmation shows it, without reading archives or
    downloading anything: for `latest`, the newest complete backup that is not a safety copy
    (local, or a newer one only in S3). The restore then uses exactly that backup."""
    if spec != "latest":
        return spec
    s3 = s3_config(settings)
    for entry in list_backups(settings.backup_dir):
        if entry.complete and entry.kind != "emergency":
            return _newest_remote(settings, s3, after=entry) or entry.name
    return _newest_remote(settings, s3, after=None) or spec
