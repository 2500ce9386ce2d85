"""The backup browser: every backup (local, S3 or both), sortable and filterable, with a detail
pane and a size trend; actions on the selected backup."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from textual import on, work
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Horizontal, Vertical
from textual.screen import Screen
from textual.widgets import DataTable, Footer, Input, Label, Sparkline, Static

from tui.core.fmt import age, size
from tui.core.inventory import BackupEntry

if TYPE_CHECKING:
    from tui.app import PgRunbookApp

COLUMNS = ("name", "kind", "created", "age", "size", "where", "drill", "problems")


def _drill(e: BackupEntry) -> str:
    d = (e.meta or {}).get("drill") or {}
    return str(d.get("result", "-"))


def detail_text(e: BackupEntry) -> str:
    if e.meta is None:
        return f"{e.name}\n\n" + ("\n".join(e.problems) or "no metadata")
    m = e.meta
    lines = [f"[b]{e.name}[/b]  {m.get('kind')}  {size(e.size_bytes)}",
             f"reason: {m.get('reason') or '-'}",
             f"created: {m.get('created_at')}  took {m.get('duration_seconds')} s",
             f"source: {m.get('source', {}).get('host')}:{m.get('source', {}).get('port')}/"
             f"{m.get('source', {}).get('database')}  PostgreSQL {m.get('server_version')}",
             f"sha256: {m.get('archive', {}).get('sha256', '')[:32]}…",
             f"compression: {m.get('archive', {}).get('compression')}",
             f"location: {e.location}" + (f"  s3: {e.s3_key}" if e.s3_key else ""),
             f"problems: {'; '.join(e.problems) or 'none'}", "", "[b]rows per table[/b]"]
    for t in m.get("tables", [])[:200]:
        lines.append(f"  {t['schema']}.{t['name']}: {t['rows']:,}")
    return "\n".join(lines)


class BrowserScreen(Screen[None]):
    BINDINGS = [
        Binding("slash", "filter", "Filter", id="browser-filter", tooltip="Filter by typing"),
        Binding("s", "sort", "Sort", id="browser-sort", tooltip="Sort by the next column"),
        Binding("enter", "restore", "Restore", id="browser-restore",
                tooltip="Walk the standard restore runbook with this backup"),
        Binding("d", "drill", "Drill", id="browser-drill",
                tooltip="Restore drill of this backup into a throwaway PostgreSQL"),
        Binding("v", "verify", "Checksum", id="browser-verify",
                tooltip="Verify the selected archive's SHA-256"),
        Binding("escape", "app.pop_screen", "Back", id="browser-back", tooltip="Back"),
    ]

    def __init__(self) -> None:
        super().__init__()
        self.entries: list[BackupEntry] = []
        self.sort_col = 2
        self.query_text = ""

    def compose(self) -> ComposeResult:
        yield Label("Backups  (/ filter, s sort, Enter restore, d drill, v checksum)",
                    classes="section")
        yield Input(placeholder="filter: name, kind, problem…", id="filter")
        with Horizontal(id="browser-body"):
            yield DataTable(id="backups", cursor_type="row", zebra_stripes=True)
            with Vertical(id="browser-side"):
                yield Label("Size of recent backups", classes="section")
                yield Sparkline([], id="trend")
                yield Static("", id="detail")
        yield Footer()

    def on_mount(self) -> None:
        table = self.query_one("#backups", DataTable)
        table.add_columns(*COLUMNS)
        self.load()
        table.focus()

    def load(self) -> None:
        app: PgRunbookApp = self.app  # type: ignore[assignment]
        self.entries = app.inventory()
        self.fill()
        sizes = [float(e.size_bytes or 0) for e in reversed(self.entries[:40]) if e.complete]
        self.query_one("#trend", Sparkline).data = sizes or [0.0]

    def fill(self) -> None:
        app: PgRunbookApp = self.app  # type: ignore[assignment]
        now = app.now()
        table = self.query_one("#backups", DataTable)
        q = self.query_text.lower()
        rows = [e for e in self.entries if not q or q in
                f"{e.name} {e.kind} {e.location} {' '.join(e.problems)}".lower()]
        keyfuncs = [lambda e: e.name, lambda e: e.kind or "", lambda e: e.created_at,
                    lambda e: e.created_at, lambda e: e.size_bytes or 0,
                    lambda e: e.location, _drill, lambda e: len(e.problems)]
        key = keyfuncs[self.sort_col]
        rows.sort(key=lambda e: (key(e) is None, key(e) or 0), reverse=self.sort_col in (2, 3))
        with self.app.batch_update():
            table.clear()
            for e in rows:
                table.add_row(e.name, e.kind or "?",
                              e.created_at.strftime("%Y-%m-%d %H:%M") if e.created_at else "-",
                              age(e.created_at, now), size(e.size_bytes), e.location,
                              _drill(e), "; ".join(e.problems) or "ok", key=e.name)
        self.show_detail()

    def selected(self) -> BackupEntry | None:
        table = self.query_one("#backups", DataTable)
        if table.row_count == 0:
            return None
        key = table.coordinate_to_cell_key(table.cursor_coordinate).row_key.value
        return next((e for e in self.entries if e.name == key), None)

    def show_detail(self) -> None:
        e = self.selected()
        self.query_one("#detail", Static).update(detail_text(e) if e else "No backups yet.")

    @on(DataTable.RowHighlighted)
    def _highlighted(self) -> None:
        self.show_detail()

    @on(Input.Changed, "#filter")
    def _filter_changed(self, event: Input.Changed) -> None:
        self.query_text = event.value
        self.fill()

    @on(Input.Submitted, "#filter")
    def _filter_done(self) -> None:
        self.query_one("#backups", DataTable).focus()

    def action_filter(self) -> None:
        self.query_one("#filter", Input).focus()

    def action_sort(self) -> None:
        self.sort_col = (self.sort_col + 1) % len(COLUMNS)
        self.notify(f"sorted by {COLUMNS[self.sort_col]}", timeout=2)
        self.fill()

    def action_restore(self) -> None:
        e = self.selected()
        if e is None:
            return
        app: PgRunbookApp = self.app  # type: ignore[assignment]
        app.selected_backup = e.name
        app.start_runbook("standard-restore")

    def action_drill(self) -> None:
        e = self.selected()
        if e is None:
            return
        app: PgRunbookApp = self.app  # type: ignore[assignment]
        app.selected_backup = e.name
        app.start_runbook("backup-verification")

    @work(thread=True, exclusive=True, group="checksum")
    def action_verify(self) -> None:
        from tui.core.restore import sha256_matches

        e = self.selected()
        if e is None or e.location == "s3":
            self.app.call_from_thread(self.notify, "Only local archives can be checked here.")
            return
        ok = sha256_matches(e)
        self.app.call_from_thread(
            self.notify, f"{e.name}: checksum {'matches' if ok else 'DOES NOT MATCH'}",
            severity="information" if ok else "error")


class HistoryScreen(Screen[None]):
    """The audit trail, newest first, filterable."""

    BINDINGS = [
        Binding("slash", "filter", "Filter", id="history-filter", tooltip="Filter by typing"),
        Binding("escape", "app.pop_screen", "Back", id="history-back", tooltip="Back"),
    ]

    def compose(self) -> ComposeResult:
        yield Label("History (audit trail, newest first)", classes="section")
        yield Input(placeholder="filter: operation, user, result…", id="history-q")
        yield DataTable(id="history", cursor_type="row", zebra_stripes=True)
        yield Footer()

    def on_mount(self) -> None:
        from tui.core.audit import AuditLog

        app: PgRunbookApp = self.app  # type: ignore[assignment]
        self.rows = []
        for e in reversed(list(AuditLog(app.settings.backup_dir).entries())):
            op = e.get("operator") or {}
            self.rows.append((str(e.get("time", "")), str(e.get("operation", "")),
                              str(e.get("event", "")), str(e.get("result") or ""),
                              str(op.get("user", "")), str((e.get("target") or {}).get("name", "")),
                              str(e.get("reason") or e.get("error") or e.get("backup") or "")))
        table = self.query_one("#history", DataTable)
        table.add_columns("time", "operation", "event", "result", "who", "target", "detail")
        self.fill("")
        table.focus()

    def fill(self, q: str) -> None:
        table = self.query_one("#history", DataTable)
        table.clear()
        for row in self.rows:
            if not q or q.lower() in json.dumps(row).lower():
                table.add_row(*row)

    @on(Input.Changed, "#history-q")
    def _changed(self, event: Input.Changed) -> None:
        self.fill(event.value)

    def action_filter(self) -> None:
        self.query_one("#history-q", Input).focus()
