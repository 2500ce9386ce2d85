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
    EXIT_MISMATCH,
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
    Progress,
    RestoreLine,
    TableChecked,
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
    from tui.core.fmt import size

    return size(n)


def _age(dt: datetime | None, now: datetime | None = None) -> str:
    from tui.core.fmt import age

    return age(dt, now)


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
        elif isinstance(event, Progress):
            self._generic_progress(event)
        elif isinstance(event, RestoreLine):
            if self.verbose or event.is_error:
                self._line(f"  {event.line}")
        elif isinstance(event, TableChecked):
            if self.verbose:
                self._line(f"  verify: {event.describe()}")
        elif isinstance(event, BackupFinished):
            self._stop_bar()

    def _line(self, text: str) -> None:
        """A line of output above the progress bar, if one is showing."""
        if self._progress is not None:
            self._progress.console.print(text, markup=False, highlight=False)
        else:
            _out(text, self.stream)

    def _generic_progress(self, event: Progress) -> None:
        if self.tty:
            if self._progress is None:
                from rich.console import Console
                from rich.progress import (
                    BarColumn,
                    MofNCompleteColumn,
                    TextColumn,
                    TimeElapsedColumn,
                    TimeRemainingColumn,
                )
                from rich.progress import (
                    Progress as Bar,
                )

                self._progress = Bar(
                    TextColumn(f"  {event.phase}"), BarColumn(), MofNCompleteColumn(),
                    TimeElapsedColumn(), TimeRemainingColumn(),
                    console=Console(file=self.stream), transient=True,
                )
                self._progress.start()
                self._task = self._progress.add_task(event.phase, total=event.total)
            self._progress.update(self._task, completed=event.done, total=event.total)
            return
        now = time.monotonic()
        if now - self._last_plain >= 5:
            self._last_plain = now
            of = f" of {event.total:,}" if event.total else ""
            eta = f", about {event.eta:.0f}s left" if event.eta else ""
            _out(f"  {event.phase}: {event.done:,}{of} {event.unit}, {event.elapsed:.0f}s "
                 f"elapsed{eta}", self.stream)

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
        lock_wait_timeout=args.lock_wait_timeout, upload=not args.no_upload,
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
            "rows": result.rows, "kind": request.kind, "s3_key": result.s3_key,
            "upload_error": result.upload_error,
        }, indent=2))
        return EXIT_FAILED if result.upload_error else EXIT_OK
    archive = result.meta["archive"]
    _out(f"Backup complete: {result.name}")
    _out(f"  file      {result.path} ({_size(result.size_bytes)}, {archive['compression']})")
    _out(f"  metadata  {result.meta_path}")
    _out(f"  sha256    {result.sha256}")
    _out(f"  contents  {result.tables} tables, {result.rows:,} rows "
         "(counted in the dump's own snapshot)")
    _out(f"  took      {result.duration:.1f}s")
    if result.s3_key:
        _out(f"  s3        {result.s3_key} (metadata.json uploaded last)")
    if result.upload_error:
        _err(f"error: backed up locally, upload failed: {result.upload_error}")
        _err(f"  The local backup is complete. Retry with: pgrunbook upload {result.name}")
        return EXIT_FAILED
    return EXIT_OK


def _print_verify(report: Any, limit: int = 40, restore_failed: bool = False) -> None:
    """The verification table and its verdict; after a failed restore the verdict is the
    failure's, so a passing check only says what matched."""
    rows = []
    for r in report.ordered()[:limit]:
        actual = "missing" if r.actual is None else f"{r.actual:,}"
        diff = "" if r.difference is None else f"{r.difference:+,}"
        rows.append([f"{r.schema}.{r.table}", f"{r.expected:,}", actual, diff, r.status.upper()])
    _out(_table(rows, ["TABLE", "EXPECTED", "ACTUAL", "DIFF", "STATUS"]))
    if len(report.rows) > limit:
        _out(f"... and {len(report.rows) - limit} more tables, all OK.")
    schemas = ", ".join(f"{k} {v['actual']}/{v['expected']}"
                        for k, v in report.tables_per_schema.items())
    _out(f"Tables per schema (restored/expected): {schemas}")
    if report.key_tables:
        _out("Key tables: " + ", ".join(
            f"{r.schema}.{r.table} {r.actual if r.actual is not None else 'missing'}"
            for r in report.key_tables))
    # What an application would hit beyond the rows (grants, RLS, sequences...), fails first.
    for d in report.failures + report.warnings:
        _out(d.describe())
    if report.differences is None:
        _out("Application state (grants, RLS, sequences...): not recorded by this backup.")
    total = sum(r.expected for r in report.rows)
    warned = f" ({len(report.warnings)} warnings)" if report.warnings else ""
    if report.passed and restore_failed:
        _out(f"Row counts match the backup in all {len(report.rows)} tables, but the restore "
             "FAILED: see the errors below.")
    elif report.passed:
        _out(f"VERIFICATION PASS: {len(report.rows)} tables, {total:,} rows match the backup"
             f"{'' if report.differences is None else '; grants, RLS and sequences too'}"
             f"{warned}.")
    elif not report.mismatches:
        _out(f"VERIFICATION FAIL: every row is back, but {len(report.failures)} of the "
             f"application's grants, policies, sequences... are not{warned}.")
    else:
        _out(f"VERIFICATION FAIL: {len(report.mismatches)} of {len(report.rows)} tables differ "
             f"from the backup"
             f"{f', and {len(report.failures)} application state failures' if report.failures else ''}"
             f"{warned}.")


def _sub_target(args: argparse.Namespace) -> None:
    sub = getattr(args, "sub_target", None)
    if sub:
        args.target = sub


def _ask_on_terminal(confirmation: Any) -> Any:
    """The CLI's confirmation: a prompt on the terminal, read in a daemon thread so Ctrl-C
    still cancels at once."""
    import threading

    target = confirmation.target

    async def ask(_: Any) -> str | None:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[str | None] = loop.create_future()
        if confirmation.typed_name_required:
            prompt = (f"Restore {confirmation.backup} into {target.name.upper()} "
                      f"({target.describe()})?\nBecause {confirmation.reason}, type the database "
                      f"name ({target.dbname}) to confirm: ")
        else:
            prompt = (f"Restore {confirmation.backup} into {target.name} ({target.describe()}),"
                      " replacing its data? [y/N] ")

        def read() -> None:
            try:
                answer: str | None = input(prompt)
            except EOFError:
                answer = None
            loop.call_soon_threadsafe(lambda: future.done() or future.set_result(answer))

        threading.Thread(target=read, daemon=True).start()
        return await future

    return ask(confirmation)


def cmd_restore(args: argparse.Namespace, settings: Settings) -> int:
    from tui.core.restore import RestoreFailed, RestoreRequest, run_restore

    if not args.backup:
        code = cmd_list(argparse.Namespace(json=False, verify=False), settings)
        _out("Restore one with: pgrunbook restore latest | NAME | PATH  (--help for options)")
        return code
    request = RestoreRequest(
        backup=args.backup, jobs=args.jobs, reason=args.reason, confirm_name=args.confirm,
        confirmed=args.yes, terminate_connections=args.terminate_connections,
        safety_backup=not args.no_safety_backup, owners=args.owners,
        app_schemas_only=args.app_schemas_only, lock_timeout=args.lock_timeout,
        verify=not args.no_verify,
    )
    interactive = sys.stdin.isatty() and not args.json
    t = settings.target
    banner = "PRODUCTION " if t.production else ""
    _err(f"Restoring {args.backup} into {banner}target {t.name} ({t.describe()})")
    renderer = Renderer(verbose=args.verbose)
    try:
        result = run_async(lambda: run_restore(
            settings, request, renderer, ask=_ask_on_terminal if interactive else None))
    except RestoreFailed as exc:
        renderer._stop_bar()
        if exc.result is not None and not args.json:
            _print_restore(exc.result, failed=True)
        raise
    finally:
        renderer._stop_bar()
    if args.json:
        _out(json.dumps(restore_json(result), indent=2, ensure_ascii=False))
    else:
        _print_restore(result)
    if not result.passed:
        return EXIT_MISMATCH
    return EXIT_OK


def restore_json(result: Any) -> dict[str, Any]:
    return {
        "backup": result.backup, "target": result.target.public(),
        "target_kind": result.target_kind, "result": "PASS" if result.passed else "FAIL",
        "safety_backup": result.safety_backup, "safety_note": result.safety_note,
        "filtered": result.filtered, "warnings": result.warnings,
        "not_restored": result.not_restored, "recreated": result.recreated,
        "gone": result.gone, "restore_seconds": round(result.restore_seconds, 3),
        "seconds": round(result.seconds, 3),
        "undo_command": None if result.passed else result.undo_command,
        "verification": result.verify.as_json() if result.verify else None,
    }


def _print_restore(result: Any, failed: bool = False) -> None:
    """What a restore did; `failed`: pg_restore's errors fail it (the error says so next)."""
    t = result.target
    _out(f"Restore of {result.backup} into {t.name} ({t.describe()}) ran in "
         f"{result.restore_seconds:.1f}s")
    _out(f"  safety backup: {result.safety_backup or result.safety_note}")
    if result.filtered:
        _out(f"  left out: {len(result.filtered)} entries the target keeps as its own "
             "(listed above and in the log)")
    if result.not_restored:
        _out(f"  data not restored ({len(result.not_restored)} tables the target keeps): "
             + ", ".join(result.not_restored[:8])
             + (f" and {len(result.not_restored) - 8} more" if len(result.not_restored) > 8
                else ""))
    for text in result.warnings:
        _out(f"  warning: {text}")
    for text in result.recreated:
        _out(f"  recreated: {text}")
    for text in result.gone:
        _out(f"  LOST: {text}")
    if result.verify is not None:
        _print_verify(result.verify, restore_failed=failed)
    if failed:
        return
    if result.gone:
        _out(f"RESTORE FAIL: {len(result.gone)} object(s) outside the restored schemas were "
             "lost (LOST above).")
    if result.passed:
        if result.warnings or result.filtered:
            kept = f"{len(result.filtered)} entries kept as the target's own" \
                if result.filtered else ""
            harmless = f"{len(result.warnings)} harmless pg_restore error(s)" \
                if result.warnings else ""
            _out(f"PASS with warnings: {'; '.join(t for t in (kept, harmless) if t)} "
                 "(listed above).")
        if result.safety_backup:
            _out(f"The safety backup {result.safety_backup} holds the state before this "
                 "restore.")
    elif result.undo_command:
        _out(f"To undo this restore: {result.undo_command}")


def last_restored(settings: Settings) -> str | None:
    from tui.core.audit import AuditLog

    name = None
    for e in AuditLog(settings.backup_dir).entries():
        if (e.get("operation") == "restore" and e.get("event") == "end"
                and e.get("result") in ("ok", "verify-failed")
                and (e.get("target") or {}).get("name") == settings.target.name
                and (e.get("target") or {}).get("database") == settings.target.dbname):
            name = e.get("backup")
    return name


def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    from tui.core.errors import ConfigError, OperationFailed
    from tui.core.restore import resolve_backup
    from tui.core.verify import run_verify

    spec = args.backup or last_restored(settings)
    if not spec:
        raise ConfigError(f"nothing has been restored into {settings.target.name!r} yet.",
                          "Name the backup to compare with: pgrunbook verify NAME")
    entry = resolve_backup(settings, spec)
    if entry.meta is None:
        raise OperationFailed(f"backup {entry.name} has no readable metadata to compare with.")
    _err(f"Verifying {settings.target.name} ({settings.target.describe()}) against {entry.name}")
    report = run_verify(settings, entry.meta, jobs=args.jobs or 4,
                        emit=Renderer(verbose=args.verbose))
    if args.json:
        _out(json.dumps(report.as_json(), indent=2, ensure_ascii=False))
    else:
        _print_verify(report)
    return EXIT_OK if report.passed else EXIT_MISMATCH


def cmd_drill(args: argparse.Namespace, settings: Settings) -> int:
    from tui.core.drill import run_drill

    renderer = Renderer(verbose=args.verbose)
    spec = args.backup or "latest"
    where = f"a scratch database on {settings.target.name}" if args.target else \
        "a throwaway local PostgreSQL"
    _err(f"Drill: restoring {spec} into {where}")
    try:
        result = run_async(lambda: run_drill(settings, spec, on_target=bool(args.target),
                                             jobs=args.jobs, emit=renderer))
    finally:
        renderer._stop_bar()
    if args.json:
        _out(json.dumps({
            "backup": result.backup, "result": "PASS" if result.passed else "FAIL",
            "restore_seconds": round(result.restore_seconds, 3),
            "total_seconds": round(result.total_seconds, 3), "report": str(result.report_path),
            "restored_into": result.where, "server_version": result.server_version,
            "verification": result.verify.as_json() if result.verify else None,
        }, indent=2, ensure_ascii=False))
    else:
        if result.verify is not None:
            _print_verify(result.verify)
        _out(f"Drill {'PASS' if result.passed else 'FAIL'}: {result.backup} restored into "
             f"{result.where} in {result.restore_seconds:.1f}s (recovery time).")
        _out(f"Report: {result.report_path}")
    return EXIT_OK if result.passed else EXIT_MISMATCH


def _require_s3(settings: Settings) -> Any:
    from tui.core.errors import ConfigError
    from tui.core.s3 import s3_config

    s3 = s3_config(settings)
    if s3 is None:
        raise ConfigError("S3 is not configured.", "Set BACKUP_S3_BUCKET in .env.deployment.")
    return s3


def cmd_upload(args: argparse.Namespace, settings: Settings) -> int:
    from tui.core.audit import AuditLog
    from tui.core.errors import OperationFailed
    from tui.core.restore import resolve_backup, sha256_matches
    from tui.core.s3 import describe_error, upload_existing

    s3 = _require_s3(settings)
    entry = resolve_backup(settings, args.backup)
    if entry.meta is None or not entry.complete:
        raise OperationFailed(f"backup {entry.name} is not complete: {'; '.join(entry.problems)}.")
    if not sha256_matches(entry):
        raise OperationFailed(f"backup {entry.name} is damaged (checksum mismatch): not uploaded.")
    record = AuditLog(settings.backup_dir).start(
        "upload", target=None, arguments={"backup": entry.name, "bucket": s3.bucket},
        reason=None)
    _err(f"Uploading {entry.name} to s3://{s3.bucket}/{s3.prefix}{entry.name[:15]}/")
    try:
        key = upload_existing(s3, entry.path, entry.meta)
    except Exception as exc:
        message = exc.message if isinstance(exc, PgRunbookError) else describe_error(exc)
        record.finish("failed", message)
        raise OperationFailed(f"upload of {entry.name} failed: {message}",
                              "The local backup is intact; retry later.") from None
    record.finish("ok", None, backup=entry.name, s3_key=key)
    _out(f"Uploaded {entry.name}: s3://{s3.bucket}/{key}")
    return EXIT_OK


def cmd_download(args: argparse.Namespace, settings: Settings) -> int:
    from tui.core.restore import resolve_backup

    _require_s3(settings)
    renderer = Renderer(verbose=args.verbose)
    entry = resolve_backup(settings, args.backup, renderer)
    renderer._stop_bar()
    _out(f"{entry.name}: {entry.path} (checksum verified against metadata.json)")
    return EXIT_OK


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    from tui.core.inventory import merged_inventory
    from tui.core.s3 import describe_error, s3_config

    s3 = s3_config(settings)
    try:
        entries = merged_inventory(settings.backup_dir, s3, verify=args.verify)
    except PgRunbookError:
        raise
    except Exception as exc:
        if s3 is None:
            raise
        from tui.core.inventory import list_backups

        _err(f"warning: cannot list s3://{s3.bucket}/{s3.prefix}: {describe_error(exc)}; "
             "showing local backups only.")
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
        drill = (e.meta or {}).get("drill") or {}
        drilled = "-"
        if drill.get("result"):
            from tui.core.inventory import _parse_time

            drilled = f"{drill['result']} {_age(_parse_time(drill.get('verified_at')), now)}"
        rows.append([e.name, e.kind or "?", created, _age(e.created_at, now),
                     _size(e.size_bytes), e.location, drilled, "; ".join(e.problems) or "ok"])
    _out(f"Backups in {settings.backup_dir} (newest first, times UTC"
         f"{', checksums verified' if args.verify else ''}):")
    _out(_table(rows, ["NAME", "KIND", "CREATED", "AGE", "SIZE", "WHERE", "DRILL", "STATUS"]))
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


def tui_problem() -> str | None:
    """Why the full-screen UI cannot start here, in one line, or None."""
    import locale
    import shutil

    if not (sys.stdin.isatty() and sys.stdout.isatty()):
        return ("the runbook UI needs a terminal; for scripts and cron use the commands "
                "(pgrunbook --help).")
    # The terminal's character set comes from the locale (Python itself may run in UTF-8 mode).
    ctype = (os.environ.get("LC_ALL") or os.environ.get("LC_CTYPE") or os.environ.get("LANG")
             or locale.setlocale(locale.LC_CTYPE, None) or "")
    if "utf-8" not in ctype.lower().replace("utf8", "utf-8"):
        return (f"the locale is {ctype or 'unset'}, not UTF-8: run `export LANG=C.UTF-8` "
                "(or another UTF-8 locale) and try again.")
    try:  # the terminal itself, not COLUMNS/LINES left in the environment
        cols, rows = os.get_terminal_size(sys.stdout.fileno())
    except OSError:
        cols, rows = shutil.get_terminal_size((0, 0))
    if cols < 80 or rows < 24:
        return (f"the terminal is {cols}x{rows}; the runbook UI needs at least 80x24. "
                "Enlarge the window (or tmux pane) and try again.")
    return None


def cmd_tui(args: argparse.Namespace, settings: Settings) -> int:
    from tui.core.errors import ConfigError

    problem = tui_problem()
    if problem:
        raise ConfigError(problem)
    if os.environ.get("SSH_CONNECTION") or os.environ.get("SSH_CLIENT"):
        os.environ.setdefault("TEXTUAL_ANIMATIONS", "none")
    from tui.app import make_app

    make_app(settings).run()
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from tui.core.demo import demo_dir, demo_settings, start_demo, stop_demo

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
    settings = demo_settings(demo)  # its own file alone: never the exported environment
    for warning in settings.warnings:
        _err(f"note: {warning}")
    if demo.created:
        from tui.core.demo import seed_history

        _err("Taking a few backups of the demo data as it grows (dated back, for the inventory)...")
        for name in seed_history(settings):
            _err(f"  {name}")
    if demo.created or args.backup:
        cmd_backup(argparse.Namespace(
            name=None, kind="manual", reason="pgrunbook demo", compress=None,
            lock_wait_timeout=None, no_upload=False,
            exclude_schema=None, exclude_table_data=None, verbose=False, json=False), settings)
        _out()
    if not args.no_tui and tui_problem() is None:
        return cmd_tui(args, settings)
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
    p.add_argument("--lock-wait-timeout", metavar="TIME",
                   help="fail instead of waiting longer than TIME for a table lock (e.g. 5min)")
    p.add_argument("--no-upload", action="store_true",
                   help="do not copy this backup to S3 (upload it later with `upload`)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_backup)

    p = sub.add_parser("upload", help="copy a local backup to S3 (retry a failed upload)")
    p.add_argument("backup", metavar="BACKUP", help="a backup name as `list` shows it, or a path")
    p.set_defaults(func=cmd_upload)

    p = sub.add_parser("download", help="fetch a backup from S3 and verify it, without restoring")
    p.add_argument("backup", metavar="BACKUP",
                   help="a name, YYYYMMDD_HHMMSS, or <prefix>YYYYMMDD_HHMMSS/database.backup")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("restore", help="restore a backup into the target (safety backup first)",
                       description="Restore a backup: checksum, confirmation, safety backup, "
                                   "pg_restore, row-count verification.")
    p.add_argument("backup", nargs="?", metavar="BACKUP",
                   help="latest, a backup name as `list` shows it, or a path; none: list them")
    p.add_argument("--target", dest="sub_target", metavar="NAME", help="target to restore into")
    p.add_argument("--jobs", type=int, metavar="N", help="parallel pg_restore jobs (default: cores, "
                   "at most 8)")
    p.add_argument("--reason", help="why (the SOP's justification): recorded in the audit trail")
    p.add_argument("--confirm", metavar="DBNAME",
                   help="the target's database name, typed: required for production")
    p.add_argument("--yes", action="store_true",
                   help="confirm a non-production target without a prompt")
    p.add_argument("--terminate-connections", action="store_true",
                   help="end other sessions on the target database first")
    p.add_argument("--no-safety-backup", action="store_true",
                   help="skip the safety backup (needs --confirm DBNAME; audited)")
    p.add_argument("--owners", choices=["auto", "keep", "drop"], default="auto",
                   help="keep or drop ownership and grants (auto: drop unless production)")
    p.add_argument("--app-schemas-only", action="store_true",
                   help="leave Supabase-managed schemas (auth, storage, ...) and extensions out")
    p.add_argument("--lock-timeout", default="30s", metavar="TIME",
                   help="give up on a lock after this long (default 30s)")
    p.add_argument("--no-verify", action="store_true", help="skip the row-count verification")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_restore)

    p = sub.add_parser("verify", help="compare the target's row counts with a backup's")
    p.add_argument("backup", nargs="?", metavar="BACKUP",
                   help="default: the backup most recently restored into the target")
    p.add_argument("--target", dest="sub_target", metavar="NAME", help="target to check")
    p.add_argument("--jobs", type=int, metavar="N", help="connections counting at once (4)")
    p.add_argument("--json", action="store_true", help="print the comparison as JSON")
    p.set_defaults(func=cmd_verify)

    p = sub.add_parser("drill", help="test-restore a backup into a throwaway PostgreSQL")
    p.add_argument("backup", nargs="?", metavar="BACKUP", help="default: latest")
    p.add_argument("--target", dest="sub_target", metavar="NAME",
                   help="use a scratch database on this target's server instead")
    p.add_argument("--jobs", type=int, metavar="N", help="parallel pg_restore jobs")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_drill)

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
    p.add_argument("--no-tui", action="store_true",
                   help="print the inventory instead of opening the runbook UI")
    p.set_defaults(func=None, demo=True)

    p = sub.add_parser("tui", help="open the runbook UI (also: pgrunbook with no command)")
    p.set_defaults(func=cmd_tui)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
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
        code: int = args.func(args, settings)
        return code
    except PgRunbookError as exc:
        _err(f"error: {exc.message}")
        hint = " ".join(part for part in (
            exc.hint, f"Full output: {exc.log_path}" if exc.log_path else None) if part)
        if hint:
            _err(f"  {hint}")
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

