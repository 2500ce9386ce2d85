"""Confirmations and questions: typed names for production, reasons for skips and restores."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.containers import Vertical
from textual.screen import ModalScreen
from textual.widgets import Input, Label, Static


class AskText(ModalScreen[str | None]):
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
        if not value:
            self.query_one("#dialog-error", Label).update("Type something, or Esc to cancel.")
            return
        self.dismiss(value)

    def action_cancel(self) -> None:
        self.dismiss(None)


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
