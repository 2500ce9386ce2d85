"""A binary's version is asked once, and again when the binary changes (tui.core.toolcache)."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from tui.core import toolcache
from tui.core.pgtools import tool_version


@pytest.fixture
def cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    toolcache.forget()
    yield tmp_path / "cache" / "pgrunbook" / "tools.json"
    toolcache.forget()


def _stub(path: Path, version: str, calls: Path) -> None:
    path.write_text(f"#!/bin/sh\necho x >> '{calls}'\necho 'pg_dump (PostgreSQL) {version}'\n")
    path.chmod(0o755)


def test_version_is_asked_once_per_binary_across_processes(tmp_path: Path, cache: Path) -> None:
    calls = tmp_path / "calls"
    binary = tmp_path / "pg_dump"
    _stub(binary, "16.4", calls)
    assert tool_version(binary) == (16, 4)
    assert tool_version(binary) == (16, 4)
    toolcache.forget()  # as a new command would start: only the file remains
    assert tool_version(binary) == (16, 4)
    assert calls.read_text().count("x") == 1
    assert stat.S_IMODE(cache.stat().st_mode) == 0o600
    assert stat.S_IMODE(cache.parent.stat().st_mode) == 0o700


def test_a_replaced_binary_is_asked_again(tmp_path: Path, cache: Path) -> None:
    calls = tmp_path / "calls"
    binary = tmp_path / "pg_dump"
    _stub(binary, "16.4", calls)
    assert tool_version(binary) == (16, 4)
    replacement = tmp_path / "new"
    _stub(replacement, "17.2", calls)
    os.replace(replacement, binary)  # an upgrade in place: same path, another file
    toolcache.forget()
    assert tool_version(binary) == (17, 2)
    assert calls.read_text().count("x") == 2


def test_a_binary_that_cannot_answer_is_not_remembered(tmp_path: Path, cache: Path) -> None:
    binary = tmp_path / "pg_dump"
    binary.write_text("#!/bin/sh\nexit 1\n")
    binary.chmod(0o755)
    assert tool_version(binary) is None
    _stub(tmp_path / "fixed", "15.8", tmp_path / "calls")
    os.replace(tmp_path / "fixed", binary)
    assert tool_version(binary) == (15, 8)


def test_an_unwritable_cache_only_costs_time(tmp_path: Path, cache: Path) -> None:
    cache.parent.parent.mkdir(parents=True)
    cache.parent.write_text("not a directory")  # (root ignores modes, so not a chmod)
    binary = tmp_path / "pg_dump"
    _stub(binary, "15.8", tmp_path / "calls")
    assert tool_version(binary) == (15, 8)
    toolcache.forget()
    assert tool_version(binary) == (15, 8)
    assert (tmp_path / "calls").read_text().count("x") == 2
