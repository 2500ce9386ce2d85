"""The SOP's rhythm as systemd units or crontab lines (`pgrunbook schedule`).

Daily backup (uploaded to S3 by itself when a bucket is configured), hourly health written for
node_exporter's textfile collector, a monthly restore drill, and a daily prune after the
backup. Everything here is text built from the facts of this install (`Install`): which
pgrunbook to run, the settings file, the directory to run in, the OS user, the target. The
only file system writes are `write_units`'s, into a directory the operator names.
"""

from __future__ import annotations

import getpass
import os
import pwd
import re
import shlex
import sys
import tempfile
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from tui.core.errors import ConfigError, PgRunbookError
from tui.core.settings import Settings

# Debian's prometheus-node-exporter reads its textfile collector's files from here.
DEFAULT_PROMETHEUS_FILE = Path("/var/lib/prometheus/node-exporter/pgrunbook.prom")
SYSTEMD_DIR = Path("/etc/systemd/system")
UNIT_MODE = 0o644

# systemd's and POSIX's user names: what `useradd` accepts without --badname.
_USER_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_.-]*\$?")
_SAFE_WORD_RE = re.compile(r"[A-Za-z0-9_@+=:,./-]+")


class UnitExists(ConfigError):
    """`--output-dir` already holds a different file of that name (and no --force)."""


@dataclass(frozen=True)
class Install:
    """What the units need to know about this install."""

    command: tuple[str, ...]  # argv that runs this install's pgrunbook
    env_file: Path            # absolute
    workdir: Path             # the settings file's directory (relative BACKUP_DIR is from it)
    user: str
    target: str | None        # only when --target was given
    prometheus_file: Path
    warnings: tuple[str, ...] = ()


@dataclass(frozen=True)
class Job:
    """One scheduled pgrunbook command."""

    key: str                  # backup, health, drill, prune: the unit names' middle part
    args: tuple[str, ...]     # the subcommand and its options
    title: str                # for descriptions: "daily backup"
    what: str                 # for comments: what it does
    on_calendar: str          # systemd
    cron: str                 # the five time fields
    when: str                 # the same, in words
    randomized_delay: str | None = None
    nice: int | None = None
    success_exit_status: str | None = None
    after_backup: bool = False


def pgrunbook_command() -> tuple[str, ...]:
    """The console script beside this Python (a venv's bin/pgrunbook), else `python -m tui`."""
    exe = Path(os.path.abspath(sys.executable))  # systemd wants a normalized path
    script = exe.parent / "pgrunbook"
    if script.is_file() and os.access(script, os.X_OK):
        return (str(script),)
    return (str(exe), "-m", "tui")


def install_facts(settings: Settings, *, user: str | None = None, target: str | None = None,
                  prometheus_file: str | os.PathLike[str] | None = None,
                  command: Sequence[str] | None = None) -> Install:
    """The install's facts; ConfigError when the units could not work (no settings file, a
    user this machine does not have, a path no unit file can hold)."""
    if settings.env_file is None:
        raise ConfigError(
            "schedule needs a settings file: the units must name the file they read, and no "
            ".env.deployment was found here.",
            "Pass --env-file PATH (or run it where .env.deployment is).")
    env_file = Path(os.path.abspath(settings.env_file))
    name = user or getpass.getuser()
    if not _USER_RE.fullmatch(name):
        raise ConfigError(f"user name {name!r} is not valid.", "Name an existing OS user.")
    try:
        account = pwd.getpwnam(name)
    except KeyError:
        raise ConfigError(f"user {name!r} does not exist on this machine.",
                          "The units use this install's paths: name a user of this machine "
                          "with --user.") from None
    prom = Path(prometheus_file).expanduser() if prometheus_file else DEFAULT_PROMETHEUS_FILE
    argv = tuple(command) if command else pgrunbook_command()
    facts = Install(command=argv, env_file=env_file, workdir=env_file.parent, user=name,
                    target=target, prometheus_file=Path(os.path.abspath(prom)),
                    warnings=tuple(_access_warnings(env_file, account)))
    for word in (*facts.command, str(facts.env_file), str(facts.prometheus_file)):
        _check_path(word)
    return facts


def _access_warnings(env_file: Path, account: pwd.struct_passwd) -> list[str]:
    """The settings file is usually 0600: a unit running as someone else cannot read it."""
    if account.pw_uid == 0:
        return []
    try:
        st = env_file.stat()
    except OSError:
        return []
    if st.st_uid == account.pw_uid or st.st_mode & 0o004:
        return []
    if st.st_gid == account.pw_gid and st.st_mode & 0o040:
        return []
    return [f"{env_file} is not readable by {account.pw_name} (mode "
            f"{st.st_mode & 0o777:04o}); the units run as {account.pw_name}: pass --user for "
            "the file's owner, or give that user access."]


def _check_path(text: str) -> None:
    if any(ord(c) < 32 or ord(c) == 127 for c in text) or text != text.strip():
        raise ConfigError(f"the path {text!r} has control characters or leading or trailing "
                          "spaces; no unit file or crontab line can hold it.",
                          "Move or rename it.")


def jobs(install: Install) -> tuple[Job, ...]:
    """The SOP's rhythm: backup 02:00, health hourly, drill on the 1st at 04:00, prune 05:00."""
    return (
        Job("backup", ("backup", "--kind", "scheduled", "--reason", "scheduled daily backup"),
            "daily backup", "daily backup (uploaded to S3 when BACKUP_S3_BUCKET is set)",
            "*-*-* 02:00:00", "0 2 * * *", "daily at 02:00"),
        Job("health", ("health", "--prometheus", str(install.prometheus_file)),
            "hourly health check",
            "hourly health check, written for node_exporter's textfile collector",
            "hourly", "0 * * * *", "hourly", randomized_delay="5min",
            success_exit_status="1 2"),
        Job("drill", ("drill", "latest"), "monthly restore drill",
            "monthly restore drill of the newest backup into a throwaway PostgreSQL",
            "*-*-01 04:00:00", "0 4 1 * *", "monthly, on the 1st at 04:00", nice=10,
            after_backup=True),
        Job("prune", ("prune", "--yes"), "daily prune",
            "daily prune of the backups the retention policy no longer keeps",
            "*-*-* 05:00:00", "0 5 * * *", "daily at 05:00, after the backup",
            randomized_delay="15min", nice=10, after_backup=True),
    )


def command_argv(install: Install, job: Job) -> list[str]:
    """What a timer runs: --quiet, so that a job that went well prints nothing on stderr (cron
    mails what a job prints; the operation log under BACKUP_DIR/logs has every line)."""
    target = ["--target", install.target] if install.target else []
    return [*install.command, "--env-file", str(install.env_file), "--quiet", *target,
            *job.args]


def unit_stem(install: Install, key: str) -> str:
    """`pgrunbook-backup`, or `pgrunbook-backup-staging` so that targets can sit side by side."""
    return f"pgrunbook-{key}" + (f"-{install.target}" if install.target else "")


# -- systemd ------------------------------------------------------------------------------------

def _specifiers(text: str) -> str:
    """systemd expands %-specifiers in most settings: keep a literal % literal."""
    return text.replace("%", "%%")


def systemd_word(arg: str, *, executable: bool = False) -> str:
    """One ExecStart= word: quoted when it holds anything but plain path characters, with the
    escapes systemd undoes (\\ and " inside quotes, %% for specifiers, and $$ for variables in
    the arguments; the executable's path is not expanded, and may not hold quotes or
    backslashes)."""
    if executable and any(c in arg for c in "\\\"'"):
        raise ConfigError(f"systemd cannot run {arg}: its path has a quote or a backslash.",
                          "Install pgrunbook under another path, or use --cron.")
    escaped = _specifiers(arg) if executable else _specifiers(arg).replace("$", "$$")
    if _SAFE_WORD_RE.fullmatch(arg):
        return escaped
    return '"' + escaped.replace("\\", "\\\\").replace('"', '\\"') + '"'


def exec_start(argv: Sequence[str]) -> str:
    return " ".join([systemd_word(argv[0], executable=True),
                     *(systemd_word(a) for a in argv[1:])])


def _for_whom(install: Install) -> str:
    return f"target {install.target}" if install.target else str(install.env_file)


def systemd_units(install: Install) -> dict[str, str]:
    """`{file name: text}`: a oneshot service and its timer for each job."""
    units: dict[str, str] = {}
    header = ("# Generated by `pgrunbook schedule --systemd` for "
              f"{install.env_file}.\n"
              "# Regenerate it rather than edit it.\n")
    backup_service = unit_stem(install, "backup") + ".service"
    for job in jobs(install):
        stem = unit_stem(install, job.key)
        command = job.args[0]
        description = _specifiers(f"pgrunbook {job.title} of {_for_whom(install)} "
                                  f"(see `pgrunbook {command} --help`)")
        unit = ["[Unit]", f"Description={description}",
                "Wants=network-online.target", "After=network-online.target"]
        if job.after_backup:
            unit.append(f"After={backup_service}")
        service = [
            "[Service]", "Type=oneshot", f"User={install.user}",
            f"WorkingDirectory={_specifiers(str(install.workdir))}",
            "ExecStart=" + exec_start(command_argv(install, job)),
            "UMask=0077", "NoNewPrivileges=yes", "TimeoutStartSec=infinity",
        ]
        if job.nice is not None:
            service.append(f"Nice={job.nice}")
        if job.success_exit_status:
            service.append("# WARNING (1) and CRITICAL (2) are the monitor's business; the unit "
                           "fails only when health could not run (3).")
            service.append(f"SuccessExitStatus={job.success_exit_status}")
        units[f"{stem}.service"] = header + "\n".join([*unit, "", *service]) + "\n"
        timer = ["[Unit]", f"Description=Run {stem}.service {job.when}", "",
                 "[Timer]", f"OnCalendar={job.on_calendar}", "Persistent=true"]
        if job.randomized_delay:
            timer.append(f"RandomizedDelaySec={job.randomized_delay}")
        timer += ["", "[Install]", "WantedBy=timers.target"]
        units[f"{stem}.timer"] = header + "\n".join(timer) + "\n"
    return units


def timer_names(units: Mapping[str, str]) -> list[str]:
    return [name for name in units if name.endswith(".timer")]


def install_commands(units: Mapping[str, str], source_dir: Path | None) -> list[str]:
    """The commands that install and start the units: `sudo cp` from `source_dir` when the
    files were written there; else only the systemctl part."""
    commands = []
    if source_dir is not None:
        files = " ".join(shlex.quote(str(source_dir / name)) for name in units)
        commands.append(f"sudo cp {files} {SYSTEMD_DIR}/")
    commands.append("sudo systemctl daemon-reload")
    commands.append("sudo systemctl enable --now " + " ".join(timer_names(units)))
    return commands


@dataclass(frozen=True)
class WrittenUnit:
    path: Path
    state: str  # "written", "replaced" or "unchanged"


def write_units(units: Mapping[str, str], directory: Path, *,
                force: bool = False) -> list[WrittenUnit]:
    """Write each unit into `directory`, 0644, atomically (temp file, fsync, rename). An
    existing file with other content is refused (UnitExists) unless `force`; nothing is
    written then."""
    try:
        directory.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"cannot create {directory}: {exc.strerror}.",
                          "Name a directory you can write.") from None
    states: dict[str, str] = {}
    clashes = []
    for name, text in units.items():
        path = directory / name
        try:
            current = path.read_text(encoding="utf-8")
        except FileNotFoundError:
            states[name] = "written"
            continue
        except (OSError, UnicodeDecodeError):
            current = None
        if current == text:
            states[name] = "unchanged"
        else:
            states[name] = "replaced"
            clashes.append(name)
    if clashes and not force:
        raise UnitExists(f"{directory} already holds different {', '.join(clashes)}; nothing "
                         "was written.", "Compare them, then pass --force to replace them.")
    written = []
    for name, text in units.items():
        path = directory / name
        if states[name] != "unchanged":
            _atomic_write(path, text.encode("utf-8"))
        written.append(WrittenUnit(path, states[name]))
    return written


def _atomic_write(final: Path, data: bytes) -> None:
    try:
        fd, tmp_name = tempfile.mkstemp(prefix=f".{final.name}.", suffix=".partial",
                                        dir=final.parent)
    except OSError as exc:
        raise ConfigError(f"cannot write in {final.parent}: {exc.strerror}.",
                          "Name a directory you can write.") from None
    tmp = Path(tmp_name)
    try:
        os.fchmod(fd, UNIT_MODE)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.fsync(fd)
        os.close(fd)
        fd = -1
        os.replace(tmp, final)
    except BaseException as exc:
        if fd >= 0:
            os.close(fd)
        tmp.unlink(missing_ok=True)
        if isinstance(exc, OSError):
            raise PgRunbookError(f"cannot write {final}: {exc.strerror}.") from None
        raise
    dir_fd = os.open(final.parent, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


# -- cron ---------------------------------------------------------------------------------------

def cron_word(arg: str) -> str:
    """One word of a crontab command, quoted for sh. cron turns a bare % into a newline (inside
    quotes too) and \\% into %, but a backslash before \\% breaks that: so each % (always inside
    shlex's single quotes) leaves the quotes as '\\%'."""
    return shlex.quote(arg).replace("%", "'\\%'")


def crontab(install: Install) -> str:
    """The crontab lines for the user's crontab (no user field), with comments."""
    user = install.user
    lines = [
        f"# pgrunbook schedule for {install.env_file}"
        + (f", target {install.target}" if install.target else "") + ".",
        f"# Install into {user}'s crontab (these lines have no user field): run "
        f"`crontab -u {user} -e` and paste them.",
        "# Times are this host's local time. stdout is discarded; stderr is mailed by cron to "
        "the crontab's owner",
        "# (or to MAILTO= if set above these lines): with --quiet only errors and warnings, so "
        "a mail means trouble.",
        "SHELL=/bin/sh",
    ]
    cd = f"cd {cron_word(str(install.workdir))} &&"
    for job in jobs(install):
        lines.append(f"# {job.what[0].upper()}{job.what[1:]}: {job.when}.")
        argv = " ".join(cron_word(a) for a in command_argv(install, job))
        lines.append(f"{job.cron} {cd} {argv} >/dev/null")
    return "\n".join(lines) + "\n"
