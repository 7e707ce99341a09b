-- Least privilege for the service's two IAM database users. Run once per database as the
-- instance's admin user (`postgres` on Cloud SQL), after both IAM users exist; safe to run again.
-- scripts/grant_roles.sh runs it through the Cloud SQL Auth Proxy; by hand:
--
--   psql "host=127.0.0.1 port=5433 dbname=app user=postgres" -v ON_ERROR_STOP=1 \
--     -v database=app -v migrator=projects-api-migrator@PROJECT.iam -v runtime=projects-api@PROJECT.iam \
--     -f migrations/roles.sql
--
-- The design works with what the admin may do on Cloud SQL for PostgreSQL 15 to 18, where it is
-- not a superuser: it has CREATEROLE and CREATEDB and is a member of cloudsqlsuperuser; the IAM
-- users were created by Cloud SQL itself (so, on PostgreSQL 16 and later, the admin may not grant
-- them to anyone, itself included); the database belongs to cloudsqlsuperuser.
--
--   owner    NOLOGIN role named after the service (-v owner=..., default projects-api-owner),
--            made here by the admin, who may therefore grant it. It owns every table:
--            migrations/env.py runs `SET ROLE` to it. Its name is the same in every
--            environment, so a dump restored from staging into production keeps working.
--   migrator member of owner; may connect. Without `SET ROLE` it can create nothing (16 and later).
--   runtime  may connect, and read and write rows of the owner's tables (not alembic_version);
--            no DDL, no TRUNCATE.

\set ON_ERROR_STOP on
\if :{?owner}
\else
  \set owner projects-api-owner
\endif
\if :{?database}
\else
  DO $$ BEGIN RAISE EXCEPTION 'roles.sql: pass -v database=... -v migrator=... -v runtime=...'; END $$;
\endif
\if :{?migrator}
\else
  DO $$ BEGIN RAISE EXCEPTION 'roles.sql: pass -v migrator=... (the migrator''s IAM database user)'; END $$;
\endif
\if :{?runtime}
\else
  DO $$ BEGIN RAISE EXCEPTION 'roles.sql: pass -v runtime=... (the runtime''s IAM database user)'; END $$;
\endif
-- Grants on the schema and its tables apply in the database psql is connected to.
SELECT current_database() = :'database' AS connected_to_database \gset
\if :connected_to_database
\else
  DO $$ BEGIN RAISE EXCEPTION 'roles.sql: connect to the database named by -v database'; END $$;
\endif

BEGIN;

-- The owner role, made by this admin: on PostgreSQL 16 and later the admin thereby holds ADMIN
-- OPTION on it, which is what lets it grant the role below.
SELECT format('CREATE ROLE %I NOLOGIN', :'owner')
WHERE NOT EXISTS (SELECT FROM pg_roles WHERE rolname = :'owner') \gexec
-- On PostgreSQL 16 and later the migrator gets none of the owner's privileges until it `SET ROLE`s
-- (migrations/env.py does), so no table can end up owned by the migrator itself.
SELECT current_setting('server_version_num')::int >= 160000 AS grant_options \gset
\if :grant_options
  GRANT :"owner" TO :"migrator" WITH INHERIT FALSE, SET TRUE;
\else
  GRANT :"owner" TO :"migrator";
\endif
-- The admin becomes a member too, to act as the owner for the grants on its tables below.
GRANT :"owner" TO CURRENT_USER;

-- Only the service's users (and the admin, through cloudsqlsuperuser) may connect.
REVOKE ALL ON DATABASE :"database" FROM PUBLIC;
GRANT CONNECT ON DATABASE :"database" TO :"migrator", :"runtime";

-- Only the owner creates anything in the schema.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA public TO :"owner";
GRANT USAGE ON SCHEMA public TO :"runtime";

-- As the owner: rows only, on every table it has made or will make.
SET LOCAL ROLE :"owner";
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO :"runtime";
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO :"runtime";
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO :"runtime";
ALTER DEFAULT PRIVILEGES IN SCHEMA public GRANT USAGE, SELECT ON SEQUENCES TO :"runtime";
-- Alembic's bookkeeping is the migrator's alone (migrations/env.py keeps it so after each run).
SELECT to_regclass('public.alembic_version') IS NOT NULL AS has_version_table \gset
\if :has_version_table
  REVOKE ALL ON public.alembic_version FROM :"runtime";
\endif
RESET ROLE;

COMMIT;
