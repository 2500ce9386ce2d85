"""What breaks an application beyond its rows (issue 10, item 4): grants of the API roles, RLS
and policies, sequences behind their columns, extensions, publications, event triggers; recorded
at backup time in the metadata's `app_state`, compared by `pgrunbook verify` and the restore."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path
from typing import Any

from psycopg import sql

from tests.conftest import Server, Workspace, clean_env
from tui.core.appstate import compare, read_sequences, sequence_list

EXIT_MISMATCH = 3


def _backup(ws: Workspace) -> dict[str, Any]:
    name = json.loads(ws.run("backup", "--json", check=True).stdout)["name"]
    return json.loads((ws.backup_dir / f"{name}.backup.meta").read_text())


def _ws(tmp_path: Path, server: Server, dbname: str) -> Workspace:
    ws = Workspace(tmp_path, server, dbname)
    ws.write_env()
    return ws


def test_the_backup_records_the_app_state_and_a_clean_restore_passes(
        server: Server, supabase_db: str, tmp_path: Path) -> None:
    ws = _ws(tmp_path, server, supabase_db)
    meta = _backup(ws)
    state = meta["app_state"]
    assert state["format"] == 1 and "error" not in state
    assert state["api_roles"] == ["anon", "authenticated", "service_role"]
    grants = {(g["kind"], g["schema"], name): g["privileges"]
              for g in state["grants"] for name in g["names"]}
    assert grants[("table", "public", "vendors")]["anon"] == ["SELECT"]
    assert grants[("table", "public", "transactions")]["authenticated"] == [
        "DELETE", "INSERT", "SELECT", "UPDATE"]
    assert grants[("schema", "public", "")]["anon"] == ["USAGE"]
    assert "anon" not in grants[("table", "public", "transactions")]
    assert state["rls"] == [{"schema": "public", "enabled": True, "forced": False,
                             "policies": ["users see their own transactions"],
                             "tables": ["transactions"]}]
    seqs = {s["name"]: s for s in sequence_list(state)}
    assert seqs["vendors_id_seq"] == {
        "schema": "public", "name": "vendors_id_seq", "table_schema": "public",
        "table": "vendors", "column": "id", "identity": False, "increment": 1}
    assert {"name": "pgcrypto", "schema": "extensions"}.items() <= next(
        e for e in state["extensions"] if e["name"] == "pgcrypto").items()
    assert state["publications"] == [{"name": "supabase_realtime", "all_tables": False,
                                      "tables": [["public", "transactions"]], "schemas": []}]
    assert state["event_triggers"] == []

    ok = ws.run("verify", meta["name"])
    assert ok.returncode == 0, ok.stdout + ok.stderr
    assert "VERIFICATION PASS" in ok.stdout and "FAIL" not in ok.stdout

    proc = ws.run("restore", "latest", "--yes", "--owners", "keep")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "VERIFICATION PASS" in proc.stdout and "grants, RLS and sequences too" in proc.stdout
    assert "FAIL" not in proc.stdout, proc.stdout


def test_verify_names_each_thing_that_would_break_the_app(
        server: Server, supabase_db: str, tmp_path: Path) -> None:
    ws = _ws(tmp_path, server, supabase_db)
    # An identity column too, so both kinds of owned sequences are checked.
    with server.connect(supabase_db) as conn:
        conn.execute("CREATE TABLE public.notes (id int GENERATED ALWAYS AS IDENTITY PRIMARY KEY,"
                     " body text); INSERT INTO public.notes (body) SELECT 'n' || g"
                     " FROM generate_series(1, 30) g")
    meta = _backup(ws)
    with server.connect(supabase_db) as conn:
        conn.execute("""
            REVOKE SELECT ON public.vendors FROM anon;
            REVOKE INSERT ON public.budgets FROM authenticated;
            ALTER TABLE public.transactions DISABLE ROW LEVEL SECURITY;
            DROP POLICY "users see their own transactions" ON public.transactions;
            SELECT setval('public.vendors_id_seq', 3);
            SELECT setval(pg_get_serial_sequence('public.notes', 'id'), 30, false);
            ALTER PUBLICATION supabase_realtime DROP TABLE public.transactions;
        """)
    proc = ws.run("verify", meta["name"])
    assert proc.returncode == EXIT_MISMATCH, proc.stdout + proc.stderr
    out = proc.stdout
    for line in (
        "FAIL grants: anon lost SELECT on public.vendors",
        "FAIL grants: authenticated lost INSERT on public.budgets",
        "FAIL rls: row level security is disabled on public.transactions",
        'FAIL policies: policy "users see their own transactions" on public.transactions is '
        "missing",
        "FAIL sequences: public.vendors_id_seq would hand out 4 next but public.vendors.id "
        "already reaches",
        "FAIL sequences: public.notes_id_seq would hand out 30 next but public.notes.id "
        "already reaches 30",
        "FAIL publications: publication supabase_realtime lost public.transactions",
    ):
        assert line in out, f"{line!r} not in:\n{out}"
    # Every row is still there: the verdict says so, and the row counts are all OK.
    assert "VERIFICATION FAIL: every row is back, but 7 of the application's" in out
    report = json.loads(ws.run("verify", meta["name"], "--json").stdout)
    assert report["result"] == "FAIL"
    assert all(t["status"] == "ok" for t in report["tables"])
    assert len(report["app_state"]["failures"]) == 7
    assert {f["kind"] for f in report["app_state"]["failures"]} == {
        "grants", "rls", "policies", "sequences", "publications"}
    audit = [json.loads(line) for line in (ws.backup_dir / "audit.log").read_text().splitlines()]
    end = [e for e in audit if e["operation"] == "verify" and e["event"] == "end"][-1]
    assert end["result"] == "verify-failed"
    assert "anon lost SELECT on public.vendors" in end["app_failures"]

    # A clean restore brings every one of them back.
    proc = ws.run("restore", meta["name"], "--yes", "--owners", "keep")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "VERIFICATION PASS" in proc.stdout and "FAIL" not in proc.stdout


def test_old_metadata_without_app_state_verifies_by_counts_alone(
        server: Server, supabase_db: str, tmp_path: Path) -> None:
    ws = _ws(tmp_path, server, supabase_db)
    meta = _backup(ws)
    path = ws.backup_dir / f"{meta['name']}.backup.meta"
    del meta["app_state"]
    path.write_text(json.dumps(meta))
    with server.connect(supabase_db) as conn:
        conn.execute("REVOKE SELECT ON public.vendors FROM anon")
    proc = ws.run("verify", meta["name"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "VERIFICATION PASS" in proc.stdout and "not recorded by this backup" in proc.stdout
    report = json.loads(ws.run("verify", meta["name"], "--json", check=True).stdout)
    assert report["result"] == "PASS" and report["app_state"] is None


def test_only_the_restored_schemas_are_compared(
        server: Server, supabase_db: str, tmp_path: Path) -> None:
    ws = _ws(tmp_path, server, supabase_db)
    with server.connect(supabase_db) as conn:
        conn.execute("GRANT SELECT ON auth.users TO service_role;"
                     " ALTER TABLE storage.objects ENABLE ROW LEVEL SECURITY")
    expected = _backup(ws)["app_state"]
    with server.connect(supabase_db) as conn:
        conn.execute("REVOKE SELECT ON auth.users FROM service_role;"
                     " ALTER TABLE storage.objects DISABLE ROW LEVEL SECURITY;"
                     " REVOKE SELECT ON public.vendors FROM anon")
        everything = compare(expected, conn, None)
        app_only = compare(expected, conn, {"public"})
    assert {d.detail for d in everything if d.severity == "fail"} >= {
        "service_role lost SELECT on auth.users",
        "row level security is disabled on storage.objects (enabled in the backup)",
        "anon lost SELECT on public.vendors"}
    assert [d.detail for d in app_only] == ["anon lost SELECT on public.vendors"]


def test_a_missing_object_and_a_missing_role_are_named(
        server: Server, supabase_db: str, tmp_path: Path) -> None:
    with server.connect(supabase_db) as conn:
        conn.execute("CREATE VIEW public.vendor_names AS SELECT name FROM public.vendors;"
                     " GRANT SELECT ON public.vendor_names TO anon;"
                     " CREATE FUNCTION public.add(a int, b int) RETURNS int LANGUAGE sql"
                     " AS 'SELECT a + b'; GRANT EXECUTE ON FUNCTION public.add TO authenticated")
    ws = _ws(tmp_path, server, supabase_db)
    expected = _backup(ws)["app_state"]
    with server.connect(supabase_db) as conn:
        conn.execute("DROP VIEW public.vendor_names; DROP FUNCTION public.add")
        found = {d.detail for d in compare(expected, conn) if d.severity == "fail"}
    assert found == {"anon lost SELECT on view public.vendor_names (missing on the target)",
                     "authenticated lost EXECUTE on function public.add(a integer, b integer) "
                     "(missing on the target)"}
    ghost = {**expected, "api_roles": [*expected["api_roles"], "ghost_role"]}
    with server.connect(supabase_db) as conn:
        conn.execute("CREATE VIEW public.vendor_names AS SELECT name FROM public.vendors;"
                     " GRANT SELECT ON public.vendor_names TO anon;"
                     " CREATE FUNCTION public.add(a int, b int) RETURNS int LANGUAGE sql"
                     " AS 'SELECT a + b'; GRANT EXECUTE ON FUNCTION public.add TO authenticated")
        assert [d.detail for d in compare(ghost, conn)] == [
            "role ghost_role does not exist on the target: every grant to it is lost"]


def test_extra_grants_on_the_target_are_warnings(
        server: Server, supabase_db: str, tmp_path: Path) -> None:
    ws = _ws(tmp_path, server, supabase_db)
    meta = _backup(ws)
    with server.connect(supabase_db) as conn:
        conn.execute("GRANT INSERT, DELETE ON public.vendors TO anon;"
                     " CREATE POLICY extra ON public.transactions FOR SELECT TO anon USING (false)")
    proc = ws.run("verify", meta["name"])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert ("WARNING grants: anon holds DELETE, INSERT on public.vendors, which the backup did "
            "not grant") in proc.stdout
    assert 'WARNING policies: policy "extra" on public.transactions is not in the backup' \
        in proc.stdout
    assert "VERIFICATION PASS" in proc.stdout and "(2 warnings)" in proc.stdout


def test_sequences_that_cannot_be_read_or_are_gone(server: Server, supabase_db: str) -> None:
    seqs = [{"schema": "public", "name": "vendors_id_seq", "table_schema": "public",
             "table": "vendors", "column": "id", "identity": False, "increment": 1},
            {"schema": "public", "name": "gone_seq", "table_schema": "public",
             "table": "vendors", "column": "id", "identity": False, "increment": 1},
            {"schema": "public", "name": "budgets_id_seq", "table_schema": "public",
             "table": "gone", "column": "id", "identity": False, "increment": 1}]
    with server.connect(supabase_db) as conn:
        top = conn.execute("SELECT max(id) FROM public.vendors").fetchone()[0]
        state = read_sequences(conn, seqs)
    assert state[0] == {"schema": "public", "name": "gone_seq"}
    assert state[1] == {"schema": "public", "name": "budgets_id_seq",
                        "error": "its table public.gone is missing"}
    assert state[2] == {"schema": "public", "name": "vendors_id_seq", "last_value": top,
                        "is_called": True, "column_value": top}
    empty = {"grants": [], "rls": [], "extensions": [], "publications": [],
             "event_triggers": []}
    found = compare({"sequences": _grouped(seqs)}, {**empty, "sequence_state": state})
    assert [(d.severity, d.detail) for d in found] == [
        ("fail", "sequence public.gone_seq (for public.vendors.id) is missing"),
        ("warning", "public.budgets_id_seq (for public.gone.id) could not be checked: its "
                    "table public.gone is missing")]


def _grouped(seqs: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """Flat sequence dicts in the metadata's grouped form (one group per increment here)."""
    groups: dict[int, dict[str, Any]] = {}
    for q in seqs:
        g = groups.setdefault(q["increment"], {
            "schema": q["schema"], "table_schema": q["table_schema"],
            "identity": q["identity"], "increment": q["increment"], "names": [], "tables": [],
            "columns": []})
        g["names"].append(q["name"])
        g["tables"].append(q["table"])
        g["columns"].append(q["column"])
    return [groups[k] for k in sorted(groups)]


def _state(**kw: Any) -> dict[str, Any]:
    base: dict[str, Any] = {"api_roles": [], "superuser": False, "grants": [], "rls": [],
                            "sequences": [], "extensions": [], "publications": [],
                            "event_triggers": []}
    return {**base, **kw}


def test_what_a_non_superuser_target_cannot_create_is_a_warning_with_the_reason() -> None:
    expected = _state(
        extensions=[{"name": "pg_cron", "schema": "pg_catalog", "version": "1.6"},
                    {"name": "pgcrypto", "schema": "extensions", "version": "1.3"},
                    {"name": "postgis", "schema": "extensions", "version": "3.4"},
                    {"name": "vector", "schema": "extensions", "version": "0.7"}],
        event_triggers=[{"name": "pgrst_ddl_watch", "event": "ddl_command_end",
                         "enabled": True},
                        {"name": "issue_pg_cron_access", "event": "ddl_command_end",
                         "enabled": True}],
        publications=[{"name": "everything", "all_tables": True, "tables": [], "schemas": []}])
    actual = _state(
        extensions=[{"name": "vector", "schema": "public", "version": "0.7"}],
        event_triggers=[{"name": "issue_pg_cron_access", "event": "ddl_command_end",
                         "enabled": False}],
        extension_availability={"pgcrypto": {"trusted": True}, "postgis": {"trusted": False}})
    found = [(d.severity, d.kind, d.detail) for d in compare(expected, actual)]
    assert found == [
        ("fail", "extensions", 'extension pgcrypto is missing (the target could create it: '
                               'CREATE EXTENSION "pgcrypto" SCHEMA extensions)'),
        ("warning", "extensions", "extension pg_cron is missing: it is not installed on the "
                                  "target's server (not in pg_available_extensions)"),
        ("warning", "extensions", "extension postgis is missing: the target's user is not a "
                                  "superuser and it is not a trusted extension (the provider "
                                  "or a superuser must create it)"),
        ("warning", "extensions", "extension vector is in schema public, the backup had it in "
                                  "extensions"),
        ("warning", "publications", "publication everything (FOR ALL TABLES) is missing: only a "
                                    "superuser may create it"),
        ("warning", "event triggers", "event trigger pgrst_ddl_watch (ddl_command_end) is "
                                      "missing: only a superuser may create one and the "
                                      "target's user is not one (on Supabase they belong to "
                                      "supabase_admin)"),
        ("warning", "event triggers", "event trigger issue_pg_cron_access is disabled"),
    ]
    # A superuser target could have created them: missing is a failure there.
    found = [(d.severity, d.kind) for d in compare(expected, {**actual, "superuser": True})]
    assert ("fail", "event triggers") in found and ("fail", "publications") in found
    assert ("warning", "extensions") in found  # pg_cron is not on that server at all


def test_sequence_arithmetic_covers_is_called_and_descending_sequences() -> None:
    def seq(name: str, inc: int) -> dict[str, Any]:
        return {"schema": "s", "name": name, "table_schema": "s", "table": "t", "column": name,
                "identity": True, "increment": inc}

    expected = _state(sequences=_grouped([
        seq("up_ok", 1), seq("up_uncalled", 1), seq("down_bad", -1), seq("down_ok", -1),
        seq("empty", 1), seq("by_ten", 10)]))
    assert len(sequence_list(expected)) == 6 and len(expected["sequences"]) == 3
    actual = _state(sequence_state=[
        {"schema": "s", "name": "up_ok", "last_value": 10, "is_called": True, "column_value": 10},
        {"schema": "s", "name": "up_uncalled", "last_value": 10, "is_called": False,
         "column_value": 10},
        {"schema": "s", "name": "down_bad", "last_value": -5, "is_called": True,
         "column_value": -7},
        {"schema": "s", "name": "down_ok", "last_value": -7, "is_called": True,
         "column_value": -7},
        {"schema": "s", "name": "empty", "last_value": 1, "is_called": False,
         "column_value": None},
        {"schema": "s", "name": "by_ten", "last_value": 90, "is_called": True,
         "column_value": 95}])
    bad = sorted(d.object for d in compare(expected, actual) if d.severity == "fail")
    assert bad == ["s.down_bad", "s.up_uncalled"]
    assert compare(expected, actual, {"other"}) == []


def test_collect_is_cheap_on_thousands_of_tables(server: Server) -> None:
    """2,000 tables with grants to the API roles, RLS and a policy each, and an owned
    sequence: collecting stays within tens of milliseconds (measured, printed)."""
    dbname = server.create_db()
    try:
        with server.connect(dbname) as conn:
            conn.execute("""
                DO $$ DECLARE i int; BEGIN
                  FOR i IN 1..2000 LOOP
                    EXECUTE format('CREATE TABLE public.%I (id bigserial PRIMARY KEY, v text)',
                                   't_' || i);
                    EXECUTE format('GRANT SELECT ON public.%I TO anon, authenticated', 't_' || i);
                    EXECUTE format('ALTER TABLE public.%I ENABLE ROW LEVEL SECURITY', 't_' || i);
                    EXECUTE format('CREATE POLICY p ON public.%I USING (true)', 't_' || i);
                  END LOOP;
                END $$""")
            with conn.transaction():  # as in the backup: inside a REPEATABLE READ snapshot
                conn.execute("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, READ ONLY")
                from tui.core.appstate import collect
                collect(conn)  # warm the catalog caches, as the backup's earlier queries do
                began = time.perf_counter()
                state = collect(conn)
                collect_ms = (time.perf_counter() - began) * 1000
            began = time.perf_counter()
            assert compare(state, conn) == []
            compare_ms = (time.perf_counter() - began) * 1000
        # One group each: the 2,000 tables share their grants and their RLS.
        assert [len(g["names"]) for g in state["grants"]] == [2000]
        assert [len(t["tables"]) for t in state["rls"]] == [2000]
        assert len(sequence_list(state)) == 2000
    finally:
        server.drop_db(dbname)
    print(f"collect {collect_ms:.1f} ms, compare {compare_ms:.1f} ms, "
          f"metadata {len(json.dumps(state, indent=2)) / 1024:.0f} KiB: " + ", ".join(
              f"{k} {len(json.dumps(v, indent=2)) / 1024:.0f}" for k, v in state.items()))
    assert collect_ms < 500 and compare_ms < 5000


def test_a_restore_without_privileges_loses_the_api_grants_and_fails(
        server: Server, supabase_db: str, tmp_path: Path) -> None:
    """Failure mode 22: `--clean` with `--no-privileges` brings every row back and leaves the
    API roles without their grants (the API answers 401). Restored here with bare pg_restore,
    whatever pgrunbook's own restore does by default."""
    ws = _ws(tmp_path, server, supabase_db)
    meta = _backup(ws)
    archive = ws.backup_dir / meta["archive"]["file"]
    plain = archive
    if meta["archive"]["container"] == "zstd":
        plain = tmp_path / "plain.backup"
        subprocess.run(["zstd", "-dq", "-o", str(plain), str(archive)], check=True)
    subprocess.run(
        [str(server.bindir / "pg_restore"), "--clean", "--if-exists", "--no-owner",
         "--no-privileges", "--exit-on-error", "-h", "127.0.0.1", "-p", str(server.port),
         "-U", "postgres", "-d", supabase_db, str(plain)],
        env={**clean_env(), "PGPASSWORD": server.password}, check=True, capture_output=True)
    proc = ws.run("verify", meta["name"])
    assert proc.returncode == EXIT_MISMATCH, proc.stdout + proc.stderr
    assert "FAIL grants: anon lost SELECT on public.vendors" in proc.stdout
    assert "FAIL grants: authenticated lost DELETE, INSERT, SELECT, UPDATE on " \
        "public.transactions" in proc.stdout
    assert "VERIFICATION FAIL: every row is back" in proc.stdout


def test_a_missing_event_trigger_fails_on_a_superuser_target_and_warns_on_another(
        server: Server, supabase_db: str, tmp_path: Path) -> None:
    with server.connect(supabase_db) as conn:
        conn.execute("CREATE FUNCTION public.note_ddl() RETURNS event_trigger LANGUAGE plpgsql"
                     " AS $$ BEGIN END $$;"
                     " CREATE EVENT TRIGGER pgrst_ddl_watch ON ddl_command_end"
                     " EXECUTE FUNCTION public.note_ddl()")
    ws = _ws(tmp_path, server, supabase_db)
    meta = _backup(ws)
    assert meta["app_state"]["event_triggers"] == [
        {"name": "pgrst_ddl_watch", "event": "ddl_command_end", "enabled": True}]
    with server.connect(supabase_db) as conn:
        conn.execute("DROP EVENT TRIGGER pgrst_ddl_watch")
    proc = ws.run("verify", meta["name"])
    assert proc.returncode == EXIT_MISMATCH, proc.stdout + proc.stderr
    assert "FAIL event triggers: event trigger pgrst_ddl_watch (ddl_command_end) is missing" \
        in proc.stdout

    # The same target seen by a role that is not a superuser (as on hosted Supabase).
    role = f"op_{supabase_db}"
    with server.connect(supabase_db) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} LOGIN BYPASSRLS PASSWORD {} IN ROLE pg_read_all_data").format(
            sql.Identifier(role), sql.Literal(server.password)))
    try:
        ws.write_env(SUPABASE_DB_USER=role)
        proc = ws.run("verify", meta["name"])
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert ("WARNING event triggers: event trigger pgrst_ddl_watch (ddl_command_end) is "
                "missing: only a superuser may create one") in proc.stdout
        assert "VERIFICATION PASS" in proc.stdout
    finally:
        server.drop_db(supabase_db)  # the role owns nothing but its membership
        with server.connect() as conn:
            conn.execute(f"DROP ROLE {role}")


def test_a_drill_compares_the_app_state_and_reports_it(
        server: Server, supabase_db: str, tmp_path: Path) -> None:
    ws = _ws(tmp_path, server, supabase_db)
    _backup(ws)
    proc = ws.run("drill", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = json.loads(proc.stdout)
    assert result["result"] == "PASS", result
    assert result["verification"]["app_state"] == {"failures": [], "warnings": []}
    assert "## Application state (0 failures, 0 warnings)" in Path(result["report"]).read_text()


def test_a_restore_on_a_supabase_project_as_its_postgres_role_keeps_the_app_working(
        supabase_workspace: Workspace) -> None:
    """The hosted shape (tests/supabase_shape.py): `postgres` is not a superuser, Supabase's
    event triggers belong to supabase_admin, auth and storage to their admins. After a
    default restore nothing an application needs is reported missing."""
    ws = supabase_workspace
    meta = _backup(ws)
    state = meta["app_state"]
    assert state["superuser"] is False and state["api_roles"] == [
        "anon", "authenticated", "service_role"]
    assert state["event_triggers"] and state["publications"]
    with ws.server.connect(ws.dbname) as conn:
        conn.execute("REVOKE SELECT ON public.posts FROM anon")
    broken = ws.run("verify", meta["name"])
    assert broken.returncode == EXIT_MISMATCH, broken.stdout + broken.stderr
    assert "FAIL grants: anon lost SELECT on public.posts" in broken.stdout
    proc = ws.run("restore", "latest", "--yes", "--json")
    report = json.loads(proc.stdout)["verification"]
    assert report["app_state"]["failures"] == [], report["app_state"]
