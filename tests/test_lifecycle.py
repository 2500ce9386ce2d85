"""`pgrunbook lifecycle`: the retention policy as S3 lifecycle rules, and the retention tag on
every uploaded object. The class and rule logic is tested pure; the rules, the tags and the
diff against a real S3 endpoint (moto's server over HTTP) and real backups of a real
PostgreSQL.

Tests named `*_cli` run the `pgrunbook lifecycle` command line (the parser's subcommand);
the others call the engine or `cmd_lifecycle` in-process."""

from __future__ import annotations

import argparse
import json
from collections.abc import Iterator
from datetime import UTC, date, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from botocore.exceptions import ClientError

from tests import test_s3
from tests.conftest import Workspace, clean_env
from tests.s3_helpers import FaultProxy, Rule
from tests.test_s3 import client, s3_env
from tui.cli.lifecycle_cmd import cmd_lifecycle
from tui.core.errors import ConfigError, OperationFailed
from tui.core.lifecycle import (
    TAG_KEY,
    apply_lifecycle,
    class_days,
    diff_rules,
    existing_near,
    lifecycle_rules,
    month_span_days,
    retag_backup,
    upload_class,
)
from tui.core.retention import Policy
from tui.core.s3 import S3Config, s3_config
from tui.core.settings import Settings, load_settings

# The S3 endpoint and a fresh bucket per test (tests/test_s3.py's fixtures).
moto_port = test_s3.moto_port
bucket = test_s3.bucket

PREFIX = "backups/"
LEAVES = ("database.backup", "metadata.json", "roles.sql")


def at(text: str) -> datetime:
    return datetime.fromisoformat(text).replace(tzinfo=UTC)


def meta(when: str, kind: str = "manual", **extra: Any) -> dict[str, Any]:
    return {"kind": kind, "created_at": at(when).isoformat().replace("+00:00", "Z"), **extra}


# -- the class at upload (pure) ----------------------------------------------------------------


@pytest.mark.parametrize(("new", "existing", "expected"), [
    ("2025-03-10 10:00", [], "monthly"),
    # same month, same ISO week
    ("2025-03-11 10:00", [("2025-03-10 10:00", "manual")], "daily"),
    ("2025-03-10 10:00:01", [("2025-03-10 10:00", "pre-migration")], "daily"),
    # same month, another ISO week (Monday 17 March)
    ("2025-03-17 00:00", [("2025-03-16 23:59", "manual")], "weekly"),
    # another month, same ISO week: Friday 28 Feb and Saturday 1 March 2025
    ("2025-03-01 00:00", [("2025-02-28 23:59", "manual")], "monthly"),
    ("2025-03-02 08:00", [("2025-02-28 23:59", "manual"), ("2025-03-01 00:00", "manual")],
     "daily"),
    # a week across two years: Monday 30 December 2024 is in ISO week 1 of 2025
    ("2025-01-02 08:00", [("2024-12-30 08:00", "manual")], "monthly"),
    ("2025-01-03 08:00", [("2024-12-30 08:00", "manual"), ("2025-01-02 08:00", "manual")],
     "daily"),
    ("2024-12-30 08:00", [("2024-12-02 08:00", "manual")], "weekly"),
    ("2024-12-31 08:00", [("2024-12-02 08:00", "manual"), ("2024-12-30 08:00", "manual")],
     "daily"),
    # a week number seen a year before is another week (2024-12-31: week 1 of 2025; 2025-12-29:
    # week 1 of 2026) ...
    ("2025-12-29 08:00", [("2024-12-31 08:00", "manual"), ("2025-12-01 08:00", "manual")],
     "weekly"),
    # ... and so is the same week number in the same calendar year (2 January 2022: week 52 of
    # 2021; 27 December 2022: week 52 of 2022)
    ("2022-12-27 08:00", [("2022-01-02 08:00", "manual"), ("2022-12-01 08:00", "manual")],
     "weekly"),
    # only earlier backups take the slot: a late upload of an older backup keeps it
    ("2025-03-10 10:00", [("2025-03-11 10:00", "manual")], "monthly"),
    # emergency, release and pinned backups and unknown kinds take no slot
    ("2025-03-11 10:00", [("2025-03-10 10:00", "emergency"), ("2025-03-10 11:00", "release"),
                          ("2025-03-10 12:00", "pinned"), ("2025-03-10 13:00", None)],
     "monthly"),
])
def test_upload_class_across_month_and_week_boundaries(
        new: str, existing: list[tuple[str, str | None]], expected: str) -> None:
    assert upload_class(meta(new), [(at(t), k) for t, k in existing]) == expected


def test_kind_and_pin_decide_before_the_calendar() -> None:
    crowded = [(at("2025-03-10 09:00"), "manual")]
    assert upload_class(meta("2025-03-10 10:00", "release"), crowded) == "release"
    assert upload_class(meta("2025-03-10 10:00", "emergency"), crowded) == "emergency"
    assert upload_class(meta("2025-03-10 10:00", pinned=True), crowded) == "pinned"
    assert upload_class(meta("2025-03-10 10:00", "release", pinned=True), crowded) == "release"
    assert upload_class(meta("2025-03-10 10:00", "emergency", pinned=True), []) == "pinned"
    # pre-migration backups follow the slots of their date in S3
    assert upload_class(meta("2025-03-10 10:00", "pre-migration"), crowded) == "daily"
    assert upload_class(meta("2025-03-10 10:00", "pre-migration"), []) == "monthly"
    # no created_at: the stamp of the name
    assert upload_class({"kind": "manual", "name": "20250310_100000_manual"}, crowded) == "daily"


# -- the rules (pure) --------------------------------------------------------------------------


def _longest_months_by_hand(months: int) -> int:
    """The longest `months` consecutive months, counted day by day from each 1st of 1999-2030."""
    longest = 0
    for year in range(1999, 2031):
        for month in range(1, 13):
            start = day = date(year, month, 1)
            seen = 0
            while seen < months:
                day += timedelta(days=1)
                seen += day.day == 1
            longest = max(longest, (day - start).days)
    return longest


def test_each_class_lasts_at_least_as_long_as_the_in_tool_slot() -> None:
    assert class_days(Policy()) == {"daily": 14, "weekly": 84, "monthly": 366, "emergency": 30,
                                    "abort": 1}
    for months in (1, 2, 3, 6, 12, 13, 24):
        assert month_span_days(months) == _longest_months_by_hand(months)
    assert month_span_days(12) == 366 < 12 * 31
    # A slot class is never shorter than one its backup also holds, nor than the grace period.
    odd = class_days(Policy(daily_days=30, weekly_weeks=2, monthly_months=0, emergency_days=0,
                            grace_hours=72))
    assert odd == {"daily": 30, "weekly": 30, "monthly": 30, "emergency": 3, "abort": 3}
    assert class_days(Policy(daily_days=0, weekly_weeks=0, monthly_months=0, grace_hours=0)) == \
        {"daily": 1, "weekly": 1, "monthly": 1, "emergency": 30, "abort": 1}


def test_the_rules_never_expire_what_the_plan_keeps() -> None:
    """A year and a half of backups (one to three a day at random hours; some pre-migration,
    emergency and release ones), each tagged at upload as the backup does, against the in-tool
    plan (tui.core.retention) right after a backup: every copy the plan keeps is still in S3
    (created + its class's days is later), and release backups are never expired."""
    import random
    from pathlib import Path as P

    from tui.core.inventory import BackupEntry
    from tui.core.retention import plan

    rng = random.Random(12)
    for policy in (Policy(), Policy(daily_days=3, weekly_weeks=2, monthly_months=2,
                                    emergency_days=5, grace_hours=0)):
        days = class_days(policy)
        entries: list[BackupEntry] = []
        expires: dict[str, datetime | None] = {}
        seen: list[tuple[datetime, str | None]] = []
        day = at("2023-11-20 00:00")  # across a 29 February and two new years
        while day < at("2025-05-01 00:00"):
            hours = sorted(rng.sample(range(24), rng.randint(1, 3)))
            for n, hour in enumerate(hours):
                when = day + timedelta(hours=hour, minutes=rng.randint(0, 59))
                kind = rng.choice(["manual"] * 12 + ["pre-migration"] * 4 + ["emergency"] * 2
                                  + ["release"])
                name = f"{when:%Y%m%d_%H%M%S}_{kind}"
                m = {"name": name, "kind": kind, "created_at": when.isoformat(),
                     "archive": {"file": f"{name}.backup", "sha256": "a" * 64,
                                 "size_bytes": 1000}}
                cls = upload_class(m, seen)
                seen.append((when, kind))
                expires[name] = when + timedelta(days=days[cls]) if cls in days else None
                entries.append(BackupEntry(
                    name=name, path=P(f"/b/{name}.backup"), meta_path=P(f"/b/{name}.meta"),
                    kind=kind, created_at=when, size_bytes=1000, sha256="a" * 64, meta=m,
                    location="s3", s3_key=f"backups/{name[:15]}/database.backup"))
                if n == 0 and day.toordinal() % 3 == 0:
                    now = when + timedelta(seconds=1)
                    for d in plan(entries, policy, now, s3_configured=True).decisions:
                        gone = expires[d.name]
                        assert not d.keep or gone is None or gone > now, (d, gone, policy)
                        assert d.kind != "release" or gone is None
            day += timedelta(days=1)
        # the slots do expire in S3 too: not everything is kept for ever
        assert sum(e is not None for e in expires.values()) > len(expires) / 2


def test_the_diff_names_each_rule_by_id() -> None:
    ours = lifecycle_rules(Policy(), PREFIX)
    foreign = {"ID": "their-rule", "Status": "Enabled", "Filter": {"Prefix": "logs/"},
               "Expiration": {"Days": 3}}
    other_prefix = {**ours[0], "ID": "pgrunbook-daily@staging/",
                    "Filter": {"And": {"Prefix": "staging/", "Tags": [
                        {"Key": TAG_KEY, "Value": "daily"}]}}}
    old = {**ours[1], "Expiration": {"Days": 7}}
    gone = {**ours[2], "ID": "pgrunbook-quarterly@backups/"}
    changes = {c.rule_id: c.change for c in diff_rules(
        [foreign, other_prefix, old, gone, ours[3]], ours, PREFIX)}
    assert changes == {"their-rule": "kept", "pgrunbook-daily@staging/": "kept",
                       ours[0]["ID"]: "added", ours[1]["ID"]: "changed",
                       ours[2]["ID"]: "added", ours[3]["ID"]: "unchanged",
                       ours[4]["ID"]: "added", "pgrunbook-quarterly@backups/": "removed"}
    assert {c.change for c in diff_rules(None, ours, PREFIX)} == {"added"}


# -- against the S3 endpoint -------------------------------------------------------------------


def settings_of(ws: Workspace) -> Settings:
    return load_settings(env_file=ws.env_file, environ=clean_env())


def config_of(ws: Workspace) -> S3Config:
    config = s3_config(settings_of(ws))
    assert config is not None
    return config


def ns(**kw: Any) -> argparse.Namespace:
    return argparse.Namespace(**{"apply": False, "json": False, "verbose": False, **kw})


def tags(port: int, bucket: str, key: str) -> dict[str, str]:
    resp = client(port).get_object_tagging(Bucket=bucket, Key=key)
    return {t["Key"]: t["Value"] for t in resp["TagSet"]}


def classes(port: int, bucket: str, stamp: str) -> list[str | None]:
    return [tags(port, bucket, f"{PREFIX}{stamp}/{leaf}").get(TAG_KEY) for leaf in LEAVES]


def audit_ends(ws: Workspace, operation: str) -> list[dict[str, Any]]:
    lines = (ws.backup_dir / "audit.log").read_text().splitlines()
    return [e for e in map(json.loads, lines)
            if e["operation"] == operation and e["event"] == "end"]


def expected_second(first: str, second: str) -> str:
    """The class of a second backup taken after `first`, by the calendar of their stamps."""
    a, b = (datetime.strptime(n[:15] + "+0000", "%Y%m%d_%H%M%S%z").date()
            for n in (first, second))
    if (a.year, a.month) != (b.year, b.month):
        return "monthly"
    return "daily" if a.isocalendar()[:2] == b.isocalendar()[:2] else "weekly"


FOREIGN = {"ID": "their-rule", "Status": "Enabled", "Filter": {"Prefix": "logs/"},
           "Expiration": {"Days": 3}}


def check_bucket_rules(port: int, bucket: str, policy: Policy) -> None:
    """The bucket holds every pgrunbook rule with the policy's days and its tag filter, the
    multipart clean-up, and the foreign rule untouched."""
    rules = {r["ID"]: r for r in client(port).get_bucket_lifecycle_configuration(
        Bucket=bucket)["Rules"]}
    assert rules.pop("their-rule") == FOREIGN
    days = class_days(policy)
    for cls in ("daily", "weekly", "monthly", "emergency"):
        rule = rules.pop(f"pgrunbook-{cls}@{PREFIX}")
        assert rule["Status"] == "Enabled"
        assert rule["Expiration"] == {"Days": days[cls]}
        assert rule["Filter"] == {"And": {"Prefix": PREFIX,
                                          "Tags": [{"Key": TAG_KEY, "Value": cls}]}}
    abort = rules.pop(f"pgrunbook-abort-incomplete-uploads@{PREFIX}")
    assert abort["Filter"] == {"Prefix": PREFIX}
    assert abort["AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": days["abort"]}
    assert rules == {}  # no rule for release or pinned: kept for ever


def test_the_configuration_is_accepted_and_keeps_foreign_rules(
        workspace: Workspace, moto_port: int, bucket: str,
        capsys: pytest.CaptureFixture[str]) -> None:
    s3_env(workspace, bucket, f"http://127.0.0.1:{moto_port}")
    settings = settings_of(workspace)
    # No configuration yet: said so, and not an error.
    assert cmd_lifecycle(ns(), settings) == 0
    printed = capsys.readouterr()
    assert "The bucket has no lifecycle configuration." in printed.err
    config = json.loads(printed.out)  # stdout is s3-lifecycle-policy.json itself
    assert {r["ID"] for r in config["Rules"]} == {r["ID"] for r in lifecycle_rules(
        Policy(), PREFIX)}
    client(moto_port).put_bucket_lifecycle_configuration(
        Bucket=bucket, LifecycleConfiguration={"Rules": [FOREIGN]})
    assert cmd_lifecycle(ns(apply=True, json=True), settings) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["applied"] is True and out["has_configuration"] is True
    assert {c["id"]: c["change"] for c in out["changes"]}["their-rule"] == "kept"
    check_bucket_rules(moto_port, bucket, Policy())
    end = audit_ends(workspace, "lifecycle")[-1]
    assert end["result"] == "ok" and end["objects_retagged"] == 0
    assert sorted(end["rules_written"]) == sorted(r["ID"] for r in lifecycle_rules(
        Policy(), PREFIX))
    # The printed configuration, put as the SOP puts it, is what --apply wrote.
    assert cmd_lifecycle(ns(), settings) == 0
    again = capsys.readouterr()
    assert "already matches the policy" in again.err
    assert json.loads(again.out)["Rules"] == client(moto_port).get_bucket_lifecycle_configuration(
        Bucket=bucket)["Rules"]


def test_the_diff_names_added_and_changed_rules(workspace: Workspace, moto_port: int,
                                                bucket: str,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    endpoint = f"http://127.0.0.1:{moto_port}"
    s3_env(workspace, bucket, endpoint)
    assert cmd_lifecycle(ns(apply=True), settings_of(workspace)) == 0
    first = capsys.readouterr().out
    assert f"+ pgrunbook-daily@{PREFIX}: objects tagged {TAG_KEY}=daily under {PREFIX} " \
           "expire 14 days after upload" in first
    assert f"+ pgrunbook-abort-incomplete-uploads@{PREFIX}" in first
    s3_env(workspace, bucket, endpoint, RETENTION_DAILY_DAYS="7")
    assert cmd_lifecycle(ns(), settings_of(workspace)) == 0
    shown = capsys.readouterr().err
    assert f"~ pgrunbook-daily@{PREFIX}: objects tagged {TAG_KEY}=daily under {PREFIX} " \
           "expire 14 days after upload\n    now: objects tagged" in shown
    assert "expire 7 days after upload" in shown
    assert f"= pgrunbook-weekly@{PREFIX}: unchanged" in shown and "+ " not in shown
    result = apply_lifecycle(settings_of(workspace))
    assert {c.rule_id: c.change for c in result.plan.changes if c.change != "unchanged"} == \
        {f"pgrunbook-daily@{PREFIX}": "changed"}
    written = client(moto_port).get_bucket_lifecycle_configuration(
        Bucket=bucket)["Rules"]
    assert {r["ID"]: r["Expiration"]["Days"] for r in written
            if "Expiration" in r}[f"pgrunbook-daily@{PREFIX}"] == 7
    # Nothing left to change: nothing written.
    assert apply_lifecycle(settings_of(workspace)).rules_written == []


def test_uploads_are_tagged_with_their_class(workspace: Workspace, moto_port: int,
                                             bucket: str) -> None:
    s3_env(workspace, bucket, f"http://127.0.0.1:{moto_port}")
    one = json.loads(workspace.run("backup", "--json", check=True).stdout)["name"]
    assert classes(moto_port, bucket, one[:15]) == ["monthly"] * 3
    archive = tags(moto_port, bucket, f"{PREFIX}{one[:15]}/database.backup")
    assert archive["kind"] == "manual" and len(archive["sha256"]) == 64
    two = json.loads(workspace.run("backup", "--json", check=True).stdout)["name"]
    assert classes(moto_port, bucket, two[:15]) == [expected_second(one, two)] * 3
    release = json.loads(workspace.run("backup", "v2.1", "--kind", "release", "--json",
                                       check=True).stdout)["name"]
    assert classes(moto_port, bucket, release[:15]) == ["release"] * 3
    emergency = json.loads(workspace.run("backup", "--kind", "emergency", "--json",
                                         check=True).stdout)["name"]
    assert classes(moto_port, bucket, emergency[:15]) == ["emergency"] * 3
    # `pgrunbook upload` of a backup kept local: tagged the same way.
    later = json.loads(workspace.run("backup", "--no-upload", "--json", check=True).stdout)
    workspace.run("upload", later["name"], check=True)
    assert classes(moto_port, bucket, later["name"][:15]) == \
        [expected_second(two, later["name"])] * 3


def test_apply_tags_old_uploads_oldest_first_and_never_shortens(
        workspace: Workspace, moto_port: int, bucket: str) -> None:
    s3_env(workspace, bucket, f"http://127.0.0.1:{moto_port}")
    names = [json.loads(workspace.run("backup", "--json", check=True).stdout)["name"]
             for _ in range(3)]
    c = client(moto_port)
    for name in names:  # as uploaded before tagging existed
        for leaf in LEAVES:
            c.delete_object_tagging(Bucket=bucket, Key=f"{PREFIX}{name[:15]}/{leaf}")
    archive = f"{PREFIX}{names[0][:15]}/database.backup"
    c.put_object_tagging(Bucket=bucket, Key=archive,  # another tool's tag: kept
                         Tagging={"TagSet": [{"Key": "owner", "Value": "dba"}]})
    result = apply_lifecycle(settings_of(workspace))
    assert [r.stamp for r in result.retagged] == [n[:15] for n in names]
    assert result.objects_retagged == 9
    assert classes(moto_port, bucket, names[0][:15]) == ["monthly"] * 3
    assert tags(moto_port, bucket, archive)["owner"] == "dba"
    for before, name in zip(names, names[1:], strict=False):
        assert classes(moto_port, bucket, name[:15]) == [expected_second(before, name)] * 3
    end = audit_ends(workspace, "lifecycle")[-1]
    assert end["result"] == "ok" and end["objects_retagged"] == 9
    # The first backup goes (deleted by hand): the second takes its slot, longer, and a
    # pinned tag is never shortened.
    for leaf in LEAVES:
        c.delete_object(Bucket=bucket, Key=f"{PREFIX}{names[0][:15]}/{leaf}")
    c.put_object_tagging(Bucket=bucket, Key=f"{PREFIX}{names[2][:15]}/database.backup",
                         Tagging={"TagSet": [{"Key": TAG_KEY, "Value": "pinned"}]})
    second = apply_lifecycle(settings_of(workspace))
    promoted = {r.stamp: (r.previous, r.retention) for r in second.retagged}
    was = expected_second(names[0], names[1])
    assert promoted == ({} if was == "monthly" else {names[1][:15]: (was, "monthly")})
    assert tags(moto_port, bucket, f"{PREFIX}{names[2][:15]}/database.backup")[TAG_KEY] == \
        "pinned"
    assert apply_lifecycle(settings_of(workspace)).retagged == []


def test_a_pin_after_the_upload_retags_the_backup(workspace: Workspace, moto_port: int,
                                                  bucket: str) -> None:
    s3_env(workspace, bucket, f"http://127.0.0.1:{moto_port}")
    first = json.loads(workspace.run("backup", "--json", check=True).stdout)
    second = json.loads(workspace.run("backup", "--json", check=True).stdout)
    stamp = second["name"][:15]
    was = expected_second(first["name"], second["name"])
    assert classes(moto_port, bucket, stamp) == [was] * 3
    local = json.loads(Path(second["meta_path"]).read_text())
    pinned = {**local, "pinned": {"by": "ops", "at": "2026-01-01T00:00:00Z", "reason": "audit"}}
    c = client(moto_port)
    # `pin` rewrites metadata.json: a new object, without the tag
    c.put_object(Bucket=bucket, Key=f"{PREFIX}{stamp}/metadata.json",
                 Body=json.dumps(pinned).encode())
    assert classes(moto_port, bucket, stamp)[1] is None
    assert retag_backup(c, config_of(workspace), pinned)[0] == "pinned"
    assert classes(moto_port, bucket, stamp) == ["pinned"] * 3
    assert tags(moto_port, bucket, f"{PREFIX}{stamp}/database.backup")["sha256"] == \
        second["sha256"]
    # Unpinned: its calendar class again (the first backup still holds the month).
    assert retag_backup(c, config_of(workspace), local) == (was, [
        f"{PREFIX}{stamp}/{leaf}" for leaf in ("metadata.json", "roles.sql", "database.backup")])
    assert classes(moto_port, bucket, stamp) == [was] * 3


def test_an_upload_looks_only_at_its_month_and_week(workspace: Workspace, moto_port: int,
                                                    bucket: str) -> None:
    """The look at earlier backups before tagging: one listing from the earlier of the month's
    and the week's first day; kinds from the archives' tags; incomplete backups take no slot."""
    s3_env(workspace, bucket, f"http://127.0.0.1:{moto_port}")
    config = config_of(workspace)
    c = client(moto_port)

    def put(stamp: str, kind: str, leaves: tuple[str, ...] = LEAVES[:2]) -> None:
        for leaf in leaves:
            extra = {"Tagging": f"kind={kind}"} if leaf == LEAVES[0] else {}
            c.put_object(Bucket=bucket, Key=f"{PREFIX}{stamp}/{leaf}", Body=b"{}", **extra)

    put("20250215_000000", "manual")  # another month and week: not looked at
    put("20250228_120000", "manual")  # before 1 March (the week began on Monday 3 March)
    put("20250303_010000", "emergency")  # same week and month, takes no slot
    put("20250303_020000", "manual", LEAVES[:1])  # no metadata.json: incomplete
    put("20250304_000000", "manual")  # the slot holder of March and of the week
    put("20250305_000000", "manual")  # after the holder: not read
    put("20250320_000000", "manual")  # later than the new backup: not read
    near = existing_near(c, config, "20250306_000000")
    assert near == [(at("2025-03-03 01:00"), "emergency"), (at("2025-03-04 00:00"), "manual")]
    assert upload_class(meta("2025-03-06 00:00"), near) == "daily"
    # Monday 31 March 2025 starts a week that ends in April: a backup on 2 April looks back to
    # the 31st for its week.
    put("20250331_000000", "manual")
    near = existing_near(c, config, "20250402_000000")
    assert near == [(at("2025-03-31 00:00"), "manual")]
    assert upload_class(meta("2025-04-02 00:00"), near) == "monthly"


@pytest.fixture
def denying(moto_port: int) -> Iterator[FaultProxy]:
    """Forwards to moto, but answers PUT ?lifecycle with S3's AccessDenied (403)."""
    proxy = FaultProxy(moto_port, [Rule("PUT", "", "403", times=None,
                                        query_contains="lifecycle")]).start()
    yield proxy
    proxy.stop()


def test_access_denied_names_the_iam_action(workspace: Workspace, moto_port: int, bucket: str,
                                            denying: FaultProxy) -> None:
    s3_env(workspace, bucket, f"http://127.0.0.1:{denying.port}")
    with pytest.raises(OperationFailed) as caught:
        apply_lifecycle(settings_of(workspace))
    assert "refused" in caught.value.message
    assert caught.value.hint is not None and "s3:PutLifecycleConfiguration" in caught.value.hint
    assert audit_ends(workspace, "lifecycle")[-1]["result"] == "failed"
    with pytest.raises(ClientError) as nothing:  # nothing was written
        client(moto_port).get_bucket_lifecycle_configuration(Bucket=bucket)
    assert nothing.value.response["Error"]["Code"] == "NoSuchLifecycleConfiguration"


def test_without_s3_it_is_a_usage_error(workspace: Workspace) -> None:
    with pytest.raises(ConfigError) as caught:
        cmd_lifecycle(ns(), settings_of(workspace))
    assert caught.value.exit_code == 2
    assert "S3 is not configured" in caught.value.message
    assert "BACKUP_S3_BUCKET" in str(caught.value.hint)


# -- the command line (needs the parser's `lifecycle` subcommand) ------------------------------


def test_lifecycle_without_s3_gives_one_line_and_exit_2_cli(workspace: Workspace) -> None:
    proc = workspace.run("lifecycle")
    assert proc.returncode == 2, proc.stderr
    assert proc.stdout == "" and "Traceback" not in proc.stderr
    errors = [line for line in proc.stderr.splitlines() if line.startswith("error:")]
    assert errors == [errors[0]] and "S3 is not configured" in errors[0], proc.stderr
    assert "BACKUP_S3_BUCKET" in proc.stderr
    proc = workspace.run("lifecycle", "--apply")
    assert proc.returncode == 2 and "S3 is not configured" in proc.stderr


def test_lifecycle_prints_applies_and_diffs_cli(workspace: Workspace, moto_port: int,
                                                bucket: str, tmp_path: Path) -> None:
    endpoint = f"http://127.0.0.1:{moto_port}"
    s3_env(workspace, bucket, endpoint)
    client(moto_port).put_bucket_lifecycle_configuration(
        Bucket=bucket, LifecycleConfiguration={"Rules": [FOREIGN]})
    shown = workspace.run("lifecycle", check=True)
    policy_file = tmp_path / "s3-lifecycle-policy.json"
    policy_file.write_text(shown.stdout)  # `pgrunbook lifecycle > s3-lifecycle-policy.json`
    assert json.loads(policy_file.read_text())["Rules"][0] == FOREIGN
    assert f"+ pgrunbook-daily@{PREFIX}" in shown.stderr and "their-rule: kept" in shown.stderr
    assert "put-bucket-lifecycle-configuration" in shown.stderr
    applied = json.loads(workspace.run("lifecycle", "--apply", "--json", check=True).stdout)
    assert applied["applied"] is True and len(applied["rules_written"]) == 5
    check_bucket_rules(moto_port, bucket, Policy())
    s3_env(workspace, bucket, endpoint, RETENTION_DAILY_DAYS="10", RETENTION_WEEKLY_WEEKS="13")
    second = workspace.run("lifecycle", "--apply", check=True)
    assert f"~ pgrunbook-daily@{PREFIX}" in second.stdout
    assert f"~ pgrunbook-weekly@{PREFIX}" in second.stdout
    assert f"pgrunbook-monthly@{PREFIX}" not in second.stdout  # unchanged: not listed
    check_bucket_rules(moto_port, bucket, Policy(daily_days=10, weekly_weeks=13))
    ends = audit_ends(workspace, "lifecycle")
    assert [e["result"] for e in ends] == ["ok", "ok"]
    listed = json.loads(workspace.run("lifecycle", "--json", check=True).stdout)
    assert listed["applied"] is False
    assert {c["change"] for c in listed["changes"]} == {"kept", "unchanged"}


def test_lifecycle_apply_retags_old_uploads_cli(workspace: Workspace, moto_port: int,
                                                bucket: str) -> None:
    s3_env(workspace, bucket, f"http://127.0.0.1:{moto_port}")
    name = json.loads(workspace.run("backup", "--json", check=True).stdout)["name"]
    for leaf in LEAVES:
        client(moto_port).delete_object_tagging(Bucket=bucket, Key=f"{PREFIX}{name[:15]}/{leaf}")
    proc = workspace.run("lifecycle", "--apply", check=True)
    assert "Tagged 3 objects of 1 backup(s)" in proc.stdout and f"{name}: monthly" in proc.stdout
    assert classes(moto_port, bucket, name[:15]) == ["monthly"] * 3
    again = workspace.run("lifecycle", "--apply", check=True)
    assert "nothing written" in again.stdout and "already carries" in again.stdout
