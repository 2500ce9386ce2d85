"""Durable, private file writes: temp file, fsync, rename; directories 0700, files 0600."""

from __future__ import annotations

import contextlib
import os
import secrets
from collections.abc import Callable
from pathlib import Path

PRIVATE_DIR = 0o700
PRIVATE_FILE = 0o600


def ensure_private_dir(path: Path) -> Path:
    """Create `path` (and parents) if needed and make sure the leaf is 0700."""
    path.mkdir(parents=True, exist_ok=True, mode=PRIVATE_DIR)
    if (path.stat().st_mode & 0o777) != PRIVATE_DIR:
        os.chmod(path, PRIVATE_DIR)
    return path


def fsync_dir(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# Told of every temp path handed out: a detached job records them in its journal, so that the
# job's files can be removed if its process dies before it could (`jobs.reconcile`).
temp_listeners: list[Callable[[Path], None]] = []


def note_temp(path: Path) -> Path:
    """Tell the listeners that `path` (a file or a directory) is temporary."""
    for listener in temp_listeners:
        listener(path)
    return path


def temp_path_for(final: Path) -> Path:
    """A hidden sibling that no inventory mistakes for a finished file."""
    return note_temp(final.with_name(f".{final.name}.partial-{secrets.token_hex(4)}"))


def open_private_exclusive(path: Path) -> int:
    return os.open(path, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, PRIVATE_FILE)


def atomic_write_bytes(final: Path, data: bytes, *, durable: bool = True) -> None:
    """Write `data` to `final` so that readers see the old file or the whole new one.
    `durable=False`, for bookkeeping that is rewritten often and may be lost in a crash (a
    job's state): no fsync, and the temp name is not announced to `temp_listeners`."""
    tmp = temp_path_for(final) if durable else \
        final.with_name(f".{final.name}.partial-{secrets.token_hex(4)}")
    fd = open_private_exclusive(tmp)
    try:
        view = memoryview(data)
        while view:
            written = os.write(fd, view)
            view = view[written:]
        if durable:
            os.fsync(fd)
    except BaseException:
        os.close(fd)
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
        raise
    os.close(fd)
    os.replace(tmp, final)
    if durable:
        fsync_dir(final.parent)


def publish(tmp: Path, final: Path) -> None:
    """Rename a finished, fsynced temp file into place, refusing to overwrite."""
    os.link(tmp, final)  # fails with FileExistsError instead of clobbering
    tmp.unlink()
    fsync_dir(final.parent)
