"""`pgrunbook restore`, `verify` and `drill` against a real PostgreSQL."""

from __future__ import annotations

import difflib
import hashlib
import json
import signal
import stat
import subprocess
from pathlib import Path

import pytest

from tests.conftest import Server, Workspace, clean_env
from tests.test_backup import _wait_for
from tui.core.locks import ADVISORY_CLASS, target_lock_file


def _backup(ws: Workspace, *args: str) -> dict:
    out = ws.run("backup", *args, "--json", check=True).stdout
    name = json.loads(out)["name"]
    return json.loads((ws.backup_dir / f"{name}.backup.meta").read_text())


def _counts(server: Server, dbname: str, meta: dict) -> dict:
    return server.counts(dbname, [(t["schema"], t["name"]) for t in meta["tables"]])


def _expected(meta: dict) -> dict:
    return {(t["schema"], t["name"]): t["rows"] for t in meta["tables"]}


def _schema(server: Server, dbname: str) -> str:
    env = {**clean_env(), "PGPASSWORD": server.password}
    out = subprocess.run(
        [str(server.bindir / "pg_dump"), "--schema-only", "--no-owner", "--no-privileges",
         "-h", "127.0.0.1", "-p", str(server.port), "-U", "postgres", dbname],
        capture_output=True, text=True, env=env, check=True).stdout
    return "\n".join(ln for ln in out.splitlines()
                     if ln.strip() and not ln.startswith(("--", "\\restrict", "\\unrestrict")))


def _damage(server: Server, dbname: str, sql_text: str) -> None:
    with server.connect(dbname) as conn:
        conn.execute(sql_text)


DAMAGE = {
    "pagila": "DELETE FROM public.film_actor WHERE actor_id % 3 = 0; DROP TABLE public.film_category CASCADE",
    "supabase": "DELETE FROM public.transactions WHERE id % 5 = 0; DROP TABLE public.budgets",
}


@pytest.mark.parametrize("fixture", ["pagila", "supabase"])
def test_restore_latest_after_damage_brings_back_exact_counts_and_schema(
    fixture: str, server: Server, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    dbname = request.getfixturevalue(f"{fixture}_db")
    ws = Workspace(tmp_path, server, dbname)
    ws.write_env()
    meta = _backup(ws, "--reason", "before damage")
    schema_before = _schema(server, dbname)
    _damage(server, dbname, DAMAGE[fixture])
    damaged = _counts(server, dbname, {"tables": [t for t in meta["tables"]
                                                  if t["name"] not in ("film_category",
                                                                       "budgets")]})
    proc = ws.run("restore", "latest", "--yes", "--reason", "test: damage")
    assert proc.returncode == 0, proc.stderr
    # A restore whose verification passed offers no undo, only the safety backup's name.
    assert "VERIFICATION PASS" in proc.stdout and "To undo this restore" not in proc.stdout
    assert "_emergency_pre_rollback holds the state before this restore" in proc.stdout
    assert _counts(server, dbname, meta) == _expected(meta)
    # The verification ANALYZEd every restored table that holds rows (pg_restore does not).
    with server.connect(dbname) as conn:
        unanalyzed = [f"{t['schema']}.{t['name']}" for t in meta["tables"] if t["rows"] and not
                      conn.execute("SELECT 1 FROM pg_statistic WHERE starelid = "
                                   "format('%%I.%%I', %s::text, %s::text)::regclass LIMIT 1",
                                   (t["schema"], t["name"])).fetchone()]
    assert unanalyzed == []
    schema_after = _schema(server, dbname)
    diff = "\n".join(difflib.unified_diff(schema_before.splitlines(), schema_after.splitlines(),
                                          lineterm="", n=1))
    assert schema_after == schema_before, diff[:3000]

    # The safety backup holds the damaged state, and restoring it brings that state back.
    listing = json.loads(ws.run("list", "--json", check=True).stdout)
    safety = [e for e in listing if e["kind"] == "emergency"]
    assert len(safety) == 1 and safety[0]["name"].endswith("_emergency_pre_rollback")
    assert safety[0]["problems"] == []
    undo = ws.run("restore", safety[0]["name"], "--yes", check=True)
    assert "VERIFICATION PASS" in undo.stdout
    assert _counts(server, dbname, {"tables": [t for t in meta["tables"]
                                               if t["name"] not in ("film_category",
                                                                    "budgets")]}) == damaged
    # `latest` never means a safety copy of a bad state.
    again = ws.run("restore", "latest", "--yes", "--json", check=True)
    assert json.loads(again.stdout)["backup"] == meta["name"]

    audit = [json.loads(line) for line in (ws.backup_dir / "audit.log").read_text().splitlines()]
    ends = [e for e in audit if e["operation"] == "restore" and e["event"] == "end"]
    assert ends[0]["result"] == "ok" and ends[0]["reason"] == "test: damage"
    assert ends[0]["safety_backup"].endswith("_emergency_pre_rollback")


def _flip(path: Path, offset: int = 300) -> None:
    with path.open("r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x40]))


@pytest.mark.parametrize("damage", ["bit-flip", "truncate"])
def test_a_damaged_archive_is_refused_before_the_target_is_touched(
    damage: str, workspace: Workspace, server: Server
) -> None:
    meta = _backup(workspace)
    archive = workspace.backup_dir / meta["archive"]["file"]
    if damage == "bit-flip":
        _flip(archive)
    else:
        with archive.open("r+b") as f:
            f.truncate(archive.stat().st_size // 2)
    _damage(server, workspace.dbname, "DELETE FROM public.film_actor WHERE actor_id > 100")
    before = _counts(server, workspace.dbname, meta)
    proc = workspace.run("restore", meta["name"], "--yes")
    assert proc.returncode == 1
    assert "damaged" in proc.stderr and "Nothing was changed" in proc.stderr
    assert _counts(server, workspace.dbname, meta) == before
    assert [p.name for p in workspace.backup_dir.glob("*emergency*")] == []


def _rewrite_meta(ws: Workspace, meta: dict, archive: Path) -> None:
    meta["archive"]["sha256"] = hashlib.sha256(archive.read_bytes()).hexdigest()
    meta["archive"]["size_bytes"] = archive.stat().st_size
    (archive.parent / (archive.name + ".meta")).write_text(json.dumps(meta))


def test_an_archive_from_a_newer_pg_dump_is_refused(workspace: Workspace) -> None:
    meta = _backup(workspace, "--compress", "gzip:1")
    archive = workspace.backup_dir / meta["archive"]["file"]
    # A pg_dump 16 archive, as far as this machine can make one: format 1.15 in the header.
    data = bytearray(archive.read_bytes())
    assert data[:5] == b"PGDMP" and (data[5], data[6]) == (1, 14)
    data[6] = 15
    archive.write_bytes(bytes(data))
    _rewrite_meta(workspace, meta, archive)
    proc = workspace.run("restore", meta["name"], "--yes")
    assert proc.returncode == 1 and "newer pg_dump" in proc.stderr and "1.15" in proc.stderr
    meta["pg_dump_version"] = "16.4"
    _rewrite_meta(workspace, meta, archive)
    proc = workspace.run("restore", meta["name"], "--yes")
    assert proc.returncode == 2
    assert "PostgreSQL 16" in proc.stderr and "postgresql-client-16" in proc.stderr


def test_a_restore_that_fails_part_way_is_a_failure(workspace: Workspace, server: Server) -> None:
    with server.connect(workspace.dbname) as conn:
        conn.execute("CREATE ROLE ghost NOLOGIN")
        conn.execute("CREATE TABLE public.ghost_t (id int); ALTER TABLE public.ghost_t OWNER TO ghost")
    try:
        meta = _backup(workspace)
        with server.connect(workspace.dbname) as conn:
            conn.execute("DROP TABLE public.ghost_t")
            conn.execute("DROP ROLE ghost")
        proc = workspace.run("restore", meta["name"], "--yes", "--owners", "keep")
    finally:
        with server.connect(workspace.dbname) as conn:
            conn.execute("DROP TABLE IF EXISTS public.ghost_t")
        with server.connect() as conn:
            conn.execute("DROP ROLE IF EXISTS ghost")
    assert proc.returncode == 1, proc.stdout
    assert "FAILED" in proc.stderr and 'role "ghost" does not exist' in proc.stderr
    assert "--owners drop" in proc.stderr and "Undo with: pgrunbook" in proc.stderr
    # The raw pg_restore output is kept in the operation's log.
    log = Path(proc.stderr.split("Full output: ")[1].split()[0])
    assert 'role "ghost" does not exist' in log.read_text() and "pg_restore:" in log.read_text()
    assert "VERIFICATION PASS" not in proc.stdout


def test_production_needs_the_typed_database_name(workspace: Workspace, server: Server) -> None:
    workspace.write_env(PGRUNBOOK_PRODUCTION_TARGETS="testdb")
    meta = _backup(workspace)
    proc = workspace.run("restore", "latest", "--yes")
    assert proc.returncode == 2 and "--yes alone is not enough" in proc.stderr
    proc = workspace.run("restore", "latest", "--confirm", "wrong_db")
    assert proc.returncode == 2 and "does not match" in proc.stderr
    assert not list(workspace.backup_dir.glob("*emergency*"))
    # The archive was being decompressed in the background while the target was checked: a
    # refusal leaves no temp file behind.
    assert not list(workspace.backup_dir.glob(".*partial-*"))
    proc = workspace.run("restore", "latest", "--confirm", workspace.dbname)
    assert proc.returncode == 0, proc.stderr
    assert _counts(server, workspace.dbname, meta) == _expected(meta)


def test_a_second_restore_on_the_same_target_is_refused(workspace: Workspace,
                                                        server: Server) -> None:
    _backup(workspace)
    with target_lock_file(workspace.backup_dir, "testdb", "restore"):
        proc = workspace.run("restore", "latest", "--yes")
    assert proc.returncode == 1 and "another restore on target 'testdb' is running" in proc.stderr
    assert "pid" in proc.stderr
    # Another host's restore is seen through the advisory lock on the database itself.
    with server.connect(workspace.dbname) as holder:
        holder.execute("SET application_name = 'pgrunbook-elsewhere'")
        holder.execute("SELECT pg_advisory_lock(%s, hashtext(current_database()))",
                       [ADVISORY_CLASS])
        proc = workspace.run("restore", "latest", "--yes", "--terminate-connections")
    assert proc.returncode == 1 and "holds its lock" in proc.stderr
    assert "pgrunbook-elsewhere" in proc.stderr
    assert not list(workspace.backup_dir.glob(".*partial-*"))


def test_sessions_on_the_target_are_listed_and_ended_only_when_asked(
    workspace: Workspace, server: Server
) -> None:
    meta = _backup(workspace)
    app = server.connect(workspace.dbname)
    app.execute("SET application_name = 'the-app'")
    try:
        proc = workspace.run("restore", "latest", "--yes")
        assert proc.returncode == 1 and "the-app" in proc.stderr
        assert "--terminate-connections" in proc.stderr
        proc = workspace.run("restore", "latest", "--yes", "--terminate-connections")
        assert proc.returncode == 0, proc.stderr
        assert _counts(server, workspace.dbname, meta) == _expected(meta)
        assert app.closed or app.broken or _is_dead(app)
    finally:
        app.close()


def _is_dead(conn) -> bool:  # type: ignore[no-untyped-def]
    try:
        conn.execute("SELECT 1")
    except Exception:
        return True
    return False


def test_a_lock_held_by_the_application_times_out_clearly(workspace: Workspace,
                                                          server: Server) -> None:
    _backup(workspace)
    locker = server.connect(workspace.dbname, autocommit=False)
    locker.execute("SET application_name = 'pgrunbook'")  # survives --terminate-connections
    # An application transaction that read a table: pg_dump may share it, DROP may not.
    locker.execute("SELECT count(*) FROM public.rental")
    try:
        proc = workspace.run("restore", "latest", "--yes", "--terminate-connections",
                             "--lock-timeout", "500ms")
    finally:
        locker.close()
    assert proc.returncode == 1
    assert "lock timeout" in proc.stderr and "nothing was changed" in proc.stderr
    assert "--lock-timeout" in proc.stderr


def test_ctrl_c_stops_pg_restore_and_points_at_the_safety_backup(workspace: Workspace,
                                                                 server: Server) -> None:
    _backup(workspace)
    # pg_restore's first CREATE TABLE waits for a lock the test holds: it is running, and
    # stays there.
    holder = server.block_create_table(workspace.dbname, 4242)
    proc = subprocess.Popen(workspace.cli_argv("restore", "latest", "--yes",
                                               "--terminate-connections"),
                            cwd=workspace.path, env=clean_env(), stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        def restoring() -> bool:
            with server.connect() as conn:
                row = conn.execute(
                    "SELECT count(*) FROM pg_stat_activity WHERE datname = %s AND "
                    "wait_event = 'advisory'", [workspace.dbname]).fetchone()
                return bool(row[0])

        try:
            _wait_for(restoring, "pg_restore to wait on the advisory lock", timeout=20)
        except AssertionError:
            proc.kill()
            raise AssertionError(proc.communicate()[1]) from None
        restore_pids = [int(p) for p in _pids_of("pg_restore")]
        assert restore_pids
        # The decompressed copy pg_restore reads is as private as the archive.
        copies = list(workspace.backup_dir.glob(".*.restore.partial-*"))
        assert copies and {stat.S_IMODE(c.stat().st_mode) for c in copies} == {0o600}, copies
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=60)
    finally:
        holder.close()
    assert proc.returncode == 130
    assert "restore interrupted" in err and "Undo with: pgrunbook" in err
    assert "emergency_pre_rollback" in err and "Traceback" not in err
    for pid in restore_pids:
        assert not Path(f"/proc/{pid}").exists(), "pg_restore outlived the interrupt"
    assert not list(workspace.backup_dir.glob(".*partial-*")), "a temp file was left behind"
    audit = [json.loads(x) for x in (workspace.backup_dir / "audit.log").read_text().splitlines()]
    assert audit[-1]["result"] == "interrupted" and audit[-1]["safety_backup"]


def _pids_of(name: str) -> list[str]:
    pids = []
    for pid in Path("/proc").iterdir():
        if pid.name.isdigit():
            try:
                argv0 = (pid / "cmdline").read_bytes().split(b"\0")[0]
            except OSError:
                continue
            if argv0.endswith(name.encode()):
                pids.append(pid.name)
    return pids


def test_verify_names_the_tables_that_differ(workspace: Workspace, server: Server) -> None:
    meta = _backup(workspace)
    ok = workspace.run("verify", meta["name"])
    assert ok.returncode == 0 and "VERIFICATION PASS" in ok.stdout
    _damage(server, workspace.dbname, "DELETE FROM public.film_actor WHERE actor_id = 1;"
                                      " DROP TABLE public.film_category CASCADE")
    proc = workspace.run("verify", meta["name"], "--json")
    assert proc.returncode == 3
    report = json.loads(proc.stdout)
    assert report["result"] == "FAIL"
    bad = {t["table"]: t for t in report["tables"] if t["status"] != "ok"}
    assert set(bad) == {"film_actor", "film_category"}
    assert bad["film_actor"]["difference"] == -19 and bad["film_category"]["actual"] is None
    assert report["tables"][0]["status"] != "ok"  # mismatches first
    text = workspace.run("verify", meta["name"]).stdout
    assert "VERIFICATION FAIL: 2 of" in text and "public.film_actor" in text


def test_verify_without_a_backup_uses_the_one_last_restored(workspace: Workspace) -> None:
    meta = _backup(workspace)
    workspace.run("restore", meta["name"], "--yes", check=True)
    proc = workspace.run("verify", "--json")
    assert proc.returncode == 0 and json.loads(proc.stdout)["backup"] == meta["name"]


@pytest.mark.parametrize("fixture", ["pagila", "supabase"])
def test_drill_passes_writes_a_report_and_updates_the_metadata(
    fixture: str, server: Server, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    dbname = request.getfixturevalue(f"{fixture}_db")
    ws = Workspace(tmp_path, server, dbname)
    ws.write_env()
    meta = _backup(ws)
    proc = ws.run("drill", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["result"] == "PASS" and result["backup"] == meta["name"]
    assert result["restored_into"].startswith("throwaway PostgreSQL 15")
    report = Path(result["report"])
    text = report.read_text()
    assert "PASS" in text and meta["name"] in text and "| table | expected" in text
    updated = json.loads((ws.backup_dir / f"{meta['name']}.backup.meta").read_text())
    assert updated["drill"]["result"] == "PASS" and updated["drill"]["restore_seconds"] > 0
    assert updated["archive"] == meta["archive"]
    listing = ws.run("list", check=True).stdout
    assert "PASS" in listing and "DRILL" in listing
    # The real target was not touched: no safety backup, nothing restored there.
    assert not list(ws.backup_dir.glob("*emergency*"))


def test_drill_on_a_target_uses_a_scratch_database(workspace: Workspace, server: Server) -> None:
    _backup(workspace)
    proc = workspace.run("drill", "--target", "testdb", "--json")
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout)
    assert result["result"] == "PASS" and "scratch database pgrunbook_drill_" in \
        result["restored_into"]
    with server.connect() as conn:
        left = conn.execute("SELECT count(*) FROM pg_database WHERE datname LIKE "
                            "'pgrunbook_drill_%'").fetchone()
    assert left[0] == 0


def test_early_verification_waits_for_every_entry_that_locks_a_table(
        workspace: Workspace) -> None:
    """A table is counted during the restore only after everything that locks it: its data,
    its indexes and constraints, the foreign keys of other tables pointing at it, triggers."""
    from tui.core.archive import read_toc
    from tui.core.pgtools import find_tool
    from tui.core.settings import load_settings
    from tui.core.verify import table_blockers

    meta = _backup(workspace)
    archive = workspace.backup_dir / meta["archive"]["file"]
    settings = load_settings(env_file=workspace.env_file, environ=clean_env())
    pg_restore = find_tool("pg_restore", settings, 15, "test").path
    toc = read_toc(archive, pg_restore)  # as stored: the zstd container
    deps = toc.deps
    assert any(deps.values()), "pg_restore --list --verbose gave no dependencies"
    tables = [(t["schema"], t["name"]) for t in meta["tables"]]
    blockers = table_blockers(toc.entries, deps, tables, skipped=set(), privileges=False)
    text = {e.dump_id: e.text for e in toc.entries}

    film = {text[d].rsplit(" ", 1)[0] for d in blockers[("public", "film")]}
    assert "TABLE DATA public film" in film
    assert "CONSTRAINT public film film_pkey" in film
    assert "INDEX public film_fulltext_idx" in film
    # Other tables' foreign keys that reference film lock it too.
    assert "FK CONSTRAINT public film_actor film_actor_film_id_fkey" in film
    assert "FK CONSTRAINT public inventory inventory_film_id_fkey" in film
    assert "TRIGGER public film film_fulltext_trigger" in film
    assert not any("actor_pkey" in b or "idx_actor_last_name" in b for b in film)
    # Nothing of the pre-data section (done before pg_restore's workers start).
    assert not any(b.startswith(("TABLE public", "SEQUENCE ", "DEFAULT ")) for b in film)
    # Grants count only when they are restored.
    with_acl = table_blockers(toc.entries, deps, tables, skipped=set(), privileges=True)
    assert blockers[("public", "film")] <= with_acl[("public", "film")]


PROBE = """
CREATE SCHEMA probe;
CREATE TABLE probe.seen (tag text, mwm text, lock_timeout text);
CREATE FUNCTION probe.note() RETURNS event_trigger LANGUAGE plpgsql AS $$
BEGIN
  INSERT INTO probe.seen VALUES (tg_tag, current_setting('maintenance_work_mem'),
                                 current_setting('lock_timeout'));
END $$;
CREATE EVENT TRIGGER probe_note ON ddl_command_end EXECUTE FUNCTION probe.note();
"""


@pytest.mark.parametrize(("index_memory", "expected"), [("512MB", "256MB"), ("0", "64MB")])
def test_pg_restore_sessions_build_indexes_with_the_index_memory(
        workspace: Workspace, server: Server, index_memory: str, expected: str) -> None:
    """What the restore's sessions run with, seen from inside them: an event trigger (not part
    of the archive) records the settings of every DDL command."""
    _backup(workspace)
    workspace.write_env(RESTORE_INDEX_MEMORY=index_memory)
    _damage(server, workspace.dbname, PROBE)
    proc = workspace.run("restore", "latest", "--yes", "--jobs", "2", "--no-verify",
                         "--lock-timeout", "7s")
    assert proc.returncode == 0, proc.stderr
    with server.connect(workspace.dbname) as conn:
        seen = conn.execute("SELECT tag, mwm, lock_timeout FROM probe.seen").fetchall()
        conn.execute("DROP EVENT TRIGGER probe_note")
    by_tag: dict[str, set[tuple[str, str]]] = {}
    for tag, mwm, lock_timeout in seen:
        by_tag.setdefault(tag, set()).add((mwm, lock_timeout))
    # pg_restore's sessions: 512MB shared by 2 jobs; 0 keeps the server's default of 64MB.
    # (pg_restore itself sets lock_timeout = 0 at the start of each session.)
    for tag in ("CREATE TABLE", "CREATE INDEX", "ALTER TABLE"):
        assert by_tag[tag] == {(expected, "0")}, (tag, by_tag)
    # pgrunbook's own session empties the schemas under --lock-timeout.
    assert by_tag["DROP SCHEMA"] == {("64MB", "7s")}, by_tag
    if expected != "64MB":
        assert f"maintenance_work_mem {expected} each" in proc.stdout + proc.stderr


def test_verification_during_a_restore_waits_for_a_free_job_slot(workspace: Workspace,
                                                                  server: Server) -> None:
    """While pg_restore runs, a ready table is counted only in a job slot pg_restore leaves
    free: verification tasks plus pg_restore's items in flight never exceed --jobs. Driven
    with pg_restore's item reports, against the real database; film's count is held on a lock
    the test takes, so it stays running while the slots are checked."""
    from tui.core.settings import load_settings
    from tui.core.verify import TableVerifier

    meta = _backup(workspace)
    settings = load_settings(env_file=workspace.env_file, environ=clean_env())
    film, actor = ("public", "film"), ("public", "actor")
    verifier = TableVerifier(settings, meta, {film: {101}, actor: {102}}, jobs=2)
    holder = server.connect(workspace.dbname, autocommit=False)
    try:
        holder.execute("LOCK TABLE public.film IN ACCESS EXCLUSIVE MODE")
        verifier.item_launched(101)
        verifier.item_launched(102)
        verifier.dispatch()
        assert verifier.tasks_running == 0  # nothing ready, and both slots are pg_restore's

        verifier.item_finished(101)  # film is ready; one slot is free
        verifier.dispatch()
        assert verifier.tasks_running == 1

        def waiting_on_film() -> set[str]:
            with server.connect(workspace.dbname) as conn:
                return {str(r[0]).split()[0] for r in conn.execute(
                    "SELECT query FROM pg_stat_activity WHERE wait_event_type = 'Lock'"
                    " AND query LIKE '%%\"film\"%%'").fetchall()}

        _wait_for(lambda: waiting_on_film() == {"SELECT"},
                  "the count of film to wait on the test's lock")

        verifier.item_launched(103)  # pg_restore takes the slot again ...
        verifier.item_finished(102)  # ... and actor becomes ready: still no free slot
        verifier.dispatch()
        assert verifier.tasks_running == 1
        with server.connect(workspace.dbname) as conn:
            busy = conn.execute("SELECT count(*) FROM pg_stat_activity WHERE query LIKE"
                                " '%%\"actor\"%%' AND pid <> pg_backend_pid()").fetchone()
        assert busy is not None and busy[0] == 0

        verifier.item_finished(103)  # pg_restore is down to none: one more task fits,
        verifier.dispatch()  # the next in line: film's ANALYZE
        assert verifier.tasks_running == 2
        _wait_for(lambda: waiting_on_film() == {"SELECT", "ANALYZE"},
                  "film's ANALYZE to wait on the test's lock beside its count")
    except BaseException:
        verifier.abort()
        raise
    finally:
        holder.rollback()
        holder.close()
    report = verifier.finish()
    assert report.passed, report.mismatches
    assert film in verifier.early
    assert {(r.schema, r.table) for r in report.rows} >= {film, actor}


@pytest.mark.parametrize("jobs", [1, 2])
def test_restore_progress_counts_each_item_once(workspace: Workspace, jobs: int) -> None:
    """The items-done figure follows what pg_restore reports: a parallel restore prints both a
    numbered "finished item" line and a "creating" line for each item, and only the first
    counts, so the bar is never ahead of pg_restore and ends at its total."""
    import asyncio
    import re

    from tui.core.events import Event, Progress, RestoreLine
    from tui.core.restore import ItemProgress, RestoreRequest, run_restore
    from tui.core.settings import load_settings

    _backup(workspace)
    settings = load_settings(env_file=workspace.env_file, environ=clean_env())
    events: list[Event] = []
    asyncio.run(run_restore(settings, RestoreRequest("latest", jobs=jobs, confirmed=True,
                                                     verify=False), events.append))
    lines = [e.line for e in events if isinstance(e, RestoreLine)]
    total = [e for e in events if isinstance(e, Progress) and e.phase == "restore"][-1].total
    assert total and total > 100  # pagila: tables, data, indexes, constraints, triggers, ...

    from tui.core.archive import read_toc
    from tui.core.pgtools import find_tool

    archive = next(workspace.backup_dir.glob("*.backup"))
    toc = read_toc(archive, find_tool("pg_restore", settings, 15, "test").path)
    # Grants are restored too (--owners auto keeps privileges).
    ids = {e.dump_id for e in toc.entries if e.desc not in (
        "ENCODING", "STDSTRINGS", "SEARCHPATH", "DATABASE")}
    assert len(ids) == total
    counter = ItemProgress(ids)
    reported: set[int] = set()
    for line in lines:
        counter.feed(line)
        m = re.match(r"(?:pg_restore:| )*(processing|processing missed|finished) item (\d+) ",
                     line)
        if m and int(m.group(2)) in ids:
            reported.add(int(m.group(2)))
        if jobs > 1:
            assert counter.done == len(reported), line
    assert counter.done == total


def test_the_decompressed_copy_gets_the_data_offsets_pg_dump_could_not_write(
        workspace: Workspace, server: Server, tmp_path: Path) -> None:
    """pg_dump writing into zstd through a pipe leaves every TABLE DATA position unset; the
    indexer finds each block and writes the positions in. pg_restore then seeks to each table's
    data (a wrong position would be a fatal "unexpected block ID") and reads exactly what it
    reads from the unpatched copy; and the positions are the ones pg_dump itself writes when it
    can seek in its output."""
    import os

    from tui.core.dataoffsets import POS_NOT_SET, POS_SET, DataIndexer

    meta = _backup(workspace)
    archive = workspace.backup_dir / meta["archive"]["file"]
    plain = tmp_path / "plain.dump"
    subprocess.run(["zstd", "-dq", "-o", str(plain), str(archive)], check=True)
    patched = tmp_path / "patched.dump"
    patched.write_bytes(plain.read_bytes())

    fd = os.open(patched, os.O_RDWR)
    try:
        indexer = DataIndexer(fd, lambda: False)
        found = indexer.run()
        assert {e.dump_id for e in found} == {e.dump_id for e in indexer.entries}
        assert len(found) >= 20  # every table of pagila with rows
        indexer.patch(found)
        states = {e.dump_id: os.pread(fd, 1, e.state_at)[0] for e in found}
    finally:
        os.close(fd)
    assert set(states.values()) == {POS_SET}
    again = DataIndexer(os.open(patched, os.O_RDONLY), lambda: False)
    assert again.run() == []  # nothing left unset
    os.close(again.fd)

    pg_restore = server.bindir / "pg_restore"

    def data_sql(path: Path) -> str:
        out = subprocess.run([str(pg_restore), "--data-only", "-f", "-", str(path)],
                             capture_output=True, text=True, check=True).stdout
        # (\restrict lines carry a random key per run)
        return "\n".join(ln for ln in out.splitlines()
                         if not ln.startswith(("\\restrict", "\\unrestrict")))

    assert data_sql(patched) == data_sql(plain)

    # pg_dump straight into a file it can seek in, of the same unchanged database.
    direct = tmp_path / "direct.dump"
    env = {**clean_env(), "PGPASSWORD": server.password}
    subprocess.run([str(server.bindir / "pg_dump"), "-Fc", "--compress=0", "-h", "127.0.0.1",
                    "-p", str(server.port), "-U", "postgres", "-f", str(direct),
                    workspace.dbname], env=env, check=True)
    reference = DataIndexer(os.open(direct, os.O_RDONLY), lambda: False)
    assert reference.run() == []  # pg_dump set them all itself
    os.close(reference.fd)
    with direct.open("rb") as f:
        theirs = {}
        for e in reference.all_data:
            f.seek(e.state_at)
            raw = f.read(9)
            theirs[e.dump_id] = int.from_bytes(raw[1:], "little")
    ours = {e.dump_id: e.offset for e in found}
    assert ours == theirs
    assert POS_NOT_SET not in states.values()


def test_restore_progress_reads_lines_whose_prefix_moved() -> None:
    """pg_restore's leader and workers write each message as three writes to one stderr:
    "pg_restore:", " " and the text. Interleaved, a line carries two prefixes (with the spaces
    anywhere) and the next none, or only a space: every form below was seen in real
    `pg_restore -j2 -v` output. Such items still count, and reach the verifier's slot
    accounting; the operator sees each line with one prefix."""
    from tui.core.restore import ItemProgress, tidy_line

    counter = ItemProgress({1, 2, 3, 4, 5})
    lines = [
        "pg_restore: processing item 1 TABLE public t postgres",
        "pg_restore: entering main parallel loop",
        "pg_restore: pg_restore: launching item 2 TABLE DATA public t postgres",
        'processing data for table "public.t"',
        "pg_restore:pg_restore:  launching item 3 INDEX public t_idx postgres",
        'creating INDEX "public.t_idx"',
        "pg_restore: pg_restore:finished item 2 TABLE DATA public t postgres",
        " launching item 4 CONSTRAINT public t t_pkey postgres",
        "pg_restore:pg_restore: finished item 3 INDEX public t_idx postgres",
        ' creating CONSTRAINT "public.t t_pkey"',
        "pg_restore:pg_restore:  processing data for table \"public.u\"",
        "finished item 4 CONSTRAINT public t t_pkey postgres",
        "pg_restore: processing missed item 5 SEQUENCE SET public s postgres",
    ]
    seen = [counter.feed(line) for line in lines]
    assert [s for s in seen if s] == [("launching", 2), ("launching", 3), ("finished", 2),
                                      ("launching", 4), ("finished", 3), ("finished", 4)]
    assert counter.done == 5
    assert tidy_line(lines[4]) == "pg_restore: launching item 3 INDEX public t_idx postgres"
    assert tidy_line(lines[6]) == "pg_restore: finished item 2 TABLE DATA public t postgres"
    assert tidy_line(lines[0]) == lines[0] and tidy_line(lines[3]) == lines[3]
