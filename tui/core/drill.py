"""Restore drills: the SOP's backup verification without touching any real target.

A throwaway local PostgreSQL (or, with a target, a scratch database created and dropped on that
server) receives the backup through the same restore path as a real restore; the counts are
verified, the recovery time recorded in the backup's metadata and in a Markdown report.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
from psycopg import sql

import tui
from tui.core.audit import iso
from tui.core.cluster import ThrowawayCluster
from tui.core.errors import OperationFailed, PgRunbookError
from tui.core.events import Emit, Notice, PhaseStarted, ignore
from tui.core.fsutil import atomic_write_bytes, ensure_private_dir
from tui.core.metadata import read_meta, write_meta
from tui.core.operation import operation
from tui.core.pgtools import ServerLacksExtensions, connect, server_binaries
from tui.core.restore import RestoreRequest, RestoreResult, resolve_backup, run_restore
from tui.core.settings import Settings, Target
from tui.core.verify import VerifyReport


@dataclass
class DrillResult:
    backup: str
    passed: bool
    restore_seconds: float
    total_seconds: float
    report_path: Path
    verify: VerifyReport | None
    where: str
    server_version: str


def reports_dir(settings: Settings) -> Path:
    raw = settings.values.get("REPORTS_DIR", "reports")
    path = Path(raw).expanduser()
    if not path.is_absolute():
        base = settings.env_file.parent if settings.env_file else Path.cwd()
        path = base / path
    return path


async def run_drill(settings: Settings, spec: str, *, on_target: bool = False,
                    jobs: int | None = None, emit: Emit = ignore,
                    origin: str = "cli") -> DrillResult:
    entry = resolve_backup(settings, spec)
    if entry.meta is None:
        raise OperationFailed(f"backup {entry.name} has no readable metadata: "
                              f"{'; '.join(entry.problems)}.", "Choose another backup.")
    started = time.monotonic()
    with operation(settings, "drill", emit, reason="restore drill", origin=origin,
                   target=settings.target.public() if on_target else {"name": "throwaway"},
                   arguments={"backup": entry.name}) as op:
        op.end["backup"] = entry.name
        try:
            if on_target:
                result, where, version = await _drill_on_target(settings, entry.name, jobs,
                                                                op.emit)
            else:
                result, where, version = await _drill_throwaway(settings, entry, jobs, op.emit)
        except PgRunbookError as exc:
            _record(settings, entry.path, False, 0.0, None, str(exc))
            raise
        total = time.monotonic() - started
        passed = result.verify is not None and result.verify.passed
        report = write_report(settings, entry.meta, result, passed, where, version, total)
        _record(settings, entry.path, passed, result.restore_seconds, report, None)
        op.end.update(restore_seconds=round(result.restore_seconds, 3), report=str(report))
        if not passed:
            op.verdict, op.problem = "verify-failed", "counts differ"
    return DrillResult(entry.name, passed, result.restore_seconds, total, report, result.verify,
                       where, version)


async def _drill_throwaway(settings: Settings, entry: Any, jobs: int | None,
                           emit: Emit) -> tuple[RestoreResult, str, str]:
    source_major = int(str(entry.meta.get("server_version_num", 0))) // 10000 or None
    emit(PhaseStarted("starting", "a throwaway PostgreSQL for the drill"))
    try:
        # PG_BIN_DIR, the client tools' directories and Debian's layout.
        _major, bindir = server_binaries(source_major, settings.pg_bin_dir,
                                         extensions=_extensions_of(entry.meta))
        cluster = ThrowawayCluster(bindir=bindir)
        await asyncio.to_thread(cluster.start)
    except ServerLacksExtensions as exc:
        raise OperationFailed(f"cannot drill {entry.name}: {exc.message}",
                              f"{exc.hint} Or drill with --target NAME.") from None
    except PgRunbookError as exc:
        raise OperationFailed(
            f"cannot start a PostgreSQL {source_major or ''} server for the drill: {exc.message}",
            f"Install postgresql-{source_major}, set PG_BIN_DIR to a directory with a PostgreSQL "
            f"{source_major}+ server, or drill with --target NAME.",
        ) from None
    try:
        target = Target(name="drill", host=cluster.host, port=cluster.port,
                        dbname=str(entry.meta["source"].get("database") or "postgres"),
                        user="postgres", source="throwaway cluster")
        drill_settings = settings.with_target(target)
        request = RestoreRequest(backup=str(entry.path), jobs=jobs, confirmed=True,
                                 reason="restore drill", create_roles=True, origin="drill")
        result = await run_restore(drill_settings, request, emit)
        return result, f"throwaway PostgreSQL {cluster.major} on 127.0.0.1:{cluster.port}", \
            _server_version(drill_settings, target)
    finally:
        await asyncio.to_thread(cluster.stop)


def _extensions_of(meta: dict[str, Any]) -> frozenset[str]:
    """The extensions the backup's database had (its app_state), which the drill's server must
    be able to create."""
    recorded = (meta.get("app_state") or {}).get("extensions") or []
    return frozenset(str(e["name"]) for e in recorded if isinstance(e, dict) and e.get("name")
                     and e["name"] != "plpgsql")


def _server_version(settings: Settings, target: Target) -> str:
    with connect(target, settings) as conn:
        row = conn.execute("SELECT current_setting('server_version')").fetchone()
    return str(row[0]).split()[0] if row else "?"


async def _drill_on_target(settings: Settings, name: str, jobs: int | None,
                           emit: Emit) -> tuple[RestoreResult, str, str]:
    scratch = f"pgrunbook_drill_{datetime.now(UTC).strftime('%Y%m%d_%H%M%S')}"
    base = settings.target
    target = Target(name=f"{base.name}-drill", host=base.host, port=base.port, dbname=scratch,
                    user=base.user, password=base.password, production=False,
                    params=base.params, source=base.source)
    drill_settings = settings.with_target(target)
    emit(Notice("info", f"drilling into scratch database {scratch} on {base.host}:{base.port}"))
    try:
        request = RestoreRequest(backup=name, jobs=jobs, confirmed=True, owners="drop",
                                 reason="restore drill", origin="drill")
        result = await run_restore(drill_settings, request, emit)
        version = _server_version(drill_settings, target)
    finally:
        emit(PhaseStarted("cleaning up", f"dropping {scratch}"))
        with contextlib.suppress(PgRunbookError, psycopg.Error), \
                connect(base, settings, dbname="postgres") as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(scratch)))
    return result, f"scratch database {scratch} on {base.host}:{base.port}", version


def _record(settings: Settings, archive: Path, passed: bool, seconds: float,
            report: Path | None, error: str | None) -> None:
    """Write the drill's outcome into the backup's metadata (atomically)."""
    meta_path = archive.with_name(archive.name + ".meta")
    try:
        meta = read_meta(meta_path)
    except Exception:
        return
    meta["drill"] = {
        "verified_at": iso(datetime.now(UTC)),
        "result": "PASS" if passed else "FAIL",
        "restore_seconds": round(seconds, 3),
        "report": str(report) if report else None,
        "error": error,
    }
    write_meta(meta_path, meta)


def drill_differences(meta: dict[str, Any], result: RestoreResult) -> list[str]:
    """What a drill's throwaway cluster does not share with the real target."""
    out = list(result.notes)
    if not meta.get("dumped_as_superuser", True):
        out.append("the backup was taken by a non-superuser (hosted Supabase's postgres); "
                   "the drill restores as a superuser, so the schemas, extensions and event "
                   "triggers a real restore leaves to the target were restored here too")
    if any(w.startswith("extension-comment") for w in result.warnings):
        out.append("comments on extensions were not restored")
    out.append("roles have no passwords here, and nothing connects as them")
    return out


def write_report(settings: Settings, meta: dict[str, Any], result: RestoreResult, passed: bool,
                 where: str, version: str, total: float) -> Path:
    directory = ensure_private_dir(reports_dir(settings))
    stamp = datetime.now(UTC).strftime("%Y%m%d_%H%M%S")
    path = directory / f"drill_{stamp}_{meta['name']}.md"
    v = result.verify
    lines = [
        f"# Restore drill: {meta['name']} — {'PASS' if passed else 'FAIL'}",
        "",
        f"- When: {iso(datetime.now(UTC))}",
        f"- Backup: `{meta['archive']['file']}` ({meta['kind']}, taken {meta['created_at']}, "
        f"{meta['archive']['size_bytes']:,} bytes, sha256 `{meta['archive']['sha256'][:16]}…`)",
        f"- Source: {meta['source'].get('host')}:{meta['source'].get('port')}/"
        f"{meta['source'].get('database')} (PostgreSQL {meta.get('server_version')}, "
        f"pg_dump {meta.get('pg_dump_version')})",
        f"- Restored into: {where} (PostgreSQL {version})",
        f"- Time to restore: {result.restore_seconds:.1f} s; whole drill {total:.1f} s",
        f"- pgrunbook {tui.__version__}",
    ]
    lines += ["", "## How this drill differs from the source", ""]
    lines += [f"- {d}" for d in drill_differences(meta, result)]
    if result.filtered:
        lines += ["", "Left out because the target cannot accept them:", ""]
        lines += [f"- `{t}`" for t in result.filtered]
    if v is not None:
        lines += ["", f"## Row counts ({len(v.rows)} tables, {len(v.mismatches)} differ)", "",
                  "| table | expected | actual | difference | status |",
                  "| --- | ---: | ---: | ---: | --- |"]
        for r in v.ordered():
            actual = "missing" if r.actual is None else f"{r.actual:,}"
            diff = "" if r.difference is None else f"{r.difference:+,}"
            lines.append(f"| {r.schema}.{r.table} | {r.expected:,} | {actual} | {diff} | "
                         f"{r.status} |")
        if v.differences is not None:  # grants, RLS, sequences... (tui.core.appstate)
            lines += ["", f"## Application state ({len(v.failures)} failures, "
                          f"{len(v.warnings)} warnings)", ""]
            lines += [f"- {d.describe()}" for d in v.failures + v.warnings] or ["- all present"]
    atomic_write_bytes(path, ("\n".join(lines) + "\n").encode("utf-8"))
    return path
