"""The headless face: `pgrunbook [--env-file PATH] [--target NAME] COMMAND ...`.

It parses arguments, calls the engine, and renders the engine's events. It never imports
Textual, so cron jobs stay light; the TUI is imported only when asked for.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
import time
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, TextIO, TypeVar

import tui
from tui.core.errors import (
    EXIT_FAILED,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_USAGE,
    Interrupted,
    PgRunbookError,
)
from tui.core.events import (
    BackupFinished,
    DumpProgress,
    Event,
    Notice,
    PhaseStarted,
    ToolOutput,
)
from tui.core.settings import Settings, load_settings

T = TypeVar("T")

EXIT_CODES_HELP = """exit codes:
  0    success
  1    the operation failed
  2    bad usage or configuration
  3    verification found differences
  130  interrupted (Ctrl-C or SIGTERM)
"""


# -- output helpers ----------------------------------------------------------------------------


def _size(n: int | None) -> str:
    if n is None:
        return "-"
    from humanize import naturalsize

    return str(naturalsize(n, binary=False))


def _age(dt: datetime | None, now: datetime | None = None) -> str:
    if dt is None:
        return "-"
    from humanize import naturaldelta

    return f"{naturaldelta((now or datetime.now(UTC)) - dt)} ago"


def _err(text: str) -> None:
    print(text, file=sys.stderr, flush=True)  # noqa: T201


def _out(text: str = "", stream: TextIO | None = None) -> None:
    print(text, file=stream or sys.stdout, flush=True)  # noqa: T201


def _table(rows: Sequence[Sequence[str]], headers: Sequence[str]) -> str:
    widths = [len(h) for h in headers]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(headers, widths, strict=True)).rstrip()]
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


class Renderer:
    """Draws engine events: a progress bar on a terminal, plain lines otherwise."""

    def __init__(self, verbose: bool = False, stream: TextIO | None = None) -> None:
        self.verbose = verbose
        self.stream = stream or sys.stderr
        self.tty = self.stream.isatty()
        self._progress: Any = None
        self._task: Any = None
        self._last_plain = 0.0

    def _stop_bar(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None

    def __call__(self, event: Event) -> None:
        if isinstance(event, PhaseStarted):
            self._stop_bar()
            detail = f" ({event.detail})" if event.detail else ""
            _out(f"· {event.phase}{detail}", self.stream)
        elif isinstance(event, Notice):
            self._stop_bar()
            _out(f"{event.level}: {event.message}", self.stream)
        elif isinstance(event, ToolOutput):
            if self.verbose:
                _out(f"  {event.tool}: {event.line}", self.stream)
        elif isinstance(event, DumpProgress):
            self._progress_event(event)
        elif isinstance(event, BackupFinished):
            self._stop_bar()

    def _progress_event(self, event: DumpProgress) -> None:
        if self.tty:
            if self._progress is None:
                from rich.console import Console
                from rich.progress import (
                    BarColumn,
                    DownloadColumn,
                    Progress,
                    TextColumn,
                    TimeElapsedColumn,
                    TimeRemainingColumn,
                    TransferSpeedColumn,
                )

                self._progress = Progress(
                    TextColumn("  writing"), BarColumn(), DownloadColumn(),
                    TransferSpeedColumn(), TimeElapsedColumn(), TimeRemainingColumn(),
                    console=Console(file=self.stream), transient=True,
                )
                self._progress.start()
                self._task = self._progress.add_task("dump", total=event.expected_bytes)
            total = max(event.expected_bytes or 0, event.bytes_written) or None
            self._progress.update(self._task, completed=event.bytes_written, total=total)
            return
        now = time.monotonic()
        if now - self._last_plain >= 5 or event.eta == 0.0:
            self._last_plain = now
            eta = f", about {event.eta:.0f}s left" if event.eta else ""
            _out(f"  {_size(event.bytes_written)} written, {_size(int(event.rate))}/s, "
                 f"{event.elapsed:.0f}s elapsed{eta}", self.stream)


def run_async(make: Callable[[], Awaitable[T]]) -> T:
    """Run a coroutine; Ctrl-C and SIGTERM cancel it (its cleanup runs) and raise Interrupted."""

    async def runner() -> T:
        loop = asyncio.get_running_loop()
        task = asyncio.current_task()
        assert task is not None
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, task.cancel)
        return await make()

    try:
        return asyncio.run(runner())
    except asyncio.CancelledError:
        raise Interrupted("interrupted: the operation was stopped and cleaned up.") from None


# -- commands ----------------------------------------------------------------------------------


def cmd_backup(args: argparse.Namespace, settings: Settings) -> int:
    from tui.core.backup import BackupRequest, interrupted_error, run_backup

    request = BackupRequest(
        label=args.name, kind=args.kind, reason=args.reason, compression=args.compress,
        exclude_schema=tuple(args.exclude_schema or ()),
        exclude_table_data=tuple(args.exclude_table_data or ()),
    )
    _err(f"Backing up {settings.target.name} ({settings.target.describe()}) "
         f"to {settings.backup_dir}")
    renderer = Renderer(verbose=args.verbose)
    try:
        result = run_async(lambda: run_backup(settings, request, renderer))
    except Interrupted:
        renderer._stop_bar()
        raise interrupted_error() from None
    finally:
        renderer._stop_bar()
    if args.json:
        _out(json.dumps({
            "name": result.name, "path": str(result.path), "meta_path": str(result.meta_path),
            "size_bytes": result.size_bytes, "sha256": result.sha256,
            "duration_seconds": round(result.duration, 3), "tables": result.tables,
            "rows": result.rows, "kind": request.kind,
        }, indent=2))
        return EXIT_OK
    archive = result.meta["archive"]
    _out(f"Backup complete: {result.name}")
    _out(f"  file      {result.path} ({_size(result.size_bytes)}, {archive['compression']})")
    _out(f"  metadata  {result.meta_path}")
    _out(f"  sha256    {result.sha256}")
    _out(f"  contents  {result.tables} tables, {result.rows:,} rows "
         "(counted in the dump's own snapshot)")
    _out(f"  took      {result.duration:.1f}s")
    return EXIT_OK


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    from tui.core.inventory import list_backups

    entries = list_backups(settings.backup_dir, verify=args.verify)
    if args.json:
        _out(json.dumps([e.as_json() for e in entries], indent=2, ensure_ascii=False))
        return EXIT_OK
    if not entries:
        _out(f"No backups in {settings.backup_dir}. Take one with: pgrunbook backup")
        return EXIT_OK
    now = datetime.now(UTC)
    rows = []
    for e in entries:
        created = e.created_at.strftime("%Y-%m-%d %H:%M") if e.created_at else "-"
        rows.append([e.name, e.kind or "?", created, _age(e.created_at, now),
                     _size(e.size_bytes), "; ".join(e.problems) or "ok"])
    _out(f"Backups in {settings.backup_dir} (newest first, times UTC"
         f"{', checksums verified' if args.verify else ''}):")
    _out(_table(rows, ["NAME", "KIND", "CREATED", "AGE", "SIZE", "STATUS"]))
    bad = sum(1 for e in entries if e.problems)
    if bad:
        _out(f"{bad} of {len(entries)} backups have problems.")
    return EXIT_OK


def cmd_audit(args: argparse.Namespace, settings: Settings) -> int:
    from tui.core.audit import AuditLog

    entries = list(AuditLog(settings.backup_dir).entries())
    if args.operation:
        entries = [e for e in entries if e.get("operation") == args.operation]
    entries = entries[-args.limit:] if args.limit else entries
    if args.json:
        for e in entries:
            _out(json.dumps(e, ensure_ascii=False))
        return EXIT_OK
    if not entries:
        _out(f"The audit trail in {settings.backup_dir} is empty.")
        return EXIT_OK
    for e in entries:
        if e.get("event") == "unreadable":
            _out(f"(line {e.get('line')} of the audit log is damaged)")
            continue
        op = e.get("operator") or {}
        who = op.get("user", "?")
        if op.get("ssh_client"):
            who += f" (ssh from {op['ssh_client']})"
        tgt = (e.get("target") or {}).get("name", "-")
        head = f"{e.get('time', '?')}  {e.get('operation', '?'):<8} {e.get('event', '?'):<5}"
        if e.get("event") == "start":
            reason = f"  reason: {e['reason']}" if e.get("reason") else ""
            _out(f"{head} by {who} on {tgt} via {e.get('origin', '?')}{reason}")
        else:
            extra = f" {e['backup']}" if e.get("backup") else ""
            err = f"  error: {e['error']}" if e.get("error") else ""
            _out(f"{head} {e.get('result', '?')}{extra} after "
                 f"{e.get('duration_seconds', 0):.1f}s{err}")
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from tui.core.demo import demo_dir, start_demo, stop_demo

    workdir = demo_dir()
    if args.stop:
        if stop_demo(workdir):
            _out(f"Demo database stopped and removed; backups stay in {workdir}/backups.")
        else:
            _out("No demo database is running here.")
        return EXIT_OK
    _err("Starting the demo database (a throwaway local PostgreSQL)...")
    demo = start_demo(workdir, transactions=args.rows)
    env_rel = os.path.relpath(demo.env_file)
    if demo.created:
        _err(f"Demo database ready on 127.0.0.1:{demo.cluster.port} "
             f"({args.rows:,} transactions); settings in {env_rel}")
    else:
        _err(f"Demo database already running on 127.0.0.1:{demo.cluster.port}; "
             f"settings in {env_rel}")
    settings = load_settings(env_file=demo.env_file)
    if demo.created or args.backup:
        cmd_backup(argparse.Namespace(
            name=None, kind="manual", reason="pgrunbook demo", compress=None,
            exclude_schema=None, exclude_table_data=None, verbose=False, json=False), settings)
        _out()
    cmd_list(argparse.Namespace(json=False, verify=False), settings)
    _out()
    _out("Try it against the demo database:")
    _out(f"  pgrunbook --env-file {env_rel} backup --reason 'trying pgrunbook'")
    _out(f"  pgrunbook --env-file {env_rel} list --verify")
    _out(f"  pgrunbook --env-file {env_rel} audit")
    _out("Stop and remove the demo database: pgrunbook demo --stop")
    return EXIT_OK


# -- parser ------------------------------------------------------------------------------------


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="pgrunbook",
        description="Back up and restore a PostgreSQL (Supabase) database.",
        epilog=EXIT_CODES_HELP,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--env-file", metavar="PATH",
                        help="settings file (default: ./.env.deployment, or $PGRUNBOOK_ENV_FILE)")
    parser.add_argument("--target", metavar="NAME",
                        help="named target (production, staging, local, ...)")
    parser.add_argument("-v", "--verbose", action="store_true",
                        help="show the PostgreSQL tools' own output")
    parser.add_argument("--version", action="version", version=f"pgrunbook {tui.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("backup", help="take a backup of the target",
                       description="Take a checksummed backup with per-table row counts.")
    p.add_argument("name", nargs="?", help="name part of the file (default by kind)")
    p.add_argument("--kind", default="manual",
                   choices=["manual", "pre-migration", "emergency", "release"])
    p.add_argument("--reason", help="why: recorded in the metadata and the audit trail")
    p.add_argument("--compress", metavar="SPEC",
                   help="zstd:LEVEL (default zstd:3), gzip:LEVEL or none")
    p.add_argument("--exclude-schema", action="append", metavar="PATTERN",
                   help="leave a schema out (repeatable)")
    p.add_argument("--exclude-table-data", action="append", metavar="PATTERN",
                   help="keep a table's definition but not its rows (repeatable)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_backup)

    p = sub.add_parser("list", help="list local backups, newest first")
    p.add_argument("--json", action="store_true", help="print a JSON array")
    p.add_argument("--verify", action="store_true", help="also check every archive's SHA-256")
    p.set_defaults(func=cmd_list)

    p = sub.add_parser("audit", help="show the audit trail")
    p.add_argument("--json", action="store_true", help="print the raw JSON lines")
    p.add_argument("--limit", type=int, default=0, metavar="N", help="only the last N lines")
    p.add_argument("--operation", metavar="OP", help="only this operation (backup, restore, ...)")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("demo", help="start a throwaway demo database, back it up, list backups")
    p.add_argument("--rows", type=int, default=50_000, metavar="N",
                   help="transactions to generate (default 50000)")
    p.add_argument("--backup", action="store_true",
                   help="take another backup even if the demo is already running")
    p.add_argument("--stop", action="store_true", help="stop and remove the demo database")
    p.set_defaults(func=None, demo=True)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    try:
        if args.command == "demo":
            return cmd_demo(args)
        settings = load_settings(env_file=args.env_file, target=args.target)
        for warning in settings.warnings:
            _err(f"warning: {warning}")
        code: int = args.func(args, settings)
        return code
    except PgRunbookError as exc:
        _err(f"error: {exc.message}")
        if exc.hint:
            _err(f"  {exc.hint}")
        if exc.detail and getattr(args, "verbose", False):
            _err(exc.detail)
        return exc.exit_code
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
        return EXIT_FAILED


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main(sys.argv[1:]))

