"""The runbook runner: steps on the left with their state; the current step's text, checklist,
live output, progress and (after a restore) the verification table on the right."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.content import Content
from textual.widgets import (
    DataTable,
    Footer,
    Label,
    ListItem,
    ListView,
    Log,
    Markdown,
    ProgressBar,
    SelectionList,
    Static,
)
from textual.worker import Worker, WorkerState

from tui.core.errors import Interrupted, PgRunbookError
from tui.core.runbook import FAILED, RUNNING, RunbookRun
from tui.screens.modals import AskText, TeamUpdate, YesNo
from tui.screens.output import LOG_LINES, OperationScreen

if TYPE_CHECKING:
    from datetime import datetime

    from tui.app import PgRunbookApp
    from tui.core.verify import VerifyReport

ICONS = {"pending": "·", "running": "▶", "done": "✔", "failed": "✘", "skipped": "↷"}


class RunnerScreen(OperationScreen):
    AUTO_FOCUS = "#checklist"
    BINDINGS = [
        Binding("x", "run_step", "Run", id="runner-run", tooltip="Run this step's action"),
        Binding("n", "next_step", "Next", id="runner-next", tooltip="Go to the next step"),
        Binding("k", "skip_step", "Skip", id="runner-skip", tooltip="Skip this step (asks why)"),
        Binding("c", "cancel_op", "Cancel", id="runner-cancel",
                tooltip="Stop the running operation (asks first)"),
        Binding("l", "toggle_log", "Log", id="runner-log",
                tooltip="Show or fold the live output (it keeps every line while folded)"),
        Binding("u", "team_update", "Update", id="runner-update",
                tooltip="Send the team an update now, or edit its text first"),
        Binding("escape", "leave", "Back", id="runner-back", tooltip="Back to home"),
    ]
    # Below 100 columns a shown verification takes the step list's width (`app.tcss`).
    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (100, "-wide")]
    # The verification on screen: the step it belongs to, when that step's run started, and
    # the report. It is shown while that run of that step is the current one.
    _verification: tuple[int, datetime | None, VerifyReport] | None = None
    _verdict_failed = False  # the shown verdict is a failed step's
    # Team updates: their interval (None: INCIDENT_UPDATE_MINUTES is bad, said at mount), the
    # running operation's latest progress, and a post in flight.
    _every: Any = None
    _progress: Any = None
    _update_busy = False
    _log_hint = ""

    def __init__(self, run: RunbookRun, reason: str | None = None) -> None:
        super().__init__()
        self.run_state = run
        if reason is not None:
            run.reason = reason
        self._job: Any = None  # the job the running step follows

    @property
    def job_running(self) -> bool:
        """A step follows a job (which outlives this app)."""
        return self._job is not None

    @property
    def reason(self) -> str | None:
        return self.run_state.reason

    @property
    def restored(self) -> str | None:
        return self.run_state.restored

    # -- layout ----------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        from tui.screens.home import target_banner

        app: PgRunbookApp = self.app  # type: ignore[assignment]
        yield target_banner(app)
        with Horizontal(id="runner-body"):
            yield ListView(id="steps")
            with Vertical(id="step-pane"):
                yield Label("", id="step-title", classes="section")
                # Only the step's text and checklist scroll: its state, the verdict and the
                # counts stay in view (a verification shrinks this part, see `app.tcss`).
                with VerticalScroll(id="step-scroll"):
                    yield Markdown("", id="step-text")
                    yield SelectionList[int](id="checklist")
                yield Static("", id="step-status")
                yield ProgressBar(id="progress", show_eta=True)
                verdict = Static("", id="verdict")
                verdict.display = False  # until there is a verification
                yield verdict
                yield DataTable(id="counts", zebra_stripes=True)
                log = Log(id="output", max_lines=LOG_LINES)
                log.border_title = "output (l folds it)"
                yield log
                hint = Static("", id="log-hint")  # the folded log's one line
                hint.display = False
                yield hint
        yield Footer()

    def _verification_here(self) -> VerifyReport | None:
        """The shown verification if it is the current step's latest run's."""
        if self._verification is None:
            return None
        index, started, report = self._verification
        here = index == self.run_state.current and started == self.run_state.state.started
        return report if here else None

    def _set_verified(self, verified: bool) -> None:
        """The pane's two layouts. With a verification: the verdict and the counts take the
        room, the progress bar (done) goes and the log folds to one line; without: the step's
        text and the log."""
        self.set_class(verified, "verified")
        self.query_one("#verdict", Static).display = verified
        self.query_one("#counts", DataTable).display = verified
        if verified:
            self.query_one("#progress", ProgressBar).display = False
        self.show_log(not verified)

    def _follow_layout(self) -> None:
        """After the step or its state changed: a verification stays while it is the current
        step's latest run's, and its verdict follows the step (never PASS on a failed one)."""
        report = self._verification_here()
        failed = self.run_state.state.status == FAILED
        if report is not None and failed != self._verdict_failed:
            self._verdict_failed = failed
            self.show_verdict(report, failed=failed)
        elif report is None and self._verification is not None:  # next step, or run again
            self._verification = None
            self._set_verified(False)

    def show_verification(self, report: VerifyReport, *, failed: bool = False) -> None:
        st = self.run_state.state
        self._verification = (self.run_state.current, st.started, report)
        self._verdict_failed = failed or st.status == FAILED
        self._set_verified(True)
        super().show_verification(report, failed=self._verdict_failed)

    def show_log(self, shown: bool) -> None:
        """Show the log, or fold it to one line that says how to get it back and what it
        printed last. A folded log goes on receiving every line."""
        log = self.query_one("#output", Log)
        log.display = shown
        self.query_one("#log-hint", Static).display = not shown
        if shown:
            log.anchor()  # unfolded at its newest line, following (see `show_step`)
        else:
            self._update_log_hint()

    def action_toggle_log(self) -> None:
        self.show_log(not self.query_one("#output", Log).display)

    def _flush_log(self) -> None:
        super()._flush_log()
        if not self.query_one("#output", Log).display:
            self._update_log_hint()

    def _update_log_hint(self) -> None:
        log = self.query_one("#output", Log)
        last = log.lines[-1] if log.lines else "nothing yet"
        text = f"▸ output folded, l shows it ({log.line_count:,} lines); last: {last}"
        if text != self._log_hint:
            self._log_hint = text
            self.query_one("#log-hint", Static).update(Content(text))

    def on_mount(self) -> None:
        from tui.core.audit import AuditLog
        from tui.core.operation import secrets_of

        app: PgRunbookApp = self.app  # type: ignore[assignment]
        book = self.run_state.runbook
        run = self.run_state
        if run.audit_id is None:
            run.audit_id = AuditLog(app.settings.backup_dir, secrets_of(app.settings)).start(
                "runbook", target=app.settings.target.public(),
                arguments={"runbook": book.id, "name": book.name}, reason=self.reason,
                origin="tui").op_id
            run.target = app.settings.target.public()
        if run.selected_backup is None:
            run.selected_backup = app.selected_backup
        self.query_one("#counts", DataTable).add_columns("table", "expected", "actual", "diff",
                                                         "status")
        self.set_interval(0.1, self._flush_log)
        self._every = self._update_every()
        self.set_interval(1.0, self._tick_updates)
        # The step list is a display: keys go to the checklist and the bindings.
        self.query_one("#steps", ListView).can_focus = False
        self.query_one("#progress", ProgressBar).display = False  # until an operation reports
        self.query_one("#counts", DataTable).display = False  # until there is a verification
        self.render_steps()
        self.show_step()
        if run.state.status == RUNNING:  # a run reopened after a drop, at its running step
            self.resume_step()

    def save(self) -> None:
        """The run on disk after every change: it outlives this terminal."""
        from tui.core import runstate

        app: PgRunbookApp = self.app  # type: ignore[assignment]
        runstate.save(app.settings.backup_dir, self.run_state)

    # -- rendering -------------------------------------------------------------------------
    def render_steps(self) -> None:
        lv = self.query_one("#steps", ListView)
        lv.clear()
        for i, st in enumerate(self.run_state.states):
            mark = ">" if i == self.run_state.current else " "
            lv.append(ListItem(Label(f"{mark}{ICONS[st.status]} {st.step.title}"),
                               classes=st.status))
        lv.index = self.run_state.current
        self.save()

    def show_step(self) -> None:
        st = self.run_state.state
        step = st.step
        n = self.run_state.current + 1
        self.query_one("#step-title", Label).update(
            f"Step {n}/{len(self.run_state.states)}: {step.title}  [{step.kind}]")
        self.query_one("#step-text", Markdown).update(step.text or "")
        # The log's height follows the step's text (`app.tcss`), and a Log that is no longer
        # exactly at its end stops following: anchored, it stays at the newest line until
        # the operator scrolls up (and again once back at the bottom).
        self.query_one("#output", Log).anchor()
        checklist = self.query_one("#checklist", SelectionList)
        checklist.clear_options()
        for i, item in enumerate(step.items):
            checklist.add_option((item.text + ("" if item.required else "  (optional)"), i,
                                  i in st.ticked))
        checklist.display = bool(step.items)
        if step.items:
            checklist.highlighted = 0
            checklist.focus()
        self.update_status()

    def update_status(self, extra: str = "") -> None:
        st = self.run_state.state
        blocked = self.run_state.blocked_reason()
        parts = [f"state: {st.status}"]
        required = [i for i, item in enumerate(st.step.items) if item.required]
        if required:
            ticked = sum(1 for i in required if i in st.ticked)
            parts.append(f"{ticked}/{len(required)} required ticked")
        if st.reason:
            parts.append(f"skipped: {st.reason}")
        if st.detail:
            parts.append(st.detail)
        if blocked and st.status != RUNNING:
            parts.append(f"[yellow]{blocked}[/]")
        elif not blocked:
            parts.append("[green]n: next step[/]" if not self.run_state.complete
                         else "[green]runbook complete[/]")
        if extra:
            parts.append(extra)
        update = self.team_update_line()
        if update:
            parts.append(update)
        self.query_one("#step-status", Static).update("  ".join(parts))
        self._follow_layout()

    # -- keys ------------------------------------------------------------------------------
    @on(SelectionList.SelectedChanged, "#checklist")
    def _ticked(self, event: SelectionList.SelectedChanged[int]) -> None:
        self.run_state.state.ticked = set(event.selection_list.selected)
        self.save()
        self.update_status()

    def action_next_step(self) -> None:
        before = self.run_state.current
        if not self.run_state.advance():
            self.notify(self.run_state.blocked_reason() or "blocked", severity="warning")
            self.update_status()
            return
        if self.run_state.current == before and self.run_state.complete:
            self.finish_run()
        self.render_steps()
        self.show_step()

    def action_skip_step(self) -> None:
        def done(reason: str | None) -> None:
            if reason:
                self.run_state.skip(reason)
                self.render_steps()
                self.action_next_step()

        self.app.push_screen(AskText("Skip this step", "Why is it skipped? (recorded in the "
                                     "report)", placeholder="reason"), done)

    def action_cancel_op(self) -> None:
        workers = [w for w in self.workers if w.group == "step" and w.is_running]
        if not workers:
            self.notify("Nothing is running.")
            return

        def answer(yes: bool | None) -> None:
            if not yes:
                return
            if self._job is not None:  # the job stops and cleans up; the step follows it out
                self._job.cancel()
                self._write("stopping: the job cleans up and ends")
            else:
                for w in workers:
                    w.cancel()

        self.app.push_screen(YesNo("Stop the running operation? A restore stops part-way; "
                                   "the safety backup stays."), answer)

    def action_leave(self) -> None:
        if any(w.is_running for w in self.workers):
            self.notify("An operation is running: cancel it first (c).", severity="warning")
            return
        if not self.run_state.closed:
            path = self._close("abandoned", "left before the runbook's last step")
            self.notify(f"Runbook left part-way; report: {path}", timeout=6)
        self.app.pop_screen()

    def action_run_step(self) -> None:
        st = self.run_state.state
        if st.status in (RUNNING,):
            return
        if not self.run_state.has_action():
            self.notify("This step has no action: tick its items and press n.")
            return
        self.run_state.start()
        self._progress = None  # an earlier operation's, never this step's in an update
        self.render_steps()
        self.update_status()
        self.execute()

    # -- actions ---------------------------------------------------------------------------
    @work(exclusive=True, group="step", exit_on_error=False)
    async def execute(self) -> None:
        step = self.run_state.state.step
        handler = getattr(self, f"_do_{step.kind}")
        detail = await handler(step)
        self.run_state.finish(True, detail)

    @work(exclusive=True, group="step", exit_on_error=False)
    async def resume_step(self) -> None:
        """The step that was running when the app went away: follow its job to its end (or
        find how it ended), and record the outcome as if it had never been left."""
        from tui.core.jobs import JobNotFound, find_job

        app: PgRunbookApp = self.app  # type: ignore[assignment]
        st = self.run_state.state
        if st.job_id is None:
            raise PgRunbookError("the app closed while this step ran, before it started a job",
                                 "Run the step again (x).")
        try:
            job = find_job(app.settings.backup_dir, st.job_id)
        except JobNotFound:
            raise PgRunbookError(f"the step's job {st.job_id} is gone",
                                 "Check pgrunbook jobs and the audit trail, then run the step "
                                 "again or skip it.") from None
        self._write(f"reattached to job {job.id} ({job.state().status})")
        result = await self._follow(job)
        detail = self._after(st.step.kind, result)
        self.run_state.finish(True, detail)

    @on(Worker.StateChanged)
    def _worker_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group != "step":
            return
        if event.state == WorkerState.ERROR and isinstance(event.worker.error, Interrupted):
            self._write(f"cancelled by the operator: {event.worker.error.message}")
            self.run_state.finish(False, "cancelled by the operator")
        elif event.state == WorkerState.ERROR:
            err = event.worker.error
            text = (f"{err.message} {err.hint or ''}".strip() if isinstance(err, PgRunbookError)
                    else f"{err.__class__.__name__}: {err}")
            self._write(f"FAILED: {text}")
            self.run_state.finish(False, text)
        elif event.state == WorkerState.CANCELLED:
            self._write("cancelled by the operator")
            self.run_state.finish(False, "cancelled by the operator")
        elif event.state != WorkerState.SUCCESS:
            return
        self._job = None
        self.render_steps()
        self.update_status()

    def _backup_spec(self, wanted: str) -> str:
        app: PgRunbookApp = self.app  # type: ignore[assignment]
        selected = app.selected_backup or self.run_state.selected_backup
        self.run_state.selected_backup = selected
        if wanted == "selected" and selected:
            return selected
        return "latest"

    async def _do_confirm(self, step: Any) -> str:
        app: PgRunbookApp = self.app  # type: ignore[assignment]
        t = app.settings.target
        answer = await self.app.push_screen_wait(AskText(
            "Confirm the target",
            f"Type the database name of {t.name} ({t.describe()}) to confirm:",
            must_equal=t.dbname, danger=t.production, placeholder="database name"))
        if answer != t.dbname:
            raise PgRunbookError("not confirmed", "Run the step again to confirm.")
        return f"confirmed {t.dbname}"

    async def _start_job(self, operation: str, request: Any, arguments: dict[str, Any],
                         target: dict[str, Any] | None = None) -> Any:
        """Run an operation as a job (it outlives this app: an SSH drop does not stop it),
        remembered in the saved run, and follow it to its result."""
        import asyncio

        from tui.core import jobs

        app: PgRunbookApp = self.app  # type: ignore[assignment]
        job = await asyncio.to_thread(jobs.start, app.settings, operation, request,
                                      origin="tui", arguments=arguments, reason=self.reason,
                                      target=target)
        self.run_state.state.job_id = job.id
        self.save()
        self._write(f"job {job.id} started (it runs on if this terminal drops)")
        return await self._follow(job)

    async def _follow(self, job: Any) -> Any:
        from tui.core.jobs import follow_async

        self._job = job
        try:
            outcome = await follow_async(job, self.emit)
        finally:
            self._job = None
        return outcome.unwrap()

    def _after(self, kind: str, result: Any) -> str:
        """A step's result, shown and turned into its one-line outcome (or its failure)."""
        return {"backup": self._after_backup, "restore": self._after_restore,
                "verify": self._after_verify, "drill": self._after_drill}[kind](result)

    async def _do_backup(self, step: Any) -> str:
        from tui.core.backup import BackupRequest

        kind = step.options.get("backup_kind", "manual")
        request = BackupRequest(label=step.options.get("name"), kind=kind, reason=self.reason,
                                origin="tui")
        return self._after_backup(await self._start_job(
            "backup", request, {"kind": kind, "name": step.options.get("name")}))

    def _after_backup(self, result: Any) -> str:
        if result.name not in self.run_state.backups_taken:
            self.run_state.backups_taken.append(result.name)
        return f"{result.name}, {result.tables} tables, {result.rows:,} rows"

    async def _ask_restore(self, c: Any) -> str | None:
        t = c.target
        if c.typed_name_required:
            return await self.app.push_screen_wait(AskText(
                "Restore into PRODUCTION" if t.production else "Confirm the restore",
                f"Restore {c.backup} into {t.name} ({t.describe()}). Because {c.reason}, type "
                f"the database name:", must_equal=t.dbname, danger=True))
        yes = await self.app.push_screen_wait(YesNo(
            f"Restore {c.backup} into {t.name} ({t.describe()}), replacing its data?"))
        return "yes" if yes else None

    async def _do_restore(self, step: Any) -> str:
        import asyncio

        from tui.core.restore import (
            RestoreFailed,
            RestoreRequest,
            SessionsConnected,
            confirmation_needed,
            confirmed_request,
        )

        app: PgRunbookApp = self.app  # type: ignore[assignment]
        spec = self._backup_spec(step.options.get("backup", "latest"))
        # The run's own newest backup (the emergency one) stands as the safety backup when
        # nothing has been written since it; the engine decides and says which it did.
        taken = self.run_state.backups_taken
        request = RestoreRequest(backup=spec, reason=self.reason, origin="tui",
                                 safety_candidate=taken[-1] if taken else None)
        # Asked here, before the job: the job never waits for a terminal.
        confirmation = await asyncio.to_thread(confirmation_needed, app.settings, request)
        if confirmation is not None:
            request = confirmed_request(request, confirmation,
                                        await self._ask_restore(confirmation))
        try:
            result = await self._start_job("restore", request, {"backup": request.backup})
        except RestoreFailed as exc:
            if exc.result is not None and exc.result.verify is not None:
                self.show_verification(exc.result.verify)
            raise
        except SessionsConnected as exc:
            self._write(f"refused: {exc.message}")
            if not await self.app.push_screen_wait(YesNo(
                    f"{exc.message}\nEnd these sessions and restore? (put the application in "
                    "maintenance mode first)")):
                raise
            request = replace(request, terminate_connections=True)
            result = await self._start_job("restore", request, {"backup": request.backup})
        return self._after_restore(result)

    def _after_restore(self, result: Any) -> str:
        app: PgRunbookApp = self.app  # type: ignore[assignment]
        self.run_state.restored = result.backup
        app.last_restore = result
        if result.verify is not None:
            self.show_verification(result.verify)
        for text in result.warnings + result.gone:
            self._write(text)
        if not result.passed:
            what = ("objects outside the restored schemas were lost: " + "; ".join(result.gone)
                    if result.gone else "row counts differ after the restore")
            raise PgRunbookError(what, f"Undo with: {result.undo_command}"
                                 if result.undo_command else "Check the verification table.")
        warned = len(result.warnings) + len(result.filtered)
        return (f"restored {result.backup} in {result.restore_seconds:.1f} s; safety backup "
                f"{result.safety_backup or '-'}"
                + (f"; PASS with {warned} warning(s)" if warned else ""))

    async def _do_verify(self, step: Any) -> str:
        from tui.core.job_ops import VerifyRequest

        spec = self.restored or self._backup_spec("selected")
        return self._after_verify(await self._start_job(
            "verify", VerifyRequest(spec, origin="tui"), {"backup": spec}))

    def _after_verify(self, report: Any) -> str:
        self.show_verification(report)
        if not report.passed:
            raise PgRunbookError(f"{len(report.mismatches)} tables differ from "
                                 f"{report.backup}, {len(report.failures)} grants/RLS/sequence "
                                 "problems")
        return f"PASS against {report.backup}"

    async def _do_drill(self, step: Any) -> str:
        from tui.core.job_ops import DrillRequest

        spec = self._backup_spec(step.options.get("backup", "latest"))
        return self._after_drill(await self._start_job(
            "drill", DrillRequest(spec, origin="tui"), {"backup": spec},
            target={"name": "throwaway"}))

    def _after_drill(self, result: Any) -> str:
        if result.verify is not None:
            self.show_verification(result.verify)
        if not result.passed:
            raise PgRunbookError("the drill's counts differ", f"Report: {result.report_path}")
        return f"PASS in {result.restore_seconds:.1f} s; report {result.report_path}"

    async def _do_command(self, step: Any) -> str:
        from tui.core.actions import command_argv, run_command

        app: PgRunbookApp = self.app  # type: ignore[assignment]
        argv = command_argv(app.settings, step.options["command"])
        self._write(f"$ {' '.join(argv)}")
        code = await run_command(argv, self._write)
        if code != 0:
            raise PgRunbookError(f"{argv[0]} exited {code}", "See its output below.")
        return f"{argv[0]} exited 0"

    async def _do_http_check(self, step: Any) -> str:
        import asyncio

        from tui.core.actions import http_check

        app: PgRunbookApp = self.app  # type: ignore[assignment]
        url = app.settings.values.get("HEALTH_URL")
        if not url:
            raise PgRunbookError("no HEALTH_URL is configured", "Set it in .env.deployment.")
        text = await asyncio.to_thread(http_check, url, step.options.get("timeout", 10),
                                       step.options.get("retries", 3))
        self._write(text)
        return text

    async def _do_notify(self, step: Any) -> str:
        import asyncio

        from tui.core.actions import notify

        app: PgRunbookApp = self.app  # type: ignore[assignment]
        hook = app.settings.values.get("CHAT_WEBHOOK_URL")
        if not hook:
            raise PgRunbookError("no CHAT_WEBHOOK_URL is configured", "Set it, or skip the step.")
        impact = await self.app.push_screen_wait(AskText(
            "Notify the team", "Impact for users (one line):", placeholder="e.g. read-only 15 min"))
        t = app.settings.target
        text = (f"{step.options.get('message', self.run_state.runbook.name)} on {t.name} "
                f"({t.dbname}). Backup: {self.restored or self._backup_spec('selected')}. "
                f"Impact: {impact or 'not given'}. Runbook: {self.run_state.runbook.name}. "
                f"Reason: {self.reason or '-'}. ETA: see the incident channel.")
        await asyncio.to_thread(notify, hook, text)
        if impact and self.run_state.impact is None:
            self.run_state.impact = impact  # the team updates repeat it (`tui.core.incident`)
        return "posted to the chat webhook"

    async def _do_note(self, step: Any) -> str:
        return ""

    # -- team updates (tui.core.incident) -------------------------------------------------
    def _handle(self, event: Any) -> None:
        from tui.core.events import DumpProgress, Progress
        from tui.core.incident import OperationProgress

        if isinstance(event, Progress):
            self._progress = OperationProgress(event.phase, event.done, event.total,
                                               event.elapsed, event.unit)
        elif isinstance(event, DumpProgress):
            self._progress = OperationProgress("backup", event.bytes_written,
                                               event.expected_bytes, event.elapsed)
        super()._handle(event)

    def _update_every(self) -> Any:
        """INCIDENT_UPDATE_MINUTES, read once: a bad value is said, and no updates come."""
        from tui.core.errors import ConfigError
        from tui.core.incident import update_interval

        app: PgRunbookApp = self.app  # type: ignore[assignment]
        try:
            return update_interval(app.settings)
        except ConfigError as exc:
            self.notify(f"{exc.message} {exc.hint or ''}", severity="error", timeout=15)
            return None

    def team_update_line(self) -> str:
        """When the next team update is due, for the status line ("" before the first action
        and after the run)."""
        from tui.core.incident import next_due

        app: PgRunbookApp = self.app  # type: ignore[assignment]
        due = next_due(self.run_state, self._every) if self._every is not None else None
        if due is None:
            return ""
        late = app.now() >= due
        when = due.strftime("%H:%M")
        return (f"[b yellow]team update due since {when} UTC (u)[/]" if late
                else f"next team update {when} UTC (u: now)")

    def _tick_updates(self) -> None:
        """Every second: a team update that has come due is posted, or without a chat webhook
        the operator is reminded with its text (once per interval either way)."""
        from tui.core.incident import next_due, update_text

        app: PgRunbookApp = self.app  # type: ignore[assignment]
        due = next_due(self.run_state, self._every) if self._every is not None else None
        if due is None or self._update_busy or app.now() < due:
            return
        text = update_text(self.run_state, self.run_state.target, self._progress, app.now(),
                           self._every)
        if app.settings.values.get("CHAT_WEBHOOK_URL"):
            self._send_update(text)
        else:
            self._remind(text)

    def _record_update(self, text: str, posted: bool, line: str) -> None:
        """An update sent or shown: in the saved run, the output (`line`) and the status."""
        from tui.core.incident import record_update

        app: PgRunbookApp = self.app  # type: ignore[assignment]
        record_update(self.run_state, app.now(), text, posted=posted)
        self.save()
        self._write(line)
        self.update_status()

    def _remind(self, text: str) -> None:
        self._record_update(text, False,
                            f"TEAM UPDATE DUE (no chat webhook; post it in #incidents): {text}")
        self.notify("Team update due: no chat webhook is set, so post it yourself. The text is "
                    "in the output; u opens it to edit and copy.", severity="warning",
                    timeout=30)

    def _send_update(self, text: str) -> None:
        """Post `text` in a worker; the cadence waits while a post is in flight (never two at
        once, and none cancelled: each one the operator sent arrives)."""
        self._update_busy = True
        self._post_update(text)

    @work(group="team-update", exit_on_error=False)
    async def _post_update(self, text: str) -> None:
        import asyncio

        from tui.core.actions import notify

        app: PgRunbookApp = self.app  # type: ignore[assignment]
        try:
            await asyncio.to_thread(notify, str(app.settings.values["CHAT_WEBHOOK_URL"]), text)
        except PgRunbookError as exc:
            # Counted as shown, so the next try waits an interval: the text is in the output.
            self._record_update(text, False, f"team update NOT posted: {exc.message} Post it "
                                             f"yourself: {text}")
            self.notify(f"Team update not posted: {exc.message}", severity="error", timeout=15)
        else:
            self._record_update(text, True, f"team update posted: {text}")
        finally:
            self._update_busy = False

    def action_team_update(self) -> None:
        """u: the update's text to edit, then posted now (or, without a webhook, shown to copy
        and counted as sent)."""
        from tui.core.incident import update_text

        app: PgRunbookApp = self.app  # type: ignore[assignment]
        if self._every is None:
            self._update_every()  # says again why there are no updates
            return
        text = update_text(self.run_state, self.run_state.target, self._progress, app.now(),
                           self._every)
        webhook = bool(app.settings.values.get("CHAT_WEBHOOK_URL"))

        def answer(edited: str | None) -> None:
            if not edited:
                return
            if webhook:
                self._send_update(edited)
                return
            self._record_update(edited, False, f"team update (copy it to #incidents): {edited}")

        self.app.push_screen(TeamUpdate(text, webhook=webhook), answer)

    _do_checklist = _do_note

    # -- end -------------------------------------------------------------------------------
    def finish_run(self) -> None:
        path = self._close("ok")
        self._write(f"runbook complete; report: {path}")
        self.notify(f"Runbook complete. Report: {path}", timeout=10)

    def _close(self, result: str, error: str | None = None) -> Path | None:
        """Write the run's Markdown report and end its audit record (once): every run has
        both, whether it completed, was left part-way or the app was quit."""
        from tui.core import runstate

        app: PgRunbookApp = self.app  # type: ignore[assignment]
        return runstate.close(app.settings, self.run_state, result, error,
                              runstate.verification_section(app.last_restore),
                              restore_result=app.last_restore)

    def on_unmount(self) -> None:
        if self.run_state.closed:
            return
        if self._job is not None:  # the job runs on: the run stays open, to be resumed
            self.save()
            return
        self._close("abandoned", "the app was closed before the runbook's last step")
