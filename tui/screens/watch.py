"""Watch mode (`pgrunbook tui --watch`, and what `pgrunbook serve` shows): the newest open
runbook run on the target, read-only, for the incident lead looking over the operator's
shoulder. Its steps with their state, time and note; the current step; the live output and
progress of the job the run most recently started (followed from its journal, the next one
picked up when it starts). The run is read again when its saved file changes.

Nothing here acts: the screen has no bindings of its own, and the app in watch mode refuses
every app action but quitting and the (read-only) history (`PgRunbookApp.check_action`)."""

from __future__ import annotations

from datetime import datetime
from typing import TYPE_CHECKING

from textual import on, work
from textual.app import ComposeResult
from textual.markup import escape
from textual.widgets import Footer, Label, Log, ProgressBar, Static
from textual.worker import Worker, WorkerState

from tui.core.errors import PgRunbookError
from tui.core.runbook import RUNNING, RunbookRun
from tui.core.runwatch import RunWatcher
from tui.screens.output import LOG_LINES, OperationScreen
from tui.screens.runner import ICONS

if TYPE_CHECKING:
    from tui.app import PgRunbookApp

POLL_SECONDS = 1.0  # how often the saved run is looked at (two stat calls when unchanged)
STATUS_STYLE = {"done": "$success", "failed": "$error", "skipped": "$warning",
                "running": "$accent", "pending": ""}


def _seconds(value: float | None) -> str:
    if value is None:
        return ""
    return f"{value:.0f} s" if value < 600 else f"{value / 60:.0f} min"


def _fit(text: str, width: int) -> str:
    return text if len(text) <= width else text[:max(0, width - 1)] + "…"


def step_lines(run: RunbookRun, now: datetime, width: int) -> list[str]:
    """One line per step, fitted to `width`: ">" at the current one, the runner's symbol,
    title, state, time, and the skip reason or the outcome (markup, the words escaped)."""
    title_w = min(32, max(len(st.step.title) for st in run.states))
    lines = []
    for i, st in enumerate(run.states):
        seconds = st.duration
        if seconds is None and st.status == RUNNING and st.started is not None:
            seconds = max(0.0, (now - st.started).total_seconds())
        here = ">" if i == run.current and not run.closed else " "
        icon = ICONS[st.status]
        style = STATUS_STYLE.get(st.status, "")
        left = f"{_fit(st.step.title, title_w):<{title_w}} {st.status:<8} {_seconds(seconds):>6}"
        note = _fit(st.reason or st.detail or "", width - len(left) - 5)
        mark = f"[{style}]{icon}[/]" if style else icon
        lines.append(f"{here}{mark} {escape(left)}  {escape(note)}".rstrip())
    return lines


class WatchScreen(OperationScreen):
    """The run as the operator's app last saved it; no key here changes anything."""

    def __init__(self) -> None:
        super().__init__()
        self._watcher: RunWatcher | None = None
        self._job_id: str | None = None  # the job whose output the log shows
        self._phase = ""

    @property
    def pg_app(self) -> PgRunbookApp:
        return self.app  # type: ignore[return-value]

    def compose(self) -> ComposeResult:
        from tui.screens.home import target_banner

        yield target_banner(self.pg_app)
        yield Label("", id="watch-title", classes="section")
        yield Static("", id="watch-meta")
        yield Static("", id="watch-steps")
        yield Static("", id="watch-current")
        yield ProgressBar(id="progress", show_eta=True)
        yield Log(id="output", max_lines=LOG_LINES)
        yield Footer()

    def on_mount(self) -> None:
        app = self.pg_app
        self._watcher = RunWatcher(app.settings.backup_dir, app.runbooks,
                                   app.settings.target.public())
        self.query_one("#progress", ProgressBar).display = False
        self.set_interval(0.1, self._flush_log)
        self.set_interval(POLL_SECONDS, self.look)
        self.look()
        if self._job_id is None:
            self._write("(the output of the job a step runs shows here)")

    def on_resize(self) -> None:
        self.show_run()

    @property
    def run(self) -> RunbookRun | None:
        return self._watcher.run if self._watcher is not None else None

    # -- reading the saved run ---------------------------------------------------------------
    def look(self) -> None:
        """Read the run again if its file changed; keep a running step's time going."""
        assert self._watcher is not None
        if self._watcher.poll():
            self.show_run()
            job_id = self._watcher.job_id()
            if job_id is not None and job_id != self._job_id:
                self._job_id = job_id
                self.follow(job_id)
        elif self.run is not None and self.run.state.status == RUNNING:
            self.show_run()

    def show_run(self) -> None:
        run = self.run
        title = self.query_one("#watch-title", Label)
        meta = self.query_one("#watch-meta", Static)
        steps = self.query_one("#watch-steps", Static)
        steps.display = run is not None
        if run is None:
            t = self.pg_app.settings.target
            title.update(escape(f"Watching (read-only): no runbook run is open on {t.name}"))
            meta.update("Waiting for one: this screen follows it as soon as it starts.")
            self.query_one("#watch-current", Static).update("")
            return
        state = "closed" if run.closed else "open"
        title.update(escape(f"Watching (read-only): {run.runbook.name} ({state})"))
        who = (run.target or {}).get("name", "?")
        meta.update(escape(f"started {run.started:%Y-%m-%d %H:%M} UTC on {who}; reason: "
                           f"{run.reason or '-'}"))
        steps.update("\n".join(step_lines(run, self.pg_app.now(), self.size.width or 80)))
        self.update_status()

    def update_status(self, extra: str = "") -> None:
        """The current step in one line (and the job's phase, as its events tell it)."""
        if extra:
            self._phase = extra
        run = self.run
        line = self.query_one("#watch-current", Static)
        if run is None:
            line.update("")
            return
        if run.closed:
            outcome = "complete" if run.complete else "not complete"
            line.update(escape(f"The run is closed ({outcome}); report: "
                               f"{run.report_path or '-'}"))
            return
        st = run.state
        text = (f"Step {run.current + 1}/{len(run.states)}: {st.step.title} [{st.step.kind}]: "
                f"{st.status}")
        if st.status == RUNNING and self._phase:
            text += f", {self._phase}"
        line.update(escape(text))

    # -- the job the run started -------------------------------------------------------------
    @work(exclusive=True, group="watch-job", exit_on_error=False)
    async def follow(self, job_id: str) -> None:
        """The job's output from its start, then live, to its end. A newer job replaces this
        follower (exclusive); cancelling it only stops reading: the job runs on."""
        import asyncio

        from tui.core.jobs import JobNotFound, find_job, follow_async

        with self._lock:  # lines of the job followed before, not flushed yet, go too
            self._pending.clear()
        self.query_one("#output", Log).clear()
        self.query_one("#progress", ProgressBar).display = False
        self._phase = ""
        try:
            job = await asyncio.to_thread(find_job, self.pg_app.settings.backup_dir, job_id)
        except JobNotFound:
            self._write(f"job {job_id} is not in {self.pg_app.settings.backup_dir}/jobs")
            return
        state = job.state()
        who = state.operator.get("user", "?")
        self._write(f"job {job.id}: {state.operation} by {who}, started "
                    f"{state.started_at[:19].replace('T', ' ')} UTC")
        outcome = await follow_async(job, self.emit)
        self._phase = ""
        self._write(f"job ended: {outcome.status}: {job.state().summary or ''}".rstrip(": "))
        self.update_status()

    @on(Worker.StateChanged)
    def _follow_failed(self, event: Worker.StateChanged) -> None:
        if event.worker.group == "watch-job" and event.state == WorkerState.ERROR:
            err = event.worker.error
            text = (err.message if isinstance(err, PgRunbookError)
                    else f"{err.__class__.__name__}: {err}")
            self._write(f"cannot follow the job: {text}")
