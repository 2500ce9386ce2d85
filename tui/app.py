"""The runbook TUI: a thin Textual face over the engine in `tui.core`."""

from __future__ import annotations

import gc
import threading
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from functools import partial

from textual.app import App
from textual.binding import Binding
from textual.command import Hit, Hits, Provider

from tui.core.inventory import BackupEntry, merged_inventory
from tui.core.runbook import Runbook, RunbookRun, load_runbooks
from tui.core.s3 import s3_config
from tui.core.settings import Settings
from tui.screens.browser import BrowserScreen, HistoryScreen
from tui.screens.help import HelpScreen
from tui.screens.home import HomeScreen
from tui.screens.modals import AskText
from tui.screens.runner import RunnerScreen

MIN_SIZE = (80, 24)
INVENTORY_TTL = 30.0  # seconds before the screens list the S3 bucket again
# The app's actions watch mode allows: quitting, the audit trail (read-only) and moving focus.
WATCH_ACTIONS = frozenset({"quit_app", "quit", "help_quit", "history", "pop_screen",
                           "focus_next", "focus_previous"})


class RunbookCommands(Provider):
    """Runbooks and the main screens in the command palette."""

    async def search(self, query: str) -> Hits:
        app: PgRunbookApp = self.app  # type: ignore[assignment]
        matcher = self.matcher(query)
        entries: list[tuple[str, Callable[[], object], str]] = [
            (f"Runbook: {b.name}", partial(app.start_runbook, b.id), b.description)
            for b in app.runbooks
        ]
        entries += [("Backup browser", app.action_browser, "every backup, local and S3"),
                    ("History", app.action_history, "the audit trail")]
        for title, callback, help_text in entries:
            score = matcher.match(title)
            if score > 0:
                yield Hit(score, matcher.highlight(title), callback, help=help_text)


class PgRunbookApp(App[None]):
    CSS_PATH = "app.tcss"
    TITLE = "pgrunbook"
    COMMANDS = App.COMMANDS | {RunbookCommands}
    BINDINGS = [
        Binding("b", "browser", "Backups", id="go-browser", tooltip="Backup browser"),
        Binding("r", "home", "Runbooks", id="go-home", tooltip="Home and runbooks"),
        Binding("h", "history", "History", id="go-history", tooltip="Audit trail"),
        Binding("question_mark", "help", "Help", id="help", tooltip="Keys"),
        Binding("q", "quit_app", "Quit", id="quit", tooltip="Quit pgrunbook"),
    ]

    def __init__(self, settings: Settings, *, now: Callable[[], datetime] | None = None,
                 runbooks: Iterable[Runbook] | None = None, watch: bool = False) -> None:
        super().__init__()
        self.settings = settings
        # Watch mode (`tui --watch`, `serve`): the running runbook, read-only (WatchScreen).
        self.watch_only = watch
        if watch:
            self.use_command_palette = False  # it starts runbooks
        self._now = now or (lambda: datetime.now(UTC))
        user_dir = settings.values.get("RUNBOOK_DIR")
        from pathlib import Path

        self.runbooks = list(runbooks) if runbooks is not None else load_runbooks(
            Path(user_dir) if user_dir else None)
        self.selected_backup: str | None = None
        self._inventory_lock = threading.Lock()
        self._inventory_cache: tuple[int | None, float, list[BackupEntry]] | None = None
        self.s3_error: str | None = None  # why the last S3 listing failed
        self.last_restore = None

    def now(self) -> datetime:
        return self._now()

    def inventory(self) -> list[BackupEntry]:
        """The merged inventory, shared by the screens: read again when the backup directory
        changed (every backup, download, drill or deletion creates or renames a file in it)
        and, with S3 configured, after INVENTORY_TTL seconds (the bucket can change from
        elsewhere). Safe from worker threads."""
        import time

        try:
            stamp: int | None = self.settings.backup_dir.stat().st_mtime_ns
        except OSError:
            stamp = None
        s3 = s3_config(self.settings)
        with self._inventory_lock:
            cached = self._inventory_cache
            if cached and cached[0] == stamp and (
                    s3 is None or time.monotonic() - cached[1] < INVENTORY_TTL):
                return cached[2]
        try:
            entries = merged_inventory(self.settings.backup_dir, s3)
            self.s3_error = None
        except Exception as exc:  # S3 down: show local, say why
            from tui.core.inventory import list_backups
            from tui.core.s3 import describe_error

            self.s3_error = describe_error(exc)
            self.notify(f"S3 unavailable: {self.s3_error}", severity="warning")
            entries = list_backups(self.settings.backup_dir)
        with self._inventory_lock:
            self._inventory_cache = (stamp, time.monotonic(), entries)
        # Thousands of metadata dicts would otherwise be walked by every full garbage
        # collection (150 ms with 10,000 backups, felt as a stuck key): they hold no cycles
        # and go by reference counting when the next inventory replaces them.
        gc.freeze()
        return entries

    def s3_where(self) -> str | None:
        """s3://bucket/prefix when S3 is configured."""
        s3 = s3_config(self.settings)
        return f"s3://{s3.bucket}/{s3.prefix}" if s3 else None

    def forget_inventory(self) -> None:
        with self._inventory_lock:
            self._inventory_cache = None

    def on_mount(self) -> None:
        if self.watch_only:
            from tui.screens.watch import WatchScreen

            self.push_screen(WatchScreen())
        else:
            self.push_screen(HomeScreen())
        for warning in self.settings.warnings:  # e.g. the environment moved the target
            self.notify(warning, severity="warning", timeout=30)
        if not self.watch_only:  # a watcher neither resumes nor closes the operator's run
            self.offer_unfinished_run()

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """In watch mode only the app's actions on this list run (and show in the footer):
        a key added to the app later stays refused there until someone decides otherwise."""
        return not self.watch_only or action in WATCH_ACTIONS

    def offer_unfinished_run(self) -> None:
        """A run the app went away with (an SSH drop, a killed terminal): resume it at its
        step, with the running step's job followed again, or close it with its report."""
        from tui.core import runstate
        from tui.core.reconcile import reconcile
        from tui.screens.modals import YesNo

        reconcile(self.settings.backup_dir)  # jobs that died with it are told as such
        runs = runstate.unfinished(self.settings.backup_dir, self.runbooks,
                                   self.settings.target.public())
        if not runs:
            return
        run = runs[0]
        st = run.state
        running = f", whose job {st.job_id} was running" if st.job_id and st.status == \
            "running" else ""

        def answer(resume: bool | None) -> None:
            if resume:
                self.push_screen(RunnerScreen(run))
                return
            path = runstate.close(self.settings, run, "abandoned",
                                  "the terminal went away and the run was not resumed")
            self.notify(f"Closed the run; its report: {path}", timeout=10)

        self.push_screen(YesNo(
            f"{run.runbook.name} was left unfinished (started "
            f"{run.started.strftime('%Y-%m-%d %H:%M')} UTC, reason: {run.reason or '-'}), at "
            f"step {run.current + 1}: {st.step.title}{running}.\nResume it there? "
            "(No closes it and writes its report.)"), answer)

    def watch_app_focus(self, focus: bool) -> None:
        """Textual skips a screen's AUTO_FOCUS while the terminal is unfocused and, on focus
        coming back, restores only a widget of the screen that was showing at the blur. A dialog
        that opened while the operator was in another window would then get no focus, and what
        they type would be lost or taken as app keys. Focus it as the terminal comes back (the
        first key press counts), before that key is delivered."""
        screen = self.screen
        if not focus or screen.focused is not None:
            return
        selector = screen.AUTO_FOCUS if screen.AUTO_FOCUS is not None else self.AUTO_FOCUS
        if not selector:
            return
        for widget in screen.query(selector):
            if widget.focusable:
                screen.set_focus(widget)
                return

    def action_browser(self) -> None:
        self.push_screen(BrowserScreen())

    def action_history(self) -> None:
        self.push_screen(HistoryScreen())

    def action_home(self) -> None:
        while len(self.screen_stack) > 2 and not isinstance(self.screen, RunnerScreen):
            self.pop_screen()

    def action_help(self) -> None:
        if isinstance(self.screen, HelpScreen):
            return
        if not self.is_screen_installed("help"):
            self.install_screen(HelpScreen(), "help")  # built once, reused
        self.push_screen("help")

    def action_quit_app(self) -> None:
        screen = self.screen
        if isinstance(screen, RunnerScreen) and any(w.is_running for w in screen.workers):
            if not screen.job_running:
                self.notify("An operation is running: cancel it first (c).",
                            severity="warning")
                return
            from tui.screens.modals import YesNo

            def answer(yes: bool | None) -> None:
                if yes:
                    self.exit()

            self.push_screen(YesNo("Quit while the job runs? It runs on to its end; open "
                                   "pgrunbook again to resume this runbook at its step."),
                             answer)
            return
        self.exit()

    def start_runbook(self, runbook_id: str) -> None:
        if self.watch_only:
            self.notify("Watch-only: runbooks are run from the operator's pgrunbook.")
            return
        book = next((b for b in self.runbooks if b.id == runbook_id), None)
        if book is None:
            self.notify(f"no runbook {runbook_id!r}", severity="error")
            return
        run = RunbookRun(book)
        needs_reason = any(s.kind in ("restore", "backup") for s in book.steps)
        if not needs_reason:
            self.push_screen(RunnerScreen(run, None))
            return

        def go(reason: str | None) -> None:
            if reason:
                self.push_screen(RunnerScreen(run, reason))

        self.push_screen(AskText(book.name, "Why? (the justification, recorded in the audit "
                                 "trail and the report)", placeholder="e.g. INC-123: bad migration"),
                         go)


def make_app(settings: Settings, **kwargs: object) -> PgRunbookApp:
    """One factory for `pgrunbook`, the demo and the tests."""
    return PgRunbookApp(settings, **kwargs)  # type: ignore[arg-type]
