"""Runbooks as data: `runbooks/*.toml` (and a user directory), validated strictly, and the state
of one run of a runbook (steps pending, running, done, failed or skipped with a reason).

The engine only keeps state and rules (an unticked required item or a failed action blocks the
step; skipping needs a typed reason); the faces run each step's action through the engine's
operations and record the outcome here.
"""

from __future__ import annotations

import contextlib
import importlib.resources
import re
import tomllib
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tui.core.errors import ConfigError

STEP_KINDS = ("note", "checklist", "confirm", "backup", "restore", "verify", "drill", "command",
              "http_check", "notify")
RUNBOOK_KEYS: dict[str, type] = {"name": str, "description": str, "steps": list}
COMMON_STEP_KEYS: dict[str, type] = {"id": str, "kind": str, "title": str, "text": str, "required": bool}
KIND_KEYS: dict[str, dict[str, type]] = {
    "note": {},
    "checklist": {"items": list},
    "confirm": {},
    "backup": {"backup_kind": str, "name": str},
    "restore": {"backup": str},
    "verify": {},
    "drill": {"backup": str},
    "command": {"command": str},
    "http_check": {"timeout": int, "retries": int},
    "notify": {"message": str},
}
REQUIRED_KIND_KEYS = {"checklist": ("items",), "command": ("command",)}
ITEM_KEYS: dict[str, type] = {"text": str, "required": bool}


def _bundled_dir() -> Path:
    """The bundled runbooks: package data `tui/runbooks` in an installed wheel (setup.py copies
    them there), else the top-level `runbooks/` of the checkout (an editable install)."""
    with contextlib.suppress(ModuleNotFoundError, TypeError):
        installed = importlib.resources.files("tui") / "runbooks"
        if installed.is_dir():
            return Path(str(installed))
    return Path(__file__).resolve().parents[2] / "runbooks"


BUNDLED_DIR = _bundled_dir()


@dataclass(frozen=True)
class ChecklistItem:
    text: str
    required: bool = True


@dataclass(frozen=True)
class Step:
    id: str
    kind: str
    title: str
    text: str = ""
    required: bool = True
    items: tuple[ChecklistItem, ...] = ()
    options: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class Runbook:
    id: str
    name: str
    description: str
    steps: tuple[Step, ...]
    path: Path


def _line_of(text: str, needle: str) -> int | None:
    for n, line in enumerate(text.splitlines(), 1):
        if re.match(rf"^\s*{re.escape(needle)}\s*=", line) or needle in line:
            return n
    return None


def _fail(path: Path, text: str, message: str, needle: str | None = None) -> ConfigError:
    line = _line_of(text, needle) if needle else None
    where = f"{path}:{line}" if line else str(path)
    return ConfigError(f"runbook {where}: {message}", "Fix the runbook file; see runbooks/*.toml.")


def _check_types(path: Path, text: str, table: dict[str, Any], allowed: dict[str, type],
                 what: str) -> None:
    for key, value in table.items():
        if key not in allowed:
            raise _fail(path, text, f"unknown key {key!r} in {what} (expected one of: "
                                    f"{', '.join(sorted(allowed))})", key)
        if not isinstance(value, allowed[key]) or (allowed[key] is int and
                                                   isinstance(value, bool)):
            raise _fail(path, text, f"{key!r} in {what} must be {allowed[key].__name__}", key)


def load_runbook(path: Path) -> Runbook:
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text)
    except OSError as exc:
        raise ConfigError(f"cannot read runbook {path}: {exc.strerror}.") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"runbook {path}: not valid TOML ({exc}).",
                          "Fix the syntax at the line named.") from None
    _check_types(path, text, data, RUNBOOK_KEYS, "the runbook")
    for key in ("name", "steps"):
        if key not in data:
            raise _fail(path, text, f"missing {key!r}")
    steps: list[Step] = []
    seen: set[str] = set()
    for n, raw in enumerate(data["steps"], 1):
        if not isinstance(raw, dict):
            raise _fail(path, text, f"step {n} is not a table ([[steps]])")
        kind = raw.get("kind")
        if kind not in STEP_KINDS:
            raise _fail(path, text, f"step {n} has unknown kind {kind!r} (expected one of: "
                                    f"{', '.join(STEP_KINDS)})", f"{kind}" if kind else "kind")
        allowed = {**COMMON_STEP_KEYS, **KIND_KEYS[kind]}
        _check_types(path, text, raw, allowed, f"step {n} ({kind})")
        if "title" not in raw:
            raise _fail(path, text, f"step {n} ({kind}) is missing 'title'")
        for key in REQUIRED_KIND_KEYS.get(kind, ()):
            if key not in raw:
                raise _fail(path, text, f"step {n} ({kind}) is missing {key!r}")
        items: list[ChecklistItem] = []
        for m, item in enumerate(raw.get("items", []), 1):
            if not isinstance(item, dict) or "text" not in item:
                raise _fail(path, text, f"step {n} item {m} needs text = \"...\"")
            _check_types(path, text, item, ITEM_KEYS, f"step {n} item {m}")
            items.append(ChecklistItem(item["text"], item.get("required", True)))
        step_id = raw.get("id") or f"step-{n}"
        if step_id in seen:
            raise _fail(path, text, f"step id {step_id!r} is used twice", step_id)
        seen.add(step_id)
        options = {k: v for k, v in raw.items() if k in KIND_KEYS[kind]}
        steps.append(Step(step_id, kind, raw["title"], raw.get("text", ""),
                          raw.get("required", True), tuple(items), options))
    if not steps:
        raise _fail(path, text, "has no steps")
    return Runbook(path.stem, data["name"], data.get("description", ""), tuple(steps), path)


def load_runbooks(user_dir: Path | None = None) -> list[Runbook]:
    """The bundled runbooks plus a user's directory; a user's file replaces a bundled one of
    the same name."""
    found: dict[str, Runbook] = {}
    for directory in (BUNDLED_DIR, user_dir):
        if directory is None or not directory.is_dir():
            continue
        for path in sorted(directory.glob("*.toml")):
            book = load_runbook(path)
            found[book.id] = book
    return list(found.values())


# -- one run ---------------------------------------------------------------------------------

PENDING, RUNNING, DONE, FAILED, SKIPPED = "pending", "running", "done", "failed", "skipped"
NOT_RUN = "optional, not run"  # the reason of an optional action passed without running it


@dataclass
class StepState:
    step: Step
    status: str = PENDING
    ticked: set[int] = field(default_factory=set)
    reason: str | None = None
    detail: str | None = None
    started: datetime | None = None
    finished: datetime | None = None
    job_id: str | None = None  # the job of a step whose action runs as one

    @property
    def duration(self) -> float | None:
        if self.started and self.finished:
            return (self.finished - self.started).total_seconds()
        return None


@dataclass
class RunbookRun:
    """State of one walk through a runbook."""

    runbook: Runbook
    states: list[StepState] = field(default_factory=list)
    current: int = 0
    started: datetime = field(default_factory=lambda: datetime.now(UTC))
    timeline: list[tuple[datetime, str]] = field(default_factory=list)
    # Saved with the run (`runstate`), so that a run survives the terminal that showed it.
    id: str = field(default_factory=lambda: datetime.now(UTC).strftime("%Y%m%d_%H%M%S_%f"))
    reason: str | None = None
    audit_id: str | None = None
    target: dict[str, Any] | None = None
    restored: str | None = None  # the backup a restore step put back
    # The backups the run's own steps took, oldest first: the newest stands as a later
    # restore step's safety backup when nothing has been written since (one emergency backup).
    backups_taken: list[str] = field(default_factory=list)
    # The impact for users the operator gave (the first notify step asks), and the team updates
    # sent or shown since (`tui.core.incident`): {"at": ISO time, "posted": bool, "text": ...}.
    impact: str | None = None
    updates: list[dict[str, Any]] = field(default_factory=list)
    selected_backup: str | None = None
    closed: bool = False
    report_path: str | None = None

    def __post_init__(self) -> None:
        if not self.states:
            self.states = [StepState(s) for s in self.runbook.steps]

    @property
    def state(self) -> StepState:
        return self.states[self.current]

    def log(self, text: str) -> None:
        self.timeline.append((datetime.now(UTC), text))

    def toggle(self, index: int) -> None:
        st = self.state
        if not 0 <= index < len(st.step.items):
            return
        if index in st.ticked:
            st.ticked.discard(index)
        else:
            st.ticked.add(index)

    def missing_items(self) -> list[ChecklistItem]:
        st = self.state
        return [item for i, item in enumerate(st.step.items) if item.required
                and i not in st.ticked]

    def has_action(self) -> bool:
        return self.state.step.kind not in ("note", "checklist")

    def blocked_reason(self) -> str | None:
        """Why the current step cannot be passed, or None."""
        st = self.state
        if st.status == SKIPPED:
            return None
        missing = self.missing_items()
        if missing:
            return f"tick the required item(s) first: {missing[0].text}"
        if st.status == FAILED:
            return "the step's action failed: retry it, or skip the step with a reason"
        if self.has_action() and st.status != DONE and st.step.required:
            return "run the step's action first (or skip it with a reason)"
        if st.status == RUNNING:
            return "the step's action is still running"
        return None

    def start(self) -> None:
        st = self.state
        st.status, st.started, st.detail = RUNNING, datetime.now(UTC), None
        self.log(f"{st.step.title}: started")

    def finish(self, ok: bool, detail: str | None = None) -> None:
        st = self.state
        st.status = DONE if ok else FAILED
        st.finished = datetime.now(UTC)
        st.detail = detail
        self.log(f"{st.step.title}: {'done' if ok else 'FAILED'}" + (f" ({detail})"
                                                                     if detail else ""))

    def skip(self, reason: str) -> None:
        if not reason.strip():
            raise ValueError("a skipped step needs a reason")
        st = self.state
        st.status, st.reason = SKIPPED, reason.strip()
        st.finished = datetime.now(UTC)
        self.log(f"{st.step.title}: skipped ({st.reason})")

    def advance(self) -> bool:
        """Move to the next step if the current one may be passed. A pending step with an
        action (an optional one, passed without running it) is recorded as skipped, "optional,
        not run": the record never says that the team was told when nothing was posted. A note
        or a checklist passed is done."""
        if self.blocked_reason() is not None:
            return False
        st = self.state
        if st.status == PENDING:
            if self.has_action():
                self.skip(NOT_RUN)
            else:
                st.status = DONE
                st.finished = datetime.now(UTC)
                self.log(f"{st.step.title}: done")
        if self.current < len(self.states) - 1:
            self.current += 1
        return True

    @property
    def complete(self) -> bool:
        return all(s.status in (DONE, SKIPPED) for s in self.states)

    def report(self, extra: str = "", incident: str = "") -> str:
        lines = [f"# Runbook: {self.runbook.name}", "",
                 f"- Started: {self.started.isoformat(timespec='seconds')}",
                 f"- Outcome: {'complete' if self.complete else 'not complete'}", ""]
        if incident:
            lines += [incident]
        lines += ["| step | outcome | duration | note |", "| --- | --- | ---: | --- |"]
        for st in self.states:
            dur = f"{st.duration:.1f} s" if st.duration is not None else ""
            note = st.reason or st.detail or ""
            lines.append(f"| {st.step.title} | {st.status} | {dur} | {note} |")
        lines += ["", "## Timeline", ""]
        lines += [f"- {t.strftime('%H:%M:%S')} {text}" for t, text in self.timeline]
        if extra:
            lines += ["", extra]
        return "\n".join(lines) + "\n"
