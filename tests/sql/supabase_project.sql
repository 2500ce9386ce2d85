-- One hosted-Supabase-shaped project database, for pgrunbook's restore tests.
-- Run as the superuser `supabase_admin`, connected to the new database, after supabase_roles.sql.
-- Each section creates its objects as their real owner (SET ROLE ... / RESET ROLE).
-- Database-level grants (GRANT ... ON DATABASE) live in tests/supabase_shape.py, because
-- CREATE DATABASE ... TEMPLATE does not copy them.
--
-- Written for these tests from facts, not copied; function bodies are our own, harmless ones.
-- Sources (public repositories):
--   [init]    supabase/postgres migrations/db/init-scripts/00000000000000-initial-schema.sql
--   [authi]   supabase/postgres migrations/db/init-scripts/00000000000001-auth-schema.sql
--   [stori]   supabase/postgres migrations/db/init-scripts/00000000000002-storage-schema.sql
--   [post]    supabase/postgres migrations/db/init-scripts/00000000000003-post-setup.sql
--   [rt]      supabase/postgres migrations/db/init-scripts/00000000000003-realtime-schema.sql
--   [demote]  supabase/postgres migrations/db/migrations/10000000000000_demote-postgres.sql
--   [authown] supabase/postgres migrations/db/migrations/20211124212715_update-auth-owner.sql
--   [lock]    supabase/postgres migrations/db/migrations/20250421084701_revoke_admin_roles_from_postgres.sql
--   [etown]   supabase/postgres migrations/db/migrations/20250402065937_alter_internal_event_triggers_owner_to_supabase_admin.sql
--   [stgo]    supabase/postgres migrations/db/migrations/20250623125453_tmp_grant_storage_tables_to_postgres_with_grant_option.sql
--             and 20250709135250_grant_storage_schema_to_postgres_with_grant_option.sql
--   [rtgo]    supabase/postgres migrations/db/migrations/20260506172403_grant_realtime_schema_to_postgres_with_grant_option.sql
--   [pgb]     supabase/postgres migrations/db/migrations/20251121132723_correct_search_path_pgbouncer.sql
--   [s15]     supabase/postgres migrations/schema-15.sql (event trigger names, events, tags, functions;
--             auth/storage table columns)
--   [hosted]  pg_dump (with owners and ACLs) of hosted projects published on GitHub: schema auth,
--             storage, graphql_public, realtime owned by supabase_admin, extensions by postgres;
--             auth tables/functions by supabase_auth_admin, storage ones by supabase_storage_admin;
--             publication supabase_realtime owned by postgres; the six event triggers owned by
--             supabase_admin; the ACLs and DEFAULT ACLs of auth/storage/public used below.
--   [cli]     supabase/cli internal/utils/misc.go (InternalSchemas) and
--             internal/db/dump/templates/dump_schema.sh (it comments out ALTER DEFAULT PRIVILEGES
--             FOR ROLE supabase_admin and grants on internal schemas, and excludes event triggers).
-- Assumptions (not found stated anywhere) are marked ASSUMED.

SET client_min_messages = warning;

-- ============================================================================================
-- 1. As supabase_admin: managed schemas, their grants and default privileges
-- ============================================================================================

-- extensions: owned by postgres on hosted projects [hosted]; the extensions in it by
-- supabase_admin, who creates them [init].
CREATE SCHEMA extensions AUTHORIZATION postgres;
CREATE EXTENSION IF NOT EXISTS "uuid-ossp" WITH SCHEMA extensions;
CREATE EXTENSION IF NOT EXISTS pgcrypto WITH SCHEMA extensions;
GRANT USAGE ON SCHEMA extensions TO anon, authenticated, service_role;   -- [init]
GRANT ALL ON SCHEMA extensions TO dashboard_user;                         -- [post]

-- public: usage for the API roles [init]; default privileges for objects supabase_admin
-- creates there [init], and for those postgres creates, as hosted dumps list them [hosted].
GRANT USAGE ON SCHEMA public TO postgres, anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE supabase_admin IN SCHEMA public
    GRANT ALL ON TABLES TO postgres, anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE supabase_admin IN SCHEMA public
    GRANT ALL ON SEQUENCES TO postgres, anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE supabase_admin IN SCHEMA public
    GRANT ALL ON FUNCTIONS TO postgres, anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA public
    GRANT ALL ON TABLES TO postgres, anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA public
    GRANT ALL ON SEQUENCES TO postgres, anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA public
    GRANT ALL ON FUNCTIONS TO postgres, anon, authenticated, service_role;

-- auth: schema owned by supabase_admin ([authi], [hosted]); supabase_auth_admin has ALL on it
-- [authi]; the API roles USAGE [authi]; dashboard_user ALL [post]; postgres had ALL [demote],
-- then lost CREATE [lock], so USAGE; supabase_realtime_admin USAGE [rt].
CREATE SCHEMA auth AUTHORIZATION supabase_admin;
GRANT ALL ON SCHEMA auth TO supabase_auth_admin, dashboard_user;
GRANT USAGE ON SCHEMA auth TO anon, authenticated, service_role, postgres, supabase_realtime_admin;
-- ASSUMED: storage's own policies call auth.uid(), so its owner can resolve names in auth.
GRANT USAGE ON SCHEMA auth TO supabase_storage_admin;
-- What supabase_auth_admin creates in auth is granted to postgres and dashboard_user [hosted].
ALTER DEFAULT PRIVILEGES FOR ROLE supabase_auth_admin IN SCHEMA auth
    GRANT ALL ON TABLES TO postgres, dashboard_user;
ALTER DEFAULT PRIVILEGES FOR ROLE supabase_auth_admin IN SCHEMA auth
    GRANT ALL ON SEQUENCES TO postgres, dashboard_user;
ALTER DEFAULT PRIVILEGES FOR ROLE supabase_auth_admin IN SCHEMA auth
    GRANT ALL ON FUNCTIONS TO postgres, dashboard_user;

-- storage: schema owned by supabase_admin ([stori], [hosted]); ALL for supabase_storage_admin
-- WITH GRANT OPTION [stori]; USAGE for postgres WITH GRANT OPTION [stgo] (CREATE revoked [lock]);
-- USAGE for the API roles [stori]; ALL for dashboard_user [post].
CREATE SCHEMA storage AUTHORIZATION supabase_admin;
GRANT ALL ON SCHEMA storage TO supabase_storage_admin WITH GRANT OPTION;
GRANT USAGE ON SCHEMA storage TO postgres WITH GRANT OPTION;
GRANT USAGE ON SCHEMA storage TO anon, authenticated, service_role;
GRANT ALL ON SCHEMA storage TO dashboard_user;
ALTER DEFAULT PRIVILEGES FOR ROLE supabase_storage_admin IN SCHEMA storage
    GRANT ALL ON TABLES TO postgres, anon, authenticated, service_role;     -- [stori]
ALTER DEFAULT PRIVILEGES FOR ROLE supabase_storage_admin IN SCHEMA storage
    GRANT ALL ON SEQUENCES TO postgres, anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE supabase_storage_admin IN SCHEMA storage
    GRANT ALL ON FUNCTIONS TO postgres, anon, authenticated, service_role;
-- Hosted dumps also carry DEFAULT ACLs FOR ROLE postgres IN SCHEMA storage [hosted].
ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA storage
    GRANT ALL ON TABLES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA storage
    GRANT ALL ON SEQUENCES TO anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE postgres IN SCHEMA storage
    GRANT ALL ON FUNCTIONS TO anon, authenticated, service_role;

-- graphql_public: owned by supabase_admin, USAGE for postgres and the API roles, default
-- privileges for what supabase_admin creates there [hosted]. pg_graphql itself is not installed
-- (Debian has no package); a placeholder function stands in, as on projects without it [s15].
CREATE SCHEMA graphql_public AUTHORIZATION supabase_admin;
GRANT USAGE ON SCHEMA graphql_public TO postgres, anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE supabase_admin IN SCHEMA graphql_public
    GRANT ALL ON TABLES TO postgres, anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE supabase_admin IN SCHEMA graphql_public
    GRANT ALL ON SEQUENCES TO postgres, anon, authenticated, service_role;
ALTER DEFAULT PRIVILEGES FOR ROLE supabase_admin IN SCHEMA graphql_public
    GRANT ALL ON FUNCTIONS TO postgres, anon, authenticated, service_role;
CREATE FUNCTION graphql_public.graphql("operationName" text DEFAULT NULL, query text DEFAULT NULL,
                                       variables jsonb DEFAULT NULL, extensions jsonb DEFAULT NULL)
RETURNS jsonb LANGUAGE sql STABLE AS $fn$
    SELECT '{"errors": [{"message": "GraphQL is not enabled in this test database"}]}'::jsonb
$fn$;

-- realtime: owned by supabase_admin [rt]; ALL for supabase_realtime_admin WITH GRANT OPTION [rt];
-- USAGE for the API roles [rt] and for postgres WITH GRANT OPTION [rtgo]; default privileges for
-- postgres and dashboard_user [hosted]; schema_migrations closed to postgres and the API roles [lock].
CREATE SCHEMA realtime AUTHORIZATION supabase_admin;
GRANT ALL ON SCHEMA realtime TO supabase_realtime_admin WITH GRANT OPTION;
GRANT USAGE ON SCHEMA realtime TO anon, authenticated, service_role;
GRANT USAGE ON SCHEMA realtime TO postgres WITH GRANT OPTION;
ALTER DEFAULT PRIVILEGES FOR ROLE supabase_admin IN SCHEMA realtime
    GRANT ALL ON TABLES TO postgres, dashboard_user;
ALTER DEFAULT PRIVILEGES FOR ROLE supabase_admin IN SCHEMA realtime
    GRANT ALL ON SEQUENCES TO postgres, dashboard_user;
ALTER DEFAULT PRIVILEGES FOR ROLE supabase_admin IN SCHEMA realtime
    GRANT ALL ON FUNCTIONS TO postgres, dashboard_user;
CREATE TABLE realtime.schema_migrations (version bigint PRIMARY KEY, inserted_at timestamp(0));
REVOKE ALL ON realtime.schema_migrations FROM anon, authenticated, service_role, postgres;
INSERT INTO realtime.schema_migrations
    SELECT 20250101000000 + g, timestamp '2025-01-01' + g * interval '1 day'
    FROM generate_series(1, 12) AS g;

-- vault: a managed schema of supabase_admin's (the supabase_vault extension is not available here).
CREATE SCHEMA vault AUTHORIZATION supabase_admin;

-- pgbouncer: the pooler's auth lookup [pgb]. ASSUMED: schema and function owned by
-- supabase_admin (older hosted dumps show the function owned by postgres).
CREATE SCHEMA pgbouncer AUTHORIZATION supabase_admin;
GRANT USAGE ON SCHEMA pgbouncer TO pgbouncer;
CREATE FUNCTION pgbouncer.get_auth(p_usename text) RETURNS TABLE (username text, password text)
LANGUAGE sql STABLE SECURITY DEFINER SET search_path = '' AS $fn$
    SELECT a.rolname::text,
           CASE WHEN a.rolvaliduntil IS NOT NULL AND a.rolvaliduntil < now() THEN NULL
                ELSE a.rolpassword END
    FROM pg_catalog.pg_authid AS a
    WHERE a.rolname = p_usename AND a.rolcanlogin
$fn$;
REVOKE ALL ON FUNCTION pgbouncer.get_auth(text) FROM PUBLIC;
GRANT EXECUTE ON FUNCTION pgbouncer.get_auth(text) TO pgbouncer;

-- The six event triggers of a hosted project: names, events, tags and functions as [s15] and
-- [hosted] show them, owned by supabase_admin [etown], [hosted]. The bodies are ours and only
-- look: none of pg_cron, pg_net or pg_graphql is installed here, and PostgREST is not running.
CREATE FUNCTION extensions.grant_pg_cron_access() RETURNS event_trigger LANGUAGE plpgsql AS $fn$
BEGIN
    IF EXISTS (SELECT FROM pg_event_trigger_ddl_commands() AS c
               WHERE c.object_type = 'extension' AND c.object_identity = 'pg_cron') THEN
        RAISE NOTICE 'pg_cron created: the hosted platform would grant its schema to postgres here';
    END IF;
END $fn$;
COMMENT ON FUNCTION extensions.grant_pg_cron_access() IS 'Stand-in for the pg_cron access hook';

CREATE FUNCTION extensions.grant_pg_net_access() RETURNS event_trigger LANGUAGE plpgsql AS $fn$
BEGIN
    IF EXISTS (SELECT FROM pg_event_trigger_ddl_commands() AS c
               WHERE c.object_type = 'extension' AND c.object_identity = 'pg_net') THEN
        RAISE NOTICE 'pg_net created: the hosted platform would grant its functions here';
    END IF;
END $fn$;
COMMENT ON FUNCTION extensions.grant_pg_net_access() IS 'Stand-in for the pg_net access hook';

CREATE FUNCTION extensions.grant_pg_graphql_access() RETURNS event_trigger LANGUAGE plpgsql AS $fn$
BEGIN
    IF EXISTS (SELECT FROM pg_event_trigger_ddl_commands() AS c
               WHERE c.object_type = 'function' AND c.schema_name = 'graphql'
                 AND c.object_identity LIKE 'graphql.resolve(%') THEN
        RAISE NOTICE 'graphql.resolve created: the hosted platform would rewire graphql_public here';
    END IF;
END $fn$;
COMMENT ON FUNCTION extensions.grant_pg_graphql_access() IS 'Stand-in for the pg_graphql access hook';

CREATE FUNCTION extensions.set_graphql_placeholder() RETURNS event_trigger LANGUAGE plpgsql AS $fn$
BEGIN
    IF EXISTS (SELECT FROM pg_event_trigger_dropped_objects() AS d
               WHERE d.object_type = 'extension' AND d.object_identity = 'pg_graphql') THEN
        RAISE NOTICE 'pg_graphql dropped: the hosted platform would restore its placeholder here';
    END IF;
END $fn$;
COMMENT ON FUNCTION extensions.set_graphql_placeholder() IS 'Stand-in for the graphql placeholder hook';

CREATE FUNCTION extensions.pgrst_ddl_watch() RETURNS event_trigger LANGUAGE plpgsql AS $fn$
BEGIN
    -- Ask PostgREST to reload its schema cache after DDL outside pg_temp.
    IF EXISTS (SELECT FROM pg_event_trigger_ddl_commands() AS c
               WHERE c.schema_name IS DISTINCT FROM 'pg_temp') THEN
        PERFORM pg_notify('pgrst', 'reload schema');
    END IF;
END $fn$;

CREATE FUNCTION extensions.pgrst_drop_watch() RETURNS event_trigger LANGUAGE plpgsql AS $fn$
BEGIN
    IF EXISTS (SELECT FROM pg_event_trigger_dropped_objects() AS d WHERE NOT d.is_temporary) THEN
        PERFORM pg_notify('pgrst', 'reload schema');
    END IF;
END $fn$;

CREATE EVENT TRIGGER issue_pg_cron_access ON ddl_command_end WHEN TAG IN ('CREATE EXTENSION')
    EXECUTE FUNCTION extensions.grant_pg_cron_access();
CREATE EVENT TRIGGER issue_pg_net_access ON ddl_command_end WHEN TAG IN ('CREATE EXTENSION')
    EXECUTE FUNCTION extensions.grant_pg_net_access();
CREATE EVENT TRIGGER issue_pg_graphql_access ON ddl_command_end WHEN TAG IN ('CREATE FUNCTION')
    EXECUTE FUNCTION extensions.grant_pg_graphql_access();
CREATE EVENT TRIGGER issue_graphql_placeholder ON sql_drop WHEN TAG IN ('DROP EXTENSION')
    EXECUTE FUNCTION extensions.set_graphql_placeholder();
CREATE EVENT TRIGGER pgrst_ddl_watch ON ddl_command_end
    EXECUTE FUNCTION extensions.pgrst_ddl_watch();
CREATE EVENT TRIGGER pgrst_drop_watch ON sql_drop
    EXECUTE FUNCTION extensions.pgrst_drop_watch();

-- Realtime's publication: created empty [init], owned by postgres on hosted projects [hosted].
CREATE PUBLICATION supabase_realtime;
ALTER PUBLICATION supabase_realtime OWNER TO postgres;

-- ============================================================================================
-- 2. As supabase_auth_admin: the auth service's objects (GoTrue runs its migrations as it)
-- ============================================================================================
SET ROLE supabase_auth_admin;

CREATE TYPE auth.aal_level AS ENUM ('aal1', 'aal2', 'aal3');

CREATE TABLE auth.instances (
    id uuid PRIMARY KEY,
    uuid uuid,
    raw_base_config text,
    created_at timestamptz,
    updated_at timestamptz
);

-- Columns of [s15] plus the later ones GoTrue added (phone, anonymous and SSO users, ...).
CREATE TABLE auth.users (
    instance_id uuid,
    id uuid PRIMARY KEY,
    aud varchar(255),
    role varchar(255),
    email varchar(255),
    encrypted_password varchar(255),
    email_confirmed_at timestamptz,
    invited_at timestamptz,
    confirmation_token varchar(255),
    confirmation_sent_at timestamptz,
    recovery_token varchar(255),
    recovery_sent_at timestamptz,
    last_sign_in_at timestamptz,
    raw_app_meta_data jsonb,
    raw_user_meta_data jsonb,
    is_super_admin boolean,
    created_at timestamptz,
    updated_at timestamptz,
    phone text UNIQUE DEFAULT NULL,
    phone_confirmed_at timestamptz,
    confirmed_at timestamptz GENERATED ALWAYS AS (LEAST(email_confirmed_at, phone_confirmed_at)) STORED,
    banned_until timestamptz,
    deleted_at timestamptz,
    is_sso_user boolean NOT NULL DEFAULT false,
    is_anonymous boolean NOT NULL DEFAULT false
);
CREATE UNIQUE INDEX users_email_partial_key ON auth.users (email) WHERE is_sso_user = false;
CREATE INDEX users_instance_id_idx ON auth.users (instance_id);
COMMENT ON TABLE auth.users IS 'Sign-in accounts of the project (auth service)';

CREATE TABLE auth.identities (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),
    provider_id text NOT NULL,
    user_id uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    identity_data jsonb NOT NULL,
    provider text NOT NULL,
    last_sign_in_at timestamptz,
    created_at timestamptz,
    updated_at timestamptz,
    email text GENERATED ALWAYS AS (lower(identity_data ->> 'email')) STORED,
    UNIQUE (provider_id, provider)
);
CREATE INDEX identities_user_id_idx ON auth.identities (user_id);

CREATE TABLE auth.sessions (
    id uuid PRIMARY KEY,
    user_id uuid NOT NULL REFERENCES auth.users (id) ON DELETE CASCADE,
    created_at timestamptz,
    updated_at timestamptz,
    aal auth.aal_level,
    not_after timestamptz,
    user_agent text,
    ip inet
);
CREATE INDEX sessions_user_id_idx ON auth.sessions (user_id);

CREATE TABLE auth.refresh_tokens (
    instance_id uuid,
    id bigserial PRIMARY KEY,
    token varchar(255) UNIQUE,
    user_id varchar(255),
    revoked boolean,
    created_at timestamptz,
    updated_at timestamptz,
    parent varchar(255),
    session_id uuid REFERENCES auth.sessions (id) ON DELETE CASCADE
);

CREATE TABLE auth.audit_log_entries (
    instance_id uuid,
    id uuid PRIMARY KEY,
    payload json,
    created_at timestamptz,
    ip_address varchar(64) NOT NULL DEFAULT ''
);

CREATE TABLE auth.schema_migrations (version varchar(255) PRIMARY KEY);

-- auth.uid(), auth.role(), auth.email(), auth.jwt(): owned by supabase_auth_admin [authown],
-- reading the request's JWT claims that PostgREST puts in settings. Our own bodies.
CREATE FUNCTION auth.jwt() RETURNS jsonb LANGUAGE sql STABLE AS $fn$
    SELECT coalesce(nullif(current_setting('request.jwt.claims', true), ''), '{}')::jsonb
$fn$;
CREATE FUNCTION auth.uid() RETURNS uuid LANGUAGE sql STABLE AS $fn$
    SELECT coalesce(nullif(current_setting('request.jwt.claim.sub', true), ''),
                    auth.jwt() ->> 'sub')::uuid
$fn$;
CREATE FUNCTION auth.role() RETURNS text LANGUAGE sql STABLE AS $fn$
    SELECT coalesce(nullif(current_setting('request.jwt.claim.role', true), ''), auth.jwt() ->> 'role')
$fn$;
CREATE FUNCTION auth.email() RETURNS text LANGUAGE sql STABLE AS $fn$
    SELECT coalesce(nullif(current_setting('request.jwt.claim.email', true), ''), auth.jwt() ->> 'email')
$fn$;
COMMENT ON FUNCTION auth.uid() IS 'The signed-in user''s id, from the request''s JWT';

RESET ROLE;
-- auth's migration history is closed to postgres and dashboard_user [lock].
REVOKE ALL ON auth.schema_migrations FROM postgres, dashboard_user;

-- ============================================================================================
-- 3. As supabase_storage_admin: the storage service's objects
-- ============================================================================================
SET ROLE supabase_storage_admin;

CREATE TABLE storage.buckets (
    id text PRIMARY KEY,
    name text NOT NULL,
    owner uuid,
    created_at timestamptz DEFAULT now(),
    updated_at timestamptz DEFAULT now(),
    public boolean DEFAULT false,
    file_size_limit bigint,
    allowed_mime_types text[],
    owner_id text
);
CREATE UNIQUE INDEX bname ON storage.buckets (name);

CREATE TABLE storage.objects (
    id uuid PRIMARY KEY DEFAULT gen_random_uuid(),   -- [hosted]; [s15] had extensions.uuid_generate_v4()
    bucket_id text REFERENCES storage.buckets (id),
    name text,
    owner uuid,
    created_at timestamptz DEFAULT now(),
    updated_at timestamptz DEFAULT now(),
    last_accessed_at timestamptz DEFAULT now(),
    metadata jsonb,
    path_tokens text[] GENERATED ALWAYS AS (string_to_array(name, '/')) STORED,
    version text,
    owner_id text,
    user_metadata jsonb
);
CREATE UNIQUE INDEX bucketid_objname ON storage.objects (bucket_id, name);
CREATE INDEX name_prefix_search ON storage.objects (name text_pattern_ops);

CREATE TABLE storage.migrations (
    id integer PRIMARY KEY,
    name varchar(100) NOT NULL UNIQUE,
    hash varchar(40) NOT NULL,
    executed_at timestamp DEFAULT CURRENT_TIMESTAMP
);

CREATE FUNCTION storage.foldername(name text) RETURNS text[] LANGUAGE sql IMMUTABLE AS $fn$
    SELECT (string_to_array(name, '/'))[1:cardinality(string_to_array(name, '/')) - 1]
$fn$;
CREATE FUNCTION storage.filename(name text) RETURNS text LANGUAGE sql IMMUTABLE AS $fn$
    SELECT (string_to_array(name, '/'))[cardinality(string_to_array(name, '/'))]
$fn$;
CREATE FUNCTION storage.extension(name text) RETURNS text LANGUAGE sql IMMUTABLE AS $fn$
    SELECT CASE WHEN storage.filename(name) LIKE '%.%'
                THEN regexp_replace(storage.filename(name), '^.*\.', '') ELSE '' END
$fn$;
CREATE FUNCTION storage.update_updated_at_column() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END $fn$;
CREATE TRIGGER update_objects_updated_at BEFORE UPDATE ON storage.objects
    FOR EACH ROW EXECUTE FUNCTION storage.update_updated_at_column();

-- RLS on the storage tables [s15], [hosted]; the project's storage policies belong to the table
-- owner, as hosted dumps list them [hosted].
ALTER TABLE storage.buckets ENABLE ROW LEVEL SECURITY;
ALTER TABLE storage.objects ENABLE ROW LEVEL SECURITY;
ALTER TABLE storage.migrations ENABLE ROW LEVEL SECURITY;
CREATE POLICY "avatars are readable by anyone" ON storage.objects FOR SELECT
    USING (bucket_id = 'avatars');
CREATE POLICY "users upload into their own folder" ON storage.objects FOR INSERT TO authenticated
    WITH CHECK (bucket_id = 'avatars' AND (storage.foldername(name))[1] = (SELECT auth.uid())::text);

-- postgres holds ALL on buckets and objects WITH GRANT OPTION [stgo], [hosted]; the migration
-- history is closed to it and to the API roles [lock].
GRANT ALL ON storage.buckets, storage.objects TO postgres WITH GRANT OPTION;
REVOKE ALL ON storage.migrations FROM anon, authenticated, service_role, postgres;

RESET ROLE;

-- ============================================================================================
-- 4. As postgres: the application, as an operator builds it in the dashboard or migrations
-- ============================================================================================
SET ROLE postgres;

CREATE TYPE public.post_status AS ENUM ('draft', 'published', 'archived');

CREATE FUNCTION public.set_updated_at() RETURNS trigger LANGUAGE plpgsql AS $fn$
BEGIN
    NEW.updated_at := now();
    RETURN NEW;
END $fn$;

CREATE TABLE public.profiles (
    id uuid PRIMARY KEY REFERENCES auth.users (id) ON DELETE CASCADE,
    username text UNIQUE,
    full_name text,
    avatar_url text,
    website text,
    created_at timestamptz NOT NULL DEFAULT now(),
    updated_at timestamptz
);
CREATE TRIGGER profiles_set_updated_at BEFORE UPDATE ON public.profiles
    FOR EACH ROW EXECUTE FUNCTION public.set_updated_at();

-- The sign-up pattern of Supabase's guides: a SECURITY DEFINER function of postgres's, fired by
-- a trigger on auth.users (postgres holds TRIGGER on it through the DEFAULT ACL above).
CREATE FUNCTION public.handle_new_user() RETURNS trigger
LANGUAGE plpgsql SECURITY DEFINER SET search_path = '' AS $fn$
BEGIN
    INSERT INTO public.profiles (id, username, full_name, avatar_url)
    VALUES (NEW.id, lower(NEW.email), NEW.raw_user_meta_data ->> 'full_name',
            NEW.raw_user_meta_data ->> 'avatar_url');
    RETURN NEW;
END $fn$;
CREATE TRIGGER on_auth_user_created AFTER INSERT ON auth.users
    FOR EACH ROW EXECUTE FUNCTION public.handle_new_user();

CREATE SEQUENCE public.ticket_number_seq START WITH 1000 INCREMENT BY 10;

CREATE TABLE public.todos (
    id bigint GENERATED BY DEFAULT AS IDENTITY PRIMARY KEY,
    user_id uuid NOT NULL DEFAULT auth.uid() REFERENCES auth.users (id) ON DELETE CASCADE,
    ticket bigint NOT NULL DEFAULT nextval('public.ticket_number_seq'),
    task text NOT NULL CHECK (char_length(task) > 3),
    is_complete boolean NOT NULL DEFAULT false,
    inserted_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX todos_user_id_idx ON public.todos (user_id);

CREATE TABLE public.posts (
    id bigserial PRIMARY KEY,
    author_id uuid NOT NULL REFERENCES public.profiles (id) ON DELETE CASCADE,
    title text NOT NULL,
    body text,
    status public.post_status NOT NULL DEFAULT 'draft',
    share_token text NOT NULL DEFAULT encode(extensions.gen_random_bytes(6), 'hex'),  -- uses pgcrypto
    public_id uuid NOT NULL DEFAULT extensions.uuid_generate_v4(),                    -- uses uuid-ossp
    created_at timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX posts_author_id_idx ON public.posts (author_id);

CREATE TABLE public.comments (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    post_id bigint NOT NULL REFERENCES public.posts (id) ON DELETE CASCADE,
    author_id uuid NOT NULL REFERENCES public.profiles (id) ON DELETE CASCADE,
    body text NOT NULL,
    created_at timestamptz NOT NULL DEFAULT now()
);

-- A partitioned table with a default partition.
CREATE TABLE public.events (
    id bigserial,
    user_id uuid REFERENCES auth.users (id) ON DELETE SET NULL,
    kind text NOT NULL,
    payload jsonb,
    created_at timestamptz NOT NULL,
    PRIMARY KEY (id, created_at)
) PARTITION BY RANGE (created_at);
CREATE TABLE public.events_2025_h1 PARTITION OF public.events
    FOR VALUES FROM ('2025-01-01 00:00+00') TO ('2025-07-01 00:00+00');
CREATE TABLE public.events_2025_h2 PARTITION OF public.events
    FOR VALUES FROM ('2025-07-01 00:00+00') TO ('2026-01-01 00:00+00');
CREATE TABLE public.events_default PARTITION OF public.events DEFAULT;

CREATE VIEW public.published_posts WITH (security_invoker = true) AS
    SELECT p.id, p.title, p.created_at, pr.username AS author
    FROM public.posts AS p JOIN public.profiles AS pr ON pr.id = p.author_id
    WHERE p.status = 'published';

CREATE MATERIALIZED VIEW public.post_stats AS
    SELECT author_id, count(*) AS posts, max(created_at) AS last_post_at
    FROM public.posts GROUP BY author_id
    WITH NO DATA;
CREATE UNIQUE INDEX post_stats_author_id_idx ON public.post_stats (author_id);

-- RLS and policies using auth.uid(), in the (SELECT auth.uid()) form Supabase's docs advise.
ALTER TABLE public.profiles ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.todos ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.posts ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.comments ENABLE ROW LEVEL SECURITY;
ALTER TABLE public.events ENABLE ROW LEVEL SECURITY;
CREATE POLICY "profiles are public" ON public.profiles FOR SELECT TO anon, authenticated
    USING (true);
CREATE POLICY "users edit their own profile" ON public.profiles FOR UPDATE TO authenticated
    USING ((SELECT auth.uid()) = id) WITH CHECK ((SELECT auth.uid()) = id);
CREATE POLICY "users own their todos" ON public.todos FOR ALL TO authenticated
    USING ((SELECT auth.uid()) = user_id) WITH CHECK ((SELECT auth.uid()) = user_id);
CREATE POLICY "published posts are public" ON public.posts FOR SELECT TO anon, authenticated
    USING (status = 'published' OR (SELECT auth.uid()) = author_id);
CREATE POLICY "authors write their posts" ON public.posts FOR INSERT TO authenticated
    WITH CHECK ((SELECT auth.uid()) = author_id);
CREATE POLICY "authors change their posts" ON public.posts FOR UPDATE TO authenticated
    USING ((SELECT auth.uid()) = author_id);
CREATE POLICY "comments are public" ON public.comments FOR SELECT USING (true);
CREATE POLICY "users comment as themselves" ON public.comments FOR INSERT TO authenticated
    WITH CHECK ((SELECT auth.uid()) = author_id);
CREATE POLICY "users see their events" ON public.events FOR SELECT TO authenticated
    USING ((SELECT auth.uid()) = user_id);

-- The DEFAULT ACL gave the API roles ALL; narrow some, as projects do.
REVOKE INSERT, UPDATE, DELETE, TRUNCATE ON public.events FROM anon;
REVOKE ALL ON public.comments FROM anon;
GRANT SELECT ON public.comments TO anon;

-- A schema whose name needs quoting.
CREATE SCHEMA "Ops Data" AUTHORIZATION postgres;
GRANT USAGE ON SCHEMA "Ops Data" TO service_role;
CREATE TABLE "Ops Data"."Run Log" (
    id bigint GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    "Job Name" text NOT NULL,
    ran_at timestamptz NOT NULL,
    ok boolean NOT NULL DEFAULT true
);
GRANT SELECT, INSERT ON "Ops Data"."Run Log" TO service_role;

ALTER PUBLICATION supabase_realtime ADD TABLE public.todos, public.posts, public.comments;

RESET ROLE;

-- ============================================================================================
-- 5. Data, each part written by the role that writes it on a live project
-- ============================================================================================
SET ROLE supabase_auth_admin;
INSERT INTO auth.users (instance_id, id, aud, role, email, encrypted_password, email_confirmed_at,
                        last_sign_in_at, raw_app_meta_data, raw_user_meta_data, is_super_admin,
                        created_at, updated_at)
SELECT '00000000-0000-0000-0000-000000000000', md5('user-' || g)::uuid, 'authenticated',
       'authenticated', 'user' || g || '@example.test', '$2a$10$' || md5('pw-' || g),
       timestamptz '2025-01-01 00:00+00' + g * interval '1 hour',
       timestamptz '2025-06-01 00:00+00' + g * interval '1 hour',
       '{"provider": "email", "providers": ["email"]}',
       jsonb_build_object('full_name', 'User ' || g), false,
       timestamptz '2025-01-01 00:00+00' + g * interval '1 hour',
       timestamptz '2025-01-01 00:00+00' + g * interval '1 hour'
FROM generate_series(1, 300) AS g;
INSERT INTO auth.identities (provider_id, user_id, identity_data, provider, created_at, updated_at)
SELECT u.id::text, u.id, jsonb_build_object('sub', u.id::text, 'email', u.email), 'email',
       u.created_at, u.created_at
FROM auth.users AS u;
INSERT INTO auth.sessions (id, user_id, created_at, updated_at, aal, user_agent, ip)
SELECT md5('session-' || g)::uuid, md5('user-' || (1 + g % 300))::uuid,
       timestamptz '2025-06-01 00:00+00' + g * interval '10 minutes',
       timestamptz '2025-06-01 00:00+00' + g * interval '10 minutes',
       CASE WHEN g % 5 = 0 THEN 'aal2' ELSE 'aal1' END::auth.aal_level, 'test-agent/1.0',
       ('10.0.' || (g / 250) || '.' || (g % 250))::inet
FROM generate_series(1, 400) AS g;
INSERT INTO auth.refresh_tokens (instance_id, token, user_id, revoked, created_at, updated_at, session_id)
SELECT '00000000-0000-0000-0000-000000000000', md5('token-' || g), s.user_id::text, g % 3 = 0,
       s.created_at, s.created_at, s.id
FROM generate_series(1, 600) AS g
JOIN auth.sessions AS s ON s.id = md5('session-' || (1 + g % 400))::uuid;
INSERT INTO auth.audit_log_entries (instance_id, id, payload, created_at)
SELECT '00000000-0000-0000-0000-000000000000', md5('audit-' || g)::uuid,
       json_build_object('action', 'login', 'actor_id', md5('user-' || (1 + g % 300))::uuid),
       timestamptz '2025-06-01 00:00+00' + g * interval '5 minutes'
FROM generate_series(1, 300) AS g;
INSERT INTO auth.schema_migrations SELECT (20240101000000 + g)::text FROM generate_series(1, 20) AS g;
RESET ROLE;

SET ROLE supabase_storage_admin;
INSERT INTO storage.buckets (id, name, public, file_size_limit) VALUES
    ('avatars', 'avatars', true, 1048576),
    ('documents', 'documents', false, NULL);
INSERT INTO storage.objects (bucket_id, name, owner, owner_id, metadata, version)
SELECT CASE WHEN g <= 300 THEN 'avatars' ELSE 'documents' END,
       md5('user-' || (1 + g % 300))::uuid::text || CASE WHEN g <= 300 THEN '/avatar.png'
                                                        ELSE '/doc-' || g || '.pdf' END,
       md5('user-' || (1 + g % 300))::uuid, md5('user-' || (1 + g % 300))::uuid::text,
       jsonb_build_object('size', 1000 + g, 'mimetype',
                          CASE WHEN g <= 300 THEN 'image/png' ELSE 'application/pdf' END),
       md5('version-' || g)
FROM generate_series(1, 500) AS g;
INSERT INTO storage.migrations (id, name, hash)
SELECT g, 'storage-migration-' || g, md5('storage-migration-' || g)
FROM generate_series(0, 9) AS g;
RESET ROLE;

SET ROLE postgres;
INSERT INTO public.todos (user_id, task, is_complete, inserted_at)
SELECT md5('user-' || (1 + g % 300))::uuid, 'Task number ' || g, g % 4 = 0,
       timestamptz '2025-02-01 00:00+00' + g * interval '37 minutes'
FROM generate_series(1, 1200) AS g;
INSERT INTO public.posts (author_id, title, body, status, created_at)
SELECT md5('user-' || (1 + g % 300))::uuid, 'Post ' || g, repeat('Lorem ipsum ', 1 + g % 20),
       (ARRAY['draft', 'published', 'published', 'archived'])[1 + g % 4]::public.post_status,
       timestamptz '2025-03-01 00:00+00' + g * interval '3 hours'
FROM generate_series(1, 900) AS g;
INSERT INTO public.comments (post_id, author_id, body, created_at)
SELECT 1 + g % 900, md5('user-' || (1 + (g * 7) % 300))::uuid, 'Comment ' || g,
       timestamptz '2025-04-01 00:00+00' + g * interval '1 hour'
FROM generate_series(1, 1500) AS g;
INSERT INTO public.events (user_id, kind, payload, created_at)
SELECT md5('user-' || (1 + g % 300))::uuid, (ARRAY['login', 'view', 'click'])[1 + g % 3],
       jsonb_build_object('n', g), timestamptz '2025-01-01 00:00+00' + g * interval '4 hours'
FROM generate_series(1, 2400) AS g;   -- spans both halves of 2025 and the default partition
INSERT INTO "Ops Data"."Run Log" ("Job Name", ran_at, ok)
SELECT 'nightly job ' || (g % 5), timestamptz '2025-01-01 00:00+00' + g * interval '1 day', g % 17 <> 0
FROM generate_series(1, 120) AS g;
REFRESH MATERIALIZED VIEW public.post_stats;
-- Sequences moved well past their rows, as on a project that deleted data: a restore must keep them.
SELECT setval('public.posts_id_seq', 50000);
SELECT setval(pg_get_serial_sequence('public.todos', 'id'), 90000);
SELECT setval('public.ticket_number_seq', 777770);
SELECT setval(pg_get_serial_sequence('"Ops Data"."Run Log"', 'id'), 5000);
RESET ROLE;

ANALYZE;
