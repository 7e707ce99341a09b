"""The runtime's database user may read and write rows, and nothing more: checked on the instance.

Cloud Build runs this before it migrates (cloudbuild.yaml, step `least-privilege`), connected as
the migrator, as the migrations are. It fails, saying what to run, when the runtime's user

- is a member of `cloudsqlsuperuser`, directly or through another role (whether Cloud SQL makes a
  new IAM database user one when `gcloud sql users create` names no database roles could not be
  confirmed from Google's pages; one of Google's own tool descriptions says it does);
- may create in the schema, or owns (or is a member of the owner of) the schema or anything in it,
  which is what ALTER and DROP take;
- may insert, update, delete or truncate `alembic_version`.

The role names are read from the server: nothing is assumed from the grants roles.sql made.

    python scripts/least_privilege.py --runtime-user=projects-api@PROJECT.iam.gserviceaccount.com
"""

import argparse
import asyncio
import sys

from connection_budget import fetch_row

CHECK = """
SELECT
    EXISTS (SELECT FROM pg_roles WHERE rolname = $1) AS runtime_exists,
    EXISTS (SELECT FROM pg_roles WHERE rolname = $2) AND pg_has_role($1, $2, 'MEMBER') AS superuser_member,
    CASE WHEN to_regnamespace($3) IS NULL THEN false
         ELSE has_schema_privilege($1, $3, 'CREATE') END AS may_create,
    (SELECT coalesce(string_agg(DISTINCT owned.name, ', '), '') FROM (
         SELECT format('schema %I', n.nspname) AS name FROM pg_namespace n
          WHERE n.nspname = $3 AND pg_has_role($1, n.nspowner, 'MEMBER')
         UNION ALL
         SELECT format('%I.%I', n.nspname, c.relname) FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
          WHERE n.nspname = $3 AND pg_has_role($1, c.relowner, 'MEMBER')
    ) AS owned) AS owns,
    CASE WHEN to_regclass(format('%I.alembic_version', $3)) IS NULL THEN false
         ELSE has_table_privilege($1, format('%I.alembic_version', $3), 'INSERT, UPDATE, DELETE, TRUNCATE')
    END AS writes_alembic_version
"""


def problems(row: dict[str, object], runtime: str, superuser: str, schema: str) -> list[str]:
    if not row["runtime_exists"]:
        return [f'the database user "{runtime}" does not exist: scripts/bootstrap.sh creates it']
    found = []
    if row["superuser_member"]:
        found.append(
            f'"{runtime}" is a member of {superuser} (directly or through another role). As the admin user:'
            f' REVOKE {superuser} FROM "{runtime}"; (and from any role that passes it on), then run'
            " scripts/grant_roles.sh again"
        )
    if row["may_create"]:
        found.append(
            f'"{runtime}" may create in schema {schema}. As the admin user: REVOKE CREATE ON SCHEMA {schema}'
            f' FROM "{runtime}"; (and from PUBLIC: REVOKE CREATE ON SCHEMA {schema} FROM PUBLIC;)'
        )
    if row["owns"]:
        found.append(
            f'"{runtime}" owns, or is a member of the owner of, {row["owns"]}: it could alter or drop them.'
            " Only the owner role of the migrations may own the schema's objects (scripts/grant_roles.sh)"
        )
    if row["writes_alembic_version"]:
        found.append(
            f'"{runtime}" may write {schema}.alembic_version. As the migrator: REVOKE ALL ON'
            f' {schema}.alembic_version FROM "{runtime}"; (migrations/env.py revokes it on each run)'
        )
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--runtime-user", required=True, help="the runtime's service account or database user")
    parser.add_argument("--superuser-role", default="cloudsqlsuperuser")
    parser.add_argument("--schema", default="public")
    arguments = parser.parse_args(argv)
    # Cloud SQL names a service account's IAM database user after its email without this suffix.
    runtime = arguments.runtime_user.removesuffix(".gserviceaccount.com")
    row = asyncio.run(fetch_row(CHECK, runtime, arguments.superuser_role, arguments.schema))
    found = problems(row, runtime, arguments.superuser_role, arguments.schema)
    if found:
        print(f'least privilege: the runtime\'s database user "{runtime}" may do more than read and write rows:')
        for problem in found:
            print(f"  - {problem}")
        return 1
    print(
        f'least privilege: "{runtime}" is no member of {arguments.superuser_role}, may not create, alter or drop'
        f" in schema {arguments.schema} and may not write alembic_version"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
