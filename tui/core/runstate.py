"""A runbook run saved after every change (BACKUP_DIR/runs/<id>.json, 0600, written
atomically), so that a run outlives the terminal that showed it: reopening the TUI after an SSH
drop offers the unfinished run and continues it at its step."""

from __future__ import annotations

import contextlib
import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tui.core.fsutil import atomic_write_bytes, ensure_private_dir
from tui.core.runbook import Runbook, RunbookRun, StepState
from tui.core.settings import Settings

RUNS_DIR = "runs"


def _when(value: datetime | None) -> str | None:
    return value.isoformat() if value is not None else None


def _parse(value: Any) -> datetime | None:
    return datetime.fromisoformat(value) if isinstance(value, str) else None


def to_json(run: RunbookRun) -> dict[str, Any]:
    return {
        "id": run.id, "runbook": run.runbook.id, "current": run.current,
        "started": _when(run.started), "reason": run.reason, "audit_id": run.audit_id,
        "target": run.target, "restored": run.restored, "selected_backup": run.selected_backup,
        "backups_taken": list(run.backups_taken), "impact": run.impact,
        "updates": list(run.updates),
        "closed": run.closed, "report_path": run.report_path,
        "timeline": [[_when(t), text] for t, text in run.timeline],
        "steps": [{"id": st.step.id, "status": st.status, "ticked": sorted(st.ticked),
                   "reason": st.reason, "detail": st.detail, "started": _when(st.started),
                   "finished": _when(st.finished), "job_id": st.job_id}
                  for st in run.states],
    }


def from_json(data: dict[str, Any], runbooks: dict[str, Runbook]) -> RunbookRun | None:
    """The saved run, or None when its runbook is gone or has other steps now."""
    book = runbooks.get(str(data.get("runbook")))
    saved = data.get("steps") or []
    if book is None or [s.id for s in book.steps] != [s.get("id") for s in saved]:
        return None
    states = [StepState(step, status=str(s.get("status")), ticked=set(s.get("ticked") or ()),
                        reason=s.get("reason"), detail=s.get("detail"),
                        started=_parse(s.get("started")), finished=_parse(s.get("finished")),
                        job_id=s.get("job_id"))
              for step, s in zip(book.steps, saved, strict=True)]
    run = RunbookRun(book, states=states, current=int(data.get("current") or 0),
                     timeline=[(t, text) for when, text in data.get("timeline") or []
                               if (t := _parse(when)) is not None],
                     id=str(data["id"]), reason=data.get("reason"),
                     audit_id=data.get("audit_id"), target=data.get("target"),
                     restored=data.get("restored"), selected_backup=data.get("selected_backup"),
                     backups_taken=[str(n) for n in data.get("backups_taken") or []],
                     impact=data.get("impact"),
                     updates=[dict(u) for u in data.get("updates") or [] if isinstance(u, dict)],
                     closed=bool(data.get("closed")), report_path=data.get("report_path"))
    started = _parse(data.get("started"))
    if started is not None:
        run.started = started
    return run


def runs_dir(backup_dir: Path) -> Path:
    return backup_dir / RUNS_DIR


def save(backup_dir: Path, run: RunbookRun) -> None:
    directory = ensure_private_dir(runs_dir(backup_dir))
    # Atomic, not fsynced: it is written on the event loop at every tick, and what it must
    # survive is a dropped terminal (the page cache outlives the process), not a power cut.
    atomic_write_bytes(directory / f"{run.id}.json",
                       json.dumps(to_json(run), indent=1, ensure_ascii=False).encode(),
                       durable=False)


def unfinished(backup_dir: Path, runbooks: list[Runbook],
               target: dict[str, Any] | None = None) -> list[RunbookRun]:
    """Runs that were neither completed nor closed (the app died with them), newest first;
    with `target`, only those on that endpoint."""
    directory = runs_dir(backup_dir)
    if not directory.is_dir():
        return []
    books = {b.id: b for b in runbooks}
    found = []
    for name in sorted(os.listdir(directory), reverse=True):
        if not name.endswith(".json"):
            continue
        with contextlib.suppress(OSError, ValueError, KeyError, TypeError):
            data = json.loads((directory / name).read_text(encoding="utf-8"))
            if data.get("closed"):
                continue
            if target is not None and _endpoint(data.get("target")) != _endpoint(target):
                continue
            run = from_json(data, books)
            if run is not None:
                found.append(run)
    return found


def _endpoint(target: dict[str, Any] | None) -> tuple[Any, ...]:
    t = target or {}
    return (t.get("host"), t.get("port"), t.get("database"))


def run_times(run: RunbookRun) -> dict[str, float | None]:
    """The times an incident review asks for: each step's (in the report's table), the run's
    from its first action to its verification (the recovery time), and the whole run's."""
    acted = [st for st in run.states if st.started is not None]
    verified = [st for st in run.states if st.step.kind in ("verify", "restore")
                and st.status == "done" and st.finished is not None]
    first = min((st.started for st in acted if st.started), default=None)
    last = max((st.finished for st in run.states if st.finished), default=None)
    end = max((st.finished for st in verified if st.finished), default=None)
    return {
        "first_action_to_verification_seconds":
            round((end - first).total_seconds(), 1) if first and end else None,
        "run_seconds": round((last - run.started).total_seconds(), 1) if last else None,
    }


def incident_record(settings: Settings, run: RunbookRun, result: Any) -> dict[str, Any]:
    """Who ran the runbook, from where, into which target; the backup restored and why that
    one; the safety backup and how to undo; the verdict; the times. For the report and the
    audit record alike."""
    from tui.core.audit import operator_identity

    t = settings.target
    record: dict[str, Any] = {
        "operator": operator_identity(),
        "target": {"name": t.name, "endpoint": f"{t.host}:{t.port}/{t.dbname}",
                   "production": t.production},
        **run_times(run),
        "impact": run.impact,
        "team_updates": {"posted": sum(1 for u in run.updates if u.get("posted")),
                         "shown_to_copy": sum(1 for u in run.updates if not u.get("posted"))},
    }
    if result is not None:
        record.update(
            backup=result.backup,
            backup_chosen=("picked by the operator in the backup browser"
                           if run.selected_backup == result.backup else
                           "latest: the newest complete backup that is not a safety copy"),
            safety_backup=result.safety_backup, safety_note=result.safety_note or None,
            undo=result.undo_command,
            restore_operation_seconds=round(result.seconds, 1),
            pg_restore_seconds=round(result.restore_seconds, 1),
            verdict=("PASS" if result.passed else "FAIL") if result.verify is not None
            else "not verified")
    return record


def incident_section(record: dict[str, Any]) -> str:
    """The incident record as the report's first section."""
    op = record["operator"]
    who = str(op.get("user") or "?") + (f" (sudo by {op['sudo_user']})" if op.get("sudo_user")
                                        else "")
    lines = ["## Incident record", "",
             f"- Operator: {who}, on {op.get('host') or '?'}"
             + (f", SSH from {op['ssh_client']}" if op.get("ssh_client") else ""),
             f"- Target: {record['target']['name']} ({record['target']['endpoint']})"
             + (", production" if record["target"]["production"] else "")]
    if "backup" in record:
        lines += [f"- Backup restored: {record['backup']} ({record['backup_chosen']})",
                  f"- Safety backup: {record['safety_backup'] or 'none'}"
                  + (f" ({record['safety_note']})" if record.get("safety_note") else ""),
                  f"- Undo: `{record['undo']}`" if record.get("undo") else "- Undo: -",
                  f"- Verification: {record['verdict']}",
                  f"- Restore operation: {record['restore_operation_seconds']} s "
                  f"(pg_restore {record['pg_restore_seconds']} s of it)"]
    updates = record.get("team_updates") or {}
    lines.append(f"- Impact: {record.get('impact') or 'not given'}; team updates: "
                 f"{updates.get('posted', 0)} posted, {updates.get('shown_to_copy', 0)} shown "
                 "to copy (no webhook, or the post failed)")
    recovery = record.get("first_action_to_verification_seconds")
    lines.append(f"- From the first action to the verification: "
                 f"{f'{recovery} s' if recovery is not None else '-'}; the whole run: "
                 f"{record.get('run_seconds') or '-'} s")
    return "\n".join(lines) + "\n"


def verification_section(result: Any) -> str:
    """The report's verification part for a restore's result (or ""): the verdict, then the
    tables, the differing ones first."""
    if result is None or result.verify is None:
        return ""
    v = result.verify
    return (f"## Verification: {'PASS' if v.passed else 'FAIL'}\n\n"
            "| table | expected | actual |\n| --- | ---: | ---: |\n" +
            "\n".join(f"| {r.schema}.{r.table} | {r.expected} | {r.actual} |"
                      for r in v.ordered()) +
            "".join(f"\n\n{d.describe()}" if i == 0 else f"\n{d.describe()}"
                    for i, d in enumerate(v.failures + v.warnings)))


def close(settings: Settings, run: RunbookRun, result: str, error: str | None = None,
          extra: str = "", restore_result: Any = None) -> Path:
    """End a run once: its Markdown report, its audit record's end line, and the saved run
    marked closed. Every run ends here, completed, left part-way, or dropped and not resumed."""
    from tui.core.audit import AuditLog
    from tui.core.drill import reports_dir
    from tui.core.operation import secrets_of

    if run.closed and run.report_path:
        return Path(run.report_path)
    directory = ensure_private_dir(reports_dir(settings))
    stamp = datetime.now(UTC).strftime("%Y%m%d_%H%M%S")
    path = directory / f"runbook_{stamp}_{run.runbook.id}.md"
    record = incident_record(settings, run, restore_result)
    text = run.report(extra, incident_section(record)) + (f"\nReason: {run.reason}\n"
                                                           if run.reason else "")
    atomic_write_bytes(path, text.encode())
    if run.audit_id is not None:
        AuditLog(settings.backup_dir, secrets_of(settings)).resume(run.audit_id).finish(
            result, error, report=str(path), incident=record, steps=[
                {"id": st.step.id, "status": st.status,
                 **({"seconds": round(st.duration, 1)} if st.duration is not None else {}),
                 **({"reason": st.reason} if st.reason else {})}
                for st in run.states])
    run.closed, run.report_path = True, str(path)
    save(settings.backup_dir, run)
    return path
