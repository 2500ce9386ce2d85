"""One job followed from the TUI (from the home screen's job line): what it printed so far,
then live, and its outcome with the verification table. Leaving the screen only stops
following: the job runs on. Several terminals can follow one job (a second pair of eyes)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical, VerticalScroll
from textual.widgets import DataTable, Footer, Label, Log, ProgressBar, Static
from textual.worker import Worker, WorkerState

from tui.core.errors import PgRunbookError
from tui.screens.modals import YesNo
from tui.screens.output import LOG_LINES, OperationScreen

if TYPE_CHECKING:
    from tui.app import PgRunbookApp


class JobScreen(OperationScreen):
    BINDINGS = [
        Binding("c", "cancel_job", "Stop job", id="job-cancel",
                tooltip="Stop the job (it cleans up; asks first)"),
        Binding("escape", "leave", "Back", id="job-back",
                tooltip="Back to home (the job runs on)"),
    ]

    def __init__(self, job: Any) -> None:
        super().__init__()
        self.job = job

    def compose(self) -> ComposeResult:
        from tui.screens.home import target_banner

        app: PgRunbookApp = self.app  # type: ignore[assignment]
        state = self.job.state()
        who = state.operator.get("user", "?")
        yield target_banner(app)
        with Vertical(id="job-body"):
            yield Label(f"Job {self.job.id}: {state.operation} by {who}, started "
                        f"{state.started_at[:19].replace('T', ' ')} UTC", classes="section")
            with VerticalScroll(id="job-scroll"):
                yield Static("", id="step-status")
                yield ProgressBar(id="progress", show_eta=True)
                yield Static("", id="verdict")
                yield DataTable(id="counts", zebra_stripes=True)
            yield Log(id="output", max_lines=LOG_LINES)
        yield Footer()

    def on_mount(self) -> None:
        self.query_one("#counts", DataTable).add_columns("table", "expected", "actual", "diff",
                                                         "status")
        self.query_one("#progress", ProgressBar).display = False
        self.query_one("#counts", DataTable).display = False
        self.set_interval(0.1, self._flush_log)
        self.update_status(self.job.state().status)
        self.follow()

    def update_status(self, extra: str = "") -> None:
        self.query_one("#step-status", Static).update(extra)

    @work(exclusive=True, group="job", exit_on_error=False)
    async def follow(self) -> None:
        from tui.core.jobs import follow_async

        outcome = await follow_async(self.job, self.emit)
        self.update_status(f"{outcome.status}: {self.job.state().summary or ''}")
        result = outcome.unwrap()
        report = getattr(result, "verify", None) or (
            result if hasattr(result, "mismatches") else None)
        if report is not None:
            # A restore that lost objects outside its schemas failed whatever the counts say.
            self.show_verification(report, failed=report is not result and not result.passed)

    @on(Worker.StateChanged)
    def _ended(self, event: Worker.StateChanged) -> None:
        if event.worker.group == "job" and event.state == WorkerState.ERROR:
            err = event.worker.error
            result = getattr(err, "result", None)
            if result is not None and getattr(result, "verify", None) is not None:
                self.show_verification(result.verify, failed=True)  # the operation failed
            text = (f"{err.message} {err.hint or ''}".strip() if isinstance(err, PgRunbookError)
                    else f"{err.__class__.__name__}: {err}")
            self._write(f"FAILED: {text}")
            self.update_status(f"[b red]failed[/]: {text}")

    def action_cancel_job(self) -> None:
        if self.job.state().finished:
            self.notify("The job has ended.")
            return

        def answer(yes: bool | None) -> None:
            if yes and self.job.cancel():
                self._write("stopping: the job cleans up and ends")

        self.app.push_screen(YesNo(f"Stop job {self.job.id}? A restore stops part-way; the "
                                   "safety backup stays."), answer)

    def action_leave(self) -> None:
        self.app.pop_screen()
