"""The runbook runner: steps on the left with their state; the current step's text, checklist,
live output, progress and (after a restore) the verification table on the right."""

from __future__ import annotations

import threading
from collections import deque
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical, VerticalScroll
from textual.screen import Screen
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

from tui.core.errors import PgRunbookError
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
from tui.core.runbook import RUNNING, RunbookRun
from tui.core.verify import VerifyReport
from tui.screens.modals import AskText, YesNo

if TYPE_CHECKING:
    from tui.app import PgRunbookApp

ICONS = {"pending": "·", "running": "▶", "done": "✔", "failed": "✘", "skipped": "↷"}
LOG_LINES = 5000


class RunnerScreen(Screen[None]):
    AUTO_FOCUS = "#checklist"
    BINDINGS = [
        Binding("x", "run_step", "Run step", id="runner-run", tooltip="Run this step's action"),
        Binding("n", "next_step", "Next", id="runner-next", tooltip="Go to the next step"),
        Binding("k", "skip_step", "Skip", id="runner-skip", tooltip="Skip this step (asks why)"),
        Binding("c", "cancel_op", "Cancel op", id="runner-cancel",
                tooltip="Stop the running operation (asks first)"),
        Binding("escape", "leave", "Back", id="runner-back", tooltip="Back to home"),
    ]

    def __init__(self, run: RunbookRun, reason: str | None) -> None:
        super().__init__()
        self.run_state = run
        self.reason = reason
        self.restored: str | None = None
        # Lines waiting for the next flush; never more than the Log keeps anyway.
        self._pending: deque[str] = deque(maxlen=LOG_LINES)
        self._lock = threading.Lock()
        self._run_closed = False
        self._report_path: Path | None = None

    # -- layout ----------------------------------------------------------------------------
    def compose(self) -> ComposeResult:
        from tui.screens.home import target_banner

        app: PgRunbookApp = self.app  # type: ignore[assignment]
        yield target_banner(app)
        with Horizontal(id="runner-body"):
            yield ListView(id="steps")
            with Vertical(id="step-pane"):
                yield Label("", id="step-title", classes="section")
                with VerticalScroll(id="step-scroll"):
                    yield Markdown("", id="step-text")
                    yield SelectionList[int](id="checklist")
                    yield Static("", id="step-status")
                    yield ProgressBar(id="progress", show_eta=True)
                    yield Static("", id="verdict")
                    yield DataTable(id="counts", zebra_stripes=True)
                yield Log(id="output", max_lines=LOG_LINES)
        yield Footer()

    def on_mount(self) -> None:
        from tui.core.audit import AuditLog
        from tui.core.backup import secrets_of

        app: PgRunbookApp = self.app  # type: ignore[assignment]
        book = self.run_state.runbook
        self._audit = AuditLog(app.settings.backup_dir, secrets_of(app.settings)).start(
            "runbook", target=app.settings.target.public(),
            arguments={"runbook": book.id, "name": book.name}, reason=self.reason, origin="tui")
        self.query_one("#counts", DataTable).add_columns("table", "expected", "actual", "diff",
                                                         "status")
        self.set_interval(0.1, self._flush_log)
        # The step list is a display: keys go to the checklist and the bindings.
        self.query_one("#steps", ListView).can_focus = False
        self.query_one("#progress", ProgressBar).display = False  # until an operation reports
        self.query_one("#counts", DataTable).display = False  # until there is a verification
        self.render_steps()
        self.show_step()

    # -- rendering -------------------------------------------------------------------------
    def render_steps(self) -> None:
        lv = self.query_one("#steps", ListView)
        lv.clear()
        for i, st in enumerate(self.run_state.states):
            mark = ">" if i == self.run_state.current else " "
            lv.append(ListItem(Label(f"{mark}{ICONS[st.status]} {st.step.title}"),
                               classes=st.status))
        lv.index = self.run_state.current

    def show_step(self) -> None:
        st = self.run_state.state
        step = st.step
        n = self.run_state.current + 1
        self.query_one("#step-title", Label).update(
            f"Step {n}/{len(self.run_state.states)}: {step.title}  [{step.kind}]")
        self.query_one("#step-text", Markdown).update(step.text or "")
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
        self.query_one("#step-status", Static).update("  ".join(parts))

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
                self._pending.append(event.line)
            return
        app = self.app
        if threading.get_ident() != app._thread_id:
            app.call_from_thread(self._handle, event)
        else:
            self._handle(event)

    def _handle(self, event: Event) -> None:
        if isinstance(event, RestoreLine | ToolOutput):
            self._write(event.line)
        elif isinstance(event, PhaseStarted):
            self._write(f"== {event.phase} {event.detail}")
            self.update_status(f"{event.phase}…")
        elif isinstance(event, Notice):
            self._write(f"{event.level}: {event.message}")
        elif isinstance(event, TableChecked):
            self._write(f"verify: {event.describe()}")
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

    # -- keys ------------------------------------------------------------------------------
    @on(SelectionList.SelectedChanged, "#checklist")
    def _ticked(self, event: SelectionList.SelectedChanged[int]) -> None:
        self.run_state.state.ticked = set(event.selection_list.selected)
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
            if yes:
                for w in workers:
                    w.cancel()

        self.app.push_screen(YesNo("Stop the running operation? A restore stops part-way; "
                                   "the safety backup stays."), answer)

    def action_leave(self) -> None:
        if any(w.is_running for w in self.workers):
            self.notify("An operation is running: cancel it first (c).", severity="warning")
            return
        if not self._run_closed:
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

    @on(Worker.StateChanged)
    def _worker_changed(self, event: Worker.StateChanged) -> None:
        if event.worker.group != "step":
            return
        if event.state == WorkerState.ERROR:
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
        self.render_steps()
        self.update_status()

    def _backup_spec(self, wanted: str) -> str:
        app: PgRunbookApp = self.app  # type: ignore[assignment]
        if wanted == "selected" and app.selected_backup:
            return app.selected_backup
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

    async def _do_backup(self, step: Any) -> str:
        from tui.core.backup import BackupRequest, run_backup

        app: PgRunbookApp = self.app  # type: ignore[assignment]
        kind = step.options.get("backup_kind", "manual")
        result = await run_backup(app.settings, BackupRequest(
            label=step.options.get("name"), kind=kind, reason=self.reason, origin="tui"),
            self.emit)
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
        from tui.core.restore import (
            RestoreFailed,
            RestoreRequest,
            SessionsConnected,
            run_restore,
        )

        app: PgRunbookApp = self.app  # type: ignore[assignment]
        spec = self._backup_spec(step.options.get("backup", "latest"))
        request = RestoreRequest(backup=spec, reason=self.reason, origin="tui")
        try:
            result = await run_restore(app.settings, request, self.emit, ask=self._ask_restore)
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
            request = RestoreRequest(backup=spec, reason=self.reason, origin="tui",
                                     terminate_connections=True)
            result = await run_restore(app.settings, request, self.emit, ask=self._ask_restore)
        self.restored = result.backup
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
        import asyncio

        from tui.core.restore import resolve_backup
        from tui.core.verify import run_verify

        app: PgRunbookApp = self.app  # type: ignore[assignment]
        spec = self.restored or self._backup_spec("selected")
        entry = await asyncio.to_thread(resolve_backup, app.settings, spec)
        if entry.meta is None:
            raise PgRunbookError(f"backup {entry.name} has no metadata to compare with")
        report = await asyncio.to_thread(run_verify, app.settings, entry.meta, emit=self.emit,
                                         origin="tui")
        self.show_verification(report)
        if not report.passed:
            raise PgRunbookError(f"{len(report.mismatches)} tables differ from {entry.name}, "
                                 f"{len(report.failures)} grants/RLS/sequence problems")
        return f"PASS against {entry.name}"

    async def _do_drill(self, step: Any) -> str:
        from tui.core.drill import run_drill

        app: PgRunbookApp = self.app  # type: ignore[assignment]
        result = await run_drill(app.settings, self._backup_spec(step.options.get("backup",
                                                                                  "latest")),
                                 emit=self.emit, origin="tui")
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
        return "posted to the chat webhook"

    async def _do_note(self, step: Any) -> str:
        return ""

    _do_checklist = _do_note

    # -- end -------------------------------------------------------------------------------
    def finish_run(self) -> None:
        path = self._close("ok")
        self._write(f"runbook complete; report: {path}")
        self.notify(f"Runbook complete. Report: {path}", timeout=10)

    def _close(self, result: str, error: str | None = None) -> Path | None:
        """Write the run's Markdown report and end its audit record (once): every run has
        both, whether it completed, was left part-way or the app was quit."""
        from tui.core.drill import reports_dir
        from tui.core.fsutil import atomic_write_bytes, ensure_private_dir

        if self._run_closed:
            return self._report_path
        self._run_closed = True
        app: PgRunbookApp = self.app  # type: ignore[assignment]
        extra = ""
        if app.last_restore is not None and app.last_restore.verify is not None:
            v = app.last_restore.verify
            extra = (f"## Verification: {'PASS' if v.passed else 'FAIL'}\n\n"
                     f"Time to restore: {app.last_restore.restore_seconds:.1f} s\n\n"
                     "| table | expected | actual |\n| --- | ---: | ---: |\n" +
                     "\n".join(f"| {r.schema}.{r.table} | {r.expected} | {r.actual} |"
                               for r in v.ordered()) +
                     "".join(f"\n\n{d.describe()}" if i == 0 else f"\n{d.describe()}"
                             for i, d in enumerate(v.failures + v.warnings)))
        directory = ensure_private_dir(reports_dir(app.settings))
        stamp = datetime.now(UTC).strftime("%Y%m%d_%H%M%S")
        path = directory / f"runbook_{stamp}_{self.run_state.runbook.id}.md"
        text = self.run_state.report(extra) + (f"\nReason: {self.reason}\n" if self.reason
                                               else "")
        atomic_write_bytes(path, text.encode())
        self._report_path = path
        self._audit.finish(result, error, report=str(path), steps=[
            {"id": st.step.id, "status": st.status, **({"reason": st.reason} if st.reason else {})}
            for st in self.run_state.states])
        return path

    def on_unmount(self) -> None:
        if not self._run_closed:
            self._close("abandoned", "the app was closed before the runbook's last step")


