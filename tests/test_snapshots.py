"""SVG snapshots of the main screens at 80x24 and 120x40, with time frozen and a fixed inventory
(no database needed: the screens read the backup directory)."""

from __future__ import annotations

import hashlib
import json
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from tui.app import make_app
from tui.core.settings import load_settings

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def fake_inventory(backup_dir: Path) -> None:
    backup_dir.mkdir(mode=0o700)
    specs = [("manual", 2), ("pre-migration", 20), ("emergency", 30), ("release", 60),
             ("manual", 26 * 24)]
    for i, (kind, hours) in enumerate(specs):
        created = NOW - timedelta(hours=hours)
        label = {"pre-migration": "pre_migration", "emergency": "emergency_pre_rollback",
                 "release": "pre_major_release_v2.1"}.get(kind, "manual")
        name = f"{created.strftime('%Y%m%d_%H%M%S')}_{label}"
        body = bytes([i]) * (1_000_000 + i * 250_000)
        (backup_dir / f"{name}.backup").write_bytes(body)
        meta = {
            "schema_version": 1, "name": name, "kind": kind, "reason": f"reason {i}",
            "created_at": created.isoformat().replace("+00:00", "Z"), "duration_seconds": 4.2,
            "archive": {"file": f"{name}.backup", "size_bytes": len(body),
                        "sha256": hashlib.sha256(body).hexdigest(), "format": "custom",
                        "compression": "zstd:3"},
            "source": {"host": "db.example.supabase.co", "port": 5432, "database": "postgres"},
            "server_version": "15.8",
            "tables": [{"schema": "auth", "name": "users", "rows": 1000 + i},
                       {"schema": "public", "name": "transactions", "rows": 50_000 + i}],
        }
        if i == 1:
            meta["drill"] = {"verified_at": (NOW - timedelta(hours=19)).isoformat(),
                             "result": "PASS", "restore_seconds": 3.1}
        (backup_dir / f"{name}.backup.meta").write_text(json.dumps(meta))
    (backup_dir / "20261101_000000_lost.backup").write_bytes(b"x")  # no metadata


@pytest.fixture
def app_factory(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):  # type: ignore[no-untyped-def]
    fake_inventory(tmp_path / "backups")
    # The home screen warns when the disk fills: the picture must not depend on this machine's.
    monkeypatch.setattr("tui.screens.home._disk_usage", lambda _path: (10**12, 2 * 10**12))

    def make(production: bool = True):  # type: ignore[no-untyped-def]
        settings = load_settings(environ={
            "SUPABASE_DB_HOST": "db.example.supabase.co", "SUPABASE_DB_PORT": "5432",
            "PGRUNBOOK_DEFAULT_TARGET": "production" if production else "staging",
            "BACKUP_DIR": str(tmp_path / "backups"),
        }, cwd=tmp_path)
        return make_app(settings, now=lambda: NOW)

    return make


async def settled(pilot) -> None:  # type: ignore[no-untyped-def]
    """The screens read the inventory in a worker: wait for it, then for the refresh."""
    await pilot.app.workers.wait_for_complete()
    await pilot.pause()


async def open_browser(pilot) -> None:  # type: ignore[no-untyped-def]
    await settled(pilot)
    await pilot.press("b")
    await settled(pilot)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_home(snap_compare, app_factory, size) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(app_factory(), run_before=settled, terminal_size=size)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_browser(snap_compare, app_factory, size) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(app_factory(production=False), run_before=open_browser,
                        terminal_size=size)


@pytest.mark.parametrize("size", [(80, 24), (120, 40)])
def test_runner_checklist(snap_compare, app_factory, size) -> None:  # type: ignore[no-untyped-def]
    async def open_runbook(pilot) -> None:  # type: ignore[no-untyped-def]
        pilot.app.start_runbook("standard-restore")
        await pilot.pause()
        await pilot.press(*"INC-1", "enter", "space")
        await pilot.pause()

    assert snap_compare(app_factory(), run_before=open_runbook, terminal_size=size)


def test_help(snap_compare, app_factory) -> None:  # type: ignore[no-untyped-def]
    assert snap_compare(app_factory(), press=["question_mark"], terminal_size=(80, 24))


@pytest.mark.parametrize("passed", [False, True], ids=["fail", "pass"])
def test_runner_verification(snap_compare, app_factory, passed) -> None:  # type: ignore[no-untyped-def]
    """The emergency runbook's verify step after its verification, at 80x24: the verdict, the
    differing tables, then the key tables, all above the fold (tests/test_runner_layout.py)."""
    from tests.test_runner_layout import show_verify_result, verification_report

    async def verified(pilot) -> None:  # type: ignore[no-untyped-def]
        await show_verify_result(pilot, verification_report(passed))

    assert snap_compare(app_factory(), run_before=verified, terminal_size=(80, 24))
