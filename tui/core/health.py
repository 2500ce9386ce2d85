"""Health: is the target's backup regime working? One function that the `health` command, its
Prometheus textfile and the TUI's home screen all read, with the same states and words.

The checks are the SOP's monitoring section: the newest good backup's age (its daily script
alerts over 24 hours), the last backup job's result, sizes and durations against the backups
before them, off-site copies, metadata completeness, the last passed drill (monthly) and the
drill results, the retention policy kept, free space for the next backup, settings readable.
Each check is OK, WARNING, CRITICAL or UNKNOWN (the monitoring-plugins convention: the exit
code of `pgrunbook health` is the worst state's number), says what it found in one line, and
what to do when it is not OK.

Nothing here connects to the database: health runs where the backups are (a bastion, a cron
host) from the inventory (S3 through its metadata cache), the audit trail's tail and the disk.
"""

from __future__ import annotations

import os
import shutil
import stat
import statistics
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import IntEnum
from pathlib import Path
from typing import Any

from tui.core import inventory as inv
from tui.core.errors import ConfigError, PgRunbookError
from tui.core.fmt import size
from tui.core.inventory import BackupEntry, _parse_time
from tui.core.settings import Settings

SPACE_MARGIN = 1.10  # as the backup's own space check (tui.core.backup)
DURATION_FLOOR = 60.0  # seconds: a duration anomaly smaller than this is noise, not news
DRILL_WINDOW = timedelta(days=365)  # the drill results counted
OVERDUE_AFTER = timedelta(days=1)  # a copy prune could have deleted this long ago is overdue
DISK_LOW_SHARE = 0.10  # BACKUP_DIR's file system is filling below this share free
MIN_HISTORY = 3  # backups of a kind before its newest one is compared with them


class State(IntEnum):
    """A check's state; the value is the monitoring-plugins exit code."""

    OK = 0
    WARNING = 1
    CRITICAL = 2
    UNKNOWN = 3

    @property
    def rank(self) -> int:
        """Worse is higher: a check that could not be made outranks a warning, not a crisis."""
        return {State.OK: 0, State.WARNING: 1, State.UNKNOWN: 2, State.CRITICAL: 3}[self]


@dataclass(frozen=True)
class Check:
    id: str
    title: str
    state: State
    summary: str
    action: str = ""
    # What identifies the condition (the backup it is about, the failed job's error), so that
    # a notification is not repeated while the same condition lasts.
    cause: str = ""

    def line(self) -> str:
        """The one line the CLI prints and the home screen shows."""
        return f"{self.title}: {self.summary}" + (f" — {self.action}" if self.action else "")

    def as_json(self) -> dict[str, Any]:
        return {"id": self.id, "title": self.title, "state": self.state.name,
                "summary": self.summary, "action": self.action or None}


@dataclass(frozen=True)
class Thresholds:
    """The HEALTH_* settings."""

    backup_warn_hours: float = 24.0
    backup_crit_hours: float = 24.0
    size_low_ratio: float = 0.5
    size_high_ratio: float = 2.0
    duration_high_ratio: float = 2.0
    history: int = 7
    drill_warn_days: float = 31.0
    drill_crit_days: float = 62.0
    free_space_backups: float = 2.0

    FIELDS = {
        "backup_warn_hours": "HEALTH_BACKUP_WARN_HOURS",
        "backup_crit_hours": "HEALTH_BACKUP_CRIT_HOURS",
        "size_low_ratio": "HEALTH_SIZE_LOW_RATIO",
        "size_high_ratio": "HEALTH_SIZE_HIGH_RATIO",
        "duration_high_ratio": "HEALTH_DURATION_HIGH_RATIO",
        "history": "HEALTH_HISTORY",
        "drill_warn_days": "HEALTH_DRILL_WARN_DAYS",
        "drill_crit_days": "HEALTH_DRILL_CRIT_DAYS",
        "free_space_backups": "HEALTH_FREE_SPACE_BACKUPS",
    }

    @classmethod
    def from_settings(cls, settings: Settings) -> Thresholds:
        parsed: dict[str, Any] = {}
        for attr, key in cls.FIELDS.items():
            raw = (settings.values.get(key) or "").strip()
            if not raw:
                continue
            try:
                number = int(raw) if attr == "history" else float(raw)
            except ValueError:
                raise ConfigError(f"{key}={raw!r} is not a number.",
                                  f"Set {key} to a number (see .env.deployment.example).") from None
            if not number > 0 or number != number or number == float("inf"):
                raise ConfigError(f"{key}={raw} must be more than 0.", f"Set {key} to a number "
                                  "above 0 (see .env.deployment.example).")
            parsed[attr] = number
        t = cls(**parsed)
        for low, high in (("backup_warn_hours", "backup_crit_hours"),
                          ("drill_warn_days", "drill_crit_days")):
            if getattr(t, low) > getattr(t, high):
                raise ConfigError(
                    f"{cls.FIELDS[low]}={getattr(t, low):g} is more than "
                    f"{cls.FIELDS[high]}={getattr(t, high):g}.",
                    "A warning comes before the critical threshold: set it lower or equal.")
        if t.size_low_ratio >= 1 or t.size_high_ratio <= 1 or t.duration_high_ratio <= 1:
            raise ConfigError("HEALTH_SIZE_LOW_RATIO must be below 1, HEALTH_SIZE_HIGH_RATIO and "
                              "HEALTH_DURATION_HIGH_RATIO above 1.",
                              "For example 0.5 and 2 (the defaults).")
        return t


@dataclass(frozen=True)
class KindFacts:
    """The newest good backup of one kind, for the metrics."""

    finished_at: datetime
    size_bytes: int
    duration_seconds: float | None


@dataclass
class Facts:
    """The figures behind the checks, for the Prometheus textfile."""

    kinds: dict[str, KindFacts] = field(default_factory=dict)
    good_local: int = 0
    good_s3: int = 0
    with_problems: int = 0
    newest_age_seconds: float | None = None
    last_job_ok: bool | None = None
    last_job_failed_at: datetime | None = None
    drill_passed_at: datetime | None = None
    drill_failed_at: datetime | None = None
    drills_passed: int = 0
    drills_failed: int = 0
    free_bytes: int | None = None


@dataclass
class Report:
    target: str
    endpoint: str
    generated_at: datetime
    checks: list[Check]
    facts: Facts

    @property
    def state(self) -> State:
        return max((c.state for c in self.checks), key=lambda s: s.rank, default=State.UNKNOWN)

    @property
    def exit_code(self) -> int:
        return int(self.state)

    def headline(self) -> str:
        """The first line (what a Nagios-style monitor shows): the state and what is wrong."""
        bad = [c for c in self.checks if c.state is not State.OK]
        bad.sort(key=lambda c: -c.state.rank)
        if not bad:
            return f"OK: pgrunbook health of {self.target}: {len(self.checks)} checks passed"
        return (f"{self.state.name}: pgrunbook health of {self.target}: "
                + "; ".join(f"{c.title.lower()} {c.state.name.lower()}" for c in bad))

    def as_json(self) -> dict[str, Any]:
        return {"state": self.state.name, "exit_code": self.exit_code, "target": self.target,
                "endpoint": self.endpoint, "generated_at": _iso(self.generated_at),
                "checks": [c.as_json() for c in self.checks]}


# -- reading what the checks look at -----------------------------------------------------------

def _iso(dt: datetime) -> str:
    return dt.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def _ago(seconds: float) -> str:
    """A short age: 40 min, 26 h, 9 days (hours up to two days, so "over 24 h" is plain)."""
    if seconds < 0:
        return "in the future (check this host's clock)"
    if seconds < 3600:
        return f"{max(1, round(seconds / 60))} min ago"
    if seconds < 48 * 3600:
        return f"{seconds / 3600:.0f} h ago"
    return f"{seconds / 86400:.0f} days ago"


def _hours(value: float) -> str:
    return f"{value:g} h"


def _of_target(source: Mapping[str, Any] | None, settings: Settings) -> bool:
    """Whether a backup's `source` (or an audit record's `target`) is this target: the same name
    or the same endpoint. Unknown sources count: a backup directory serves one target as a rule."""
    if not source:
        return True
    t = settings.target
    if source.get("name") == t.name:
        return True
    try:
        port = int(source.get("port") or 0)
    except (TypeError, ValueError):
        port = 0
    return (source.get("host"), port, source.get("database")) == (t.host, t.port, t.dbname)


# Problems that make a copy unusable (missing pieces, damage). "Not uploaded" and an incomplete
# S3 side of a local+S3 backup leave the local copy good; the S3 check reports them.
_UNUSABLE = frozenset({inv.ARCHIVE_MISSING, inv.META_MISSING, inv.META_DAMAGED,
                       inv.SIZE_MISMATCH, inv.CHECKSUM_MISMATCH, inv.PARTIAL_FILE,
                       inv.S3_CHECKSUM, inv.S3_ONLY_NO_ARCHIVE, inv.S3_ONLY_NO_METADATA,
                       inv.S3_ONLY_SIZE})
_INCOMPLETE = frozenset({inv.META_MISSING, inv.META_DAMAGED, inv.SIZE_MISMATCH,
                         inv.ARCHIVE_MISSING, inv.PARTIAL_FILE, inv.S3_NO_METADATA,
                         inv.S3_ONLY_NO_ARCHIVE, inv.S3_ONLY_NO_METADATA, inv.S3_ONLY_SIZE,
                         inv.CHECKSUM_MISMATCH})


def _good(e: BackupEntry) -> bool:
    return e.meta is not None and not _UNUSABLE.intersection(e.problem_codes)


def finished_at(e: BackupEntry) -> datetime | None:
    """When a backup became usable: its metadata's end time (the SOP's script looks at the
    file's modification time), else its start plus its duration, else its start."""
    meta = e.meta or {}
    done = _parse_time(meta.get("finished_at"))
    if done is not None:
        return done
    duration = meta.get("duration_seconds")
    if e.created_at is not None and isinstance(duration, int | float):
        return e.created_at + timedelta(seconds=float(duration))
    return e.created_at


@dataclass(frozen=True)
class AuditFacts:
    """What the audit trail says, newest first: the last backup job of the target and the
    drills of the last year."""

    last_backup: dict[str, Any] | None
    drills: list[dict[str, Any]]


_TIME_PREFIX = b'{"time": "'  # every audit line begins with its time (tui.core.audit)


def read_audit(settings: Settings, now: datetime) -> AuditFacts:
    """The audit trail's tail, read from its end only as far back as the checks need (a year
    of drills), parsing only the end lines of backups and drills: a year of hourly backups is
    17,000 lines."""
    from tui.core.audit import AuditLog, parse_line

    since = now - DRILL_WINDOW
    last_backup: dict[str, Any] | None = None
    drills: list[dict[str, Any]] = []
    for raw in AuditLog(settings.backup_dir).newest_lines():
        if b'"event": "end"' not in raw:
            continue
        wanted = b'"operation": "drill"' in raw or (
            last_backup is None and b'"operation": "backup"' in raw)
        if raw.startswith(_TIME_PREFIX):
            when = _parse_time(raw[len(_TIME_PREFIX):raw.find(b'"', len(_TIME_PREFIX))]
                               .decode("ascii", "replace"))
            if when is not None and when < since and last_backup is not None:
                break
        if not wanted:
            continue
        e = parse_line(raw)
        if e is None or e.get("event") != "end":
            continue
        when = _parse_time(e.get("time"))
        op = e.get("operation")
        if (op == "backup" and last_backup is None and _of_target(e.get("target"), settings)
                and (e.get("arguments") or {}).get("kind") != "emergency"):
            last_backup = e
        elif op == "drill" and when is not None and when >= since:
            drills.append(e)
    return AuditFacts(last_backup, drills)


def disk_usage(path: Path) -> tuple[int, int] | None:
    """(free, total) bytes of the file system BACKUP_DIR is (or will be) on."""
    for where in (path, *path.parents):
        try:
            usage = shutil.disk_usage(where)
        except OSError:
            continue
        return usage.free, usage.total
    return None


# -- the checks --------------------------------------------------------------------------------

@dataclass
class _Context:
    settings: Settings
    entries: Sequence[BackupEntry]
    now: datetime
    thresholds: Thresholds
    s3_configured: bool
    s3_error: str | None
    audit: AuditFacts
    disk: tuple[int, int] | None
    facts: Facts
    running_backup: str | None = None
    mine: list[BackupEntry] = field(default_factory=list)
    good: list[BackupEntry] = field(default_factory=list)


def _check_settings(ctx: _Context, problems: Sequence[str]) -> Check:
    title = "Settings"
    if problems:
        return Check("settings", title, State.UNKNOWN, "; ".join(problems),
                     "fix the setting (see .env.deployment.example)", cause="; ".join(problems))
    s = ctx.settings
    where = str(s.env_file) if s.env_file else "the environment"
    d = s.backup_dir
    if not d.is_dir():
        return Check("settings", title, State.CRITICAL, f"BACKUP_DIR {d} does not exist",
                     "check BACKUP_DIR, or take a first backup (pgrunbook backup)", cause=str(d))
    if not os.access(d, os.W_OK | os.X_OK):
        return Check("settings", title, State.CRITICAL,
                     f"BACKUP_DIR {d} is not writable by this user", "check its owner and "
                     "mode (the backups' user must own it)", cause=str(d))
    mode = stat.S_IMODE(d.stat().st_mode)
    if mode & 0o077:
        return Check("settings", title, State.WARNING,
                     f"BACKUP_DIR {d} is open to other users (mode {mode:o})", f"chmod 700 {d}",
                     cause=f"mode {mode:o}")
    if s.warnings:
        return Check("settings", title, State.WARNING, "; ".join(s.warnings),
                     cause="; ".join(s.warnings))
    return Check("settings", title, State.OK, f"read from {where}")


def _check_backup_age(ctx: _Context) -> Check:
    t = ctx.thresholds
    title = "Newest backup"
    running = f" (a backup is running: {ctx.running_backup})" if ctx.running_backup else ""
    if not ctx.good:
        return Check("backup_age", title, State.CRITICAL,
                     f"no complete backup of {ctx.settings.target.name}{running}",
                     "take one: pgrunbook backup", cause="none")
    newest = max(ctx.good, key=lambda e: finished_at(e) or datetime.min.replace(tzinfo=UTC))
    done = finished_at(newest)
    seconds = (ctx.now - done).total_seconds() if done else float("inf")
    ctx.facts.newest_age_seconds = seconds if done else None
    found = f"{newest.name}, finished {_ago(seconds)}{running}"
    action = ("check the scheduled backup (pgrunbook audit; journalctl -u pgrunbook-backup) "
              "and take one now: pgrunbook backup")
    if seconds < -300:  # a backup from the future: this host's clock, or the backup's host's
        return Check("backup_age", title, State.WARNING, found,
                     "compare the clocks (timedatectl) of this host and the backups' host",
                     cause=newest.name)
    if seconds > t.backup_crit_hours * 3600:
        return Check("backup_age", title, State.CRITICAL,
                     f"{found}: over {_hours(t.backup_crit_hours)}", action, cause=newest.name)
    if seconds > t.backup_warn_hours * 3600:
        return Check("backup_age", title, State.WARNING,
                     f"{found}: over {_hours(t.backup_warn_hours)}", action, cause=newest.name)
    return Check("backup_age", title, State.OK, found)


def _check_last_job(ctx: _Context) -> Check:
    from tui.core.notify import failure_fingerprint

    title = "Last backup job"
    e = ctx.audit.last_backup
    if e is None:
        return Check("backup_job", title, State.OK, "none in the audit trail")
    when = _parse_time(e.get("time"))
    at = _ago((ctx.now - when).total_seconds()) if when else "at an unknown time"
    result = str(e.get("result"))
    if result == "ok":
        ctx.facts.last_job_ok = True
        return Check("backup_job", title, State.OK, f"succeeded {at} ({e.get('backup')})")
    ctx.facts.last_job_ok = False
    ctx.facts.last_job_failed_at = when
    error = str(e.get("error") or "no error recorded")
    log = f"its log: {e['log']}; " if e.get("log") else ""
    if result == "interrupted":
        return Check("backup_job", title, State.WARNING, f"interrupted {at}: {error}",
                     f"{log}run it again: pgrunbook backup", cause=failure_fingerprint(result, error))
    return Check("backup_job", title, State.CRITICAL, f"{result} {at}: {error}",
                 f"{log}fix the cause and run pgrunbook backup",
                 cause=failure_fingerprint(result, error))


def _by_kind(good: Sequence[BackupEntry]) -> dict[str, list[BackupEntry]]:
    kinds: dict[str, list[BackupEntry]] = {}
    epoch = datetime.min.replace(tzinfo=UTC)
    for e in sorted(good, key=lambda e: finished_at(e) or epoch, reverse=True):
        kinds.setdefault(e.kind or "?", []).append(e)
    return kinds


def _duration(e: BackupEntry) -> float | None:
    value = (e.meta or {}).get("duration_seconds")
    return float(value) if isinstance(value, int | float) else None


def _check_sizes(ctx: _Context) -> tuple[Check, Check]:
    t = ctx.thresholds
    size_findings: list[tuple[str, str]] = []  # (what, cause)
    slow: list[tuple[str, str]] = []
    compared = []
    for kind, backups in _by_kind(ctx.good).items():
        newest, earlier = backups[0], backups[1:1 + t.history]
        done = finished_at(newest)
        if done is not None:
            ctx.facts.kinds[kind] = KindFacts(done, newest.size_bytes or 0, _duration(newest))
        if len(earlier) < MIN_HISTORY:
            continue
        compared.append(kind)
        sizes = [e.size_bytes or 0 for e in earlier]
        median = statistics.median(sizes)
        now_size = newest.size_bytes or 0
        if median > 0:
            ratio = now_size / median
            if ratio < t.size_low_ratio or ratio > t.size_high_ratio:
                rows = (newest.meta or {}).get("total_rows")
                past_rows = [r for e in earlier
                             if isinstance(r := (e.meta or {}).get("total_rows"), int)]
                row_text = (f"; rows {rows:,} against a median of "
                            f"{statistics.median(past_rows):,.0f}"
                            if isinstance(rows, int) and past_rows else "")
                size_findings.append((
                    f"the newest {kind} backup {newest.name} is {size(now_size)}, "
                    f"{ratio:.0%} of the median {size(int(median))} of the {len(earlier)} "
                    f"before it{row_text}", f"{newest.name} {ratio:.2f}"))
        durations = [d for e in earlier if (d := _duration(e)) is not None]
        took = _duration(newest)
        if took is not None and durations:
            med = statistics.median(durations)
            if med > 0 and took > med * t.duration_high_ratio and took - med > DURATION_FLOOR:
                slow.append((f"the newest {kind} backup {newest.name} took {took:.0f} s, "
                             f"{took / med:.1f} times the median {med:.0f} s",
                             newest.name))
    scope = (f"{', '.join(compared)}: the newest against the median of the last {t.history}"
             if compared else f"fewer than {MIN_HISTORY + 1} good backups of any one kind yet")
    if size_findings:
        size_check = Check("backup_size", "Backup size", State.WARNING,
                           "; ".join(f for f, _ in size_findings),
                           "check what changed (pgrunbook list --json has the rows of each "
                           "table); a much smaller backup can mean lost data",
                           cause=" ".join(c for _, c in size_findings))
    else:
        size_check = Check("backup_size", "Backup size", State.OK, f"consistent ({scope})")
    if slow:
        duration_check = Check("backup_duration", "Backup duration", State.WARNING,
                               "; ".join(f for f, _ in slow),
                               "look for locks or load in the backup window (its log in "
                               "BACKUP_DIR/logs)", cause=" ".join(c for _, c in slow))
    else:
        duration_check = Check("backup_duration", "Backup duration", State.OK,
                               f"as usual ({scope})" if compared else scope)
    return size_check, duration_check


def _names(entries: Sequence[BackupEntry], limit: int = 3) -> str:
    shown = ", ".join(e.name for e in entries[:limit])
    return shown + (f" and {len(entries) - limit} more" if len(entries) > limit else "")


def _check_s3(ctx: _Context) -> Check:
    title = "Off-site copies"
    if not ctx.s3_configured:
        return Check("s3", title, State.OK, "S3 is off (BACKUP_S3_BUCKET unset): local copies only")
    if ctx.s3_error:
        return Check("s3", title, State.UNKNOWN, f"S3 unreachable: {ctx.s3_error}",
                     "check the credentials and the network (pgrunbook list)", cause="listing")
    local = [e for e in ctx.good if e.location in ("local", "both")]
    recent = local[:3]
    missing = [e for e in recent if e.location == "local"]
    incomplete = [e for e in recent if inv.S3_NO_METADATA in e.problem_codes]
    mismatch = [e for e in ctx.mine if inv.S3_CHECKSUM in e.problem_codes]
    grace = _grace(ctx.settings)
    multipart = [e for e in ctx.entries if inv.S3_MULTIPART in e.problem_codes
                 and e.created_at is not None and ctx.now - e.created_at > grace]
    if mismatch:
        return Check("s3", title, State.CRITICAL,
                     f"the S3 copy differs from the local one: {_names(mismatch)}",
                     "download one (pgrunbook download NAME) and compare; upload again",
                     cause=_names(mismatch, 100))
    if recent and len(missing) + len(incomplete) == len(recent):
        return Check("s3", title, State.CRITICAL,
                     f"none of the {len(recent)} newest backups is complete in S3 "
                     f"({_names(recent)})", "upload them: pgrunbook upload NAME (and check "
                     "why the backups' uploads fail: pgrunbook audit)", cause=_names(recent))
    if missing or incomplete:
        what = ([f"not uploaded: {_names(missing)}"] if missing else []) + \
            ([f"upload incomplete (no metadata.json): {_names(incomplete)}"] if incomplete else [])
        return Check("s3", title, State.WARNING, "; ".join(what),
                     "pgrunbook upload NAME", cause=_names(missing + incomplete))
    if multipart:
        oldest = min(e.created_at for e in multipart if e.created_at is not None)
        return Check("s3", title, State.WARNING,
                     f"{len(multipart)} abandoned multipart upload(s), the oldest "
                     f"{_ago((ctx.now - oldest).total_seconds())}",
                     "pgrunbook prune aborts them (and pgrunbook lifecycle --apply adds the "
                     "bucket's own rule)", cause=str(len(multipart)))
    there = sum(1 for e in ctx.good if e.location in ("s3", "both"))
    return Check("s3", title, State.OK, f"{there} complete backup(s) in S3, the newest "
                 f"{len(recent)} included" if recent else f"{there} complete backup(s) in S3")


def _grace(settings: Settings) -> timedelta:
    from tui.core.retention import Policy

    try:
        return timedelta(hours=Policy.from_settings(settings).grace_hours)
    except PgRunbookError:
        return timedelta(hours=24)


KEY_CHECKED = 3  # the newest good backups whose key must be on this host


def _check_keys(ctx: _Context) -> Check:
    """The key of the next backup can be read, and the keys of the newest backups are here:
    an encrypted backup whose key is lost is no backup (a drill proves it end to end)."""
    from tui.core import encryption

    title = "Encryption keys"
    try:
        method = encryption.method_of(ctx.settings)
        cipher = encryption.for_backup(ctx.settings)
        keys = encryption.available_keys(ctx.settings)
    except PgRunbookError as exc:
        return Check("keys", title, State.CRITICAL, f"the next backup cannot be encrypted: "
                     f"{exc.message}", exc.hint or "fix the BACKUP_ENCRYPTION settings",
                     cause=exc.message)
    encrypted = [e for e in ctx.good if encryption.encryption_of(e.meta)][:KEY_CHECKED]
    lost = [e for e in encrypted if not encryption.decryptable(e.meta, keys)]
    if lost:
        needs = sorted({encryption.needed_key(e.meta) or "?" for e in lost})
        return Check("keys", title, State.WARNING,
                     f"the key of {_names(lost)} is not on this host ({', '.join(needs)})",
                     "set BACKUP_GPG_PASSPHRASE_FILE / BACKUP_GPG_OLD_PASSPHRASE_FILES or "
                     "BACKUP_AGE_IDENTITY_FILE where restores run, then prove it: pgrunbook "
                     "drill latest", cause=" ".join(needs))
    if method == "none":
        return Check("keys", title, State.OK, "backups are not encrypted (BACKUP_ENCRYPTION="
                     "none)" + (f"; {len(encrypted)} older encrypted ones readable"
                                if encrypted else ""))
    what = cipher.describe() if cipher else method
    return Check("keys", title, State.OK, f"new backups: {what}; the keys of the newest "
                 f"{len(encrypted)} encrypted backup(s) are here" if encrypted
                 else f"new backups: {what}")


def _check_metadata(ctx: _Context) -> Check:
    title = "Metadata"
    bad = [e for e in ctx.entries if _INCOMPLETE.intersection(e.problem_codes)]
    ctx.facts.with_problems = len(bad)
    if bad:
        first = "; ".join(f"{e.name} ({e.problems[0]})" for e in bad[:3])
        more = f" and {len(bad) - 3} more" if len(bad) > 3 else ""
        return Check("metadata", title, State.WARNING,
                     f"{len(bad)} backup(s) incomplete or damaged: {first}{more}",
                     "pgrunbook list shows each; pgrunbook prune removes what interrupted "
                     "writes left, past the grace period", cause=_names(bad, 100))
    return Check("metadata", title, State.OK,
                 f"complete for all {len(ctx.entries)} backup(s)" if ctx.entries
                 else "no backups yet")


@dataclass(frozen=True)
class _Drill:
    when: datetime
    passed: bool
    backup: str
    result: str
    error: str
    report: str | None


def _drills(ctx: _Context) -> list[_Drill]:
    """Drills of this target's backups, newest first: the audit trail's, and the results kept
    in backups' metadata (a drill the audit trail does not have, copied in from elsewhere)."""
    sources = {e.name: (e.meta or {}).get("source") for e in ctx.entries}
    found: dict[tuple[str, str], _Drill] = {}
    for e in ctx.audit.drills:
        backup = str(e.get("backup") or (e.get("arguments") or {}).get("backup") or "")
        when = _parse_time(e.get("time"))
        if when is None or not _of_target(sources.get(backup), ctx.settings):
            continue
        if e.get("result") == "interrupted":
            continue
        found[(backup, _iso(when)[:16])] = _Drill(
            when, e.get("result") == "ok", backup, str(e.get("result")),
            str(e.get("error") or ""), e.get("report"))
    since = ctx.now - DRILL_WINDOW
    for entry in ctx.mine:
        d = (entry.meta or {}).get("drill")
        if not isinstance(d, dict):
            continue
        when = _parse_time(d.get("verified_at"))
        if when is None or when < since:
            continue
        if not any(k[0] == entry.name and abs((v.when - when).total_seconds()) < 600
                   for k, v in found.items()):
            found[(entry.name, _iso(when)[:16])] = _Drill(
                when, d.get("result") == "PASS", entry.name,
                "ok" if d.get("result") == "PASS" else "failed", str(d.get("error") or ""),
                d.get("report"))
    return sorted(found.values(), key=lambda d: d.when, reverse=True)


def _check_drills(ctx: _Context) -> tuple[Check, Check]:
    from tui.core.notify import failure_fingerprint

    t = ctx.thresholds
    drills = _drills(ctx)
    passed = [d for d in drills if d.passed]
    ctx.facts.drills_passed = len(passed)
    ctx.facts.drills_failed = len(drills) - len(passed)
    ctx.facts.drill_passed_at = passed[0].when if passed else None
    failed = [d for d in drills if not d.passed]
    ctx.facts.drill_failed_at = failed[0].when if failed else None
    action = "run one: pgrunbook drill latest (the SOP: monthly)"
    if not passed:
        age = Check("drill_age", "Last passed drill", State.WARNING,
                    "none in the last 365 days" if drills or ctx.audit.drills else "never",
                    action, cause="never")
    else:
        seconds = (ctx.now - passed[0].when).total_seconds()
        text = f"{_ago(seconds)} ({passed[0].backup})"
        if seconds > t.drill_crit_days * 86400:
            age = Check("drill_age", "Last passed drill", State.CRITICAL,
                        f"{text}: over {t.drill_crit_days:g} days", action, cause=passed[0].backup)
        elif seconds > t.drill_warn_days * 86400:
            age = Check("drill_age", "Last passed drill", State.WARNING,
                        f"{text}: over {t.drill_warn_days:g} days", action, cause=passed[0].backup)
        else:
            age = Check("drill_age", "Last passed drill", State.OK, text)
    if not drills:
        results = Check("drill_results", "Drill results", State.OK, "no drill in the last 365 days")
    elif not drills[0].passed:
        last = drills[0]
        report = f"read its report {last.report}; " if last.report else ""
        results = Check(
            "drill_results", "Drill results", State.CRITICAL,
            f"the last drill ({last.backup}, {_ago((ctx.now - last.when).total_seconds())}) "
            f"{'found differences' if last.result == 'verify-failed' else 'failed'}"
            f"{': ' + last.error if last.error else ''}; {len(passed)} of {len(drills)} passed "
            "in the last 365 days",
            f"{report}fix the cause and drill again: pgrunbook drill latest",
            cause=failure_fingerprint(last.result, last.error))
    else:
        results = Check("drill_results", "Drill results", State.OK,
                        f"{len(passed)} of {len(drills)} passed in the last 365 days")
    return age, results


def overdue_copies(now_plan: Any, day_ago_plan: Any) -> list[Any]:
    """The copies prune would delete now that it would already have deleted OVERDUE_AFTER ago
    (the plan then, over the backups there were): a day past their expiry and still here."""
    then = {(d.name, d.location) for d in day_ago_plan.deletions}
    return [d for d in now_plan.deletions if (d.name, d.location) in then]


def _plans(ctx: _Context) -> tuple[Any, Any] | None:
    from tui.core.prune import collector_paused
    from tui.core.retention import Policy, plan

    policy = Policy.from_settings(ctx.settings)
    cutoff = ctx.now - OVERDUE_AFTER
    with collector_paused():
        now_plan = plan(ctx.entries, policy, ctx.now, s3_configured=ctx.s3_configured)
        if not now_plan.deletions:  # nothing to delete now: nothing overdue
            return now_plan, now_plan
        earlier = [e for e in ctx.entries if e.created_at is not None and e.created_at <= cutoff]
        then_plan = plan(earlier, policy, cutoff, s3_configured=ctx.s3_configured)
    return now_plan, then_plan


def _check_retention_and_space(ctx: _Context) -> tuple[Check, Check]:
    from tui.core.retention import LOCAL

    plans: tuple[Any, Any] | None
    try:
        plans = _plans(ctx)
        policy_error = None
    except PgRunbookError as exc:
        plans, policy_error = None, exc.message
    if plans is None:
        retention = Check("prune", "Retention", State.UNKNOWN, f"no plan: {policy_error}",
                          "fix the RETENTION_* setting (see .env.deployment.example)",
                          cause=policy_error or "")
        freeable = 0
    else:
        now_plan, then_plan = plans
        overdue = overdue_copies(now_plan, then_plan)
        freeable = now_plan.freed_bytes(LOCAL)
        if overdue:
            n = len({d.name for d in overdue})
            total = sum(d.size_bytes for d in overdue)
            retention = Check("prune", "Retention", State.WARNING,
                              f"prune overdue: {n} backup(s) ({size(total)}) past the policy "
                              "for over a day", "pgrunbook prune (preview: pgrunbook prune "
                              "--dry-run); is the daily prune scheduled?", cause=str(n))
        else:
            kept = sum(1 for d in now_plan.decisions if d.keep)
            retention = Check("prune", "Retention", State.OK,
                              f"nothing overdue ({kept} cop{'y' if kept == 1 else 'ies'} kept)")
    title = "Free space"
    if ctx.disk is None:
        return retention, Check("free_space", title, State.UNKNOWN,
                                f"cannot read the free space of {ctx.settings.backup_dir}",
                                "check BACKUP_DIR", cause="disk")
    free, total = ctx.disk
    ctx.facts.free_bytes = free
    local = [e for e in ctx.good if e.location in ("local", "both")]
    need = int((local[0].size_bytes or 0) * SPACE_MARGIN) if local else 0
    gain = (f"; pgrunbook prune would free {size(freeable)}" if freeable
            else "")
    if need and free < need:
        return retention, Check(
            "free_space", title, State.CRITICAL,
            f"the next backup will not fit: about {size(need)} needed, {size(free)} free{gain}",
            "free space (pgrunbook prune) or move BACKUP_DIR to a larger disk", cause="full")
    if free < ctx.thresholds.free_space_backups * need or free < DISK_LOW_SHARE * total:
        return retention, Check(
            "free_space", title, State.WARNING,
            f"{size(free)} free ({free / total:.0%} of the disk), the next backup about "
            f"{size(need)}{gain}", "free space before it runs out (pgrunbook prune)",
            cause="low")
    room = f", room for about {free // need:,} backups like the newest" if need else ""
    return retention, Check("free_space", title, State.OK, f"{size(free)} free{room}")


def evaluate(settings: Settings, entries: Sequence[BackupEntry], *,
             now: datetime | None = None, s3_configured: bool = False,
             s3_error: str | None = None, audit: AuditFacts | None = None,
             disk: Callable[[Path], tuple[int, int] | None] = disk_usage,
             running_backup: str | None = None) -> Report:
    """Every check over an inventory already read (`entries`: local and S3, newest first, as
    `inventory.inventory_or_local` returns it). Pure but for the disk and the audit trail,
    which the caller may pass in."""
    now = now or datetime.now(UTC)
    problems = []
    try:
        thresholds = Thresholds.from_settings(settings)
    except ConfigError as exc:
        thresholds = Thresholds()
        problems.append(exc.message)
    ctx = _Context(settings, entries, now, thresholds, s3_configured, s3_error,
                   audit if audit is not None else read_audit(settings, now),
                   disk(settings.backup_dir), Facts(), running_backup)
    ctx.mine = [e for e in entries if _of_target((e.meta or {}).get("source"), settings)]
    ctx.good = [e for e in ctx.mine if _good(e)]
    ctx.facts.good_local = sum(1 for e in ctx.good if e.location in ("local", "both"))
    ctx.facts.good_s3 = sum(1 for e in ctx.good if e.location in ("s3", "both"))
    size_check, duration_check = _check_sizes(ctx)
    drill_age, drill_results = _check_drills(ctx)
    retention, space = _check_retention_and_space(ctx)
    checks = [
        _check_backup_age(ctx), _check_last_job(ctx), size_check, duration_check,
        _check_s3(ctx), _check_metadata(ctx), _check_keys(ctx), drill_age, drill_results,
        retention, space, _check_settings(ctx, problems),
    ]
    t = settings.target
    return Report(t.name, f"{t.host}:{t.port}/{t.dbname}", now, checks, ctx.facts)


def running_backup(settings: Settings) -> str | None:
    """"since HH:MM UTC" when a backup job of this target is running now, else None."""
    from tui.core.jobs import unfinished

    for job in unfinished(settings.backup_dir):
        state = job.state()
        if state.operation == "backup" and job.alive(state) and \
                _of_target(state.target, settings):
            return f"since {state.started_at[11:16]} UTC"
    return None


def gather(settings: Settings, *, now: datetime | None = None) -> Report:
    """What `pgrunbook health` runs: the inventory (S3 through its metadata cache), the audit
    trail's tail, the disk, the jobs running, then every check."""
    from tui.core.inventory import list_backups, merged_inventory
    from tui.core.prune import collector_paused
    from tui.core.s3 import describe_error, s3_config

    now = now or datetime.now(UTC)
    s3 = s3_config(settings)
    error = None
    # One pause of the cyclic collector for the inventory and the plans over it: their
    # thousands of metadata dicts hold no cycles (see prune.collector_paused).
    with collector_paused():
        try:
            entries = merged_inventory(settings.backup_dir, s3)
        except PgRunbookError:
            raise
        except Exception as exc:  # S3 down: the local checks still run, the S3 one says why
            if s3 is None:
                raise
            error = f"s3://{s3.bucket}/{s3.prefix}: {describe_error(exc)}"
            entries = list_backups(settings.backup_dir)
        return evaluate(settings, entries, now=now, s3_configured=s3 is not None,
                        s3_error=error, running_backup=running_backup(settings))


def alert_key(report: Report, check: Check) -> str:
    """The notification key of a check: the backup and drill checks share the keys of the
    operations' own alerts (tui.core.notify), so one failure is posted once."""
    from tui.core.notify import backup_key, drill_key

    if check.id == "backup_job":
        return backup_key(report.target)
    if check.id == "drill_results":
        return drill_key(report.target)
    return f"health:{report.target}:{check.id}"


def notify_critical(settings: Settings, report: Report) -> list[tuple[Check, str]]:
    """Post each CRITICAL check to CHAT_WEBHOOK_URL (once per condition, see tui.core.notify),
    and forget the ones that are no longer critical. Returns (check, outcome) per post tried."""
    from tui.core.audit import operator_identity
    from tui.core.notify import alert, resolve

    host = operator_identity().get("host") or "?"
    outcomes = []
    for check in report.checks:
        key = alert_key(report, check)
        if check.state is State.CRITICAL:
            text = (f"pgrunbook health CRITICAL on {host}: {report.target} ({report.endpoint}): "
                    f"{check.title}: {check.summary}."
                    + (f" Next: {check.action}." if check.action else ""))
            outcomes.append((check, alert(settings, key, check.cause or check.summary, text,
                                          now=report.generated_at)))
        elif check.id not in ("backup_job", "drill_results") or check.state is State.OK:
            resolve(settings, key)
    return outcomes
