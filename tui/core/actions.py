"""The actions of runbook steps that are not backups or restores: configured commands (argv,
never a shell), an HTTP health check, and a chat notification (Slack-compatible JSON)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import shlex
import signal
import time
import urllib.error
import urllib.request
from collections.abc import Callable

from tui.core.errors import ConfigError, OperationFailed
from tui.core.settings import Settings


def command_argv(settings: Settings, name: str) -> list[str]:
    key = "RUNBOOK_COMMAND_" + name.upper()
    raw = settings.values.get(key)
    if not raw:
        raise ConfigError(f"no command {name!r} is configured.", f"Set {key} in .env.deployment.")
    try:
        argv = shlex.split(raw)
    except ValueError as exc:
        raise ConfigError(f"{key} does not parse: {exc}.") from None
    if not argv:
        raise ConfigError(f"{key} is empty.")
    return argv


async def run_command(argv: list[str], on_line: Callable[[str], None]) -> int:
    """Run argv, handing each output line to `on_line` as it arrives; cancelling stops the
    child's process group."""
    try:
        proc = await asyncio.create_subprocess_exec(
            *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
            stdin=asyncio.subprocess.DEVNULL, process_group=0)
    except FileNotFoundError:
        raise OperationFailed(f"command not found: {argv[0]}",
                              "Check the RUNBOOK_COMMAND_* setting.") from None
    finished = False
    try:
        assert proc.stdout is not None
        async for raw in proc.stdout:
            on_line(raw.decode("utf-8", errors="replace").rstrip())
        code = await proc.wait()
        finished = True
        return code
    finally:
        if not finished:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGTERM)
            await proc.wait()


def http_check(url: str, timeout: float = 10, retries: int = 3) -> str:
    """GET `url`, expecting 2xx; retried with back-off. Returns a one-line description."""
    last = ""
    for attempt in range(max(1, retries)):
        try:
            with urllib.request.urlopen(url, timeout=timeout) as resp:  # noqa: S310
                if 200 <= resp.status < 300:
                    return f"{url} answered {resp.status}"
                last = f"HTTP {resp.status}"
        except urllib.error.HTTPError as exc:
            last = f"HTTP {exc.code}"
        except (urllib.error.URLError, TimeoutError, OSError) as exc:
            last = str(getattr(exc, "reason", exc))
        if attempt < retries - 1:
            time.sleep(min(2 ** attempt, 10))
    raise OperationFailed(f"health check of {url} failed after {retries} tries: {last}",
                          "Check the application's logs before leaving maintenance mode.")


def notify(webhook: str, text: str, timeout: float = 10) -> None:
    body = json.dumps({"text": text}).encode()
    req = urllib.request.Request(webhook, data=body, method="POST",
                                 headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:  # noqa: S310
            if not 200 <= resp.status < 300:
                raise OperationFailed(f"the chat webhook answered HTTP {resp.status}.")
    except urllib.error.HTTPError as exc:
        raise OperationFailed(f"the chat webhook answered HTTP {exc.code}.",
                              "Check CHAT_WEBHOOK_URL.") from None
    except (urllib.error.URLError, OSError) as exc:
        raise OperationFailed(f"cannot reach the chat webhook: {getattr(exc, 'reason', exc)}.",
                              "Check CHAT_WEBHOOK_URL and the network.") from None
