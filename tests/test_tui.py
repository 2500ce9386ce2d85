"""The runbook TUI with Pilot, against the real test PostgreSQL."""

from __future__ import annotations

import contextlib
import json
import shutil
from datetime import UTC, datetime
from pathlib import Path

import pytest
from textual.widgets import DataTable, Input, Label, Static
from textual.worker import WorkerCancelled, WorkerFailed

from tests.conftest import Golden, Server, Workspace, clean_env
from tests.test_retention import (
    GONE,
    KEPT,
    audit,
    expected_kept,
    names_on_disk,
    ninety,
)
from tests.test_retention import NOW as RETENTION_NOW
from tui.app import make_app
from tui.core.fmt import size as human_size
from tui.core.settings import load_settings
from tui.screens.browser import BrowserScreen
from tui.screens.modals import AskText, YesNo
from tui.screens.runner import RunnerScreen
from tui.widgets.backup_list import BackupList

FROZEN = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)


def settings_for(ws: Workspace, **extra: str):  # type: ignore[no-untyped-def]
    ws.write_env(**extra)
    return load_settings(env_file=ws.env_file, environ=clean_env())


async def test_home_shows_target_backups_health_and_runbooks(workspace: Workspace) -> None:
    workspace.run("backup", check=True)
    app = make_app(settings_for(workspace, PGRUNBOOK_PRODUCTION_TARGETS="testdb"))
    async with app.run_test(size=(80, 24)) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause()
        banner = str(app.screen.query_one("#banner", Static).render())
        assert "PRODUCTION" in banner and "testdb" in banner
        assert app.screen.query_one("#banner").has_class("production")
        assert app.screen.query_one("#newest", DataTable).row_count == 1
        health = str(app.screen.query_one("#health", Static).render())
        assert "Newest backup: " in health and "Last passed drill: never" in health, health
        assert "more OK: last backup job, backup size, " in health, health
        await pilot.press("question_mark")
        assert app.screen.__class__.__name__ == "HelpScreen"
        await pilot.press("escape")


async def test_browser_lists_filters_sorts_and_details(workspace: Workspace) -> None:
    for name in ("alpha", "bravo", "charlie"):
        workspace.run("backup", name, check=True)
    app = make_app(settings_for(workspace))
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("b")
        await app.workers.wait_for_complete()
        await pilot.pause()
        screen = app.screen
        assert isinstance(screen, BrowserScreen)
        table = screen.query_one("#backups", BackupList)
        assert table.row_count == 3 and table.has_focus
        assert table.selected_key is not None and table.selected_key.endswith("_charlie")
        detail = str(screen.query_one("#detail", Static).render())
        assert "rows per table" in detail and "public.rental" in detail
        await pilot.press("down")
        assert table.selected_key.endswith("_bravo")
        assert "_bravo" in str(screen.query_one("#detail", Static).render())
        await pilot.press("slash")
        await pilot.press(*"alpha")
        await pilot.pause()
        assert table.row_count == 1 and table.selected_key.endswith("_alpha")
        assert "1 of 3" in str(screen.query_one("#browser-title").render())
        await pilot.press(*"zzz")
        assert table.row_count == 0
        assert "No backup matches" in str(screen.query_one("#detail", Static).render())
        screen.query_one("#filter", Input).value = ""
        await pilot.press("enter")  # back to the table
        await pilot.pause()
        assert table.row_count == 3 and table.has_focus
        await pilot.press("s")
        assert table.row_count == 3 and screen.sort_col == 7
        # A click on a column's title sorts by it; a second click reverses.
        await pilot.click("#backups", offset=(2, 0))
        assert screen.sort_col == 0 and [r.key[16:] for r in table.rows] == \
            ["alpha", "bravo", "charlie"]
        await pilot.click("#backups", offset=(2, 0))
        assert [r.key[16:] for r in table.rows] == ["charlie", "bravo", "alpha"]
        # A click on a row selects it.
        await pilot.click("#backups", offset=(2, 3))
        assert table.selected_key.endswith("_alpha")


async def test_standard_restore_runbook_walked_with_the_keyboard(workspace: Workspace,
                                                                server: Server) -> None:
    out = json.loads(workspace.run("backup", "--json", check=True).stdout)
    meta = json.loads(Path(out["meta_path"]).read_text())
    with server.connect(workspace.dbname) as conn:
        conn.execute("DELETE FROM public.film_actor WHERE actor_id < 100")
    app = make_app(settings_for(workspace))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        app.start_runbook("standard-restore")
        await pilot.pause()
        assert isinstance(app.screen, AskText)  # the justification comes first
        await pilot.press(*"INC-1 test", "enter")
        await pilot.pause()
        runner = app.screen
        assert isinstance(runner, RunnerScreen)
        await pilot.press("n")  # blocked: required items unticked
        assert runner.run_state.current == 0
        checklist = runner.query_one("#checklist")
        checklist.focus()
        for _ in range(3):  # the three required items
            await pilot.press("space", "down")
        await pilot.pause()
        await pilot.press("n")
        assert runner.run_state.current == 1 and runner.run_state.state.step.kind == "restore"
        await pilot.press("x")
        for _ in range(200):
            await pilot.pause(0.05)
            if isinstance(app.screen, YesNo):
                break
        assert isinstance(app.screen, YesNo)
        await pilot.press("y")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert runner.run_state.states[1].status == "done", runner.run_state.states[1].detail
        verdict = str(runner.query_one("#verdict", Static).render())
        assert "VERIFICATION PASS" in verdict
    counts = server.counts(workspace.dbname, [(t["schema"], t["name"]) for t in meta["tables"]])
    assert counts == {(t["schema"], t["name"]): t["rows"] for t in meta["tables"]}
    audit = [json.loads(x) for x in (workspace.backup_dir / "audit.log").read_text().splitlines()]
    restore_end = [e for e in audit if e["operation"] == "restore" and e["event"] == "end"][-1]
    assert restore_end["origin"] == "tui" and restore_end["reason"] == "INC-1 test"


async def test_a_dialog_opened_while_the_terminal_was_unfocused_takes_the_first_key(
        workspace: Workspace) -> None:
    """The operator is in another window when the reason dialog opens; what they type on
    coming back goes into the dialog, not to the app's single-letter keys (h opens History)."""
    from textual import events

    app = make_app(settings_for(workspace))
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        app.post_message(events.AppBlur())
        await pilot.pause()
        assert not app.app_focus
        app.start_runbook("standard-restore")
        await pilot.pause()
        assert isinstance(app.screen, AskText) and app.screen.focused is None
        await pilot.press(*"the hotfix")
        await pilot.pause()
        assert isinstance(app.screen, AskText)
        assert app.screen.query_one(Input).value == "the hotfix"


async def test_the_inventory_is_read_again_only_when_the_backup_directory_changes(
        workspace: Workspace) -> None:
    workspace.run("backup", "first", check=True)
    app = make_app(settings_for(workspace))
    async with app.run_test(size=(80, 24)):
        await app.workers.wait_for_complete()
        held = app.inventory()
        assert [e.name[16:] for e in held] == ["first"]
        assert app.inventory() is held  # nothing changed: no second read of every file
        workspace.run("backup", "second", check=True)
        assert [e.name[16:] for e in app.inventory()] == ["second", "first"]


RETRY_RUNBOOK = """\
name = "Retry drill"
description = "A step that fails once, one that always fails, then a verification."

[[steps]]
id = "flaky"
kind = "command"
title = "Flaky command"
command = "flaky"

[[steps]]
id = "broken"
kind = "command"
title = "Broken command"
command = "broken"

[[steps]]
id = "verify"
kind = "verify"
title = "Verify counts"
"""


async def wait_for_step(pilot, runner: RunnerScreen, index: int, status: str) -> None:  # type: ignore[no-untyped-def]
    # Each worker awaited on its own: one that failed (a failing step's) must not end the wait
    # for the others; the step's state says how it ended.
    while running := [w for w in pilot.app.workers if w.is_running]:
        for worker in running:
            with contextlib.suppress(WorkerFailed, WorkerCancelled):
                await worker.wait()
    await pilot.pause()
    assert runner.run_state.states[index].status == status, runner.run_state.states[index]


async def test_a_failed_step_blocks_until_run_again_or_skipped_with_a_reason(
        workspace: Workspace, server: Server, tmp_path: Path) -> None:
    books = tmp_path / "books"
    books.mkdir()
    (books / "retry.toml").write_text(RETRY_RUNBOOK)
    mark = tmp_path / "ran-once"
    flaky = f"sh -c 'test -f {mark} || {{ touch {mark}; echo first try fails; exit 3; }}'"
    out = json.loads(workspace.run("backup", "--json", check=True).stdout)
    meta = json.loads(Path(out["meta_path"]).read_text())
    with server.connect(workspace.dbname) as conn:
        conn.execute("DELETE FROM public.payment WHERE payment_id % 10 = 0")
    app = make_app(settings_for(workspace, RUNBOOK_DIR=str(books),
                                RUNBOOK_COMMAND_FLAKY=flaky,
                                RUNBOOK_COMMAND_BROKEN="sh -c 'echo no such service; exit 1'"))
    async with app.run_test(size=(120, 40)) as pilot:
        await app.workers.wait_for_complete()
        app.start_runbook("retry")
        await pilot.pause()
        runner = app.screen
        assert isinstance(runner, RunnerScreen)
        # 1. Fails, blocks, and passes when run again.
        await pilot.press("x")
        await wait_for_step(pilot, runner, 0, "failed")
        await pilot.press("n")
        assert runner.run_state.current == 0
        await pilot.press("x")
        await wait_for_step(pilot, runner, 0, "done")
        await pilot.press("n")
        assert runner.run_state.current == 1
        # 2. Always fails: skipping it asks why, and an empty answer is no answer.
        await pilot.press("x")
        await wait_for_step(pilot, runner, 1, "failed")
        await pilot.press("k")
        await pilot.pause()
        assert isinstance(app.screen, AskText)
        await pilot.press("enter")
        assert isinstance(app.screen, AskText)  # "Type something"
        await pilot.press(*"service is down, checked by hand", "enter")
        await pilot.pause()
        assert runner.run_state.states[1].status == "skipped"
        assert runner.run_state.states[1].reason == "service is down, checked by hand"
        assert runner.run_state.current == 2
        # 3. The damaged database fails verification: FAIL, the differing table first.
        await pilot.press("x")
        await wait_for_step(pilot, runner, 2, "failed")
        verdict = runner.query_one("#verdict", Static)
        assert "VERIFICATION FAIL" in str(verdict.render()) and verdict.has_class("fail")
        first = runner.query_one("#counts", DataTable).get_row_at(0)
        assert "public.payment" in str(first[0]) and "DIFFERS" in str(first[4])
        # The step's state is set before its worker has quite ended, and the runner refuses
        # to leave while a worker runs: wait for it, as an operator's next key would.
        await app.workers.wait_for_complete()
        await pilot.press("escape")  # leave part-way: the run still gets its report and audit
        await pilot.pause()
        assert not isinstance(app.screen, RunnerScreen)
    reports = list((workspace.path / "reports").glob("runbook_*_retry.md"))
    assert len(reports) == 1 and "not complete" in reports[0].read_text()
    assert "service is down, checked by hand" in reports[0].read_text()
    name = str(first[0]).split("public.", 1)[1]
    expected = next(t["rows"] for t in meta["tables"] if t["name"] == name)
    assert str(first[1]) == f"{expected:,}"
    audit = [json.loads(x) for x in (workspace.backup_dir / "audit.log").read_text().splitlines()]
    verify_end = [e for e in audit if e["operation"] == "verify" and e["event"] == "end"][-1]
    assert verify_end["result"] == "verify-failed" and f"public.{name}" in verify_end["differing"]
    run_end = [e for e in audit if e["operation"] == "runbook" and e["event"] == "end"][-1]
    assert run_end["result"] == "abandoned" and run_end["arguments"]["runbook"] == "retry"
    assert [st["status"] for st in run_end["steps"]] == ["done", "skipped", "failed"]
    assert run_end["steps"][1]["reason"] == "service is down, checked by hand"


async def test_history_lists_the_audit_trail_newest_first_and_filters(
        workspace: Workspace) -> None:
    workspace.run("backup", "first", "--reason", "before the import", check=True)
    workspace.run("verify", "latest")
    workspace.run("backup", "second", check=True)
    app = make_app(settings_for(workspace))
    async with app.run_test(size=(120, 40)) as pilot:
        await app.workers.wait_for_complete()
        await pilot.press("h")
        await pilot.pause()
        table = app.screen.query_one("#history", DataTable)
        rows = [table.get_row_at(i) for i in range(table.row_count)]
        assert rows[0][1] == "backup" and rows[0][2] == "end"
        assert [r[0] for r in rows] == sorted((r[0] for r in rows), reverse=True)
        assert any(r[6] == "before the import" for r in rows)
        await pilot.press("slash", *"verify")
        await pilot.pause()
        assert table.row_count >= 1
        assert all(table.get_row_at(i)[1] == "verify" for i in range(table.row_count))


async def test_home_shows_a_running_job_and_follows_it_to_its_verdict(
        workspace: Workspace, server: Server) -> None:
    """A restore started elsewhere (another terminal, a dropped one) shows on the home screen;
    `j` follows it: what it printed so far, then live, then its verification."""
    import subprocess

    from tests.test_backup import _wait_for
    from tests.test_jobs import _restoring
    from tui.screens.job import JobScreen

    workspace.run("backup", check=True)
    holder = server.block_create_table(workspace.dbname, 4747)
    starter = subprocess.Popen(workspace.cli_argv("restore", "latest", "--yes",
                                                  "--terminate-connections"),
                               cwd=workspace.path, env=clean_env(),
                               stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        _wait_for(lambda: _restoring(server, workspace.dbname), "pg_restore to start", 60)
        app = make_app(settings_for(workspace))
        async with app.run_test(size=(80, 24)) as pilot:
            await app.workers.wait_for_complete()
            await pilot.pause()
            line = app.screen.query_one("#jobs-line", Static)
            assert line.display and "Job running: restore of testdb" in str(line.render())
            await pilot.press("j")
            await pilot.pause()
            assert isinstance(app.screen, JobScreen)
            holder.close()  # pg_restore goes on
            with contextlib.suppress(WorkerFailed):
                await app.workers.wait_for_complete()
            await pilot.pause()
            verdict = app.screen.query_one("#verdict", Static)
            assert "VERIFICATION PASS" in str(verdict.render()), str(verdict.render())
            assert app.screen.query_one("#counts", DataTable).row_count > 10
            status = str(app.screen.query_one("#step-status", Static).render())
            assert status.startswith("ok: PASS"), status
            await pilot.press("escape")
            await pilot.pause()
            assert not isinstance(app.screen, JobScreen)
    finally:
        holder.close()
        starter.wait(timeout=120)
    assert starter.returncode == 0


async def test_the_job_screen_never_says_pass_for_a_restore_that_failed(
        workspace: Workspace, server: Server) -> None:
    """Every count matches, but pg_restore failed on an entry (the owner role is gone): the
    job screen's verdict says the counts match and the restore FAILED, never PASS."""
    from tui.core import jobs
    from tui.core.restore import RestoreRequest
    from tui.screens.job import JobScreen

    with server.connect(workspace.dbname) as conn:
        conn.execute("CREATE ROLE ghost_js NOLOGIN")
        conn.execute("CREATE TABLE public.ghost_js (id int)")
        conn.execute("ALTER TABLE public.ghost_js OWNER TO ghost_js")
    try:
        name = json.loads(workspace.run("backup", "--json", check=True).stdout)["name"]
        with server.connect(workspace.dbname) as conn:
            conn.execute("DROP TABLE public.ghost_js")
            conn.execute("DROP ROLE ghost_js")
        settings = settings_for(workspace)
        job = jobs.start(settings, "restore", RestoreRequest(
            backup=name, confirmed=True, owners="keep", origin="tui"), origin="tui",
            arguments={"backup": name})
        app = make_app(settings)
        async with app.run_test(size=(80, 24)) as pilot:
            await app.workers.wait_for_complete()
            app.push_screen(JobScreen(job))
            await pilot.pause()
            with contextlib.suppress(WorkerFailed):
                await app.workers.wait_for_complete()
            await pilot.pause()
            verdict = str(app.screen.query_one("#verdict", Static).render())
            status = str(app.screen.query_one("#step-status", Static).render())
    finally:
        with server.connect(workspace.dbname) as conn:
            conn.execute("DROP TABLE IF EXISTS public.ghost_js")
        with server.connect() as conn:
            conn.execute("DROP ROLE IF EXISTS ghost_js")
    assert "failed" in status and 'role "ghost_js" does not exist' in status, status
    assert "VERIFICATION PASS" not in verdict and "but the step FAILED" in verdict, verdict


# -- retention: the browser's retention line, prune from the browser, the home screen's health --

def notices(app) -> list[str]:  # type: ignore[no-untyped-def]
    return [str(n.message) for n in app._notifications]


async def browse_to(pilot, name: str) -> str:  # type: ignore[no-untyped-def]
    """Filter the browser down to `name` (typed, as the operator would); its detail pane."""
    screen = pilot.app.screen
    screen.query_one("#filter", Input).value = ""
    await pilot.press("slash", *name, "enter")
    await pilot.pause()
    table = screen.query_one("#backups", BackupList)
    assert table.row_count == 1 and table.selected_key == name
    return str(screen.query_one("#detail", Static).render())


async def test_the_browser_shows_each_backups_retention_in_its_detail_pane(
        workspace: Workspace, golden: Golden) -> None:
    ninety(workspace, golden)
    app = make_app(settings_for(workspace), now=lambda: RETENTION_NOW)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.press("b")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert isinstance(app.screen, BrowserScreen)
        # The first backup of ISO week 7 holds its weekly slot, 12 weeks from its Monday.
        weekly = await browse_to(pilot, "20250210_100000_manual")
        assert "Retention: kept until 2025-05-05 (weekly slot 2025-W07)" in weekly, weekly
        newest = await browse_to(pilot, "20250331_100000_manual")
        assert "Retention: kept until 2025-06-23 (weekly slot 2025-W14)" in newest, newest
        expired = await browse_to(pilot, "20250316_100000_manual")
        assert ("Retention: would be deleted by prune: expired: daily slot 2025-03-16 ended "
                "2025-03-30") in expired, expired
        # The table is as it was: no retention column.
        assert [c.label for c in app.screen.query_one("#backups", BackupList).columns] == [
            "name", "age", "size", "kind", "where", "drill", "created", "problems"]


async def test_prune_from_the_browser_lists_asks_for_the_word_and_deletes(
        workspace: Workspace, golden: Golden) -> None:
    from tui.screens.modals import PrunePreview

    names = ninety(workspace, golden)
    gone = sorted(set(names) - set(expected_kept()))
    app = make_app(settings_for(workspace), now=lambda: RETENTION_NOW)
    async with app.run_test(size=(120, 40)) as pilot:
        await pilot.press("b")
        await app.workers.wait_for_complete()
        await pilot.pause()
        # Esc cancels: nothing deleted.
        await pilot.press("p")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert isinstance(app.screen, PrunePreview)
        await pilot.press("escape")
        await pilot.pause()
        assert isinstance(app.screen, BrowserScreen)
        assert names_on_disk(workspace) == sorted(names)
        # The preview lists each deletion with where, age, size and why, and the totals.
        await pilot.press("p")
        await app.workers.wait_for_complete()
        await pilot.pause()
        preview = app.screen
        assert isinstance(preview, PrunePreview)
        listing = preview.query_one("#prune-list", BackupList)
        assert sorted(r.key for r in listing.rows) == [f"local:{n}" for n in gone]
        cells = {c[0]: c for c in (listing.cells_of(r) for r in listing.rows)}
        size = golden.archive.stat().st_size
        assert cells["20250316_100000_manual"] == (
            "20250316_100000_manual", "local", "16d", human_size(size),
            "expired: daily slot 2025-03-16 ended 2025-03-30")
        totals = str(preview.query_one("#dialog-prompt", Static).render())
        assert f"Prune would delete {GONE} of 90 copies: {GONE} local (frees " \
               f"{human_size(GONE * size)}), 0 in S3" in totals, totals
        # It scrolls from the keyboard while the word is being typed; the whole reason shows.
        assert preview.query_one("#dialog-input", Input).has_focus
        await pilot.press("pagedown", "down")
        assert listing.cursor > 1
        why = str(preview.query_one("#prune-why", Static).render())
        assert why.startswith(f"{listing.selected_key.split(':', 1)[1]} (local): expired: ")
        # A wrong word is refused; nothing deleted.
        await pilot.press(*"prun", "enter")
        await pilot.pause()
        assert app.screen is preview
        assert "That is not 'prune'" in str(preview.query_one("#dialog-error", Label).render())
        assert names_on_disk(workspace) == sorted(names)
        # The word: the prune job deletes exactly the listed copies, and the list is read again.
        await pilot.press("ctrl+u", *"prune", "enter")
        await pilot.pause()
        assert isinstance(app.screen, BrowserScreen)
        await app.workers.wait_for_complete()  # the job followed to its end
        await app.workers.wait_for_complete()  # the inventory read again
        await pilot.pause()
        assert names_on_disk(workspace) == expected_kept()
        assert app.screen.query_one("#backups", BackupList).row_count == KEPT
        assert any(f"prune: deleted {GONE} copies ({GONE} local, 0 in S3)" in n
                   for n in notices(app)), notices(app)
        # Nothing left to delete: a notice, no dialog.
        await pilot.press("p")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert isinstance(app.screen, BrowserScreen)
        assert any(n.startswith(f"Nothing to prune: the retention policy keeps all {KEPT}")
                   for n in notices(app)), notices(app)
    start, end = [e for e in audit(workspace) if e.get("operation") == "prune"]
    assert start["origin"] == end["origin"] == "tui"
    assert start["arguments"]["approved"] == GONE
    assert end["event"] == "end" and end["result"] == "ok"
    assert sorted(d["name"] for d in end["deleted"]) == gone and end["skipped"] == []


async def test_home_says_prune_is_overdue_for_a_history_past_the_policy(
        workspace: Workspace, golden: Golden, monkeypatch: pytest.MonkeyPatch) -> None:
    import tui.screens.home as home

    ninety(workspace, golden)
    size = golden.archive.stat().st_size
    app = make_app(settings_for(workspace), now=lambda: RETENTION_NOW)
    async with app.run_test(size=(80, 24)) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause()
        health = str(app.screen.query_one("#health", Static).render())
        assert f"Retention: prune overdue: {GONE} backup(s) ({human_size(GONE * size)}) past " \
               "the policy for over a day" in health, health
        assert "free space, settings" in health and "will not fit" not in health, health
    # Less free in BACKUP_DIR than the newest backup: the next one will not fit.
    usage = shutil.disk_usage(workspace.backup_dir)
    monkeypatch.setattr(home, "_disk_usage", lambda _path: (size, usage.total))
    app = make_app(settings_for(workspace), now=lambda: RETENTION_NOW)
    async with app.run_test(size=(80, 24)) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause()
        health = str(app.screen.query_one("#health", Static).render())
        assert f"Free space: the next backup will not fit: about {human_size(int(size * 1.1))} " \
               f"needed, {human_size(size)} free; pgrunbook prune would free " \
               f"{human_size(GONE * size)}" in health, health


async def test_home_and_browser_with_one_fresh_backup_have_nothing_to_prune(
        workspace: Workspace) -> None:
    name = json.loads(workspace.run("backup", "--json", check=True).stdout)["name"]
    app = make_app(settings_for(workspace))
    async with app.run_test(size=(80, 24)) as pilot:
        await app.workers.wait_for_complete()
        await pilot.pause()
        health = str(app.screen.query_one("#health", Static).render())
        assert "Newest backup: " in health and "drill results, retention, free space" in health, \
            health
        assert "will not fit" not in health
        await pilot.press("b")
        await app.workers.wait_for_complete()
        await pilot.pause()
        detail = str(app.screen.query_one("#detail", Static).render())
        assert f"{name}" in detail and "Retention: kept until " in detail, detail
        await pilot.press("p")
        await app.workers.wait_for_complete()
        await pilot.pause()
        assert isinstance(app.screen, BrowserScreen)
        assert "Nothing to prune: the retention policy keeps all 1 copies." in notices(app)
    assert [p.name for p in workspace.backup_dir.glob("*.backup")] == [f"{name}.backup"]


def test_the_retention_line_is_per_place_when_local_and_s3_are_planned_differently() -> None:
    from tests.test_retention import NINETY, entry
    from tui.core.retention import Policy, plan
    from tui.screens.browser import retention_lines

    history = [entry(t, location="both") for t in NINETY]
    p = plan(history, Policy(), RETENTION_NOW, s3_configured=True)
    weekly = next(e for e in history if e.name == "20250210_100000_manual")
    # S3 keeps the long horizon; the local copy goes after RETENTION_LOCAL_DAYS (30).
    assert retention_lines(p, None, weekly) == [
        "[b]Retention (local)[/b]: would be deleted by prune: expired: local copy kept 30 "
        "days (RETENTION_LOCAL_DAYS; S3 keeps the long horizon), until 2025-03-12; its S3 "
        "copy is complete",
        "[b]Retention (S3)[/b]: kept until 2025-05-05 (weekly slot 2025-W07)"]
    assert retention_lines(p, None, history[-1]) == [
        "[b]Retention (local)[/b]: kept until 2025-04-30 (local copy: kept 30 days "
        "(RETENTION_LOCAL_DAYS; S3 keeps the long horizon))",
        "[b]Retention (S3)[/b]: kept until 2025-06-23 (weekly slot 2025-W14)"]
    # One place (or both planned alike): one line.
    local = [entry(t) for t in NINETY]
    newest = local[-1]
    assert retention_lines(plan(local, Policy(), RETENTION_NOW, s3_configured=False), None,
                           newest) == [
        "[b]Retention[/b]: kept until 2025-06-23 (weekly slot 2025-W14)"]
    assert retention_lines(None, "RETENTION_MIN_KEEP=0 would let prune delete every backup.",
                           newest) == ["[b]Retention[/b]: unknown (RETENTION_MIN_KEEP=0 would "
                                       "let prune delete every backup.)"]
