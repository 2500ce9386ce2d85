"""Chat notifications of failures: a failed backup or drill (and, from the health check, a health
that turned critical) posts what failed and the next step to CHAT_WEBHOOK_URL, once per failure.

A failure is a `key` (`backup:<target>`, `drill:<target>`, ...) and a `fingerprint` (what went
wrong). The same key with the same fingerprint is posted again only after NOTIFY_REPEAT_HOURS;
a changed fingerprint posts at once, and so does the next failure after `resolve` (the
condition cleared). Posting never fails the operation: every outcome is one line of
BACKUP_DIR/logs/notifications.log, and a failed send is not recorded as posted, so the next
run tries again.

The dedupe state is BACKUP_DIR/.notifications.json, read and written under a lock beside it
(two cron jobs may alert at once). While a top-level backup or drill runs it also holds what
the reconciler, which knows only BACKUP_DIR, needs to alert when that job's process died
(`job_abandoned`): the settings file's path, never the webhook. The webhook URL is a secret:
it is written nowhere.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import fcntl
import hashlib
import json
import os
import re
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from tui.core import actions
from tui.core.audit import iso, operator_identity, redact, utcnow
from tui.core.errors import ConfigError, Interrupted, PgRunbookError
from tui.core.fsutil import PRIVATE_FILE, atomic_write_bytes, ensure_private_dir
from tui.core.settings import Settings

if TYPE_CHECKING:
    from tui.core.operation import Operation

SENT, SUPPRESSED, NOT_CONFIGURED, FAILED = "sent", "suppressed", "not-configured", "failed"
RESOLVED = "resolved"  # a log line's outcome only
STATE_FILE = ".notifications.json"
LOCK_FILE = ".notifications.lock"  # not `.lock-*`: those are target locks (tui.core.locks)
LOG_FILE = "notifications.log"  # in BACKUP_DIR/logs
SEND_TIMEOUT = 5.0  # seconds: the post must not hold up the operation
LOCK_WAIT_SECONDS = 20.0  # another process posting holds the lock for up to a send or two
RUNNING_MAX_AGE = timedelta(days=30)  # a running entry no reconciler ever found is dropped
# The results of each operation that post; "interrupted" (the operator's Ctrl-C) never does.
ALERTED_RESULTS = {"backup": ("failed",), "drill": ("failed", "verify-failed")}
_DEFAULT_REPEAT_HOURS = "24"

# What changes from one run of the same failure to the next and does not make it new: names
# and ids carrying a timestamp, times, long hex ids, numbers (bytes written, sizes, ports).
_VARYING = (
    (re.compile(r"\d{8}_\d{6}[\w.-]*"), "<name>"),
    (re.compile(r"\d{4}-\d\d-\d\dT[\d:.]+Z?"), "<time>"),
    (re.compile(r"\b[0-9a-f]{12,}\b"), "<id>"),
    (re.compile(r"\d[\d,.]*"), "#"),
)


def backup_key(target_name: str) -> str:
    return f"backup:{target_name}"


def drill_key(target_name: str) -> str:
    return f"drill:{target_name}"


def failure_fingerprint(result: str, error: str | None) -> str:
    """What a failed operation's audit end line (`result`, `error`) says went wrong, as a short
    hash: the same for two runs that failed the same way (times, names with a timestamp and
    numbers aside), different when the failure changed."""
    text = str(redact(error or ""))
    for pattern, replacement in _VARYING:
        text = pattern.sub(replacement, text)
    text = " ".join(text.split())
    return hashlib.sha256(f"{result}\n{text}".encode()).hexdigest()[:16]


def repeat_interval(settings: Settings) -> timedelta:
    """NOTIFY_REPEAT_HOURS as a duration. Raises ConfigError for a bad value."""
    raw = (settings.values.get("NOTIFY_REPEAT_HOURS") or _DEFAULT_REPEAT_HOURS).strip()
    try:
        hours = int(raw)
    except ValueError:
        raise ConfigError(f"NOTIFY_REPEAT_HOURS={raw!r} is not a whole number.",
                          "Set NOTIFY_REPEAT_HOURS to a number of hours (see "
                          ".env.deployment.example).") from None
    if hours < 0:
        raise ConfigError(f"NOTIFY_REPEAT_HOURS={hours} is negative.",
                          "Set NOTIFY_REPEAT_HOURS to 0 (post every failure) or more.")
    if hours > 24 * 3660:
        raise ConfigError(f"NOTIFY_REPEAT_HOURS={hours} is more than ten years.",
                          "Set NOTIFY_REPEAT_HOURS to a number of hours, such as 24.")
    return timedelta(hours=hours)


# -- posting -----------------------------------------------------------------------------------


def alert(settings: Settings, key: str, fingerprint: str, text: str, *,
          now: datetime | None = None) -> str:
    """Post `text` to CHAT_WEBHOOK_URL unless `key` was posted with the same `fingerprint`
    less than NOTIFY_REPEAT_HOURS ago. Returns "sent", "suppressed", "not-configured" or
    "failed"; a send failure never raises (it is logged, and not recorded as posted). Raises
    ConfigError for a bad NOTIFY_REPEAT_HOURS."""
    now = now or utcnow()
    webhook = _webhook(settings)
    if webhook is None:
        return NOT_CONFIGURED
    repeat = repeat_interval(settings)
    secrets = _secrets(settings, webhook)
    body = str(redact(text, secrets))
    decided: list[tuple[str, str]] = []  # the outcome, once the send was tried or skipped
    note = ""
    try:
        with _locked_state(settings.backup_dir) as state:
            last = state["posted"].get(key)
            at = _parse_time(last.get("at")) if isinstance(last, dict) else None
            if at is not None and last.get("fingerprint") == fingerprint and now - at < repeat:
                decided.append((SUPPRESSED, f"the same failure was posted at {iso(at)}"))
            else:
                decided.append(_send(webhook, body))
                if decided[0][0] == SENT:
                    state["posted"][key] = {"fingerprint": fingerprint, "at": iso(now)}
    except OSError as exc:  # the state could not be read or written (a full disk, ...)
        note = f"; the notification state is unavailable ({exc})"
        if not decided:  # posted without the dedupe rather than not at all
            decided.append(_send(webhook, body))
    outcome, reason = decided[0]
    _log(settings.backup_dir, key, outcome, reason + note, secrets, now)
    return outcome


def resolve(settings: Settings, key: str) -> None:
    """The condition `key` stands for cleared: forget it, so that its next failure posts at
    once. Nothing is posted. Never raises for the state file (a problem is logged)."""
    if not (settings.backup_dir / STATE_FILE).exists():
        return
    try:
        with _locked_state(settings.backup_dir) as state:
            removed = state["posted"].pop(key, None) is not None
    except OSError as exc:
        _log(settings.backup_dir, key, FAILED, f"could not clear the failure: {exc}",
             _secrets(settings), utcnow())
        return
    if removed:
        _log(settings.backup_dir, key, RESOLVED, "the failure cleared; the next one posts at once",
             _secrets(settings), utcnow())


def _send(webhook: str, body: str) -> tuple[str, str]:
    try:
        actions.notify(webhook, body, timeout=SEND_TIMEOUT)
    except PgRunbookError as exc:
        return FAILED, exc.message
    except Exception as exc:  # a malformed URL, a garbled answer: any of it is a failed send
        return FAILED, f"{exc.__class__.__name__}: {exc}"
    return SENT, "posted to the chat webhook"


# -- the operations' hooks (tui.core.operation, tui.core.reconcile) ------------------------------


@dataclass
class Watch:
    """A top-level backup or drill, watched from its start: `ended` posts its failure, or
    clears it when it passed."""

    settings: Settings
    operation: str
    key: str
    audit_id: str
    log_path: str

    def ended(self, op: Operation, result: str, failure: BaseException | None) -> None:
        """Called once the operation's audit end line is written; never raises."""
        secrets: list[str] = []
        try:
            secrets = _secrets(self.settings)
            if _webhook(self.settings) is not None:
                _disarm(self.settings.backup_dir, [self.audit_id])
            if result == "ok":
                resolve(self.settings, self.key)
            elif result in ALERTED_RESULTS[self.operation] and (
                    failure is None or (isinstance(failure, Exception)
                                        and not isinstance(failure, Interrupted))):
                error = _audit_error(op, failure)
                alert(self.settings, self.key,
                      failure_fingerprint(result, str(redact(error, secrets))),
                      self._text(op, result, error, failure))
        except Exception as exc:  # a bad NOTIFY_REPEAT_HOURS, a bug: the operation stands
            _log(self.settings.backup_dir, self.key, FAILED,
                 f"{exc.__class__.__name__}: {exc}", secrets, utcnow())

    def _text(self, op: Operation, result: str, error: str,
              failure: BaseException | None) -> str:
        backup = op.end.get("backup")
        hint = failure.hint if isinstance(failure, PgRunbookError) else None
        line = failure.message if isinstance(failure, PgRunbookError) else error
        if self.operation == "drill":
            what = f"restore drill of {backup}" if backup else "restore drill"
            if result == "verify-failed":
                line = f"the restored row counts differ from the backup's ({error})"
                hint = (f"Read the drill report {op.end.get('report')}, check the backup "
                        f"(pgrunbook verify {backup}) and take a fresh one.")
        else:
            what = "backup"
            if failure is None and backup:  # it is on disk; only its upload failed
                hint = f"Upload it when S3 is reachable: pgrunbook upload {backup}"
        return failure_text(self.settings, what, line, hint, self.log_path,
                            operator_identity())


def watch(settings: Settings, operation: str, audit_id: str, log_path: str) -> Watch | None:
    """A Watch for a top-level backup or drill (None for other operations). With a webhook
    configured, the state remembers the operation so that `job_abandoned` can alert if its
    process dies."""
    if operation not in ALERTED_RESULTS:
        return None
    name = settings.target.name
    w = Watch(settings, operation, backup_key(name) if operation == "backup" else drill_key(name),
              audit_id, log_path)
    if _webhook(settings) is not None:
        running = {"key": w.key, "operation": operation,
                   "env_file": str(settings.env_file) if settings.env_file else None,
                   "target_name": name, "log": log_path, "started_at": iso(utcnow()),
                   "operator": operator_identity()}
        try:
            with _locked_state(settings.backup_dir) as state:
                _drop_stale(state)
                state["running"][audit_id] = running
        except Exception as exc:  # the operation runs whatever happens here
            _log(settings.backup_dir, w.key, FAILED,
                 f"could not note the running {operation}: {exc}", _secrets(settings), utcnow())
    return w


def job_abandoned(backup_dir: Path, audit_ids: Iterable[str], message: str,
                  hint: str | None) -> None:
    """The reconciler closed `audit_ids` as abandoned (the job's process died): post the
    failure of each that was a watched backup or drill, with the settings it ran with.
    Never raises."""
    ids = list(audit_ids)
    if not ids or not (backup_dir / STATE_FILE).exists():
        return
    try:
        found = _disarm(backup_dir, ids)
    except OSError as exc:
        _log(backup_dir, "abandoned", FAILED, f"could not read the notification state: {exc}",
             [], utcnow())
        return
    for entry in found:
        key = str(entry.get("key"))
        try:
            from tui.core.settings import load_settings

            settings = dataclasses.replace(
                load_settings(env_file=entry.get("env_file"), target=entry.get("target_name")),
                backup_dir=backup_dir)
            operator = entry.get("operator")
            text = failure_text(settings, f"{entry.get('operation')} job (started "
                                f"{entry.get('started_at')})", message, hint,
                                str(entry.get("log")),
                                operator if isinstance(operator, dict) else operator_identity())
            alert(settings, key, failure_fingerprint("abandoned", message), text)
        except Exception as exc:  # the settings file moved, a bad value: logged, not raised
            _log(backup_dir, key, FAILED, f"{exc.__class__.__name__}: {exc}", [], utcnow())


def failure_text(settings: Settings, what: str, error: str, hint: str | None, log_path: str,
                 operator: dict[str, Any]) -> str:
    """The chat message of a failure: what failed on which target, the error's one line, the
    next step, when, where and by whom, and the operation's log."""
    t = settings.target
    first = (error.strip().splitlines() or ["no message"])[0]
    who = str(operator.get("user") or "?")
    extra = [f"sudo by {operator['sudo_user']}" if operator.get("sudo_user") else "",
             f"SSH from {operator['ssh_client']}" if operator.get("ssh_client") else ""]
    extra = [e for e in extra if e]
    who += f" ({', '.join(extra)})" if extra else ""
    return "\n".join([
        f"pgrunbook: {what} FAILED on target {t.name} ({t.host}:{t.port}/{t.dbname})",
        f"Error: {first}",
        f"Next step: {hint or 'Read the log below, fix the cause and run it again.'}",
        f"When: {iso(utcnow())} on {operator.get('host') or '?'} as {who}",
        f"Log: {log_path}",
    ])


def _audit_error(op: Operation, failure: BaseException | None) -> str:
    """The error text the operation's audit end line carries (tui.core.operation)."""
    if failure is None:
        return op.problem or ""
    if isinstance(failure, PgRunbookError):
        return str(failure)
    return f"{failure.__class__.__name__}: {failure}"


# -- the state file and the log ----------------------------------------------------------------


def _webhook(settings: Settings) -> str | None:
    return (settings.values.get("CHAT_WEBHOOK_URL") or "").strip() or None


def _secrets(settings: Settings, webhook: str | None = None) -> list[str]:
    """Everything to mask in what is written: the settings' secrets and the webhook's parts
    (an error quoting part of the URL must not leak its token)."""
    from tui.core.operation import secrets_of

    found = secrets_of(settings)
    webhook = webhook or _webhook(settings)
    if webhook:
        with contextlib.suppress(ValueError):
            parts = urlsplit(webhook)
            found += [p for p in (webhook, parts.path, parts.query, parts.path.lstrip("/"))
                      if len(p) >= 4]
    return sorted(set(found), key=len, reverse=True)


def _empty() -> dict[str, Any]:
    return {"posted": {}, "running": {}}


def _read_state(path: Path) -> tuple[dict[str, Any], bool]:
    """The state and whether it was damaged (then it counts as empty)."""
    try:
        raw = json.loads(path.read_bytes())
    except FileNotFoundError:
        return _empty(), False
    except (ValueError, UnicodeDecodeError):
        return _empty(), True
    if not isinstance(raw, dict):
        return _empty(), True
    state = _empty()
    damaged = False
    for part in state:
        value = raw.get(part, {})
        if isinstance(value, dict):
            state[part] = {str(k): v for k, v in value.items() if isinstance(v, dict)}
            damaged = damaged or len(state[part]) != len(value)
        else:
            damaged = True
    return state, damaged


@contextlib.contextmanager
def _locked_state(backup_dir: Path) -> Iterator[dict[str, Any]]:
    """The dedupe state, read under the lock and written back (atomically) when the body
    changed it or it was damaged."""
    ensure_private_dir(backup_dir)
    fd = os.open(backup_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, PRIVATE_FILE)
    try:
        deadline = time.monotonic() + LOCK_WAIT_SECONDS
        while True:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if time.monotonic() > deadline:
                    raise TimeoutError(f"another process held {LOCK_FILE} for "
                                       f"{LOCK_WAIT_SECONDS:.0f} s") from None
                time.sleep(0.05)
        path = backup_dir / STATE_FILE
        state, damaged = _read_state(path)
        before = copy.deepcopy(state)
        yield state
        if damaged or state != before:
            data = json.dumps(state, indent=1, sort_keys=True).encode() + b"\n"
            atomic_write_bytes(path, data, durable=False)
    finally:
        os.close(fd)  # releases the lock


def _disarm(backup_dir: Path, audit_ids: list[str]) -> list[dict[str, Any]]:
    """Forget the running entries of `audit_ids`; returns those there were."""
    if not (backup_dir / STATE_FILE).exists():
        return []
    with _locked_state(backup_dir) as state:
        return [e for e in (state["running"].pop(i, None) for i in audit_ids) if e is not None]


def _drop_stale(state: dict[str, Any]) -> None:
    oldest = utcnow() - RUNNING_MAX_AGE
    for audit_id, entry in list(state["running"].items()):
        started = _parse_time(entry.get("started_at"))
        if started is None or started < oldest:
            del state["running"][audit_id]


def _parse_time(value: Any) -> datetime | None:
    try:
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def _log(backup_dir: Path, key: str, outcome: str, reason: str, secrets: list[str],
         now: datetime) -> None:
    """One line of BACKUP_DIR/logs/notifications.log: UTC time, key, outcome, reason."""
    line = str(redact(" ".join(f"{iso(now)} {key} {outcome} {reason}".split()), secrets))
    with contextlib.suppress(OSError):
        directory = ensure_private_dir(backup_dir / "logs")
        fd = os.open(directory / LOG_FILE, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC,
                     PRIVATE_FILE)
        try:
            os.write(fd, (line + "\n").encode("utf-8"))
        finally:
            os.close(fd)
