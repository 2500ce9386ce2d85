"""What a running operation shows, shared by the runbook runner and the job viewer: its output
lines (batched into a `Log`, #output), its progress bar (#progress), and after a verification
the verdict (#verdict) and the per-table counts (#counts). The screen provides those widgets and
an `update_status(text)`."""

from __future__ import annotations

import threading
from collections import deque

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
from tui.core.verify import VerifyReport

LOG_LINES = 5000


class OperationScreen(Screen[None]):
    """A screen that shows an operation: `emit` is an engine `Emit`, safe from any thread."""

    def __init__(self) -> None:
        super().__init__()
        # Lines waiting for the next flush; never more than the Log keeps anyway.
        self._pending: deque[str] = deque(maxlen=LOG_LINES)
        self._lock = threading.Lock()

    def update_status(self, extra: str = "") -> None:
        raise NotImplementedError

    def show_verification(self, report: VerifyReport) -> None:
        table = self.query_one("#counts", DataTable)
        table.display = True
        table.clear()
        for r in report.ordered():
            actual = "missing" if r.actual is None else f"{r.actual:,}"
            diff = "" if r.difference is None else f"{r.difference:+,}"
            status = r.status.upper()
            style = "" if r.status == "ok" else "[b red]"
            table.add_row(f"{style}{r.schema}.{r.table}", f"{r.expected:,}", actual, diff,
                          f"{style}{status}")
        for d in report.failures + report.warnings:
            self._write(f"verify: {d.describe()}")
        verdict = self.query_one("#verdict", Static)
        warned = f", {len(report.warnings)} warnings" if report.warnings else ""
        if report.passed:
            verdict.update(f" VERIFICATION PASS — {len(report.rows)} tables, every row is back"
                           f"{warned} ")
            verdict.set_classes("pass")
        elif not report.mismatches:
            verdict.update(f" VERIFICATION FAIL — every row is back, {len(report.failures)} "
                           f"grants/RLS/sequence problems (see the log){warned} ")
            verdict.set_classes("fail")
        else:
            verdict.update(f" VERIFICATION FAIL — {len(report.mismatches)} of "
                           f"{len(report.rows)} tables differ{warned} ")
            verdict.set_classes("fail")

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

