"""The help screen: what every key does.

A Rich table in a Static, built once: the screen is installed on the app and reused, so `?`
opens it at once even while pg_restore output streams (a Markdown widget took 70 ms to build
and left memory behind each time)."""

from __future__ import annotations

from rich.table import Table
from rich.text import Text
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import VerticalScroll
from textual.screen import ModalScreen
from textual.widgets import Label, Static

KEYS = (
    ("b", "anywhere", "backup browser"),
    ("r", "anywhere", "runbooks (home)"),
    ("h", "anywhere", "history (audit trail)"),
    ("ctrl+p", "anywhere", "command palette: runbooks and actions"),
    ("?", "anywhere", "this help"),
    ("q", "anywhere", "quit (refused while an operation runs)"),
    ("/", "browser, history", "filter by typing; Enter: back to the list"),
    ("s", "browser", "sort by the next column; or click a title"),
    ("Enter", "browser", "restore the selected backup (runbook)"),
    ("d", "browser", "restore drill of the selected backup"),
    ("v", "browser", "verify the selected archive's checksum"),
    ("f", "browser", "fetch an S3-only backup, checksum verified"),
    ("p", "browser", "prune: what retention deletes; type prune to run"),
    ("x", "runner", "run the current step's action"),
    ("space", "runner", "tick the highlighted checklist item"),
    ("n", "runner", "next step (blocked until the step is done)"),
    ("k", "runner", "skip the step (asks why)"),
    ("c", "runner", "cancel the running operation (asks first)"),
    ("u", "runner", "team update: edit it, then post it (or copy it)"),
    ("l", "runner", "fold or show the live output"),
    ("Esc", "anywhere", "back; closes dialogs and this help"),
)


def keys_table() -> Table:
    # No header row: the columns say what they are, and the screen fits 80x24 without it.
    table = Table(box=None, pad_edge=False, show_edge=False, expand=False, show_header=False)
    table.add_column("key", style="bold")
    table.add_column("where", style="dim")
    table.add_column("what")
    for key, where, what in KEYS:
        table.add_row(key, where, what)
    return table


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "dismiss_help", "Close", id="help-close",
                        tooltip="Close the help")]

    def compose(self) -> ComposeResult:
        with VerticalScroll(id="help"):
            yield Label("pgrunbook keys", id="help-title")
            yield Static(keys_table())
            yield Static(Text("Destructive actions ask first; production asks for the "
                              "database name."), id="help-note")

    def action_dismiss_help(self) -> None:
        self.app.pop_screen()
