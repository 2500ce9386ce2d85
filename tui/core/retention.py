"""Retention: which backups the policy keeps and why. Pure functions over the inventory (no
I/O): `pgrunbook prune`, the TUI's browser and `pgrunbook lifecycle` all read the same plan.

The policy is the SOP's (daily 14 days, weekly 12 weeks, monthly 12 months, releases forever)
with the safety rules that peers learned the hard way: only complete, checksum-valid backups
fill slots; windows are anchored at the newest good backup, not at now, so a stalled backup job
never ages the last backups out; the newest good backup, the newest with a passed drill,
pinned and release backups are never deleted; a local copy whose S3 copy is missing is not
deleted locally; nothing younger than the grace period goes.

`plan(entries, policy, now, s3_configured=...)` decides, for each copy (local, S3) of each
backup, keep or delete and why (`Decision`); `Plan` holds them newest first.

A slot (the daily, weekly or monthly one of a UTC day, ISO week or calendar month within its
window) is held by the FIRST good manual or pre-migration backup in it, computed for each place
from the good copies there: the S3 lifecycle tags (tui.core.lifecycle) give each period's long
class to its first backup, decided at upload when later ones cannot be known, and the plan must
not keep in S3 what the bucket's rules expire sooner (nor drop what they keep longer): that
would lose the period in S3. Release, pinned and emergency backups fill no slot; they are kept
by rules of their own. A copy keeps the longest-lasting of its reasons: forever (pinned,
release), else the latest date, else one that holds while true (the newest, the minimum kept,
3-2-1); the others are in `also`.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, date, datetime, time, timedelta
from typing import Any

from tui.core import inventory as inv
from tui.core.errors import ConfigError
from tui.core.inventory import BackupEntry
from tui.core.metadata import SLOT_KINDS
from tui.core.settings import Settings

MAX_SETTING = 100_000  # the largest RETENTION_* value (days, weeks, months or hours)


@dataclass(frozen=True)
class Policy:
    """The retention policy, from the RETENTION_* settings (the SOP's numbers by default)."""

    daily_days: int = 14
    weekly_weeks: int = 12
    monthly_months: int = 12
    pre_migration_days: int = 30  # local copies; in S3 they follow the slots
    emergency_days: int = 30
    min_keep: int = 3
    local_days: int = 30  # local copies older than this go once S3 holds them; 0: as S3
    grace_hours: int = 24

    @classmethod
    def from_settings(cls, settings: Settings) -> Policy:
        values = settings.values
        fields = {
            "daily_days": "RETENTION_DAILY_DAYS", "weekly_weeks": "RETENTION_WEEKLY_WEEKS",
            "monthly_months": "RETENTION_MONTHLY_MONTHS",
            "pre_migration_days": "RETENTION_PRE_MIGRATION_DAYS",
            "emergency_days": "RETENTION_EMERGENCY_DAYS", "min_keep": "RETENTION_MIN_KEEP",
            "local_days": "RETENTION_LOCAL_DAYS", "grace_hours": "RETENTION_GRACE_HOURS",
        }
        parsed: dict[str, int] = {}
        for attr, key in fields.items():
            raw = values.get(key)
            if raw is None or raw == "":
                continue
            try:
                number = int(raw)
            except ValueError:
                raise ConfigError(f"{key}={raw!r} is not a whole number.",
                                  f"Set {key} to a number (see .env.deployment.example).") from None
            if number < 0:
                raise ConfigError(f"{key}={number} is negative.", f"Set {key} to 0 or more.")
            if number > MAX_SETTING:  # dates past the year 9999 cannot be computed
                raise ConfigError(f"{key}={number} is more than {MAX_SETTING}.",
                                  "Pin a backup to keep it for ever (pgrunbook pin NAME).")
            parsed[attr] = number
        policy = cls(**parsed)
        if policy.min_keep < 1:
            raise ConfigError("RETENTION_MIN_KEEP=0 would let prune delete every backup.",
                              "Set RETENTION_MIN_KEEP to 1 or more (the default is 3).")
        return policy


# -- the plan ----------------------------------------------------------------------------------

LOCAL, S3 = "local", "s3"
BACKUP, PARTIAL, UPLOAD = "backup", "partial", "upload"

# The inventory's problem codes (tui.core.inventory), by what they mean for retention. A problem
# not named here makes a copy "damaged": kept, never counted.
_NOT_A_PROBLEM = frozenset({inv.NOT_UPLOADED})  # the 3-2-1 rule looks at that
# On a local+S3 entry; an incomplete S3 copy is kept (an upload may be finishing it, and
# `pgrunbook upload` redoes it), never removed as remains.
_S3_SIDE = frozenset({inv.S3_NO_METADATA, inv.S3_CHECKSUM})
# What a write or a delete that never finished leaves: removed once past the grace period.
_REMAINS = frozenset({inv.META_MISSING, inv.ARCHIVE_MISSING, inv.PARTIAL_FILE,
                      inv.S3_ONLY_NO_METADATA, inv.S3_ONLY_NO_ARCHIVE})
_SHA256 = re.compile(r"[0-9a-f]{64}")


@dataclass(frozen=True)
class Decision:
    """Keep or delete one copy of a backup (or a leftover file) in one location, and why.
    `until`: when the reason stops holding (None: no date: forever, or while it stays true);
    `also`: the other reasons that keep it."""

    name: str
    location: str  # local or s3
    keep: bool
    reason: str
    until: datetime | None
    size_bytes: int
    also: tuple[str, ...] = ()
    kind: str | None = None
    created_at: datetime | None = None
    item: str = BACKUP  # backup, partial (a partial file), upload (a multipart upload)
    path: str | None = None  # the local archive (or partial file)
    s3_key: str | None = None  # the S3 archive's key

    def as_json(self) -> dict[str, Any]:
        return {
            "name": self.name, "location": self.location,
            "action": "keep" if self.keep else "delete", "reason": self.reason,
            "also": list(self.also), "until": _iso(self.until), "size_bytes": self.size_bytes,
            "kind": self.kind, "created_at": _iso(self.created_at), "item": self.item,
            "path": self.path, "s3_key": self.s3_key,
        }


@dataclass(frozen=True)
class Plan:
    """Every copy's decision, newest first; `anchor` is the newest good backup's time (the
    windows' end), None when there is no good backup."""

    decisions: tuple[Decision, ...]
    policy: Policy
    now: datetime
    anchor: datetime | None
    s3_configured: bool

    @property
    def deletions(self) -> list[Decision]:
        return [d for d in self.decisions if not d.keep]

    @property
    def kept(self) -> list[Decision]:
        return [d for d in self.decisions if d.keep]

    def freed_bytes(self, location: str | None = None) -> int:
        """What the deletions free in `location` (local or s3; None: both)."""
        return sum(d.size_bytes for d in self.deletions
                   if location is None or d.location == location)

    def decision(self, name: str, location: str) -> Decision | None:
        return self._index.get((name, location))

    @functools.cached_property
    def _index(self) -> dict[tuple[str, str], Decision]:
        return {(d.name, d.location): d for d in self.decisions}

    def as_json(self) -> dict[str, Any]:
        return {
            "now": _iso(self.now), "anchor": _iso(self.anchor),
            "s3_configured": self.s3_configured, "policy": dataclasses.asdict(self.policy),
            "decisions": [d.as_json() for d in self.decisions],
            "summary": {
                "keep": len(self.kept), "delete": len(self.deletions),
                "freed_bytes": {LOCAL: self.freed_bytes(LOCAL), S3: self.freed_bytes(S3)},
            },
        }


def _iso(dt: datetime | None) -> str | None:
    return dt.astimezone(UTC).isoformat().replace("+00:00", "Z") if dt is not None else None


def _day(dt: datetime) -> str:
    return dt.astimezone(UTC).date().isoformat()


@dataclass
class _Copy:
    entry: BackupEntry
    location: str
    problem: str | None  # why it is not a good copy; None: good
    remains: bool = False  # what an unfinished write or delete left


@dataclass(frozen=True)
class _Reason:
    text: str
    until: datetime | None
    rank: int  # 0 forever (pinned, release), 1 dated, 2 while it holds (newest, minimum...)


def _sha_ok(meta: dict[str, Any] | None) -> bool:
    archive = (meta or {}).get("archive")
    return isinstance(archive, dict) and bool(_SHA256.fullmatch(str(archive.get("sha256"))))


def _copies(entry: BackupEntry) -> list[_Copy]:
    """The copies an inventory entry stands for, each judged good or not."""
    problems = [(c, p) for c, p in zip(entry.problem_codes, entry.problems, strict=True)
                if c not in _NOT_A_PROBLEM]
    s3_side = [(c, p) for c, p in problems if c in _S3_SIDE]
    local_side = [(c, p) for c, p in problems if c != inv.S3_NO_METADATA]
    if entry.location == "both":
        local = _judge(entry, LOCAL, local_side)
        if entry.meta is None:
            s3 = _Copy(entry, S3, "its local metadata is missing, so its S3 copy is not judged")
        else:
            s3 = _judge(entry, S3, s3_side)
        return [local, s3]
    return [_judge(entry, entry.location if entry.location == S3 else LOCAL, problems)]


def _judge(entry: BackupEntry, location: str, problems: list[tuple[str, str]]) -> _Copy:
    """`problems`: (code, text) pairs from the inventory."""
    if problems:
        remains = all(c in _REMAINS for c, _ in problems)
        return _Copy(entry, location, "; ".join(p for _, p in problems), remains)
    if entry.meta is None:
        return _Copy(entry, location, "no metadata")
    if not _sha_ok(entry.meta):
        return _Copy(entry, location, "its metadata has no SHA-256")
    if entry.created_at is None:
        return _Copy(entry, location, "its time is unknown")
    return _Copy(entry, location, None)


def _month_index(dt: datetime) -> int:
    return dt.year * 12 + dt.month - 1


def _midnight(ordinal: int) -> datetime:
    return datetime.combine(date.fromordinal(min(ordinal, date.max.toordinal())), time(), UTC)


def _month_start(index: int) -> datetime:
    index = min(index, date.max.year * 12 + 11)  # RETENTION_MONTHLY_MONTHS=1000000
    return datetime(index // 12, index % 12 + 1, 1, tzinfo=UTC)


@dataclass(frozen=True)
class _Slot:
    label: str  # "daily slot 2025-03-31"
    until: datetime  # when the anchor leaves its window
    in_window: bool


def _slots(good: list[BackupEntry], anchor: datetime,
           policy: Policy) -> tuple[dict[int, list[_Slot]], dict[int, BackupEntry]]:
    """Which backup of `good` (oldest first) holds each day, ISO week and month: the first good
    one in it, whether that period is inside its window (anchored at `anchor`), and when it
    leaves it. Also who holds each day (by ordinal), for the reason of a backup that does
    not."""
    held: dict[int, list[_Slot]] = {}
    day_holder: dict[int, BackupEntry] = {}
    weeks: set[int] = set()
    months: set[int] = set()
    a = anchor.astimezone(UTC)
    a_day, a_month = a.toordinal(), _month_index(a)
    a_monday = a_day - a.weekday()
    for e in good:  # oldest first: the first one seen in a period holds it
        assert e.created_at is not None
        c = e.created_at.astimezone(UTC)
        day = c.toordinal()
        monday, month = day - c.weekday(), _month_index(c)
        if day in day_holder and monday in weeks and month in months:
            continue  # the common case, kept cheap: 10,000 backups are planned in ~0.1 s
        slots = held.setdefault(id(e), [])
        if day not in day_holder:
            day_holder[day] = e
            slots.append(_Slot(f"daily slot {c.date().isoformat()}",
                               _midnight(day + policy.daily_days),
                               0 <= a_day - day < policy.daily_days))
        if monday not in weeks:
            weeks.add(monday)
            iso_year, iso_week, _ = c.isocalendar()
            slots.append(_Slot(f"weekly slot {iso_year}-W{iso_week:02d}",
                               _midnight(monday + 7 * policy.weekly_weeks),
                               0 <= (a_monday - monday) // 7 < policy.weekly_weeks))
        if month not in months:
            months.add(month)
            slots.append(_Slot(f"monthly slot {c.year}-{c.month:02d}",
                               _month_start(month + policy.monthly_months),
                               0 <= a_month - month < policy.monthly_months))
    return held, day_holder


def _fills_slots(e: BackupEntry) -> bool:
    """Manual, scheduled and pre-migration backups fill the slots; release, pinned and emergency
    ones are kept by rules of their own (as the S3 lifecycle tags them: tui.core.lifecycle)."""
    return e.kind in SLOT_KINDS and not (e.meta or {}).get("pinned")


def _pin_text(pinned: Any) -> str:
    info = pinned if isinstance(pinned, dict) else {}
    text = f"pinned by {info.get('by') or '?'}"
    if isinstance(info.get("at"), str):
        text += f" on {info['at'][:10]}"
    return text + (f": {info['reason']}" if info.get("reason") else "")


def plan(entries: Sequence[BackupEntry], policy: Policy, now: datetime, *,
         s3_configured: bool) -> Plan:
    """Keep or delete, with the reason, for every copy of every backup in `entries` (the
    inventory: local, S3 or both), and for the partial files it lists. Pure: no I/O."""
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    grace = timedelta(hours=policy.grace_hours)
    grace_text = f"younger than the grace period ({policy.grace_hours} h, RETENTION_GRACE_HOURS)"
    local_follows_slots = not s3_configured or policy.local_days == 0
    decisions: list[Decision] = []
    copies: list[_Copy] = []
    for e in entries:
        if e.meta is None and e.location == LOCAL and e.meta_path == e.path:
            decisions.append(_partial(e, now, grace, grace_text))
        elif e.location == S3 and e.meta is None and e.name == e.s3_key:
            decisions.append(_upload(e))
        else:
            copies.extend(_copies(e))

    epoch = datetime.min.replace(tzinfo=UTC)

    def newest_first(e: BackupEntry) -> tuple[datetime, str]:
        return e.created_at or epoch, e.name

    good_ids: dict[int, BackupEntry] = {id(c.entry): c.entry for c in copies if c.problem is None}
    good = sorted(good_ids.values(), key=newest_first, reverse=True)
    anchor = good[0].created_at if good else None
    # The slots of each place, from the good copies there (S3 keeps a long horizon of its own).
    held: dict[str, dict[int, list[_Slot]]] = {LOCAL: {}, S3: {}}
    day_holder: dict[str, dict[int, BackupEntry]] = {LOCAL: {}, S3: {}}
    if anchor is not None:
        for location in (LOCAL, S3):
            fill = sorted((c.entry for c in copies if c.problem is None and c.location == location
                           and _fills_slots(c.entry)), key=newest_first)
            held[location], day_holder[location] = _slots(fill, anchor, policy)
    newest_id = id(good[0]) if good else None
    drilled = next((e for e in good if ((e.meta or {}).get("drill") or {}).get("result")
                    == "PASS"), None)
    minimum: set[tuple[int, str]] = set()
    for location in (LOCAL, S3):
        at = sorted((c.entry for c in copies if c.problem is None and c.location == location),
                    key=newest_first, reverse=True)
        minimum.update((id(e), location) for e in at[:policy.min_keep])
    good_s3 = {id(c.entry) for c in copies if c.problem is None and c.location == S3}

    for c in copies:
        e = c.entry
        young = e.created_at is not None and e.created_at > now - grace
        if c.problem is not None:
            if c.remains and e.created_at is None:
                decisions.append(_decide(c, [_Reason(f"incomplete ({c.problem}), of unknown "
                                                     "age: kept", None, 2)], ""))
            elif c.remains and not young:
                decisions.append(_decide(c, [], f"incomplete ({c.problem}), older than the "
                                                 "grace period: removed"))
            elif c.remains:
                assert e.created_at is not None
                decisions.append(_decide(c, [_Reason(grace_text, e.created_at + grace, 1)], ""))
            else:
                decisions.append(_decide(c, [_Reason(
                    f"not counted ({c.problem}): kept for the operator to look at", None, 2)],
                    ""))
            continue
        assert anchor is not None and e.created_at is not None
        reasons: list[_Reason] = []
        meta = e.meta or {}
        if meta.get("pinned"):
            reasons.append(_Reason(_pin_text(meta["pinned"]), None, 0))
        if e.kind == "release":
            reasons.append(_Reason("release backup: kept forever", None, 0))
        if id(e) == newest_id:
            reasons.append(_Reason("the newest good backup", None, 2))
        if drilled is not None and e is drilled:
            when = str(meta["drill"].get("verified_at") or "")[:10]
            reasons.append(_Reason(f"the newest passed drill ({when or 'PASS'})", None, 2))
        slots = held[c.location].get(id(e), [])
        by_slots = c.location == S3 or local_follows_slots
        if by_slots:
            reasons += [_Reason(s.label, s.until, 1) for s in slots if s.in_window]
        # The rules that held it once, and when they ended (the text is made only if it goes).
        ended: list[tuple[datetime, str]] = []
        if by_slots:
            ended += [(s.until, f"{s.label} ended") for s in slots]
        rules = []
        if e.kind == "pre-migration" and c.location == LOCAL:
            rules.append((policy.pre_migration_days, "pre-migration backup",
                          "locally (RETENTION_PRE_MIGRATION_DAYS)"))
        if e.kind == "emergency":
            rules.append((policy.emergency_days, "emergency backup",
                          "(RETENTION_EMERGENCY_DAYS)"))
        if c.location == LOCAL and not local_follows_slots:
            rules.append((policy.local_days, "local copy", "(RETENTION_LOCAL_DAYS; S3 keeps "
                                                           "the long horizon)"))
        for days, what, where in rules:
            until = e.created_at + timedelta(days=days)
            if anchor < until:
                reasons.append(_Reason(f"{what}: kept {days} days {where}", until, 1))
            ended.append((until, f"{what} kept {days} days {where}, until"))
        if (id(e), c.location) in minimum:
            reasons.append(_Reason(f"minimum kept: one of the {policy.min_keep} newest good "
                                   "backups here (RETENTION_MIN_KEEP)", None, 2))
        if c.location == LOCAL and s3_configured and id(e) not in good_s3:
            reasons.append(_Reason("no S3 copy (3-2-1): local copy kept (upload it: "
                                   f"pgrunbook upload {e.name})", None, 2))
        if young:
            reasons.append(_Reason(grace_text, e.created_at + grace, 1))
        decisions.append(_decide(c, reasons, "") if reasons else _decide(
            c, reasons, _expired(e, ended, day_holder[c.location], c.location, by_slots,
                                 good_s3)))

    decisions.sort(key=lambda d: (d.created_at or epoch, d.name, d.location == LOCAL),
                   reverse=True)
    return Plan(tuple(decisions), policy, now, anchor, s3_configured)


def _expired(e: BackupEntry, ended: list[tuple[datetime, str]],
             day_holder: dict[int, BackupEntry], location: str, by_slots: bool,
             good_s3: set[int]) -> str:
    """Why a good copy that nothing keeps goes: the last rule that held it and when it ended,
    or the backup that holds its day instead."""
    assert e.created_at is not None
    tail = "; its S3 copy is complete" if location == LOCAL and id(e) in good_s3 else ""
    if ended:
        until, text = max(ended)
        return f"expired: {text} {_day(until)}{tail}"
    holder = day_holder.get(e.created_at.astimezone(UTC).toordinal())
    if by_slots and holder is not None and holder is not e:
        return (f"expired: {holder.name}, the first good backup of {_day(e.created_at)}, "
                f"holds its slots{tail}")
    if not _fills_slots(e):
        return f"expired: a{'n' if (e.kind or 'x')[0] in 'aeiou' else ''} {e.kind} backup "\
               f"fills no slot{tail}"
    return f"expired: in no slot (created {_day(e.created_at)}){tail}"


def _decide(c: _Copy, reasons: list[_Reason], delete_reason: str) -> Decision:
    e = c.entry
    size = e.size_bytes or 0
    common: dict[str, Any] = {
        "kind": e.kind, "created_at": e.created_at,
        "path": str(e.path) if c.location == LOCAL else None,
        "s3_key": e.s3_key if c.location == S3 else None,
    }
    if not reasons:
        return Decision(e.name, c.location, False, delete_reason, None, size, **common)
    best = _primary(reasons)
    also = tuple(r.text for r in reasons if r is not best)
    return Decision(e.name, c.location, True, best.text, best.until, size, also, **common)


def _primary(reasons: list[_Reason]) -> _Reason:
    """The longest-lasting reason: forever (pinned, release), else the one with the latest
    date, else one that holds while it is true (the newest, the minimum kept, 3-2-1)."""
    forever = [r for r in reasons if r.rank == 0]
    if forever:
        return forever[0]
    dated = [r for r in reasons if r.rank == 1 and r.until is not None]
    if dated:
        return max(dated, key=lambda r: r.until or datetime.min.replace(tzinfo=UTC))
    return reasons[0]


def _partial(e: BackupEntry, now: datetime, grace: timedelta, grace_text: str) -> Decision:
    size = e.size_bytes or 0
    common: dict[str, Any] = {"created_at": e.created_at, "item": PARTIAL, "path": str(e.path)}
    if e.created_at is not None and e.created_at <= now - grace:
        return Decision(e.path.name, LOCAL, False, "partial file left by an interrupted write, "
                        "older than the grace period", None, size, **common)
    until = e.created_at + grace if e.created_at is not None else None
    return Decision(e.path.name, LOCAL, True, grace_text, until, size, **common)


def _upload(e: BackupEntry) -> Decision:
    return Decision(e.name, S3, True, "an abandoned multipart upload, not a backup: the "
                    "bucket's lifecycle rule aborts it", None, 0, created_at=e.created_at,
                    item=UPLOAD, s3_key=e.s3_key)
