"""`pgrunbook health` (issue 13): each check's states on real backups (the golden archive's dated
copies, real backups and drills, a real S3 endpoint), the monitoring-plugins exit codes, the
node_exporter textfile parsed by prometheus_client, and one chat post per critical condition."""

from __future__ import annotations

import json
import stat
import threading
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from queue import Empty, Queue
from typing import Any

import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import Golden, Workspace, clean_env
from tests.test_retention import dated_copy, ninety
from tests.test_s3 import bucket, client, moto_port, s3_env  # noqa: F401 (fixtures)
from tui.core.health import State, Thresholds, evaluate
from tui.core.inventory import list_backups
from tui.core.metadata import read_meta, write_meta
from tui.core.settings import load_settings

NOW = datetime.now(UTC)


def health(ws: Workspace, *args: str) -> tuple[int, list[str], str]:
    """(exit code, stdout lines, stderr) of `pgrunbook health`, never posting (no webhook set)."""
    proc = ws.run("health", *args)
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, proc.stdout.splitlines(), proc.stderr


def check_line(lines: list[str], title: str) -> str:
    found = [x.strip() for x in lines if x.split(maxsplit=1)[-1].startswith(f"{title}: ")]
    assert len(found) == 1, lines
    return found[0]


def state_of(lines: list[str], title: str) -> str:
    return check_line(lines, title).split()[0]


def history(ws: Workspace, golden: Golden, hours_ago: list[float], **extra: Any) -> list[str]:
    """Dated copies of the golden backup, `hours_ago` before now, each finished a minute after."""
    names = []
    for h in hours_ago:
        when = (NOW - timedelta(hours=h)).replace(microsecond=0)
        names.append(dated_copy(ws, golden, when, finished_at=_iso(when + timedelta(minutes=1)),
                                **extra))
    return names


def _iso(dt: datetime) -> str:
    return dt.isoformat().replace("+00:00", "Z")


def record_drill(ws: Workspace, name: str, when: datetime, result: str = "PASS",
                 error: str | None = None) -> None:
    path = ws.backup_dir / f"{name}.backup.meta"
    meta = read_meta(path)
    meta["drill"] = {"verified_at": _iso(when), "result": result, "restore_seconds": 1.0,
                     "report": None, "error": error}
    write_meta(path, meta)


def test_a_real_backup_and_drill_are_healthy_and_the_textfile_parses(workspace: Workspace,
                                                                    tmp_path: Path) -> None:
    workspace.run("backup", check=True)
    workspace.run("drill", "latest", check=True)
    prom = tmp_path / "metrics" / "pgrunbook.prom"
    prom.parent.mkdir()
    code, lines, err = health(workspace, "--prometheus", str(prom))
    assert code == 0, "\n".join(lines) + err
    assert lines[0] == "OK: pgrunbook health of testdb: 12 checks passed"
    assert state_of(lines, "Newest backup") == "ok"
    assert "Last passed drill: " in check_line(lines, "Last passed drill")
    assert check_line(lines, "Drill results").endswith("1 of 1 passed in the last 365 days")
    # The textfile: what node_exporter reads, parsed by the library's own parser.
    assert stat.S_IMODE(prom.stat().st_mode) == 0o644
    assert not [p for p in prom.parent.iterdir() if p != prom]  # no temp file left
    families = {f.name: f for f in text_string_to_metric_families(prom.read_text())}
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for f in families.values() for s in f.samples}
    assert samples[("pgrunbook_health_status", (("target", "testdb"),))] == 0
    assert samples[("pgrunbook_health_check_status",
                    (("check", "backup_age"), ("target", "testdb")))] == 0
    meta = read_meta(next(workspace.backup_dir.glob("*.backup.meta")))
    finished = datetime.fromisoformat(meta["finished_at"].replace("Z", "+00:00")).timestamp()
    key = (("kind", "manual"), ("target", "testdb"))
    assert samples[("pgrunbook_backup_last_success_timestamp_seconds", key)] == \
        pytest.approx(finished, abs=0.01)
    assert samples[("pgrunbook_backup_last_size_bytes", key)] == meta["archive"]["size_bytes"]
    assert samples[("pgrunbook_backup_last_duration_seconds", key)] == meta["duration_seconds"]
    assert samples[("pgrunbook_backups", (("location", "local"), ("target", "testdb")))] == 1
    assert samples[("pgrunbook_drills", (("result", "passed"), ("target", "testdb")))] == 1
    assert ("pgrunbook_drill_last_success_timestamp_seconds", (("target", "testdb"),)) in samples
    assert samples[("pgrunbook_backup_last_job_success", (("target", "testdb"),))] == 1
    # --json: the same checks.
    proc = workspace.run("health", "--json")
    data = json.loads(proc.stdout)
    assert proc.returncode == 0 and data["state"] == "OK" and len(data["checks"]) == 12
    assert {c["id"] for c in data["checks"]} >= {"backup_age", "backup_job", "s3", "drill_age"}


def test_a_dated_back_newest_backup_is_critical_then_warning_by_the_thresholds(
        workspace: Workspace, golden: Golden) -> None:
    (name,) = history(workspace, golden, [30])
    record_drill(workspace, name, NOW - timedelta(days=1))
    code, lines, _ = health(workspace)
    assert code == 2
    assert lines[0].startswith("CRITICAL: pgrunbook health of testdb: newest backup critical")
    line = check_line(lines, "Newest backup")
    assert line.startswith("CRITICAL ") and f"{name}, finished 30 h ago: over 24 h" in line
    assert "pgrunbook backup" in line  # what to do
    workspace.write_env(HEALTH_BACKUP_WARN_HOURS="12", HEALTH_BACKUP_CRIT_HOURS="48")
    code, lines, _ = health(workspace)
    assert code == 1 and state_of(lines, "Newest backup") == "WARNING", lines
    workspace.write_env(HEALTH_BACKUP_WARN_HOURS="36", HEALTH_BACKUP_CRIT_HOURS="36")
    code, lines, _ = health(workspace)
    assert code == 0 and state_of(lines, "Newest backup") == "ok", lines


def test_a_much_smaller_backup_and_a_much_slower_one_are_warned_about(
        workspace: Workspace, golden: Golden) -> None:
    names = history(workspace, golden, [5 * 24, 4 * 24, 3 * 24, 2 * 24], duration_seconds=10.0)
    record_drill(workspace, names[-1], NOW - timedelta(days=1))
    # The same database backed up without its rows: a real backup, a fraction of the size.
    workspace.run("backup", "--exclude-table-data", "public.*", check=True)
    code, lines, _ = health(workspace)
    assert code == 1, lines
    line = check_line(lines, "Backup size")
    assert line.startswith("WARNING ") and "the newest manual backup" in line, line
    assert "of the median" in line and "rows 0 against a median of" in line, line
    assert state_of(lines, "Backup duration") == "ok"
    # A newest backup that took 400 s against a median of 10 s.
    newest = sorted(workspace.backup_dir.glob("*.backup.meta"))[-1]
    meta = read_meta(newest)
    meta["duration_seconds"] = 400.0
    meta["archive"]["size_bytes"] = golden.meta["archive"]["size_bytes"]
    write_meta(newest, meta)
    code, lines, _ = health(workspace)
    assert "size differs" in check_line(lines, "Metadata")  # the edit above, found
    for p in newest.parent.glob(newest.name.replace(".meta", "")):
        p.unlink()
    (later,) = history(workspace, golden, [1], duration_seconds=400.0)
    code, lines, _ = health(workspace)
    line = check_line(lines, "Backup duration")
    assert line.startswith("WARNING ") and f"{later} took 400 s, 40.0 times the median 10 s" \
        in line, line
    assert state_of(lines, "Backup size") == "ok"


def test_a_backup_without_metadata_json_in_s3(
        workspace: Workspace, moto_port: int, bucket: str) -> None:  # noqa: F811
    s3_env(workspace, bucket, f"http://127.0.0.1:{moto_port}")
    first = json.loads(workspace.run("backup", "--json", check=True).stdout)["name"]
    code, lines, _ = health(workspace)
    assert state_of(lines, "Off-site copies") == "ok", lines
    assert "1 complete backup(s) in S3" in check_line(lines, "Off-site copies")
    second = json.loads(workspace.run("backup", "--json", check=True).stdout)["name"]
    client(moto_port).delete_object(Bucket=bucket, Key=f"backups/{second[:15]}/metadata.json")
    code, lines, _ = health(workspace)
    line = check_line(lines, "Off-site copies")
    assert line.startswith("WARNING ") and \
        f"upload incomplete (no metadata.json): {second}" in line, line
    assert "pgrunbook upload NAME" in line
    assert state_of(lines, "Metadata") == "WARNING"
    assert code == 1
    # Neither of the newest copies complete in S3: critical.
    client(moto_port).delete_object(Bucket=bucket, Key=f"backups/{first[:15]}/metadata.json")
    code, lines, _ = health(workspace)
    assert code == 2 and state_of(lines, "Off-site copies") == "CRITICAL", lines
    # S3 unreachable: that check cannot be made, the others still are.
    s3_env(workspace, bucket, "http://127.0.0.1:9")
    code, lines, _ = health(workspace)
    assert state_of(lines, "Off-site copies") == "UNKNOWN", lines
    assert "S3 unreachable: " in check_line(lines, "Off-site copies")
    assert state_of(lines, "Newest backup") == "ok"


def test_a_failed_last_backup_job_is_critical_until_one_succeeds(workspace: Workspace) -> None:
    workspace.run("backup", check=True)
    workspace.run("drill", "latest", check=True)
    workspace.write_env(SUPABASE_DB_NAME="no_such_database")
    assert workspace.run("backup").returncode == 1
    workspace.write_env()
    code, lines, _ = health(workspace)
    assert code == 2, lines
    line = check_line(lines, "Last backup job")
    assert line.startswith("CRITICAL ") and "failed " in line and "no_such_database" in line
    assert "its log: " in line and "run pgrunbook backup" in line
    assert state_of(lines, "Newest backup") == "ok"  # the earlier backup still stands
    workspace.run("backup", check=True)
    code, lines, _ = health(workspace)
    assert code == 0 and state_of(lines, "Last backup job") == "ok", lines


def test_no_passed_drill_for_40_days_warns_and_a_failed_last_drill_is_critical(
        workspace: Workspace, golden: Golden) -> None:
    older, newer = history(workspace, golden, [50 * 24, 2])
    code, lines, _ = health(workspace)
    assert check_line(lines, "Last passed drill").endswith(
        "never — run one: pgrunbook drill latest (the SOP: monthly)")
    record_drill(workspace, older, NOW - timedelta(days=40))
    code, lines, _ = health(workspace)
    assert code == 1, lines
    line = check_line(lines, "Last passed drill")
    assert line.startswith("WARNING ") and f"40 days ago ({older}): over 31 days" in line
    record_drill(workspace, older, NOW - timedelta(days=70))
    code, lines, _ = health(workspace)
    assert code == 2 and state_of(lines, "Last passed drill") == "CRITICAL", lines
    record_drill(workspace, older, NOW - timedelta(days=3))
    record_drill(workspace, newer, NOW - timedelta(hours=1), result="FAIL",
                 error="counts differ")
    code, lines, _ = health(workspace)
    line = check_line(lines, "Drill results")
    assert code == 2 and line.startswith("CRITICAL "), lines
    assert f"the last drill ({newer}, 1 h ago) failed: counts differ; 1 of 2 passed" in line
    assert state_of(lines, "Last passed drill") == "ok"


def test_missing_metadata_and_overdue_prune_are_warnings(workspace: Workspace,
                                                         golden: Golden) -> None:
    ninety(workspace, golden)  # a history of 2025, far past the policy
    names = history(workspace, golden, [1, 2])
    record_drill(workspace, names[0], NOW - timedelta(days=1))
    code, lines, _ = health(workspace)
    line = check_line(lines, "Retention")
    assert line.startswith("WARNING ") and "prune overdue: " in line and "past the policy" in line
    assert "pgrunbook prune" in line
    (workspace.backup_dir / f"{names[1]}.backup.meta").unlink()
    code, lines, _ = health(workspace)
    line = check_line(lines, "Metadata")
    assert line.startswith("WARNING ") and f"{names[1]} (metadata missing)" in line, line
    assert code == 1


def test_free_space_states(workspace: Workspace, golden: Golden) -> None:
    history(workspace, golden, [1])
    settings = load_settings(env_file=workspace.env_file, environ=clean_env())
    entries = list_backups(settings.backup_dir)
    need = int(golden.meta["archive"]["size_bytes"] * 1.1)

    def free(n: int, total: int = 10**12) -> State:
        report = evaluate(settings, entries, disk=lambda _p: (n, total))
        return next(c for c in report.checks if c.id == "free_space").state

    assert free(10**11) is State.OK
    assert free(need + 1) is State.WARNING  # room for one, not two
    assert free(need - 1) is State.CRITICAL  # the next one will not fit
    assert free(10**9, total=10**11) is State.WARNING  # under a tenth of the disk
    report = evaluate(settings, entries, disk=lambda _p: None)
    assert next(c for c in report.checks if c.id == "free_space").state is State.UNKNOWN


def test_bad_settings_are_unknown_exit_3(workspace: Workspace, golden: Golden) -> None:
    history(workspace, golden, [1])
    workspace.write_env(HEALTH_DRILL_WARN_DAYS="monthly")
    code, lines, _ = health(workspace)
    assert code == 3, lines
    assert check_line(lines, "Settings").startswith(
        "UNKNOWN   Settings: HEALTH_DRILL_WARN_DAYS='monthly' is not a number.")
    workspace.write_env(HEALTH_DRILL_WARN_DAYS="90", HEALTH_DRILL_CRIT_DAYS="60")
    code, lines, _ = health(workspace)
    assert code == 3 and "is more than HEALTH_DRILL_CRIT_DAYS=60" in check_line(lines, "Settings")
    # Settings that cannot be read at all: UNKNOWN on stdout's first line, exit 3.
    proc = workspace.run("--env-file", str(workspace.path / "missing.env"), "health")
    assert proc.returncode == 3 and proc.stdout.startswith("UNKNOWN: pgrunbook health could not "
                                                           "run: "), proc.stdout
    assert "Traceback" not in proc.stderr
    with pytest.raises(Exception, match="HEALTH_HISTORY"):
        Thresholds.from_settings(load_settings(env_file=workspace.env_file, environ={
            **clean_env(), "HEALTH_HISTORY": "0"}))


class _Webhook:
    """A local chat webhook (the one fake allowed: Slack is not here): records every post."""

    def __init__(self) -> None:
        self.posts: Queue[dict[str, Any]] = Queue()
        posts = self.posts

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = self.rfile.read(int(self.headers["Content-Length"]))
                posts.put(json.loads(body))
                self.send_response(200)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/hooks/T0/B0/tok3n"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def drained(self) -> list[dict[str, Any]]:
        out = []
        while True:
            try:
                out.append(self.posts.get_nowait())
            except Empty:
                return out


@pytest.fixture
def webhook() -> Iterator[_Webhook]:
    hook = _Webhook()
    yield hook
    hook.server.shutdown()


def test_a_critical_check_is_posted_once_until_it_changes(workspace: Workspace, golden: Golden,
                                                          webhook: _Webhook) -> None:
    (name,) = history(workspace, golden, [30])
    record_drill(workspace, name, NOW - timedelta(days=1))
    workspace.write_env(CHAT_WEBHOOK_URL=webhook.url)
    code, lines, err = health(workspace)
    assert code == 2 and err == "", err
    (post,) = webhook.drained()  # the server answered before the command ended
    assert "pgrunbook health CRITICAL" in post["text"] and "Newest backup" in post["text"]
    assert name in post["text"] and "pgrunbook backup" in post["text"]
    # The same condition an hour later: not posted again.
    code, _, _ = health(workspace)
    assert code == 2 and webhook.drained() == []
    # --no-notify: nothing, whatever the state.
    assert health(workspace, "--no-notify")[0] == 2 and webhook.drained() == []
    # The condition clears, then comes back with another backup: posted again.
    (fresh,) = history(workspace, golden, [1])
    assert health(workspace)[0] == 0 and webhook.drained() == []
    (workspace.backup_dir / f"{fresh}.backup.meta").unlink()
    (workspace.backup_dir / f"{fresh}.backup").unlink()
    health(workspace)
    (again,) = webhook.drained()
    assert name in again["text"]
    logged = (workspace.backup_dir / "logs" / "notifications.log").read_text()
    assert "sent" in logged and "tok3n" not in logged
    assert not (workspace.backup_dir / "audit.log").exists()  # health is not an operation


def test_a_failed_backup_is_posted_once_by_the_backup_not_again_by_health(
        workspace: Workspace, webhook: _Webhook) -> None:
    workspace.run("backup", check=True)
    workspace.write_env(SUPABASE_DB_NAME="no_such_database", CHAT_WEBHOOK_URL=webhook.url)
    assert workspace.run("backup").returncode == 1
    (post,) = webhook.drained()
    assert "backup FAILED" in post["text"]
    workspace.write_env(CHAT_WEBHOOK_URL=webhook.url)
    code, lines, _ = health(workspace)
    assert code == 2 and state_of(lines, "Last backup job") == "CRITICAL", lines
    # The backup's own post stands for the health check's: the same failure, one post. The
    # other critical finding (no drill is a warning) would post on its own.
    assert webhook.drained() == []


def test_a_textfile_that_cannot_be_written_is_unknown_and_the_checks_still_print(
        workspace: Workspace, golden: Golden, tmp_path: Path) -> None:
    (name,) = history(workspace, golden, [1])
    record_drill(workspace, name, NOW - timedelta(days=1))
    for path, why in ((tmp_path / "missing" / "pgrunbook.prom", "does not exist"),
                      (tmp_path / "pgrunbook.txt", "does not end in .prom")):
        code, lines, err = health(workspace, "--prometheus", str(path))
        assert code == 3, lines
        assert lines[0].startswith("UNKNOWN: pgrunbook health could not write the metrics: ")
        assert why in lines[0] and why in err
        assert state_of(lines, "Newest backup") == "ok"  # the checks were made all the same
        assert not path.exists()


def test_the_keys_of_encrypted_backups_are_checked(workspace: Workspace, tmp_path: Path) -> None:
    old, new = tmp_path / "old.pass", tmp_path / "new.pass"
    for path, text in ((old, "the old passphrase"), (new, "the new passphrase")):
        path.write_text(text + "\n")
        path.chmod(0o600)
    workspace.write_env(BACKUP_ENCRYPTION="gpg", BACKUP_GPG_PASSPHRASE_FILE=str(old))
    workspace.run("backup", check=True)
    workspace.run("drill", "latest", check=True)
    code, lines, _ = health(workspace)
    line = check_line(lines, "Encryption keys")
    assert code == 0 and line.startswith("ok ") and "new backups: gpg AES256, key " in line
    # A rotation without the old passphrase: the newest backup cannot be read here any more.
    workspace.write_env(BACKUP_ENCRYPTION="gpg", BACKUP_GPG_PASSPHRASE_FILE=str(new))
    code, lines, _ = health(workspace)
    line = check_line(lines, "Encryption keys")
    assert code == 1 and line.startswith("WARNING ") and "is not on this host (gpg " in line
    workspace.write_env(BACKUP_ENCRYPTION="gpg", BACKUP_GPG_PASSPHRASE_FILE=str(new),
                        BACKUP_GPG_OLD_PASSPHRASE_FILES=str(old))
    assert state_of(health(workspace)[1], "Encryption keys") == "ok"
    # The next backup could not be encrypted: critical.
    new.chmod(0o644)
    code, lines, _ = health(workspace)
    line = check_line(lines, "Encryption keys")
    assert code == 2 and "the next backup cannot be encrypted: " in line and "chmod 600" in line
