"""What a running operation shows, shared by the runbook runner and the job viewer: its output
lines (batched into a `Log`, #output), its progress bar (#progress), and after a verification
the verdict (#verdict) and the per-table counts (#counts). The screen provides those widgets and
an `update_status(text)`."""

from __future__ import annotations

import threading
from collections import deque

from textual.content import Content
from textual.screen import Screen
from textual.widgets import DataTable, Log, ProgressBar, Static

from tui.core.events import (
    DumpProgress,
    Event,
    Notice,
    PhaseStarted,
    Progress,
    RestoreLine,
    TableChecked,
    ToolOutput,
)
from tui.core.verify import CountRow, VerifyReport

LOG_LINES = 5000
# Application state failures named in the verdict itself; the rest are in the log.
VERDICT_FAILURES = 3


def review_order(report: VerifyReport) -> list[tuple[str | None, CountRow]]:
    """The rows as an operator reads them, each with its row label: the tables that differ
    ("✘"), then the SOP's key tables ("key"), then the rest by name."""
    differing = report.mismatches
    seen = {(r.schema, r.table) for r in differing}
    key = [r for r in report.key_tables if (r.schema, r.table) not in seen]
    seen |= {(r.schema, r.table) for r in key}
    rest = [r for r in report.ordered() if (r.schema, r.table) not in seen]
    return ([("✘", r) for r in differing] + [("key", r) for r in key]
            + [(None, r) for r in rest])


def verdict_text(report: VerifyReport, *, failed: bool = False) -> tuple[Content, bool]:
    """The verdict's lines and whether it is a pass. It says only what the report holds: PASS
    only when every count matches and no grant, RLS or sequence check failed, and never when
    the operation itself `failed`. The failures are named under it."""
    n = len(report.rows)
    warned = f"; {len(report.warnings)} warnings in the log" if report.warnings else ""
    problems = f"{len(report.failures)} grants/RLS/sequence problems"
    if report.passed and not failed:
        rows = sum(r.expected for r in report.rows)
        checked = ("not recorded by this backup, not compared" if report.differences is None
                   else f"compared, no problems{warned}")
        return Content(f" VERIFICATION PASS: {n:,} tables, {rows:,} rows, all counts match \n"
                       f"   grants, RLS, sequences: {checked} "), True
    if report.passed:
        head = f"Row counts match in all {n:,} tables, but the step FAILED: see its status"
    elif not report.mismatches:
        head = f"VERIFICATION FAIL: all {n:,} tables' counts match, but {problems}"
    else:
        also = f", {problems}" if report.failures else ""
        head = f"VERIFICATION FAIL: {len(report.mismatches):,} of {n:,} tables differ{also}"
    lines = [f" {head}{warned} "]
    lines += [f" ✘ {d.kind}: {d.detail} " for d in report.failures[:VERDICT_FAILURES]]
    if len(report.failures) > VERDICT_FAILURES:
        lines.append(f"   and {len(report.failures) - VERDICT_FAILURES} more in the log ")
    return Content("\n".join(lines)), False


class OperationScreen(Screen[None]):
    """A screen that shows an operation: `emit` is an engine `Emit`, safe from any thread."""

    def __init__(self) -> None:
        super().__init__()
        # Lines waiting for the next flush; never more than the Log keeps anyway.
        self._pending: deque[str] = deque(maxlen=LOG_LINES)
        self._lock = threading.Lock()

    def update_status(self, extra: str = "") -> None:
        raise NotImplementedError

    def show_verification(self, report: VerifyReport, *, failed: bool = False) -> None:
        """The verdict, then the counts in the order an operator reads them (`review_order`).
        `failed`: the operation failed although the report may pass (pg_restore's errors, lost
        objects): the verdict then never says PASS."""
        table = self.query_one("#counts", DataTable)
        table.display = True
        table.clear()
        for label, r in review_order(report):
            actual = "missing" if r.actual is None else f"{r.actual:,}"
            diff = "" if r.difference is None else f"{r.difference:+,}"
            status = r.status.upper()
            style = "" if r.status == "ok" else "[b red]"
            table.add_row(f"{style}{r.schema}.{r.table}", f"{r.expected:,}", actual, diff,
                          f"{style}{status}", label=label)
        table.move_cursor(row=0, column=0, animate=False)
        table.scroll_home(animate=False)
        for d in report.failures + report.warnings:
            self._write(f"verify: {d.describe()}")
        self.show_verdict(report, failed=failed)

    def show_verdict(self, report: VerifyReport, *, failed: bool = False) -> None:
        text, passed = verdict_text(report, failed=failed)
        verdict = self.query_one("#verdict", Static)
        verdict.update(text)
        verdict.set_classes("pass" if passed else "fail")

    # -- events from the engine --------------------------------------------------------------
    def emit(self, event: Event) -> None:
        """The engine's Emit: safe from the event loop and from worker threads.

        Output lines only join the pending batch (under a lock, from any thread): the 0.1 s
        flush writes them, so a flood of pg_restore output costs the event loop one Log write
        per flush and never more than the Log's own line limit in memory. Other events update
        widgets, on the event loop."""
        if isinstance(event, RestoreLine | ToolOutput):
            with self._lock:
                self._pending.append(event.describe())
            return
        app = self.app
        if threading.get_ident() != app._thread_id:
            app.call_from_thread(self._handle, event)
        else:
            self._handle(event)

    def _handle(self, event: Event) -> None:
        if isinstance(event, RestoreLine | ToolOutput | Notice | TableChecked):
            self._write(event.describe())
        elif isinstance(event, PhaseStarted):
            self._write(f"== {event.describe()}")
            self.update_status(f"{event.phase}…")
        elif isinstance(event, DumpProgress):
            bar = self.query_one("#progress", ProgressBar)
            bar.display = True
            bar.update(total=event.expected_bytes or None, progress=event.bytes_written)
        elif isinstance(event, Progress):
            bar = self.query_one("#progress", ProgressBar)
            bar.display = True
            bar.update(total=event.total or None, progress=event.done)

    def _write(self, line: str) -> None:
        with self._lock:
            self._pending.append(line)

    def _flush_log(self) -> None:
        with self._lock:
            if not self._pending:
                return
            batch = list(self._pending)
            self._pending.clear()
        log = self.query_one("#output", Log)
        log.write_lines(batch)
        log.refresh()  # a full Log stops repainting without it (Textual 8.2.8)

