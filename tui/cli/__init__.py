"""The headless face: `pgrunbook [--env-file PATH] [--target NAME] COMMAND ...`.

It parses arguments, calls the engine, and renders the engine's events. It never imports
Textual, so cron jobs stay light; the TUI is imported only when asked for.

`parser` holds the grammar, `commands` the `cmd_*` functions, `render` what they print;
`main` (the `pgrunbook` entry point) dispatches and turns errors into one line and an exit code.
"""

from __future__ import annotations

import gc
import sys
from collections.abc import Sequence
from pathlib import Path

from tui.cli.commands import (
    _sub_target,
    cmd_attach,
    cmd_audit,
    cmd_backup,
    cmd_cancel,
    cmd_demo,
    cmd_download,
    cmd_drill,
    cmd_jobs,
    cmd_list,
    cmd_restore,
    cmd_tui,
    cmd_upload,
    cmd_verify,
    tui_problem,
)
from tui.cli.parser import EXIT_CODES_HELP, build_parser
from tui.cli.render import Renderer, _err, _out, restore_json
from tui.core.errors import EXIT_FAILED, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, PgRunbookError
from tui.core.settings import load_settings

HEALTH_UNKNOWN = 3  # `health` follows the monitoring plugins' exit codes (tui.cli.health_cmd)

__all__ = [
    "EXIT_CODES_HELP", "Renderer", "build_parser", "cmd_attach", "cmd_audit", "cmd_backup",
    "cmd_cancel", "cmd_demo", "cmd_download", "cmd_drill", "cmd_jobs", "cmd_list", "cmd_restore",
    "cmd_tui", "cmd_upload", "cmd_verify", "main", "restore_json", "tui_problem",
]


def _reconcile(backup_dir: Path) -> None:
    """Jobs whose process died without finishing: cleaned up, audited, and reported here."""
    active = backup_dir / "jobs" / "active"
    if not (active.is_dir() and any(active.iterdir())):
        return
    from tui.core.reconcile import reconcile

    for outcome in reconcile(backup_dir):
        error = outcome.error
        if isinstance(error, PgRunbookError):
            _err(f"warning: {error.message}")
            if error.hint:
                _err(f"  {error.hint}")


def main(argv: Sequence[str] | None = None) -> int:
    # The collector is held off while the command starts: importing the engine and psycopg
    # and reading the settings make objects that live as long as the process, and walking
    # them again and again is a tenth of the start of a small backup. It runs again, with
    # what was loaded frozen, when the work begins (a job's start, the TUI, a job followed)
    # and at the latest when the command returns.
    gc.disable()
    try:
        return _main(argv)
    finally:
        gc.enable()


def _main(argv: Sequence[str] | None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        if not (sys.stdin.isatty() and sys.stdout.isatty()):
            parser.print_help()
            return EXIT_USAGE
        args.command, args.func = "tui", cmd_tui  # says why, if the terminal will not do
    try:
        if args.command == "demo":
            return cmd_demo(args)
        _sub_target(args)
        settings = load_settings(env_file=args.env_file, target=args.target)
        for warning in settings.warnings:
            _err(f"warning: {warning}")
        from tui.core.s3 import s3_config

        s3_config(settings)  # bad S3 settings: one line and exit 2, before anything runs
        _reconcile(settings.backup_dir)
        code: int = args.func(args, settings)
        return code
    except PgRunbookError as exc:
        if args.command == "health":  # a monitor reads stdout's first line and the exit code
            _out(f"UNKNOWN: pgrunbook health could not run: {exc.message}")
        _err(f"error: {exc.message}")
        hint = " ".join(part for part in (
            exc.hint, f"Full output: {exc.log_path}" if exc.log_path else None) if part)
        if hint:
            _err(f"  {hint}")
        if exc.detail and getattr(args, "verbose", False):
            _err(exc.detail)
        return HEALTH_UNKNOWN if args.command == "health" else exc.exit_code
    except KeyboardInterrupt:
        _err("interrupted.")
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # `pgrunbook list | head`: the reader went away; that is not an error.
        sys.stderr.close()
        return EXIT_OK
    except Exception as exc:  # a bug: say so plainly; the traceback only with -v
        if getattr(args, "verbose", False):
            import traceback

            traceback.print_exc()
        _err(f"error: unexpected internal error ({exc.__class__.__name__}: {exc}).")
        _err("  This is a pgrunbook bug: rerun with -v for the details and report it.")
        if args.command == "health":
            _out(f"UNKNOWN: pgrunbook health could not run: internal error "
                 f"({exc.__class__.__name__})")
            return HEALTH_UNKNOWN
        return EXIT_FAILED
