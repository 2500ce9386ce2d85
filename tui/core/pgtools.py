"""PostgreSQL client tools and connections.

Finds pg_dump, pg_restore and psql whose major version can serve a given server, builds the
environment that hands credentials to libpq (a temporary 0600 PGPASSFILE, never argv), opens
psycopg connections, and turns libpq's failures into one plain line with the next step.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import psycopg

from tui.core.errors import ConfigError, OperationFailed, PgRunbookError
from tui.core.fsutil import note_temp
from tui.core.settings import Settings, Target
from tui.core.toolcache import remembered

TOOLS = ("pg_dump", "pg_restore", "psql")
_VERSION_RE = re.compile(r"\(PostgreSQL\)\s+(\d+)(?:\.(\d+))?")


@dataclass(frozen=True, order=True)
class PgTool:
    major: int
    minor: int
    name: str
    path: Path

    @property
    def version(self) -> str:
        return f"{self.major}.{self.minor}"


class ToolVersionError(ConfigError):
    """No client tool fits the server (or the archive)."""


class ServerLacksExtensions(ConfigError):
    """Servers of the version needed exist, but none can create the backup's extensions."""


class DatabaseMissing(OperationFailed):
    """The server answered, and the database named does not exist on it."""


def candidate_dirs(pg_bin_dir: Path | None) -> list[Path]:
    """Where to look: the configured directory alone when set; else PATH and Debian's layout."""
    if pg_bin_dir is not None:
        return [pg_bin_dir]
    dirs = [Path(p) for p in os.environ.get("PATH", "").split(os.pathsep) if p]
    versioned = glob.glob("/usr/lib/postgresql/*/bin")
    versioned.sort(key=lambda p: int(re.sub(r"\D", "", Path(p).parent.name) or 0), reverse=True)
    dirs.extend(Path(p) for p in versioned)
    seen: set[Path] = set()
    unique = []
    for d in dirs:
        if d not in seen:
            seen.add(d)
            unique.append(d)
    return unique


def tool_version(path: Path) -> tuple[int, int] | None:
    """(major, minor) of a PostgreSQL binary, asked once per binary (see `toolcache`)."""
    answer = remembered("version", path, lambda: _ask_version(path))
    return None if answer is None else (int(answer[0]), int(answer[1]))


def _ask_version(path: Path) -> list[int] | None:
    try:
        out = subprocess.run(
            [str(path), "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = _VERSION_RE.search(out)
    if not m:
        return None
    return [int(m.group(1)), int(m.group(2) or 0)]


def find_candidates(name: str, pg_bin_dir: Path | None) -> list[PgTool]:
    found: dict[Path, PgTool] = {}
    for d in candidate_dirs(pg_bin_dir):
        path = d / name
        if not (path.is_file() and os.access(path, os.X_OK)):
            continue
        real = path.resolve()
        if real in found or real.name == "pg_wrapper":
            # Debian's pg_wrapper (/usr/bin/pg_dump) picks a version by its own rules from the
            # /usr/lib/postgresql/*/bin directories searched here anyway; asking it costs a
            # Perl start-up (35 ms against 4 ms) on every command.
            continue
        version = tool_version(path)
        if version is not None:
            found[real] = PgTool(version[0], version[1], name, path)
    return sorted(found.values())


def find_tool(name: str, settings: Settings, need_major: int, why: str) -> PgTool:
    """The tool closest to `need_major` that is at least that version."""
    candidates = find_candidates(name, settings.pg_bin_dir)
    fitting = [t for t in candidates if t.major >= need_major]
    if fitting:
        best_major = min(t.major for t in fitting)
        return max(t for t in fitting if t.major == best_major)
    where = (f"PG_BIN_DIR={settings.pg_bin_dir}" if settings.pg_bin_dir
             else "PATH and /usr/lib/postgresql/*/bin")
    found = ", ".join(f"{t.version} ({t.path})" for t in candidates) or "none"
    raise ToolVersionError(
        f"{why} is PostgreSQL {need_major}, but no {name} of version {need_major} or newer "
        f"was found in {where} (found: {found}).",
        f"Install postgresql-client-{need_major} (apt install postgresql-client-{need_major}) "
        f"or set PG_BIN_DIR to a directory holding {name} {need_major}+.",
    )


def supports_zstd(pg_dump: PgTool) -> bool:
    """Whether this pg_dump can write zstd-compressed archives itself (`--compress=zstd`).

    PostgreSQL 16+ has the option, but a build without libzstd (such as the PostgreSQL wheels on
    PyPI) rejects it: `invalid compression specification: this build does not support
    compression with ZSTD`. pg_dump checks the option before it connects, so the probe points it
    at a socket directory that does not exist and reads which error comes first. Asked once
    per binary (see `toolcache`).
    """
    if pg_dump.major < 16:
        return False
    return bool(remembered("zstd", pg_dump.path, lambda: _probe_zstd(str(pg_dump.path))))


def _probe_zstd(path: str) -> bool | None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    env["PGCONNECT_TIMEOUT"] = "1"
    with tempfile.TemporaryDirectory(prefix="pgrunbook-probe-") as tmp:
        nowhere = str(Path(tmp) / "no-server-here")
        try:
            proc = subprocess.run(
                [path, "--compress=zstd:1", "--format=custom", "--no-password",
                 f"--file={Path(tmp) / 'probe.dump'}", "--host", nowhere, "--port", "1",
                 "--dbname", "probe"],
                capture_output=True, text=True, timeout=10, check=False, env=env,
                stdin=subprocess.DEVNULL,
            )
        except (OSError, subprocess.TimeoutExpired):
            return None
    err = proc.stderr.lower()
    # Past the option check it tries to connect and fails on the missing socket.
    return "compression" not in err and ("connect" in err or "socket" in err)


def _has_server(bindir: Path) -> bool:
    return all((bindir / n).is_file() and os.access(bindir / n, os.X_OK)
               for n in ("initdb", "pg_ctl", "postgres"))


def server_extensions(bindir: Path, major: int) -> set[str] | None:
    """The extensions a server installation can create (its `extension/*.control` files), or
    None when its share directory is not where the known layouts put it."""
    real = bindir.resolve()
    for share in (real.parent / "share" / "postgresql", real.parent / "share",
                  Path("/usr/share/postgresql") / str(major)):
        directory = share / "extension"
        if directory.is_dir():
            return {c.name[:-len(".control")] for c in directory.glob("*.control")}
    return None


def server_binaries(min_major: int | None = None,
                    pg_bin_dir: Path | None = None,
                    extensions: frozenset[str] = frozenset()) -> tuple[int, Path]:
    """A PostgreSQL server installation (initdb, pg_ctl, postgres) on this machine.

    Looks in `pg_bin_dir` (PG_BIN_DIR), beside the pg_dump and pg_restore that would be used,
    in /usr/lib/postgresql/*/bin and beside an initdb on PATH. Of those new enough and able to
    create `extensions` (the backup's; the PyPI builds lack pgcrypto and uuid-ossp, say), one
    in `pg_bin_dir` wins; otherwise the newest.
    """
    found: dict[Path, tuple[int, Path]] = {}

    def consider(bindir: Path, major: int | None = None) -> None:
        try:
            real = bindir.resolve()
        except OSError:
            return
        if real in found or not _has_server(real):
            return
        if major is None:
            v = tool_version(real / "postgres")
            if v is None:
                return
            major = v[0]
        found[real] = (major, bindir)

    preferred: Path | None = None
    if pg_bin_dir is not None:
        consider(pg_bin_dir)
        with contextlib.suppress(OSError):
            if pg_bin_dir.resolve() in found:
                preferred = pg_bin_dir.resolve()
    for bindir in glob.glob("/usr/lib/postgresql/*/bin"):
        p = Path(bindir)
        digits = re.sub(r"\D", "", p.parent.name)
        if digits:
            consider(p, int(digits))
    for name in ("pg_dump", "pg_restore"):
        for tool in find_candidates(name, pg_bin_dir):
            consider(tool.path.resolve().parent)
    initdb = shutil.which("initdb")
    if initdb:
        consider(Path(initdb).resolve().parent)

    def new_enough(entry: tuple[int, Path]) -> bool:
        return min_major is None or entry[0] >= min_major

    def lacks(entry: tuple[int, Path]) -> set[str]:
        have = server_extensions(entry[1], entry[0])
        return set() if have is None else set(extensions) - have

    def fits(entry: tuple[int, Path]) -> bool:
        return new_enough(entry) and not lacks(entry)

    if preferred is not None and fits(found[preferred]):
        return found[preferred]
    fitting = [f for f in found.values() if fits(f)]
    short = [f for f in found.values() if new_enough(f) and lacks(f)]
    if not fitting and short:
        have = "; ".join(f"{m} in {d} lacks {', '.join(sorted(lacks((m, d))))}"
                         for m, d in sorted(short))
        raise ServerLacksExtensions(
            f"no PostgreSQL server here can create the extensions the backup uses ({have}).",
            "Install that server's contrib extensions (apt install postgresql-contrib), or set "
            "PG_BIN_DIR to a server that has them.",
        )
    if not fitting:
        need = f" {min_major} or newer" if min_major else ""
        have = ", ".join(f"{m} in {d}" for m, d in sorted(found.values())) or "none"
        raise ConfigError(
            f"no PostgreSQL server{need} was found on this machine (found: {have}).",
            f"Install one (apt install postgresql-{min_major or 15}) or set PG_BIN_DIR to a "
            f"directory with its initdb, pg_ctl and postgres.",
        )
    return max(fitting)


# -- credentials -----------------------------------------------------------------------------


def _passfile_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace(":", "\\:")


@contextlib.contextmanager
def libpq_env(target: Target, settings: Settings) -> Iterator[dict[str, str]]:
    """The environment for a child that connects to `target`.

    The password goes into a temporary PGPASSFILE (0600, in a private 0700 directory) that is
    removed when the block ends; it never appears on a command line.
    """
    env = {k: v for k, v in os.environ.items() if not k.startswith("PG")}
    # Keep the operator's own libpq settings that do not choose the server.
    for key in ("PGSSLROOTCERT", "PGSSLMODE", "PGPASSFILE", "PGPASSWORD"):
        if key in os.environ:
            env[key] = os.environ[key]
    env.update(
        {
            "PGHOST": target.host,
            "PGPORT": str(target.port),
            "PGUSER": target.user,
            "PGDATABASE": target.dbname,
            "PGCONNECT_TIMEOUT": str(settings.connect_timeout),
            "PGAPPNAME": "pgrunbook",
        }
    )
    for key, value in target.params:
        env_key = {"sslmode": "PGSSLMODE", "sslrootcert": "PGSSLROOTCERT", "sslcert": "PGSSLCERT",
                   "sslkey": "PGSSLKEY", "application_name": "PGAPPNAME",
                   "options": "PGOPTIONS"}[key]
        env[env_key] = value
    if target.password is None:
        yield env
        return
    env.pop("PGPASSWORD", None)
    tmpdir = str(note_temp(Path(tempfile.mkdtemp(prefix="pgrunbook-"))))
    passfile = Path(tmpdir) / "pgpass"
    try:
        fd = os.open(passfile, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(f"*:*:*:*:{_passfile_escape(target.password.reveal())}\n")
        env["PGPASSFILE"] = str(passfile)
        yield env
    finally:
        shutil.rmtree(tmpdir, ignore_errors=True)


# -- connections -----------------------------------------------------------------------------


def connect(target: Target, settings: Settings, *, dbname: str | None = None,
            autocommit: bool = True) -> psycopg.Connection[tuple[object, ...]]:
    """A psycopg connection to `target`; libpq failures become plain operator errors."""
    kwargs: dict[str, object] = {
        "host": target.host,
        "port": target.port,
        "dbname": dbname or target.dbname,
        "user": target.user,
        "connect_timeout": settings.connect_timeout,
        "application_name": "pgrunbook",
    }
    kwargs.update(dict(target.params))
    if target.password is not None:
        kwargs["password"] = target.password.reveal()
    try:
        conn = psycopg.connect(autocommit=autocommit, **kwargs)  # type: ignore[arg-type]
    except psycopg.Error as exc:
        raise connection_error(str(exc), target) from None
    return conn


def connection_error(text: str, target: Target) -> PgRunbookError:
    """Map libpq's connection failure text to one plain line with the next step."""
    where = f"{target.host}:{target.port}"
    who = f"user {target.user!r}"
    creds = f"(target {target.name!r}, from {target.source})"
    low = text.lower()
    if "password authentication failed" in low:
        return OperationFailed(
            f"password authentication failed for {who} at {where} {creds}.",
            "Check SUPABASE_DB_PASSWORD (or the target's password) and the user name.",
            detail=text,
        )
    if "no password supplied" in low:
        return OperationFailed(
            f"the server at {where} wants a password for {who} and none is configured {creds}.",
            "Set SUPABASE_DB_PASSWORD in .env.deployment (or the target's _PASSWORD variable).",
            detail=text,
        )
    if "no pg_hba.conf entry" in low:
        return OperationFailed(
            f"the server at {where} does not accept {who} from this host (no pg_hba.conf entry).",
            "Check the user and database names, SSL settings, and the server's allowed hosts.",
            detail=text,
        )
    if "could not translate host name" in low or "name or service not known" in low:
        return OperationFailed(
            f"the database host {target.host!r} does not resolve {creds}.",
            "Check SUPABASE_DB_HOST for typos and this host's DNS.",
            detail=text,
        )
    if "connection refused" in low:
        return OperationFailed(
            f"cannot connect to {where}: connection refused (nothing is listening there) {creds}.",
            "Check the host and port, and that the database server is running.",
            detail=text,
        )
    if "timeout expired" in low or "timed out" in low:
        return OperationFailed(
            f"no answer from {where} within {target.name!r}'s connect timeout {creds}.",
            "Check the host, the port (Supabase: 5432, not the 6543 pooler) and any firewall.",
            detail=text,
        )
    m = re.search(r'database "([^"]+)" does not exist', text)
    if m:
        return DatabaseMissing(
            f"database {m.group(1)!r} does not exist on {where}.",
            "Check SUPABASE_DB_NAME (or the database in the target's URL).",
            detail=text,
        )
    m = re.search(r'role "([^"]+)" does not exist', text)
    if m:
        return OperationFailed(
            f"role {m.group(1)!r} does not exist on {where}.",
            "Check SUPABASE_DB_USER (or the user in the target's URL).",
            detail=text,
        )
    if "gssapi" in low:
        return OperationFailed(
            f"the connection to {where} failed in GSSAPI negotiation.",
            "Use a newer PostgreSQL client (15+), or set sslmode=require in the target's URL.",
            detail=text,
        )
    first = text.strip().splitlines()[0] if text.strip() else "unknown error"
    return OperationFailed(
        f"cannot connect to {where} as {who}: {first}",
        "Check the target's settings and that the server is reachable.",
        detail=text,
    )


def server_version(conn: psycopg.Connection[tuple[object, ...]]) -> tuple[int, str]:
    """(server_version_num, server_version) such as (150018, '15.18')."""
    row = conn.execute(
        "SELECT current_setting('server_version_num')::int, current_setting('server_version')"
    ).fetchone()
    assert row is not None
    num, text = row
    assert isinstance(num, int) and isinstance(text, str)
    return num, text.split()[0]


def major_of(version_num: int) -> int:
    return version_num // 10000
