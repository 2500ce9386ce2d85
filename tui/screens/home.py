"""Home: the target (production unmistakable), the newest backups, health, and the runbooks."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.markup import escape
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Label, ListItem, ListView, Static

from tui.core.fmt import short_age, size
from tui.core.health import Report
from tui.core.inventory import BackupEntry

if TYPE_CHECKING:
    from tui.app import PgRunbookApp


def target_banner(app: PgRunbookApp) -> Static:
    t = app.settings.target
    moved = "  (endpoint from the environment)" if t.overridden else ""
    if t.production:
        text = (f" PRODUCTION  {t.name}  {t.host}:{t.port}/{t.dbname}{moved}  "
                "— changes here affect live users ")
        return Static(text, id="banner", classes="production")
    return Static(f" target {t.name}  {t.host}:{t.port}/{t.dbname}{moved} ", id="banner")


# How each state looks on the home screen; the words are the engine's (tui.core.health).
_MARKS = {"OK": "[green]✔[/]", "WARNING": "[b yellow]![/]", "CRITICAL": "[b red]✖[/]",
          "UNKNOWN": "[b magenta]?[/]"}


def _disk_usage(path: Path) -> tuple[int, int] | None:
    """(free, total) bytes of BACKUP_DIR's file system (a seam for the snapshot tests)."""
    from tui.core.health import disk_usage

    return disk_usage(path)


def health_report(app: PgRunbookApp, entries: list[BackupEntry]) -> Report:
    """The same checks as `pgrunbook health`, over the inventory the screen already read.
    Reads the audit trail's tail and the disk: for the inventory worker."""
    from tui.core.health import evaluate, running_backup

    return evaluate(app.settings, entries, now=app.now(),
                    s3_configured=app.s3_where() is not None, s3_error=app.s3_error,
                    disk=_disk_usage, running_backup=running_backup(app.settings))


def health_lines(report: Report, entries: Sequence[BackupEntry]) -> list[str]:
    """The checks as `pgrunbook health` words them, fitted to 80x24: every check that is not OK
    in full, the worst first, and the newest backup's age whatever its state; the other OK
    checks by name on one line; then the totals."""
    shown = [c for c in report.checks if c.state.name != "OK" or c.id == "backup_age"]
    shown.sort(key=lambda c: -c.state.rank)
    lines = [f"{_MARKS[c.state.name]} {escape(c.line())}" for c in shown]
    rest = [c.title.lower() for c in report.checks if c not in shown]
    if rest:
        lines.append(f"{_MARKS['OK']} {len(rest)} more OK: {', '.join(rest)}")
    total = sum(e.size_bytes or 0 for e in entries)
    lines.append(f"Backups: {len(entries)}, {size(total)} in all (press b)")
    return lines


def job_line(running: list[tuple[Any, Any, str]]) -> str:
    """The home screen's line for jobs still running (an operation outlives a dropped
    terminal): what, on which target, by whom, since when, how far."""
    if not running:
        return ""
    _job, state, progress = running[0]
    who = state.operator.get("user", "?")
    since = state.started_at[11:19]
    more = f" (and {len(running) - 1} more: pgrunbook jobs)" if len(running) > 1 else ""
    return (f"[b yellow]Job running[/]: {state.operation} of "
            f"{(state.target or {}).get('name', '-')} by {who} since {since} UTC"
            f"{f', {progress}' if progress else ''}{more}. [b]j[/]: follow it")


class HomeScreen(Screen[None]):
    BINDINGS = [
        Binding("j", "follow_job", "Follow job", id="home-follow-job", show=False,
                tooltip="Follow the running job (it outlives a dropped terminal)"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self._jobs_running: list[tuple[Any, Any, str]] = []

    def compose(self) -> ComposeResult:
        app: PgRunbookApp = self.app  # type: ignore[assignment]
        yield target_banner(app)
        with Horizontal(id="home-body"):
            with Vertical(id="home-left"):
                yield Label("Newest backups", classes="section")
                yield DataTable(id="newest", cursor_type="row", zebra_stripes=True)
                yield Label("Health", classes="section")
                yield Static("Reading the inventory…", id="health")
                yield Static("", id="jobs-line")
            with Vertical(id="home-right"):
                yield Label("Runbooks (Enter to start)", classes="section")
                yield ListView(*[ListItem(Label(b.name), id=f"rb-{b.id}")
                                 for b in app.runbooks], id="runbooks")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#newest", DataTable)
        table.add_columns("name", "kind", "age", "size")
        self.query_one("#jobs-line", Static).display = False
        self.query_one("#runbooks", ListView).focus()

    @work(thread=True, exclusive=True, group="inventory")
    def refresh_data(self) -> None:
        """The inventory is read off the event loop: the screen is up at once, and the newest
        backups and the health lines fill in when it is read."""
        from tui.core.jobs import describe_progress, unfinished

        app: PgRunbookApp = self.app  # type: ignore[assignment]
        entries = app.inventory()
        report = health_report(app, entries)
        running = []
        for job in unfinished(app.settings.backup_dir):
            state = job.state()
            if job.alive(state):
                running.append((job, state, describe_progress(job)))
        app.call_from_thread(self._show, entries, report)
        app.call_from_thread(self._show_jobs, running)

    def _show_jobs(self, running: list[tuple[Any, Any, str]]) -> None:
        self._jobs_running = running
        line = self.query_one("#jobs-line", Static)
        line.update(job_line(running))
        line.display = bool(running)

    def action_follow_job(self) -> None:
        from tui.screens.job import JobScreen

        if not self._jobs_running:
            self.notify("No job is running (pgrunbook jobs lists the recent ones).")
            return
        self.app.push_screen(JobScreen(self._jobs_running[0][0]))

    def _show(self, entries: list[BackupEntry], report: Report) -> None:
        app: PgRunbookApp = self.app  # type: ignore[assignment]
        now = app.now()
        table = self.query_one("#newest", DataTable)
        table.clear()
        for e in entries[:6]:
            table.add_row(e.name[16:] or e.name, e.kind or "?", short_age(e.created_at, now),
                          size(e.size_bytes), key=e.name)
        self.query_one("#health", Static).update("\n".join(health_lines(report, entries)))

    def on_screen_resume(self) -> None:
        self.refresh_data()

    def on_list_view_selected(self, event: ListView.Selected) -> None:
        app: PgRunbookApp = self.app  # type: ignore[assignment]
        item_id = event.item.id or ""
        app.start_runbook(item_id.removeprefix("rb-"))


