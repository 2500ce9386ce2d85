"""`pgrunbook demo`: a throwaway local PostgreSQL holding a generated Supabase-shaped database.

The demo cluster outlives the command (so `backup`, `list` and, later, `restore` can be tried
against it) and is removed with `pgrunbook demo --stop`. Its settings file is written 0600.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import shutil
import tempfile
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg

from tui.core.backup import BackupRequest, run_backup
from tui.core.cluster import ThrowawayCluster, new_password, save_state
from tui.core.errors import OperationFailed
from tui.core.events import Emit, ignore
from tui.core.fsutil import atomic_write_bytes, ensure_private_dir
from tui.core.metadata import ARCHIVE_SUFFIX, STAMP_RE, meta_path_for, read_meta, write_meta
from tui.core.pgtools import connect
from tui.core.settings import Settings, load_settings

DEMO_DIR = "pgrunbook-demo"
DEMO_ENV = "demo.env"
STATE_FILE = "cluster.json"
_ISOLATED = ("# This file is the whole truth: exported SUPABASE_DB_* or DATABASE_URL variables "
             "never point the demo elsewhere.\nPGRUNBOOK_IGNORE_ENVIRONMENT=true\n")

SUPABASE_ROLES = ("anon", "authenticated", "service_role", "supabase_admin",
                  "supabase_auth_admin", "supabase_storage_admin")

SCHEMA_SQL = """
CREATE SCHEMA IF NOT EXISTS extensions;
CREATE EXTENSION IF NOT EXISTS "uuid-ossp" WITH SCHEMA extensions;
CREATE EXTENSION IF NOT EXISTS pgcrypto WITH SCHEMA extensions;
CREATE SCHEMA IF NOT EXISTS auth AUTHORIZATION supabase_auth_admin;
CREATE SCHEMA IF NOT EXISTS storage AUTHORIZATION supabase_storage_admin;

CREATE TABLE auth.users (
    id uuid PRIMARY KEY DEFAULT extensions.gen_random_uuid(),
    email text UNIQUE,
    encrypted_password text,
    email_confirmed_at timestamptz,
    raw_user_meta_data jsonb NOT NULL DEFAULT '{}',
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz
);
ALTER TABLE auth.users OWNER TO supabase_auth_admin;
CREATE TABLE auth.identities (
    id uuid PRIMARY KEY DEFAULT extensions.uuid_generate_v4(),
    user_id uuid NOT NULL REFERENCES auth.users(id) ON DELETE CASCADE,
    provider text NOT NULL,
    identity_data jsonb NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE auth.identities OWNER TO supabase_auth_admin;

CREATE TABLE storage.buckets (
    id text PRIMARY KEY,
    name text NOT NULL UNIQUE,
    public boolean NOT NULL DEFAULT false,
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE storage.objects (
    id uuid PRIMARY KEY DEFAULT extensions.gen_random_uuid(),
    bucket_id text REFERENCES storage.buckets(id),
    name text NOT NULL,
    owner uuid REFERENCES auth.users(id),
    metadata jsonb,
    created_at timestamptz NOT NULL DEFAULT now()
);
ALTER TABLE storage.buckets OWNER TO supabase_storage_admin;
ALTER TABLE storage.objects OWNER TO supabase_storage_admin;

CREATE TABLE public.profiles (
    id uuid PRIMARY KEY REFERENCES auth.users(id) ON DELETE CASCADE,
    display_name text NOT NULL,
    currency char(3) NOT NULL DEFAULT 'USD'
);
CREATE TABLE public.vendors (
    id bigserial PRIMARY KEY,
    name text NOT NULL,
    category text NOT NULL,
    created_by uuid REFERENCES auth.users(id),
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE TABLE public.transactions (
    id bigserial PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES auth.users(id),
    vendor_id bigint REFERENCES public.vendors(id),
    amount numeric(12, 2) NOT NULL,
    currency char(3) NOT NULL DEFAULT 'USD',
    description text,
    occurred_at timestamptz NOT NULL,
    metadata jsonb NOT NULL DEFAULT '{}'
);
CREATE INDEX transactions_user_idx ON public.transactions (user_id, occurred_at);
CREATE TABLE public.budgets (
    id bigserial PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES auth.users(id),
    category text NOT NULL,
    monthly_limit numeric(12, 2) NOT NULL
);

ALTER TABLE public.transactions ENABLE ROW LEVEL SECURITY;
CREATE POLICY "users see their own transactions" ON public.transactions
    FOR SELECT TO authenticated
    USING (user_id = nullif(current_setting('request.jwt.claim.sub', true), '')::uuid);
GRANT USAGE ON SCHEMA public TO anon, authenticated, service_role;
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO authenticated, service_role;
GRANT SELECT ON public.vendors TO anon;
CREATE PUBLICATION supabase_realtime FOR TABLE public.transactions;
"""

DATA_SQL = """
INSERT INTO auth.users (email, encrypted_password, email_confirmed_at, raw_user_meta_data, created_at)
SELECT 'user' || g || '@example.com', extensions.crypt('pw' || g, '$1$demo'),
       now() - (g || ' minutes')::interval,
       jsonb_build_object('name', 'User ' || g, 'plan', (ARRAY['free','pro','team'])[1 + g % 3]),
       now() - (g || ' hours')::interval
FROM generate_series(1, {users}) g;
INSERT INTO auth.identities (user_id, provider, identity_data)
SELECT id, 'email', jsonb_build_object('email', email) FROM auth.users;
INSERT INTO public.profiles (id, display_name)
SELECT id, 'User ' || split_part(email, '@', 1) FROM auth.users;
INSERT INTO storage.buckets (id, name, public) VALUES ('receipts', 'receipts', false),
    ('avatars', 'avatars', true);
INSERT INTO public.vendors (name, category, created_by)
SELECT 'Vendor ' || g, (ARRAY['groceries','travel','software','rent','dining'])[1 + g % 5],
       (SELECT id FROM auth.users ORDER BY created_at LIMIT 1)
FROM generate_series(1, {vendors}) g;
CREATE TEMP TABLE user_ids AS SELECT row_number() OVER () AS n, id FROM auth.users;
INSERT INTO public.transactions (user_id, vendor_id, amount, description, occurred_at, metadata)
SELECT u.id, 1 + (g * 7919) % {vendors}, round((10 + (g * 31) % 5000)::numeric / 7, 2),
       'Payment #' || g, now() - ((g % 100000) || ' minutes')::interval,
       jsonb_build_object('source', 'demo', 'batch', g / 1000)
FROM generate_series(1, {transactions}) g
JOIN user_ids u ON u.n = 1 + g % {users};
INSERT INTO storage.objects (bucket_id, name, owner, metadata)
SELECT 'receipts', 'receipt-' || g || '.pdf', u.id, jsonb_build_object('size', g * 10)
FROM generate_series(1, {objects}) g JOIN user_ids u ON u.n = 1 + g % {users};
INSERT INTO public.budgets (user_id, category, monthly_limit)
SELECT id, 'groceries', 400 FROM auth.users;
ANALYZE;
"""

# More transactions, as the application would add them between two backups.
GROW_SQL = """
INSERT INTO public.transactions (user_id, vendor_id, amount, description, occurred_at, metadata)
SELECT u.id, v.id, round((10 + (g * 37) %% 5000)::numeric / 7, 2), 'Payment (later) #' || g,
       now(), '{"source": "demo"}'
FROM generate_series(1, %(n)s) g
CROSS JOIN LATERAL (SELECT id FROM auth.users ORDER BY created_at OFFSET g %% 10 LIMIT 1) u
CROSS JOIN LATERAL (SELECT id FROM public.vendors ORDER BY id OFFSET g %% 5 LIMIT 1) v
"""


def create_roles(conn: psycopg.Connection[Any]) -> None:
    from psycopg import sql

    for role in SUPABASE_ROLES:
        if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone() is None:
            conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))


def load_supabase_shaped(conn: psycopg.Connection[Any], transactions: int = 50_000) -> dict[str, int]:
    """Create the schema and fill it: about `transactions` rows in public.transactions."""
    users = max(transactions // 50, 10)
    sizes = {"users": users, "vendors": max(transactions // 100, 5),
             "transactions": transactions, "objects": max(transactions // 20, 10)}
    create_roles(conn)
    conn.execute(SCHEMA_SQL)
    conn.execute(DATA_SQL.format(**{k: int(v) for k, v in sizes.items()}))
    return sizes


@dataclass
class Demo:
    workdir: Path
    cluster: ThrowawayCluster
    env_file: Path
    created: bool


def demo_dir(cwd: Path | None = None) -> Path:
    return (cwd or Path.cwd()) / DEMO_DIR


def _cluster_base(workdir: Path) -> Path:
    # The server runs as `postgres` when we are root, and may not be able to enter the
    # operator's home: keep its files under the temp directory, keyed by the demo directory.
    key = hashlib.sha256(str(workdir.resolve()).encode()).hexdigest()[:10]
    return Path(tempfile.gettempdir()) / f"pgrb-demo-{os.getuid()}-{key}"


def running_demo(workdir: Path) -> ThrowawayCluster | None:
    state_path = workdir / STATE_FILE
    if not state_path.exists():
        return None
    try:
        state = json.loads(state_path.read_text())
        cluster = ThrowawayCluster.attach(state)
    except (OSError, ValueError, KeyError):
        return None
    return cluster if cluster.is_running() else None


def start_demo(workdir: Path, transactions: int = 50_000) -> Demo:
    ensure_private_dir(workdir)
    existing = running_demo(workdir)
    env_file = workdir / DEMO_ENV
    if existing is not None and env_file.exists():
        text = env_file.read_text(encoding="utf-8")
        if "PGRUNBOOK_IGNORE_ENVIRONMENT=true" not in text:  # written by an older pgrunbook
            atomic_write_bytes(env_file, (text + _ISOLATED).encode())
        return Demo(workdir, existing, env_file, created=False)
    stop_demo(workdir)
    password = new_password()
    base = _cluster_base(workdir)
    shutil.rmtree(base, ignore_errors=True)  # left by a demo that was not stopped cleanly
    cluster = ThrowawayCluster(password=password, base_dir=base)
    try:
        cluster.start()
        with psycopg.connect(host=cluster.host, port=cluster.port, user="postgres",
                             password=password, dbname="postgres", autocommit=True) as conn:
            load_supabase_shaped(conn, transactions)
    except psycopg.Error as exc:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
        raise OperationFailed(f"could not load the demo data: {exc}") from None
    except BaseException:
        cluster.stop()
        shutil.rmtree(base, ignore_errors=True)
        raise
    save_state(workdir / STATE_FILE, cluster.detach())
    env = "\n".join([
        "# Written by `pgrunbook demo`: the throwaway demo database.",
        _ISOLATED.strip(),
        f"SUPABASE_DB_HOST={cluster.host}",
        f"SUPABASE_DB_PORT={cluster.port}",
        "SUPABASE_DB_NAME=postgres",
        "SUPABASE_DB_USER=postgres",
        f"SUPABASE_DB_PASSWORD={password}",
        "PGRUNBOOK_DEFAULT_TARGET=demo",
        "PGRUNBOOK_PRODUCTION_TARGETS=production",
        "BACKUP_DIR=backups",
        "# The runbooks' maintenance steps, harmless here; yours would switch the site over.",
        "RUNBOOK_COMMAND_MAINTENANCE_ON=\"echo demo: maintenance mode on\"",
        "RUNBOOK_COMMAND_MAINTENANCE_OFF=\"echo demo: maintenance mode off\"",
        "",
    ])
    atomic_write_bytes(env_file, env.encode())
    return Demo(workdir, cluster, env_file, created=True)


def demo_settings(demo: Demo) -> Settings:
    """The demo's settings from its own file alone, refused unless they point at the demo's own
    cluster: the demo writes (growing data, restores) only there."""
    settings = load_settings(env_file=demo.env_file, ignore_environment=True)
    t = settings.target
    if (t.host, t.port) != (demo.cluster.host, demo.cluster.port):
        raise OperationFailed(
            f"{demo.env_file} points at {t.describe()}, not at the demo's own database on "
            f"{demo.cluster.host}:{demo.cluster.port}; nothing was written.",
            "Remove the demo (pgrunbook demo --stop) and start it again.",
        )
    return settings


def stop_demo(workdir: Path) -> bool:
    """Stop and remove the demo cluster; backups and reports in `workdir` stay."""
    state_path = workdir / STATE_FILE
    if not state_path.exists():
        return False
    try:
        cluster = ThrowawayCluster.attach(json.loads(state_path.read_text()))
        cluster.stop()
    except (OSError, ValueError, KeyError):
        pass
    state_path.unlink(missing_ok=True)
    return True


# The demo's lived-in inventory: (kind, label, age, extra transactions before it), oldest first.
HISTORY = (
    ("release", "pre_major_release_v1.3", timedelta(days=9, hours=3), 0),
    ("pre-migration", "pre_migration", timedelta(days=3, hours=5), 2_000),
    ("manual", "manual", timedelta(hours=26), 1_500),
)


def seed_history(settings: Settings, emit: Emit = ignore) -> list[str]:
    """A few real backups of the demo database, of different kinds, with the data growing
    between them, then dated back (file names, `created_at`, `finished_at`) so that a newcomer's first look
    at the browser shows ages, a size trend and kinds; each says so in its metadata
    (`demo_backdated_from`). The archives and checksums are untouched and restorable."""
    names = []
    for kind, label, ago, more in HISTORY:
        if more:
            with connect(settings.target, settings) as conn:
                conn.execute(GROW_SQL, {"n": more})
        result = asyncio.run(run_backup(settings, BackupRequest(
            label=label, kind=kind, reason=f"demo: {kind} backup", origin="demo"), emit))
        names.append(_backdate(result.path, datetime.now(UTC) - ago))
    with connect(settings.target, settings) as conn:
        conn.execute(GROW_SQL, {"n": 1_000})
        # A database in its steady state: without this, autovacuum analyzes the grown tables
        # a minute later, which counts as a write (an emergency backup taken then could not
        # stand as a restore's safety backup: tui.core.restore.safety).
        # The inserts' statistics are flushed first: flushed after the ANALYZE, they would
        # count as changes since it, and autovacuum would analyze again.
        conn.execute("SELECT pg_stat_force_next_flush()")
        conn.execute("ANALYZE")
    return names


def _backdate(archive: Path, when: datetime) -> str:
    meta_path = meta_path_for(archive)
    meta = read_meta(meta_path)
    stamp = when.strftime("%Y%m%d_%H%M%S")
    match = STAMP_RE.match(meta["name"])
    assert match is not None
    name = f"{stamp}_{match.group(2)}"
    new_archive = archive.with_name(name + ARCHIVE_SUFFIX)
    meta["demo_backdated_from"] = meta["created_at"]
    took = timedelta(seconds=float(meta.get("duration_seconds") or 0))
    meta.update(name=name, created_at=when.isoformat().replace("+00:00", "Z"),
                finished_at=(when + took).isoformat().replace("+00:00", "Z"))
    meta["archive"]["file"] = new_archive.name
    os.rename(archive, new_archive)
    write_meta(meta_path_for(new_archive), meta)
    meta_path.unlink()
    return name
