"""The metadata sidecar `<archive>.meta`: JSON with a schema version, written after the archive.

Its presence, readable and complete, is what marks a backup as finished.
"""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from tui.core.fsutil import atomic_write_bytes

META_SCHEMA_VERSION = 1
META_SUFFIX = ".meta"
ARCHIVE_SUFFIX = ".backup"
REQUIRED = ("schema_version", "name", "kind", "created_at", "archive", "source", "tables")
REQUIRED_ARCHIVE = ("file", "size_bytes", "sha256", "format", "compression")
KINDS = ("manual", "scheduled", "pre-migration", "emergency", "release")
DEFAULT_LABELS = {"manual": "manual", "scheduled": "scheduled", "pre-migration": "pre_migration",
                  "emergency": "emergency_pre_rollback"}
# The kinds whose backups fill retention's daily, weekly and monthly slots (and S3's tags).
SLOT_KINDS = frozenset({"manual", "scheduled", "pre-migration"})
STAMP_RE = re.compile(r"^(\d{8}_\d{6})_(.+)$")


class MetaError(Exception):
    # `missing` tells the inventory "no sidecar at all" (a write that never finished, or a
    # delete half done) from a damaged one.
    missing: bool = False
    """The sidecar is missing, unreadable or incomplete; the message says which."""


def meta_path_for(archive: Path) -> Path:
    return archive.with_name(archive.name + META_SUFFIX)


def read_meta(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        error = MetaError("metadata missing")
        error.missing = True
        raise error from None
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise MetaError(f"metadata unreadable ({exc.__class__.__name__})") from None
    if not isinstance(data, dict):
        raise MetaError("metadata unreadable (not an object)")
    version = data.get("schema_version")
    if not isinstance(version, int) or version > META_SCHEMA_VERSION:
        raise MetaError(f"metadata schema version {version!r} is not one this tool reads")
    missing = [k for k in REQUIRED if k not in data]
    archive = data.get("archive")
    if isinstance(archive, dict):
        missing += [f"archive.{k}" for k in REQUIRED_ARCHIVE if k not in archive]
    elif "archive" not in missing:
        missing.append("archive")
    if missing:
        raise MetaError("metadata incomplete (no " + ", ".join(missing) + ")")
    return data


def write_meta(path: Path, meta: dict[str, Any]) -> None:
    payload = json.dumps(meta, indent=2, ensure_ascii=False, sort_keys=False) + "\n"
    atomic_write_bytes(path, payload.encode("utf-8"))
