"""Targets: the databases pgrunbook backs up and restores into, and what makes one production.

A target's identity is its endpoint (host, port, database), never its name: a target counts as
production when its endpoint is a production target's endpoint, whatever it is called, and when
the process environment moves a settings file's target to another endpoint, the target says so
(`Target.overridden`), so that a face can tell the operator before anything is written and a
restore asks for the database name typed.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, unquote, urlsplit

from tui.core.errors import ConfigError

# `local` is the Supabase CLI's local database (`supabase start`).
BUILTIN_TARGETS: Mapping[str, str] = {
    "local": "postgresql://postgres@127.0.0.1:54322/postgres",
}
WELL_KNOWN_TARGETS = ("production", "staging", "local")
_ENDPOINT_FIELDS = (("host", "host"), ("port", "port"), ("dbname", "database"), ("user", "user"))


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

    def __reduce__(self) -> tuple[type[Secret], tuple[str]]:
        # Pickled (a job's outcome on disk), a secret is withheld: only `pickle_with_secrets`
        # (a job's settings, sent through a pipe) carries the value.
        return Secret, ("",)


def pickle_with_secrets(obj: object) -> bytes:
    """Pickle `obj` with its secrets' values, for a pipe to a child process, never a file."""
    import io
    import pickle

    class _Pickler(pickle.Pickler):
        def reducer_override(self, value: object) -> Any:
            if isinstance(value, Secret):
                return Secret, (value.reveal(),)
            return NotImplemented

    buffer = io.BytesIO()
    _Pickler(buffer).dump(obj)
    return buffer.getvalue()


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
    # Why it is production: "named in PGRUNBOOK_PRODUCTION_TARGETS", or the production target
    # whose endpoint it shares.
    production_reason: str = ""
    # One line when the environment moved the settings file's target elsewhere, else "".
    overridden: str = ""

    @property
    def endpoint(self) -> tuple[str, int, str]:
        """What identifies the database written to: host, port, database."""
        return self.host.lower(), self.port, self.dbname

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
            "endpoint_overridden_by_environment": bool(self.overridden),
        }


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


def target_env_key(name: str) -> str:
    return "PGRUNBOOK_TARGET_" + re.sub(r"[^A-Za-z0-9]", "_", name).upper()


def default_target_name(values: Mapping[str, str]) -> str:
    return values.get("PGRUNBOOK_DEFAULT_TARGET", "production").strip().lower() or "production"


def production_names(values: Mapping[str, str]) -> frozenset[str]:
    return frozenset(
        n.strip().lower()
        for n in values.get("PGRUNBOOK_PRODUCTION_TARGETS", "production").split(",")
        if n.strip()
    )


def configured_target_names(values: Mapping[str, str]) -> list[str]:
    names = {default_target_name(values), *BUILTIN_TARGETS}
    for key in values:
        m = re.match(r"^PGRUNBOOK_TARGET_([A-Z0-9_]+)$", key)
        if m and not key.endswith("_PASSWORD"):
            names.add(m.group(1).lower())
    return sorted(names)


def build_target(name: str, values: Mapping[str, str]) -> Target:
    """Target `name` as `values` alone describe it (not yet marked production)."""
    if name == default_target_name(values):
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
        key = target_env_key(name)
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
        params=params,
        source=source,
    )


def _quiet_build(name: str, values: Mapping[str, str]) -> Target | None:
    try:
        return build_target(name, values)
    except ConfigError:
        return None


def _production_endpoints(sources: list[Mapping[str, str]],
                          names: frozenset[str]) -> dict[tuple[str, int, str], str]:
    """Endpoint -> the production target's name, for every production target that any one
    source (the merged settings, the file alone, the environment alone) describes: the SOP's
    `export $(grep -v '^#' .env.deployment | xargs)` leaves production's endpoint in the
    environment, whatever file is read afterwards."""
    found: dict[tuple[str, int, str], str] = {}
    for values in sources:
        for pname in sorted(names | production_names(values)):
            t = _quiet_build(pname, values)
            if t is not None and t.host:
                found.setdefault(t.endpoint, pname)
    return found


def _override_note(name: str, merged: Target, file_values: Mapping[str, str],
                   env_file: Path) -> str:
    from_file = _quiet_build(name, file_values)
    if from_file is None:
        return (f"target {name!r} is not in {env_file.name}: its endpoint comes from the "
                f"environment ({merged.describe()}).")
    changes = [f"{label} {getattr(merged, attr)!r} (file: {getattr(from_file, attr)!r})"
               for attr, label in _ENDPOINT_FIELDS
               if getattr(merged, attr) != getattr(from_file, attr)]
    if not changes:
        return ""
    return (f"the environment overrides {env_file.name}'s target {name!r}: "
            f"{', '.join(changes)}; pgrunbook uses {merged.describe()}.")


def resolve_target(name: str, merged: Mapping[str, str], *,
                   file_values: Mapping[str, str] | None, env_values: Mapping[str, str],
                   env_file: Path | None) -> Target:
    """Target `name` from the merged settings, marked production by its name or its endpoint,
    and noting when the environment moved the file's target elsewhere."""
    target = build_target(name, merged)
    names = production_names(merged)
    sources = [merged, env_values] + ([file_values] if file_values is not None else [])
    reason = ""
    if name in names:
        reason = "named in PGRUNBOOK_PRODUCTION_TARGETS"
    else:
        other = _production_endpoints(sources, names).get(target.endpoint)
        if other is not None:
            reason = (f"its endpoint {target.host}:{target.port}/{target.dbname} is production "
                      f"target {other!r}'s")
    note = ""
    if file_values is not None and env_file is not None:
        note = _override_note(name, target, file_values, env_file)
    return replace(target, production=bool(reason), production_reason=reason, overridden=note)
