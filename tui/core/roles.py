"""The cluster's roles, kept with each backup as `pg_dumpall --roles-only --no-role-passwords`
gives them, and created from that text in a fresh cluster (a drill).

The archive names roles (owners, grantees, policies) but does not create them. Each backup also
writes `<archive>.roles.sql` (0600, its SHA-256 in the metadata; in S3 as `roles.sql` beside
`database.backup`). Without passwords it needs no superuser: on hosted Supabase, `postgres` can
read it. When the roles cannot be read, the backup notes why in its metadata and goes on.

In a fresh cluster `create_missing` runs the file's statements for the roles the cluster lacks
only: a role that exists (the bootstrap superuser, or Supabase's reserved roles on a real
project) is never altered.
"""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import psycopg

ROLES_SUFFIX = ".roles.sql"
_IDENT = r'(?:"(?:[^"]|"")+"|[A-Za-z_][A-Za-z0-9_$]*)'
_CREATE_RE = re.compile(rf"^CREATE ROLE ({_IDENT});$")
_ALTER_RE = re.compile(rf"^ALTER ROLE ({_IDENT}) ")
_GRANT_RE = re.compile(rf"^GRANT ({_IDENT}) TO ({_IDENT})(.*);$")


def roles_path_for(archive: Path) -> Path:
    return archive.with_name(archive.name + ROLES_SUFFIX)


def unquote(ident: str) -> str:
    return ident[1:-1].replace('""', '"') if ident.startswith('"') else ident


class RolesUnreadable(Exception):
    """pg_dumpall could not read the cluster's roles; the message says why."""


def dump_roles(pg_dumpall: Path, env: dict[str, str]) -> str:
    """The roles as `pg_dumpall --roles-only --no-role-passwords` prints them."""
    try:
        proc = subprocess.run([str(pg_dumpall), "--roles-only", "--no-role-passwords",
                               "--no-password"], capture_output=True, text=True, env=env,
                              timeout=300, check=False, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RolesUnreadable(str(exc)) from None
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        raise RolesUnreadable(lines[-1] if lines else f"pg_dumpall exit {proc.returncode}")
    return proc.stdout


@dataclass
class RolesCreated:
    created: list[str] = field(default_factory=list)
    superusers: list[str] = field(default_factory=list)
    failed: list[str] = field(default_factory=list)  # statements that did not apply, and why


def create_missing(conn: psycopg.Connection[Any], text: str) -> RolesCreated:
    """Run the file's statements for the roles this cluster lacks; leave the others alone."""
    existing = {str(r[0]) for r in conn.execute("SELECT rolname FROM pg_roles").fetchall()}
    statements = [ln.strip() for ln in text.splitlines()
                  if ln.strip() and not ln.startswith(("--", "\\", "SET "))]
    new: set[str] = set()
    result = RolesCreated()
    for stmt in statements:
        m = _CREATE_RE.match(stmt)
        if m and unquote(m.group(1)) not in existing:
            new.add(unquote(m.group(1)))
    for stmt in statements:
        role = None
        if (m := _CREATE_RE.match(stmt)) or (m := _ALTER_RE.match(stmt)):
            role = unquote(m.group(1))
        elif m := _GRANT_RE.match(stmt):
            role = unquote(m.group(2))  # a membership of a new role
        if role is None or role not in new:
            continue
        try:
            _apply(conn, stmt)
        except psycopg.Error as exc:
            result.failed.append(f"{stmt} ({exc.diag.message_primary or exc})")
            continue
        if _CREATE_RE.match(stmt):
            result.created.append(role)
        elif " SUPERUSER " in f" {stmt.rstrip(';')} " and _ALTER_RE.match(stmt):
            result.superusers.append(role)
    return result


def _apply(conn: psycopg.Connection[Any], stmt: str) -> None:
    try:
        with conn.transaction():
            conn.execute(stmt.encode())  # the file's own SQL, as pg_dumpall wrote it
    except psycopg.errors.UndefinedObject:
        # GRANTED BY a role this cluster lacks: the membership still matters, the grantor not.
        if " GRANTED BY " not in stmt:
            raise
        with conn.transaction():
            conn.execute(stmt.split(" GRANTED BY ")[0].encode() + b";")
