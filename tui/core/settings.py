"""Settings: `.env.deployment` (the SOP's file) plus the process environment, which wins.

Every variable the engine reads is declared once in `SETTINGS`, with its default and a one-line
description; `.env.deployment.example` documents the same names (a test keeps them in step).
Secrets are held in `Secret`, which never prints its value. Targets and what makes one
production live in `targets`.
"""

from __future__ import annotations

import os
import re
import stat
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path

from dotenv import dotenv_values
from dotenv.parser import parse_stream

from tui.core.errors import ConfigError
from tui.core.targets import (
    BUILTIN_TARGETS,
    Secret,
    Target,
    configured_target_names,
    default_target_name,
    parse_database_url,
    production_names,
    resolve_target,
)

__all__ = ["BUILTIN_TARGETS", "SETTINGS", "Secret", "Settings", "Target", "configured_target_names",
           "load_settings", "parse_compression", "parse_database_url", "parse_memory"]

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
    SettingSpec(
        "PGRUNBOOK_IGNORE_ENVIRONMENT", "false",
        "true: this file is the whole truth, the environment's variables are ignored (the "
        "demo's file says so); only meaningful in a settings file.",
    ),
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
    SettingSpec("BACKUP_ENCRYPTION", "none", "Encrypt backups before they touch the disk: none, "
                "gpg (symmetric AES256, the SOP's) or age (to public keys)."),
    SettingSpec("BACKUP_GPG_PASSPHRASE_FILE", None, "gpg: file (0600) whose first line is the "
                "passphrase."),
    SettingSpec("BACKUP_GPG_PASSPHRASE_COMMAND", None, "gpg: command (argv, no shell) that "
                "prints the passphrase, instead of the file."),
    SettingSpec("BACKUP_GPG_OLD_PASSPHRASE_FILES", None, "gpg: comma-separated 0600 files of "
                "earlier passphrases, to read backups taken before a rotation."),
    SettingSpec("BACKUP_AGE_RECIPIENTS", None, "age: public keys (age1...) backups are "
                "encrypted to, comma- or space-separated."),
    SettingSpec("BACKUP_AGE_RECIPIENTS_FILE", None, "age: file of public keys, one per line."),
    SettingSpec("BACKUP_AGE_IDENTITY_FILE", None, "age: file (0600) of AGE-SECRET-KEY lines that "
                "decrypt backups (restore, drill); one per recipient you hold."),
    SettingSpec("BACKUP_AGE_IDENTITY_COMMAND", None, "age: command (argv, no shell) that prints "
                "the identities, instead of the file."),
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
    SettingSpec("RETENTION_DAILY_DAYS", "14", "Retention: keep the newest good backup of each "
                "of the last N days (the SOP: 14)."),
    SettingSpec("RETENTION_WEEKLY_WEEKS", "12", "Retention: keep the newest good backup of each "
                "of the last N ISO weeks (the SOP: 12)."),
    SettingSpec("RETENTION_MONTHLY_MONTHS", "12", "Retention: keep the newest good backup of "
                "each of the last N months (the SOP: 12)."),
    SettingSpec("RETENTION_PRE_MIGRATION_DAYS", "30", "Retention: pre-migration backups stay "
                "this many days locally (in S3 they follow the daily/weekly/monthly slots)."),
    SettingSpec("RETENTION_EMERGENCY_DAYS", "30", "Retention: emergency (safety) backups stay "
                "this many days."),
    SettingSpec("RETENTION_MIN_KEEP", "3", "Retention: at least this many complete, "
                "checksum-valid backups are always kept, whatever their age."),
    SettingSpec("RETENTION_LOCAL_DAYS", "30", "Retention: local copies older than this are "
                "removed once their S3 copy is complete (S3 keeps the long horizon); 0: local "
                "copies follow the same slots as S3."),
    SettingSpec("RETENTION_GRACE_HOURS", "24", "Retention: nothing younger than this is "
                "deleted: backups, partial files, abandoned multipart uploads."),
    SettingSpec("HEALTH_BACKUP_WARN_HOURS", "24", "Health: warn when the newest good backup "
                "finished longer ago than this (the default equals the critical one: a daily "
                "schedule has no warning band; set it lower for a more frequent one)."),
    SettingSpec("HEALTH_BACKUP_CRIT_HOURS", "24", "Health: critical when the newest good "
                "backup finished longer ago than this (the SOP's check: 24 hours)."),
    SettingSpec("HEALTH_SIZE_LOW_RATIO", "0.5", "Health: warn when the newest backup of a kind "
                "is smaller than this share of the median of the ones before it."),
    SettingSpec("HEALTH_SIZE_HIGH_RATIO", "2", "Health: warn when it is larger than this many "
                "times that median."),
    SettingSpec("HEALTH_DURATION_HIGH_RATIO", "2", "Health: warn when the newest backup of a "
                "kind took this many times the median duration (and a minute more)."),
    SettingSpec("HEALTH_HISTORY", "7", "Health: how many earlier backups of the same kind the "
                "size and duration medians are taken over (at least 3 are needed)."),
    SettingSpec("HEALTH_DRILL_WARN_DAYS", "31", "Health: warn when the last passed drill is "
                "older than this (the SOP: test restores monthly)."),
    SettingSpec("HEALTH_DRILL_CRIT_DAYS", "62", "Health: critical when it is older than this."),
    SettingSpec("HEALTH_FREE_SPACE_BACKUPS", "2", "Health: warn when BACKUP_DIR's disk has room "
                "for fewer than this many backups like the newest (critical: not one)."),
    SettingSpec("RUNBOOK_DIR", None, "Directory with your own runbooks (*.toml), besides runbooks/."),
    SettingSpec("RUNBOOK_COMMAND_<NAME>", None,
                "Command a runbook step runs by name (argv, split like a shell, never a shell)."),
    SettingSpec("HEALTH_URL", None, "URL the smoke-test step GETs; 2xx means healthy."),
    SettingSpec("CHAT_WEBHOOK_URL", None, "Slack-compatible webhook the runbooks' notify steps "
                "post to, and failed backups, failed drills and critical health checks.",
                secret=True),
    SettingSpec("INCIDENT_UPDATE_MINUTES", "30", "Minutes between team updates during a "
                "runbook run (the SOP: every 30): posted to CHAT_WEBHOOK_URL, or without one "
                "shown in the TUI with the text ready to copy."),
    SettingSpec("NOTIFY_REPEAT_HOURS", "24", "Hours before the same failure is posted to "
                "CHAT_WEBHOOK_URL again."),
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


def spec_for(name: str) -> SettingSpec | None:
    """The registry's entry for a variable, or None."""
    return _spec_for(name)


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


def _truthy(text: str | None) -> bool:
    return (text or "").strip().lower() in ("1", "true", "yes", "on")


def load_settings(
    env_file: str | os.PathLike[str] | None = None,
    target: str | None = None,
    environ: Mapping[str, str] | None = None,
    cwd: Path | None = None,
    *,
    ignore_environment: bool = False,
) -> Settings:
    """Build the settings. The process environment wins over the file, as the SOP's
    `export SUPABASE_DB_HOST=...` overrides expect, unless the file says it is the whole truth
    (`PGRUNBOOK_IGNORE_ENVIRONMENT=true`) or the caller does (`ignore_environment`: the demo).
    When the environment moves the file's target to another endpoint, a warning says so."""
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
        for key, value in read_env_file(path).items():
            if _spec_for(key) is not None:
                file_values[key] = value
            elif key.startswith(("PGRUNBOOK_", "SUPABASE_DB_", "BACKUP_")):
                warnings.append(f"{path}: {key} is not a pgrunbook setting and is ignored.")
        warning = _permission_warning(path)
        if warning:
            warnings.append(warning)
    env_values = {k: v for k, v in env.items() if _spec_for(k) is not None}
    if path is not None and (ignore_environment
                             or _truthy(file_values.get("PGRUNBOOK_IGNORE_ENVIRONMENT"))):
        ignored = sorted(k for k, v in env_values.items()
                         if k != "PGRUNBOOK_ENV_FILE" and file_values.get(k) != v)
        if ignored:
            warnings.append(f"{path.name} is the whole truth: ignoring {', '.join(ignored)} "
                            "from the environment.")
        env_values = {}
    values = {**file_values, **env_values}

    name = (target or default_target_name(values)).strip().lower()
    if not re.fullmatch(r"[a-z0-9_][a-z0-9_-]*", name):
        raise ConfigError(f"target name {name!r} is not valid.", "Use letters, digits, - and _.")
    tgt = resolve_target(name, values, file_values=file_values if path is not None else None,
                         env_values=env_values, env_file=path)
    if tgt.overridden:
        warnings.append(tgt.overridden)
    production = production_names(values)

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
