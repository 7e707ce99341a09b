"""Least privilege on Cloud SQL's role model (tests/cloud_sql_roles.py), end to end.

scripts/grant_roles.sh runs migrations/roles.sql as the non-superuser admin, through a stand-in
proxy; `alembic upgrade head` runs as the migrator; the function (functions-framework, main.api)
serves as the runtime user and is driven through HTTP. The runtime must be able to use its rows and
nothing more, and a later migration must still work once the runtime has written rows. The
build's least-privilege check (scripts/least_privilege.py) passes on these grants and fails on a
runtime user that is a cloudsqlsuperuser, may create in the schema or may write alembic_version.
"""

import asyncio
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import asyncpg
import httpx
import pytest

from tests import cloud_sql_roles
from tests.cloud_sql_roles import CloudSqlShape
from tests.function_server import serve_function
from tests.helpers import ROOT, fetch, libpq_url, migrations_with_revision, unique, with_database


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


def least_privilege(shape: CloudSqlShape) -> subprocess.CompletedProcess[str]:
    """The build's least-privilege step, connected as the migrator (as the migrations are)."""
    environment = os.environ | {"DATABASE_URL": shape.url(shape.migrator), "PYTHONPATH": str(ROOT)}
    environment.pop("INSTANCE_CONNECTION_NAME", None)
    command = [
        sys.executable,
        str(ROOT / "scripts" / "least_privilege.py"),
        f"--runtime-user={shape.runtime_sa}",
        f"--superuser-role={shape.group}",
    ]
    return subprocess.run(command, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60)


def test_the_least_privilege_check_passes_on_the_grants_roles_sql_makes(granted: CloudSqlShape) -> None:
    result = least_privilege(granted)
    assert result.returncode == 0, result.stdout + result.stderr
    assert f'"{granted.runtime}" is no member of {granted.group}' in result.stdout


@pytest.mark.parametrize("through", ["directly", "through another role"])
def test_the_least_privilege_check_fails_when_the_runtime_is_a_cloudsqlsuperuser(
    granted: CloudSqlShape, through: str
) -> None:
    """As Cloud SQL might make it, when `gcloud sql users create` names no database roles."""
    middle = f"middle_{granted.run_id}"
    if through == "directly":
        grant, undo = (
            [f'GRANT "{granted.group}" TO "{granted.runtime}"'],
            [f'REVOKE "{granted.group}" FROM "{granted.runtime}"'],
        )
    else:
        grant = [
            f'CREATE ROLE "{middle}" NOLOGIN IN ROLE "{granted.group}"',
            f'GRANT "{middle}" TO "{granted.runtime}"',
        ]
        undo = [f'DROP ROLE "{middle}"']
    asyncio.run(cloud_sql_roles._as_superuser(granted.server_url, *grant))
    try:
        result = least_privilege(granted)
    finally:
        asyncio.run(cloud_sql_roles._as_superuser(granted.server_url, *undo))
    assert result.returncode == 1, result.stdout + result.stderr
    assert f'"{granted.runtime}" is a member of {granted.group}' in result.stdout
    assert f'REVOKE {granted.group} FROM "{granted.runtime}"' in result.stdout
    assert least_privilege(granted).returncode == 0, "and passes again once revoked"


def test_the_least_privilege_check_fails_when_the_runtime_may_create_or_write_alembic_version(
    granted: CloudSqlShape,
) -> None:
    grants = [
        f'GRANT CREATE ON SCHEMA public TO "{granted.runtime}"',
        f'GRANT INSERT ON alembic_version TO "{granted.runtime}"',
    ]
    undo = [
        f'REVOKE CREATE ON SCHEMA public FROM "{granted.runtime}"',
        f'REVOKE INSERT ON alembic_version FROM "{granted.runtime}"',
    ]
    asyncio.run(_execute_many(granted, grants))
    try:
        result = least_privilege(granted)
    finally:
        asyncio.run(_execute_many(granted, undo))
    assert result.returncode == 1
    assert "may create in schema public" in result.stdout
    assert "may write public.alembic_version" in result.stdout


async def _execute_many(shape: CloudSqlShape, statements: list[str]) -> None:
    """As the superuser, in the shape's database (grants no Cloud SQL user could make, to be caught)."""
    connection = await asyncpg.connect(libpq_url(with_database(shape.server_url, shape.database)))
    try:
        for statement in statements:
            await connection.execute(statement)
    finally:
        await connection.close()
