"""`pgrunbook serve`: the runbook UI in a browser (textual-serve), watch-only unless asked, for
the incident lead to follow the operator's run from their own machine.

Each browser connection starts its own `pgrunbook ... tui --watch` process: this interpreter,
with this invocation's settings file and target (the secrets reach it only through the settings
file and the environment, never its command line). `--control` serves the full UI instead, and
only on a loopback address. Stopping serve (Ctrl-C, SIGTERM) ends every app process it started;
jobs an app started run on in their own sessions, as they do when a terminal closes.
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import ipaddress
import os
import shlex
import signal
import socket
import sys
import time
from typing import Any

from tui.cli.render import _err, _out
from tui.core.errors import EXIT_OK, ConfigError
from tui.core.settings import Settings

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8000
STOP_GRACE_SECONDS = 3.0  # for the app processes to end on SIGTERM before SIGKILL


def is_loopback(host: str) -> bool:
    """Only this machine can reach it (a name other than localhost counts as reachable)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def app_command(args: argparse.Namespace, settings: Settings, control: bool) -> str:
    """The shell command textual-serve runs for each connection (it runs it through a shell;
    `exec` makes the app itself serve's child, so ending that ends the app)."""
    argv = [sys.executable, "-m", "tui"]
    if settings.env_file is not None:
        argv += ["--env-file", str(settings.env_file.resolve())]
    if args.target:
        argv += ["--target", args.target]
    argv += ["tui"] if control else ["tui", "--watch"]
    return "exec " + shlex.join(argv)


def _check_port(host: str, port: int) -> None:
    """Refuse a port that is taken in one plain line, before anything says it is served."""
    try:
        family, kind, proto, _, address = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0]
    except socket.gaierror as exc:
        raise ConfigError(f"cannot serve on {host!r}: {exc.strerror}.",
                          "Give an address of this machine with --host.") from None
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as the server will
        try:
            probe.bind(address)
        except OSError as exc:
            raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}.",
                              "Choose another port with --port.") from None


def cmd_serve(args: argparse.Namespace, settings: Settings) -> int:
    host, port, control = args.host, args.port, args.control
    if control and not is_loopback(host):
        raise ConfigError(f"--control serves the full UI, which can restore: only on a loopback "
                          f"address (127.0.0.1, ::1, localhost), not {host}.")
    if not 0 < port < 65536:
        raise ConfigError(f"--port {port} is not a TCP port (1-65535).")
    try:
        server_class = _server_class()
    except ImportError:
        raise ConfigError("textual-serve is not installed in this environment.",
                          "Install it: pip install textual-serve==1.1.3") from None
    _check_port(host, port)
    shown = socket.getfqdn() if host in ("0.0.0.0", "::") else host
    shown = f"[{shown}]" if ":" in shown else shown
    if not is_loopback(host):
        _err(f"warning: serving on {host}: anyone who can reach port {port} can watch the runs.")
    what = ("the full UI: whoever opens it can run the runbooks" if control else
            "watch-only: the running runbook and its jobs, nothing can be changed")
    _out(f"Open http://{shown}:{port} in a browser ({what}). Ctrl-C stops it.")
    sys.stdout.flush()
    server = server_class(app_command(args, settings, control), host=host, port=port,
                          title=f"pgrunbook: {settings.target.name}"
                                + ("" if control else " (watch-only)"),
                          control=control)
    gc.freeze()
    gc.enable()  # held off while the CLI started (tui.cli.main); serve runs for hours
    try:
        server.serve()
    except OSError as exc:  # lost the port between the check and the listen
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}.",
                          "Choose another port with --port.") from None
    finally:
        end_app_processes()
    return EXIT_OK


def _server_class() -> Any:
    """textual-serve's Server, quiet; refusing pages of other sites (a page the lead has open
    elsewhere could otherwise connect to the app's socket: browsers let any page open a
    WebSocket to 127.0.0.1), and, listening on a loopback address, every name but a loopback
    one (a DNS name rebound to 127.0.0.1 would pass the origin check); stopping in seconds, not
    after aiohttp's minute of grace for open connections."""
    import asyncio
    import logging

    from aiohttp import web
    from textual_serve.server import Server

    class QuietServer(Server):
        def __init__(self, command: str, *, control: bool, **kwargs: Any) -> None:
            super().__init__(command, **kwargs)
            self.control = control
            self.connections: set[asyncio.Task[Any]] = set()

        def initialize_logging(self) -> None:
            logging.basicConfig(level=logging.WARNING, format="%(message)s")

        async def on_startup(self, app: web.Application) -> None:
            """cmd_serve has said where to look (textual-serve prints a banner and the
            command line)."""

        async def on_shutdown(self, app: web.Application) -> None:
            """Each connection's app is asked to quit (textual-serve's own way, on its
            handler's cancellation); those that have not within the grace are ended."""
            for task in self.connections:
                task.cancel()
            if self.connections:
                await asyncio.wait(self.connections, timeout=STOP_GRACE_SECONDS)
            await asyncio.to_thread(end_app_processes)

        def _refuse(self, request: web.Request) -> None:
            origin = request.headers.get("Origin")
            if origin is not None and origin != f"{request.scheme}://{request.host}":
                raise web.HTTPForbidden(text="pgrunbook serve: connections from other sites "
                                             "are refused.")
            if is_loopback(self.host) and not is_loopback(request.url.host or ""):
                raise web.HTTPForbidden(text="pgrunbook serve: open it as "
                                             "http://127.0.0.1:PORT or http://localhost:PORT.")

        async def handle_index(self, request: web.Request) -> Any:
            self._refuse(request)
            # The page connects back to the address the browser used (the default is the
            # --host, which from another machine is no address at all when it is 0.0.0.0).
            self.public_url = f"{request.scheme}://{request.host}"
            return await super().handle_index(request)

        async def handle_websocket(self, request: web.Request) -> Any:
            self._refuse(request)
            task = asyncio.current_task()
            assert task is not None
            self.connections.add(task)
            try:
                return await super().handle_websocket(request)
            finally:
                self.connections.discard(task)

    return QuietServer


# -- stopping -----------------------------------------------------------------------------------


def _processes() -> dict[int, tuple[str, int, int]]:
    """pid: (state, parent pid, process group) of every process, from /proc."""
    found = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        with contextlib.suppress(OSError, IndexError, ValueError):
            with open(f"/proc/{name}/stat", encoding="utf-8", errors="replace") as f:
                raw = f.read()
            fields = raw[raw.rfind(")") + 2:].split()
            found[int(name)] = (fields[0], int(fields[1]), int(fields[2]))
    return found


def _app_processes() -> list[int]:
    """This process's descendants in its own process group, still running: the apps the
    connections started (a job one of them started has its own session: it is left alone)."""
    procs, group = _processes(), os.getpgrp()
    mine, todo = [], [os.getpid()]
    while todo:
        parent = todo.pop()
        for pid, (state, ppid, pgrp) in procs.items():
            if ppid == parent and pgrp == group:
                todo.append(pid)
                if state != "Z":
                    mine.append(pid)
    return mine


def _signal(pids: list[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def end_app_processes(grace: float = STOP_GRACE_SECONDS) -> None:
    """End the app processes still running: SIGTERM, then SIGKILL. (They are not reaped
    here: asyncio's child watcher does that, and a zombie counts as ended.)"""
    left = _app_processes()
    if not left:
        return
    _signal(left, signal.SIGTERM)
    deadline = time.monotonic() + grace
    while left and time.monotonic() < deadline:
        time.sleep(0.05)
        left = _app_processes()
    _signal(left, signal.SIGKILL)
