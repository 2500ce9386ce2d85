"""Team updates during a runbook run (issue 15, item 4): the SOP's post in #incidents, "updated
every 30 minutes", with the step in progress, the running operation's progress and ETA, and the
impact the operator gave.

Pure logic: when the next update is due, and its text. The faces post it (`actions.notify`) or,
without a chat webhook, remind the operator with the text ready to copy; each one sent or shown
is recorded in the run (`RunbookRun.updates`) and restarts the cadence."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from tui.core.errors import ConfigError
from tui.core.fmt import duration, size
from tui.core.runbook import RUNNING, RunbookRun
from tui.core.settings import Settings

DEFAULT_MINUTES = 30.0  # the SOP's


def update_interval(settings: Settings) -> timedelta:
    """INCIDENT_UPDATE_MINUTES as a duration (minutes, decimals allowed, more than 0)."""
    text = settings.values.get("INCIDENT_UPDATE_MINUTES") or str(DEFAULT_MINUTES)
    try:
        minutes = float(text)
    except ValueError:
        minutes = -1.0
    if not minutes > 0:
        raise ConfigError(f"INCIDENT_UPDATE_MINUTES={text!r} is not a number of minutes above 0.",
                          "Set it to the minutes between team updates (the SOP's: 30).")
    return timedelta(minutes=minutes)


@dataclass(frozen=True)
class OperationProgress:
    """The running operation's latest progress, as its events report it."""

    phase: str
    done: int
    total: int | None
    elapsed: float
    unit: str = "bytes"

    def eta_seconds(self) -> float | None:
        if not self.total or self.done <= 0 or self.elapsed <= 0 or self.done >= self.total:
            return None
        return (self.total - self.done) / (self.done / self.elapsed)

    def line(self) -> str:
        """"restore 45% (1.2 GB of 2.6 GB), about 12 min left"."""
        if not self.total:
            amount = size(self.done) if self.unit == "bytes" else f"{self.done:,} {self.unit}"
            return f"{self.phase}: {amount} so far"
        pct = min(100, int(100 * self.done / self.total))
        amount = (f"{size(self.done)} of {size(self.total)}" if self.unit == "bytes"
                  else f"{self.done:,} of {self.total:,} {self.unit}")
        eta = self.eta_seconds()
        left = f", about {duration(eta)} left" if eta is not None else ""
        return f"{self.phase} {pct}% ({amount}){left}"


def cadence_start(run: RunbookRun) -> datetime | None:
    """When the cadence counts from: the last update sent or shown, else the run's first
    action; None before the first action (nothing is happening to the target yet)."""
    if run.updates:
        return max(datetime.fromisoformat(str(u["at"])) for u in run.updates)
    started = [st.started for st in run.states if st.started is not None]
    return min(started) if started else None


def next_due(run: RunbookRun, every: timedelta) -> datetime | None:
    """When the next team update is due, or None (no action yet, or the run is over)."""
    if run.closed or run.complete:
        return None
    start = cadence_start(run)
    return start + every if start is not None else None


def update_text(run: RunbookRun, target: dict[str, Any] | None,
                progress: OperationProgress | None, now: datetime, every: timedelta) -> str:
    """The update as posted: what, where, the step in progress, the operation's progress and
    ETA, the impact, and when the next one comes."""
    st = run.state
    index = run.current + 1
    name = (target or {}).get("name", "the target")
    database = (target or {}).get("database")
    where = f"{name} ({database})" if database else str(name)
    status = st.status
    if st.status == RUNNING and st.started is not None:
        status = f"running for {duration((now - st.started).total_seconds())}"
    parts = [f"Update: {run.runbook.name} on {where}"
             + (f" ({run.reason})" if run.reason else "") + ".",
             f"Step {index}/{len(run.states)}: {st.step.title} ({status})."]
    if progress is not None and st.status == RUNNING:
        line = progress.line()
        parts.append(line[0].upper() + line[1:] + ".")
    done = sum(1 for s in run.states if s.status in ("done", "skipped"))
    parts.append(f"{done} of {len(run.states)} steps finished.")
    parts.append(f"Impact: {run.impact or 'not given'}.")
    parts.append(f"Next update by {(now + every).strftime('%H:%M')} UTC.")
    return " ".join(parts)


def record_update(run: RunbookRun, now: datetime, text: str, posted: bool) -> None:
    """An update sent (`posted`) or shown to copy, in the run and its timeline."""
    run.updates.append({"at": now.isoformat(), "posted": posted, "text": text})
    run.log("team update " + ("posted to the chat webhook" if posted
                              else "due: shown to copy (no chat webhook)"))
