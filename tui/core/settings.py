"""Settings: `.env.deployment` (the SOP's file) plus the process environment, which wins.

Every variable the engine reads is declared once in `SETTINGS`, with its default and a one-line
description; `.env.deployment.example` documents the same names (a test keeps them in step).
Secrets are held in `Secret`, which never prints its value.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from urllib.parse import parse_qsl, unquote, urlsplit

from dotenv import dotenv_values
from dotenv.parser import parse_stream

from tui.core.errors import ConfigError

DEFAULT_ENV_FILE = ".env.deployment"


@dataclass(frozen=True)
class SettingSpec:
    """One variable the engine reads. `<NAME>` in a name stands for a target's name."""

    name: str
    default: str | None
    doc: str
    secret: bool = False

    @property
    def is_pattern(self) -> bool:
        return "<NAME>" in self.name

    def regex(self) -> re.Pattern[str]:
        return re.compile("^" + re.escape(self.name).replace("<NAME>", "([A-Z0-9_]+?)") + "$")


SETTINGS: tuple[SettingSpec, ...] = (
    SettingSpec("PGRUNBOOK_ENV_FILE", None, "Settings file to read instead of ./.env.deployment."),
    SettingSpec("SUPABASE_DB_HOST", None, "Database host of the default target."),
    SettingSpec("SUPABASE_DB_PORT", "5432", "Database port of the default target."),
    SettingSpec("SUPABASE_DB_NAME", "postgres", "Database name of the default target."),
    SettingSpec("SUPABASE_DB_USER", "postgres", "Database user of the default target."),
    SettingSpec(
        "SUPABASE_DB_PASSWORD", None, "Password of the default target's user.", secret=True
    ),
    SettingSpec(
        "DATABASE_URL",
        None,
        "postgresql:// URL of the default target; SUPABASE_DB_* variables override its parts.",
        secret=True,
    ),
    SettingSpec(
        "PGRUNBOOK_DEFAULT_TARGET",
        "production",
        "Name of the target that the SUPABASE_DB_* variables (or DATABASE_URL) describe.",
    ),
    SettingSpec(
        "PGRUNBOOK_TARGET_<NAME>",
        None,
        "postgresql:// URL of another named target, chosen with --target name.",
        secret=True,
    ),
    SettingSpec(
        "PGRUNBOOK_TARGET_<NAME>_PASSWORD",
        None,
        "Password for that named target, if its URL carries none.",
        secret=True,
    ),
    SettingSpec(
        "PGRUNBOOK_PRODUCTION_TARGETS",
        "production",
        "Comma-separated target names treated as production (typed confirmation required).",
    ),
    SettingSpec("BACKUP_DIR", "backups", "Directory for backups, their metadata and the audit log."),
    SettingSpec("REPORTS_DIR", "reports", "Directory for drill and runbook reports (Markdown)."),
    SettingSpec(
        "BACKUP_COMPRESSION",
        "zstd:3",
        "Archive compression: zstd:LEVEL (default), gzip:LEVEL (pg_dump's own), or none.",
    ),
    SettingSpec(
        "PG_BIN_DIR",
        None,
        "Directory holding pg_dump, pg_restore and psql; when set, only it is searched.",
    ),
    SettingSpec(
        "RESTORE_INDEX_MEMORY", "512MB",
        "Memory a restore's pg_restore sessions may use to build indexes, shared among its "
        "--jobs (each gets its share as maintenance_work_mem when that is more than the "
        "server's setting); 0 keeps the server's setting.",
    ),
    SettingSpec(
        "PGRUNBOOK_CONNECT_TIMEOUT", "10", "Seconds to wait when connecting to a database."
    ),
    SettingSpec("RUNBOOK_DIR", None, "Directory with your own runbooks (*.toml), besides runbooks/."),
    SettingSpec("RUNBOOK_COMMAND_<NAME>", None,
                "Command a runbook step runs by name (argv, split like a shell, never a shell)."),
    SettingSpec("HEALTH_URL", None, "URL the smoke-test step GETs; 2xx means healthy."),
    SettingSpec("CHAT_WEBHOOK_URL", None, "Slack-compatible webhook the notify steps post to.",
                secret=True),
    SettingSpec("BACKUP_S3_BUCKET", None, "S3 bucket for off-site copies; unset: local only."),
    SettingSpec("BACKUP_S3_PREFIX", "backups/", "Key prefix in the bucket."),
    SettingSpec("BACKUP_S3_SSE", "AES256", "Server-side encryption: AES256, aws:kms or none."),
    SettingSpec("BACKUP_S3_KMS_KEY_ID", None, "KMS key id for BACKUP_S3_SSE=aws:kms."),
    SettingSpec("BACKUP_S3_STORAGE_CLASS", None, "Storage class, such as STANDARD_IA."),
    SettingSpec("BACKUP_S3_TIMEOUT", "60", "Seconds without an answer before an S3 request is "
                "retried."),
    SettingSpec("AWS_ENDPOINT_URL", None, "Endpoint of an S3-compatible store."),
    SettingSpec("AWS_REGION", None, "AWS region of the bucket."),
    SettingSpec("AWS_DEFAULT_REGION", None, "AWS region, if AWS_REGION is unset."),
    SettingSpec("AWS_PROFILE", None, "Profile in ~/.aws to take credentials from."),
    SettingSpec("AWS_ACCESS_KEY_ID", None, "Access key id (else profile or instance role)."),
    SettingSpec("AWS_SECRET_ACCESS_KEY", None, "Secret access key.", secret=True),
    SettingSpec("AWS_SESSION_TOKEN", None, "Session token for temporary credentials.",
                secret=True),
)

# `local` is the Supabase CLI's local database (`supabase start`).
BUILTIN_TARGETS: Mapping[str, str] = {
    "local": "postgresql://postgres@127.0.0.1:54322/postgres",
}
WELL_KNOWN_TARGETS = ("production", "staging", "local")


class Secret:
    """A value that never shows itself in repr, str, logs or exception text."""

    __slots__ = ("_value",)

    def __init__(self, value: str) -> None:
        self._value = value

    def reveal(self) -> str:
        return self._value

    def __repr__(self) -> str:
        return "Secret('********')"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Secret) and other._value == self._value

    def __hash__(self) -> int:
        return hash(self._value)


@dataclass(frozen=True)
class Target:
    """A database the tool can back up or restore into."""

    name: str
    host: str
    port: int
    dbname: str
    user: str
    password: Secret | None = field(default=None, repr=False)
    production: bool = False
    # Extra libpq parameters from the URL, such as sslmode (never the password).
    params: tuple[tuple[str, str], ...] = ()
    source: str = "environment"

    def describe(self) -> str:
        """host:port/db as user, safe to print."""
        return f"{self.user}@{self.host}:{self.port}/{self.dbname}"

    def public(self) -> dict[str, object]:
        return {
            "name": self.name,
            "host": self.host,
            "port": self.port,
            "database": self.dbname,
            "user": self.user,
            "production": self.production,
        }


@dataclass(frozen=True)
class Settings:
    """One settings object, built once from the env file plus the environment."""

    # Raw values, secrets included: never printed (repr=False).
    values: Mapping[str, str] = field(repr=False)
    env_file: Path | None
    target: Target
    backup_dir: Path
    compression: str
    pg_bin_dir: Path | None
    connect_timeout: int
    production_targets: frozenset[str]
    warnings: tuple[str, ...] = ()
    restore_index_memory: int = 512 * 1024 * 1024  # bytes; 0: the server's own setting

    def with_target(self, target: Target) -> Settings:
        return replace(self, target=target)


def _spec_for(name: str) -> SettingSpec | None:
    for spec in SETTINGS:
        if spec.name == name or (spec.is_pattern and spec.regex().match(name)):
            return spec
    return None


def read_env_file(path: Path) -> dict[str, str]:
    """Parse a dotenv file, refusing malformed lines with their line number."""
    try:
        with path.open(encoding="utf-8") as stream:
            for binding in parse_stream(stream):
                if binding.error:
                    line = binding.original.line
                    raise ConfigError(
                        f"{path}: line {line} is not NAME=value.",
                        "Fix or comment out that line.",
                    )
    except FileNotFoundError:
        raise ConfigError(
            f"settings file {path} does not exist.",
            "Create it from .env.deployment.example, or point --env-file at the right one.",
        ) from None
    except PermissionError:
        raise ConfigError(
            f"settings file {path} is not readable by this user.",
            "Run as the user who owns it, or fix its permissions (chmod 600).",
        ) from None
    except IsADirectoryError:
        raise ConfigError(f"settings file {path} is a directory.", "Name the file itself.") from None
    except UnicodeDecodeError:
        raise ConfigError(f"settings file {path} is not UTF-8 text.", "Save it as UTF-8.") from None
    values = dotenv_values(path, interpolate=True)
    return {k: v for k, v in values.items() if v is not None}


def _permission_warning(path: Path) -> str | None:
    try:
        mode = path.stat().st_mode
    except OSError:
        return None
    if mode & (stat.S_IRWXG | stat.S_IRWXO):
        return (
            f"{path} is readable by other users and holds database credentials: "
            f"run `chmod 600 {path}`."
        )
    return None


def parse_database_url(url: str, what: str) -> dict[str, object]:
    """Split a postgresql:// URL into parts. The message never repeats the URL (it may hold a
    password)."""
    expected = "expected postgresql://user[:password]@host[:port]/database"
    try:
        parts = urlsplit(url.strip())
        port = parts.port
    except ValueError:
        raise ConfigError(f"{what} does not parse: the port is not a number.", expected) from None
    if parts.scheme not in ("postgresql", "postgres") or not parts.hostname:
        raise ConfigError(f"{what} does not parse as a PostgreSQL URL.", expected)
    result: dict[str, object] = {"host": parts.hostname}
    if port is not None:
        result["port"] = port
    if parts.username:
        result["user"] = unquote(parts.username)
    if parts.password:
        result["password"] = unquote(parts.password)
    dbname = unquote(parts.path.lstrip("/"))
    if "/" in dbname:
        raise ConfigError(f"{what} does not parse: the database name holds a '/'.", expected)
    if dbname:
        result["dbname"] = dbname
    params = []
    for key, value in parse_qsl(parts.query, keep_blank_values=True):
        if key == "password":
            result["password"] = value
        elif key in ("sslmode", "sslrootcert", "sslcert", "sslkey", "application_name", "options"):
            params.append((key, value))
        else:
            raise ConfigError(
                f"{what} has an unsupported parameter {key!r}.",
                "Supported: sslmode, sslrootcert, sslcert, sslkey, application_name, options.",
            )
    result["params"] = tuple(params)
    return result


def _port(value: str, what: str) -> int:
    try:
        port = int(value)
    except ValueError:
        raise ConfigError(
            f"{what} must be a port number, not {value!r}.", "Use a number such as 5432."
        ) from None
    if not 0 < port < 65536:
        raise ConfigError(f"{what} must be between 1 and 65535, not {port}.")
    return port


def _target_env_key(name: str) -> str:
    return "PGRUNBOOK_TARGET_" + re.sub(r"[^A-Za-z0-9]", "_", name).upper()


def configured_target_names(values: Mapping[str, str]) -> list[str]:
    default = values.get("PGRUNBOOK_DEFAULT_TARGET", "production")
    names = {default, *BUILTIN_TARGETS}
    for key in values:
        m = re.match(r"^PGRUNBOOK_TARGET_([A-Z0-9_]+)$", key)
        if m and not key.endswith("_PASSWORD"):
            names.add(m.group(1).lower())
    return sorted(names)


def _build_target(name: str, values: Mapping[str, str], production: frozenset[str]) -> Target:
    default_name = values.get("PGRUNBOOK_DEFAULT_TARGET", "production").strip() or "production"
    if name == default_name:
        parts: dict[str, object] = {}
        source = "SUPABASE_DB_* variables"
        if values.get("DATABASE_URL"):
            parts = parse_database_url(values["DATABASE_URL"], "DATABASE_URL")
            source = "DATABASE_URL"
        if values.get("SUPABASE_DB_HOST"):
            parts["host"] = values["SUPABASE_DB_HOST"]
        if values.get("SUPABASE_DB_PORT"):
            parts["port"] = _port(values["SUPABASE_DB_PORT"], "SUPABASE_DB_PORT")
        if values.get("SUPABASE_DB_NAME"):
            parts["dbname"] = values["SUPABASE_DB_NAME"]
        if values.get("SUPABASE_DB_USER"):
            parts["user"] = values["SUPABASE_DB_USER"]
        if values.get("SUPABASE_DB_PASSWORD"):
            parts["password"] = values["SUPABASE_DB_PASSWORD"]
        if not parts.get("host"):
            raise ConfigError(
                f"target {name!r} has no database host.",
                "Set SUPABASE_DB_HOST (or DATABASE_URL) in .env.deployment or the environment.",
            )
    else:
        key = _target_env_key(name)
        url = values.get(key) or BUILTIN_TARGETS.get(name)
        if not url:
            if name in WELL_KNOWN_TARGETS:
                raise ConfigError(
                    f"target {name!r} is not configured.",
                    f"Set {key}=postgresql://user@host:port/database in .env.deployment.",
                )
            known = ", ".join(configured_target_names(values))
            raise ConfigError(f"unknown target {name!r}.", f"Known targets: {known}.")
        parts = parse_database_url(url, key)
        source = key if values.get(key) else "built-in default"
        if values.get(key + "_PASSWORD"):
            parts["password"] = values[key + "_PASSWORD"]
    password = parts.get("password")
    params = parts.get("params", ())
    assert isinstance(params, tuple)
    return Target(
        name=name,
        host=str(parts["host"]),
        port=int(str(parts.get("port", 5432))),
        dbname=str(parts.get("dbname", "postgres")),
        user=str(parts.get("user", "postgres")),
        password=Secret(str(password)) if password else None,
        production=name in production,
        params=params,
        source=source,
    )


def load_settings(
    env_file: str | os.PathLike[str] | None = None,
    target: str | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> Settings:
    """Build the settings. The process environment wins over the file, as the SOP's
    `export SUPABASE_DB_HOST=...` overrides expect."""
    env = dict(os.environ if environ is None else environ)
    cwd = cwd or Path.cwd()
    warnings: list[str] = []
    explicit = env_file or env.get("PGRUNBOOK_ENV_FILE")
    path: Path | None
    if explicit:
        path = Path(explicit).expanduser()
        if not path.is_absolute():
            path = cwd / path
    else:
        path = cwd / DEFAULT_ENV_FILE
        if not path.exists():
            path = None
    file_values: dict[str, str] = {}
    if path is not None:
        file_values = read_env_file(path)
        warning = _permission_warning(path)
        if warning:
            warnings.append(warning)
        for key in file_values:
            if _spec_for(key) is None and key.startswith(("PGRUNBOOK_", "SUPABASE_DB_", "BACKUP_")):
                warnings.append(f"{path}: {key} is not a pgrunbook setting and is ignored.")
    values: dict[str, str] = {}
    for source in (file_values, env):
        for key, value in source.items():
            if _spec_for(key) is not None:
                values[key] = value

    production = frozenset(
        n.strip().lower()
        for n in values.get("PGRUNBOOK_PRODUCTION_TARGETS", "production").split(",")
        if n.strip()
    )
    default_name = values.get("PGRUNBOOK_DEFAULT_TARGET", "production").strip() or "production"
    name = (target or default_name).strip().lower()
    if not re.fullmatch(r"[a-z0-9_][a-z0-9_-]*", name):
        raise ConfigError(f"target name {name!r} is not valid.", "Use letters, digits, - and _.")
    tgt = _build_target(name, values, production)

    backup_dir = Path(values.get("BACKUP_DIR", "backups")).expanduser()
    if not backup_dir.is_absolute():
        backup_dir = (path.parent if path is not None else cwd) / backup_dir
    compression = values.get("BACKUP_COMPRESSION", "zstd:3").strip().lower()
    parse_compression(compression)
    bin_dir = values.get("PG_BIN_DIR")
    timeout_raw = values.get("PGRUNBOOK_CONNECT_TIMEOUT", "10")
    try:
        timeout = int(timeout_raw)
        if timeout <= 0:
            raise ValueError
    except ValueError:
        raise ConfigError(
            f"PGRUNBOOK_CONNECT_TIMEOUT must be a whole number of seconds, not {timeout_raw!r}."
        ) from None
    index_memory = parse_memory(values.get("RESTORE_INDEX_MEMORY", "512MB"),
                                 "RESTORE_INDEX_MEMORY")
    return Settings(
        values=values,
        env_file=path,
        target=tgt,
        backup_dir=backup_dir,
        compression=compression,
        pg_bin_dir=Path(bin_dir).expanduser() if bin_dir else None,
        connect_timeout=timeout,
        production_targets=production,
        warnings=tuple(warnings),
        restore_index_memory=index_memory,
    )


_MEMORY_UNITS = {"": 1024 * 1024, "kb": 1024, "mb": 1024 ** 2, "gb": 1024 ** 3, "tb": 1024 ** 4}


def parse_memory(text: str, name: str) -> int:
    """PostgreSQL's way of writing memory (`512MB`, `1GB`, `65536kB`; a bare number is MB) in
    bytes."""
    m = re.fullmatch(r"\s*(\d+)\s*([kKmMgGtT][bB])?\s*", text)
    if not m:
        raise ConfigError(f"{name} {text!r} is not an amount of memory.",
                          "Write it as PostgreSQL does: 512MB, 1GB, or 0.")
    return int(m.group(1)) * _MEMORY_UNITS[(m.group(2) or "").lower()]


def parse_compression(spec: str) -> tuple[str, int]:
    """`zstd:3` -> ("zstd", 3); `gzip:6` -> ("gzip", 6); `none` -> ("none", 0)."""
    method, _, level_text = spec.partition(":")
    limits = {"zstd": (1, 19, 3), "gzip": (0, 9, 6), "none": (0, 0, 0)}
    if method not in limits:
        raise ConfigError(
            f"BACKUP_COMPRESSION {spec!r} is not known.", "Use zstd:LEVEL, gzip:LEVEL or none."
        )
    low, high, default = limits[method]
    if not level_text:
        return method, default
    try:
        level = int(level_text)
    except ValueError:
        raise ConfigError(f"BACKUP_COMPRESSION level {level_text!r} is not a number.") from None
    if not low <= level <= high:
        raise ConfigError(f"BACKUP_COMPRESSION level for {method} must be {low} to {high}.")
    return method, level
