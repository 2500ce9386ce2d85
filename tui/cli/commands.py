"""The CLI's commands: each `cmd_*` turns parsed arguments into an engine call and renders it.

The engine modules are imported inside the commands, so `pgrunbook --help` and cron jobs load
only what they run; Textual is imported only by `cmd_tui`.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import sys
from typing import Any

from tui.cli.jobview import run_job
from tui.cli.render import (
    Renderer,
    _err,
    _out,
    _print_audit,
    _print_backup,
    _print_drill,
    _print_jobs,
    _print_list,
    _print_pin,
    _print_prune_plan,
    _print_prune_result,
    _print_restore,
    _print_verify,
    backup_json,
    drill_json,
    prune_json,
    restore_json,
)
from tui.core.errors import EXIT_FAILED, EXIT_MISMATCH, EXIT_OK
from tui.core.settings import Settings


def _renderer(args: argparse.Namespace) -> Renderer:
    return Renderer(verbose=args.verbose, quiet=getattr(args, "quiet", False))


def _say(args: argparse.Namespace, text: str) -> None:
    """A line about what is starting, on stderr; --quiet (cron) leaves it out."""
    if not getattr(args, "quiet", False):
        _err(text)


def cmd_backup(args: argparse.Namespace, settings: Settings) -> int:
    from tui.core.backup import BackupRequest

    request = BackupRequest(
        label=args.name, kind=args.kind, reason=args.reason, compression=args.compress,
        exclude_schema=tuple(args.exclude_schema or ()),
        exclude_table_data=tuple(args.exclude_table_data or ()),
        lock_wait_timeout=args.lock_wait_timeout, upload=not args.no_upload,
    )
    _say(args, f"Backing up {settings.target.name} ({settings.target.describe()}) "
         f"to {settings.backup_dir}")
    outcome = run_job(settings, "backup", request, _renderer(args),
                      arguments={"name": args.name, "kind": args.kind}, reason=args.reason)
    if not getattr(args, "pin", False):
        return show_backup(outcome, args.json)
    from tui.core.prune import PinRequest

    name = outcome.unwrap().name  # a failed backup raises here: nothing to pin
    pinned = run_job(settings, "pin", PinRequest(name, True, args.reason),
                     _renderer(args), arguments={"backup": name},
                     reason=args.reason).unwrap()
    return show_backup(outcome, args.json, pinned=pinned)


def show_backup(outcome: Any, as_json: bool, pinned: Any = None) -> int:
    result = outcome.unwrap()
    if as_json:
        out = backup_json(result, result.meta.get("kind"))
        if pinned is not None:
            out["pinned"] = pinned.pinned
        _out(json.dumps(out, indent=2))
        return EXIT_FAILED if result.upload_error else EXIT_OK
    _print_backup(result)
    if pinned is not None:
        _print_pin(pinned)
    return EXIT_FAILED if result.upload_error else EXIT_OK


def _sub_target(args: argparse.Namespace) -> None:
    sub = getattr(args, "sub_target", None)
    if sub:
        args.target = sub


def _ask_restore(confirmation: Any) -> str | None:
    """The CLI's confirmation, asked on the terminal before the restore's job starts."""
    target = confirmation.target
    if confirmation.typed_name_required:
        prompt = (f"Restore {confirmation.backup} into {target.name.upper()} "
                  f"({target.describe()})?\nBecause {confirmation.reason}, type the database "
                  f"name ({target.dbname}) to confirm: ")
    else:
        prompt = (f"Restore {confirmation.backup} into {target.name} ({target.describe()}),"
                  " replacing its data? [y/N] ")
    try:
        return input(prompt)
    except EOFError:
        return None


def cmd_restore(args: argparse.Namespace, settings: Settings) -> int:
    from tui.core.restore import RestoreRequest, confirmation_needed, confirmed_request

    if not args.backup:
        code = cmd_list(argparse.Namespace(json=False, verify=False), settings)
        _out("Restore one with: pgrunbook restore latest | NAME | PATH  (--help for options)")
        return code
    request = RestoreRequest(
        backup=args.backup, jobs=args.jobs, reason=args.reason, confirm_name=args.confirm,
        confirmed=args.yes, terminate_connections=args.terminate_connections,
        safety_backup=not args.no_safety_backup, safety_candidate=args.safety_candidate,
        owners=args.owners, app_schemas_only=args.app_schemas_only,
        lock_timeout=args.lock_timeout, verify=not args.no_verify,
    )
    interactive = sys.stdin.isatty() and not args.json
    t = settings.target
    banner = "PRODUCTION " if t.production else ""
    _say(args, f"Restoring {args.backup} into {banner}target {t.name} ({t.describe()})")
    confirmation = confirmation_needed(settings, request) if interactive else None
    if confirmation is not None:  # asked here: the job never waits for a terminal
        request = confirmed_request(request, confirmation, _ask_restore(confirmation))
    outcome = run_job(settings, "restore", request, _renderer(args),
                      arguments={"backup": request.backup}, reason=args.reason)
    return show_restore(outcome, args.json)


def show_restore(outcome: Any, as_json: bool) -> int:
    from tui.core.restore import RestoreFailed

    try:
        result = outcome.unwrap()
    except RestoreFailed as exc:
        if exc.result is not None and not as_json:
            _print_restore(exc.result, failed=True)
        raise
    if as_json:
        _out(json.dumps(restore_json(result), indent=2, ensure_ascii=False))
    else:
        _print_restore(result)
    return EXIT_OK if result.passed else EXIT_MISMATCH


def cmd_verify(args: argparse.Namespace, settings: Settings) -> int:
    from tui.core.audit import last_restored
    from tui.core.errors import ConfigError
    from tui.core.job_ops import VerifyRequest

    spec = args.backup or last_restored(settings.backup_dir, settings.target)
    if not spec:
        raise ConfigError(f"nothing has been restored into {settings.target.name!r} yet.",
                          "Name the backup to compare with: pgrunbook verify NAME")
    _say(args, f"Verifying {settings.target.name} ({settings.target.describe()}) against {spec}")
    outcome = run_job(settings, "verify", VerifyRequest(spec, jobs=args.jobs or 4),
                      _renderer(args), arguments={"backup": spec})
    return show_verify(outcome, args.json)


def show_verify(outcome: Any, as_json: bool) -> int:
    report = outcome.unwrap()
    if as_json:
        _out(json.dumps(report.as_json(), indent=2, ensure_ascii=False))
    else:
        _print_verify(report)
    return EXIT_OK if report.passed else EXIT_MISMATCH


def cmd_drill(args: argparse.Namespace, settings: Settings) -> int:
    from tui.core.job_ops import DrillRequest

    spec = args.backup or "latest"
    where = f"a scratch database on {settings.target.name}" if args.target else \
        "a throwaway local PostgreSQL"
    _say(args, f"Drill: restoring {spec} into {where}")
    outcome = run_job(settings, "drill", DrillRequest(spec, bool(args.target), args.jobs),
                      _renderer(args), arguments={"backup": spec},
                      target=settings.target.public() if args.target else {"name": "throwaway"})
    return show_drill(outcome, args.json)


def show_drill(outcome: Any, as_json: bool) -> int:
    result = outcome.unwrap()
    if as_json:
        _out(json.dumps(drill_json(result), indent=2, ensure_ascii=False))
    else:
        _print_drill(result)
    return EXIT_OK if result.passed else EXIT_MISMATCH


def _require_s3(settings: Settings) -> Any:
    from tui.core.errors import ConfigError
    from tui.core.s3 import s3_config

    s3 = s3_config(settings)
    if s3 is None:
        raise ConfigError("S3 is not configured.", "Set BACKUP_S3_BUCKET in .env.deployment.")
    return s3


def cmd_upload(args: argparse.Namespace, settings: Settings) -> int:
    from tui.core.job_ops import UploadRequest

    s3 = _require_s3(settings)
    _say(args, f"Uploading {args.backup} to s3://{s3.bucket}/{s3.prefix}")
    outcome = run_job(settings, "upload", UploadRequest(args.backup),
                      _renderer(args), arguments={"backup": args.backup})
    return show_upload(outcome, False)


def show_upload(outcome: Any, as_json: bool) -> int:
    where = outcome.unwrap()
    _out(json.dumps({"uploaded": where}) if as_json else f"Uploaded: {where}")
    return EXIT_OK


def cmd_download(args: argparse.Namespace, settings: Settings) -> int:
    from tui.core.job_ops import DownloadRequest

    _require_s3(settings)
    outcome = run_job(settings, "download", DownloadRequest(args.backup),
                      _renderer(args), arguments={"backup": args.backup})
    return show_download(outcome, False)


def show_download(outcome: Any, as_json: bool) -> int:
    entry = outcome.unwrap()
    _out(json.dumps({"name": entry.name, "path": str(entry.path)}) if as_json else
         f"{entry.name}: {entry.path} (checksum verified against metadata.json)")
    return EXIT_OK


def cmd_prune(args: argparse.Namespace, settings: Settings) -> int:
    """The plan; on a terminal, a y/N question; `--yes` deletes without one (cron), and
    `--dry-run` only shows. The job deletes only what was shown and approved."""
    from tui.core.errors import ConfigError, OperationFailed
    from tui.core.prune import PruneRequest, current_plan

    if not (args.yes or args.dry_run or sys.stdin.isatty()):
        raise ConfigError("prune deletes backups: confirm it on a terminal, or pass --yes "
                          "(cron) or --dry-run (only show the plan).")
    if args.json and not (args.yes or args.dry_run):
        raise ConfigError("prune --json does not ask (the question would hide the plan): pass "
                          "--dry-run to print the plan, or --yes to delete and print both.")
    plan, warning = current_plan(settings, verify=args.verify)
    if warning:
        _err(f"warning: {warning}")
    if not args.json:
        _print_prune_plan(plan, settings.backup_dir)
    deletions = plan.deletions
    if args.dry_run or not deletions:
        if args.json:
            _out(json.dumps(prune_json(plan, None), indent=2, ensure_ascii=False))
        return EXIT_OK
    if not args.yes:
        # The question goes to stderr: with --json, stdout holds only the JSON.
        print(f"Delete these {len(deletions)} copies? [y/N] ",  # noqa: T201
              end="", file=sys.stderr, flush=True)
        try:
            answer = input()
        except EOFError:
            answer = ""
        if answer.strip().lower() not in ("y", "yes"):
            raise OperationFailed("not confirmed; nothing was deleted.")
    request = PruneRequest(tuple((d.name, d.location) for d in deletions), verify=args.verify)
    outcome = run_job(settings, "prune", request, _renderer(args),
                      arguments={"approved": len(deletions), "verify": args.verify},
                      target={"name": "-", "backup_dir": str(settings.backup_dir)})
    if args.json:
        _out(json.dumps(prune_json(plan, outcome.unwrap()), indent=2, ensure_ascii=False))
        return int(outcome.exit_code)
    return show_prune(outcome, False)


def show_prune(outcome: Any, as_json: bool) -> int:
    result = outcome.unwrap()
    if as_json:
        _out(json.dumps(result.as_json(), indent=2, ensure_ascii=False))
    else:
        _print_prune_result(result)
    return EXIT_FAILED if result.failed else EXIT_OK


def cmd_pin(args: argparse.Namespace, settings: Settings) -> int:
    from tui.core.prune import PinRequest

    pinned = args.command == "pin"
    request = PinRequest(args.backup, pinned, getattr(args, "reason", None))
    outcome = run_job(settings, args.command, request, _renderer(args),
                      arguments={"backup": args.backup}, reason=request.reason,
                      target={"name": "-", "backup_dir": str(settings.backup_dir)})
    return show_pin(outcome, args.json)


def show_pin(outcome: Any, as_json: bool) -> int:
    result = outcome.unwrap()
    if as_json:
        _out(json.dumps({"name": result.name, "pinned": result.pinned,
                         "changed": result.changed, "locations": list(result.locations)}))
    else:
        _print_pin(result)
    return EXIT_OK


SHOW = {"backup": show_backup, "restore": show_restore, "verify": show_verify,
        "drill": show_drill, "upload": show_upload, "download": show_download,
        "prune": show_prune, "pin": show_pin, "unpin": show_pin}


def cmd_jobs(args: argparse.Namespace, settings: Settings) -> int:
    from tui.core.jobs import describe_progress, iter_states

    rows = []
    for job, state in iter_states(settings.backup_dir, limit=args.limit or None):
        item = state.as_json()
        item["progress"] = describe_progress(job) if not state.finished else None
        rows.append(item)
    if args.json:
        _out(json.dumps(rows, indent=2, ensure_ascii=False))
        return EXIT_OK
    if not rows:
        _out(f"No jobs in {settings.backup_dir}/jobs yet.")
        return EXIT_OK
    _print_jobs(rows)
    return EXIT_OK


def cmd_attach(args: argparse.Namespace, settings: Settings) -> int:
    from tui.cli.jobview import follow
    from tui.core.jobs import find_job

    job = find_job(settings.backup_dir, args.job)
    state = job.state()
    who = state.operator.get("user", "?")
    _err(f"Job {job.id}: {state.operation} of {(state.target or {}).get('name', '-')} by {who}"
         f", started {state.started_at}, {state.status}")
    outcome = follow(job, _renderer(args), stop_on_interrupt=False)
    if outcome is None:
        return EXIT_OK
    show = SHOW.get(state.operation)
    if show is None:
        outcome.unwrap()
        return int(outcome.exit_code)
    return show(outcome, args.json)


def cmd_cancel(args: argparse.Namespace, settings: Settings) -> int:
    from tui.core.jobs import find_job

    job = find_job(settings.backup_dir, args.job)
    if not job.cancel():
        _out(f"Job {job.id} is not running ({job.state().status}).")
        return EXIT_OK
    _out(f"Asked job {job.id} to stop; it cleans up and ends as interrupted. "
         f"Watch it with: pgrunbook attach {job.id}")
    return EXIT_OK


def cmd_list(args: argparse.Namespace, settings: Settings) -> int:
    from tui.core.inventory import inventory_or_local
    from tui.core.s3 import s3_config

    entries, warning = inventory_or_local(settings.backup_dir, s3_config(settings),
                                          verify=args.verify)
    if warning:
        _err(f"warning: {warning}")
    if args.json:
        _out(json.dumps([e.as_json() for e in entries], indent=2, ensure_ascii=False))
        return EXIT_OK
    _print_list(entries, settings.backup_dir, args.verify)
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
    _print_audit(entries, settings.backup_dir)
    return EXIT_OK


def tui_problem() -> str | None:
    """Why the full-screen UI cannot start here, in one line, or None."""
    import locale
    import shutil

    if os.environ.get("TEXTUAL_DRIVER", "").endswith(":WebDriver"):
        return None  # served to a browser (`pgrunbook serve`): the page is the terminal
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

    gc.freeze()
    gc.enable()  # held off while the CLI started (tui.cli.main)
    make_app(settings, watch=bool(getattr(args, "watch", False))).run()
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
