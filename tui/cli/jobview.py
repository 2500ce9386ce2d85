"""The CLI as a viewer of jobs: start an operation detached, render its journal's events as
they come, and hand back its outcome; `pgrunbook jobs`, `attach` and `cancel`.

Ctrl-C and SIGTERM ask the job to stop (it cleans up and says so, as a foreground run did); a
hang-up of the terminal ends only the viewer: the job runs to its end, verification and audit
included, and `pgrunbook attach` shows it.
"""

from __future__ import annotations

import gc
import signal
from types import FrameType
from typing import Any

from tui.cli.render import Renderer, _err
from tui.core.settings import Settings


def run_job(settings: Settings, operation: str, request: Any, renderer: Renderer, *,
            arguments: dict[str, Any], reason: str | None = None,
            target: dict[str, Any] | None = None) -> Any:
    """Run `operation` as a job and follow it; returns its outcome (see `jobs.Outcome`)."""
    from tui.core import jobs

    job = jobs.start(settings, operation, request, origin="cli", arguments=arguments,
                     reason=reason, target=target, fork=True)
    return follow(job, renderer, stop_on_interrupt=True)


def follow(job: Any, renderer: Renderer, *, stop_on_interrupt: bool) -> Any:
    """Render `job`'s events until it ends and return its outcome. With `stop_on_interrupt`,
    Ctrl-C and SIGTERM ask the job to stop; otherwise (`attach`) they stop following it, and
    None is returned."""
    from tui.core import jobs

    gc.enable()  # held off while the CLI started (tui.cli.main); following may last hours
    asked = False

    class Detached(Exception):
        pass

    def on_signal(signum: int, _frame: FrameType | None) -> None:
        nonlocal asked
        if not stop_on_interrupt:
            raise Detached
        if not asked:
            asked = True
            job.cancel()

    previous: dict[signal.Signals, Any] = {}
    for sig in (signal.SIGINT, signal.SIGTERM):
        previous[sig] = signal.signal(sig, on_signal)
    try:
        return jobs.follow(job, renderer)
    except Detached:
        renderer._stop_bar()
        _err(f"detached from job {job.id}; it runs on. Follow it again with: "
             f"pgrunbook attach {job.id}  (stop it with: pgrunbook cancel {job.id})")
        return None
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        renderer._stop_bar()
