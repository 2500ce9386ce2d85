"""Errors an operator can hit, each with what happened and what to do next."""

from __future__ import annotations

EXIT_OK = 0
EXIT_FAILED = 1
EXIT_USAGE = 2
EXIT_MISMATCH = 3
EXIT_INTERRUPTED = 130


class PgRunbookError(Exception):
    """An expected failure: shown to the operator as one or two plain lines, never a traceback."""

    exit_code = EXIT_FAILED

    def __init__(self, message: str, hint: str | None = None, *, detail: str | None = None):
        super().__init__(message)
        self.message = message
        self.hint = hint
        # Raw tool output kept for --verbose and the operation's log; never shown by default.
        self.detail = detail
        # The operation's full log, when it had one.
        self.log_path: str | None = None

    def __str__(self) -> str:
        return self.message if not self.hint else f"{self.message} {self.hint}"


class ConfigError(PgRunbookError):
    """Bad usage or configuration: exit code 2."""

    exit_code = EXIT_USAGE


class OperationFailed(PgRunbookError):
    """The operation ran and failed: exit code 1."""


class Interrupted(PgRunbookError):
    """Ctrl-C or SIGTERM stopped the operation: exit code 130."""

    exit_code = EXIT_INTERRUPTED
