"""Chat notifications of failures: a failed backup or drill (and a killed backup job) posts one
message to CHAT_WEBHOOK_URL, the same failure is not posted again until it changes, clears or
NOTIFY_REPEAT_HOURS pass, and a webhook that fails changes nothing about the operation. A real
PostgreSQL and the real CLI; the webhook is a local HTTP server that records every POST."""

from __future__ import annotations

import json
import os
import queue
import re
import socket
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.conftest import Server, Workspace, clean_env
from tests.test_backup import _wait_for
from tests.test_jobs import kill_viewer_and_job
from tui.core import notify
from tui.core.errors import ConfigError, OperationFailed
from tui.core.events import ignore
from tui.core.operation import operation
from tui.core.settings import Settings, load_settings

TOKEN = "xoxbFAKEt0ken9c1d"  # what a leak of the webhook URL would show


@dataclass
class Webhook:
    """A Slack-compatible webhook on 127.0.0.1: `posts` receives every POST's JSON body."""

    server: ThreadingHTTPServer
    posts: queue.Queue[dict[str, Any]] = field(default_factory=queue.Queue)
    status: int = 200

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server.server_address[1]}/services/T0/B0/{TOKEN}"

    def taken(self) -> list[dict[str, Any]]:
        """The posts received so far (each CLI run posts before it exits)."""
        out = []
        while True:
            try:
                out.append(self.posts.get_nowait())
            except queue.Empty:
                return out


@pytest.fixture
def webhook() -> Iterator[Webhook]:
    hook: Webhook

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:  # noqa: N802 - http.server's name
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            hook.posts.put(json.loads(body))
            self.send_response(hook.status)
            self.end_headers()
            self.wfile.write(b"ok")

        def log_message(self, *args: Any) -> None:
            pass

    hook = Webhook(ThreadingHTTPServer(("127.0.0.1", 0), Handler))
    thread = threading.Thread(target=hook.server.serve_forever, daemon=True)
    thread.start()
    yield hook
    hook.server.shutdown()
    hook.server.server_close()


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _notes(ws: Workspace) -> list[str]:
    path = ws.backup_dir / "logs" / notify.LOG_FILE
    return path.read_text().splitlines() if path.exists() else []


def _assert_no_secret(ws: Workspace, *procs: subprocess.CompletedProcess[str]) -> None:
    """The webhook's URL (its token) is nowhere: output, audit trail, logs, state, jobs."""
    for proc in procs:
        assert TOKEN not in proc.stdout and TOKEN not in proc.stderr
    for path in ws.backup_dir.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    log = ws.backup_dir / "logs" / notify.LOG_FILE
    assert log.stat().st_mode & 0o777 == 0o600
    assert log.parent.stat().st_mode & 0o777 == 0o700


def _same(text: str) -> str:
    """Output with its times and log paths' stamps left out."""
    return re.sub(r"\d+", "#", text)


def test_a_failed_backup_posts_once_then_is_suppressed(workspace: Workspace,
                                                       webhook: Webhook) -> None:
    port = _closed_port()
    workspace.write_env(SUPABASE_DB_PORT=str(port), CHAT_WEBHOOK_URL=webhook.url)
    first = workspace.run("backup")
    assert first.returncode == 1, first.stderr
    posts = webhook.taken()
    assert len(posts) == 1, posts
    text = posts[0]["text"]
    assert f"backup FAILED on target testdb (127.0.0.1:{port}/{workspace.dbname})" in text
    assert "Next step: " in text and "Next step: Read the log" not in text, text
    assert "Log: " in text and str(workspace.backup_dir / "logs") in text
    assert " as " in text and "When: " in text
    assert [ln.split()[1:3] for ln in _notes(workspace)] == [["backup:testdb", "sent"]]

    again = workspace.run("backup")
    assert again.returncode == 1
    assert webhook.taken() == []
    assert _notes(workspace)[-1].split()[1:3] == ["backup:testdb", "suppressed"]
    _assert_no_secret(workspace, first, again)


def test_a_success_in_between_posts_the_same_failure_again(workspace: Workspace,
                                                          webhook: Webhook) -> None:
    bad = {"SUPABASE_DB_PORT": str(_closed_port()), "CHAT_WEBHOOK_URL": webhook.url}
    workspace.write_env(**bad)
    assert workspace.run("backup").returncode == 1
    assert len(webhook.taken()) == 1
    workspace.write_env(CHAT_WEBHOOK_URL=webhook.url)
    ok = workspace.run("backup")
    assert ok.returncode == 0, ok.stderr
    assert webhook.taken() == [], "recovery posts nothing"
    assert _notes(workspace)[-1].split()[1:3] == ["backup:testdb", "resolved"]
    workspace.write_env(**bad)
    assert workspace.run("backup").returncode == 1
    assert len(webhook.taken()) == 1, "the failure cleared, so it is news again"


def _settings(tmp_path: Path, **extra: str) -> Settings:
    lines = ["SUPABASE_DB_HOST=127.0.0.1", "SUPABASE_DB_NAME=app",
             *(f"{k}={v}" for k, v in extra.items())]
    env_file = tmp_path / "unit.env"
    env_file.write_text("\n".join(lines) + "\n")
    env_file.chmod(0o600)
    return load_settings(env_file=env_file, environ=clean_env())


def test_the_same_failure_posts_again_after_the_interval_a_new_one_at_once(
        tmp_path: Path, webhook: Webhook) -> None:
    settings = _settings(tmp_path, CHAT_WEBHOOK_URL=webhook.url, NOTIFY_REPEAT_HOURS="2")
    key = notify.backup_key("production")
    fp = notify.failure_fingerprint("failed", "pg_dump failed: connection refused")
    t0 = datetime(2026, 12, 1, 3, 0, tzinfo=UTC)
    assert notify.alert(settings, key, fp, "one", now=t0) == "sent"
    assert notify.alert(settings, key, fp, "two", now=t0 + timedelta(hours=1)) == "suppressed"
    assert notify.alert(settings, key, fp, "three", now=t0 + timedelta(hours=2)) == "sent"
    other = notify.failure_fingerprint("failed", "no space left in /backups")
    assert notify.alert(settings, key, other, "four", now=t0 + timedelta(hours=2, minutes=1)) \
        == "sent"
    # Another key is another failure; a resolved key posts at once.
    assert notify.alert(settings, notify.drill_key("production"), other, "five",
                        now=t0 + timedelta(hours=2, minutes=2)) == "sent"
    notify.resolve(settings, key)
    assert notify.alert(settings, key, other, "six", now=t0 + timedelta(hours=2, minutes=3)) \
        == "sent"
    assert [p["text"] for p in webhook.taken()] == ["one", "three", "four", "five", "six"]
    # A damaged state counts as empty, and is rewritten.
    state = settings.backup_dir / notify.STATE_FILE
    assert state.stat().st_mode & 0o777 == 0o600
    state.write_text("{not json")
    assert notify.alert(settings, key, other, "seven", now=t0 + timedelta(hours=2, minutes=4)) \
        == "sent"
    assert json.loads(state.read_text())["posted"][key]["fingerprint"] == other
    assert [p["text"] for p in webhook.taken()] == ["seven"]
    # Times, names with a stamp and numbers do not make a failure new; its text does.
    assert notify.failure_fingerprint(
        "abandoned", "backup job 20261201_030000_backup_a1b2c3 ended during dumping") == \
        notify.failure_fingerprint(
            "abandoned", "backup job 20261202_030000_backup_ff00aa ended during dumping")
    assert notify.failure_fingerprint("failed", "x") != notify.failure_fingerprint("abandoned", "x")
    unset = _settings(tmp_path)
    assert notify.alert(unset, key, fp, "eight") == "not-configured"
    with pytest.raises(ConfigError, match="NOTIFY_REPEAT_HOURS='daily' is not a whole number"):
        notify.alert(_settings(tmp_path, CHAT_WEBHOOK_URL=webhook.url,
                               NOTIFY_REPEAT_HOURS="daily"), key, fp, "nine")
    assert webhook.taken() == []  # nothing more was posted


def test_a_failing_webhook_changes_nothing_about_the_backup(workspace: Workspace,
                                                            webhook: Webhook) -> None:
    bad_port = str(_closed_port())
    workspace.write_env(SUPABASE_DB_PORT=bad_port)
    plain = workspace.run("backup")
    assert plain.returncode == 1
    webhook.status = 500
    workspace.write_env(SUPABASE_DB_PORT=bad_port, CHAT_WEBHOOK_URL=webhook.url)
    answered_500 = workspace.run("backup")
    assert (answered_500.returncode, _same(answered_500.stdout), _same(answered_500.stderr)) == \
        (1, _same(plain.stdout), _same(plain.stderr))
    assert len(webhook.taken()) == 1
    assert _notes(workspace)[-1].split()[1:3] == ["backup:testdb", "failed"]
    assert "HTTP 500" in _notes(workspace)[-1]
    retried = workspace.run("backup")  # a failed send is not remembered as posted
    assert retried.returncode == 1 and len(webhook.taken()) == 1

    unreachable = f"http://127.0.0.1:{_closed_port()}/services/T0/B0/{TOKEN}"
    workspace.write_env(SUPABASE_DB_PORT=bad_port, CHAT_WEBHOOK_URL=unreachable)
    refused = workspace.run("backup")
    assert (refused.returncode, _same(refused.stderr)) == (1, _same(plain.stderr))
    assert _notes(workspace)[-1].split()[2] == "failed"
    assert "cannot reach the chat webhook" in _notes(workspace)[-1]
    workspace.write_env(CHAT_WEBHOOK_URL=unreachable)
    good = workspace.run("backup")
    assert good.returncode == 0, good.stderr
    _assert_no_secret(workspace, plain, answered_500, retried, refused, good)


def test_a_failed_drill_posts(workspace: Workspace, webhook: Webhook) -> None:
    workspace.write_env(CHAT_WEBHOOK_URL=webhook.url)
    name = json.loads(workspace.run("backup", "--json", check=True).stdout)["name"]
    archive = next(workspace.backup_dir.glob(f"{name}*.backup"))
    with archive.open("r+b") as f:  # one byte altered: the checksum no longer matches
        f.seek(archive.stat().st_size // 2)
        byte = f.read(1)
        f.seek(-1, os.SEEK_CUR)
        f.write(bytes([byte[0] ^ 0xFF]))
    drill = workspace.run("drill", name)
    assert drill.returncode == 1, drill.stdout + drill.stderr
    posts = webhook.taken()
    assert len(posts) == 1, posts  # the drill's own restore does not post
    text = posts[0]["text"]
    assert f"restore drill of {name} FAILED on target testdb" in text, text
    assert "Next step: " in text
    assert [ln.split()[1:3] for ln in _notes(workspace)] == [["drill:testdb", "sent"]]
    _assert_no_secret(workspace, drill)


def test_a_nested_or_interrupted_backup_does_not_post(workspace: Workspace,
                                                           webhook: Webhook) -> None:
    workspace.write_env(CHAT_WEBHOOK_URL=webhook.url)
    settings = load_settings(env_file=workspace.env_file, environ=clean_env())

    def fail_backup() -> None:
        with operation(settings, "backup", ignore, arguments={}):
            raise OperationFailed("the safety backup failed.", "Free some space.")

    with pytest.raises(OperationFailed), operation(settings, "restore", ignore, arguments={}):
        fail_backup()  # a restore's safety backup: the restore's operator is right there
    assert webhook.taken() == []
    with pytest.raises(KeyboardInterrupt), operation(settings, "backup", ignore, arguments={}):
        raise KeyboardInterrupt  # the operator's Ctrl-C is not a failure to tell anyone
    assert webhook.taken() == []
    with pytest.raises(OperationFailed):
        fail_backup()
    posts = webhook.taken()
    assert len(posts) == 1 and "Error: the safety backup failed." in posts[0]["text"]
    assert "Next step: Free some space." in posts[0]["text"]


def _backup_waiting(server: Server, dbname: str) -> bool:
    with server.connect() as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND "
                           "wait_event_type = 'Lock'",
                           [dbname]).fetchone()
        return bool(row and row[0])


def test_a_killed_backup_job_posts_when_it_is_reconciled(workspace: Workspace, server: Server,
                                                         webhook: Webhook) -> None:
    workspace.write_env(CHAT_WEBHOOK_URL=webhook.url)
    holder = server.connect(workspace.dbname, autocommit=False)
    holder.execute("LOCK TABLE public.actor IN ACCESS EXCLUSIVE MODE")  # pg_dump waits on it
    viewer = subprocess.Popen(workspace.cli_argv("backup"), cwd=workspace.path, env=clean_env(),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              start_new_session=True)
    try:
        _wait_for(lambda: _backup_waiting(server, workspace.dbname),
                  "the backup to wait for the lock", 60)
        states = [json.loads(p.read_text())
                  for p in (workspace.backup_dir / "jobs").glob("*/state.json")]
        job = next(s for s in states if s["operation"] == "backup")
        kill_viewer_and_job(viewer, job["pid"])
        assert webhook.taken() == []
        nxt = workspace.run("list")
    finally:
        holder.close()
    assert nxt.returncode == 0 and "backup job" in nxt.stderr
    posts = webhook.taken()
    assert len(posts) == 1, posts
    assert "backup job (started " in posts[0]["text"]
    assert "FAILED on target testdb" in posts[0]["text"]
    assert "Next step: Run the backup again." in posts[0]["text"]
    assert _notes(workspace)[-1].split()[1:3] == ["backup:testdb", "sent"]
    state = json.loads((workspace.backup_dir / notify.STATE_FILE).read_text())
    assert state["running"] == {}
    assert workspace.run("list").returncode == 0 and webhook.taken() == []
    _assert_no_secret(workspace, nxt)
