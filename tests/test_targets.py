"""A target's identity is its endpoint: what the operator confirms is what gets written.

The issue's scenario: the SOP exports `.env.deployment`'s variables into the shell
(`export $(grep -v '^#' .env.deployment | xargs)`), and a later command reads another settings
file. The environment wins over a file, so it could silently move that file's target to
production's endpoint, under the file's name and its production protection."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from tests.conftest import Server, Workspace, clean_env
from tui.core.cluster import ThrowawayCluster
from tui.core.demo import Demo, demo_settings
from tui.core.errors import OperationFailed
from tui.core.settings import load_settings


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    os.chmod(path, 0o600)
    return path


# -- the settings alone ----------------------------------------------------------------------


def test_the_environment_moving_a_files_target_is_named_field_by_field(tmp_path: Path) -> None:
    env_file = write(tmp_path / "staging.env",
                     "PGRUNBOOK_DEFAULT_TARGET=staging\nSUPABASE_DB_HOST=10.0.0.5\n"
                     "SUPABASE_DB_PORT=5433\nSUPABASE_DB_NAME=app\n")
    s = load_settings(env_file=env_file, environ={}, cwd=tmp_path)
    assert s.target.overridden == "" and s.warnings == ()
    s = load_settings(env_file=env_file, environ={"SUPABASE_DB_PORT": "5432",
                                                   "SUPABASE_DB_NAME": "postgres"}, cwd=tmp_path)
    note = s.target.overridden
    assert "port 5432 (file: 5433)" in note and "database 'postgres' (file: 'app')" in note
    assert "host" not in note.split(":")[1] and note in s.warnings
    assert "postgres@10.0.0.5:5432/postgres" in note
    # The same values from the environment as in the file change nothing.
    s = load_settings(env_file=env_file, environ={"SUPABASE_DB_PORT": "5433"}, cwd=tmp_path)
    assert s.target.overridden == ""
    # Only the password from the environment is not a move.
    s = load_settings(env_file=env_file, environ={"SUPABASE_DB_PASSWORD": "x"}, cwd=tmp_path)
    assert s.target.overridden == ""


def test_an_exported_database_url_moving_the_target_is_named(tmp_path: Path) -> None:
    env_file = write(tmp_path / "demo.env",
                     "PGRUNBOOK_DEFAULT_TARGET=demo\nSUPABASE_DB_HOST=127.0.0.1\n"
                     "SUPABASE_DB_PORT=6000\n")
    s = load_settings(env_file=env_file, cwd=tmp_path, environ={
        "DATABASE_URL": "postgresql://postgres:pw@db.prod.example:5432/appdb"})
    assert s.target.dbname == "appdb" and "database 'appdb' (file: 'postgres')" in \
        s.target.overridden
    assert "pw" not in s.target.overridden


def test_a_target_with_a_production_endpoint_is_production_whatever_its_name(
    tmp_path: Path,
) -> None:
    env_file = write(tmp_path / "staging.env",
                     "PGRUNBOOK_DEFAULT_TARGET=staging\nSUPABASE_DB_HOST=127.0.0.1\n"
                     "SUPABASE_DB_PORT=6543\n"
                     "PGRUNBOOK_TARGET_PRODUCTION=postgresql://postgres@127.0.0.1:5433/postgres\n")
    s = load_settings(env_file=env_file, environ={}, cwd=tmp_path)
    assert not s.target.production
    # A staging file with production's port exported.
    s = load_settings(env_file=env_file, environ={"SUPABASE_DB_PORT": "5433"}, cwd=tmp_path)
    assert s.target.name == "staging" and s.target.production
    assert "'production'" in s.target.production_reason and s.target.overridden
    # Another name for the same endpoint, from the file alone.
    write(env_file, env_file.read_text() +
          "PGRUNBOOK_TARGET_COPY=postgresql://postgres@127.0.0.1:5433/postgres\n")
    s = load_settings(env_file=env_file, environ={}, cwd=tmp_path, target="copy")
    assert s.target.production and s.target.overridden == ""
    # Host names compare without case.
    write(env_file, env_file.read_text() +
          "PGRUNBOOK_TARGET_UPPER=postgresql://postgres@DB.Prod.Example:5432/postgres\n"
          "PGRUNBOOK_TARGET_LOWER=postgresql://postgres@db.prod.example:5432/postgres\n"
          "PGRUNBOOK_PRODUCTION_TARGETS=production,lower\n")
    assert load_settings(env_file=env_file, environ={}, cwd=tmp_path, target="upper").target \
        .production


def test_production_exported_by_the_sop_stays_production_under_another_files_name(
    tmp_path: Path,
) -> None:
    # The SOP's export of the production file: SUPABASE_DB_* in the environment, default
    # target production. Then a demo-like file without the isolation setting.
    exported = {"SUPABASE_DB_HOST": "db.prod.example", "SUPABASE_DB_PORT": "5432",
                "SUPABASE_DB_NAME": "postgres", "SUPABASE_DB_PASSWORD": "prod-pw",
                "PGRUNBOOK_DEFAULT_TARGET": "production"}
    env_file = write(tmp_path / "demo.env",
                     "PGRUNBOOK_DEFAULT_TARGET=demo\nSUPABASE_DB_HOST=127.0.0.1\n"
                     "SUPABASE_DB_PORT=6000\nPGRUNBOOK_PRODUCTION_TARGETS=production\n")
    s = load_settings(env_file=env_file, environ=exported, cwd=tmp_path)
    # The exported PGRUNBOOK_DEFAULT_TARGET wins too: the target is production by its name.
    assert s.target.name == "production" and s.target.production
    del exported["PGRUNBOOK_DEFAULT_TARGET"]
    s = load_settings(env_file=env_file, environ=exported, cwd=tmp_path)
    assert s.target.name == "demo" and s.target.host == "db.prod.example"
    assert s.target.production and "production" in s.target.production_reason
    assert s.target.overridden and "prod-pw" not in " ".join(s.warnings)


def test_a_file_that_is_the_whole_truth_ignores_the_environment(tmp_path: Path) -> None:
    env_file = write(tmp_path / "demo.env",
                     "PGRUNBOOK_IGNORE_ENVIRONMENT=true\nPGRUNBOOK_DEFAULT_TARGET=demo\n"
                     "SUPABASE_DB_HOST=127.0.0.1\nSUPABASE_DB_PORT=6000\n")
    s = load_settings(env_file=env_file, cwd=tmp_path, environ={
        "SUPABASE_DB_HOST": "db.prod.example", "DATABASE_URL": "postgresql://u@h/x",
        "BACKUP_DIR": "/elsewhere"})
    assert (s.target.host, s.target.port, s.target.dbname) == ("127.0.0.1", 6000, "postgres")
    assert s.backup_dir == tmp_path / "backups" and not s.target.production
    assert s.warnings == ("demo.env is the whole truth: ignoring BACKUP_DIR, DATABASE_URL, "
                          "SUPABASE_DB_HOST from the environment.",)


def test_the_demo_settings_come_from_its_file_and_point_at_its_own_cluster(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:
    env_file = write(tmp_path / "demo.env",
                     "PGRUNBOOK_DEFAULT_TARGET=demo\nSUPABASE_DB_HOST=127.0.0.1\n"
                     "SUPABASE_DB_PORT=6000\n")  # an older demo file, without the setting
    monkeypatch.setenv("SUPABASE_DB_HOST", "db.prod.example")
    monkeypatch.setenv("SUPABASE_DB_PORT", "5432")
    cluster = ThrowawayCluster()
    cluster.port = 6000
    settings = demo_settings(Demo(tmp_path, cluster, env_file, created=False))
    assert (settings.target.host, settings.target.port) == ("127.0.0.1", 6000)
    cluster.port = 6001
    with pytest.raises(OperationFailed, match="not at the demo's own database"):
        demo_settings(Demo(tmp_path, cluster, env_file, created=False))


# -- the CLI against real databases ----------------------------------------------------------


def _marker(server: Server, dbname: str) -> None:
    with server.connect(dbname) as conn:
        conn.execute("CREATE TABLE public.written_only_here (id int)")


def _has_marker(server: Server, dbname: str) -> bool:
    with server.connect(dbname) as conn:
        return conn.execute("SELECT to_regclass('public.written_only_here')").fetchone()[0] \
            is not None


def _exported_production(server: Server, dbname: str) -> dict[str, str]:
    """The shell after the SOP's `export $(grep -v '^#' .env.deployment | xargs)`."""
    return {**clean_env(), "SUPABASE_DB_HOST": "127.0.0.1", "SUPABASE_DB_PORT": str(server.port),
            "SUPABASE_DB_NAME": dbname, "SUPABASE_DB_USER": "postgres",
            "SUPABASE_DB_PASSWORD": server.password}


def test_the_issue_scenario_restores_into_the_files_database_only(
    workspace: Workspace, server: Server, pagila_template: str,
) -> None:
    """The README's demo command with production's variables exported: the restore goes into
    the demo's database, never into the exported one."""
    production = server.create_db(template=pagila_template)
    try:
        _marker(server, production)
        workspace.write_env(PGRUNBOOK_DEFAULT_TARGET="demo", PGRUNBOOK_IGNORE_ENVIRONMENT="true")
        env = _exported_production(server, production)
        backup = workspace.run("backup", "--json", env=env, check=True)
        assert json.loads(backup.stdout)["name"]
        assert "ignoring SUPABASE_DB_NAME" in backup.stderr
        proc = workspace.run("restore", "latest", "--yes", env=env)
        assert proc.returncode == 0, proc.stderr
        assert f"/{workspace.dbname})" in proc.stderr and f"/{production})" not in proc.stderr
        assert _has_marker(server, production)
    finally:
        server.drop_db(production)


@pytest.mark.parametrize("how", ["supabase_vars", "database_url"])
def test_a_restore_into_an_endpoint_the_environment_moved_needs_the_name_typed(
    workspace: Workspace, server: Server, pagila_template: str, how: str,
) -> None:
    production = server.create_db(template=pagila_template)
    try:
        _marker(server, production)
        workspace.write_env(PGRUNBOOK_DEFAULT_TARGET="demo")
        workspace.run("backup", check=True)
        if how == "supabase_vars":
            env = _exported_production(server, production)
        else:
            # The file names no database: the exported URL's is taken.
            text = workspace.env_file.read_text().replace(
                f"SUPABASE_DB_NAME='{workspace.dbname}'\n", "")
            workspace.env_file.write_text(text)
            env = {**clean_env(), "DATABASE_URL":
                   f"postgresql://postgres@127.0.0.1:{server.port}/{production}"}
        proc = workspace.run("restore", "latest", "--yes", env=env)
        assert proc.returncode == 2, proc.stderr
        lines = proc.stderr.splitlines()
        assert lines[0].startswith("warning: the environment overrides .env.deployment's "
                                   "target 'demo': ")
        assert f"database '{production}'" in lines[0]
        assert "--yes alone is not enough" in proc.stderr and f"/{production})" in proc.stderr
        assert _has_marker(server, production)
        assert not list(workspace.backup_dir.glob("*emergency*"))
    finally:
        server.drop_db(production)
