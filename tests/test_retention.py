"""Retention: the plan's rules, one test each, over inventory entries built by hand; then the real
CLI (`prune`, `pin`, `unpin`) over dated histories made from ONE real backup of the pagila
fixture: its archive hardlinked and its metadata rewritten under dated names (as
`demo._backdate` does), so the inventory sees real, checksum-valid backups.

A slot is held by the FIRST good backup of its day, ISO week or month (as the S3 lifecycle tags
decide at upload: tui.core.lifecycle). The SOP's policy (daily 14 days, weekly 12 ISO weeks,
monthly 12 months) over 90 daily backups, 2025-01-01 to 2025-03-31 at 10:00 UTC (the anchor:
2025-03-31, a Monday, ISO week 14), keeps 27:
  daily (14):   2025-03-18 .. 2025-03-31
  weekly (12 weeks, W03..W14, their Mondays): 03-31, 03-24 (also daily), and
                03-17, 03-10, 03-03, 02-24, 02-17, 02-10, 02-03, 01-27, 01-20, 01-13 (10 more)
  monthly (the 3 months with backups): 03-01, 02-01, 01-01 (3 more)
  14 + 10 + 3 = 27 distinct backups; the other 63 go.
"""

from __future__ import annotations

import copy
import getpass
import json
import os
import pty
import signal
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Golden, Workspace, clean_env
from tests.test_s3 import CREDS, bucket, client, keys, moto_port, s3_env  # noqa: F401
from tui.core import inventory as inv
from tui.core.fsutil import ensure_private_dir
from tui.core.inventory import BackupEntry
from tui.core.metadata import read_meta, write_meta
from tui.core.prune import (
    PruneRequest,
    current_plan,
    delete_copy,
    deletion_steps,
    reclaimable_bytes,
    run_prune,
    space_hint,
)
from tui.core.retention import Decision, Policy, plan
from tui.core.settings import load_settings

SHA = "ab" * 32
ANCHOR = datetime(2025, 3, 31, 10, tzinfo=UTC)
NOW = ANCHOR + timedelta(days=1)
NINETY = [datetime(2025, 1, 1, 10, tzinfo=UTC) + timedelta(days=i) for i in range(90)]
KEPT_OF_NINETY = sorted(
    [f"2025-03-{d:02d}" for d in range(18, 32)]                                     # daily
    + ["2025-03-17", "2025-03-10", "2025-03-03", "2025-02-24", "2025-02-17",         # weekly
       "2025-02-10", "2025-02-03", "2025-01-27", "2025-01-20", "2025-01-13"]
    + ["2025-03-01", "2025-02-01", "2025-01-01"])                                     # monthly
KEPT, GONE = 27, 63
assert len(KEPT_OF_NINETY) == KEPT


def stamp(when: datetime) -> str:
    return when.strftime("%Y%m%d_%H%M%S")


# The inventory's codes for the problem texts these tests use (tui.core.inventory).
CODES = {"metadata missing": inv.META_MISSING, "checksum mismatch": inv.CHECKSUM_MISMATCH,
         "S3 copy incomplete (no metadata.json)": inv.S3_NO_METADATA,
         "never uploaded to S3 (pgrunbook upload NAME)": inv.NOT_UPLOADED,
         "size differs from metadata (10 bytes, expected 1000)": inv.SIZE_MISMATCH,
         "partial file left by an interrupted write (safe to delete)": inv.PARTIAL_FILE}


def entry(when: datetime, kind: str = "manual", *, location: str = "local",
          problems: tuple[str, ...] = (), sha: str | None = SHA, meta: bool = True,
          **extra: Any) -> BackupEntry:
    """An inventory entry as `inventory.merged_inventory` makes one."""
    name = f"{stamp(when)}_{kind.replace('-', '_')}"
    m = {"name": name, "kind": kind, "created_at": when.isoformat(),
         "archive": {"file": f"{name}.backup", "sha256": sha, "size_bytes": 1000}, **extra}
    return BackupEntry(name=name, path=Path(f"/b/{name}.backup"),
                       meta_path=Path(f"/b/{name}.backup.meta"), kind=kind if meta else None,
                       created_at=when, size_bytes=1000, sha256=sha, meta=m if meta else None,
                       problems=list(problems), location=location,
                       problem_codes=[CODES[p] for p in problems],
                       s3_key=f"backups/{stamp(when)}/database.backup"
                       if location != "local" else None)


def by_name(p: Any, location: str = "local") -> dict[str, Decision]:
    return {d.name: d for d in p.decisions if d.location == location}


def kept_days(p: Any, location: str = "local") -> list[str]:
    return sorted(d.created_at.strftime("%Y-%m-%d") for d in p.decisions
                  if d.keep and d.location == location)


# -- the plan, pure ----------------------------------------------------------------------------


def test_90_days_of_daily_backups_keep_exactly_the_sops_slots() -> None:
    p = plan([entry(t) for t in NINETY], Policy(), NOW, s3_configured=False)
    assert kept_days(p) == KEPT_OF_NINETY and len(p.kept) == KEPT and len(p.deletions) == GONE
    reasons = {d.created_at.strftime("%m-%d"): (d.reason, d.also) for d in p.kept}
    assert sum(any(r.startswith("daily slot") for r in (m, *a)) for m, a in reasons.values()) == 14
    assert sum(any(r.startswith("weekly slot") for r in (m, *a)) for m, a in reasons.values()) == 12
    assert sum(any(r.startswith("monthly slot") for r in (m, *a))
               for m, a in reasons.values()) == 3
    # The longest-lasting reason leads: the newest holds ISO week 14's slot (until 2025-06-23).
    newest = by_name(p)[f"{stamp(ANCHOR)}_manual"]
    assert newest.reason == "weekly slot 2025-W14" and newest.until == datetime(2025, 6, 23,
                                                                                tzinfo=UTC)
    assert "the newest good backup" in newest.also and "daily slot 2025-03-31" in newest.also
    assert reasons["03-18"][0] == "daily slot 2025-03-18"
    assert reasons["01-13"][0] == "weekly slot 2025-W03"
    assert reasons["01-01"][0] == "monthly slot 2025-01"
    gone = by_name(p)["20250316_100000_manual"]
    assert gone.reason == "expired: daily slot 2025-03-16 ended 2025-03-30"
    assert all(d.reason.startswith("expired: ") for d in p.deletions)
    assert p.freed_bytes("local") == GONE * 1000 and p.freed_bytes("s3") == 0


def test_windows_are_anchored_at_the_newest_good_backup_so_a_stalled_job_deletes_nothing() -> None:
    history = [entry(t) for t in NINETY]
    fresh = plan(history, Policy(), NOW, s3_configured=False)
    stalled = plan(history, Policy(), ANCHOR + timedelta(days=40), s3_configured=False)
    assert stalled.anchor == fresh.anchor == ANCHOR
    assert kept_days(stalled) == kept_days(fresh) == KEPT_OF_NINETY
    # Anchored at now (2025-05-10), the daily and weekly windows would hold no backup at all.
    assert all(d.keep for d in by_name(stalled).values() if d.name >= "20250318")


def test_a_400_day_old_release_stays_and_a_manual_one_of_that_age_goes() -> None:
    old = ANCHOR - timedelta(days=400)
    release, manual = entry(old, "release"), entry(old - timedelta(days=1))
    p = plan([entry(t) for t in NINETY] + [release, manual], Policy(), NOW, s3_configured=False)
    d = by_name(p)
    assert d[release.name].keep and d[release.name].reason == "release backup: kept forever"
    assert d[release.name].until is None
    assert not d[manual.name].keep
    # A release fills no slot: the manual one held its day, week and month, the month last.
    assert d[manual.name].reason == "expired: monthly slot 2024-02 ended 2025-02-01"


def test_failed_and_partial_runs_never_fill_a_slot() -> None:
    good = entry(ANCHOR)
    later = ANCHOR.replace(hour=3)  # before `good`, the same day: each would take its slot
    no_meta = entry(later, meta=False, problems=("metadata missing",))
    damaged = entry(later + timedelta(minutes=1), problems=(
        "size differs from metadata (10 bytes, expected 1000)",))
    mismatch = entry(later + timedelta(minutes=2), problems=("checksum mismatch",))
    no_sha = entry(later + timedelta(minutes=3), sha=None)
    partial = BackupEntry(name=f"{stamp(later)}_x.backup",
                          path=Path(f"/b/.{stamp(later)}_x.backup.partial-0badf00d"),
                          meta_path=Path(f"/b/.{stamp(later)}_x.backup.partial-0badf00d"),
                          created_at=later + timedelta(minutes=4), size_bytes=5,
                          problems=["partial file left by an interrupted write (safe to delete)"],
                          problem_codes=[inv.PARTIAL_FILE])
    # A failed run after the newest good backup does not move the windows either.
    newest_failed = entry(ANCHOR + timedelta(days=5, hours=12), meta=False,
                          problems=("metadata missing",))
    entries = [good, no_meta, damaged, mismatch, no_sha, partial, newest_failed]
    p = plan(entries, Policy(), ANCHOR + timedelta(days=6), s3_configured=False)
    assert p.anchor == good.created_at
    d = by_name(p)
    assert d[good.name].keep and d[good.name].reason == "monthly slot 2025-03"
    assert "daily slot 2025-03-31" in d[good.name].also
    for e in (damaged, mismatch, no_sha):
        assert d[e.name].keep and d[e.name].reason.startswith("not counted ("), d[e.name]
        assert not any("slot" in r for r in d[e.name].also)
    assert "no SHA-256" in d[no_sha.name].reason
    # What an unfinished write left goes once past the grace period, partial files included.
    assert not d[no_meta.name].keep
    assert d[no_meta.name].reason == ("incomplete (metadata missing), older than the grace "
                                      "period: removed")
    assert not d[partial.path.name].keep and d[partial.path.name].item == "partial"
    assert d[newest_failed.name].keep  # younger than the grace period (24 h)
    assert d[newest_failed.name].reason.startswith("younger than the grace period")


def test_the_newest_good_backup_is_never_deleted() -> None:
    no_slots = Policy(daily_days=0, weekly_weeks=0, monthly_months=0, min_keep=0)
    history = [entry(t) for t in NINETY[:10]] + [entry(NINETY[10], "emergency")]
    p = plan(history, no_slots, NOW, s3_configured=False)
    assert [d.name for d in p.kept] == [history[-1].name]  # an emergency one fills no slot
    assert p.kept[0].reason.startswith("the newest good backup") or \
        "the newest good backup" in p.kept[0].also


def test_the_newest_passed_drill_is_kept() -> None:
    def drilled(t: datetime, result: str) -> BackupEntry:
        return entry(t, drill={"result": result, "verified_at": "2025-03-30T00:00:00Z"})

    old = ANCHOR - timedelta(days=500)
    passed, older_pass = drilled(old, "PASS"), drilled(old - timedelta(days=1), "PASS")
    failed = drilled(old + timedelta(days=1), "FAIL")
    p = plan([entry(t) for t in NINETY] + [passed, older_pass, failed], Policy(), NOW,
             s3_configured=False)
    d = by_name(p)
    assert d[passed.name].keep and d[passed.name].reason == "the newest passed drill (2025-03-30)"
    assert not d[older_pass.name].keep and not d[failed.name].keep


def test_pinned_backups_are_kept() -> None:
    old = ANCHOR - timedelta(days=800)
    pinned = entry(old, pinned={"by": "alice", "at": "2025-03-01T10:00:00Z",
                                "reason": "before the v2 migration"})
    unpinned = entry(old + timedelta(hours=1))
    p = plan([entry(t) for t in NINETY] + [pinned, unpinned], Policy(), NOW,
             s3_configured=True)
    for location in ("local",):
        d = by_name(p, location)
        assert d[pinned.name].keep, d[pinned.name]
        assert d[pinned.name].reason == "pinned by alice on 2025-03-01: before the v2 migration"
    both = entry(old, location="both", pinned={"by": "bob"})
    p = plan([entry(t) for t in NINETY] + [both], Policy(), NOW, s3_configured=True)
    assert by_name(p, "local")[both.name].keep and by_name(p, "s3")[both.name].keep
    assert by_name(p, "s3")[both.name].reason == "pinned by bob"


def test_at_least_min_keep_complete_backups_are_kept() -> None:
    no_slots = Policy(daily_days=0, weekly_weeks=0, monthly_months=0, min_keep=3)
    history = [entry(t) for t in NINETY[:6]]
    broken = entry(NINETY[7], problems=("checksum mismatch",))  # newer, but not complete
    p = plan([*history, broken], no_slots, NOW, s3_configured=False)
    kept = [d.name for d in p.kept if d.name != broken.name]
    assert kept == [e.name for e in history[3:]][::-1]
    assert all("minimum kept" in (d.reason, *d.also)[0] or any("minimum kept" in r for r in
                                                               (d.reason, *d.also))
               for d in p.kept if d.name != broken.name)
    assert sorted(d.name for d in p.deletions) == sorted(e.name for e in history[:3])


def test_a_local_copy_whose_s3_copy_is_missing_is_kept_3_2_1() -> None:
    old = ANCHOR - timedelta(days=60)
    local_only, in_s3 = entry(old, problems=("never uploaded to S3 (pgrunbook upload NAME)",)), \
        entry(old + timedelta(hours=1), location="both")
    s3_partial = entry(old + timedelta(hours=2), location="both",
                       problems=("S3 copy incomplete (no metadata.json)",))
    history = [entry(t, location="both") for t in NINETY[-20:]]
    p = plan([*history, local_only, in_s3, s3_partial], Policy(), NOW, s3_configured=True)
    local = by_name(p, "local")
    assert local[local_only.name].keep
    assert local[local_only.name].reason.startswith("no S3 copy (3-2-1): local copy kept")
    assert local[s3_partial.name].keep
    assert local[s3_partial.name].reason.startswith("no S3 copy (3-2-1)")
    assert by_name(p, "s3")[s3_partial.name].reason.startswith("not counted (S3 copy incomplete")
    # Its S3 copy complete, an old local copy goes (RETENTION_LOCAL_DAYS=30).
    assert not local[in_s3.name].keep
    assert local[in_s3.name].reason == (
        "expired: local copy kept 30 days (RETENTION_LOCAL_DAYS; S3 keeps the long horizon), "
        "until 2025-03-01; its S3 copy is complete")
    # Without S3 configured there is no second copy to wait for: the slots decide.
    alone = plan([entry(t) for t in NINETY], Policy(), NOW, s3_configured=False)
    assert not by_name(alone)[local_only.name].keep
    assert by_name(alone)[local_only.name].reason == \
        "expired: daily slot 2025-01-30 ended 2025-02-13"


def test_nothing_younger_than_the_grace_period_goes() -> None:
    now = ANCHOR + timedelta(hours=5)
    first = entry(ANCHOR - timedelta(hours=3))  # holds the day; ANCHOR is the newest
    same_day = [entry(ANCHOR - timedelta(hours=h)) for h in (1, 2)]  # neither
    yesterday = [entry(ANCHOR - timedelta(hours=h)) for h in (31, 30)]
    p = plan([entry(ANCHOR), first, *same_day, *yesterday], Policy(grace_hours=24), now,
             s3_configured=False)
    d = by_name(p)
    for e in same_day:
        assert d[e.name].keep and d[e.name].reason.startswith("younger than the grace period")
    assert d[first.name].reason == "weekly slot 2025-W14"  # a Monday: the first of its week
    assert "daily slot 2025-03-31" in d[first.name].also
    assert d[yesterday[0].name].keep  # the first of its day
    assert not d[yesterday[1].name].keep  # 35 hours old, and not the first of its day
    assert d[yesterday[1].name].reason == (f"expired: {yesterday[0].name}, the first good "
                                           "backup of 2025-03-30, holds its slots")
    assert len(p.deletions) == 1


def test_each_kind_has_its_own_rule() -> None:
    history = [entry(t, location="both") for t in NINETY]
    pre = entry(ANCHOR - timedelta(days=20, hours=1), "pre-migration", location="both")
    emergency = entry(ANCHOR - timedelta(days=20, hours=2), "emergency", location="both")
    old_emergency = entry(ANCHOR - timedelta(days=40), "emergency", location="both")
    p = plan([*history, pre, emergency, old_emergency], Policy(local_days=0), NOW,
             s3_configured=True)
    local, s3 = by_name(p, "local"), by_name(p, "s3")
    assert local[pre.name].reason == ("pre-migration backup: kept 30 days locally "
                                      "(RETENTION_PRE_MIGRATION_DAYS)")
    assert not s3[pre.name].keep  # in S3 a pre-migration backup follows the slots
    for where in (local, s3):
        assert where[emergency.name].reason == ("emergency backup: kept 30 days "
                                                "(RETENTION_EMERGENCY_DAYS)")
        assert not where[old_emergency.name].keep
        assert where[old_emergency.name].reason.startswith("expired: emergency backup kept 30")
    # With local_days=0 the local copies follow the same slots as S3.
    assert kept_days(p, "local") == sorted([*KEPT_OF_NINETY, "2025-03-11", "2025-03-11"])
    assert kept_days(p, "s3") == sorted([*KEPT_OF_NINETY, "2025-03-11"])


def test_deletion_steps_remove_the_metadata_first(tmp_path: Path) -> None:
    settings = load_settings(environ={"BACKUP_DIR": str(tmp_path), "BACKUP_S3_BUCKET": "bkt",
                                      "BACKUP_S3_PREFIX": "backups/",
                                      "SUPABASE_DB_HOST": "127.0.0.1"}, cwd=tmp_path)
    archive = tmp_path / "20250101_100000_manual.backup"
    for suffix in ("", ".meta", ".roles.sql"):
        Path(f"{archive}{suffix}").write_text("x")
    d = Decision("20250101_100000_manual", "local", False, "expired: test", None, 1,
                 path=str(archive))
    assert [s.what for s in deletion_steps(settings, d)] == [
        f"{archive}.meta", str(archive), f"{archive}.roles.sql"]
    assert delete_copy(settings, d)[0] == f"{archive}.meta" and not list(tmp_path.iterdir())

    calls: list[str] = []

    class FakeS3:
        def delete_object(self, Bucket: str, Key: str) -> None:  # noqa: N803 - boto3's names
            calls.append(f"{Bucket}/{Key}")

    remote = Decision("20250101_100000_manual", "s3", False, "expired: test", None, 1,
                      s3_key="backups/20250101_100000/database.backup")
    delete_copy(settings, remote, FakeS3())
    assert calls == ["bkt/backups/20250101_100000/metadata.json",
                     "bkt/backups/20250101_100000/database.backup",
                     "bkt/backups/20250101_100000/roles.sql"]


# -- the real CLI over dated copies of one real backup -----------------------------------------


def dated_copy(ws: Workspace, golden: Golden, when: datetime, label: str = "manual",
               kind: str = "manual", **extra: Any) -> str:
    """A real, checksum-valid backup dated `when`: the golden archive hardlinked, its metadata
    rewritten with the new name, time, file and kind."""
    ensure_private_dir(ws.backup_dir)
    name = f"{stamp(when)}_{label}"
    archive = ws.backup_dir / f"{name}.backup"
    os.link(golden.archive, archive)
    os.link(golden.roles, f"{archive}.roles.sql")
    meta = copy.deepcopy(golden.meta)
    took = timedelta(seconds=float(meta.get("duration_seconds") or 0))
    meta.update({"name": name, "label": label, "kind": kind,
                 "created_at": when.isoformat().replace("+00:00", "Z"),
                 "finished_at": (when + took).isoformat().replace("+00:00", "Z"), **extra})
    meta["archive"]["file"] = archive.name
    if "file" in meta.get("roles_sql", {}):
        meta["roles_sql"]["file"] = f"{archive.name}.roles.sql"
    write_meta(Path(f"{archive}.meta"), meta)
    return name


def ninety(ws: Workspace, golden: Golden) -> list[str]:
    return [dated_copy(ws, golden, t) for t in NINETY]


def names_on_disk(ws: Workspace) -> list[str]:
    return sorted(p.name[:-len(".backup")] for p in ws.backup_dir.glob("*.backup"))


def expected_kept() -> list[str]:
    return sorted(f"{d.replace('-', '')}_100000_manual" for d in KEPT_OF_NINETY)


def audit(ws: Workspace) -> list[dict[str, Any]]:
    path = ws.backup_dir / "audit.log"
    return [json.loads(x) for x in path.read_text().splitlines()] if path.exists() else []


def test_prune_dry_run_deletes_nothing_and_prints_reasons(workspace: Workspace,
                                                          golden: Golden) -> None:
    names = ninety(workspace, golden)
    proc = workspace.run("prune", "--dry-run", check=True)
    assert names_on_disk(workspace) == sorted(names)
    lines = {line.split()[1]: line for line in proc.stdout.splitlines()
             if line.startswith(("keep ", "DELETE "))}
    assert len(lines) == 90
    assert sorted(n for n, line in lines.items() if line.startswith("keep")) == expected_kept()
    assert "daily slot 2025-03-18 (until 2025-04-01)" in lines["20250318_100000_manual"]
    assert "expired: daily slot 2025-03-16 ended 2025-03-30" in lines["20250316_100000_manual"]
    assert f"Delete {GONE} of 90: {GONE} local" in proc.stdout
    assert not any(e.get("operation") == "prune" for e in audit(workspace))


def test_prune_yes_deletes_the_plan_and_audits_every_deletion(workspace: Workspace,
                                                              golden: Golden) -> None:
    names = ninety(workspace, golden)
    proc = workspace.run("prune", "--yes", check=True)
    assert names_on_disk(workspace) == expected_kept()
    gone = sorted(set(names) - set(expected_kept()))
    for name in gone:  # metadata and roles went with their archives
        assert not list(workspace.backup_dir.glob(f"{name}*"))
    assert f"Deleted {GONE}: {GONE} local" in proc.stdout
    listing = json.loads(workspace.run("list", "--json", check=True).stdout)
    assert sorted(e["name"] for e in listing) == expected_kept()
    assert all(e["problems"] == [] for e in listing)
    start, end = [e for e in audit(workspace) if e.get("operation") == "prune"]
    assert start["event"] == "start" and start["operator"]["user"] == getpass.getuser()
    assert start["arguments"]["approved"] == GONE
    assert end["event"] == "end" and end["result"] == "ok" and end["id"] == start["id"]
    assert sorted(d["name"] for d in end["deleted"]) == gone
    assert {d["location"] for d in end["deleted"]} == {"local"}
    assert all(d["reason"].startswith("expired: ") and d["size_bytes"] > 0
               for d in end["deleted"])
    assert end["freed_bytes"]["local"] == GONE * golden.archive.stat().st_size
    # Nothing left to do: a second prune deletes nothing.
    again = workspace.run("prune", "--yes", check=True)
    assert f"Nothing to delete: all {KEPT} kept." in again.stdout


def test_prune_without_a_terminal_or_yes_refuses_in_one_line(workspace: Workspace,
                                                             golden: Golden) -> None:
    names = ninety(workspace, golden)
    proc = workspace.run("prune", stdin=subprocess.DEVNULL)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and proc.stderr.startswith("error: prune deletes")
    assert "--yes" in proc.stderr
    assert names_on_disk(workspace) == sorted(names)


def test_prune_on_a_terminal_asks_first(workspace: Workspace, golden: Golden) -> None:
    names = ninety(workspace, golden)

    def answer(text: str) -> subprocess.CompletedProcess[str]:
        primary, secondary = pty.openpty()
        try:
            os.write(primary, text.encode())  # typed ahead: the terminal keeps it for input()
            return workspace.run("prune", stdin=secondary)
        finally:
            os.close(secondary)
            os.close(primary)

    declined = answer("n\n")
    assert declined.returncode == 1 and f"Delete these {GONE} copies? [y/N]" in declined.stderr
    assert "not confirmed; nothing was deleted." in declined.stderr
    assert names_on_disk(workspace) == sorted(names)
    accepted = answer("y\n")
    assert accepted.returncode == 0, accepted.stderr
    assert names_on_disk(workspace) == expected_kept()


def test_prune_json_output_shape(workspace: Workspace, golden: Golden) -> None:
    ninety(workspace, golden)
    shown = json.loads(workspace.run("prune", "--json", "--dry-run", check=True).stdout)
    assert set(shown) == {"now", "anchor", "s3_configured", "policy", "decisions", "summary",
                          "outcome"}
    assert shown["anchor"] == "2025-03-31T10:00:00Z" and shown["outcome"] is None
    assert shown["policy"]["daily_days"] == 14 and shown["s3_configured"] is False
    assert shown["summary"] == {"keep": KEPT, "delete": GONE, "freed_bytes": {
        "local": GONE * golden.archive.stat().st_size, "s3": 0}}
    first = shown["decisions"][0]
    assert set(first) == {"name", "location", "action", "reason", "also", "until", "size_bytes",
                          "kind", "created_at", "item", "path", "s3_key"}
    assert first["name"] == "20250331_100000_manual" and first["action"] == "keep"
    assert first["until"] == "2025-06-23T00:00:00Z"
    done = json.loads(workspace.run("prune", "--json", "--yes", check=True).stdout)
    assert done["summary"]["delete"] == GONE
    assert set(done["outcome"]) == {"deleted", "skipped", "failed", "freed_bytes", "audit_id"}
    assert len(done["outcome"]["deleted"]) == GONE and done["outcome"]["failed"] == []
    assert set(done["outcome"]["deleted"][0]) == {"name", "location", "reason", "size_bytes"}


_STEPPER = """
import sys
from tui.core.prune import current_plan, deletion_steps
from tui.core.settings import load_settings

settings = load_settings()
plan, _ = current_plan(settings)
victim = next(d for d in plan.deletions if d.location == "local" and d.item == "backup")
print(victim.name, flush=True)
for step in deletion_steps(settings, victim):
    step.run()
    print(step.what, flush=True)
    sys.stdin.readline()  # the test kills this process here
"""


def test_an_interrupted_prune_leaves_nothing_that_looks_complete(workspace: Workspace,
                                                                 golden: Golden) -> None:
    ninety(workspace, golden)
    proc = subprocess.Popen([sys.executable, "-c", _STEPPER], cwd=workspace.path,
                            env=clean_env(), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            text=True)
    assert proc.stdout is not None
    try:
        victim = proc.stdout.readline().strip()
        first_step = proc.stdout.readline().strip()  # the prune's first step is done
        proc.send_signal(signal.SIGKILL)
    finally:
        proc.wait(timeout=30)
    archive = workspace.backup_dir / f"{victim}.backup"
    assert first_step == f"{archive}.meta"
    assert archive.exists() and not Path(f"{archive}.meta").exists()
    listing = {e["name"]: e for e in
               json.loads(workspace.run("list", "--json", check=True).stdout)}
    assert listing[victim]["problems"] == ["metadata missing"]
    assert len([e for e in listing.values() if not e["problems"]]) == 89
    # The next prune removes what is left of it, saying why.
    shown = json.loads(workspace.run("prune", "--json", "--yes", check=True).stdout)
    left = {d["name"]: d for d in shown["outcome"]["deleted"]}[victim]
    assert left["reason"] == "incomplete (metadata missing), older than the grace period: removed"
    assert not list(workspace.backup_dir.glob(f"{victim}*"))
    assert names_on_disk(workspace) == expected_kept()


async def test_the_job_deletes_only_what_was_approved_and_is_still_planned(
        workspace: Workspace, golden: Golden) -> None:
    ninety(workspace, golden)
    settings = load_settings(env_file=workspace.env_file, environ=clean_env())
    shown, _ = current_plan(settings)
    approved = [(d.name, d.location) for d in shown.deletions]
    # After the plan was shown: one approved backup is pinned, one is not approved at all.
    pinned, unapproved = approved[0][0], approved[1][0]
    meta_path = workspace.backup_dir / f"{pinned}.backup.meta"
    meta = read_meta(meta_path)
    meta["pinned"] = {"by": "carol", "at": "2026-01-01T00:00:00Z", "reason": "keep"}
    write_meta(meta_path, meta)
    request = PruneRequest(tuple(a for a in approved if a[0] != unapproved)
                           + (("20200101_000000_never", "local"),))
    result = await run_prune(settings, request)
    assert sorted(names_on_disk(workspace)) == sorted([*expected_kept(), pinned, unapproved])
    assert {s["name"]: s["why"] for s in result.skipped} == {
        pinned: "now kept: pinned by carol on 2026-01-01: keep",
        "20200101_000000_never": "no longer in the inventory"}
    assert len(result.deleted) == GONE - 2


async def test_a_cancelled_prune_stops_after_the_copy_it_was_deleting(
        workspace: Workspace, golden: Golden) -> None:
    import asyncio

    from tui.core.events import Notice

    ninety(workspace, golden)
    settings = load_settings(env_file=workspace.env_file, environ=clean_env())
    shown, _ = current_plan(settings)
    task: asyncio.Task[Any] | None = None

    def emit(event: object) -> None:  # Ctrl-C as the first copy is reported deleted
        if isinstance(event, Notice) and event.message.startswith("deleted ") and task:
            task.cancel()

    request = PruneRequest(tuple((d.name, d.location) for d in shown.deletions))
    task = asyncio.ensure_future(run_prune(settings, request, emit))
    with pytest.raises(asyncio.CancelledError):
        await task
    end = audit(workspace)[-1]
    assert end["operation"] == "prune" and end["result"] == "interrupted"
    # Cancelled as the first was reported: the second, already started, finished; no third.
    assert len(end["deleted"]) == 2
    gone = {d["name"] for d in end["deleted"]}
    assert len(names_on_disk(workspace)) == 90 - len(gone)
    assert not [p for n in gone for p in workspace.backup_dir.glob(f"{n}*")]  # each one whole
    assert not (workspace.backup_dir / ".lock-prune").read_text()  # the lock is released


def test_3_2_1_keeps_a_local_copy_whose_s3_copy_is_missing(
        workspace: Workspace, golden: Golden, moto_port: int, bucket: str) -> None:  # noqa: F811
    s3_env(workspace, bucket, f"http://127.0.0.1:{moto_port}")
    c = client(moto_port)
    days = NINETY[-40:]  # 2025-02-20 .. 2025-03-31
    missing = {stamp(days[1]), stamp(days[5])}  # 38 and 34 days before the anchor
    body, roles = golden.archive.read_bytes(), golden.roles.read_bytes()
    for t in days:
        name = dated_copy(workspace, golden, t)
        if stamp(t) in missing:
            continue
        meta = (workspace.backup_dir / f"{name}.backup.meta").read_bytes()
        for leaf, data in (("database.backup", body), ("roles.sql", roles),
                           ("metadata.json", meta)):
            c.put_object(Bucket=bucket, Key=f"backups/{stamp(t)}/{leaf}", Body=data)
    shown = json.loads(workspace.run("prune", "--json", "--dry-run", check=True).stdout)
    local = {d["name"]: d for d in shown["decisions"] if d["location"] == "local"}
    for s in missing:
        assert local[f"{s}_manual"]["action"] == "keep"
        assert local[f"{s}_manual"]["reason"].startswith("no S3 copy (3-2-1): local copy kept")
    cutoff = ANCHOR - timedelta(days=30)  # RETENTION_LOCAL_DAYS
    for t in days:
        d = local[f"{stamp(t)}_manual"]
        if stamp(t) not in missing:
            assert (d["action"] == "keep") == (t > cutoff), d
    done = json.loads(workspace.run("prune", "--json", "--yes", check=True).stdout)
    assert done["outcome"]["failed"] == []
    on_disk = names_on_disk(workspace)
    assert {f"{s}_manual" for s in missing} <= set(on_disk)
    assert len(on_disk) == sum(t > cutoff for t in days) + len(missing)
    s3_kept = {d["name"] for d in done["decisions"] if d["location"] == "s3"
               and d["action"] == "keep"}
    remaining = keys(moto_port, bucket)
    assert {k.split("/")[1] for k in remaining} == {n[:15] for n in s3_kept}
    for n in s3_kept:  # what S3 keeps is whole: metadata, archive and roles
        assert {f"backups/{n[:15]}/{leaf}" for leaf in
                ("database.backup", "metadata.json", "roles.sql")} <= set(remaining)


def test_pin_and_unpin_reach_the_local_and_the_s3_metadata(
        workspace: Workspace, moto_port: int, bucket: str) -> None:  # noqa: F811
    s3_env(workspace, bucket, f"http://127.0.0.1:{moto_port}")
    out = json.loads(workspace.run("backup", "--pin", "--reason", "golden copy", "--json",
                                   check=True).stdout)
    name, meta_path = out["name"], Path(out["meta_path"])
    assert out["pinned"]["by"] == getpass.getuser() and out["pinned"]["reason"] == "golden copy"
    c = client(moto_port)

    def remote() -> dict[str, Any]:
        key = f"backups/{name[:15]}/metadata.json"
        return dict(json.loads(c.get_object(Bucket=bucket, Key=key)["Body"].read()))

    def retention() -> set[str]:  # the tag the bucket's lifecycle rules go by, on each object
        return {next(t["Value"] for t in c.get_object_tagging(
            Bucket=bucket, Key=f"backups/{name[:15]}/{leaf}")["TagSet"]
            if t["Key"] == "pgrunbook-retention")
            for leaf in ("database.backup", "metadata.json", "roles.sql")}

    assert read_meta(meta_path)["pinned"] == remote()["pinned"] == out["pinned"]
    assert retention() == {"pinned"}
    proc = workspace.run("unpin", name, check=True)
    assert "Unpinned" in proc.stdout
    assert "pinned" not in read_meta(meta_path) and "pinned" not in remote()
    assert retention() == {"monthly"}  # its calendar class again: the first of its month
    proc = workspace.run("pin", name, "--reason", "audit sample", check=True)
    assert f"Pinned {name}" in proc.stdout
    assert read_meta(meta_path)["pinned"]["reason"] == remote()["pinned"]["reason"] == \
        "audit sample"
    ends = [e for e in audit(workspace) if e["event"] == "end"
            and e["operation"] in ("pin", "unpin")]
    assert [(e["operation"], e["result"], e["locations"]) for e in ends] == [
        ("pin", "ok", ["local", "s3"]), ("unpin", "ok", ["local", "s3"]),
        ("pin", "ok", ["local", "s3"])]
    missing = workspace.run("pin", "nope")
    assert missing.returncode == 2 and "no backup named 'nope'" in missing.stderr


def test_reclaimable_bytes_is_what_prune_would_free_locally(workspace: Workspace,
                                                            golden: Golden) -> None:
    ninety(workspace, golden)
    settings = load_settings(env_file=workspace.env_file, environ=clean_env())
    size = golden.archive.stat().st_size
    assert reclaimable_bytes(settings) == GONE * size
    assert space_hint(settings).startswith("; `pgrunbook prune` would free ")
    empty = load_settings(env_file=workspace.env_file,
                          environ={**clean_env(), "BACKUP_DIR": str(workspace.path / "none")})
    assert reclaimable_bytes(empty) == 0 and space_hint(empty) == ""
