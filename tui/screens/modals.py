"""Confirmations and questions: typed names for production, reasons for skips and restores,
the typed word for prune (with what it would delete)."""

from __future__ import annotations

from textual import on
from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.markup import escape
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static

from tui.core.fmt import short_age, size
from tui.core.retention import LOCAL, S3, Plan
from tui.widgets.backup_list import BackupList, Column, ListRow


class _TextAnswer(ModalScreen[str | None]):
    """A dialog answered with a text (never an empty one: it says so), or None on Esc."""

    def answer(self, value: str) -> None:
        if not value:
            self.query_one("#dialog-error", Label).update("Type something, or Esc to cancel.")
            return
        self.dismiss(value)

    def action_cancel(self) -> None:
        self.dismiss(None)


class AskText(_TextAnswer):
    """Asks for a line of text; Enter answers, Esc cancels (None).

    With `must_equal`, only that exact text is accepted (a production database name)."""

    AUTO_FOCUS = "#dialog-input"
    BINDINGS = [Binding("escape", "cancel", "Cancel", id="modal-cancel", tooltip="Cancel")]

    def __init__(self, title: str, prompt: str, *, must_equal: str | None = None,
                 danger: bool = False, placeholder: str = "") -> None:
        super().__init__()
        self.title_text = title
        self.prompt = prompt
        self.must_equal = must_equal
        self.danger = danger
        self.placeholder = placeholder

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="danger" if self.danger else ""):
            yield Label(self.title_text, id="dialog-title")
            yield Static(self.prompt, id="dialog-prompt")
            yield Input(placeholder=self.placeholder, id="dialog-input")
            yield Label("", id="dialog-error")

    def on_input_submitted(self, event: Input.Submitted) -> None:
        value = event.value.strip()
        if self.must_equal is not None and value != self.must_equal:
            self.query_one("#dialog-error", Label).update(
                f"That is not {self.must_equal!r}. Type it exactly, or Esc to cancel.")
            return
        self.answer(value)


class TeamUpdate(_TextAnswer):
    """A team update to send, or without a chat webhook to copy: the text in an editor, ready
    to change; ctrl+s answers with it (sent, or shown as copied), Esc answers None."""

    AUTO_FOCUS = "#update-text"
    BINDINGS = [Binding("ctrl+s", "send", "Send", id="update-send", tooltip="Send this text"),
                Binding("escape", "cancel", "Cancel", id="update-cancel", tooltip="Cancel")]

    def __init__(self, text: str, *, webhook: bool) -> None:
        super().__init__()
        self.text = text
        self.webhook = webhook

    def compose(self) -> ComposeResult:
        from textual.widgets import TextArea

        with Vertical(id="dialog", classes="update"):
            yield Label("Team update", id="dialog-title")
            yield Static("Edit the text; ctrl+s " + (
                "posts it to the chat webhook." if self.webhook else
                "marks it sent: there is no chat webhook, so copy it to #incidents "
                "(select it with shift and the mouse; it is in the output too)."),
                id="dialog-prompt")
            yield TextArea(self.text, id="update-text", soft_wrap=True)
            yield Label("", id="dialog-error")

    def on_mount(self) -> None:
        from textual.widgets import TextArea

        area = self.query_one("#update-text", TextArea)
        area.move_cursor(area.document.end)  # ready to add a sentence

    def action_send(self) -> None:
        from textual.widgets import TextArea

        self.answer(self.query_one("#update-text", TextArea).text.strip())


class YesNo(ModalScreen[bool]):
    BINDINGS = [
        Binding("y", "answer(True)", "Yes", id="modal-yes", tooltip="Yes"),
        Binding("n,escape", "answer(False)", "No", id="modal-no", tooltip="No"),
    ]

    def __init__(self, question: str) -> None:
        super().__init__()
        self.question = question

    def compose(self) -> ComposeResult:
        with Vertical(id="dialog", classes="danger"):
            yield Static(self.question, id="dialog-prompt")
            yield Label("[b]y[/b] yes   [b]n[/b] no", id="dialog-keys")

    def action_answer(self, value: bool) -> None:
        self.dismiss(value)


PRUNE_MAX_WIDTH = 120  # #dialog.prune's max-width in app.tcss


class PrunePreview(AskText):
    """What prune would delete and why (name, where, age, size, reason), with the totals, in a
    list that scrolls (up, down, page up, page down, even while typing); the highlighted
    copy's whole reason under it. Typing `prune` confirms (the answer is "prune"), Esc cancels.

    The list is the browser's line-API table: 10,000 deletions open as fast as 10."""

    BINDINGS = [
        Binding("up", "scroll_list('move', -1)", "Up", show=False, id="prune-up",
                tooltip="Previous copy"),
        Binding("down", "scroll_list('move', 1)", "Down", show=False, id="prune-down",
                tooltip="Next copy"),
        Binding("pageup", "scroll_list('page', -1)", "Page up", show=False, id="prune-pageup",
                tooltip="A page up"),
        Binding("pagedown", "scroll_list('page', 1)", "Page down", show=False,
                id="prune-pagedown", tooltip="A page down"),
    ]

    def __init__(self, plan: Plan, warning: str | None = None) -> None:
        gone = plan.deletions
        n_local = sum(1 for d in gone if d.location == LOCAL)
        totals = (f"Prune would delete {len(gone)} of {len(plan.decisions)} copies: {n_local} "
                  f"local (frees {size(plan.freed_bytes(LOCAL))}), {len(gone) - n_local} in S3 "
                  f"(frees {size(plan.freed_bytes(S3))}); {len(plan.kept)} kept.")
        prompt = totals + (f"\n{escape(warning)}" if warning else "") + (
            "\nType [b]prune[/b] and Enter to delete exactly these (the job plans again and "
            "leaves any it would now keep); Esc cancels.")
        super().__init__("Prune: the copies the retention policy no longer keeps", prompt,
                         must_equal="prune", danger=True, placeholder="prune")
        self.plan = plan
        self.by_key = {f"{d.location}:{d.name}": d for d in gone}

    def compose(self) -> ComposeResult:
        width = min(self.app.size.width, PRUNE_MAX_WIDTH) - 6  # border, padding, scrollbar
        name_width = max((len(d.name) for d in self.by_key.values()), default=10)
        columns = [Column("name", min(max(name_width, 10), 38)), Column("where", 5),
                   Column("age", 5), Column("size", 8, right=True)]
        fixed = sum(c.width + 1 for c in columns) + 1
        columns.append(Column("reason", max(width - fixed, 20)))
        with Vertical(id="dialog", classes="danger prune"):
            yield Label(self.title_text, id="dialog-title")
            yield Static(self.prompt, id="dialog-prompt")
            yield BackupList(columns, id="prune-list", formatter=self._cells)
            yield Static("", id="prune-why")
            yield Input(placeholder=self.placeholder, id="dialog-input")
            yield Label("", id="dialog-error")

    def on_mount(self) -> None:
        self.query_one("#prune-list", BackupList).set_rows([ListRow(k) for k in self.by_key])

    def _cells(self, key: str) -> tuple[str, ...]:
        d = self.by_key[key]
        return (d.name, d.location, short_age(d.created_at, self.plan.now), size(d.size_bytes),
                d.reason)

    @on(BackupList.Highlighted)
    def _highlighted(self, event: BackupList.Highlighted) -> None:
        d = self.by_key.get(event.key or "")
        self.query_one("#prune-why", Static).update(
            "" if d is None else f"{escape(d.name)} ({d.location}): {escape(d.reason)}")

    def action_scroll_list(self, how: str, delta: int) -> None:
        table = self.query_one("#prune-list", BackupList)
        if how == "page":
            table.action_page(delta)
        else:
            table.action_move(delta)
