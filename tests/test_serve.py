"""`pgrunbook serve`: the watch-only UI in a real (headless Chromium) browser, and the command's
refusals and messages. Chromium comes from Debian's package, which .ci/setup installs."""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import os
import shlex
import shutil
import signal
import socket
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import clean_env
from tests.test_watch import offline_settings, open_run
from tui.cli.serve_cmd import app_command, is_loopback

# textual-serve's page keeps its xterm.js terminal in a local variable and draws it on a
# canvas: the page has no text to read. This runs before the page's own script and keeps the
# terminal object it assigns to `this.terminal` (textual-serve 1.1.3's textual.js), so the
# test reads the screen from xterm's buffer, as the browser shows it.
KEEP_TERMINAL = """
Object.defineProperty(Object.prototype, "terminal", {
  configurable: true,
  set(value) {
    if (value && value.buffer && !window.__pgrunbookTerminal) window.__pgrunbookTerminal = value;
    Object.defineProperty(this, "terminal", {value, writable: true, configurable: true,
                                             enumerable: true});
  },
});
"""
READ_SCREEN = """(() => {
  const t = window.__pgrunbookTerminal;
  if (!t) return null;
  const b = t.buffer.active, lines = [];
  for (let i = 0; i < t.rows; i++) {
    const line = b.getLine(b.viewportY + i);
    lines.push(line ? line.translateToString(true) : "");
  }
  return lines.join("\\n");
})()"""


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def pgrunbook(*args: str) -> list[str]:
    return [sys.executable, "-m", "tui", *args]


def kill_group(proc: subprocess.Popen[Any] | None) -> None:
    if proc is None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=10)


def app_processes(env_file: Path) -> dict[int, str]:
    """The running `pgrunbook ... tui --watch` processes that read `env_file`: pid: cmdline."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        with contextlib.suppress(OSError):
            argv = Path(f"/proc/{name}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{name}/stat").read_text()
            line = " ".join(a.decode(errors="replace") for a in argv if a)
            if str(env_file) in line and "--watch" in line and \
                    stat[stat.rfind(")") + 2] != "Z":
                found[int(name)] = line
    return found


async def wait_until(check: Any, what: str, timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = await check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        await asyncio.sleep(0.1)


async def listening(port: int) -> bool:
    try:
        _reader, writer = await asyncio.open_connection("127.0.0.1", port)
    except OSError:
        return False
    writer.close()
    return True


class DevTools:
    """Just enough of the Chrome DevTools Protocol: a call and its answer (events skipped)."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse) -> None:
        self.ws = ws
        self.last_id = 0

    async def call(self, method: str, **params: Any) -> dict[str, Any]:
        self.last_id += 1
        await self.ws.send_json({"id": self.last_id, "method": method, "params": params})
        while True:
            message = await asyncio.wait_for(self.ws.receive_json(), 15)
            if message.get("id") == self.last_id:
                if "error" in message:
                    raise AssertionError(f"{method}: {message['error']}")
                result: dict[str, Any] = message["result"]
                return result


def png_size(data: bytes) -> tuple[int, int]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR", data[:16]
    width, height = struct.unpack(">II", data[16:24])
    return width, height


async def test_serve_shows_the_running_runbook_in_a_real_browser(tmp_path: Path) -> None:
    browser = shutil.which("chromium")
    if browser is None:
        pytest.fail("chromium is not installed: .ci/setup installs it (Debian package "
                    "`chromium`), or run: apt-get install chromium")
    settings = offline_settings(tmp_path)
    run = open_run(settings)
    assert settings.env_file is not None
    port, debug_port = free_port(), free_port()
    serve = chrome = None
    logs = tmp_path / "logs"
    logs.mkdir()
    try:
        serve = subprocess.Popen(pgrunbook("--env-file", str(settings.env_file), "serve",
                                           "--port", str(port)),
                                 cwd=tmp_path, env=clean_env(), stdout=subprocess.PIPE,
                                 stderr=(logs / "serve.err").open("wb"), start_new_session=True)
        # As root Chromium refuses to start without --no-sandbox; the page is our own.
        chrome = subprocess.Popen(
            [browser, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
             "--no-default-browser-check", f"--remote-debugging-port={debug_port}",
             f"--user-data-dir={tmp_path / 'chromium'}", "--window-size=1280,800",
             "about:blank"],
            stdout=subprocess.DEVNULL, stderr=(logs / "chromium.err").open("wb"),
            start_new_session=True)
        await wait_until(lambda: listening(port), "pgrunbook serve to listen", 15)
        async with aiohttp.ClientSession() as http:
            async def page_target() -> str | None:
                with contextlib.suppress(aiohttp.ClientError):
                    async with http.get(f"http://127.0.0.1:{debug_port}/json/list") as r:
                        for target in await r.json():
                            if target["type"] == "page":
                                return str(target["webSocketDebuggerUrl"])
                return None

            debugger = await wait_until(page_target, "Chromium's DevTools", 15)
            async with http.ws_connect(debugger, max_msg_size=0) as ws:
                tab = DevTools(ws)
                await tab.call("Page.enable")
                await tab.call("Page.addScriptToEvaluateOnNewDocument", source=KEEP_TERMINAL)
                await tab.call("Page.navigate", url=f"http://127.0.0.1:{port}/")

                async def screen_text() -> str | None:
                    answer = await tab.call("Runtime.evaluate", expression=READ_SCREEN,
                                            returnByValue=True)
                    value = answer["result"].get("value")
                    return value if value and "Standard restore" in value else None

                text = await wait_until(screen_text, "the runbook on the page", 20)
                shot = base64.b64decode((await tab.call("Page.captureScreenshot",
                                                        format="png"))["data"])
            (tmp_path / "watch.png").write_bytes(shot)
            assert "Watching (read-only): Standard restore (open)" in text, text
            assert "Restore" in text and "Pre-restore checklist" in text, text
            assert f"reason: {run.reason}" in text
            assert "x Run" not in text and "q Quit" in text
            width, height = png_size(shot)
            assert width >= 800 and height >= 500 and len(shot) > 10_000, (width, height)

            # Another site's page cannot drive (or read) the app: the socket refuses it.
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(f"ws://127.0.0.1:{port}/ws",
                                      headers={"Origin": "http://evil.example"})
            assert refused.value.status == 403
            # Nor one whose name was rebound to 127.0.0.1 (its origin matches its host).
            rebound = f"rebound.example:{port}"
            with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
                await http.ws_connect(f"ws://127.0.0.1:{port}/ws", headers={
                    "Host": rebound, "Origin": f"http://{rebound}"})
            assert refused.value.status == 403

        apps = app_processes(settings.env_file)
        assert len(apps) == 1, apps  # the page's connection started its own app
        command = next(iter(apps.values()))
        assert "not-used" not in command  # the password never on a command line
        serve.send_signal(signal.SIGTERM)  # as `kill` or systemd would stop it
        out, _ = serve.communicate(timeout=15)
        assert serve.returncode == 0, (logs / "serve.err").read_text()
        assert out.decode().splitlines() == [
            f"Open http://127.0.0.1:{port} in a browser (watch-only: the running runbook and "
            "its jobs, nothing can be changed). Ctrl-C stops it."]
        deadline = time.monotonic() + 5
        while app_processes(settings.env_file) and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
        assert not app_processes(settings.env_file), "serve left its app processes running"
    finally:
        kill_group(chrome)
        kill_group(serve)


def test_serve_control_is_refused_off_loopback(tmp_path: Path) -> None:
    settings = offline_settings(tmp_path)
    proc = subprocess.run(pgrunbook("--env-file", str(settings.env_file), "serve", "--control",
                                    "--host", "0.0.0.0"),
                          capture_output=True, text=True, env=clean_env(), timeout=30)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr == ("error: --control serves the full UI, which can restore: only on a "
                           "loopback address (127.0.0.1, ::1, localhost), not 0.0.0.0.\n")


def test_serve_says_plainly_when_the_port_is_taken(tmp_path: Path) -> None:
    settings = offline_settings(tmp_path)
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = subprocess.run(pgrunbook("--env-file", str(settings.env_file), "serve",
                                        "--port", str(port)),
                              capture_output=True, text=True, env=clean_env(), timeout=30)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        f"error: cannot listen on 127.0.0.1:{port}: Address already in use.",
        "  Choose another port with --port."]


def test_serve_without_textual_serve_says_how_to_install_it(tmp_path: Path) -> None:
    settings = offline_settings(tmp_path)
    code = ("import sys; sys.modules['textual_serve.server'] = None\n"  # as if not installed
            "from tui.cli import main\n"
            f"raise SystemExit(main(['--env-file', {str(settings.env_file)!r}, 'serve']))\n")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          env=clean_env(), timeout=30)
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.splitlines() == [
        "error: textual-serve is not installed in this environment.",
        "  Install it: pip install textual-serve==1.1.3"]


def test_serve_on_every_address_warns_that_anyone_can_watch(tmp_path: Path) -> None:
    settings = offline_settings(tmp_path)
    port = free_port()
    proc = subprocess.Popen(pgrunbook("--env-file", str(settings.env_file), "serve", "--host",
                                      "0.0.0.0", "--port", str(port)),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=clean_env(), start_new_session=True)
    try:
        asyncio.run(wait_until(lambda: listening(port), "serve to listen", 15))
        proc.send_signal(signal.SIGINT)  # Ctrl-C
        out, err = proc.communicate(timeout=15)
    finally:
        kill_group(proc)
    assert proc.returncode == 0, err
    assert err == (f"warning: serving on 0.0.0.0: anyone who can reach port {port} can watch "
                   "the runs.\n")
    assert out.startswith(f"Open http://{socket.getfqdn()}:{port} in a browser (watch-only")


def test_serve_and_watch_are_in_the_help() -> None:
    def run_help(*args: str) -> str:
        proc = subprocess.run(pgrunbook(*args, "--help"), capture_output=True, text=True,
                              env=clean_env(), timeout=30)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    assert "serve the runbook UI to a browser, watch-only" in run_help()
    serve = " ".join(run_help("serve").split())  # whatever width argparse wrapped it to
    for option in ("--host HOST", "--port PORT", "--control", "default 127.0.0.1",
                   "default 8000", "restore (loopback hosts only)", "watch-only"):
        assert option in serve, serve
    assert "--watch" in run_help("tui")


def test_the_served_command_is_this_interpreter_with_the_settings_file_and_no_secret(
        tmp_path: Path) -> None:
    spaced = tmp_path / "a dir"
    spaced.mkdir()
    settings = offline_settings(spaced)
    args = argparse.Namespace(target="staging")
    command = app_command(args, settings, control=False)
    assert command.startswith("exec ")  # the shell gives way to the app: stopping it stops it
    assert shlex.split(command)[1:] == [sys.executable, "-m", "tui", "--env-file",
                                        str(settings.env_file), "--target", "staging", "tui",
                                        "--watch"]
    assert "not-used" not in command
    assert shlex.split(app_command(argparse.Namespace(target=None), settings, control=True))[-1] \
        == "tui"
    assert all(is_loopback(h) for h in ("127.0.0.1", "127.1.2.3", "::1", "[::1]", "localhost"))
    assert not any(is_loopback(h) for h in ("0.0.0.0", "::", "10.0.0.5", "ops.example.com"))
