"""The runner at 80x24 once a step shows a verification (issue 15, item 5): the verdict, the
tables that differ and then the SOP's key tables are on screen without scrolling, and the log
folds and unfolds with `l` without losing a line. No database: the report is built here and
handed to the screen the way a step's action hands it over."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

from textual.geometry import Region
from textual.widgets import DataTable, ListView, Log, Static

from tui.app import make_app
from tui.core.appstate import AppDifference
from tui.core.runbook import DONE, RunbookRun, load_runbook, load_runbooks
from tui.core.settings import load_settings
from tui.core.verify import KEY_TABLES, CountRow, VerifyReport
from tui.screens.runner import RunnerScreen

NOW = datetime(2026, 11, 24, 12, 0, tzinfo=UTC)
BACKUP = "20261124_060000_manual"


def verification_report(passed: bool) -> VerifyReport:
    """A Supabase-shaped verification: 30 ordinary tables, the SOP's three key tables and,
    when it fails, one table with rows gone, one missing, and a lost grant."""
    rows = [CountRow("public", f"audit_{i:02}", 1_000 * i, 1_000 * i) for i in range(1, 31)]
    rows += [CountRow("auth", "users", 1_482, 1_482),
             CountRow("public", "transactions", 1_234_567, 1_234_567),
             CountRow("public", "vendors", 312, 312)]
    differences: list[AppDifference] = []
    if not passed:
        rows += [CountRow("public", "payments", 48_210, 47_002),
                 CountRow("public", "refunds", 950, None)]
        differences = [AppDifference("grants", "public.vendors",
                                     "anon lost SELECT on public.vendors", "fail")]
    rows.sort(key=lambda r: (r.schema, r.table))
    return VerifyReport(BACKUP, {"name": "production"}, rows,
                        key_tables=[r for r in rows if (r.schema, r.table) in KEY_TABLES],
                        differences=differences)


def emergency_run() -> RunbookRun:
    """The emergency runbook at its verify step, every step before it done."""
    book = next(b for b in load_runbooks() if b.id == "emergency-restore")
    run = RunbookRun(book, reason="INC-42 bad delete")
    run.current = next(i for i, st in enumerate(run.states) if st.step.kind == "verify")
    for st in run.states[:run.current]:
        st.status = DONE
    return run


async def show_verify_result(pilot, report: VerifyReport) -> RunnerScreen:  # type: ignore[no-untyped-def]
    """Open the runner on `emergency_run()` and run its verify step to `report`, the way
    `_after_verify` ends it: the verification shown, then the step done or failed."""
    await pilot.app.workers.wait_for_complete()
    runner = RunnerScreen(emergency_run())
    await pilot.app.push_screen(runner)
    await pilot.pause()
    runner._write("job 20261124_120000 started (it runs on if this terminal drops)")
    runner.run_state.start()
    runner.run_state.state.started = NOW  # the status line's times follow the frozen clock
    runner.update_status()
    runner.show_verification(report)
    runner.run_state.finish(report.passed, f"PASS against {BACKUP}" if report.passed else
                            f"{len(report.mismatches)} tables differ from {BACKUP}, "
                            f"{len(report.failures)} grants/RLS/sequence problems")
    runner.update_status()
    runner._flush_log()
    await pilot.pause()
    return runner


def make(tmp_path: Path):  # type: ignore[no-untyped-def]
    (tmp_path / "backups").mkdir(mode=0o700, exist_ok=True)
    settings = load_settings(environ={
        "SUPABASE_DB_HOST": "db.example.supabase.co", "SUPABASE_DB_PORT": "5432",
        "PGRUNBOOK_DEFAULT_TARGET": "production", "BACKUP_DIR": str(tmp_path / "backups"),
    }, cwd=tmp_path)
    return make_app(settings, now=lambda: NOW)


def on_screen(region: Region, size: tuple[int, int]) -> bool:
    """Wholly inside the screen, above the footer's row."""
    width, height = size
    return region.height > 0 and Region(0, 0, width, height - 1).contains_region(region)


async def test_a_failed_verification_shows_verdict_differing_then_key_tables_at_80x24(
        tmp_path: Path) -> None:
    app = make(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        runner = await show_verify_result(pilot, verification_report(passed=False))
        size = (app.size.width, app.size.height)
        verdict = runner.query_one("#verdict", Static)
        text = str(verdict.render())
        assert verdict.has_class("fail") and on_screen(verdict.region, size)
        assert "VERIFICATION FAIL: 2 of 35 tables differ, 1 grants/RLS/sequence" in text, text
        assert "✘ grants: anon lost SELECT on public.vendors" in text, text
        assert "PASS" not in text
        status = runner.query_one("#step-status", Static)
        assert on_screen(status.region, size) and "state: failed" in str(status.render())
        # The rows: differing first, then the key tables, then the rest by name.
        table = runner.query_one("#counts", DataTable)
        names = [str(table.get_row_at(i)[0]).removeprefix("[b red]") for i in range(6)]
        assert names == ["public.payments", "public.refunds", "auth.users",
                         "public.transactions", "public.vendors", "public.audit_01"], names
        assert [str(table.get_row_at(i)[4]) for i in range(2)] == ["[b red]DIFFERS",
                                                                    "[b red]MISSING"]
        # All five of them on screen without scrolling, and every column in the width.
        assert on_screen(table.region, size) and table.scroll_offset == (0, 0)
        assert table.content_region.height - table.header_height >= 5
        assert table.max_scroll_x == 0, (table.virtual_size, table.content_region)
        assert not runner.query_one("#steps", ListView).display  # its width went to the table
        # The log is folded to one line, which says how to unfold it.
        log = runner.query_one("#output", Log)
        hint = runner.query_one("#log-hint", Static)
        assert not log.display and on_screen(hint.region, size)
        assert "l shows it" in str(hint.render())


async def test_a_passed_verification_and_a_step_that_failed_anyway(tmp_path: Path) -> None:
    app = make(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        report = verification_report(passed=True)
        runner = await show_verify_result(pilot, report)
        verdict = runner.query_one("#verdict", Static)
        text = str(verdict.render())
        assert verdict.has_class("pass"), text
        assert "VERIFICATION PASS: 33 tables, 1,701,361 rows, all counts match" in text, text
        assert "grants, RLS, sequences: compared, no problems" in text, text
        table = runner.query_one("#counts", DataTable)
        assert [str(table.get_row_at(i)[0]) for i in range(3)] == [
            "auth.users", "public.transactions", "public.vendors"]
        # A restore whose counts match but whose pg_restore failed: the step fails after the
        # verification was shown, and the verdict must not say PASS any longer.
        runner.run_state.finish(False, "pg_restore: 3 errors")
        runner.update_status()
        await pilot.pause()
        text = str(verdict.render())
        assert "PASS" not in text and "but the step FAILED" in text and verdict.has_class("fail")
        # Run again: the old verification goes and the log comes back.
        runner.run_state.start()
        runner.update_status()
        await pilot.pause()
        assert not verdict.display and not table.display
        assert runner.query_one("#output", Log).display


async def test_the_log_folds_and_unfolds_with_l_and_keeps_its_lines(tmp_path: Path) -> None:
    app = make(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        runner = await show_verify_result(pilot, verification_report(passed=False))
        log = runner.query_one("#output", Log)
        hint = runner.query_one("#log-hint", Static)
        assert not log.display and hint.display  # folded by the verification
        runner._write("written while folded")
        runner._flush_log()
        await pilot.pause()
        assert log.lines[-1] == "written while folded"
        assert "last: written while folded" in str(hint.render())
        await pilot.press("l")
        await pilot.pause()
        assert log.display and not hint.display
        assert on_screen(log.region, (80, 24)) and log.is_vertical_scroll_end
        assert "job 20261124_120000 started" in log.lines[0]
        # The verdict and the first rows stay in view with the log open.
        assert on_screen(runner.query_one("#verdict").region, (80, 24))
        assert on_screen(runner.query_one("#counts").region, (80, 24))
        await pilot.press("l")
        await pilot.pause()
        assert not log.display and hint.display
        # The next step has no verification: its text and the log are back.
        runner.run_state.current += 1
        runner.show_step()
        await pilot.pause()
        assert log.display and not runner.query_one("#counts").display
        assert runner.query_one("#steps", ListView).display
        # The key is in the footer, within the 80 columns.
        key = next(k for k in runner.query("FooterKey") if getattr(k, "action", "") ==
                   "toggle_log")
        assert getattr(key, "description", "") == "Log"
        assert key.region.height == 1 and Region(0, 23, 80, 1).contains_region(key.region)


TWO_NOTES = '''\
name = "Two notes"
description = "A step of one line, then one of many: the log's height changes between them."

[[steps]]
id = "short"
kind = "note"
title = "Short"
text = "One line."

[[steps]]
id = "long"
kind = "note"
title = "Long"
text = """
First paragraph, long enough to wrap over more than one line of the step pane at 80 columns.

Second paragraph, as long again, so that the text takes several more lines than the first.

Third paragraph.
"""
'''


async def test_the_log_follows_its_newest_line_when_the_next_steps_text_is_taller(
        tmp_path: Path) -> None:
    """The log takes the height the step's text leaves; a `Log` that is not exactly at its
    end stops following, so a taller text on the next step must not strand it mid-way (the
    tmux walk caught this: the smoke test's "answered 200" never showed)."""
    (tmp_path / "two.toml").write_text(TWO_NOTES)
    app = make(tmp_path)
    async with app.run_test(size=(80, 24)) as pilot:
        await app.workers.wait_for_complete()
        runner = RunnerScreen(RunbookRun(load_runbook(tmp_path / "two.toml")))
        await app.push_screen(runner)
        await pilot.pause()
        log = runner.query_one("#output", Log)
        for i in range(60):
            runner._write(f"first step, line {i} " + "x" * 70)
        runner._flush_log()
        await pilot.pause()
        before = log.size.height
        runner.run_state.current = 1
        runner.show_step()
        for _ in range(10):  # the Markdown renders in the background
            await pilot.pause(0.05)
        assert log.size.height < before, (before, log.size)
        runner._write("the newest line")
        runner._flush_log()
        await pilot.pause()
        assert log.is_vertical_scroll_end, (log.scroll_y, log.max_scroll_y)
        assert log.lines[-1] == "the newest line"
