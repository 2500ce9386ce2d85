"""End to end, as an operator over SSH would: the real program in tmux at 80x24, driven with
send-keys and read with capture-pane, walking the emergency-restore runbook on a damaged copy
of the pagila fixture. The maintenance commands are small scripts; the health URL and the chat
webhook are a local HTTP server started here that records what it receives."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from tests.conftest import Server, Workspace, clean_env
from tui.core.cluster import free_port


@pytest.fixture
def http_peer() -> Iterator[tuple[str, list[dict]]]:
    posts: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/health" else 404)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            posts.append(json.loads(body))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{port}", posts
    server.shutdown()


class Tmux:
    def __init__(self, sock: Path) -> None:
        self.sock = str(sock)

    def __call__(self, *args: str) -> str:
        return subprocess.run(["tmux", "-S", self.sock, *args], capture_output=True, text=True,
                              check=False).stdout

    def screen(self) -> str:
        return self("capture-pane", "-p", "-t", "t")

    def keys(self, *keys: str) -> None:
        self("send-keys", "-t", "t", *keys)

    def type(self, text: str) -> None:
        self("send-keys", "-t", "t", "-l", text)

    def enter_text(self, text: str) -> None:
        """Type into the focused input; keys sent before the dialog took focus are lost, so
        retype until the whole text shows."""
        for _ in range(5):
            self.keys("C-u")
            self.type(text)
            try:
                self.wait(f"▊  {text}", timeout=3)  # the input box's row holds the whole text
                break
            except AssertionError:
                continue
        self.keys("Enter")

    def wait(self, text: str, timeout: float = 90) -> str:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if text in screen:
                return screen
            time.sleep(0.1)
        raise AssertionError(f"{text!r} never appeared; the screen:\n{self.screen()}")


def test_emergency_restore_runbook_walked_in_tmux(workspace: Workspace, server: Server,
                                                  tmp_path: Path, http_peer) -> None:  # type: ignore[no-untyped-def]
    url, posts = http_peer
    marker = tmp_path / "maintenance"
    on = f"sh -c {shlex.quote(f'echo on > {marker}; echo maintenance on')}"
    off = f"sh -c {shlex.quote(f'echo off > {marker}; echo maintenance off')}"
    workspace.write_env(RUNBOOK_COMMAND_MAINTENANCE_ON=on, RUNBOOK_COMMAND_MAINTENANCE_OFF=off,
                        HEALTH_URL=f"{url}/health", CHAT_WEBHOOK_URL=f"{url}/hook")
    out = json.loads(workspace.run("backup", "--json", check=True).stdout)
    meta = json.loads(Path(out["meta_path"]).read_text())
    with server.connect(workspace.dbname) as conn:
        conn.execute("DELETE FROM public.film_actor WHERE actor_id < 150")
    tables = [(t["schema"], t["name"]) for t in meta["tables"]]
    assert server.counts(workspace.dbname, tables) != \
        {(t["schema"], t["name"]): t["rows"] for t in meta["tables"]}

    tmux = Tmux(tmp_path / "tmux.sock")
    env = " ".join(f"{k}={shlex.quote(v)}" for k, v in clean_env().items()
                   if k in ("PATH", "HOME", "LANG", "LC_ALL", "TERM"))
    cmd = (f"cd {shlex.quote(str(workspace.path))} && env {env} LANG=C.UTF-8 "
           f"{shlex.quote(sys.executable)} -m tui")
    tmux("new-session", "-d", "-s", "t", "-x", "80", "-y", "24", cmd)
    try:
        tmux.wait("Runbooks (Enter to start)")
        tmux.keys("Down", "Enter")  # the second runbook: Emergency restore
        tmux.wait("Why?")
        tmux.enter_text("INC-42 bad delete")
        tmux.wait("0/2 required ticked")
        tmux.keys("Space")
        tmux.wait("1/2 required ticked")
        tmux.keys("Down", "Space")
        tmux.wait("2/2 required ticked")
        tmux.keys("n")
        tmux.wait("Step 2/10")
        tmux.keys("x")
        tmux.wait("maintenance on")
        tmux.keys("n")
        tmux.wait("Step 3/10")
        tmux.keys("x")
        tmux.wait("Impact for users")
        tmux.enter_text("read-only for 15 minutes")
        tmux.wait("posted to the chat")
        tmux.keys("n")
        tmux.wait("Step 4/10")
        tmux.keys("x")
        tmux.wait("state: done", timeout=120)
        tmux.keys("n")
        tmux.wait("Step 5/10")
        tmux.keys("x")
        tmux.wait("Type the database name")
        tmux.enter_text(workspace.dbname)
        tmux.wait("confirmed")
        tmux.keys("n")
        tmux.wait("Step 6/10")
        tmux.keys("x")
        tmux.wait("replacing its data?")
        tmux.keys("y")
        tmux.wait("VERIFICATION PASS", timeout=180)
        tmux.keys("n")
        tmux.wait("Step 7/10")
        tmux.keys("x")
        tmux.wait("PASS against", timeout=120)
        tmux.keys("n")
        tmux.wait("Step 8/10")
        tmux.keys("x")
        tmux.wait("answered 200")
        tmux.keys("n")
        tmux.wait("Step 9/10")
        tmux.keys("x")
        tmux.wait("maintenance off")
        tmux.keys("n")
        tmux.wait("Step 10/10")
        tmux.keys("x")
        tmux.wait("Impact for users")
        tmux.enter_text("nothing")
        tmux.wait("posted to the chat")
        tmux.keys("n")
        tmux.wait("runbook complete")
    finally:
        tmux("kill-server")
    assert server.counts(workspace.dbname, tables) == \
        {(t["schema"], t["name"]): t["rows"] for t in meta["tables"]}
    assert marker.read_text().strip() == "off"
    assert len(posts) == 2 and "Emergency restore starting" in posts[0]["text"]
    assert "read-only for 15 minutes" in posts[0]["text"]
    reports = list((workspace.path / "reports").glob("runbook_*_emergency-restore.md"))
    assert len(reports) == 1 and "INC-42 bad delete" in reports[0].read_text()
    assert list(workspace.backup_dir.glob("*_emergency_pre_rollback.backup"))
