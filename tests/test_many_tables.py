"""Thousands of tables at default server settings (issue 10, item 8).

A database of 3,000 small tables (primary key, text column, TOAST in some) on a server with
max_connections 50 and max_locks_per_transaction 64: the shared lock table holds about 64 x 50
locks, and each table brings its index, TOAST table and TOAST index. Backup, restore into the
same (populated) database, verify and drill must all pass; nothing may hold one lock per
relation for all of them in one transaction.
"""

from __future__ import annotations

import json
import shlex
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.conftest import PASSWORD, Server, Workspace
from tui.core.cluster import ThrowawayCluster

pytestmark = pytest.mark.slow

TABLES = 3000
SCHEMAS = ("public", "app")
PER_TRANSACTION = 150  # tables created per transaction (each takes 4 relation locks)
SMALL_LOCKS = {"max_connections": "50", "max_locks_per_transaction": "64"}

# One DO block per batch: table i gets 1 + i % 5 rows; every 300th also a few values large
# enough to be stored out of line in its TOAST table (random hex does not compress below 2 kB).
CREATE_BATCH = """
DO $$
DECLARE i int;
BEGIN
  FOR i IN {first}..{last} LOOP
    EXECUTE format('CREATE TABLE %I.%I (id bigint PRIMARY KEY, body text)',
                   CASE WHEN i % 2 = 0 THEN 'public' ELSE 'app' END, format('t_%s', i));
    EXECUTE format('INSERT INTO %I.%I SELECT g, CASE WHEN %s %% 300 = 0 THEN'
                   ' (SELECT string_agg(md5(random()::text || s), '''')'
                   '  FROM generate_series(1, 200) s) ELSE ''row '' || g END'
                   ' FROM generate_series(1, %s) g',
                   CASE WHEN i % 2 = 0 THEN 'public' ELSE 'app' END, format('t_%s', i),
                   i, 1 + i % 5);
  END LOOP;
END $$;
"""


def _build(server: Server, dbname: str) -> None:
    with server.connect(dbname) as conn:
        conn.execute("CREATE SCHEMA app")
        for first in range(1, TABLES + 1, PER_TRANSACTION):
            conn.execute(CREATE_BATCH.format(first=first,
                                             last=min(first + PER_TRANSACTION - 1, TABLES)))
        # Objects that depend on the tables, so emptying the schemas needs CASCADE: a view over
        # two tables, a foreign key across the schemas, a sequence owned by a column.
        conn.execute("CREATE VIEW public.joined AS SELECT a.id, a.body, b.body AS other"
                     " FROM public.t_2 a JOIN app.t_1 b USING (id)")
        conn.execute("ALTER TABLE app.t_3 ADD FOREIGN KEY (id) REFERENCES public.t_4 (id)")
        conn.execute("CREATE SEQUENCE public.t_6_seq OWNED BY public.t_6.id;"
                     " SELECT setval('public.t_6_seq', (SELECT max(id) FROM public.t_6))")


@pytest.fixture(scope="module")
def small_server() -> Iterator[Server]:
    cluster = ThrowawayCluster(password=PASSWORD, extra_conf=SMALL_LOCKS)
    cluster.start()
    try:
        yield Server(cluster, PASSWORD)
    finally:
        cluster.stop()


def _json(proc: object) -> dict:
    return json.loads(proc.stdout)  # type: ignore[attr-defined]


def test_3000_tables_back_up_restore_verify_and_drill_at_default_lock_settings(
        small_server: Server, tmp_path: Path) -> None:
    server = small_server
    with server.connect() as conn:
        settings = dict(conn.execute(
            "SELECT name, setting FROM pg_settings WHERE name IN"
            " ('max_connections', 'max_locks_per_transaction')").fetchall())
    assert settings == SMALL_LOCKS
    dbname = server.create_db(name="many")
    t0 = time.monotonic()
    _build(server, dbname)
    built = time.monotonic() - t0
    with server.connect(dbname) as conn:
        toasted = conn.execute(
            "SELECT count(*) FROM pg_class c WHERE c.relkind = 'r' AND c.reltoastrelid <> 0"
            " AND pg_relation_size(c.reltoastrelid) > 0"
            " AND c.relnamespace::regnamespace::text IN ('public', 'app')").fetchone()[0]
        assert toasted == TABLES // 300

    ws = Workspace(tmp_path, server, dbname)
    ws.write_env()
    timings = {"build": built}

    t0 = time.monotonic()
    out = _json(ws.run("backup", "--json", check=True))
    timings["backup"] = time.monotonic() - t0
    meta = json.loads(Path(out["meta_path"]).read_text())
    assert len(meta["tables"]) == TABLES
    expected = {(t["schema"], t["name"]): t["rows"] for t in meta["tables"]}
    assert expected[("public", "t_10")] == 1 and expected[("app", "t_9")] == 5

    # Damage: rows gone, a table dropped; the restore goes into this populated database, so a
    # safety backup is taken and the schemas emptied before pg_restore runs.
    with server.connect(dbname) as conn:
        conn.execute("DELETE FROM public.t_300; DROP TABLE app.t_299; CREATE TABLE app.extra ()")
    t0 = time.monotonic()
    proc = ws.run("restore", "latest", "--yes", "--json")
    timings["restore"] = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout + proc.stderr
    result = _json(proc)
    assert result["verification"]["result"] == "PASS"
    assert result["safety_backup"].endswith("_emergency_pre_rollback")
    assert server.counts(dbname, [("public", "t_300"), ("app", "t_299")]) == {
        ("public", "t_300"): expected[("public", "t_300")],
        ("app", "t_299"): expected[("app", "t_299")]}
    with server.connect(dbname) as conn:
        assert conn.execute("SELECT to_regclass('app.extra')").fetchone()[0] is None
        assert conn.execute("SELECT count(*) FROM public.joined").fetchone()[0] == 2
    safety = json.loads((ws.backup_dir / f"{result['safety_backup']}.backup.meta").read_text())
    assert len(safety["tables"]) == TABLES  # 3,000 minus the dropped table plus app.extra

    t0 = time.monotonic()
    proc = ws.run("verify", meta["name"], "--json")
    timings["verify"] = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _json(proc)["result"] == "PASS"

    # The drill's own throwaway server runs at PostgreSQL's defaults.
    t0 = time.monotonic()
    proc = ws.run("drill", meta["name"], "--json")
    timings["drill"] = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert _json(proc)["result"] == "PASS"

    # Emptying 3,000 tables takes several transactions: a failure after the first of them says
    # the target is partly emptied and how to undo that with the safety backup. Here a session
    # (named like pgrunbook's own, so --terminate-connections spares it) holds a lock on a table
    # one of the last batches drops, and the restore's --lock-timeout runs out.
    with server.connect(dbname) as conn:
        conn.execute("DELETE FROM app.t_1")
    before = server.counts(dbname, sorted(expected))
    holder = server.connect(dbname, autocommit=False)
    try:
        holder.execute("SET application_name = 'pgrunbook'")
        holder.execute("LOCK TABLE public.t_998 IN ACCESS SHARE MODE")
        t0 = time.monotonic()
        proc = ws.run("restore", meta["name"], "--yes", "--lock-timeout", "1s",
                      "--terminate-connections")
        timings["partly emptied"] = time.monotonic() - t0
    finally:
        holder.close()
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "PARTLY EMPTIED" in proc.stderr and "lock timeout" in proc.stderr, proc.stderr
    print(proc.stderr.split("error: ", 1)[1])  # noqa: T201
    undo = proc.stderr.split("restore the safety backup to undo: ", 1)[1].split(".\n")[0]
    assert undo.startswith("pgrunbook --target testdb restore ") and "_emergency_" in undo
    with server.connect(dbname) as conn:
        assert conn.execute("SELECT to_regclass('app.t_2')").fetchone()[0] is None  # dropped
        assert conn.execute("SELECT to_regclass('public.t_998')").fetchone()[0] is not None
    t0 = time.monotonic()
    proc = ws.run(*shlex.split(undo)[1:])
    timings["undo"] = time.monotonic() - t0
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "VERIFICATION PASS" in proc.stdout
    assert server.counts(dbname, sorted(expected)) == before
    print("timings:", {k: round(v, 1) for k, v in timings.items()})  # noqa: T201


def test_a_lock_table_too_small_for_pg_dump_names_the_setting_and_the_value(
        tmp_path: Path) -> None:
    """pg_dump locks every table it dumps in its one transaction: when the server's lock table
    cannot hold that many, the backup says which setting to raise and to what."""
    tiny = {"max_connections": "20", "max_locks_per_transaction": "10"}
    with ThrowawayCluster(password=PASSWORD, extra_conf=tiny) as cluster:
        server = Server(cluster, PASSWORD)
        dbname = server.create_db(name="many")
        with server.connect(dbname) as conn:
            for first in range(1, 2001, 40):
                conn.execute(f"""DO $$ BEGIN FOR i IN {first}..{first + 39} LOOP
                    EXECUTE format('CREATE TABLE %I (id bigint PRIMARY KEY)', 't_' || i);
                    END LOOP; END $$""")
        ws = Workspace(tmp_path, server, dbname)
        ws.write_env()
        proc = ws.run("backup")
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert "internal error" not in proc.stderr
        lines = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
        assert len(lines) == 1, proc.stderr
        assert "lock table is full" in lines[0] and "pg_dump takes about 2,000 locks" in lines[0]
        assert "max_locks_per_transaction 10 x (max_connections 20" in lines[0]
        assert "Set max_locks_per_transaction = 256 on the server and restart it" in proc.stderr
        assert not list(ws.backup_dir.glob("*.backup"))
