"""The Supabase-shaped fixture is what it claims: a cluster whose operator `postgres` is not a
superuser, managed schemas it does not own, supabase_admin's event triggers and default
privileges, an application in `public` owned by `postgres` with RLS and the sign-up trigger."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import psycopg
import pytest

from tests.conftest import Workspace
from tests.supabase_shape import (
    ADMIN,
    APP_TABLES,
    AUTH_TABLES,
    EVENT_TRIGGERS,
    STORAGE_TABLES,
    SupabaseServer,
)


@pytest.fixture(scope="module")
def shape_db(supabase_server: SupabaseServer, supabase_project_template: str) -> Iterator[str]:
    """One project copy for the read-only checks of this module."""
    name = supabase_server.create_db(template=supabase_project_template)
    yield name
    supabase_server.drop_db(name)


def _one(conn: psycopg.Connection, query: str, *params: object) -> object:
    row = conn.execute(query, params or None).fetchone()
    assert row is not None
    return row[0]


def test_operator_is_a_login_role_but_not_a_superuser(supabase_server: SupabaseServer,
                                                      shape_db: str) -> None:
    with supabase_server.connect(shape_db) as conn:
        assert _one(conn, "SELECT current_user") == "postgres"
        row = conn.execute(
            "SELECT rolsuper, rolcreatedb, rolcreaterole, rolbypassrls, rolcanlogin, rolreplication"
            " FROM pg_roles WHERE rolname = 'postgres'").fetchone()
        assert row == (False, True, True, True, True, True)
        assert _one(conn, "SELECT rolsuper FROM pg_roles WHERE rolname = %s", ADMIN) is True
        assert _one(conn, "SELECT pg_get_userbyid(datdba) FROM pg_database"
                          " WHERE datname = current_database()") == "postgres"
    with supabase_server.connect(shape_db, user=ADMIN) as conn:
        assert _one(conn, "SELECT current_setting('is_superuser')") == "on"


def test_operator_memberships_are_supabases(supabase_server: SupabaseServer, shape_db: str) -> None:
    with supabase_server.admin(shape_db) as conn:
        rows = conn.execute(
            "SELECT r.rolname, m.admin_option FROM pg_auth_members AS m"
            " JOIN pg_roles AS r ON r.oid = m.roleid"
            " WHERE m.member = 'postgres'::regrole").fetchall()
        held = dict(rows)
        for role in ("anon", "authenticated", "service_role", "authenticator",
                     "pg_read_all_data", "pg_signal_backend", "pg_monitor"):
            assert held.get(role) is True, role
        assert held.get("supabase_realtime_admin") is False
        for role in ("supabase_auth_admin", "supabase_storage_admin", ADMIN):
            assert role not in held
            assert _one(conn, "SELECT pg_has_role('postgres', %s, 'MEMBER')", role) is False
        attrs = {r[0]: r[1:] for r in conn.execute(
            "SELECT rolname, rolcanlogin, rolinherit, rolbypassrls FROM pg_roles WHERE rolname IN"
            " ('anon', 'authenticated', 'service_role', 'authenticator')").fetchall()}
        assert attrs == {"anon": (False, True, False), "authenticated": (False, True, False),
                         "service_role": (False, True, True), "authenticator": (True, False, False)}


def test_owners_follow_the_hosted_platform(supabase_server: SupabaseServer, shape_db: str) -> None:
    with supabase_server.admin(shape_db) as conn:
        schemas = dict(conn.execute(
            "SELECT nspname, pg_get_userbyid(nspowner) FROM pg_namespace").fetchall())
        assert schemas["auth"] == schemas["storage"] == schemas["realtime"] == ADMIN
        assert schemas["extensions"] == schemas["Ops Data"] == "postgres"
        owners = dict(conn.execute(
            "SELECT n.nspname || '.' || c.relname, pg_get_userbyid(c.relowner) FROM pg_class AS c"
            " JOIN pg_namespace AS n ON n.oid = c.relnamespace"
            " WHERE c.relkind IN ('r', 'p', 'm', 'v', 'S')").fetchall())
        for schema, table in AUTH_TABLES:
            assert owners[f"{schema}.{table}"] == "supabase_auth_admin"
        for schema, table in STORAGE_TABLES:
            assert owners[f"{schema}.{table}"] == "supabase_storage_admin"
        for name in ("public.profiles", "public.todos", "public.posts", "public.comments",
                     "public.events", "public.events_default", "public.post_stats",
                     "public.published_posts", "public.posts_id_seq", "Ops Data.Run Log"):
            assert owners[name] == "postgres", name
        assert not [n for n, o in owners.items() if n.startswith("public.") and o != "postgres"]
        funcs = dict(conn.execute(
            "SELECT p.pronamespace::regnamespace || '.' || p.proname, pg_get_userbyid(p.proowner)"
            " FROM pg_proc AS p"
            " WHERE p.pronamespace IN ('auth'::regnamespace, 'public'::regnamespace)").fetchall())
        assert funcs["auth.uid"] == funcs["auth.role"] == funcs["auth.jwt"] == "supabase_auth_admin"
        assert funcs["public.handle_new_user"] == "postgres"
        assert _one(conn, "SELECT prosecdef FROM pg_proc WHERE oid = 'public.handle_new_user'::regproc")
        assert _one(conn, "SELECT pg_get_userbyid(extowner) FROM pg_extension"
                          " WHERE extname = 'pgcrypto'") == ADMIN


def test_grants_include_supabases_grant_options(supabase_server: SupabaseServer, shape_db: str) -> None:
    with supabase_server.admin(shape_db) as conn:
        def can(role: str, obj: str, priv: str, kind: str = "table") -> bool:
            return bool(_one(conn, f"SELECT has_{kind}_privilege(%s, %s, %s)", role, obj, priv))

        assert can("postgres", "storage.objects", "SELECT WITH GRANT OPTION")
        assert can("postgres", "storage.buckets", "INSERT WITH GRANT OPTION")
        assert can("postgres", "auth.users", "TRIGGER")
        assert not can("postgres", "auth.users", "SELECT WITH GRANT OPTION")
        assert can("postgres", "storage", "USAGE WITH GRANT OPTION", "schema")
        assert not can("postgres", "auth", "CREATE", "schema")
        assert not can("postgres", "storage", "CREATE", "schema")
        assert can("dashboard_user", "auth.users", "DELETE")
        # Closed migration tables: no direct grant (postgres still reads them via pg_read_all_data).
        direct = conn.execute(
            "SELECT c.oid::regclass::text FROM pg_class AS c, aclexplode(c.relacl) AS a"
            " WHERE c.oid IN ('auth.schema_migrations'::regclass, 'storage.migrations'::regclass)"
            " AND a.grantee = 'postgres'::regrole").fetchall()
        assert direct == []
        for role in ("anon", "authenticated", "service_role"):
            assert can(role, "public.todos", "SELECT")
            assert can(role, "public.posts_id_seq", "USAGE", "sequence")
        assert not can("anon", "public.events", "INSERT")
        assert not can("anon", "public.comments", "INSERT")


def test_default_privileges_of_supabase_admin_and_postgres(supabase_server: SupabaseServer,
                                                          shape_db: str) -> None:
    with supabase_server.admin(shape_db) as conn:
        rows = conn.execute(
            "SELECT pg_get_userbyid(d.defaclrole), d.defaclnamespace::regnamespace::text,"
            " d.defaclobjtype, array_agg(pg_get_userbyid(a.grantee)::text)"
            " FROM pg_default_acl AS d, aclexplode(d.defaclacl) AS a"
            " GROUP BY 1, 2, 3").fetchall()
        acl = {(r[0], r[1], r[2]): set(r[3]) for r in rows}
        api = {"postgres", "anon", "authenticated", "service_role"}
        for objtype in ("r", "S", "f"):
            assert api <= acl[(ADMIN, "public", objtype)]
            assert api <= acl[("postgres", "public", objtype)]
            assert {"postgres", "dashboard_user"} <= acl[("supabase_auth_admin", "auth", objtype)]
            assert api <= acl[("supabase_storage_admin", "storage", objtype)]


def test_six_event_triggers_owned_by_supabase_admin(supabase_server: SupabaseServer,
                                                    shape_db: str) -> None:
    with supabase_server.connect(shape_db) as conn:
        rows = conn.execute(
            "SELECT e.evtname, pg_get_userbyid(e.evtowner), e.evtevent,"
            " p.pronamespace::regnamespace || '.' || p.proname"
            " FROM pg_event_trigger AS e JOIN pg_proc AS p ON p.oid = e.evtfoid ORDER BY 1").fetchall()
    assert tuple(r[0] for r in rows) == EVENT_TRIGGERS
    assert {r[1] for r in rows} == {ADMIN}
    assert all(r[3].startswith("extensions.") for r in rows)
    events = {r[0]: r[2] for r in rows}
    assert events["pgrst_drop_watch"] == events["issue_graphql_placeholder"] == "sql_drop"
    assert events["pgrst_ddl_watch"] == events["issue_pg_net_access"] == "ddl_command_end"


def test_realtime_publication_is_postgres_s(supabase_server: SupabaseServer, shape_db: str) -> None:
    with supabase_server.connect(shape_db) as conn:
        assert _one(conn, "SELECT pg_get_userbyid(pubowner) FROM pg_publication"
                          " WHERE pubname = 'supabase_realtime'") == "postgres"
        tables = {r[0] for r in conn.execute(
            "SELECT schemaname || '.' || tablename FROM pg_publication_tables"
            " WHERE pubname = 'supabase_realtime'").fetchall()}
    assert tables == {"public.todos", "public.posts", "public.comments"}


def test_rls_policies_use_auth_uid(supabase_server: SupabaseServer, shape_db: str) -> None:
    user = "7ac5b8b9-c2ed-0ab4-4a10-42d5dbac0d7e"  # never inserted: sees no private rows
    with supabase_server.connect(shape_db) as conn:
        rls = dict(conn.execute(
            "SELECT oid::regclass::text, relrowsecurity FROM pg_class WHERE oid IN"
            " ('public.profiles'::regclass, 'public.todos'::regclass, 'public.posts'::regclass,"
            "  'public.comments'::regclass, 'public.events'::regclass,"
            "  'storage.objects'::regclass)").fetchall())
        assert all(rls.values()) and len(rls) == 6
        quals = [r[0] for r in conn.execute(
            "SELECT coalesce(qual, '') || coalesce(with_check, '') FROM pg_policies"
            " WHERE schemaname = 'public'").fetchall()]
        assert len(quals) >= 9 and sum("auth.uid()" in q for q in quals) >= 6
        # As the API does it: role `authenticated` with the JWT's claims in a setting.
        first = _one(conn, "SELECT user_id FROM public.todos ORDER BY id LIMIT 1")
        with conn.transaction():
            conn.execute("SET LOCAL ROLE authenticated")
            conn.execute("SELECT set_config('request.jwt.claims', %s, true)",
                         [json.dumps({"sub": str(first), "role": "authenticated"})])
            mine = _one(conn, "SELECT count(*) FROM public.todos")
            assert _one(conn, "SELECT auth.uid()") == first
            conn.execute("SELECT set_config('request.jwt.claims', %s, true)",
                         [json.dumps({"sub": user})])
            assert _one(conn, "SELECT count(*) FROM public.todos") == 0
        assert mine == 4
        with conn.transaction():
            conn.execute("SET LOCAL ROLE anon")
            assert _one(conn, "SELECT count(*) FROM public.posts WHERE status <> 'published'") == 0
            assert _one(conn, "SELECT count(*) FROM public.posts") == 450


def test_signup_trigger_on_auth_users_fills_profiles(supabase_server: SupabaseServer,
                                                     supabase_project_db: str) -> None:
    with supabase_server.admin(supabase_project_db) as conn, conn.transaction():
        conn.execute("SET LOCAL ROLE supabase_auth_admin")  # as the auth service inserts
        new_id = _one(conn, "INSERT INTO auth.users (id, aud, role, email, raw_user_meta_data,"
                            " created_at) VALUES (gen_random_uuid(), 'authenticated',"
                            " 'authenticated', 'New.Person@example.test',"
                            " '{\"full_name\": \"New Person\"}', now()) RETURNING id")
    with supabase_server.connect(supabase_project_db) as conn:
        row = conn.execute("SELECT username, full_name FROM public.profiles WHERE id = %s",
                           [new_id]).fetchone()
        assert row == ("new.person@example.test", "New Person")
        tgt = conn.execute("SELECT t.tgname, p.pronamespace::regnamespace || '.' || p.proname"
                           " FROM pg_trigger AS t JOIN pg_proc AS p ON p.oid = t.tgfoid"
                           " WHERE t.tgrelid = 'auth.users'::regclass AND NOT t.tgisinternal").fetchall()
        assert tgt == [("on_auth_user_created", "public.handle_new_user")]


def test_operator_cannot_touch_what_supabase_admin_owns(supabase_server: SupabaseServer,
                                                        supabase_project_db: str) -> None:
    with supabase_server.connect(supabase_project_db) as conn:
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="schema auth"):
            conn.execute("CREATE TABLE auth.mine (id int)")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="must be owner"):
            conn.execute("ALTER TABLE storage.objects ADD COLUMN x int")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match="event trigger"):
            conn.execute("CREATE EVENT TRIGGER mine ON ddl_command_end"
                         " EXECUTE FUNCTION extensions.pgrst_ddl_watch()")
        with pytest.raises(psycopg.errors.InsufficientPrivilege, match='member of role "supabase_admin"'):
            conn.execute("ALTER DEFAULT PRIVILEGES FOR ROLE supabase_admin IN SCHEMA public"
                         " GRANT SELECT ON TABLES TO anon")
        conn.execute("CREATE TABLE public.mine (id int)")  # its own schema work is fine


def test_data_and_sequences(supabase_server: SupabaseServer, shape_db: str) -> None:
    counts = supabase_server.counts(shape_db, APP_TABLES + AUTH_TABLES + STORAGE_TABLES)
    assert counts[("auth", "users")] == counts[("public", "profiles")] == 300
    assert all(counts[("public", f"events_{p}")] > 0 for p in ("2025_h1", "2025_h2", "default"))
    assert 5_000 < sum(counts.values()) < 20_000
    with supabase_server.connect(shape_db) as conn:
        assert _one(conn, "SELECT last_value FROM public.posts_id_seq") == 50000
        assert _one(conn, "SELECT count(*) FROM public.post_stats") == 300
        assert _one(conn, 'SELECT max(id) FROM "Ops Data"."Run Log"') == 120


def test_pg_dump_as_postgres_succeeds(supabase_server: SupabaseServer, shape_db: str,
                                      tmp_path: Path) -> None:
    archive = tmp_path / "project.dump"
    proc = supabase_server.tool("pg_dump", "-Fc", "-d", shape_db, "-f", str(archive))
    assert proc.returncode == 0, proc.stderr
    listing = supabase_server.tool("pg_restore", "-l", str(archive), check=True).stdout
    assert listing.count("EVENT TRIGGER") == 6
    assert "DEFAULT ACL public DEFAULT PRIVILEGES FOR TABLES supabase_admin" in listing
    assert "PUBLICATION - supabase_realtime postgres" in listing
    assert "TABLE DATA auth users supabase_auth_admin" in listing


def test_workspace_logs_in_as_postgres(supabase_workspace: Workspace,
                                       supabase_server: SupabaseServer) -> None:
    values = {}
    for line in supabase_workspace.env_file.read_text().splitlines():
        key, _, value = line.partition("=")
        values[key] = value[1:-1].replace("\\'", "'").replace("\\\\", "\\")
    assert values["SUPABASE_DB_USER"] == "postgres"
    assert values["SUPABASE_DB_PASSWORD"] == supabase_server.password
    with psycopg.connect(host=values["SUPABASE_DB_HOST"], port=int(values["SUPABASE_DB_PORT"]),
                         dbname=values["SUPABASE_DB_NAME"], user=values["SUPABASE_DB_USER"],
                         password=values["SUPABASE_DB_PASSWORD"]) as conn:
        assert _one(conn, "SELECT count(*) FROM public.todos") == 1200
