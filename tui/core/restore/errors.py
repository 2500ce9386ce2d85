"""pg_restore's errors: read from its output and classified, not counted.

By default pg_restore goes on past a failed statement, prints `warning: errors ignored on
restore: N` and exits 1, so its exit code alone cannot tell a silent partial restore from a few
statements that a target of a given kind refuses by design (a hosted Supabase project's
`postgres` is not a superuser and not a member of every role). Each error is read with the
table-of-contents entry pg_restore was processing (its `from TOC entry N; ...` line) and looked
up in `KNOWN`, a short table of errors known to be harmless for a kind of target, each with its
reason. A harmless error becomes a warning the operator sees listed; any other error fails the
restore, as before.

Not in the table, on purpose: `role "X" does not exist` in a grant. pg_restore runs an
object's grants as one statement string, so one grant to a missing role loses the object's
other grants too (the API roles' among them), which is never harmless.

`KNOWN` is the whole table; README.md lists it for operators ("Restore errors that are
warnings"). An error is harmless only with its entry's kind as well as its text, so the same
words from another kind of statement still fail the restore.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

# Target kinds (see `scope.TargetKind`): which kinds an error is harmless on.
NON_SUPERUSER = frozenset({"supabase", "restricted"})

_FROM_ENTRY_RE = re.compile(r"from TOC entry (\d+); \d+ \d+ (.*)$")
_ERROR_RE = re.compile(r"(?:^|\s)error: (.*)$")
_COMMAND_RE = re.compile(r"^Command was: (.*)$")


@dataclass(frozen=True)
class Known:
    """An error that is harmless on some kinds of target, with the reason."""

    code: str
    kinds: frozenset[str]
    pattern: re.Pattern[str]
    entry_descs: tuple[str, ...]  # the TOC entries it may come from; () for any
    reason: str

    def matches(self, error: RestoreError, kind: str) -> bool:
        if kind not in self.kinds or not self.pattern.search(error.message):
            return False
        if not self.entry_descs:
            return True
        return error.entry is not None and error.entry.startswith(self.entry_descs)


KNOWN: tuple[Known, ...] = (
    Known("default-privileges", NON_SUPERUSER, re.compile(r'must be member of role "([^"]+)"'),
          ("DEFAULT ACL",),
          "default privileges of a role the operator may not act for; the target keeps its own"),
    Known("own-grant-option", NON_SUPERUSER,
          re.compile(r"grant options cannot be granted back to your own grantor"), ("ACL",),
          "the operator already holds that grant with grant option (the object's other grants "
          "are in the same statement: the verification checks the API roles')"),
    Known("event-trigger", NON_SUPERUSER,
          re.compile(r"permission denied to create event trigger|must be superuser to create an "
                     r"event trigger|owner of an event trigger must be a superuser", re.I),
          ("EVENT TRIGGER",),
          "only a superuser creates event triggers; the target keeps its own"),
    Known("extension-comment", NON_SUPERUSER, re.compile(r"must be owner of extension"),
          ("COMMENT - EXTENSION", "COMMENT"),
          "the comment belongs to the extension's owner"),
)


@dataclass(frozen=True)
class RestoreError:
    """One error pg_restore reported, with the entry it was processing when known."""

    message: str  # "could not execute query: ERROR:  must be member of role ..."
    entry: str | None = None  # "DEFAULT ACL public DEFAULT PRIVILEGES FOR TABLES supabase_admin"
    dump_id: int | None = None
    command: str | None = None

    def describe(self) -> str:
        where = f" [{self.entry}]" if self.entry else ""
        return f"{self.message}{where}"


@dataclass(frozen=True)
class Warned:
    """A harmless error, shown to the operator as a warning."""

    error: RestoreError
    known: Known

    def describe(self) -> str:
        return f"{self.known.code}: {self.error.describe()} ({self.known.reason})"


class ErrorReader:
    """Collects pg_restore's errors from its (tidied) output lines, in order."""

    def __init__(self) -> None:
        self.errors: list[RestoreError] = []
        self.ignored_count: int | None = None  # from "errors ignored on restore: N"
        self._entry: tuple[int, str] | None = None
        self._in_command = False  # the lines after "Command was:" are the statement's own

    def feed(self, line: str) -> bool:
        """Read one line; True when it reports an error (for the live output's colour)."""
        if not line.startswith("pg_restore: ") and self._in_command:
            return False  # a failed statement's text spans lines; "error:" there is not one
        self._in_command = False
        body = line.removeprefix("pg_restore: ")
        m = _FROM_ENTRY_RE.search(body)
        if m:
            self._entry = (int(m.group(1)), m.group(2).strip())
            return False
        c = _COMMAND_RE.match(line)
        if c:
            self._in_command = True
            if self.errors and self.errors[-1].command is None:
                last = self.errors[-1]
                self.errors[-1] = RestoreError(last.message, last.entry, last.dump_id,
                                               c.group(1))
            return False
        if "errors ignored on restore" in body:
            n = re.search(r"errors ignored on restore: (\d+)", body)
            self.ignored_count = int(n.group(1)) if n else None
            return True
        e = _ERROR_RE.search(body)
        if e is None and not body.startswith(("ERROR", "FATAL")):
            return False
        message = (e.group(1) if e else body).strip()
        entry = self._entry
        self.errors.append(RestoreError(message, entry[1] if entry else None,
                                        entry[0] if entry else None))
        self._entry = None
        return True


def classify(errors: list[RestoreError], kind: str) -> tuple[list[Warned], list[RestoreError]]:
    """(harmless ones as warnings, the rest) for a target of `kind`."""
    warned: list[Warned] = []
    failed: list[RestoreError] = []
    for error in errors:
        known = next((k for k in KNOWN if k.matches(error, kind)), None)
        if known is None:
            failed.append(error)
        else:
            warned.append(Warned(error, known))
    return warned, failed
