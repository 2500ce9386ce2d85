"""The help screen: what every key does."""

from __future__ import annotations

from textual.app import ComposeResult
from textual.binding import Binding
from textual.screen import ModalScreen
from textual.widgets import Markdown

HELP = """\
# pgrunbook keys

| key | where | what |
| --- | --- | --- |
| `b` | anywhere | backup browser |
| `r` | anywhere | runbooks (home) |
| `h` | anywhere | history (audit trail) |
| `ctrl+p` | anywhere | command palette: runbooks and actions |
| `?` | anywhere | this help |
| `q` | anywhere | quit (asks while an operation runs) |
| `/` | browser, history | filter by typing |
| `s` | browser | sort by the next column |
| `x` | runner | run the current step's action |
| `space` | runner | tick the highlighted checklist item |
| `n` | runner | next step (blocked until the step is done) |
| `k` | runner | skip the step (asks why) |
| `c` | runner | cancel the running operation (asks first) |

Destructive actions ask first; a production target asks for its database name.
Press `Esc` to close this help.
"""


class HelpScreen(ModalScreen[None]):
    BINDINGS = [Binding("escape,q,question_mark", "dismiss_help", "Close", id="help-close",
                        tooltip="Close the help")]

    def compose(self) -> ComposeResult:
        yield Markdown(HELP, id="help")

    def action_dismiss_help(self) -> None:
        self.dismiss(None)
