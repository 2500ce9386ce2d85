"""`pgrunbook prune`, `pin` and `unpin`: the I/O around the retention plan (`tui.core.retention`).

Prune runs as a job with the deletions the operator approved; the job plans again and deletes
only what is both approved and still "delete" in its fresh plan, so nothing goes that the
operator was not shown. A copy is deleted metadata first (local `<name>.backup.meta`, S3
`metadata.json`), then the archive, then the roles file, each step made durable before the
next: a prune that dies half-way leaves an archive without metadata, which the inventory lists
as incomplete (never complete) and the next prune removes. Every deletion is in the audit
trail: the prune's end line lists what went, where, and why; its start line says who.

Pinning records `"pinned": {"by", "at", "reason"}` in the local metadata and, when there is
an S3 copy, in its metadata.json; the plan never deletes a pinned backup.
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import json
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tui.core.audit import iso, operator_identity, utcnow
from tui.core.errors import ConfigError, OperationFailed, PgRunbookError
from tui.core.events import Emit, Notice, PhaseStarted, Progress, ignore
from tui.core.fsutil import fsync_dir
from tui.core.metadata import (
    ARCHIVE_SUFFIX,
    META_SUFFIX,
    STAMP_RE,
    MetaError,
    read_meta,
    write_meta,
)
from tui.core.retention import LOCAL, PARTIAL, S3, Decision, Plan, Policy, plan
from tui.core.settings import Settings

ROLES_SUFFIX = ".roles.sql"  # tui.core.roles.ROLES_SUFFIX (not imported: it loads psycopg)


@dataclass(frozen=True)
class PruneRequest:
    """The deletions the operator approved, as (name, location) pairs from the plan shown."""

    deletions: tuple[tuple[str, str], ...]
    verify: bool = False  # hash every local archive while planning (pgrunbook prune --verify)
    origin: str = "cli"


@dataclass
class PruneResult:
    """What the prune job did: each deleted copy (name, location, reason, size_bytes), each
    approved one it left (name, location, why), each deletion that failed (..., error)."""

    deleted: list[dict[str, Any]] = field(default_factory=list)
    skipped: list[dict[str, Any]] = field(default_factory=list)
    failed: list[dict[str, Any]] = field(default_factory=list)
    audit_id: str | None = None

    def freed_bytes(self, location: str | None = None) -> int:
        return sum(int(d.get("size_bytes") or 0) for d in self.deleted
                   if location is None or d["location"] == location)

    def as_json(self) -> dict[str, Any]:
        return {"deleted": self.deleted, "skipped": self.skipped, "failed": self.failed,
                "freed_bytes": {LOCAL: self.freed_bytes(LOCAL), S3: self.freed_bytes(S3)},
                "audit_id": self.audit_id}


@dataclass(frozen=True)
class PinRequest:
    backup: str
    pinned: bool = True  # False: unpin
    reason: str | None = None
    origin: str = "cli"


@dataclass(frozen=True)
class PinResult:
    name: str
    pinned: dict[str, Any] | None  # the record now in the metadata; None once unpinned
    changed: bool  # False: it already was (or was not) pinned
    locations: tuple[str, ...]  # where the metadata was rewritten: local, s3


# -- planning ----------------------------------------------------------------------------------


def current_plan(settings: Settings, *, verify: bool = False,
                 now: datetime | None = None) -> tuple[Plan, str | None]:
    """The plan over the inventory as it is now, and a warning when S3 is configured but could
    not be listed (the plan then keeps every local copy: none is known to be in S3)."""
    from tui.core.inventory import inventory_or_local
    from tui.core.s3 import s3_config

    s3 = s3_config(settings)
    policy = Policy.from_settings(settings)
    with collector_paused():
        entries, warning = inventory_or_local(settings.backup_dir, s3, verify=verify)
        found = plan(entries, policy, now or datetime.now(UTC), s3_configured=s3 is not None)
    return found, warning


@contextlib.contextmanager
def collector_paused() -> Iterator[None]:
    """Reading the inventory and planning allocate about a hundred small objects per backup
    (metadata dicts), all alive until the plan is made and none in a cycle: the cyclic garbage
    collector would walk them again and again, a third of the time with 10,000 backups."""
    was = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was:
            gc.enable()


def reclaimable_bytes(settings: Settings, timeout: float = 20.0) -> int:
    """How much `pgrunbook prune` would free in BACKUP_DIR under the policy now; 0 when that
    cannot be worked out within `timeout` seconds (an S3 that does not answer): this only adds
    a hint to an error message, it never fails or stalls one."""
    box: list[int] = []

    def work() -> None:
        with contextlib.suppress(Exception):
            box.append(current_plan(settings)[0].freed_bytes(LOCAL))

    thread = threading.Thread(target=work, name="reclaimable", daemon=True)
    thread.start()
    thread.join(timeout)
    return box[0] if box else 0


def space_hint(settings: Settings) -> str:
    """"; `pgrunbook prune` would free 1.2 GB here" for the no-space message, or ""."""
    freeable = reclaimable_bytes(settings)
    if not freeable:
        return ""
    from tui.core.fmt import size

    return f"; `pgrunbook prune` would free {size(freeable)} here under the retention policy"


# -- deleting ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One deletion step: `what` it removes (a path or an s3:// URL) and `run` to do it."""

    what: str
    run: Callable[[], None]


def _unlink(path: Path) -> Callable[[], None]:
    def run() -> None:
        path.unlink(missing_ok=True)
        fsync_dir(path.parent)  # durable before the next step: the order holds after a crash

    return run


def _delete_object(client: Any, bucket: str, key: str) -> Callable[[], None]:
    def run() -> None:
        client.delete_object(Bucket=bucket, Key=key)

    return run


def deletion_steps(settings: Settings, decision: Decision, client: Any = None) -> list[Step]:
    """The steps that delete `decision`'s copy, in their safe order: the metadata, the
    archive, the roles file (a partial file is one step). `client`: an S3 client, for an S3
    copy."""
    if decision.location == LOCAL:
        if decision.path is None:
            raise OperationFailed(f"no local path for {decision.name}.")
        path = Path(decision.path)
        if decision.item == PARTIAL:
            return [Step(str(path), _unlink(path))]
        meta = path.with_name(path.name + META_SUFFIX)
        roles = path.with_name(path.name + ROLES_SUFFIX)
        return [Step(str(p), _unlink(p)) for p in (meta, path, roles)]
    from tui.core.s3 import ARCHIVE_KEY, META_KEY, ROLES_KEY, s3_config

    s3 = s3_config(settings)
    if s3 is None:
        raise ConfigError("S3 is not configured.", "Set BACKUP_S3_BUCKET in .env.deployment.")
    key = decision.s3_key
    stamp = key[len(s3.prefix):].partition("/")[0] if key else decision.name[:15]
    if not STAMP_RE.match(f"{stamp}_x"):
        raise OperationFailed(f"cannot tell the S3 keys of {decision.name}.")
    client = client if client is not None else s3.client()
    return [Step(f"s3://{s3.bucket}/{key}", _delete_object(client, s3.bucket, key))
            for key in (s3.key_for(stamp, leaf) for leaf in (META_KEY, ARCHIVE_KEY, ROLES_KEY))]


def delete_copy(settings: Settings, decision: Decision, client: Any = None) -> list[str]:
    """Delete one copy, step by step; returns what was removed. Errors are OperationFailed."""
    done = []
    try:
        for step in deletion_steps(settings, decision, client):
            step.run()
            done.append(step.what)
    except PgRunbookError:
        raise
    except OSError as exc:
        raise OperationFailed(f"could not delete {exc.filename}: {exc.strerror}.",
                              "Check the directory's permissions.") from None
    except Exception as exc:
        from tui.core.s3 import describe_error

        raise OperationFailed(f"could not delete {decision.name} in S3: "
                              f"{describe_error(exc)}.") from None
    return done


def _interrupted_text() -> str:
    return ("interrupted by the operator (Ctrl-C or SIGTERM); the copies deleted before are "
            "listed in `deleted`")


async def run_prune(settings: Settings, request: PruneRequest, emit: Emit = ignore) -> PruneResult:
    """The prune job: plan again, then delete each approved copy the fresh plan still deletes.
    One prune at a time (a lock file in BACKUP_DIR)."""
    from tui.core.locks import target_lock_file
    from tui.core.operation import operation

    result = PruneResult()
    with operation(settings, "prune", emit, no_target=True, origin=request.origin,
                   arguments={"approved": len(request.deletions), "verify": request.verify}
                   ) as op, target_lock_file(settings.backup_dir, "prune", "prune"):
        op.interrupted_text = _interrupted_text()
        result.audit_id = op.audit_id
        # The lists grow in place: the end line carries them however the prune ends.
        op.end.update(deleted=result.deleted, skipped=result.skipped, failed=result.failed)
        op.emit(PhaseStarted("planning", "the retention plan again, over the inventory now"))
        fresh, warning = await asyncio.to_thread(current_plan, settings, verify=request.verify)
        if warning:
            op.emit(Notice("warning", warning))
        todo: list[Decision] = []
        for name, location in request.deletions:
            d = fresh.decision(name, location)
            if d is None or d.keep:
                why = "no longer in the inventory" if d is None else f"now kept: {d.reason}"
                result.skipped.append({"name": name, "location": location, "why": why})
                op.emit(Notice("info", f"not deleting {name} ({location}): {why}"))
            else:
                todo.append(d)
        op.emit(PhaseStarted("deleting", f"{len(todo)} of {len(request.deletions)} approved "
                                         "copies"))
        client = None
        if any(d.location == S3 for d in todo):
            from tui.core.s3 import s3_config

            s3 = s3_config(settings)
            client = await asyncio.to_thread(s3.client) if s3 is not None else None
        started = time.monotonic()
        for n, d in enumerate(todo):
            op.emit(Progress("deleting", n, len(todo), time.monotonic() - started, "items"))
            task = asyncio.ensure_future(asyncio.to_thread(delete_copy, settings, d, client))
            try:
                await asyncio.shield(task)
            except asyncio.CancelledError:
                # The copy being deleted finishes its steps (its metadata may be gone already)
                # and is recorded; then the prune stops.
                with contextlib.suppress(Exception):
                    await task
                if task.done() and not task.cancelled() and task.exception() is None:
                    _deleted(result, d, op.emit)
                raise
            except PgRunbookError as exc:
                result.failed.append({"name": d.name, "location": d.location,
                                      "reason": d.reason, "error": exc.message})
                op.emit(Notice("warning", f"could not delete {d.name} ({d.location}): "
                                          f"{exc.message}"))
                continue
            _deleted(result, d, op.emit)
        op.emit(Progress("deleting", len(todo), len(todo), time.monotonic() - started, "items"))
        op.end.update(freed_bytes={LOCAL: result.freed_bytes(LOCAL), S3: result.freed_bytes(S3)})
        if result.failed:
            op.verdict = "failed"
            op.problem = (f"{len(result.failed)} of {len(todo)} deletions failed; first: "
                          f"{result.failed[0]['name']} ({result.failed[0]['location']}): "
                          f"{result.failed[0]['error']}")
    return result


def _deleted(result: PruneResult, d: Decision, emit: Emit) -> None:
    result.deleted.append({"name": d.name, "location": d.location, "reason": d.reason,
                           "size_bytes": d.size_bytes})
    emit(Notice("info", f"deleted {d.name} ({d.location}): {d.reason}"))


# -- pinning -----------------------------------------------------------------------------------


def _local_meta_path(settings: Settings, name: str) -> Path:
    return settings.backup_dir / f"{name}{ARCHIVE_SUFFIX}{META_SUFFIX}"


def check_pin(settings: Settings, request: PinRequest) -> None:
    """Usage errors, before a pin job starts: a name that cannot be a backup's, or a backup
    that is neither in BACKUP_DIR nor (with S3) named like one."""
    from tui.core.s3 import s3_config

    name = request.backup
    if not name or "/" in name or name.startswith("."):
        raise ConfigError(f"{name!r} is not a backup name.", "Names are as `pgrunbook list` "
                                                            "shows them.")
    if _local_meta_path(settings, name).exists():
        return
    if s3_config(settings) is None or not STAMP_RE.match(name if len(name) > 15
                                                          else f"{name}_x"):
        raise ConfigError(f"no backup named {name!r} in {settings.backup_dir}.",
                          "Run `pgrunbook list` to see the names.")


def run_pin(settings: Settings, request: PinRequest, emit: Emit = ignore) -> PinResult:
    """Pin (or unpin) a backup: its local metadata (atomically) and its S3 metadata.json."""
    from tui.core.operation import operation

    check_pin(settings, request)
    name = request.backup
    what = "pin" if request.pinned else "unpin"
    record = {"by": operator_identity()["user"], "at": iso(utcnow()),
              "reason": request.reason} if request.pinned else None
    with operation(settings, what, emit, arguments={"backup": name}, reason=request.reason,
                   origin=request.origin, no_target=True) as op:
        op.end.update(backup=name)
        locations: list[str] = []
        changed = False
        meta_path = _local_meta_path(settings, name)
        if meta_path.exists():
            try:
                meta = read_meta(meta_path)
            except MetaError as exc:
                raise OperationFailed(f"the metadata of {name} is not usable ({exc}): "
                                      f"not {what}ned.") from None
            changed = _set_pin(meta, record) or changed
            write_meta(meta_path, meta)
            locations.append(LOCAL)
            op.emit(Notice("info", f"{what}ned {name} in {meta_path}"))
        remote = _pin_s3(settings, name, record, what, pinned_locally=bool(locations))
        if remote is not None:
            changed = remote or changed
            locations.append(S3)
            op.emit(Notice("info", f"{what}ned {name} in its S3 metadata.json"))
        if not locations:
            raise ConfigError(f"no backup named {name!r} in {settings.backup_dir} or S3.",
                              "Run `pgrunbook list` to see the names.")
        op.end.update(pinned=record, locations=locations, changed=changed)
    return PinResult(name, record, changed, tuple(locations))


def _set_pin(meta: dict[str, Any], record: dict[str, Any] | None) -> bool:
    """Put `record` in (or, None, take the pin out of) `meta`; whether it was (un)pinned."""
    was = bool(meta.get("pinned"))
    if record is None:
        meta.pop("pinned", None)
        return was
    meta["pinned"] = record
    return not was


def _pin_s3(settings: Settings, name: str, record: dict[str, Any] | None, what: str, *,
            pinned_locally: bool) -> bool | None:
    """Rewrite the S3 copy's metadata.json with (or without) the pin; None when there is no
    S3 copy (or no S3), else whether it changed."""
    from tui.core.s3 import META_KEY, describe_error, s3_config

    s3 = s3_config(settings)
    if s3 is None or not STAMP_RE.match(name if len(name) > 15 else f"{name}_x"):
        return None
    key = s3.key_for(name[:15], META_KEY)
    done = f"{name} is {what}ned locally, but " if pinned_locally else ""
    try:
        client = s3.client()
        try:
            body = client.get_object(Bucket=s3.bucket, Key=key)["Body"].read()
        except Exception as exc:
            if getattr(exc, "response", {}).get("Error", {}).get("Code") in ("NoSuchKey", "404"):
                return None
            raise
        meta = json.loads(body)
        if not isinstance(meta, dict) or (len(name) > 15 and meta.get("name") != name):
            return None
        changed = _set_pin(meta, record)
        client.put_object(Bucket=s3.bucket, Key=key, ContentType="application/json",
                          Body=json.dumps(meta, indent=2, ensure_ascii=False).encode(),
                          **s3.extra_put_args())
    except ValueError:
        raise OperationFailed(f"{done}its S3 metadata.json (s3://{s3.bucket}/{key}) is not "
                              "JSON.", "Look at it, or upload the backup again.") from None
    except Exception as exc:
        raise OperationFailed(f"{done}its S3 metadata.json could not be rewritten: "
                              f"{describe_error(exc)}.",
                              f"Retry: pgrunbook {what} {name}") from None
    # The bucket's lifecycle rules expire objects by their retention tag: a pinned backup's
    # objects are tagged "pinned" (no rule: kept for ever), an unpinned one's get their
    # calendar class again (the new metadata.json carries no tag yet).
    from tui.core.lifecycle import retag_backup

    try:
        retag_backup(client, s3, meta)
    except Exception as exc:
        raise OperationFailed(f"{name} is {what}ned in its metadata, but its S3 objects could "
                              f"not be re-tagged for the bucket's lifecycle rules: "
                              f"{describe_error(exc)}.",
                              f"Retry: pgrunbook {what} {name}") from None
    return changed
