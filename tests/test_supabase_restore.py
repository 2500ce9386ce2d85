"""Restores on a Supabase-shaped project as its non-superuser `postgres`, the way an operator on
hosted Supabase runs them (tests/supabase_shape.py): no extra flags, the application's schemas
restored, what the target keeps listed, harmless errors as warnings, and nothing that hangs on
the restored schemas lost on the way."""

from __future__ import annotations

import hashlib
import json
import re
import uuid
from pathlib import Path

from tests.conftest import Workspace
from tests.supabase_shape import (
    APP_TABLES,
    AUTH_TABLES,
    EVENT_TRIGGERS,
    STORAGE_TABLES,
    SupabaseServer,
)
from tui.core.archive import parse_toc
from tui.core.restore.errors import ErrorReader, classify
from tui.core.restore.scope import TargetKind, names_of, plan_entries


def _backup(ws: Workspace) -> dict:
    out = ws.run("backup", "--json", check=True).stdout
    name = json.loads(out)["name"]
    return json.loads((ws.backup_dir / f"{name}.backup.meta").read_text())


def _expected(meta: dict, tables: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
    rows = {(t["schema"], t["name"]): t["rows"] for t in meta["tables"]}
    return {t: rows[t] for t in tables}


def _sign_up(server: SupabaseServer, dbname: str) -> str:
    """What Supabase Auth does on a sign-up; the trigger on auth.users adds the profile."""
    user_id = str(uuid.uuid4())
    with server.admin(dbname) as conn:
        conn.execute("INSERT INTO auth.users (id, email, raw_user_meta_data) VALUES "
                     "(%s, %s, '{}')", [user_id, f"{user_id[:8]}@example.com"])
    return user_id


def _has_profile(server: SupabaseServer, dbname: str, user_id: str) -> bool:
    with server.admin(dbname) as conn:
        return conn.execute("SELECT 1 FROM public.profiles WHERE id = %s",
                            [user_id]).fetchone() is not None


def test_restore_latest_on_supabase_restores_the_application_and_passes(
    supabase_workspace: Workspace, supabase_server: SupabaseServer,
) -> None:
    ws, server, db = supabase_workspace, supabase_server, supabase_workspace.dbname
    meta = _backup(ws)
    # Damage: rows gone, a table in the schema whose name has a space, a table created since.
    with server.connect(db) as conn:
        conn.execute("DELETE FROM public.todos WHERE id % 3 = 0")
        conn.execute('DELETE FROM "Ops Data"."Run Log"')
        conn.execute('CREATE TABLE "Ops Data".created_since (id int)')
        conn.execute("REVOKE SELECT ON public.posts FROM anon")
    signed_up_since = _sign_up(server, db)
    auth_before = server.counts(db, AUTH_TABLES)

    proc = ws.run("restore", "latest", "--yes", "--reason", "test: supabase")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    out = proc.stdout
    assert "VERIFICATION PASS" in out and "To undo this restore" not in out
    assert "PASS with warnings: " in out and "entries kept as the target's own" in out
    assert "holds the state before this restore" in out
    # What the target keeps is listed with its reasons, not restored.
    err = proc.stderr
    assert "target: a Supabase project (postgres is not a superuser there)" in err
    assert "schema auth is managed by Supabase: the target keeps its own" in err
    assert "only a superuser creates event triggers" in err
    assert "default privileges of role supabase_admin, which postgres may not act for" in err
    assert "data not restored (" in out and "auth.users" in out
    assert "emptied the schemas the backup restores: Ops Data, public" in err
    # The application is exactly the backup's; the managed schemas are as the target had them.
    assert server.counts(db, APP_TABLES) == _expected(meta, APP_TABLES)
    assert server.counts(db, AUTH_TABLES) == auth_before
    with server.admin(db) as conn:
        assert conn.execute("SELECT to_regclass('\"Ops Data\".created_since')").fetchone()[0] \
            is None
        assert conn.execute("SELECT has_table_privilege('anon', 'public.posts', 'SELECT')"
                            ).fetchone()[0]
        triggers = {r[0] for r in conn.execute("SELECT evtname FROM pg_event_trigger")}
        assert triggers == set(EVENT_TRIGGERS)
    # Supabase's sign-up trigger on auth.users still fills profiles.
    assert not _has_profile(server, db, signed_up_since)  # that profile came after the backup
    assert _has_profile(server, db, _sign_up(server, db))
    audit = [json.loads(line) for line in (ws.backup_dir / "audit.log").read_text().splitlines()]
    end = [a for a in audit if a.get("operation") == "restore" and a.get("result")][-1]
    assert end["result"] == "ok" and end["target_kind"] == "supabase"
    assert "auth.users" in end["not_restored"]


def test_into_a_fresh_project_the_managed_tables_data_comes_back(
    supabase_workspace: Workspace, supabase_server: SupabaseServer,
) -> None:
    """Disaster recovery into a new project: its auth and storage tables are empty, so their
    data is loaded (referenced tables first, their sequences set); a table with rows on the
    target is never replaced."""
    ws, server, db = supabase_workspace, supabase_server, supabase_workspace.dbname
    meta = _backup(ws)
    with server.admin(db) as conn:  # what a new project has: empty managed tables
        conn.execute("TRUNCATE " + ", ".join(f"{s}.{t}" for s, t in AUTH_TABLES + STORAGE_TABLES)
                     + " RESTART IDENTITY CASCADE")
    proc = ws.run("restore", "latest", "--yes", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "loading the data of" in proc.stderr and "auth.users" in proc.stderr
    result = json.loads(proc.stdout)
    assert result["result"] == "PASS"
    expected = _expected(meta, AUTH_TABLES + STORAGE_TABLES + APP_TABLES)
    assert server.counts(db, AUTH_TABLES + STORAGE_TABLES + APP_TABLES) == expected
    # The verification compared them too, and their sequences are past their rows.
    verified = {f"{t['schema']}.{t['table']}" for t in result["verification"]["tables"]}
    assert {"auth.users", "storage.objects", "auth.refresh_tokens"} <= verified
    assert "auth.users" not in result["not_restored"]
    with server.admin(db) as conn:
        conn.execute("INSERT INTO auth.refresh_tokens (token, user_id, session_id) "
                     "SELECT 'new', user_id::text, session_id FROM auth.refresh_tokens LIMIT 1")
    # Sign-ups go on filling profiles.
    assert _has_profile(server, db, _sign_up(server, db))


def test_a_trigger_added_since_on_a_managed_table_is_recreated(
    supabase_workspace: Workspace, supabase_server: SupabaseServer,
) -> None:
    """A trigger on storage.objects calling the application's function, created after the
    backup: emptying public would drop it, and the archive does not have it."""
    ws, server, db = supabase_workspace, supabase_server, supabase_workspace.dbname
    _backup(ws)
    with server.admin(db) as conn:
        conn.execute("CREATE TRIGGER objects_touch BEFORE UPDATE ON storage.objects FOR EACH "
                     "ROW EXECUTE FUNCTION public.handle_new_user()")
    proc = ws.run("restore", "latest", "--yes")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "recreated: trigger objects_touch on storage.objects" in proc.stdout
    with server.admin(db) as conn:
        assert conn.execute("SELECT 1 FROM pg_trigger WHERE tgname = 'objects_touch'").fetchone()


def test_what_hangs_on_an_object_the_backup_lacks_is_reported_lost(
    supabase_workspace: Workspace, supabase_server: SupabaseServer,
) -> None:
    ws, server, db = supabase_workspace, supabase_server, supabase_workspace.dbname
    _backup(ws)
    with server.connect(db) as conn:
        conn.execute("CREATE FUNCTION public.stamp() RETURNS trigger LANGUAGE plpgsql AS "
                     "$$ BEGIN RETURN NEW; END $$")
    with server.admin(db) as conn:
        conn.execute("CREATE TRIGGER stamp_users BEFORE UPDATE ON auth.users FOR EACH ROW "
                     "EXECUTE FUNCTION public.stamp()")
    proc = ws.run("restore", "latest", "--yes")
    assert proc.returncode == 3, proc.stdout + proc.stderr
    assert "LOST: trigger stamp_users on auth.users" in proc.stdout
    assert "RESTORE FAIL" in proc.stdout and "To undo this restore: pgrunbook" in proc.stdout


def test_a_grant_to_a_role_the_target_lacks_fails_and_names_the_role(
    supabase_workspace: Workspace, supabase_server: SupabaseServer,
) -> None:
    """pg_restore runs an object's grants as one statement: a grant to a missing role loses
    the API roles' grants on that table too. That is a failure, never a warning."""
    ws, server, db = supabase_workspace, supabase_server, supabase_workspace.dbname
    role = f"reporting_{uuid.uuid4().hex[:6]}"
    with server.connect(db) as conn:
        conn.execute(f"CREATE ROLE {role} NOLOGIN")
        conn.execute(f"GRANT SELECT ON public.todos TO {role}")
    try:
        _backup(ws)
        with server.connect(db) as conn:
            conn.execute(f"REVOKE ALL ON public.todos FROM {role}")
            conn.execute(f"DROP ROLE {role}")
        proc = ws.run("restore", "latest", "--yes")
    finally:
        with server.connect(db) as conn:
            conn.execute(f"DROP ROLE IF EXISTS {role}")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert f'role "{role}" does not exist' in proc.stderr
    assert "create the role on the target first" in proc.stderr
    assert "FAIL grants: anon lost" in proc.stdout or "anon lost" in proc.stdout
    assert "VERIFICATION PASS" not in proc.stdout


def test_an_unknown_error_fails_the_restore_after_its_verification(
    supabase_workspace: Workspace, supabase_server: SupabaseServer,
) -> None:
    """A user deleted from auth.users since the backup: the archive's profile rows then break
    the foreign key to it, which no table of harmless errors covers."""
    ws, server, db = supabase_workspace, supabase_server, supabase_workspace.dbname
    _backup(ws)
    with server.admin(db) as conn:
        conn.execute("DELETE FROM auth.users WHERE id = (SELECT id FROM auth.users "
                     "WHERE id IN (SELECT id FROM public.profiles) LIMIT 1)")
    proc = ws.run("restore", "latest", "--yes")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "FAILED" in proc.stderr and "violates foreign key constraint" in proc.stderr
    assert "The verification that ran after it:" in proc.stderr
    assert "Undo with: pgrunbook" in proc.stderr
    assert "VERIFICATION PASS" not in proc.stdout


def test_each_backup_keeps_the_roles_and_a_drill_creates_them(
    supabase_workspace: Workspace, supabase_server: SupabaseServer,
) -> None:
    """As the non-superuser postgres: pg_dumpall --roles-only --no-role-passwords beside the
    archive; the drill's fresh cluster gets the roles with their attributes from it, so the
    event triggers' owner (supabase_admin) is a superuser there too."""
    ws = supabase_workspace
    meta = _backup(ws)
    roles = ws.backup_dir / f"{meta['name']}.backup.roles.sql"
    text = roles.read_text()
    assert oct(roles.stat().st_mode & 0o777) == "0o600"
    assert meta["roles_sql"]["sha256"] == hashlib.sha256(roles.read_bytes()).hexdigest()
    assert "CREATE ROLE supabase_admin;" in text and "PASSWORD" not in text
    assert re.search(r"ALTER ROLE supabase_admin WITH SUPERUSER", text)
    proc = ws.run("drill")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Drill PASS" in proc.stdout
    assert "role(s) from the backup's roles file" in proc.stderr
    assert "as NOLOGIN" not in proc.stderr and "made superusers" not in proc.stderr
    report = Path(proc.stdout.split("Report: ")[1].split()[0]).read_text()
    differs = report.split("## How this drill differs from the source")[1].split("##")[0]
    assert "from the backup's roles file" in differs and "non-superuser" in differs


def test_without_its_roles_file_a_drill_still_passes(supabase_workspace: Workspace,
                                                     tmp_path: Path) -> None:
    """pg_dumpall missing beside pg_dump: the backup notes it and goes on; the drill makes
    the archive's roles NOLOGIN and the event triggers' owner a superuser."""
    tools = tmp_path / "bin"
    tools.mkdir()
    for name in ("pg_dump", "pg_restore", "psql"):
        (tools / name).symlink_to(Path("/usr/lib/postgresql/15/bin") / name)
    ws = supabase_workspace
    ws.write_env(PG_BIN_DIR=str(tools))
    proc = ws.run("backup", "--json")
    assert proc.returncode == 0, proc.stderr
    assert "the cluster's roles are not kept with this backup: no pg_dumpall" in proc.stderr
    meta = json.loads(Path(json.loads(proc.stdout)["meta_path"]).read_text())
    assert "error" in meta["roles_sql"]
    ws.write_env()
    proc = ws.run("drill")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "made superusers, to own event triggers: supabase_admin" in proc.stderr


# -- the pieces, on real pg_restore text -----------------------------------------------------


def test_entry_names_with_spaces_are_read_against_the_known_names() -> None:
    toc = parse_toc("\n".join([
        "3401; 2615 16400 SCHEMA - Ops Data postgres",
        "3402; 1259 16401 TABLE Ops Data Run Log postgres",
        "3403; 0 16401 TABLE DATA Ops Data Run Log postgres",
        "3404; 826 16500 DEFAULT ACL public DEFAULT PRIVILEGES FOR TABLES supabase_admin",
        "3405; 0 0 ACL - SCHEMA \"Ops Data\" postgres",
        "3406; 1259 16402 TABLE public todos Ops Owner",
    ]))
    names = names_of(toc, ["public", "auth"], ["postgres", "supabase_admin", "Ops Owner"])
    got = [(n.schema, n.tag, n.owner) for n in names.values()]
    assert got == [("-", "Ops Data", "postgres"), ("Ops Data", "Run Log", "postgres"),
                   ("Ops Data", "Run Log", "postgres"),
                   ("public", "DEFAULT PRIVILEGES FOR TABLES", "supabase_admin"),
                   ("-", 'SCHEMA "Ops Data"', "postgres"), ("public", "todos", "Ops Owner")]
    plan = plan_entries(toc, names, TargetKind("supabase", "postgres", frozenset({"postgres"})),
                        app_schemas_only=False)
    assert [item.entry.dump_id for item in plan.left_out] == [3404]


def test_errors_are_classified_by_their_entry_and_text() -> None:
    reader = ErrorReader()
    for line in [
        "pg_restore: from TOC entry 4321; 826 16543 DEFAULT ACL DEFAULT PRIVILEGES FOR "
        "SEQUENCES supabase_admin",
        'pg_restore: error: could not execute query: ERROR:  must be member of role '
        '"supabase_admin"',
        "Command was: ALTER DEFAULT PRIVILEGES FOR ROLE supabase_admin IN SCHEMA public GRANT "
        "ALL ON SEQUENCES TO postgres;",
        "pg_restore: from TOC entry 4400; 0 0 ACL TABLE users postgres",
        "pg_restore: error: could not execute query: ERROR:  grant options cannot be granted "
        "back to your own grantor",
        "pg_restore: from TOC entry 4500; 1259 17000 TABLE todos postgres",
        'pg_restore: error: could not execute query: ERROR:  must be member of role "x"',
        "Command was: CREATE FUNCTION f() RETURNS int AS $$",
        "  SELECT 1; -- error: not an error line",
        "$$;",
        "pg_restore: warning: errors ignored on restore: 3",
    ]:
        reader.feed(line)
    assert [e.dump_id for e in reader.errors] == [4321, 4400, 4500]
    assert reader.ignored_count == 3
    warned, failed = classify(reader.errors, "supabase")
    assert [w.known.code for w in warned] == ["default-privileges", "own-grant-option"]
    # The same words from a table's entry are not harmless.
    assert [e.dump_id for e in failed] == [4500]
    # Nor on a superuser's target.
    assert len(classify(reader.errors, "superuser")[1]) == 3
