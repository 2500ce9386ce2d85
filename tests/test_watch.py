"""Watch mode (`pgrunbook tui --watch`) with Pilot: the newest open run, read-only, followed
through its saved file and its jobs' journals, with no key able to change anything."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from textual.pilot import Pilot
from textual.widgets import Label, Log, Static

from tests.conftest import Server, Workspace, clean_env
from tui.app import PgRunbookApp, make_app
from tui.core import runstate
from tui.core.runbook import RunbookRun, load_runbooks
from tui.core.settings import Settings, load_settings
from tui.screens.watch import WatchScreen


def offline_settings(tmp_path: Path) -> Settings:
    """Settings whose target nobody listens on: watch mode never connects to it."""
    env = tmp_path / ".env.deployment"
    env.write_text("SUPABASE_DB_HOST=127.0.0.1\nSUPABASE_DB_PORT=1\nSUPABASE_DB_NAME=appdb\n"
                   "SUPABASE_DB_USER=postgres\nSUPABASE_DB_PASSWORD=not-used\n"
                   f"PGRUNBOOK_DEFAULT_TARGET=staging\nBACKUP_DIR={tmp_path / 'backups'}\n")
    env.chmod(0o600)
    return load_settings(env_file=env, environ=clean_env())


def open_run(settings: Settings, runbook: str = "standard-restore") -> RunbookRun:
    """A run as the operator's app saves it: the checklist passed, the next step running."""
    book = next(b for b in load_runbooks() if b.id == runbook)
    run = RunbookRun(book, reason="INC-7: bad migration", target=settings.target.public())
    run.state.ticked = {i for i, item in enumerate(run.state.step.items) if item.required}
    assert run.advance()
    run.start()
    runstate.save(settings.backup_dir, run)
    return run


def text(app: PgRunbookApp, selector: str) -> str:
    return str(app.screen.query_one(selector).render())


def log_lines(app: PgRunbookApp) -> list[str]:
    return list(app.screen.query_one("#output", Log).lines)


async def until(pilot: Pilot[None], condition: Callable[[], Any], what: str,
                timeout: float = 10.0) -> None:
    """Let the app run until `condition()` holds (never a fixed sleep)."""
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await pilot.pause(0.05)


def tree(directory: Path) -> dict[str, tuple[int, int]]:
    """Every file under `directory`: (mtime_ns, size)."""
    found = {}
    for root, _dirs, files in os.walk(directory):
        for name in files:
            st = os.stat(Path(root) / name)
            found[str(Path(root) / name)] = (st.st_mtime_ns, st.st_size)
    return found


async def test_watch_shows_the_open_run_follows_its_file_and_no_key_acts(tmp_path: Path) -> None:
    settings = offline_settings(tmp_path)
    run = open_run(settings)
    app = make_app(settings, watch=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await until(pilot, lambda: "Restore " in text(app, "#watch-steps"), "the steps")
        assert isinstance(app.screen, WatchScreen)
        title = str(app.screen.query_one("#watch-title", Label).render())
        assert title == "Watching (read-only): Standard restore (open)", title
        assert "reason: INC-7: bad migration" in text(app, "#watch-meta")
        steps = text(app, "#watch-steps").splitlines()
        assert [line[:2] for line in steps] == [" ✔", ">▶", " ·", " ·"], steps
        assert "Pre-restore checklist" in steps[0] and "done" in steps[0]
        assert "Restore" in steps[1] and "running" in steps[1]
        assert text(app, "#watch-current").startswith("Step 2/4: Restore [restore]: running")
        shown = set(app.screen.active_bindings)
        assert {"q", "h"} <= shown and not shown & {"b", "r", "question_mark", "x", "n"}, shown

        # The runner's keys (run, next, skip, cancel, tick), the browser's (restore, drill,
        # prune), the home screen's and the palette: nothing opens, nothing is written.
        before = tree(settings.backup_dir)
        for key in ("x", "n", "k", "s", "c", "space", "enter", "d", "p", "f", "v", "j",
                    "b", "r", "question_mark", "ctrl+p", "escape", "tab", "enter"):
            await pilot.press(key)
            await pilot.pause()
            assert isinstance(app.screen, WatchScreen) and len(app.screen_stack) == 2, key
        await pilot.pause(0.2)
        assert tree(settings.backup_dir) == before
        app.start_runbook("standard-restore")  # the command palette's way in, refused
        await pilot.pause()
        assert isinstance(app.screen, WatchScreen)

        # The operator's app finishes the step and moves on: the screen follows, no key pressed.
        run.finish(True, "restored 20261201_120000_manual in 3.2 s")
        assert run.advance()
        runstate.save(settings.backup_dir, run)
        await until(pilot, lambda: "restored 20261201" in text(app, "#watch-steps"),
                    "the saved change")
        steps = text(app, "#watch-steps").splitlines()
        assert [line[:2] for line in steps] == [" ✔", " ✔", ">·", " ·"], steps
        assert text(app, "#watch-current").startswith("Step 3/4: Post-restore verification")

        # Closed (the report written): it stays in view, closed, until another run opens.
        runstate.close(settings, run, "abandoned", "left part-way")
        await until(pilot, lambda: "(closed)" in str(app.screen.query_one("#watch-title",
                                                                          Label).render()),
                    "the run closed")
        assert "The run is closed (not complete); report: " in text(app, "#watch-current")
        open_run(settings, "pre-migration-backup")
        await until(pilot, lambda: "Pre-migration backup (open)" in str(
            app.screen.query_one("#watch-title", Label).render()), "the next run")
        assert "Take the pre-migration backup" in text(app, "#watch-steps")
        await pilot.press("h")  # the audit trail, read-only, may be looked at
        assert app.screen.__class__.__name__ == "HistoryScreen"
        await pilot.press("escape")
        assert isinstance(app.screen, WatchScreen)
        await pilot.press("q")


async def test_watch_without_an_open_run_says_so_and_waits_for_one(tmp_path: Path) -> None:
    settings = offline_settings(tmp_path)
    app = make_app(settings, watch=True)
    async with app.run_test(size=(80, 24)) as pilot:
        await pilot.pause()
        title = str(app.screen.query_one("#watch-title", Label).render())
        assert title == "Watching (read-only): no runbook run is open on staging", title
        assert not app.screen.query_one("#watch-steps", Static).display
        assert not settings.backup_dir.exists()  # watching wrote nothing, not even a directory
        open_run(settings)
        await until(pilot, lambda: "Standard restore (open)" in str(
            app.screen.query_one("#watch-title", Label).render()), "the run to open")


async def test_watch_follows_the_running_steps_job_live_then_the_next_one(
        workspace: Workspace, server: Server) -> None:
    """A backup job blocked on a table lock: the watcher shows its output while it runs, then
    its end; the step run again (a new job) replaces the output with the new job's."""
    from tui.core import jobs
    from tui.core.backup import BackupRequest

    workspace.write_env()
    settings = load_settings(env_file=workspace.env_file, environ=clean_env())
    run = open_run(settings, "pre-migration-backup")
    locker = server.connect(workspace.dbname, autocommit=False)
    try:
        locker.execute("LOCK TABLE public.actor IN ACCESS EXCLUSIVE MODE")
        job = jobs.start(settings, "backup", BackupRequest(label="first", origin="tui"),
                         origin="tui", arguments={"name": "first"})
        run.state.job_id = job.id
        runstate.save(settings.backup_dir, run)
        app = make_app(settings, watch=True)
        async with app.run_test(size=(80, 24)) as pilot:
            await until(pilot, lambda: any(line.startswith("== dumping")
                                           for line in log_lines(app)), "the job's output", 60)
            assert log_lines(app)[0].startswith(f"job {job.id}: backup by ")
            assert not any(line.startswith("job ended") for line in log_lines(app))
            assert "dumping" in text(app, "#watch-current")  # the job's phase, live
            locker.rollback()  # pg_dump gets its lock and finishes
            await until(pilot, lambda: any(line.startswith("job ended: ok")
                                           for line in log_lines(app)), "the job's end", 60)
            second = jobs.start(settings, "backup", BackupRequest(label="second",
                                                                  origin="tui"),
                                origin="tui", arguments={"name": "second"})
            run.state.job_id = second.id  # the operator ran the step again
            runstate.save(settings.backup_dir, run)
            await until(pilot, lambda: log_lines(app)[:1] and log_lines(app)[0].startswith(
                f"job {second.id}:"), "the next job", 10)
            await until(pilot, lambda: any(line.startswith("job ended: ok")
                                           for line in log_lines(app)), "its end", 60)
            assert not any(job.id in line for line in log_lines(app))
    finally:
        locker.close()
