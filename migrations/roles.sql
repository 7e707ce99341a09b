-- Least privilege for the two IAM database users. Run once per database, as an admin user
-- (for example `postgres`), after both IAM users exist on the instance:
--
--   psql "host=INSTANCE_IP dbname=app user=postgres sslmode=require" \
--     -v database=app -v migrator=migrator@PROJECT.iam -v runtime=projects-api@PROJECT.iam \
--     -f migrations/roles.sql
--
-- The migrator owns the schema (Alembic runs as it, from Cloud Build). The function's runtime
-- user may connect and read and write rows, nothing else: no DDL, no other database.

-- Let the admin hand ownership to the migrator.
GRANT :"migrator" TO CURRENT_USER;

-- Only these two users may connect.
REVOKE ALL ON DATABASE :"database" FROM PUBLIC;
ALTER DATABASE :"database" OWNER TO :"migrator";
GRANT CONNECT ON DATABASE :"database" TO :"runtime";

-- The migrator creates and changes tables; nobody else may create anything in the schema.
REVOKE CREATE ON SCHEMA public FROM PUBLIC;
GRANT USAGE, CREATE ON SCHEMA public TO :"migrator";
GRANT USAGE ON SCHEMA public TO :"runtime";

-- Rows only, on every table the migrator has made or will make.
GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO :"runtime";
ALTER DEFAULT PRIVILEGES FOR ROLE :"migrator" IN SCHEMA public
    GRANT SELECT, INSERT, UPDATE, DELETE ON TABLES TO :"runtime";
GRANT USAGE, SELECT ON ALL SEQUENCES IN SCHEMA public TO :"runtime";
ALTER DEFAULT PRIVILEGES FOR ROLE :"migrator" IN SCHEMA public
    GRANT USAGE, SELECT ON SEQUENCES TO :"runtime";
