"""S3 lifecycle rules from the retention policy, and the retention tag each backup carries.

Every object of a backup in S3 (database.backup, metadata.json, roles.sql) is tagged
`pgrunbook-retention=<class>` when it is uploaded, and one lifecycle rule per class expires the
objects under the prefix that carry it: S3 keeps the SOP's long horizon by itself, whether or
not pgrunbook runs. `pgrunbook lifecycle` shows the configuration (the SOP's
s3-lifecycle-policy.json, input for `aws s3api put-bucket-lifecycle-configuration`) and how it
differs from the bucket's; `--apply` writes it, keeping every rule that is not pgrunbook's, and
tags the backups uploaded before tagging existed.

The class is decided once, at upload (`upload_class`): `release` for a release backup, `pinned`
for a pinned one, `emergency` for an emergency one; any other (manual, and pre-migration, which
in S3 follow the slots of their date: the SOP's "30 days local artifacts + S3 long-term") is
`monthly` when no earlier complete backup in S3 falls in the same UTC calendar month, else
`weekly` when none falls in the same ISO week, else `daily`. Only earlier manual and
pre-migration backups take a slot from a later one: a late `pgrunbook upload` of an older
backup keeps its slot, and release, pinned and emergency backups, kept by rules of their own,
fill no slot (as in the in-tool plan). Every doubt resolves to the longer class: a backup
whose kind cannot be read takes no slot.

Why no rule expires an object earlier than the in-tool policy (tui.core.retention) would:

- S3 counts a rule's days from the object's creation, its upload, which is after the backup's
  start, and rounds up to the next midnight UTC: an object under `Days: N` is kept at least N
  days after its backup was taken.
- The in-tool policy keeps one backup for each of the last N days, ISO weeks or months,
  counted back from its anchor (the newest good backup, never later than now). A backup taken
  on day D loses its day's slot once the anchor reaches day D+N: at most N days after it was
  taken. ISO week W is left once the anchor reaches week W+N: at most 7N days after the week
  began. Month M is left once the anchor reaches month M+N: at most as long as the longest N
  consecutive calendar months, which `month_span_days` computes: 366 days for 12 months (a
  span holding a 29 February). We use that rather than N*31 (372 for 12: six days of storage
  for nothing) or 365 (too short by a day in a leap span, saved only by S3's rounding up).
- A class is kept at least as long as any slot its backup also holds: the first backup of a
  month is the first of its day and often of its ISO week, so weekly >= daily and
  monthly >= weekly, whatever the RETENTION_* values; no class is shorter than one day or than
  the grace period (RETENTION_GRACE_HOURS). Emergency: RETENTION_EMERGENCY_DAYS from creation.
- `release` and `pinned` have no rule: a lifecycle rule must expire or transition something,
  and an object that no rule matches is kept for ever.
- Decided at upload, a class is final. This asks one thing of the in-tool policy, which
  tui.core.retention does: that each period's slot go to the period's earliest good backup,
  as the tags say. A backup cannot know at upload whether a later one will come in its
  month; were the slot the newest one's, the month's newest backup, tagged daily, would
  expire in S3 after daily_days while the in-tool plan keeps it for monthly_months.

What a clock counting from creation cannot follow, and what covers it:

- The anchor. The in-tool policy never ages backups out while backups stall; S3's clock keeps
  running. With a good backup every UTC day (the SOP's health check alerts after 24 h), anchor
  and clock agree within the rounding above; during a longer stall S3 expires, day by day, the
  oldest object of each class that the in-tool plan still keeps, and after daily_days + 1 days
  the newest daily one (RETENTION_MIN_KEEP and "newest good backup" are promises S3 cannot
  see). A stalled backup job is an incident to fix within a day, not something to wait out.
- A pin made after the upload: `retag_backup` re-tags the backup's objects `pinned` (and an
  unpin back to its calendar class); `lifecycle --apply` catches up any pin it missed.
- A slot holder deleted by hand: `lifecycle --apply` recomputes every class oldest first and
  re-tags a backup whose class got longer (it never shortens one), as well as untagged ones.
- AbortIncompleteMultipartUpload under the prefix after 1 day, or the grace period when that
  is longer (S3 rounds up to midnight: one to two days): an upload that old is abandoned, and
  the in-tool plan removes none younger than the grace period either.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, date, datetime, timedelta
from functools import lru_cache
from math import ceil
from typing import TYPE_CHECKING, Any
from urllib.parse import urlencode

from tui.core.errors import ConfigError, OperationFailed
from tui.core.events import Emit, PhaseStarted, ignore
from tui.core.metadata import SLOT_KINDS
from tui.core.s3 import (
    ARCHIVE_KEY,
    META_KEY,
    ROLES_KEY,
    S3Backup,
    S3Config,
    describe_error,
    list_s3,
    s3_config,
)
from tui.core.settings import Settings

if TYPE_CHECKING:  # imported where needed: an upload loads this module, not the policy's
    from tui.core.retention import Policy

TAG_KEY = "pgrunbook-retention"
RULE_PREFIX = "pgrunbook-"
EXPIRING = ("daily", "weekly", "monthly", "emergency")  # one rule each
CLASSES = (*EXPIRING, "release", "pinned")  # release and pinned: no rule, kept for ever
ABORT_RULE = "abort-incomplete-uploads"
LISTING_WAIT = 10.0  # seconds an upload waits, at its end, for its look at earlier backups
_STAMP_LEN = 15  # YYYYMMDD_HHMMSS
CACHE_FILE = ".s3-metadata-cache.json"  # list_s3's metadata cache in BACKUP_DIR (inventory's)

Existing = list[tuple[datetime, str | None]]


# -- the class of a backup ---------------------------------------------------------------------


def stamp_time(stamp: str) -> datetime | None:
    """The UTC time of a `YYYYMMDD_HHMMSS` stamp (an S3 folder's name), or None."""
    if len(stamp) != _STAMP_LEN:
        return None
    try:
        return datetime.strptime(stamp, "%Y%m%d_%H%M%S").replace(tzinfo=UTC)
    except ValueError:
        return None


def _utc(dt: datetime) -> datetime:
    return dt.replace(tzinfo=UTC) if dt.tzinfo is None else dt.astimezone(UTC)


def created_at(meta: Mapping[str, Any]) -> datetime:
    """When the backup was taken: its metadata's created_at, else the stamp its name begins
    with."""
    text = meta.get("created_at")
    if isinstance(text, str):
        try:
            return _utc(datetime.fromisoformat(text.replace("Z", "+00:00")))
        except ValueError:
            pass
    found = stamp_time(str(meta.get("name") or "")[:_STAMP_LEN])
    if found is None:
        raise ValueError("the metadata has neither created_at nor a stamped name")
    return found


def _week(day: date) -> tuple[int, int]:
    iso = day.isocalendar()  # the ISO year: 30 Dec 2024 is in week 1 of 2025
    return iso[0], iso[1]


def upload_class(meta: Mapping[str, Any], existing: Iterable[tuple[datetime, str | None]]) -> str:
    """The retention class of the backup `meta` describes, given the complete backups already
    in S3 as (created_at, kind) pairs: kind "pinned" for a pinned one, None when unknown."""
    kind = meta.get("kind")
    if kind == "release":
        return "release"
    if meta.get("pinned"):
        return "pinned"
    if kind == "emergency":
        return "emergency"
    when = created_at(meta)
    day = when.date()
    earlier = [_utc(t).date() for t, k in existing if k in SLOT_KINDS and _utc(t) < when]
    if not any((d.year, d.month) == (day.year, day.month) for d in earlier):
        return "monthly"
    if not any(_week(d) == _week(day) for d in earlier):
        return "weekly"
    return "daily"


def slot_kind(meta: Mapping[str, Any] | None, retention: str | None = None) -> str | None:
    """What `upload_class` needs to know of an existing backup: its kind, or "pinned"."""
    if retention == "pinned" or (meta is not None and meta.get("pinned")):
        return "pinned"
    kind = (meta or {}).get("kind")
    return str(kind) if kind is not None else None


# -- the rules ---------------------------------------------------------------------------------


@lru_cache(maxsize=32)
def month_span_days(months: int) -> int:
    """The longest that `months` consecutive calendar months last, in days (366 for 12)."""
    if months <= 0:
        return 0
    if months > 1200:
        return months * 31  # an upper bound; no one keeps monthly backups for a century
    longest = 0
    for year in range(2000, 2400):  # one whole Gregorian cycle of leap years
        for month in range(12):
            end = month + months
            span = date(year + end // 12, end % 12 + 1, 1) - date(year, month + 1, 1)
            longest = max(longest, span.days)
    return longest


def class_days(policy: Policy) -> dict[str, int]:
    """Days after upload at which S3 expires each expiring class, and after which it aborts
    an unfinished multipart upload ("abort"); see the module docstring."""
    floor = max(1, ceil(policy.grace_hours / 24))
    daily = max(floor, policy.daily_days)
    weekly = max(daily, 7 * policy.weekly_weeks)
    monthly = max(weekly, month_span_days(policy.monthly_months))
    return {"daily": daily, "weekly": weekly, "monthly": monthly,
            "emergency": max(floor, policy.emergency_days), "abort": floor}


def rule_id(name: str, prefix: str) -> str:
    """pgrunbook's rule IDs name their prefix: two installations sharing a bucket under
    different prefixes keep each other's rules."""
    return f"{RULE_PREFIX}{name}@{prefix}"


def tagging(cls: str) -> str:
    """The URL-encoded `Tagging` argument of put_object and create_multipart_upload."""
    return urlencode({TAG_KEY: cls})


def with_class(tag_set: Sequence[Mapping[str, str]], cls: str) -> list[dict[str, str]]:
    """`tag_set` with pgrunbook's retention tag set to `cls` (put_object_tagging replaces the
    whole set, so the object's other tags go back with it)."""
    kept = [{"Key": t["Key"], "Value": t["Value"]} for t in tag_set if t["Key"] != TAG_KEY]
    return [*kept, {"Key": TAG_KEY, "Value": cls}]


def class_of(tag_set: Sequence[Mapping[str, str]]) -> str | None:
    return next((t["Value"] for t in tag_set if t["Key"] == TAG_KEY), None)


def lifecycle_rules(policy: Policy, prefix: str) -> list[dict[str, Any]]:
    """pgrunbook's rules for `prefix`: one per expiring class, and the multipart clean-up."""
    days = class_days(policy)
    rules: list[dict[str, Any]] = []
    for cls in EXPIRING:
        tag = {"Key": TAG_KEY, "Value": cls}
        where = {"And": {"Prefix": prefix, "Tags": [tag]}} if prefix else {"Tag": tag}
        rules.append({"ID": rule_id(cls, prefix), "Status": "Enabled", "Filter": where,
                      "Expiration": {"Days": days[cls]}})
    # S3 allows no tag filter with AbortIncompleteMultipartUpload: the prefix alone.
    rules.append({"ID": rule_id(ABORT_RULE, prefix), "Status": "Enabled",
                  "Filter": {"Prefix": prefix},
                  "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": days["abort"]}})
    return rules


def rule_prefix(rule: Mapping[str, Any]) -> str:
    """The key prefix a rule's filter names ("" for the whole bucket)."""
    where = rule.get("Filter")
    if isinstance(where, Mapping):
        if "Prefix" in where:
            return str(where["Prefix"])
        both = where.get("And")
        if isinstance(both, Mapping):
            return str(both.get("Prefix") or "")
        return ""
    return str(rule.get("Prefix") or "")  # the legacy top-level Prefix


def is_ours(rule: Mapping[str, Any], prefix: str, ids: Iterable[str] = ()) -> bool:
    """A rule pgrunbook wrote for this prefix, or one holding an ID of `ids` (pgrunbook's,
    which a configuration cannot hold twice): replaced by `--apply`; any other is kept."""
    rid = str(rule.get("ID", ""))
    return (rid.startswith(RULE_PREFIX) and rule_prefix(rule) == prefix) or rid in set(ids)


def _canonical(value: Any) -> Any:
    """A rule as data to compare: empty fields dropped, tag lists sorted."""
    if isinstance(value, Mapping):
        out = {str(k): _canonical(v) for k, v in value.items()}
        return {k: v for k, v in sorted(out.items()) if v not in (None, "", [], {})
                or k == "Prefix"}
    if isinstance(value, list | tuple):
        items = [_canonical(v) for v in value]
        return sorted(items, key=repr)
    return value


def describe_rule(rule: Mapping[str, Any]) -> str:
    """One line: what a rule does."""
    where = rule_prefix(rule)
    under = f"under {where}" if where else "in the whole bucket"
    tags = []
    raw = rule.get("Filter") or {}
    if isinstance(raw, Mapping):
        if isinstance(raw.get("Tag"), Mapping):
            tags.append(raw["Tag"])
        both = raw.get("And")
        if isinstance(both, Mapping):
            tags.extend(t for t in both.get("Tags") or [] if isinstance(t, Mapping))
    what = "objects" + (" tagged " + ", ".join(f"{t.get('Key')}={t.get('Value')}" for t in tags)
                        if tags else "")
    parts = []
    expiration = rule.get("Expiration")
    if isinstance(expiration, Mapping):
        if "Days" in expiration:
            parts.append(f"{what} {under} expire {expiration['Days']} days after upload")
        elif "Date" in expiration:
            parts.append(f"{what} {under} expire on {expiration['Date']}")
        elif expiration.get("ExpiredObjectDeleteMarker"):
            parts.append(f"expired delete markers {under} are removed")
    abort = rule.get("AbortIncompleteMultipartUpload")
    if isinstance(abort, Mapping):
        parts.append(f"unfinished multipart uploads {under} are aborted "
                     f"{abort.get('DaysAfterInitiation')} day(s) after they began")
    for other in ("Transitions", "NoncurrentVersionExpiration", "NoncurrentVersionTransitions"):
        if rule.get(other):
            parts.append(f"{other} {under}")
    text = "; ".join(parts) or f"a rule {under}"
    return text if rule.get("Status", "Enabled") == "Enabled" else f"{text} (disabled)"


@dataclass(frozen=True)
class RuleChange:
    """How one rule (by ID) differs between the bucket and the policy: added, changed,
    removed, unchanged, or kept (not pgrunbook's, left as it is)."""

    rule_id: str
    change: str
    before: dict[str, Any] | None = None
    after: dict[str, Any] | None = None

    def describe(self) -> str:
        if self.change == "added" and self.after is not None:
            return f"+ {self.rule_id}: {describe_rule(self.after)}"
        if self.change == "removed" and self.before is not None:
            return f"- {self.rule_id}: {describe_rule(self.before)}"
        if self.change == "changed" and self.before is not None and self.after is not None:
            return (f"~ {self.rule_id}: {describe_rule(self.before)}\n"
                    f"    now: {describe_rule(self.after)}")
        if self.change == "kept":
            return f"  {self.rule_id}: kept, not pgrunbook's for this prefix"
        return f"= {self.rule_id}: unchanged"

    def as_json(self) -> dict[str, Any]:
        return {"id": self.rule_id, "change": self.change, "before": self.before,
                "after": self.after}


def diff_rules(current: Sequence[Mapping[str, Any]] | None, ours: Sequence[Mapping[str, Any]],
               prefix: str) -> list[RuleChange]:
    """Per rule ID: what writing `ours` over the bucket's `current` rules (None: the bucket
    has no lifecycle configuration) adds, changes and removes, and which rules it keeps."""
    have = [dict(r) for r in current or []]
    wanted = {str(r["ID"]): dict(r) for r in ours}
    mine = {str(r.get("ID")): r for r in have if is_ours(r, prefix, wanted)}
    changes = [RuleChange(str(r.get("ID")), "kept", before=r) for r in have
               if not is_ours(r, prefix, wanted)]
    for rid, rule in wanted.items():
        old = mine.get(rid)
        if old is None:
            changes.append(RuleChange(rid, "added", after=rule))
        elif _canonical(old) != _canonical(rule):
            changes.append(RuleChange(rid, "changed", before=old, after=rule))
        else:
            changes.append(RuleChange(rid, "unchanged", before=old, after=rule))
    changes.extend(RuleChange(rid, "removed", before=rule) for rid, rule in mine.items()
                   if rid not in wanted)
    return changes


def merged_configuration(current: Sequence[Mapping[str, Any]] | None,
                         ours: Sequence[Mapping[str, Any]], prefix: str) -> dict[str, Any]:
    """The whole configuration to write: the bucket's other rules, then pgrunbook's (a PUT
    replaces the bucket's configuration: a rule left out is deleted)."""
    ids = {str(r["ID"]) for r in ours}
    kept = [dict(r) for r in current or [] if not is_ours(r, prefix, ids)]
    return {"Rules": [*kept, *(dict(r) for r in ours)]}


# -- talking to S3 -----------------------------------------------------------------------------


def _code(exc: BaseException) -> str | None:
    from botocore.exceptions import ClientError

    if isinstance(exc, ClientError):
        return str(exc.response.get("Error", {}).get("Code") or "") or None
    return None


_DENIED = frozenset({"AccessDenied", "AllAccessDisabled", "AccessDeniedException"})


def _s3_failure(exc: BaseException, config: S3Config, doing: str, action: str) -> OperationFailed:
    """The operator's error for a failed S3 call: the IAM action to grant when denied."""
    code = _code(exc)
    where = f"s3://{config.bucket}"
    if code in _DENIED:
        return OperationFailed(
            f"{doing} s3://{config.bucket} was refused: {describe_error(exc)}.",
            f"Allow the IAM action {action} on arn:aws:s3:::{config.bucket} for these "
            "credentials (or run the aws s3api command with an account that has it).")
    if code == "NoSuchBucket":
        return OperationFailed(f"the bucket {config.bucket} does not exist.",
                               "Check BACKUP_S3_BUCKET (and AWS_REGION, AWS_ENDPOINT_URL).")
    return OperationFailed(f"{doing} {where} failed: {describe_error(exc)}.",
                           "Check the endpoint and the credentials, then retry.")


def s3_client(config: S3Config) -> Any:
    """The S3 client, or the operator's error (an unknown AWS_PROFILE, a bad region)."""
    try:
        return config.client()
    except Exception as exc:
        raise OperationFailed(f"cannot make an S3 client: {describe_error(exc)}.",
                              "Check AWS_PROFILE, AWS_REGION and AWS_ENDPOINT_URL.") from None


def read_rules(client: Any, config: S3Config) -> list[dict[str, Any]] | None:
    """The bucket's lifecycle rules; None when it has no lifecycle configuration."""
    try:
        resp = client.get_bucket_lifecycle_configuration(Bucket=config.bucket)
    except Exception as exc:
        if _code(exc) == "NoSuchLifecycleConfiguration":
            return None
        raise _s3_failure(exc, config, "reading the lifecycle configuration of",
                          "s3:GetLifecycleConfiguration") from None
    return [dict(r) for r in resp.get("Rules", [])]


def require_s3(settings: Settings) -> S3Config:
    s3 = s3_config(settings)
    if s3 is None:
        raise ConfigError("S3 is not configured: there is no bucket to write lifecycle rules to.",
                          "Set BACKUP_S3_BUCKET in .env.deployment.")
    return s3


@dataclass(frozen=True)
class LifecyclePlan:
    """The policy as S3 rules, against what the bucket has now."""

    bucket: str
    prefix: str
    rules: list[dict[str, Any]]  # pgrunbook's
    current: list[dict[str, Any]] | None  # the bucket's; None: no lifecycle configuration
    configuration: dict[str, Any]  # the whole configuration to write (s3-lifecycle-policy.json)
    changes: list[RuleChange]
    days: dict[str, int]

    @property
    def changed(self) -> bool:
        return any(c.change in ("added", "changed", "removed") for c in self.changes)

    def as_json(self) -> dict[str, Any]:
        return {"bucket": self.bucket, "prefix": self.prefix, "days": self.days,
                "has_configuration": self.current is not None,
                "changes": [c.as_json() for c in self.changes],
                "configuration": self.configuration}


def plan_lifecycle(settings: Settings, client: Any | None = None) -> LifecyclePlan:
    """The configuration the policy asks for and its difference from the bucket's."""
    from tui.core.retention import Policy

    config = require_s3(settings)
    policy = Policy.from_settings(settings)
    client = client if client is not None else s3_client(config)
    current = read_rules(client, config)
    ours = lifecycle_rules(policy, config.prefix)
    return LifecyclePlan(config.bucket, config.prefix, ours, current,
                         merged_configuration(current, ours, config.prefix),
                         diff_rules(current, ours, config.prefix), class_days(policy))


# -- tags on backups ---------------------------------------------------------------------------


def _kind_in_s3(client: Any, config: S3Config, stamp: str) -> str | None:
    """An earlier backup's kind for `upload_class`, from its archive's tags (one small GET;
    "pinned" when so tagged), else its metadata.json; None when neither can be read."""
    try:
        tags = client.get_object_tagging(Bucket=config.bucket,
                                         Key=config.key_for(stamp, ARCHIVE_KEY))["TagSet"]
        values = {t["Key"]: t["Value"] for t in tags}
        if values.get(TAG_KEY) == "pinned":
            return "pinned"
        if values.get("kind"):
            return str(values["kind"])
    except Exception:  # noqa: BLE001 - an unreadable neighbour takes no slot (the safe way)
        pass
    try:
        body = client.get_object(Bucket=config.bucket,
                                 Key=config.key_for(stamp, META_KEY))["Body"].read()
        meta = json.loads(body)
        return slot_kind(meta) if isinstance(meta, dict) else None
    except Exception:  # noqa: BLE001
        return None


def existing_near(client: Any, config: S3Config, stamp: str) -> Existing:
    """The complete backups in S3 that decide the class of the backup `stamp`: the earlier
    ones of its month and ISO week, as (created_at, kind). One ListObjectsV2 starting at the
    earlier of the month's and the week's first day (a page or two whatever the bucket holds),
    and a tag read per backup until the month and the week each have a slot-filling one."""
    when = stamp_time(stamp)
    if when is None:
        return []
    day = when.date()
    start = min(day.replace(day=1), day - timedelta(days=day.weekday()))
    leaves: dict[str, set[str]] = {}
    pages = client.get_paginator("list_objects_v2").paginate(
        Bucket=config.bucket, Prefix=config.prefix, StartAfter=f"{config.prefix}{start:%Y%m%d}")
    for page in pages:
        past = False
        for obj in page.get("Contents", []):
            other, _, leaf = obj["Key"][len(config.prefix):].partition("/")
            if stamp_time(other) is None:
                continue
            if other >= stamp:
                past = True
                break
            leaves.setdefault(other, set()).add(leaf)
        if past:
            break
    found: Existing = []
    month_taken = week_taken = False
    for other in sorted(s for s, have in leaves.items() if {ARCHIVE_KEY, META_KEY} <= have):
        then = stamp_time(other)
        assert then is not None
        in_month = (then.year, then.month) == (when.year, when.month)
        in_week = _week(then.date()) == _week(day)
        if not ((in_month and not month_taken) or (in_week and not week_taken)):
            continue
        kind = _kind_in_s3(client, config, other)
        found.append((then, kind))
        if kind in SLOT_KINDS:
            month_taken = month_taken or in_month
            week_taken = week_taken or in_week
        if month_taken and week_taken:
            break
    return found


def class_at_upload(meta: Mapping[str, Any], existing: Future[Existing] | None) -> str:
    """The class an upload tags its objects with. When the earlier backups could not be
    listed (in time), as if there were none (monthly for a slot backup): a doubt never
    shortens a backup's life, and the upload goes on whatever the listing did."""
    try:
        near = existing.result(timeout=LISTING_WAIT) if existing is not None else []
    except Exception:  # noqa: BLE001 - includes the timeout
        near = []
    return upload_class(meta, near)


def tag_object(client: Any, config: S3Config, key: str, cls: str,
               tag_set: Sequence[Mapping[str, str]] | None = None) -> bool:
    """Set the retention tag of one object, keeping its other tags. False if it is gone."""
    if tag_set is None:
        try:
            tag_set = client.get_object_tagging(Bucket=config.bucket, Key=key)["TagSet"]
        except Exception as exc:
            if _code(exc) in ("NoSuchKey", "404"):
                return False
            raise
    client.put_object_tagging(Bucket=config.bucket, Key=key,
                              Tagging={"TagSet": with_class(tag_set, cls)})
    return True


def tag_backup(client: Any, config: S3Config, stamp: str, cls: str,
               archive_tags: Sequence[Mapping[str, str]] | None = None) -> list[str]:
    """Tag a backup's objects `cls` (`pgrunbook pin` uses "pinned"): metadata.json and
    roles.sql first, the archive last, so an archive that carries the tag vouches for the
    rest. Returns the keys tagged."""
    done = []
    for leaf in (META_KEY, ROLES_KEY, ARCHIVE_KEY):
        key = config.key_for(stamp, leaf)
        if tag_object(client, config, key, cls, archive_tags if leaf == ARCHIVE_KEY else None):
            done.append(key)
    return done


def retag_backup(client: Any, config: S3Config, meta: Mapping[str, Any]) -> tuple[str, list[str]]:
    """Tag the objects of the backup `meta` describes with the class its metadata gives it
    now: `pgrunbook pin` ("pinned") and `unpin` (its calendar class again) call this after
    rewriting metadata.json, whose new object carries no tag. Returns (class, keys tagged)."""
    stamp = str(meta.get("name") or "")[:_STAMP_LEN]
    if stamp_time(stamp) is None:
        raise ValueError(f"{meta.get('name')!r} does not begin with a YYYYMMDD_HHMMSS stamp")
    cls = upload_class(meta, existing_near(client, config, stamp))
    return cls, tag_backup(client, config, stamp, cls)


@dataclass(frozen=True)
class Retagged:
    """One backup whose objects got a (longer) retention class."""

    stamp: str
    name: str
    retention: str
    previous: str | None
    keys: tuple[str, ...]

    def as_json(self) -> dict[str, Any]:
        return {"stamp": self.stamp, "name": self.name, "retention": self.retention,
                "previous": self.previous, "objects": list(self.keys)}


def _lasts(cls: str | None, days: Mapping[str, int]) -> float:
    if cls is None:
        return -1.0
    return float(days[cls]) if cls in days else float("inf")  # release, pinned, unknown


def retag_backups(config: S3Config, client: Any, policy: Policy,
                  backups: Mapping[str, S3Backup], *, workers: int = 16,
                  on_retagged: Callable[[Retagged], None] = lambda _r: None) -> list[Retagged]:
    """Give every complete backup of `backups` (list_s3's) the class it would have got had the
    backups been uploaded in order, oldest first: untagged ones (uploaded before tagging
    existed) get it, and one whose class got longer (an earlier slot holder was deleted) is
    promoted. No tag is ever shortened."""
    complete = []
    for stamp, b in backups.items():
        if b.archive_key is None or not isinstance(b.meta, dict):
            continue
        if (b.meta.get("archive") or {}).get("size_bytes") != b.size_bytes:
            continue
        try:
            complete.append((created_at(b.meta), stamp, b))
        except ValueError:
            continue
    complete.sort(key=lambda item: (item[0], item[1]))

    def tags_of(key: str) -> list[dict[str, str]]:
        return list(client.get_object_tagging(Bucket=config.bucket, Key=key)["TagSet"])

    with ThreadPoolExecutor(max_workers=workers) as pool:
        tag_sets = list(pool.map(tags_of, [str(b.archive_key) for _t, _s, b in complete]))
    days = class_days(policy)
    seen: Existing = []
    done: list[Retagged] = []
    for (when, stamp, b), tags in zip(complete, tag_sets, strict=True):
        assert b.meta is not None
        have = class_of(tags)
        want = upload_class(b.meta, seen)
        seen.append((when, slot_kind(b.meta, have)))
        if have is not None and _lasts(want, days) <= _lasts(have, days):
            continue
        keys = tag_backup(client, config, stamp, want, archive_tags=tags)
        item = Retagged(stamp, str(b.meta.get("name") or stamp), want, have, tuple(keys))
        done.append(item)
        on_retagged(item)
    return done


# -- pgrunbook lifecycle --apply ---------------------------------------------------------------


@dataclass
class LifecycleResult:
    plan: LifecyclePlan
    rules_written: list[str] = field(default_factory=list)
    retagged: list[Retagged] = field(default_factory=list)

    @property
    def objects_retagged(self) -> int:
        return sum(len(r.keys) for r in self.retagged)

    def as_json(self) -> dict[str, Any]:
        return {**self.plan.as_json(), "applied": True, "rules_written": self.rules_written,
                "objects_retagged": self.objects_retagged,
                "retagged": [r.as_json() for r in self.retagged]}


def apply_lifecycle(settings: Settings, emit: Emit = ignore,
                    origin: str = "cli") -> LifecycleResult:
    """Write the policy's rules to the bucket (its other rules kept; nothing written when they
    already match) and tag the backups that lack their class. Audited as "lifecycle"."""
    from tui.core.operation import operation
    from tui.core.retention import Policy

    config = require_s3(settings)
    policy = Policy.from_settings(settings)
    with operation(settings, "lifecycle", emit, origin=origin, no_target=True,
                   arguments={"bucket": config.bucket, "prefix": config.prefix,
                              "apply": True}) as op:
        client = s3_client(config)
        plan = plan_lifecycle(settings, client)
        result = LifecycleResult(plan)
        op.end.update(rules_written=[], objects_retagged=0)
        if plan.changed:
            op.emit(PhaseStarted("lifecycle", f"writing {len(plan.rules)} pgrunbook rules to "
                                              f"s3://{config.bucket} (other rules kept)"))
            try:
                client.put_bucket_lifecycle_configuration(
                    Bucket=config.bucket, LifecycleConfiguration=plan.configuration)
            except Exception as exc:
                raise _s3_failure(exc, config, "writing the lifecycle configuration of",
                                  "s3:PutLifecycleConfiguration") from None
            result.rules_written = [str(r["ID"]) for r in plan.rules]
            op.end.update(rules_written=result.rules_written)
        op.emit(PhaseStarted("tagging", f"backups under s3://{config.bucket}/{config.prefix} "
                                        "without their retention class"))

        def counted(item: Retagged) -> None:
            result.retagged.append(item)
            op.end.update(objects_retagged=result.objects_retagged)

        try:
            backups = list_s3(config, cache_path=settings.backup_dir / CACHE_FILE).backups
        except Exception as exc:
            raise _s3_failure(exc, config, "listing the backups in", "s3:ListBucket") from None
        try:
            retag_backups(config, client, policy, backups, on_retagged=counted)
        except Exception as exc:
            raise _s3_failure(exc, config, "tagging the backups in",
                              "s3:GetObjectTagging and s3:PutObjectTagging") from None
    return result
