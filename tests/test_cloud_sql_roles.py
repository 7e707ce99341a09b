"""Least privilege on Cloud SQL's role model (tests/cloud_sql_roles.py), end to end.

scripts/grant_roles.sh runs migrations/roles.sql as the non-superuser admin, through a stand-in
proxy; `alembic upgrade head` runs as the migrator; the function (functions-framework, main.api)
serves as the runtime user and is driven through HTTP. The runtime must be able to use its rows and
nothing more, and a later migration must still work once the runtime has written rows.
"""

import asyncio
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests import cloud_sql_roles
from tests.cloud_sql_roles import CloudSqlShape
from tests.function_server import serve_function
from tests.helpers import fetch, migrations_with_revision, unique


@pytest.fixture(scope="module")
def shape(server_url: str) -> Iterator[CloudSqlShape]:
    with cloud_sql_roles.built(server_url, "_second") as built:
        yield built


@pytest.fixture(scope="module")
def granted(shape: CloudSqlShape, tmp_path_factory: pytest.TempPathFactory) -> CloudSqlShape:
    """roles.sql as the README runs it, then the migrations as the migrator."""
    granting = cloud_sql_roles.grant_roles(shape, tmp_path_factory.mktemp("grant"))
    assert granting.returncode == 0, granting.stdout + granting.stderr
    migrating = cloud_sql_roles.alembic_as_migrator(shape, "upgrade", "head")
    assert migrating.returncode == 0, migrating.stderr
    assert f"migrating as {shape.owner}" in migrating.stderr
    return shape


async def _execute_as(shape: CloudSqlShape, user: str, statement: str, *args: object) -> str:
    connection = await asyncpg.connect(shape.libpq_url(user))
    try:
        return await connection.execute(statement, *args)
    finally:
        await connection.close()


async def _table_owners(shape: CloudSqlShape) -> dict[str, str]:
    rows = await fetch(
        shape.url(shape.admin), "SELECT tablename, tableowner FROM pg_tables WHERE schemaname = 'public'"
    )
    return {row["tablename"]: row["tableowner"] for row in rows}


async def test_the_shape_is_cloud_sqls_not_a_superusers(shape: CloudSqlShape) -> None:
    """What makes the emulation worth having: the admin cannot do what a superuser could."""
    url = shape.url(shape.admin)
    (admin,) = await fetch(
        url, "SELECT rolsuper, rolcreaterole, rolcreatedb FROM pg_roles WHERE rolname = $1", shape.admin
    )
    assert tuple(admin) == (False, True, True)
    assert await fetch(url, "SELECT 1 WHERE pg_has_role($1, $2, 'MEMBER')", shape.admin, shape.group)
    owner = await fetch(url, "SELECT pg_get_userbyid(datdba) FROM pg_database WHERE datname = $1", shape.database)
    assert owner[0][0] == shape.group
    version = int((await fetch(url, "SHOW server_version_num"))[0][0])
    if version >= 160000:  # the admin may not hand out the IAM users it did not create
        with pytest.raises(asyncpg.InsufficientPrivilegeError, match="ADMIN option"):
            await _execute_as(shape, shape.admin, f'GRANT "{shape.migrator}" TO CURRENT_USER')


async def test_migrations_ran_as_the_owner_role(granted: CloudSqlShape) -> None:
    owners = await _table_owners(granted)
    assert set(owners) >= {"alembic_version", "projects", "tasks"}
    assert set(owners.values()) == {granted.owner}


def test_the_function_serves_crud_as_the_runtime_user(granted: CloudSqlShape) -> None:
    with (
        serve_function(granted.url(granted.runtime), source="main.py") as server,
        httpx.Client(base_url=server.base_url, timeout=10) as http,
    ):
        assert http.get("/readyz").status_code == 200
        assert http.get("/v1/projects", params={"limit": 1}).status_code == 200  # the smoke test's read
        created = http.post("/v1/projects", json={"name": unique("runtime")})
        assert created.status_code == 201, created.text
        location = created.headers["location"]
        task = http.post(f"{location}/tasks", json={"title": "as the runtime"})
        assert task.status_code == 201, task.text
        patched = http.patch(location, json={"description": "x"}, headers={"If-Match": created.headers["etag"]})
        assert patched.status_code == 200, patched.text
        assert http.get(task.headers["location"]).status_code == 200
        idempotent = http.post("/v1/projects", json={"name": unique("again")}, headers={"Idempotency-Key": unique()})
        assert idempotent.status_code == 201, idempotent.text
        assert http.delete(location).status_code == 204


@pytest.mark.parametrize(
    "statement",
    [
        "CREATE TABLE intruder (id int)",
        "CREATE SCHEMA intruder",
        "ALTER TABLE projects ADD COLUMN intruder int",
        "CREATE INDEX intruder ON projects (name)",
        "DROP TABLE tasks",
        "TRUNCATE projects CASCADE",
        "SELECT * FROM alembic_version",
        "UPDATE alembic_version SET version_num = 'x'",
        "DELETE FROM alembic_version",
        "INSERT INTO alembic_version VALUES ('x')",
    ],
)
async def test_the_runtime_user_may_not(granted: CloudSqlShape, statement: str) -> None:
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await _execute_as(granted, granted.runtime, statement)


async def test_the_migrator_alone_may_not_create_tables(granted: CloudSqlShape) -> None:
    """Without `SET ROLE` (migrations/env.py) a table would get the wrong owner; it cannot be made."""
    version = int((await fetch(granted.url(granted.admin), "SHOW server_version_num"))[0][0])
    if version < 160000:
        pytest.skip("PostgreSQL 15 has no per-grant INHERIT option: the migrator inherits the owner's rights")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        await _execute_as(granted, granted.migrator, "CREATE TABLE stray (id int)")


def test_a_later_migration_works_after_the_runtime_has_written_rows(granted: CloudSqlShape, tmp_path: Path) -> None:
    name = unique("before")
    asyncio.run(_execute_as(granted, granted.runtime, "INSERT INTO projects (name) VALUES ($1)", name))
    config = migrations_with_revision(
        tmp_path,
        """
        op.add_column("projects", sa.Column("archived_note", sa.String(length=200), nullable=True))
        op.create_table("notes", sa.Column("id", sa.Integer(), primary_key=True), sa.Column("text", sa.Text()))
        op.create_index("ix_projects_name_archived", "projects", ["name", "archived_note"])
        """,
    )
    migrating = cloud_sql_roles.alembic_as_migrator(granted, "upgrade", "head", config=config)
    assert migrating.returncode == 0, migrating.stderr
    assert asyncio.run(_table_owners(granted))["notes"] == granted.owner
    # Default privileges reach the new table; the old rows are intact; alembic_version stays closed.
    asyncio.run(_execute_as(granted, granted.runtime, "INSERT INTO notes (id, text) VALUES (1, 'new table')"))
    rows = asyncio.run(fetch(granted.url(granted.runtime), "SELECT archived_note FROM projects WHERE name = $1", name))
    assert [tuple(row) for row in rows] == [(None,)]
    with pytest.raises(asyncpg.InsufficientPrivilegeError):
        asyncio.run(_execute_as(granted, granted.runtime, "SELECT * FROM alembic_version"))


def test_grant_roles_is_safe_to_run_again(granted: CloudSqlShape, tmp_path: Path) -> None:
    again = cloud_sql_roles.grant_roles(granted, tmp_path)
    assert again.returncode == 0, again.stdout + again.stderr
    (proxy_call,) = (tmp_path / "proxy.log").read_text().splitlines()
    assert proxy_call.startswith("--gcloud-auth --address=127.0.0.1 --port=")
    assert proxy_call.endswith(f" {granted.project}:{cloud_sql_roles.REGION}:{cloud_sql_roles.INSTANCE}")
    with pytest.raises(asyncpg.InsufficientPrivilegeError):  # re-granting on existing tables skipped it
        asyncio.run(_execute_as(granted, granted.runtime, "SELECT * FROM alembic_version"))


def test_roles_sql_stops_at_its_first_error_and_changes_nothing(shape: CloudSqlShape, tmp_path: Path) -> None:
    second = f"{shape.database}_second"
    cloud_sql_roles.create_database(shape, second)
    failing = cloud_sql_roles.grant_roles(
        shape, tmp_path, DB_NAME=second, RUNTIME_SA=f"nobody@{shape.project}.iam.gserviceaccount.com"
    )
    assert failing.returncode != 0
    assert f'role "nobody@{shape.project}.iam" does not exist' in failing.stderr
    # The statements before the failing one were rolled back with it.
    (acl,) = asyncio.run(
        fetch(shape.url(shape.admin, second), "SELECT datacl FROM pg_database WHERE datname = $1", second)
    )
    assert acl[0] is None, acl
