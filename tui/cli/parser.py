"""The command line's grammar: `build_parser()` and the exit codes its help lists.

Each subcommand's `func` is its `cmd_*` in `tui.cli.commands` (`demo` is dispatched by `main`,
which runs it without loading the settings).
"""

from __future__ import annotations

import argparse

import tui
from tui.cli.commands import (
    cmd_attach,
    cmd_audit,
    cmd_backup,
    cmd_cancel,
    cmd_download,
    cmd_drill,
    cmd_jobs,
    cmd_list,
    cmd_pin,
    cmd_prune,
    cmd_restore,
    cmd_tui,
    cmd_upload,
    cmd_verify,
)
from tui.cli.health_cmd import EXIT_CODES_HELP as HEALTH_EXIT_CODES
from tui.cli.health_cmd import cmd_health
from tui.cli.lifecycle_cmd import cmd_lifecycle
from tui.cli.schedule_cmd import cmd_schedule
from tui.cli.serve_cmd import DEFAULT_HOST as DEFAULT_SERVE_HOST
from tui.cli.serve_cmd import DEFAULT_PORT as DEFAULT_SERVE_PORT
from tui.cli.serve_cmd import cmd_serve
from tui.core.metadata import KINDS

EXIT_CODES_HELP = """exit codes:
  0    success
  1    the operation failed
  2    bad usage or configuration
  3    verification found differences
  130  interrupted (Ctrl-C or SIGTERM)
  health has its own: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN (pgrunbook health --help)
"""


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
    parser.add_argument("-q", "--quiet", action="store_true",
                        help="no progress on stderr, only warnings and errors (for cron, which "
                             "mails what a job prints)")
    parser.add_argument("--version", action="version", version=f"pgrunbook {tui.__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    p = sub.add_parser("backup", help="take a backup of the target",
                       description="Take a checksummed backup with per-table row counts.")
    p.add_argument("name", nargs="?", help="name part of the file (default by kind)")
    p.add_argument("--kind", default="manual",
                   choices=list(KINDS),
                   help="manual (default), scheduled (a timer's), pre-migration (a deploy's), "
                        "emergency, release (kept for ever)")
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
    p.add_argument("--pin", action="store_true",
                   help="keep this backup forever: prune never deletes it (see `pin`)")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_backup)

    p = sub.add_parser("upload", help="copy a local backup to S3 (retry a failed upload)")
    p.add_argument("backup", metavar="BACKUP", help="a backup name as `list` shows it, or a path")
    p.set_defaults(func=cmd_upload)

    p = sub.add_parser("download", help="fetch a backup from S3 and verify it, without restoring")
    p.add_argument("backup", metavar="BACKUP",
                   help="a name, YYYYMMDD_HHMMSS, or <prefix>YYYYMMDD_HHMMSS/database.backup")
    p.set_defaults(func=cmd_download)

    p = sub.add_parser("lifecycle", help="the retention policy as the S3 bucket's lifecycle rules",
                       description="Print the S3 lifecycle configuration the retention policy "
                                   "asks for (the SOP's s3-lifecycle-policy.json, on stdout) and "
                                   "how it differs from the bucket's. --apply writes it, keeping "
                                   "the rules pgrunbook did not write, and tags the backups "
                                   "uploaded without their retention class (audited).")
    p.add_argument("--apply", action="store_true",
                   help="write the rules to the bucket and tag untagged backups")
    p.add_argument("--json", action="store_true",
                   help="print the configuration and the differences as JSON")
    p.set_defaults(func=cmd_lifecycle)

    p = sub.add_parser("schedule", help="print systemd units or crontab lines for the SOP's rhythm",
                       description="Print ready-to-install systemd units (a service and a timer "
                                   "each) or crontab\nlines for this install and settings file: "
                                   "backup daily at 02:00 (uploaded to S3\nwhen a bucket is set), "
                                   "health hourly (node_exporter textfile), drill monthly on\nthe "
                                   "1st at 04:00, prune daily at 05:00. They run as --user "
                                   "(default: you) in\nthe settings file's directory.",
                       epilog="examples:\n"
                              "  pgrunbook --env-file /srv/app/.env.deployment schedule --systemd "
                              "--output-dir ./units\n"
                              "  pgrunbook --target staging schedule --cron --user backup\n",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    how = p.add_mutually_exclusive_group(required=True)
    how.add_argument("--systemd", action="store_true", help="systemd services and timers")
    how.add_argument("--cron", action="store_true", help="lines for the user's crontab")
    p.add_argument("--user", metavar="USER", help="OS user the jobs run as (default: you)")
    p.add_argument("--prometheus", metavar="FILE",
                   help="health's textfile (default: "
                        "/var/lib/prometheus/node-exporter/pgrunbook.prom)")
    p.add_argument("--output-dir", metavar="DIR",
                   help="write the unit files there (0644) and print the install commands")
    p.add_argument("--force", action="store_true",
                   help="with --output-dir: replace unit files that differ")
    p.set_defaults(func=cmd_schedule)

    p = sub.add_parser("restore", help="restore a backup into the target (safety backup first)",
                       description="Restore a backup: checksum, confirmation, safety backup, "
                                   "pg_restore, row-count verification.")
    p.add_argument("backup", nargs="?", metavar="BACKUP",
                   help="latest, a backup name as `list` shows it, or a path; none: list them")
    p.add_argument("--target", dest="sub_target", metavar="NAME", help="target to restore into")
    p.add_argument("--jobs", type=int, metavar="N",
                   help="parallel pg_restore jobs (default: cores, at most 8)")
    p.add_argument("--reason", help="why (the SOP's justification): recorded in the audit trail")
    p.add_argument("--confirm", metavar="DBNAME",
                   help="the target's database name, typed: required for production")
    p.add_argument("--yes", action="store_true",
                   help="confirm a non-production target without a prompt")
    p.add_argument("--terminate-connections", action="store_true",
                   help="end other sessions on the target database first")
    safety = p.add_mutually_exclusive_group()
    safety.add_argument("--no-safety-backup", action="store_true",
                        help="skip the safety backup (needs --confirm DBNAME; audited)")
    safety.add_argument("--safety-backup", metavar="NAME", dest="safety_candidate",
                        help="let the backup NAME (e.g. the incident's emergency backup) stand "
                             "as the safety backup when nothing has been written to the "
                             "cluster since its snapshot; otherwise a fresh one is taken and "
                             "the reason said")
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

    p = sub.add_parser(
        "health", help="check backups, drills, S3, retention and space (for monitors)",
        description="Run the health checks: the newest backup's age, the last backup job, "
                    "sizes and durations, S3 copies, metadata, drills, retention, free space "
                    "and settings. Reads the inventory and the audit trail; never connects to "
                    "the database.",
        epilog=HEALTH_EXIT_CODES + "\nexample (hourly, for node_exporter):\n"
               "  pgrunbook health --prometheus /var/lib/prometheus/node-exporter/pgrunbook.prom\n",
        formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--json", action="store_true", help="print the checks as JSON")
    p.add_argument("--prometheus", metavar="FILE",
                   help="also write the metrics to FILE (*.prom, node_exporter's textfile "
                        "format), atomically")
    p.add_argument("--no-notify", action="store_true",
                   help="do not post critical checks to CHAT_WEBHOOK_URL")
    p.set_defaults(func=cmd_health)

    p = sub.add_parser("prune", help="delete the backups the retention policy no longer keeps",
                       description="Plan which backups (local and S3) the retention policy "
                                   "(RETENTION_* settings) keeps and why, show it, and delete "
                                   "the rest once confirmed. Every deletion is audited.")
    p.add_argument("--dry-run", action="store_true", help="only show the plan; delete nothing")
    p.add_argument("--yes", action="store_true",
                   help="delete without asking (cron); without a terminal it is required")
    p.add_argument("--json", action="store_true",
                   help="print the plan (and, with --yes, what was deleted) as JSON")
    p.add_argument("--verify", action="store_true",
                   help="hash every local archive first: a damaged one never fills a slot")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser("pin", help="keep a backup forever (prune never deletes it)")
    p.add_argument("backup", metavar="BACKUP", help="a backup name as `list` shows it")
    p.add_argument("--reason", help="why: recorded in its metadata and the audit trail")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_pin)

    p = sub.add_parser("unpin", help="let the retention policy decide about a pinned backup again")
    p.add_argument("backup", metavar="BACKUP", help="a backup name as `list` shows it")
    p.add_argument("--json", action="store_true", help="print the result as JSON")
    p.set_defaults(func=cmd_pin)

    p = sub.add_parser("audit", help="show the audit trail")
    p.add_argument("--json", action="store_true", help="print the raw JSON lines")
    p.add_argument("--limit", type=int, default=0, metavar="N", help="only the last N lines")
    p.add_argument("--operation", metavar="OP", help="only this operation (backup, restore, ...)")
    p.set_defaults(func=cmd_audit)

    p = sub.add_parser("jobs", help="list running and recent jobs (who, from where, since when)",
                       description="Every backup, restore, verify, drill, upload and download "
                                   "runs as a job that outlives the terminal (an SSH drop).")
    p.add_argument("--json", action="store_true", help="print a JSON array")
    p.add_argument("--limit", type=int, default=20, metavar="N",
                   help="at most N jobs, newest first (default 20; 0: all)")
    p.set_defaults(func=cmd_jobs)

    p = sub.add_parser("attach", help="follow a running job, or show a finished job's outcome",
                       description="Shows what the job printed so far, then follows it to its "
                                   "end; exits with the job's exit code. Ctrl-C detaches (the "
                                   "job runs on). Several terminals can follow one job.")
    p.add_argument("job", nargs="?", metavar="JOB",
                   help="a job id or its unique prefix (default: the newest running job, else "
                        "the newest)")
    p.add_argument("--json", action="store_true", help="print the outcome as JSON")
    p.set_defaults(func=cmd_attach)

    p = sub.add_parser("cancel", help="stop a running job (it cleans up, as Ctrl-C does)")
    p.add_argument("job", metavar="JOB", help="a job id or its unique prefix")
    p.set_defaults(func=cmd_cancel)

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
    p.add_argument("--watch", action="store_true",
                   help="watch-only: follow the open runbook run and its jobs; nothing can be "
                        "run, skipped or changed")
    p.set_defaults(func=cmd_tui)

    p = sub.add_parser("serve", help="serve the runbook UI to a browser, watch-only (for the "
                                     "incident lead)",
                       description="Serve the runbook UI to a browser (textual-serve): by "
                                   "default watch-only, as\n`tui --watch`, for the incident "
                                   "lead to follow the operator's run and its jobs.\nEach "
                                   "browser tab starts its own app process; Ctrl-C stops them "
                                   "all.",
                       epilog="examples:\n"
                              "  pgrunbook serve                  # http://127.0.0.1:8000\n"
                              "  ssh -L 8000:127.0.0.1:8000 ops-host   # then open it locally\n"
                              "  pgrunbook --target production serve --port 8080\n",
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default=DEFAULT_SERVE_HOST, metavar="HOST",
                   help=f"address to listen on (default {DEFAULT_SERVE_HOST}; any other: "
                        "whoever reaches the port can watch)")
    p.add_argument("--port", type=int, default=DEFAULT_SERVE_PORT, metavar="PORT",
                   help=f"TCP port (default {DEFAULT_SERVE_PORT})")
    p.add_argument("--control", action="store_true",
                   help="serve the full UI, able to run steps and restore (loopback hosts only)")
    p.set_defaults(func=cmd_serve)
    return parser
