"""Home: the target (production unmistakable), the newest backups, health, and the runbooks."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any

from textual import work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.markup import escape
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Label, ListItem, ListView, Static

from tui.core.fmt import age, short_age, size
from tui.core.inventory import BackupEntry
from tui.core.retention import LOCAL, Decision, Plan
from tui.core.settings import Settings

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


def s3_line(entries: list[BackupEntry], where: str | None, error: str | None) -> str:
    """Off-site copies at a glance: off, unreachable, or how many are there and how many not."""
    if where is None:
        return "S3: [yellow]off[/] (no BACKUP_S3_BUCKET: no off-site copy)"
    if error:
        return f"S3: [b red]unreachable[/] ({where}): {error}"
    there = sum(1 for e in entries if e.location in ("s3", "both"))
    missing = sum(1 for e in entries if e.location == "local" and e.meta is not None)
    text = f"S3: {where}, {there} backup(s) there"
    return text + (f"; [b yellow]{missing} not uploaded[/] (pgrunbook upload NAME)"
                   if missing else "")


OVERDUE_AFTER = timedelta(days=1)  # a copy prune could have deleted this long ago is overdue
DISK_LOW_SHARE = 0.10  # BACKUP_DIR's file system is filling below this share free...
DISK_LOW_BACKUPS = 2  # ...or below this many times the newest backup's size


def overdue_copies(now_plan: Plan, day_ago_plan: Plan) -> list[Decision]:
    """The copies prune would delete now that it would already have deleted OVERDUE_AFTER ago
    (the plan then, over the backups there were): a day past their expiry and still here."""
    then = {(d.name, d.location) for d in day_ago_plan.deletions}
    return [d for d in now_plan.deletions if (d.name, d.location) in then]


def prune_line(overdue: Sequence[Decision]) -> str:
    if not overdue:
        return ""
    n = len({d.name for d in overdue})
    total = sum(d.size_bytes for d in overdue)
    return (f"[b yellow]Prune overdue[/]: {n} backup{'' if n == 1 else 's'} ({size(total)}) "
            "past the retention policy (press b, then p)")


def disk_line(free: int, total: int, newest_bytes: int, freeable: int) -> str:
    """The warning when BACKUP_DIR's file system is filling: less free than DISK_LOW_BACKUPS
    times the newest backup, or than DISK_LOW_SHARE of the disk; else ""."""
    if free >= DISK_LOW_BACKUPS * newest_bytes and free >= DISK_LOW_SHARE * total:
        return ""
    gain = f"prune would free {size(freeable)}" if freeable else "prune would free nothing"
    return f"[b red]Disk filling[/]: {size(free)} free in BACKUP_DIR, {gain}"


def _disk_usage(path: Path) -> tuple[int, int] | None:
    """(free, total) bytes of the file system BACKUP_DIR is (or will be) on."""
    for where in (path, *path.parents):
        try:
            usage = shutil.disk_usage(where)
        except OSError:
            continue
        return usage.free, usage.total
    return None


def retention_health(settings: Settings, entries: list[BackupEntry],
                     now: datetime) -> list[str]:
    """The health lines about retention: prune overdue, the disk filling, or a policy the
    settings make impossible. Reads the disk and plans twice: for the inventory worker."""
    from tui.screens.browser import retention_plan

    found, error = retention_plan(settings, entries, now)
    if found is None:
        return [f"[b red]Retention policy[/]: {escape(error or '')}"]
    cutoff = now - OVERDUE_AFTER
    earlier, _ = retention_plan(settings, [e for e in entries if e.created_at is not None
                                           and e.created_at <= cutoff], cutoff)
    lines = [prune_line(overdue_copies(found, earlier))] if earlier is not None else []
    usage = _disk_usage(settings.backup_dir)
    if usage is not None:
        newest = next((e for e in entries if e.complete), None)
        lines.append(disk_line(*usage, (newest.size_bytes or 0) if newest else 0,
                               found.freed_bytes(LOCAL)))
    return [line for line in lines if line]


def health_lines(entries: list[BackupEntry], now: datetime, s3: str | None = None,
                 retention: Sequence[str] = ()) -> list[str]:
    complete = [e for e in entries if e.complete]
    lines = []
    if not complete:
        lines.append("[b red]No complete backup[/] — take one now.")
    else:
        newest = complete[0]
        stale = newest.created_at is not None and now - newest.created_at > timedelta(hours=24)
        mark = "[b red]over 24 hours old[/]" if stale else "[green]fresh[/]"
        lines.append(f"Newest backup: {age(newest.created_at, now)} ({mark})")
    total = sum(e.size_bytes or 0 for e in entries)
    lines.append(f"Backups: {len(entries)}, {size(total)} in all")
    drilled = [e for e in entries if (e.meta or {}).get("drill")]
    if drilled:
        d = drilled[0].meta["drill"]  # type: ignore[index]
        from tui.core.inventory import _parse_time

        lines.append(f"Last drill: {d.get('result')} {age(_parse_time(d.get('verified_at')), now)}")
    else:
        lines.append("Last drill: [yellow]never[/] — run the backup verification runbook")
    if s3 is not None:
        lines.append(s3)
    lines.extend(retention)
    problems = sum(1 for e in entries if e.problems)
    if problems:
        lines.append(f"[b yellow]{problems} backup(s) with problems[/] (press b)")
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
        retention = retention_health(app.settings, entries, app.now())
        running = []
        for job in unfinished(app.settings.backup_dir):
            state = job.state()
            if job.alive(state):
                running.append((job, state, describe_progress(job)))
        app.call_from_thread(self._show, entries, retention)
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

    def _show(self, entries: list[BackupEntry], retention: Sequence[str] = ()) -> None:
        app: PgRunbookApp = self.app  # type: ignore[assignment]
        now = app.now()
        table = self.query_one("#newest", DataTable)
        table.clear()
        for e in entries[:6]:
            table.add_row(e.name[16:] or e.name, e.kind or "?", short_age(e.created_at, now),
                          size(e.size_bytes), key=e.name)
        self.query_one("#health", Static).update("\n".join(health_lines(
            entries, now, s3_line(entries, app.s3_where(), app.s3_error), retention)))

    def on_screen_resume(self) -> None:
        self.refresh_data()

    def on_list_view_selected(self, event: ListView.Selected) -> None:
        app: PgRunbookApp = self.app  # type: ignore[assignment]
        item_id = event.item.id or ""
        app.start_runbook(item_id.removeprefix("rb-"))


