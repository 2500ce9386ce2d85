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
from tui.core.settings import Settings, Target

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
    try:
        out = subprocess.run(
            [str(path), "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return None
    m = _VERSION_RE.search(out)
    if not m:
        return None
    return int(m.group(1)), int(m.group(2) or 0)


def find_candidates(name: str, pg_bin_dir: Path | None) -> list[PgTool]:
    found: dict[Path, PgTool] = {}
    for d in candidate_dirs(pg_bin_dir):
        path = d / name
        if not (path.is_file() and os.access(path, os.X_OK)):
            continue
        real = path.resolve()
        if real in found:
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


def server_binaries(min_major: int | None = None) -> tuple[int, Path]:
    """The newest PostgreSQL server installation (initdb, pg_ctl, postgres) on this machine."""
    found: list[tuple[int, Path]] = []
    for bindir in glob.glob("/usr/lib/postgresql/*/bin"):
        p = Path(bindir)
        if (p / "initdb").exists() and (p / "pg_ctl").exists() and (p / "postgres").exists():
            digits = re.sub(r"\D", "", p.parent.name)
            if digits:
                found.append((int(digits), p))
    initdb = shutil.which("initdb")
    if initdb and not found:
        real = Path(initdb).resolve().parent
        v = tool_version(real / "initdb")
        if v and (real / "pg_ctl").exists() and (real / "postgres").exists():
            found.append((v[0], real))
    found = [f for f in found if min_major is None or f[0] >= min_major]
    if not found:
        need = f" {min_major} or newer" if min_major else ""
        raise ConfigError(
            f"no PostgreSQL server{need} is installed on this machine (initdb, pg_ctl, postgres).",
            f"Install one: apt install postgresql-{min_major or 15}.",
        )
    return max(found)


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
    tmpdir = tempfile.mkdtemp(prefix="pgrunbook-")
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
        return OperationFailed(
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
