-- Cluster-level roles of a hosted Supabase project, as far as they matter to a backup/restore tool.
-- Run once per cluster, as the bootstrap superuser `supabase_admin`, in any database.
-- Passwords are not set here: tests/supabase_shape.py sets the `postgres` login's password.
--
-- Written for pgrunbook's tests from facts, not copied. Sources (public repositories):
--   [init]    supabase/postgres migrations/db/init-scripts/00000000000000-initial-schema.sql
--   [post]    supabase/postgres migrations/db/init-scripts/00000000000003-post-setup.sql
--   [rt]      supabase/postgres migrations/db/init-scripts/00000000000003-realtime-schema.sql
--   [demote]  supabase/postgres migrations/db/migrations/10000000000000_demote-postgres.sql
--   [inherit] supabase/postgres migrations/db/migrations/20230529180330_alter_api_roles_for_inherit.sql
--   [revoke]  supabase/postgres migrations/db/migrations/20240319072844_lock_down_postgres_access_to_auth_and_storage.sql
--             and 20250421084701_revoke_admin_roles_from_postgres.sql (postgres leaves
--             supabase_auth_admin, supabase_storage_admin)
--   [admin16] supabase/postgres migrations/db/migrations/20250605172253_grant_with_admin_to_postgres_16_and_above.sql
--   [dumpall] `pg_dumpall --roles-only` of hosted projects published on GitHub, e.g.
--             movinesta/RideIQ supabase/migrations/globals_roles_20260122_033758.sql and
--             dev-personal-projects/github-actions-supabase-backup backups/latest/*/roles.sql:
--             the final attributes, settings and memberships below.
--   [cli]     supabase/cli internal/utils/misc.go (ReservedRoles: the roles a project may not alter)

-- supabase_admin: the only superuser [init]; here it is initdb's bootstrap role already.
ALTER ROLE supabase_admin WITH SUPERUSER CREATEDB CREATEROLE REPLICATION BYPASSRLS;
ALTER ROLE supabase_admin SET search_path TO "$user", public, auth, extensions;  -- [post], [dumpall]
ALTER ROLE supabase_admin SET log_statement TO 'none';                           -- [dumpall]

-- postgres: the operator's role. Not a superuser since [demote]:
-- NOSUPERUSER CREATEDB CREATEROLE LOGIN REPLICATION BYPASSRLS ([demote], [dumpall]).
CREATE ROLE postgres WITH NOSUPERUSER INHERIT CREATEDB CREATEROLE LOGIN REPLICATION BYPASSRLS;
ALTER ROLE postgres SET search_path TO "$user", public, extensions;               -- [post], [dumpall]

-- API roles used by PostgREST through `authenticator` [init]; INHERIT since [inherit];
-- service_role bypasses RLS [init].
CREATE ROLE anon          WITH NOLOGIN INHERIT;
CREATE ROLE authenticated WITH NOLOGIN INHERIT;
CREATE ROLE service_role  WITH NOLOGIN INHERIT BYPASSRLS;
ALTER ROLE anon          SET statement_timeout TO '3s';                           -- [init]
ALTER ROLE authenticated SET statement_timeout TO '8s';                           -- [init]

CREATE ROLE authenticator WITH LOGIN NOINHERIT;                                   -- [init]
ALTER ROLE authenticator SET statement_timeout TO '8s';                           -- [dumpall]
ALTER ROLE authenticator SET lock_timeout TO '8s';                                -- [dumpall]
-- (hosted also sets session_preload_libraries = 'safeupdate'; that library is not installed here)

-- Service roles that own the managed schemas' objects ([init] auth/storage scripts, [dumpall]).
CREATE ROLE supabase_auth_admin    WITH LOGIN NOINHERIT CREATEROLE NOREPLICATION;
ALTER ROLE supabase_auth_admin SET search_path TO auth;
ALTER ROLE supabase_auth_admin SET idle_in_transaction_session_timeout TO '60000';
ALTER ROLE supabase_auth_admin SET log_statement TO 'none';
CREATE ROLE supabase_storage_admin WITH LOGIN NOINHERIT CREATEROLE NOREPLICATION;
ALTER ROLE supabase_storage_admin SET search_path TO storage;
ALTER ROLE supabase_storage_admin SET log_statement TO 'none';
-- [rt] creates it LOGIN; hosted dumps show it NOLOGIN NOINHERIT [dumpall].
CREATE ROLE supabase_realtime_admin WITH NOLOGIN NOINHERIT;

-- Dashboard, pooler, replication and read-only roles ([post], [init], [dumpall]).
CREATE ROLE dashboard_user WITH NOSUPERUSER NOLOGIN INHERIT CREATEDB CREATEROLE REPLICATION;
CREATE ROLE pgbouncer WITH LOGIN;
CREATE ROLE supabase_replication_admin WITH LOGIN REPLICATION;
CREATE ROLE supabase_read_only_user WITH LOGIN BYPASSRLS;
ALTER ROLE supabase_read_only_user SET default_transaction_read_only TO 'on';

-- Memberships, as `pg_dumpall --roles-only` of hosted projects lists them [dumpall]:
-- postgres holds the API roles, authenticator and three predefined roles WITH ADMIN OPTION
-- ([admin16] for 16+; PG15 projects show the same), and supabase_realtime_admin without.
-- It is NOT a member of supabase_auth_admin nor supabase_storage_admin any more [revoke].
GRANT anon, authenticated, service_role TO authenticator;
GRANT anon, authenticated, service_role, authenticator TO postgres WITH ADMIN OPTION;
GRANT pg_monitor, pg_read_all_data, pg_signal_backend TO postgres WITH ADMIN OPTION;
GRANT supabase_realtime_admin TO postgres;
GRANT authenticator TO supabase_storage_admin;
GRANT pg_monitor, pg_read_all_data TO supabase_read_only_user;

DO $$
BEGIN
  IF current_setting('server_version_num')::int >= 160000 THEN
    -- 16+: hosted dumps show pg_create_subscription for postgres [dumpall].
    EXECUTE 'GRANT pg_create_subscription TO postgres WITH ADMIN OPTION';
  END IF;
END $$;
