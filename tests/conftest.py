"""Shared fixtures: one real PostgreSQL for the session (started by the engine's own throwaway
cluster component), template databases for the pagila and Supabase-shaped fixtures, and a helper
that runs the real `pgrunbook` CLI in a subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import psycopg
import pytest
from psycopg import sql

from tui.core.cluster import ThrowawayCluster, free_port
from tui.core.demo import load_supabase_shaped

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
PAGILA = SHARED / "fixtures" / "pagila"
PASSWORD = "s3cret-Pa55:word\\with-odd chars"

# Variables that must not leak from the developer's shell into the CLI under test.
_SETTING_PREFIXES = ("SUPABASE_DB_", "PGRUNBOOK_", "BACKUP_", "DATABASE_URL", "PG", "AWS_")


@dataclass
class Server:
    cluster: ThrowawayCluster
    password: str

    @property
    def port(self) -> int:
        return self.cluster.port

    @property
    def bindir(self) -> Path:
        assert self.cluster.bindir is not None
        return self.cluster.bindir

    def connect(self, dbname: str = "postgres", autocommit: bool = True) -> psycopg.Connection:
        return psycopg.connect(host="127.0.0.1", port=self.port, user="postgres",
                               password=self.password, dbname=dbname, autocommit=autocommit)

    def create_db(self, template: str | None = None, name: str | None = None) -> str:
        name = name or f"t_{uuid.uuid4().hex[:10]}"
        with self.connect() as conn:
            q = sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name))
            if template:
                q += sql.SQL(" TEMPLATE {}").format(sql.Identifier(template))
            conn.execute(q)
        return name

    def drop_db(self, name: str) -> None:
        with self.connect() as conn:
            conn.execute(sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(
                sql.Identifier(name)))

    def psql(self, dbname: str, *args: str) -> subprocess.CompletedProcess[str]:
        env = {**clean_env(), "PGPASSWORD": self.password}
        return subprocess.run(
            [str(self.bindir / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", "127.0.0.1",
             "-p", str(self.port), "-U", "postgres", "-d", dbname, *args],
            capture_output=True, text=True, env=env, check=True)

    def block_create_table(self, dbname: str, key: int) -> psycopg.Connection:
        """Make a restore into `dbname` stop at its first CREATE TABLE until the returned
        connection lets go: an event trigger (outside any archive's schemas) waits for an
        advisory lock that connection holds. It is named like pgrunbook's own sessions, so
        --terminate-connections leaves it alone. Close it to let the restore go on."""
        with self.connect(dbname) as conn:
            conn.execute(f"""CREATE SCHEMA blocker;
                CREATE FUNCTION blocker.wait() RETURNS event_trigger LANGUAGE plpgsql AS
                $$ BEGIN PERFORM pg_advisory_lock({key}); PERFORM pg_advisory_unlock({key}); END $$;
                CREATE EVENT TRIGGER blocker ON ddl_command_start WHEN TAG IN ('CREATE TABLE')
                EXECUTE FUNCTION blocker.wait();""")
        holder = self.connect(dbname)  # advisory locks belong to one database
        holder.execute("SET application_name = 'pgrunbook'")
        holder.execute("SELECT pg_advisory_lock(%s)", [key])
        return holder

    def counts(self, dbname: str, tables: list[tuple[str, str]]) -> dict[tuple[str, str], int]:
        out = {}
        with self.connect(dbname) as conn:
            for schema, name in tables:
                row = conn.execute(sql.SQL("SELECT count(*) FROM ONLY {}.{}").format(
                    sql.Identifier(schema), sql.Identifier(name))).fetchone()
                out[(schema, name)] = row[0]
        return out


def clean_env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(_SETTING_PREFIXES)}


@pytest.fixture(scope="session")
def server() -> Iterator[Server]:
    cluster = ThrowawayCluster(password=PASSWORD)
    cluster.start()
    try:
        yield Server(cluster, PASSWORD)
    finally:
        cluster.stop()


@pytest.fixture(scope="session")
def pagila_template(server: Server) -> str:
    name = server.create_db(name="tpl_pagila")
    server.psql(name, "-f", str(PAGILA / "pagila-schema.sql"))
    server.psql(name, "-f", str(PAGILA / "pagila-data.sql"))
    server.psql(name, "-c", "ANALYZE")
    return name


@pytest.fixture(scope="session")
def supabase_template(server: Server) -> str:
    name = server.create_db(name="tpl_supabase")
    with server.connect(name) as conn:
        load_supabase_shaped(conn, transactions=20_000)
    return name


@pytest.fixture
def pagila_db(server: Server, pagila_template: str) -> Iterator[str]:
    name = server.create_db(template=pagila_template)
    yield name
    server.drop_db(name)


@pytest.fixture
def supabase_db(server: Server, supabase_template: str) -> Iterator[str]:
    name = server.create_db(template=supabase_template)
    yield name
    server.drop_db(name)


@dataclass
class Workspace:
    """A directory with a `.env.deployment` pointing at one test database."""

    path: Path
    server: Server
    dbname: str

    @property
    def env_file(self) -> Path:
        return self.path / ".env.deployment"

    @property
    def backup_dir(self) -> Path:
        return self.path / "backups"

    def write_env(self, **extra: str) -> Path:
        values = {
            "SUPABASE_DB_HOST": "127.0.0.1",
            "SUPABASE_DB_PORT": str(self.server.port),
            "SUPABASE_DB_NAME": self.dbname,
            "SUPABASE_DB_USER": "postgres",
            "SUPABASE_DB_PASSWORD": self.server.password,
            "PGRUNBOOK_DEFAULT_TARGET": "testdb",
            **extra,
        }
        lines = []
        for k, v in values.items():
            escaped = v.replace("\\", "\\\\").replace("'", "\\'")
            lines.append(f"{k}='{escaped}'")
        self.env_file.write_text("\n".join(lines) + "\n")
        os.chmod(self.env_file, 0o600)
        return self.env_file

    def cli_argv(self, *args: str) -> list[str]:
        return [sys.executable, "-m", "tui", *args]

    def run(self, *args: str, check: bool = False, **kw: object) -> subprocess.CompletedProcess[str]:
        proc = subprocess.run(self.cli_argv(*args), cwd=self.path, env=kw.pop("env", clean_env()),
                              capture_output=True, text=True, timeout=300, **kw)  # type: ignore[call-overload]
        if check and proc.returncode != 0:
            raise AssertionError(f"pgrunbook {' '.join(args)} exited {proc.returncode}:\n"
                                 f"{proc.stdout}\n{proc.stderr}")
        return proc


@pytest.fixture
def workspace(tmp_path: Path, server: Server, pagila_db: str) -> Workspace:
    ws = Workspace(tmp_path, server, pagila_db)
    ws.write_env()
    return ws


def restore_bare(server: Server, archive: Path, tmp_path: Path) -> str:
    """Restore with bare pg_restore (decompressing a zstd container first) into a new database."""
    plain = archive
    with archive.open("rb") as f:
        if f.read(4) == b"\x28\xb5\x2f\xfd":
            plain = tmp_path / (archive.name + ".plain")
            subprocess.run(["zstd", "-dq", "-f", "-o", str(plain), str(archive)], check=True)
    scratch = server.create_db()
    env = {**clean_env(), "PGPASSWORD": server.password}
    proc = subprocess.run(
        [str(server.bindir / "pg_restore"), "--exit-on-error", "-h", "127.0.0.1", "-p",
         str(server.port), "-U", "postgres", "-d", scratch, str(plain)],
        capture_output=True, text=True, env=env)
    assert proc.returncode == 0, proc.stderr
    return scratch


# -- A Supabase-shaped cluster: the operator is `postgres`, not a superuser (tests/supabase_shape.py)
from tests.supabase_shape import SupabaseServer, create_template, start_cluster  # noqa: E402


@pytest.fixture(scope="session")
def supabase_server() -> Iterator[SupabaseServer]:
    """A cluster bootstrapped as superuser `supabase_admin`, with Supabase's cluster roles;
    `.password` is the `postgres` login's; `.connect(db, user="supabase_admin")` to check."""
    server = start_cluster(PASSWORD)
    try:
        yield server
    finally:
        server.cluster.stop()


@pytest.fixture(scope="session")
def supabase_project_template(supabase_server: SupabaseServer) -> str:
    return create_template(supabase_server)


@pytest.fixture
def supabase_project_db(supabase_server: SupabaseServer, supabase_project_template: str) -> Iterator[str]:
    """A fresh project database, created by supabase_admin and owned by `postgres`."""
    name = supabase_server.create_db(template=supabase_project_template)
    yield name
    supabase_server.drop_db(name)


@pytest.fixture
def supabase_workspace(tmp_path: Path, supabase_server: SupabaseServer,
                       supabase_project_db: str) -> Workspace:
    """A workspace whose `.env.deployment` logs in as `postgres` to a fresh project database."""
    ws = Workspace(tmp_path, supabase_server, supabase_project_db)
    ws.write_env()
    return ws


@dataclass
class Golden:
    """One real backup (archive, metadata, roles file) to copy under dated names."""

    archive: Path
    meta: dict[str, Any]
    roles: Path


@pytest.fixture(scope="module")
def golden(tmp_path_factory: pytest.TempPathFactory, server: Server,
           pagila_template: str) -> Iterator[Golden]:
    """One real backup of the pagila fixture, taken once per test module: dated copies of it
    make a history of real, checksum-valid backups (tests/test_retention.py `dated_copy`)."""
    from tui.core.metadata import read_meta

    db = server.create_db(template=pagila_template)
    ws = Workspace(tmp_path_factory.mktemp("golden"), server, db)
    ws.write_env()
    out = json.loads(ws.run("backup", "--json", check=True).stdout)
    archive = Path(out["path"])
    yield Golden(archive, read_meta(Path(out["meta_path"])), Path(f"{archive}.roles.sql"))
    server.drop_db(db)


# -- A local HTTP peer: the health URL answers 200 at /health; the chat webhook records posts
@pytest.fixture
def http_peer() -> Iterator[tuple[str, list[dict]]]:
    posts: list[dict] = []

    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

        def do_GET(self) -> None:
            self.send_response(200 if self.path == "/health" else 404)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            posts.append(json.loads(body))
            self.send_response(200)
            self.send_header("Content-Length", "2")
            self.end_headers()
            self.wfile.write(b"ok")

    port = free_port()
    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{port}", posts
    server.shutdown()
