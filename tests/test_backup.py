"""`pgrunbook backup` against a real PostgreSQL: checksums, exact counts, consistency under
writes, permissions, secrets, version checks, and clean failure."""

from __future__ import annotations

import hashlib
import json
import os
import resource
import signal
import stat
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import psycopg
import pytest

from tests.conftest import PASSWORD, Server, Workspace, clean_env, restore_bare


def _only_backup(ws: Workspace) -> tuple[Path, dict]:
    archives = sorted(ws.backup_dir.glob("*.backup"))
    assert len(archives) == 1, archives
    meta = json.loads((archives[0].parent / (archives[0].name + ".meta")).read_text())
    return archives[0], meta


def _assert_nothing_complete(ws: Workspace) -> None:
    names = sorted(p.name for p in ws.backup_dir.iterdir()) if ws.backup_dir.exists() else []
    leftovers = [n for n in names if n not in ("audit.log", "logs", "jobs")]
    assert leftovers == [], leftovers
    listing = ws.run("list", "--json", check=True)
    assert json.loads(listing.stdout) == []


def _audit(ws: Workspace) -> list[dict]:
    return [json.loads(line) for line in (ws.backup_dir / "audit.log").read_text().splitlines()]


@pytest.mark.parametrize("fixture", ["pagila", "supabase"])
def test_backup_checksum_and_counts_match_a_bare_restore(
    fixture: str, server: Server, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    dbname = request.getfixturevalue(f"{fixture}_db")
    ws = Workspace(tmp_path, server, dbname)
    ws.write_env()
    proc = ws.run("backup", "--reason", "test run", check=True)
    assert "Backup complete" in proc.stdout
    archive, meta = _only_backup(ws)

    assert archive.name.endswith("_manual.backup")
    assert meta["archive"]["sha256"] == hashlib.sha256(archive.read_bytes()).hexdigest()
    assert meta["archive"]["size_bytes"] == archive.stat().st_size
    assert meta["kind"] == "manual" and meta["reason"] == "test run"
    assert meta["source"]["database"] == dbname and "password" not in json.dumps(meta["source"])
    assert meta["server_version"].startswith("15.")
    assert meta["schema_version"] == 1

    scratch = restore_bare(server, archive, tmp_path)
    try:
        tables = [(t["schema"], t["name"]) for t in meta["tables"]]
        restored = server.counts(scratch, tables)
        expected = {(t["schema"], t["name"]): t["rows"] for t in meta["tables"]}
        assert restored == expected
        # Every table in the restored database is accounted for in the metadata.
        with server.connect(scratch) as conn:
            restored_tables = {
                (r[0], r[1]) for r in conn.execute(
                    "SELECT n.nspname, c.relname FROM pg_class c JOIN pg_namespace n"
                    " ON n.oid = c.relnamespace WHERE c.relkind = 'r' AND n.nspname"
                    " NOT IN ('pg_catalog', 'information_schema')").fetchall()
            }
        assert restored_tables <= set(expected)
    finally:
        server.drop_db(scratch)

    if fixture == "pagila":
        assert expected[("public", "rental")] == 16044
        # Partitions are counted one by one; the partitioned parent holds no rows of its own.
        assert ("public", "payment_p2022_01") in expected
        assert ("public", "payment") not in expected
    else:
        assert {"auth", "storage", "extensions", "public"} <= set(meta["schemas"])
        assert expected[("public", "transactions")] == 20_000


def test_counts_describe_the_dump_while_a_writer_inserts(workspace: Workspace, server: Server,
                                                         tmp_path: Path) -> None:
    stop = threading.Event()
    inserted = 0

    def writer() -> None:
        nonlocal inserted
        with server.connect(workspace.dbname) as conn:
            while not stop.is_set():
                conn.execute("INSERT INTO public.actor (first_name, last_name) VALUES ('W', 'R')")
                inserted += 1

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        while inserted < 50:  # the writer is demonstrably running before the backup starts
            time.sleep(0.01)
        workspace.run("backup", check=True)
    finally:
        stop.set()
        thread.join()
    archive, meta = _only_backup(workspace)
    counted = {(t["schema"], t["name"]): t["rows"] for t in meta["tables"]}
    live = server.counts(workspace.dbname, [("public", "actor")])[("public", "actor")]
    assert live > counted[("public", "actor")], "the writer inserted nothing after the snapshot"
    scratch = restore_bare(server, archive, tmp_path)
    try:
        assert server.counts(scratch, [("public", "actor")])[("public", "actor")] == \
            counted[("public", "actor")]
    finally:
        server.drop_db(scratch)


def test_files_are_private_and_the_audit_trail_records_the_backup(workspace: Workspace) -> None:
    workspace.run("backup", "pre_major_release_v2.1", "--kind", "release", "--reason",
                  "release 2.1", check=True)
    archive, meta = _only_backup(workspace)
    assert archive.name.endswith("_pre_major_release_v2.1.backup")
    assert meta["kind"] == "release"
    assert stat.S_IMODE(workspace.backup_dir.stat().st_mode) == 0o700
    for f in workspace.backup_dir.rglob("*"):
        assert stat.S_IMODE(f.stat().st_mode) == (0o700 if f.is_dir() else 0o600), f
    lines = _audit(workspace)
    assert [(e["operation"], e["event"]) for e in lines] == [("backup", "start"),
                                                              ("backup", "end")]
    end = lines[-1]
    assert end["result"] == "ok" and end["reason"] == "release 2.1"
    assert end["operator"]["user"] and end["target"]["database"] == workspace.dbname
    assert end["backup"] == meta["name"] and end["duration_seconds"] >= 0
    shown = workspace.run("audit", check=True).stdout
    assert "backup" in shown and "ok" in shown and "release 2.1" in shown


def test_the_password_never_appears_in_argv_output_or_audit(workspace: Workspace) -> None:
    secret = PASSWORD.encode()
    seen_pg_dump = []
    leaks = []
    stop = threading.Event()

    def watch() -> None:
        while not stop.is_set():
            for pid in os.listdir("/proc"):
                if not pid.isdigit():
                    continue
                try:
                    cmdline = Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                if b"pg_dump" in cmdline and b"--snapshot" in cmdline:
                    seen_pg_dump.append(pid)
                if secret in cmdline:
                    leaks.append(cmdline)

    def passfile_dirs() -> set[Path]:
        return {p for p in Path(tempfile.gettempdir()).glob("pgrunbook-*") if (p / "pgpass").exists()}

    before = passfile_dirs()
    thread = threading.Thread(target=watch)
    thread.start()
    try:
        proc = workspace.run("-v", "backup", check=True)
        proc2 = workspace.run("list", "--json", check=True)
        proc3 = workspace.run("audit", "--json", check=True)
    finally:
        stop.set()
        thread.join()
    assert seen_pg_dump, "the watcher never saw pg_dump run, so it proved nothing"
    assert leaks == []
    for text in (proc.stdout, proc.stderr, proc2.stdout, proc3.stdout):
        assert PASSWORD not in text
    for f in workspace.backup_dir.rglob("*"):
        assert f.is_dir() or secret not in f.read_bytes(), f
    # The temporary PGPASSFILE is gone.
    assert passfile_dirs() == before


def test_a_pg_dump_older_than_the_server_is_refused(workspace: Workspace, tmp_path: Path) -> None:
    # Only PostgreSQL 15 can run here, so an older client is a stand-in script that reports 14.
    stub = tmp_path / "pg14"
    stub.mkdir()
    for tool in ("pg_dump", "pg_restore", "psql"):
        script = stub / tool
        script.write_text(f"#!/bin/sh\necho '{tool} (PostgreSQL) 14.11'\n")
        script.chmod(0o755)
    workspace.write_env(PG_BIN_DIR=str(stub))
    proc = workspace.run("backup")
    assert proc.returncode == 2
    assert "PostgreSQL 15" in proc.stderr and "14.11" in proc.stderr
    assert "postgresql-client-15" in proc.stderr
    assert "Traceback" not in proc.stderr
    _assert_nothing_complete(workspace)


def _wait_for(predicate, what: str, timeout: float = 30.0):  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def _pg_dump_pid(dbname: str) -> int | None:
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
            except OSError:
                continue
            if cmd and cmd[0].endswith(b"pg_dump") and f"--dbname={dbname}".encode() in cmd:
                return int(pid)
    return None


def _blocked_backup(workspace: Workspace, server: Server):  # type: ignore[no-untyped-def]
    """Start a backup that waits on a lock we hold, so it is mid-dump for as long as we like."""
    locker = server.connect(workspace.dbname, autocommit=False)
    locker.execute("LOCK TABLE public.rental IN ACCESS EXCLUSIVE MODE")
    proc = subprocess.Popen(workspace.cli_argv("backup"), cwd=workspace.path, env=clean_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    pid = _wait_for(lambda: _pg_dump_pid(workspace.dbname), "pg_dump to start")

    def waiting() -> bool:
        with server.connect() as conn:
            row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s"
                               " AND application_name = 'pgrunbook' AND wait_event_type = 'Lock'",
                               [workspace.dbname]).fetchone()
            return bool(row and row[0])

    _wait_for(waiting, "pg_dump to wait on the lock")
    return proc, pid, locker


@pytest.mark.parametrize("how", ["kill-pg_dump", "sigint", "sigterm"])
def test_an_interrupted_backup_leaves_nothing_that_looks_complete(
    how: str, workspace: Workspace, server: Server
) -> None:
    proc, dump_pid, locker = _blocked_backup(workspace, server)
    try:
        if how == "kill-pg_dump":
            os.kill(dump_pid, signal.SIGKILL)
        else:
            proc.send_signal(signal.SIGINT if how == "sigint" else signal.SIGTERM)
        out, err = proc.communicate(timeout=60)
    finally:
        locker.close()
    assert "Traceback" not in err
    if how == "kill-pg_dump":
        assert proc.returncode == 1
        assert "pg_dump was killed by SIGKILL" in err
    else:
        assert proc.returncode == 130
        assert "interrupted" in err and "partial file removed" in err
        assert not Path(f"/proc/{dump_pid}").exists() or \
            "zombie" in Path(f"/proc/{dump_pid}/status").read_text()
    error_part = err[err.index("error:"):].strip().splitlines()
    assert len(error_part) <= 2, err
    _assert_nothing_complete(workspace)
    end = _audit(workspace)[-1]
    assert end["event"] == "end"
    assert end["result"] == ("failed" if how == "kill-pg_dump" else "interrupted")


def test_a_write_error_mid_dump_leaves_nothing_that_looks_complete(workspace: Workspace) -> None:
    workspace.backup_dir.mkdir(mode=0o700)
    # A real write error: the file-size limit makes write() fail with EFBIG part-way through.
    workspace.run("audit")  # creates nothing, but imports are warm

    def limit() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (100_000, 100_000))

    proc = workspace.run("backup", preexec_fn=limit)
    assert proc.returncode == 1, proc.stderr
    assert "no space left" in proc.stderr and "partial file was removed" in proc.stderr
    assert "Traceback" not in proc.stderr
    _assert_nothing_complete(workspace)
    assert _audit(workspace)[-1]["result"] == "failed"


def test_backup_refuses_when_the_estimate_does_not_fit(workspace: Workspace) -> None:
    workspace.run("backup", check=True)
    archive, meta = _only_backup(workspace)
    # Make the last backup look enormous (a sparse file), so the estimate exceeds free space.
    huge = 1 << 43
    os.truncate(archive, huge)
    meta["archive"]["size_bytes"] = huge
    (archive.parent / (archive.name + ".meta")).write_text(json.dumps(meta))
    proc = workspace.run("backup")
    assert proc.returncode == 1
    assert "not enough free space" in proc.stderr and "last backup" in proc.stderr
    assert len(list(workspace.backup_dir.glob("*.backup"))) == 1


@pytest.mark.parametrize("name", ["../escape", "a/b", "..", "bad name", "x" * 101, "-lead"])
def test_bad_backup_names_are_refused(workspace: Workspace, name: str) -> None:
    proc = workspace.run("backup", "--", name)
    assert proc.returncode == 2
    assert "not allowed" in proc.stderr and "Traceback" not in proc.stderr
    assert not workspace.backup_dir.exists()


def test_a_release_backup_needs_a_name(workspace: Workspace) -> None:
    proc = workspace.run("backup", "--kind", "release")
    assert proc.returncode == 2 and "needs a name" in proc.stderr


def test_default_names_follow_the_sop(workspace: Workspace) -> None:
    for kind, label in [("pre-migration", "pre_migration"),
                        ("emergency", "emergency_pre_rollback")]:
        proc = workspace.run("backup", "--kind", kind, "--json", check=True)
        assert json.loads(proc.stdout)["name"].endswith("_" + label)


def test_exclusions_are_honoured_and_counted_from_the_archive(workspace: Workspace) -> None:
    proc = workspace.run("backup", "--exclude-table-data", "public.payment_p2022_0*",
                         "--compress", "gzip:1", "--json", check=True)
    name = json.loads(proc.stdout)["name"]
    meta = json.loads((workspace.backup_dir / f"{name}.backup.meta").read_text())
    counted = {t["name"] for t in meta["tables"]}
    assert "rental" in counted and not any(n.startswith("payment_p2022_0") for n in counted)
    assert meta["archive"]["compression"] == "gzip:1"
    assert (workspace.backup_dir / f"{name}.backup").read_bytes()[:5] == b"PGDMP"


def test_connection_failures_are_one_plain_line(workspace: Workspace) -> None:
    workspace.write_env(SUPABASE_DB_PASSWORD="wrong-password")
    proc = workspace.run("backup")
    assert proc.returncode == 1
    assert "password authentication failed for user 'postgres'" in proc.stderr
    assert "wrong-password" not in proc.stderr and "Traceback" not in proc.stderr
    workspace.write_env(SUPABASE_DB_PORT="1")
    proc = workspace.run("backup")
    assert proc.returncode == 1 and "connection refused" in proc.stderr


def test_the_engine_reports_typed_progress(workspace: Workspace) -> None:
    import asyncio

    from tui.core.backup import BackupRequest, run_backup
    from tui.core.events import (
        BackupFinished,
        DumpProgress,
        OperationEnded,
        OperationStarted,
        PhaseStarted,
    )
    from tui.core.settings import load_settings

    settings = load_settings(env_file=workspace.env_file, environ=clean_env())
    events: list[object] = []
    result = asyncio.run(run_backup(settings, BackupRequest(reason="events"), events.append))
    phases = [e.phase for e in events if isinstance(e, PhaseStarted)]
    assert phases == ["connecting", "dumping", "checking", "counting"]
    progress = [e for e in events if isinstance(e, DumpProgress)]
    assert progress and progress[-1].bytes_written == result.size_bytes
    # The operation's own audit record opens first and closes last, around the backup's events.
    assert isinstance(events[0], OperationStarted) and isinstance(events[-1], OperationEnded)
    assert events[-1].result == "ok"
    assert isinstance(events[-2], BackupFinished) and events[-2].sha256 == result.sha256


def test_writers_are_not_blocked_by_the_snapshot(workspace: Workspace, server: Server) -> None:
    # The exporting transaction is read-only and ends with the backup: no locks linger.
    workspace.run("backup", check=True)
    with server.connect() as conn:
        row = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE datname = %s "
                           "AND application_name = 'pgrunbook'", [workspace.dbname]).fetchone()
    assert row[0] == 0
    with psycopg.connect(host="127.0.0.1", port=server.port, user="postgres",
                         password=server.password, dbname=workspace.dbname) as conn:
        conn.execute("INSERT INTO public.actor (first_name, last_name) VALUES ('a', 'b')")
