"""What the CLI shows: output helpers, the engine-event renderer and the result printers.

Diagnostics (phases, progress, notices, warnings, errors) go to stderr; results (reports,
tables, JSON) go to stdout, so `pgrunbook list --json | jq` stays clean. `run_async` runs an
engine coroutine so that Ctrl-C and SIGTERM cancel it. Heavy imports (rich, the engine's
operation modules) stay inside the functions that need them, so the CLI starts quickly.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO, TypeVar

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

T = TypeVar("T")


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

    def __init__(self, verbose: bool = False, stream: TextIO | None = None, *,
                 quiet: bool = False) -> None:
        self.verbose = verbose
        self.quiet = quiet  # --quiet (cron): warnings and errors only
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
        if self.quiet and not (isinstance(event, Notice) and event.level != "info") and not (
                isinstance(event, RestoreLine) and event.is_error):
            return
        if isinstance(event, PhaseStarted):
            self._stop_bar()
            _out(f"· {event.describe()}", self.stream)
        elif isinstance(event, Notice):
            self._stop_bar()
            _out(event.describe(), self.stream)
        elif isinstance(event, ToolOutput):
            if self.verbose:
                _out(f"  {event.describe()}", self.stream)
        elif isinstance(event, DumpProgress):
            self._progress_event(event)
        elif isinstance(event, Progress):
            self._generic_progress(event)
        elif isinstance(event, RestoreLine):
            if self.verbose or event.is_error:
                self._line(f"  {event.describe()}")
        elif isinstance(event, TableChecked):
            if self.verbose:
                self._line(f"  {event.describe()}")
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


def backup_json(result: Any, kind: str) -> dict[str, Any]:
    return {
        "name": result.name, "path": str(result.path), "meta_path": str(result.meta_path),
        "size_bytes": result.size_bytes, "sha256": result.sha256,
        "duration_seconds": round(result.duration, 3), "tables": result.tables,
        "rows": result.rows, "kind": kind, "s3_key": result.s3_key,
        "upload_error": result.upload_error,
    }


def _print_backup(result: Any) -> None:
    """What a backup made; a failed upload is said on stderr, with the command to retry it."""
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
        failures = (f", and {len(report.failures)} application state failures"
                    if report.failures else "")
        _out(f"VERIFICATION FAIL: {len(report.mismatches)} of {len(report.rows)} tables differ "
             f"from the backup{failures}{warned}.")


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
    _out(f"  safety backup: {result.safety_note}")  # taken, reused or none, and why
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


def drill_json(result: Any) -> dict[str, Any]:
    return {
        "backup": result.backup, "result": "PASS" if result.passed else "FAIL",
        "restore_seconds": round(result.restore_seconds, 3),
        "total_seconds": round(result.total_seconds, 3), "report": str(result.report_path),
        "restored_into": result.where, "server_version": result.server_version,
        "verification": result.verify.as_json() if result.verify else None,
    }


def _print_drill(result: Any) -> None:
    if result.verify is not None:
        _print_verify(result.verify)
    _out(f"Drill {'PASS' if result.passed else 'FAIL'}: {result.backup} restored into "
         f"{result.where} in {result.restore_seconds:.1f}s (recovery time).")
    _out(f"Report: {result.report_path}")


def prune_json(plan: Any, result: Any | None) -> dict[str, Any]:
    """`pgrunbook prune --json`: the plan, and with --yes what the job did (else null)."""
    return {**plan.as_json(), "outcome": result.as_json() if result is not None else None}


def _print_prune_plan(plan: Any, backup_dir: Path) -> None:
    """The retention plan: every copy with keep or DELETE and its reason, then the totals."""
    p = plan.policy
    local = (f"local copies kept {p.local_days} days once in S3" if plan.s3_configured
             and p.local_days else "local copies follow the slots")
    anchor = plan.anchor.strftime("%Y-%m-%d %H:%M UTC") if plan.anchor else "none"
    _out(f"Retention plan for {backup_dir}{' and S3' if plan.s3_configured else ''}: daily "
         f"{p.daily_days} days, weekly {p.weekly_weeks} weeks, monthly {p.monthly_months} "
         f"months, at least {p.min_keep} kept, grace {p.grace_hours} h; {local}.")
    _out(f"Windows end at the newest good backup: {anchor}.")
    if not plan.decisions:
        _out(f"No backups in {backup_dir}.")
        return
    rows = []
    for d in plan.decisions:
        created = d.created_at.strftime("%Y-%m-%d %H:%M") if d.created_at else "-"
        until = f" (until {d.until:%Y-%m-%d})" if d.keep and d.until else ""
        rows.append(["keep" if d.keep else "DELETE", d.name, d.location, created,
                     _size(d.size_bytes), d.reason + until])
    _out(_table(rows, ["ACTION", "NAME", "WHERE", "CREATED", "SIZE", "REASON"]))
    gone = plan.deletions
    if not gone:
        _out(f"Nothing to delete: all {len(plan.decisions)} kept.")
        return
    n_local = sum(1 for d in gone if d.location == "local")
    _out(f"Delete {len(gone)} of {len(plan.decisions)}: {n_local} local (frees "
         f"{_size(plan.freed_bytes('local'))}), {len(gone) - n_local} in S3 (frees "
         f"{_size(plan.freed_bytes('s3'))}); keep {len(plan.kept)}.")


def _print_prune_result(result: Any) -> None:
    for s in result.skipped:
        _out(f"  left {s['name']} ({s['location']}): {s['why']}")
    for f in result.failed:
        _err(f"error: could not delete {f['name']} ({f['location']}): {f['error']}")
    n_local = sum(1 for d in result.deleted if d["location"] == "local")
    _out(f"Deleted {len(result.deleted)}: {n_local} local ({_size(result.freed_bytes('local'))}"
         f" freed), {len(result.deleted) - n_local} in S3 ({_size(result.freed_bytes('s3'))}"
         f" freed). Audit record {result.audit_id} (pgrunbook audit --operation prune).")


def _print_pin(result: Any) -> None:
    where = " and ".join("S3 metadata.json" if loc == "s3" else "local metadata"
                         for loc in result.locations)
    if result.pinned is not None:
        already = "" if result.changed else " (it was pinned already; the record is renewed)"
        _out(f"Pinned {result.name} in its {where}: prune keeps it forever{already}. "
             f"Unpin with: pgrunbook unpin {result.name}")
    elif result.changed:
        _out(f"Unpinned {result.name} in its {where}: the retention policy decides again.")
    else:
        _out(f"{result.name} was not pinned; nothing changed.")


def _print_list(entries: Sequence[Any], backup_dir: Path, verified: bool) -> None:
    """The inventory as a table, newest first, with a count of the backups that have problems."""
    if not entries:
        _out(f"No backups in {backup_dir}. Take one with: pgrunbook backup")
        return
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
    headers = ["NAME", "KIND", "CREATED", "AGE", "SIZE", "WHERE", "DRILL", "STATUS"]
    from tui.core.encryption import needed_key

    keys = [needed_key(e.meta) for e in entries]
    if any(keys):  # which key each backup needs, once any is encrypted
        headers.insert(6, "KEY")
        for row, key in zip(rows, keys, strict=True):
            row.insert(6, key or "none")
    _out(f"Backups in {backup_dir} (newest first, times UTC"
         f"{', checksums verified' if verified else ''}):")
    _out(_table(rows, headers))
    bad = sum(1 for e in entries if e.problems)
    if bad:
        _out(f"{bad} of {len(entries)} backups have problems.")


def _print_audit(entries: Sequence[dict[str, Any]], backup_dir: Path) -> None:
    """The audit trail, one line per start or end."""
    if not entries:
        _out(f"The audit trail in {backup_dir} is empty.")
        return
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
            if isinstance(e.get("deleted"), list):  # a prune
                extra += f" {len(e['deleted'])} deleted"
            err = f"  error: {e['error']}" if e.get("error") else ""
            _out(f"{head} {e.get('result', '?')}{extra} after "
                 f"{e.get('duration_seconds', 0):.1f}s{err}")


def _print_jobs(rows: Sequence[dict[str, Any]]) -> None:
    """`pgrunbook jobs`: newest first, who ran them from where; under each, its progress (a
    running job) or its outcome, so that a line fits 80 columns."""
    table = []
    details = []
    for r in rows:
        op = r.get("operator") or {}
        who = op.get("user", "?") + (f"@{op['ssh_client']}" if op.get("ssh_client") else "")
        status = str(r["status"])
        table.append([r["id"], r["operation"], status.upper() if status == "abandoned" else status,
                      (r.get("target") or {}).get("name", "-"), who,
                      str(r.get("started_at", "?"))[5:19].replace("T", " ")])
        details.append(str(r.get("progress") or r.get("summary") or ""))
    lines = _table(table, ["JOB", "OPERATION", "STATUS", "TARGET", "WHO", "STARTED UTC"]
                   ).splitlines()
    _out(lines[0])
    for line, detail in zip(lines[1:], details, strict=True):
        _out(line)
        if detail:
            _out(f"  {detail}")
    _out("Follow one with: pgrunbook attach JOB (the newest running one without JOB)")
