"""Other PostgreSQL versions, with real servers and client tools (tests/pgversions.py finds them;
.ci/setup installs them): the zstd fallback of pg_dump builds without zstd (16.2 and 18.6 from
PyPI), a 17 server dumped with the 18 client, an archive too new for the pg_restore available,
and a drill into a newer server than the backup's."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PASSWORD, Server, Workspace
from tests.pgversions import need_client, need_server
from tui.core.cluster import ThrowawayCluster
from tui.core.pgtools import find_candidates, server_binaries, supports_zstd

DEBIAN_15 = Path("/usr/lib/postgresql/15/bin")

SCHEMA = """
CREATE TABLE public.items (id bigserial PRIMARY KEY, name text NOT NULL,
                           created timestamptz NOT NULL DEFAULT now());
INSERT INTO public.items (name) SELECT 'item ' || g FROM generate_series(1, 20000) g;
CREATE TABLE public.tags (id int PRIMARY KEY, item_id bigint REFERENCES public.items (id),
                          tag text);
INSERT INTO public.tags SELECT g, g, 'tag ' || (g % 17) FROM generate_series(1, 5000) g;
CREATE INDEX ON public.tags (tag);
CREATE SCHEMA app;
CREATE TABLE app.settings (key text PRIMARY KEY, value jsonb);
INSERT INTO app.settings VALUES ('a', '{"x": 1}'), ('b', '[1, 2]');
CREATE VIEW app.item_tags AS SELECT i.name, t.tag FROM public.items i JOIN public.tags t
    ON t.item_id = i.id;
"""
EXPECTED = {("public", "items"): 20000, ("public", "tags"): 5000, ("app", "settings"): 2}


@pytest.fixture(scope="module")
def servers() -> Iterator[dict[int, Server]]:
    """Servers of other versions, started on first use and stopped at the module's end."""
    started: dict[int, Server] = {}
    yield started
    for s in started.values():
        s.cluster.stop()


def _server(servers: dict[int, Server], major: int) -> Server:
    if major not in servers:
        cluster = ThrowawayCluster(password=PASSWORD, bindir=need_server(major))
        cluster.start()
        assert cluster.major == major
        servers[major] = Server(cluster, PASSWORD)
    return servers[major]


def _database(server: Server) -> str:
    name = server.create_db()
    with server.connect(name) as conn:
        conn.execute(SCHEMA)
    return name


def _counts(server: Server, dbname: str) -> dict[tuple[str, str], int]:
    return server.counts(dbname, list(EXPECTED))


def _backup(ws: Workspace) -> tuple[dict, str]:
    proc = ws.run("backup", "--reason", "version test", check=True)
    archives = sorted(ws.backup_dir.glob("*.backup"))
    assert len(archives) == 1, archives
    meta = json.loads((archives[0].parent / (archives[0].name + ".meta")).read_text())
    return meta, proc.stdout + proc.stderr


def test_the_pypi_builds_lack_zstd_and_the_probe_needs_no_server() -> None:
    for major in (16, 18):
        pg_dump = find_candidates("pg_dump", need_client(major))[0]
        assert pg_dump.major == major
        started = time.monotonic()
        assert supports_zstd(pg_dump) is False
        assert time.monotonic() - started < 5
    debian = find_candidates("pg_dump", DEBIAN_15)[0]
    assert supports_zstd(debian) is False  # 15 has no --compress=zstd at all


@pytest.mark.parametrize("major", [16, 18])
def test_default_backup_with_a_pg_dump_without_zstd_uses_the_zstd_container_and_restores(
    major: int, servers: dict[int, Server], tmp_path: Path
) -> None:
    server = _server(servers, major)
    dbname = _database(server)
    ws = Workspace(tmp_path, server, dbname)
    ws.write_env(PG_BIN_DIR=str(need_client(major)))  # BACKUP_COMPRESSION: the default zstd:3
    meta, output = _backup(ws)
    archive = ws.backup_dir / meta["archive"]["file"]
    assert meta["server_version"].startswith(f"{major}.")
    assert meta["pg_dump_version"].startswith(f"{major}.")
    assert meta["archive"]["compression"] == "zstd:3"
    assert meta["archive"]["container"] == "zstd"
    assert meta["archive"]["compressed_by"] == "zstd program"
    assert "built without zstd" in meta["archive"]["compression_fallback"]
    assert "built without zstd" in output
    with archive.open("rb") as f:
        assert f.read(4) == b"\x28\xb5\x2f\xfd"  # a zstd frame
    assert {(t["schema"], t["name"]): t["rows"] for t in meta["tables"]} == EXPECTED

    with server.connect(dbname) as conn:
        conn.execute("DELETE FROM public.tags WHERE id % 2 = 0; DROP TABLE app.settings")
    proc = ws.run("restore", meta["name"], "--yes", "--reason", "version test")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "VERIFICATION PASS" in proc.stdout
    assert _counts(server, dbname) == EXPECTED
    # A drill finds the server beside the client tools of PG_BIN_DIR (no Debian package of it).
    drill = ws.run("drill", meta["name"], "--json")
    assert drill.returncode == 0, drill.stdout + drill.stderr
    result = json.loads(drill.stdout)
    assert result["result"] == "PASS"
    assert result["restored_into"].startswith(f"throwaway PostgreSQL {major} "), result


def test_a_pg17_server_is_dumped_with_the_pg18_client_and_restored(
    servers: dict[int, Server], tmp_path: Path
) -> None:
    server = _server(servers, 17)  # the npm build: a server without client tools
    assert not (server.bindir / "pg_dump").exists()
    dbname = _database(server)
    ws = Workspace(tmp_path, server, dbname)
    ws.write_env(PG_BIN_DIR=str(need_client(18)))
    meta, _ = _backup(ws)
    assert meta["server_version"].startswith("17.") and meta["pg_dump_version"].startswith("18.")
    with server.connect(dbname) as conn:
        conn.execute("TRUNCATE public.tags")
    proc = ws.run("restore", meta["name"], "--yes", "--reason", "version test")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _counts(server, dbname) == EXPECTED


def test_an_archive_from_pg_dump_18_is_refused_by_pg_restore_15_before_the_target_is_touched(
    servers: dict[int, Server], server: Server, tmp_path: Path
) -> None:
    source = _server(servers, 18)
    ws18 = Workspace(tmp_path, source, _database(source))
    ws18.write_env(PG_BIN_DIR=str(need_client(18)))
    meta, _ = _backup(ws18)

    # The same backup directory, now pointing at the PostgreSQL 15 server with only 15's tools.
    target_db = server.create_db()
    try:
        with server.connect(target_db) as conn:
            conn.execute("CREATE TABLE keep_me (id int); INSERT INTO keep_me VALUES (1), (2)")
        ws15 = Workspace(tmp_path, server, target_db)
        ws15.write_env(PG_BIN_DIR=str(DEBIAN_15))
        proc = ws15.run("restore", meta["name"], "--yes", "--reason", "version test")
        assert proc.returncode != 0
        err = proc.stderr
        assert "18" in err and "postgresql-client-18" in err, err
        lines = err.strip().splitlines()
        error_at = next(i for i, ln in enumerate(lines) if ln.startswith("error:"))
        assert len(lines) - error_at <= 2, err  # the error and what to do: two lines
        with server.connect(target_db) as conn:
            assert conn.execute("SELECT count(*) FROM keep_me").fetchone() == (2,)
            tables = conn.execute("SELECT count(*) FROM pg_tables WHERE schemaname IN "
                                  "('public', 'app')").fetchone()
        assert tables == (1,)
        assert not list(ws15.backup_dir.glob("*emergency*"))
    finally:
        server.drop_db(target_db)


def test_a_drill_of_a_pg15_backup_runs_in_the_newer_server_of_pg_bin_dir(
    server: Server, tmp_path: Path
) -> None:
    bindir18 = need_server(18)
    assert need_client(18) == bindir18
    dbname = _database(server)
    try:
        ws = Workspace(tmp_path, server, dbname)
        ws.write_env()
        meta, _ = _backup(ws)
        assert meta["server_version"].startswith("15.")
        assert meta["archive"]["container"] == "zstd"
        assert "compression_fallback" not in meta["archive"]  # pg_dump 15: the container as usual

        ws.write_env(PG_BIN_DIR=str(bindir18))
        proc = ws.run("drill", meta["name"], "--json")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        result = json.loads(proc.stdout)
        assert result["result"] == "PASS"
        assert result["restored_into"].startswith("throwaway PostgreSQL 18"), result
        assert "PostgreSQL 18." in Path(result["report"]).read_text()
    finally:
        server.drop_db(dbname)


def test_server_binaries_look_in_pg_bin_dir_and_beside_the_client_tools(tmp_path: Path) -> None:
    bindir18 = need_server(18)
    assert server_binaries(15, bindir18) == (18, bindir18)
    # Beside the pg_dump found there: a directory of links, as a packager might lay it out.
    links = tmp_path / "bin"
    links.mkdir()
    for name in ("pg_dump", "pg_restore", "psql"):
        (links / name).symlink_to(bindir18 / name)
    major, found = server_binaries(18, links)
    assert major == 18 and found.resolve() == bindir18.resolve()
    # Nothing new enough: one plain message that says what to install.
    with pytest.raises(Exception) as info:
        server_binaries(99, links)
    text = str(info.value)
    assert "no PostgreSQL server 99 or newer" in text and "postgresql-99" in text


# -- a Supabase-shaped project on PostgreSQL 17 (Supabase's default), with the 18 client -------


@pytest.fixture(scope="module")
def supabase_17() -> Iterator[object]:
    from tests.supabase_shape import start_cluster

    server = start_cluster(PASSWORD, bindir=need_server(17))
    try:
        yield server
    finally:
        server.cluster.stop()


def test_supabase_on_17_backs_up_restores_and_drills_with_the_18_client(
    supabase_17: object, tmp_path: Path,
) -> None:
    from tests.supabase_shape import APP_TABLES, SupabaseServer, create_template

    server = supabase_17
    assert isinstance(server, SupabaseServer) and server.cluster.major == 17
    db = server.create_db(template=create_template(server, name="tpl_sb17"))
    client18 = need_client(18)
    ws = Workspace(tmp_path, server, db)
    ws.write_env(PG_BIN_DIR=str(client18))
    out = json.loads(ws.run("backup", "--json", check=True).stdout)
    meta = json.loads(Path(out["meta_path"]).read_text())
    assert meta["pg_dump_version"].startswith("18.") and meta["server_version"].startswith("17.")
    with server.connect(db) as conn:
        conn.execute("DELETE FROM public.todos WHERE id % 2 = 0")
    proc = ws.run("restore", "latest", "--yes")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "VERIFICATION PASS" in proc.stdout
    expected = {(t["schema"], t["name"]): t["rows"] for t in meta["tables"]}
    assert server.counts(db, APP_TABLES) == {t: expected[t] for t in APP_TABLES}
    # The 18 server beside that client lacks pgcrypto and uuid-ossp, which the backup uses:
    # the drill says so before it starts anything.
    proc = ws.run("drill")
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "can create the extensions the backup uses" in proc.stderr
    assert "lacks pgcrypto, uuid-ossp" in proc.stderr and "Traceback" not in proc.stderr
    # With a 17 server that has them beside the 18 client tools, the drill passes.
    tools = tmp_path / "tools"
    tools.mkdir()
    for name in ("pg_dump", "pg_restore", "psql", "pg_dumpall"):
        (tools / name).symlink_to(client18 / name)
    for name in ("initdb", "pg_ctl", "postgres"):
        (tools / name).symlink_to(need_server(17) / name)
    ws.write_env(PG_BIN_DIR=str(tools))
    proc = ws.run("drill")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Drill PASS" in proc.stdout and "PostgreSQL 17" in proc.stdout
