"""Restoring a backup into a target without losing data.

Before the target is touched, in this order: the archive's SHA-256 matches its metadata and
pg_restore can read it; the pg_restore found is new enough for the archive; the target answers;
the operator confirms (a production target needs its database name typed); other sessions on the
target are listed (and ended only when asked); a safety backup of the target's current state is
taken and verified. Then the schemas the archive restores are emptied, pg_restore runs from a
regular local file with what the target may not take left out (`scope`), and exact row
counts and the application's state are compared with the backup's. pg_restore's errors are
classified (`errors`): known-harmless ones are warnings, any other fails the restore.

The modules, by concern: `request` (the request, the confirmation, the result, the failures),
`source` (choosing, fetching and checking the backup), `unpack` (decompressing it to a seekable
file), `target` (preparing the target), `scope` (what a kind of target may take), `output`
(reading pg_restore's output), `errors` (its errors, and those known to be harmless) and `run`
(the restore, step by step). What other modules use is imported from here.

Names are loaded from their modules when first used (PEP 562): tui.core.backup imports
`scope` alone, and a backup does not pay for loading the restore. The modules here still import
tui.core.backup inside the functions that use it, never at their top.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from tui.core.restore.output import ItemProgress, explain_restore_errors, tidy_line
    from tui.core.restore.request import (
        MAX_DEFAULT_JOBS,
        Ask,
        ConfirmationNeeded,
        RestoreFailed,
        RestoreRequest,
        RestoreResult,
        SessionsConnected,
        default_jobs,
        undo_command,
    )
    from tui.core.restore.run import (
        HEADER_DESCS,
        needs_clean,
        restored_schemas,
        run_restore,
        with_target,
    )
    from tui.core.restore.source import (
        check_archive,
        check_metadata,
        fetch_from_s3,
        preview_backup,
        resolve_backup,
        sha256_matches,
    )
    from tui.core.restore.target import (
        confirmation_needed,
        confirmed_request,
        session_options,
        typed_confirmation_reason,
    )

_MODULE_OF = {
    "Ask": "request",
    "ConfirmationNeeded": "request",
    "HEADER_DESCS": "run",
    "ItemProgress": "output",
    "MAX_DEFAULT_JOBS": "request",
    "RestoreFailed": "request",
    "RestoreRequest": "request",
    "RestoreResult": "request",
    "SessionsConnected": "request",
    "check_archive": "source",
    "check_metadata": "source",
    "confirmation_needed": "target",
    "confirmed_request": "target",
    "preview_backup": "source",
    "default_jobs": "request",
    "explain_restore_errors": "output",
    "fetch_from_s3": "source",
    "needs_clean": "run",
    "resolve_backup": "source",
    "restored_schemas": "run",
    "run_restore": "run",
    "session_options": "target",
    "sha256_matches": "source",
    "tidy_line": "output",
    "typed_confirmation_reason": "target",
    "undo_command": "request",
    "with_target": "run",
}


def __getattr__(name: str) -> Any:
    module = _MODULE_OF.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(f"{__name__}.{module}"), name)
    globals()[name] = value
    return value


__all__ = [
    "HEADER_DESCS",
    "MAX_DEFAULT_JOBS",
    "Ask",
    "ConfirmationNeeded",
    "ItemProgress",
    "RestoreFailed",
    "RestoreRequest",
    "RestoreResult",
    "SessionsConnected",
    "check_archive",
    "check_metadata",
    "confirmation_needed",
    "confirmed_request",
    "preview_backup",
    "default_jobs",
    "explain_restore_errors",
    "fetch_from_s3",
    "needs_clean",
    "resolve_backup",
    "restored_schemas",
    "run_restore",
    "session_options",
    "sha256_matches",
    "tidy_line",
    "typed_confirmation_reason",
    "undo_command",
    "with_target",
]
