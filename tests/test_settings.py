"""Settings: the env file, the environment that wins over it, named targets, and bad input
(one clear line, exit code 2)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT, clean_env
from tui.core.errors import ConfigError
from tui.core.settings import SETTINGS, load_settings


def write(path: Path, text: str, mode: int = 0o600) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


def test_env_file_is_read_and_the_environment_wins(tmp_path: Path) -> None:
    write(tmp_path / ".env.deployment",
          "SUPABASE_DB_HOST=db.example.supabase.co\nSUPABASE_DB_PORT=5432\n"
          "SUPABASE_DB_PASSWORD=from-file\nBACKUP_DIR=bk\n")
    s = load_settings(environ={}, cwd=tmp_path)
    assert (s.target.host, s.target.port, s.target.user, s.target.dbname) == \
        ("db.example.supabase.co", 5432, "postgres", "postgres")
    assert s.target.password is not None and s.target.password.reveal() == "from-file"
    assert s.target.name == "production" and s.target.production
    assert s.backup_dir == tmp_path / "bk"
    # The SOP's `export SUPABASE_DB_HOST=127.0.0.1` override.
    s = load_settings(environ={"SUPABASE_DB_HOST": "127.0.0.1", "SUPABASE_DB_PORT": "54322"},
                      cwd=tmp_path)
    assert (s.target.host, s.target.port) == ("127.0.0.1", 54322)
    assert s.target.password.reveal() == "from-file"


def test_database_url_with_supabase_overrides(tmp_path: Path) -> None:
    s = load_settings(environ={"DATABASE_URL": "postgresql://app:p%40ss@h.example:6000/appdb"
                               "?sslmode=require"}, cwd=tmp_path)
    t = s.target
    assert (t.host, t.port, t.user, t.dbname) == ("h.example", 6000, "app", "appdb")
    assert t.password.reveal() == "p@ss" and ("sslmode", "require") in t.params
    s = load_settings(environ={"DATABASE_URL": "postgresql://app:x@h.example/appdb",
                               "SUPABASE_DB_HOST": "other"}, cwd=tmp_path)
    assert s.target.host == "other" and s.target.dbname == "appdb"


def test_named_targets_and_production_marking(tmp_path: Path) -> None:
    env = {"SUPABASE_DB_HOST": "prod.example", "PGRUNBOOK_TARGET_STAGING":
           "postgresql://postgres@staging.example:5432/postgres",
           "PGRUNBOOK_TARGET_STAGING_PASSWORD": "st"}
    assert load_settings(environ=env, cwd=tmp_path).target.production
    staging = load_settings(environ=env, target="staging", cwd=tmp_path).target
    assert staging.host == "staging.example" and not staging.production
    assert staging.password.reveal() == "st"
    local = load_settings(environ=env, target="local", cwd=tmp_path).target
    assert (local.host, local.port) == ("127.0.0.1", 54322)
    env["PGRUNBOOK_PRODUCTION_TARGETS"] = "production,staging"
    assert load_settings(environ=env, target="staging", cwd=tmp_path).target.production


def test_secrets_never_show_in_repr(tmp_path: Path) -> None:
    s = load_settings(environ={"SUPABASE_DB_HOST": "h", "SUPABASE_DB_PASSWORD": "hunter2"},
                      cwd=tmp_path)
    assert "hunter2" not in repr(s) and "hunter2" not in str(s.target)


def test_a_bad_url_never_echoes_its_password(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as err:
        load_settings(environ={"DATABASE_URL": "mysql://u:topsecret@h/db"}, cwd=tmp_path)
    assert "topsecret" not in str(err.value) and "DATABASE_URL" in str(err.value)


def cli(tmp_path: Path, *args: str, env: dict[str, str] | None = None,
        **kw: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tui", *args], cwd=tmp_path,
                          env={**clean_env(), **(env or {})}, capture_output=True, text=True,
                          timeout=60, **kw)  # type: ignore[call-overload]


def _one_clear_line(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 2, (proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert 1 <= len(lines) <= 2 and lines[0].startswith("error: "), proc.stderr
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)


GOOD = "SUPABASE_DB_HOST=127.0.0.1\nSUPABASE_DB_PORT=5432\n"


@pytest.mark.parametrize(
    ("content", "args", "needles"),
    [
        (None, ["--env-file", "missing.env"], ["missing.env", "does not exist"]),
        ("SUPABASE_DB_HOST=h\nthis line is wrong\n", [], ["line 2"]),
        ("SUPABASE_DB_HOST=h\nSUPABASE_DB_PORT=fivefour\n", [], ["SUPABASE_DB_PORT",
                                                                   "fivefour"]),
        (GOOD, ["--target", "nosuch"], ["unknown target 'nosuch'", "Known targets"]),
        (GOOD, ["--target", "staging"], ["not configured", "PGRUNBOOK_TARGET_STAGING"]),
        ("DATABASE_URL=postgresql://u:pw@h:port/db\n", [], ["DATABASE_URL", "port"]),
        ("DATABASE_URL=not a url\n", [], ["DATABASE_URL does not parse"]),
        ("BACKUP_COMPRESSION=brotli\n" + GOOD, [], ["BACKUP_COMPRESSION"]),
        ("RESTORE_INDEX_MEMORY=lots\n" + GOOD, [], ["RESTORE_INDEX_MEMORY", "512MB"]),
        ("SUPABASE_DB_PORT=5432\n", [], ["no database host", "SUPABASE_DB_HOST"]),
    ],
)
def test_bad_settings_get_one_clear_line_and_exit_2(
    tmp_path: Path, content: str | None, args: list[str], needles: list[str]
) -> None:
    if content is not None:
        write(tmp_path / ".env.deployment", content)
    _one_clear_line(cli(tmp_path, *args, "list"), *needles)


def test_an_env_file_in_the_environment_variable_is_used(tmp_path: Path) -> None:
    proc = cli(tmp_path, "list", env={"PGRUNBOOK_ENV_FILE": str(tmp_path / "nope.env")})
    _one_clear_line(proc, "nope.env")


def test_an_unreadable_env_file(tmp_path: Path) -> None:
    path = write(tmp_path / ".env.deployment", GOOD, mode=0o000)
    if os.geteuid() != 0:
        _one_clear_line(cli(tmp_path, "--env-file", str(path), "list"), "not readable")
        return
    # Root reads anything: load the settings in a child that has become `nobody`.
    read_fd, write_fd = os.pipe()
    pid = os.fork()
    if pid == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.setgid(65534)
            os.setuid(65534)
            try:
                load_settings(env_file=path, environ={})
                message = "no error"
            except ConfigError as exc:
                message = f"{exc.exit_code} {exc}"
            os.write(write_fd, message.encode())
        finally:
            os._exit(0)
    os.close(write_fd)
    os.waitpid(pid, 0)
    message = os.read(read_fd, 4096).decode()
    os.close(read_fd)
    assert message.startswith("2 ") and "not readable" in message, message


def test_a_world_readable_env_file_gets_a_chmod_warning(tmp_path: Path) -> None:
    write(tmp_path / ".env.deployment", GOOD, mode=0o644)
    proc = cli(tmp_path, "list")
    assert proc.returncode == 0
    assert "chmod 600" in proc.stderr and ".env.deployment" in proc.stderr


def test_the_example_names_exactly_the_settings_the_code_reads() -> None:
    example = (ROOT / ".env.deployment.example").read_text()
    names = set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", example, re.M))
    specs = {s.name: s for s in SETTINGS}
    for spec in specs.values():
        if spec.is_pattern:
            assert any(spec.regex().match(n) for n in names), spec.name
        else:
            assert spec.name in names, spec.name
    for name in names:
        assert name in specs or any(s.is_pattern and s.regex().match(name)
                                    for s in specs.values()), name
    # Every documented variable has a one-line comment just above it.
    lines = example.splitlines()
    for i, line in enumerate(lines):
        if re.match(r"^#?\s*[A-Z][A-Z0-9_]*=", line):
            assert i > 0 and lines[i - 1].startswith("# ") and "=" not in lines[i - 1], line


def test_every_setting_read_by_the_code_is_declared() -> None:
    source = "\n".join(p.read_text() for p in (ROOT / "tui").rglob("*.py"))
    read = set(re.findall(r"values(?:\.get)?\(?\[?\"([A-Z][A-Z0-9_]+)\"", source))
    declared = {s.name for s in SETTINGS}
    patterns = [s.regex() for s in SETTINGS if s.is_pattern]
    for name in read:
        assert name in declared or any(p.match(name) for p in patterns), name
