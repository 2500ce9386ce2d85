"""What a PostgreSQL binary answered when asked about itself, remembered between commands
(and, the same way, the key id of a gpg passphrase file: tui.core.encryption.key_id_of).

Every backup asks pg_dump and pg_restore for their versions (and a pg_dump 16+ whether it was
built with zstd). Each answer costs a process start, about 30 ms; on a many-table database whose
dump takes half a second that is a tenth of the operation. The answers are kept in
`$XDG_CACHE_HOME/pgrunbook/tools.json` (0600, directory 0700), each under the binary's real
path and its identity (size, modification and change time, inode): a binary upgraded, rebuilt
or replaced in place has another identity, and is asked again. The file holds nothing secret,
and a cache that cannot be read or written is only slower: it never fails a command.
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tui.core.fsutil import atomic_write_bytes

_MAX_ENTRIES = 256
_memory: dict[str, tuple[list[int], object]] = {}
_loaded: dict[str, list[object]] | None = None


def cache_file() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "pgrunbook" / "tools.json"


def _identity(path: Path) -> list[int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino]


def _load() -> dict[str, list[object]]:
    global _loaded
    if _loaded is None:
        _loaded = {}
        with contextlib.suppress(OSError, ValueError):
            data = json.loads(cache_file().read_bytes())
            if isinstance(data, dict):
                _loaded = {k: v for k, v in data.items()
                           if isinstance(v, list) and len(v) == 2}
    return _loaded


def _store(key: str, identity: list[int], value: object) -> None:
    entries = _load()
    entries[key] = [identity, value]
    while len(entries) > _MAX_ENTRIES:
        entries.pop(next(iter(entries)))
    path = cache_file()
    with contextlib.suppress(OSError):
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        atomic_write_bytes(path, json.dumps(entries, sort_keys=True).encode(), durable=False)


def remembered(kind: str, binary: Path, ask: Callable[[], Any]) -> Any:
    """`ask()`'s answer about `binary` (JSON data), from the cache while the binary is the same
    file. An answer of None (the binary could not say) is not remembered."""
    try:
        real = binary.resolve()
    except OSError:
        return ask()
    identity = _identity(real)
    if identity is None:
        return ask()
    key = f"{kind}:{real}"
    hit = _memory.get(key)
    if hit is not None and hit[0] == identity:
        return hit[1]
    stored = _load().get(key)
    if stored is not None and stored[0] == identity:
        _memory[key] = (identity, stored[1])
        return stored[1]
    answer = ask()
    if answer is not None:
        _memory[key] = (identity, answer)
        _store(key, identity, answer)
    return answer


def forget() -> None:
    """Drop what this process remembers (tests that swap binaries in place)."""
    global _loaded
    _memory.clear()
    _loaded = None
