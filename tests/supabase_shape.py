"""A Supabase-shaped PostgreSQL for the tests: a throwaway cluster whose bootstrap superuser is
`supabase_admin` and whose operator logs in as `postgres`, a NOSUPERUSER role with Supabase's
attributes and memberships, plus project databases built from tests/sql/supabase_project.sql.

Restores can then be tested as an operator on hosted Supabase runs them: as `postgres`, against
managed schemas it does not own, event triggers and default privileges of `supabase_admin`.
"""

from __future__ import annotations

import os
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path

import psycopg
from psycopg import sql

from tests.conftest import Server
from tui.core.cluster import ThrowawayCluster

SQL_DIR = Path(__file__).resolve().parent / "sql"
ROLES_SQL = SQL_DIR / "supabase_roles.sql"
PROJECT_SQL = SQL_DIR / "supabase_project.sql"

ADMIN = "supabase_admin"
OPERATOR = "postgres"
ADMIN_PASSWORD = "admin-Pa55:word\\not-the-operator's"

# What a project database holds, for tests to compare against after a restore.
MANAGED_SCHEMAS = ("auth", "storage", "extensions", "graphql_public", "realtime", "vault", "pgbouncer")
APP_TABLES = [("public", "profiles"), ("public", "todos"), ("public", "posts"),
              ("public", "comments"), ("public", "events_2025_h1"), ("public", "events_2025_h2"),
              ("public", "events_default"), ("Ops Data", "Run Log")]
AUTH_TABLES = [("auth", "users"), ("auth", "identities"), ("auth", "sessions"),
               ("auth", "refresh_tokens"), ("auth", "audit_log_entries")]
STORAGE_TABLES = [("storage", "buckets"), ("storage", "objects")]
EVENT_TRIGGERS = ("issue_graphql_placeholder", "issue_pg_cron_access", "issue_pg_graphql_access",
                  "issue_pg_net_access", "pgrst_ddl_watch", "pgrst_drop_watch")

# Database-level grants of a hosted project (CREATE DATABASE ... TEMPLATE does not copy them):
# dashboard_user ALL (supabase/postgres migrations/db/init-scripts/00000000000003-post-setup.sql),
# CREATE for the storage and realtime admins (…/00000000000002-storage-schema.sql,
# …/00000000000003-realtime-schema.sql).
_DATABASE_GRANTS = (
    "GRANT ALL ON DATABASE {db} TO dashboard_user",
    "GRANT CREATE ON DATABASE {db} TO supabase_storage_admin, supabase_realtime_admin",
)


@dataclass
class SupabaseServer(Server):
    """conftest's `Server` of a Supabase-shaped cluster: `.password` is the `postgres` login's,
    and `supabase_admin` (the superuser) connects for checks."""

    admin_password: str = ADMIN_PASSWORD

    def _password_for(self, user: str) -> str:
        return self.admin_password if user == ADMIN else self.password

    def connect(self, dbname: str = "postgres", autocommit: bool = True,
                user: str = OPERATOR) -> psycopg.Connection:
        """Connect over TCP with a password, as `postgres` (the operator) by default, or as
        `supabase_admin` (the superuser) to check what the operator cannot see."""
        return psycopg.connect(host="127.0.0.1", port=self.port, user=user,
                               password=self._password_for(user), dbname=dbname,
                               autocommit=autocommit)

    def admin(self, dbname: str = "postgres") -> psycopg.Connection:
        return self.connect(dbname, user=ADMIN)

    def create_db(self, template: str | None = None, name: str | None = None,
                  owner: str = OPERATOR) -> str:
        """Create a database as supabase_admin, owned by `postgres` (as the hosted `postgres`
        database is), with the project's database-level grants."""
        name = name or f"sb_{uuid.uuid4().hex[:10]}"
        q = sql.SQL("CREATE DATABASE {} OWNER {}").format(sql.Identifier(name), sql.Identifier(owner))
        if template:
            q += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
        with self.admin() as conn:
            conn.execute(q)
            for grant in _DATABASE_GRANTS:
                conn.execute(sql.SQL(grant).format(db=sql.Identifier(name)))
        return name

    def drop_db(self, name: str) -> None:
        with self.admin() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))

    def env(self, user: str = OPERATOR) -> dict[str, str]:
        """Environment for the cluster's client tools (pg_dump, pg_restore, psql) as `user`."""
        from tests.conftest import clean_env

        return {**clean_env(), "PGPASSWORD": self._password_for(user)}

    def tool(self, name: str, *args: str, user: str = OPERATOR,
             check: bool = False) -> subprocess.CompletedProcess[str]:
        """Run one of the cluster's client tools (`pg_dump`, `pg_restore`, `psql`) against it."""
        argv = [str(self.bindir / name), "-h", "127.0.0.1", "-p", str(self.port), "-U", user, *args]
        return subprocess.run(argv, capture_output=True, text=True, env=self.env(user),
                              check=check, timeout=300)

    def counts(self, dbname: str, tables: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
        """Row counts, read as supabase_admin (no RLS, no missing grants)."""
        out = {}
        with self.admin(dbname) as conn:
            for schema, table in tables:
                row = conn.execute(sql.SQL("SELECT count(*) FROM ONLY {}.{}").format(
                    sql.Identifier(schema), sql.Identifier(table))).fetchone()
                assert row is not None
                out[(schema, table)] = int(row[0])
        return out


def start_cluster(password: str, *, bindir: Path | None = None) -> SupabaseServer:
    """Start a cluster bootstrapped as supabase_admin and create Supabase's cluster-level roles;
    `password` becomes the `postgres` login's. Stop it with `server.cluster.stop()`."""
    if bindir is None and os.environ.get("SUPABASE_SHAPE_BINDIR"):
        bindir = Path(os.environ["SUPABASE_SHAPE_BINDIR"])
    cluster = ThrowawayCluster(superuser=ADMIN, password=ADMIN_PASSWORD, bindir=bindir)
    cluster.start()
    server = SupabaseServer(cluster, password)
    try:
        with server.admin() as conn:
            conn.execute(ROLES_SQL.read_text(encoding="utf-8"))
            conn.execute(sql.SQL("ALTER ROLE postgres PASSWORD {}").format(sql.Literal(password)))
            # On hosted projects the database `postgres` belongs to the `postgres` role.
            conn.execute("ALTER DATABASE postgres OWNER TO postgres")
    except BaseException:
        cluster.stop()
        raise
    return server


def build_project(server: SupabaseServer, dbname: str) -> None:
    """Load tests/sql/supabase_project.sql into `dbname` as supabase_admin, in one transaction."""
    with server.connect(dbname, user=ADMIN, autocommit=False) as conn:
        conn.execute(PROJECT_SQL.read_text(encoding="utf-8"))
        conn.commit()


def create_template(server: SupabaseServer, name: str = "tpl_supabase_project") -> str:
    name = server.create_db(name=name)
    build_project(server, name)
    return name
