"""`pgrunbook schedule --systemd|--cron`: the SOP's rhythm as systemd units or crontab lines.

The settings file lives in a directory whose name has a space, an apostrophe, a % and a $, so
every quoting layer is exercised: systemd's (checked by `systemd-analyze verify` where it
exists, and by parsing every file always), cron's % rule and the shell's (the crontab's backup
line is run for real through `sh -c` against a real PostgreSQL)."""

from __future__ import annotations

import getpass
import json
import os
import shlex
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import Server, Workspace, clean_env
from tui.core.schedule import (
    cron_word,
    install_facts,
    pgrunbook_command,
    systemd_units,
    write_units,
)
from tui.core.settings import load_settings

ODD = "app dir's 100% $HOME"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
PROM_DEFAULT = "/var/lib/prometheus/node-exporter/pgrunbook.prom"
TIMERS = ["pgrunbook-backup.timer", "pgrunbook-health.timer", "pgrunbook-drill.timer",
          "pgrunbook-prune.timer"]
SUBCOMMANDS = {
    "backup": ["backup", "--kind", "scheduled", "--reason", "scheduled daily backup"],
    "health": ["health", "--prometheus", PROM_DEFAULT],
    "drill": ["drill", "latest"],
    "prune": ["prune", "--yes"],
}
ON_CALENDAR = {"backup": "*-*-* 02:00:00", "health": "hourly", "drill": "*-*-01 04:00:00",
               "prune": "*-*-* 05:00:00"}
CRON = {"backup": "0 2 * * *", "health": "0 * * * *", "drill": "0 4 1 * *",
        "prune": "0 5 * * *"}


def settings_dir(tmp_path: Path) -> Path:
    """A settings file (no database behind it: schedule never connects) in an odd directory."""
    path = tmp_path / ODD
    path.mkdir()
    env = path / ".env.deployment"
    env.write_text("SUPABASE_DB_HOST=127.0.0.1\nSUPABASE_DB_PORT=5999\n")
    env.chmod(0o600)
    return path


def run_cli(cwd: Path, *args: str, env: dict[str, str] | None = None
            ) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tui", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=120, env=env if env is not None else clean_env())


def parse_unit(text: str) -> dict[str, dict[str, list[str]]]:
    """A unit file as systemd reads it: sections of keys, each with every value it was given
    (After= may come twice). Anything else than comments, sections and KEY=VALUE fails."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped or stripped[0] in "#;":
            continue
        if stripped.startswith("[") and stripped.endswith("]"):
            current = sections.setdefault(stripped[1:-1], {})
            continue
        key, sep, value = stripped.partition("=")
        assert sep and current is not None, f"not a unit file line: {line!r}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def one(section: dict[str, list[str]], key: str) -> str:
    values = section.get(key, [])
    assert len(values) == 1, f"{key}: {values}"
    return values[0]


def systemd_argv(exec_start: str) -> list[str]:
    """ExecStart= as systemd splits it: double quotes with \\\\ and \\" inside, %% for a %, and
    $$ for a $ in the arguments (the executable's path is not variable-expanded)."""
    words = shlex.split(exec_start)
    return [w.replace("%%", "%") if i == 0 else w.replace("%%", "%").replace("$$", "$")
            for i, w in enumerate(words)]


def check_units(directory: Path, units: dict[str, str], env_file: Path, *,
                suffix: str = "", prom: str = PROM_DEFAULT) -> None:
    """Every service and timer has the keys and values the SOP's rhythm needs."""
    user = getpass.getuser()
    exe = pgrunbook_command()
    assert sorted(units) == sorted(f"pgrunbook-{key}{suffix}.{kind}"
                                   for key in SUBCOMMANDS for kind in ("service", "timer"))
    for key, sub in SUBCOMMANDS.items():
        service = parse_unit(units[f"pgrunbook-{key}{suffix}.service"])
        assert set(service) == {"Unit", "Service"}
        desc = one(service["Unit"], "Description")
        assert f"`pgrunbook {key} --help`" in desc
        s = service["Service"]
        assert one(s, "Type") == "oneshot"
        assert one(s, "User") == user
        assert one(s, "WorkingDirectory").replace("%%", "%") == str(directory)
        target = ["--target", suffix[1:]] if suffix else []
        sub = [*sub[:-1], prom] if key == "health" else sub
        assert systemd_argv(one(s, "ExecStart")) == [
            *exe, "--env-file", str(env_file), "--quiet", *target, *sub]
        assert one(s, "UMask") == "0077"
        assert one(s, "NoNewPrivileges") == "yes"
        assert one(s, "TimeoutStartSec") == "infinity"
        assert s.get("Nice") == (["10"] if key in ("drill", "prune") else None)
        assert s.get("SuccessExitStatus") == (["1 2"] if key == "health" else None)
        if key in ("drill", "prune"):
            assert f"pgrunbook-backup{suffix}.service" in service["Unit"]["After"]

        timer = parse_unit(units[f"pgrunbook-{key}{suffix}.timer"])
        assert set(timer) == {"Unit", "Timer", "Install"}
        t = timer["Timer"]
        assert one(t, "OnCalendar") == ON_CALENDAR[key]
        assert one(t, "Persistent") == "true"
        if key in ("health", "prune"):
            assert one(t, "RandomizedDelaySec").endswith("min")
        else:
            assert "RandomizedDelaySec" not in t
        assert "Unit" not in t  # the timer starts the service of its own name
        assert one(timer["Install"], "WantedBy") == "timers.target"


def systemd_verify(files: list[Path]) -> None:
    """systemd-analyze verify must accept the files without a single complaint (it ignores an
    unknown key or a bad value with a warning and exit 0, so stderr must be empty too)."""
    assert SYSTEMD_ANALYZE is not None
    proc = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", *map(str, files)],
                          capture_output=True, text=True, timeout=60, cwd=files[0].parent)
    assert proc.returncode == 0 and not proc.stderr.strip() and not proc.stdout.strip(), \
        f"exit {proc.returncode}\n{proc.stdout}\n{proc.stderr}"


def test_systemd_output_dir_written_verified_and_parsed(tmp_path: Path) -> None:
    directory = settings_dir(tmp_path)
    out = tmp_path / "unit files"
    proc = run_cli(directory, "schedule", "--systemd", "--output-dir", str(out))
    assert proc.returncode == 0, proc.stderr
    files = sorted(out.iterdir())
    units = {f.name: f.read_text() for f in files}
    for f in files:
        assert stat.S_IMODE(f.stat().st_mode) == 0o644, f
    check_units(directory, units, directory / ".env.deployment")
    # The install commands: copy exactly these files, reload, enable every timer.
    text = proc.stdout.replace("\\\n", " ")
    line = next(x for x in text.splitlines() if x.strip().startswith("sudo cp"))
    words = shlex.split(line)
    assert words[:2] == ["sudo", "cp"]
    cp_end = words.index("&&")
    assert sorted(words[2:cp_end - 1]) == sorted(str(f) for f in files)
    assert words[cp_end - 1] == "/etc/systemd/system/"
    assert words[cp_end + 1:cp_end + 4] == ["sudo", "systemctl", "daemon-reload"]
    assert words[cp_end + 5:cp_end + 9] == ["sudo", "systemctl", "enable", "--now"]
    assert words[cp_end + 9:] == TIMERS
    if SYSTEMD_ANALYZE:
        systemd_verify(files)


@pytest.mark.skipif(SYSTEMD_ANALYZE is None, reason="systemd-analyze is not installed")
def test_systemd_verify_finds_an_executable_whose_path_needs_quoting(tmp_path: Path) -> None:
    """systemd checks that ExecStart's executable exists: a path with a space, a % and a $ is
    found only if the quoting and the escapes are right."""
    directory = settings_dir(tmp_path)
    link_dir = tmp_path / "bin 100% $x"
    link_dir.mkdir()
    link = link_dir / "pg runbook"
    link.symlink_to(pgrunbook_command()[0])
    settings = load_settings(env_file=directory / ".env.deployment", environ={})
    install = install_facts(settings, command=(str(link),))
    units = systemd_units(install)
    assert '"' + str(link).replace("%", "%%") + '"' in units["pgrunbook-backup.service"]
    written = write_units(units, tmp_path / "units")
    systemd_verify([w.path for w in written])


def test_systemd_stdout_with_target_and_prometheus(tmp_path: Path) -> None:
    directory = settings_dir(tmp_path)
    proc = run_cli(directory, "--target", "local", "schedule", "--systemd",
                   "--prometheus", "metrics/pg.prom")
    assert proc.returncode == 0, proc.stderr
    # Every file after its `# /etc/systemd/system/NAME` line; the install commands as comments.
    units: dict[str, str] = {}
    name = None
    body, _, tail = proc.stdout.rpartition("# Install:")
    for line in body.splitlines(keepends=True):
        if line.startswith("# /etc/systemd/system/"):
            name = line.removeprefix("# /etc/systemd/system/").strip()
            units[name] = ""
        else:
            assert name is not None, line
            units[name] += line
    check_units(directory, units, directory / ".env.deployment", suffix="-local",
                prom=str(directory / "metrics" / "pg.prom"))
    comments = [x for x in tail.splitlines()[1:] if x.strip()]
    assert all(x.startswith("#") for x in comments), comments
    assert "#   sudo systemctl daemon-reload" in comments
    assert "#   sudo systemctl enable --now " + " ".join(
        t.replace(".timer", "-local.timer") for t in TIMERS) in comments


def test_output_dir_refuses_a_different_file_unless_force(tmp_path: Path) -> None:
    directory = settings_dir(tmp_path)
    out = tmp_path / "units"
    assert run_cli(directory, "schedule", "--systemd", "--output-dir", str(out)).returncode == 0
    edited = out / "pgrunbook-backup.timer"
    original = edited.read_text()
    edited.write_text(original.replace("02:00:00", "03:00:00"))
    proc = run_cli(directory, "schedule", "--systemd", "--output-dir", str(out))
    assert proc.returncode == 2
    assert proc.stderr.startswith("error: ") and "pgrunbook-backup.timer" in proc.stderr
    assert "--force" in proc.stderr and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 2
    assert "03:00:00" in edited.read_text()  # nothing was written
    proc = run_cli(directory, "schedule", "--systemd", "--output-dir", str(out), "--force")
    assert proc.returncode == 0, proc.stderr
    assert f"replaced: {edited}" in proc.stdout.splitlines()
    assert edited.read_text() == original
    proc = run_cli(directory, "schedule", "--systemd", "--output-dir", str(out))
    assert proc.returncode == 0 and f"unchanged: {edited}" in proc.stdout.splitlines()
    assert not [p for p in out.iterdir() if p.name.startswith(".")]  # no temp file left


def cron_command(command: str) -> str:
    """What cron hands to the shell: a bare % ends the command (the rest is stdin), \\% is a %,
    a backslash before anything else stays (Vixie cron, Debian's and cronie)."""
    out, escaped = [], False
    for ch in command:
        if escaped:
            out.append(ch if ch == "%" else "\\" + ch)
            escaped = False
        elif ch == "\\":
            escaped = True
        elif ch == "%":
            break
        else:
            out.append(ch)
    return "".join(out) + ("\\" if escaped else "")


@pytest.mark.parametrize("word", ["plain", "a b", "100%", "it's", "\\%", "a\\b%c'd$HOME\"e"])
def test_cron_word_survives_cron_and_the_shell(word: str) -> None:
    line = "printf '\\%s' " + cron_word(word)  # as it would stand in the crontab
    proc = subprocess.run(["sh", "-c", cron_command(line)], capture_output=True, text=True)
    assert proc.returncode == 0 and proc.stdout == word, (cron_word(word), proc.stdout)


def parse_crontab(text: str) -> dict[str, tuple[str, list[str]]]:
    """{subcommand: (time fields, argv after `cd DIR &&`)}; checks the rest of the shape."""
    entries: dict[str, tuple[str, list[str]]] = {}
    lines = [x for x in text.splitlines() if x.strip()]
    assert "SHELL=/bin/sh" in lines
    for line in lines:
        if line.startswith("#") or line == "SHELL=/bin/sh":
            continue
        fields = line.split(None, 5)
        assert len(fields) == 6, line
        words = shlex.split(cron_command(fields[5]))
        assert words[0] == "cd" and words[2] == "&&" and words[-1] == ">/dev/null", words
        at = words.index("--quiet") + 1
        entries[words[at + 2 if words[at] == "--target" else at]] = (" ".join(fields[:5]), words)
    return entries


def test_cron_lines_and_the_backup_line_run_for_real(tmp_path: Path, server: Server,
                                                      pagila_db: str) -> None:
    ws = Workspace(tmp_path / ODD, server, pagila_db)
    ws.path.mkdir()
    ws.write_env()
    proc = ws.run("schedule", "--cron")
    assert proc.returncode == 0, proc.stderr
    user = getpass.getuser()
    assert f"`crontab -u {user} -e`" in proc.stdout
    entries = parse_crontab(proc.stdout)
    assert sorted(entries) == sorted(SUBCOMMANDS)
    for key, sub in SUBCOMMANDS.items():
        when, words = entries[key]
        assert when == CRON[key]
        assert words[1] == str(ws.path)
        assert words[3:-1] == [*pgrunbook_command(), "--env-file", str(ws.env_file), "--quiet",
                               *sub]
    # cron's own environment: a bare PATH, HOME, nothing of ours.
    line = next(x for x in proc.stdout.splitlines() if x.startswith(CRON["backup"] + " "))
    env = {"PATH": "/usr/bin:/bin", "HOME": os.path.expanduser("~"), "SHELL": "/bin/sh",
           "LOGNAME": user}
    run = subprocess.run(["/bin/sh", "-c", cron_command(line.split(None, 5)[5])], cwd="/",
                         env=env, capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout == ""  # discarded
    metas = list(ws.backup_dir.glob("*_scheduled.backup.meta"))
    assert len(metas) == 1, list(ws.backup_dir.iterdir())
    meta = json.loads(metas[0].read_text())
    assert meta["kind"] == "scheduled" and meta["reason"] == "scheduled daily backup"
    # What cron mails for a successful run: nothing (--quiet), so a mail means trouble.
    assert run.stderr == "", run.stderr


def test_without_a_settings_file_exit_2_in_one_line(tmp_path: Path) -> None:
    # The SOP's `export $(grep -v '^#' .env.deployment | xargs)`: the settings are in this
    # shell's environment, which no timer or cron job would have.
    env = {**clean_env(), "SUPABASE_DB_HOST": "127.0.0.1", "SUPABASE_DB_PORT": "5999"}
    proc = run_cli(tmp_path, "schedule", "--systemd", env=env)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert lines[0].startswith("error: schedule needs a settings file"), proc.stderr
    assert "--env-file" in lines[1] and "Traceback" not in proc.stderr
    assert len(lines) == 2 and proc.stdout == ""
    # Nothing configured at all: settings fail first, the same way.
    proc = run_cli(tmp_path, "schedule", "--cron")
    assert proc.returncode == 2 and proc.stdout == ""
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 2


@pytest.mark.parametrize("args", [
    ["--user", "no-such-user-here"],
    ["--cron", "--output-dir", "x"],
    ["--force"],
])
def test_bad_usage_exit_2_without_traceback(tmp_path: Path, args: list[str]) -> None:
    directory = settings_dir(tmp_path)
    how = [] if "--cron" in args else ["--systemd"]
    proc = run_cli(directory, "schedule", *how, *args)
    assert proc.returncode == 2, proc.stderr
    assert proc.stderr.startswith("error: ") and "Traceback" not in proc.stderr
    assert proc.stdout == "" and not (directory / "x").exists()


def test_systemd_and_cron_are_exclusive_and_one_is_required(tmp_path: Path) -> None:
    directory = settings_dir(tmp_path)
    for args in ([], ["--systemd", "--cron"]):
        proc = run_cli(directory, "schedule", *args)
        assert proc.returncode == 2 and "--systemd" in proc.stderr, args
