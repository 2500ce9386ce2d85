"""Where the test binaries of other PostgreSQL versions are (installed by .ci/setup).

`.ci/setup` puts them in a cache outside the checkout, one directory per major version:
`$PGRUNBOOK_PG_CACHE/<major>/bin` (default /var/cache/pgrunbook/pg as root, whose home the
`postgres` OS user cannot enter, else ~/.cache/pgrunbook/pg). PostgreSQL 15 is Debian's.
They are test tools, never a dependency of pgrunbook.

Tests that need one call `need_server(16)` and friends: without the binaries such a test is
skipped on a developer's machine but fails under CI (CI=true), where .ci/setup installs them.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path

import pytest

from tui.core.pgtools import tool_version

DEBIAN = Path("/usr/lib/postgresql")
SERVER = ("initdb", "pg_ctl", "postgres")
CLIENT = ("pg_dump", "pg_restore", "psql")


def cache_dir() -> Path:
    if os.environ.get("PGRUNBOOK_PG_CACHE"):
        return Path(os.environ["PGRUNBOOK_PG_CACHE"])
    if os.geteuid() == 0:
        return Path("/var/cache/pgrunbook/pg")
    return Path.home() / ".cache" / "pgrunbook" / "pg"


def _candidates(major: int) -> list[Path]:
    return [DEBIAN / str(major) / "bin", cache_dir() / str(major) / "bin"]


@functools.cache
def _bindir(major: int, names: tuple[str, ...]) -> Path | None:
    for bindir in _candidates(major):
        if not all(os.access(bindir / n, os.X_OK) for n in names):
            continue
        version = tool_version(bindir / names[0])
        if version is not None and version[0] == major:
            return bindir
    return None


def server_bindir(major: int) -> Path | None:
    """A directory with initdb, pg_ctl and postgres of this major version, or None."""
    return _bindir(major, SERVER)


def client_bindir(major: int) -> Path | None:
    """A directory with pg_dump, pg_restore and psql of this major version, or None."""
    return _bindir(major, CLIENT)


def _missing(what: str) -> None:
    message = f"{what} is not installed; .ci/setup installs it into {cache_dir()}"
    if os.environ.get("CI"):
        pytest.fail(message)
    pytest.skip(message)


def need_server(major: int) -> Path:
    bindir = server_bindir(major)
    if bindir is None:
        _missing(f"a PostgreSQL {major} server")
    assert bindir is not None
    return bindir


def need_client(major: int) -> Path:
    bindir = client_bindir(major)
    if bindir is None:
        _missing(f"PostgreSQL {major} client tools")
    assert bindir is not None
    return bindir
