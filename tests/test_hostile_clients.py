"""Hostile and broken clients: each input here once reached a 500, a hang, unbounded memory, a forged
log line or a wrong answer. In-process through the ASGI app, and, where the server or Google's
runtime decides, against the real `functions-framework --target=api` on loopback."""

import uuid
from typing import Any

import httpx
import pytest

from tests.helpers import assert_problem, error_locations, unique

# --- entity tags ------------------------------------------------------------------------------------


def _tag(resource: dict[str, Any], version: bytes) -> bytes:
    return b'"' + uuid.UUID(resource["id"]).hex.encode() + b"." + version + b'"'


IMPOSSIBLE_VERSIONS = [b"3000000000", b"2147483648", b"\xb2", b"\xd9\xa3", b"1" * 5000, b"-1", b"+1", b" 1"]


@pytest.mark.parametrize("version", IMPOSSIBLE_VERSIONS)
async def test_an_if_match_version_we_never_issue_is_412(
    client: httpx.AsyncClient, task: dict[str, Any], version: bytes
) -> None:
    url, headers = f"/v1/tasks/{task['id']}", [(b"if-match", _tag(task, version))]
    assert_problem(await client.patch(url, json={"title": "x"}, headers=headers), 412)
    assert_problem(await client.delete(url, headers=headers), 412)
    project_url = f"/v1/projects/{task['project_id']}"
    project_headers = [(b"if-match", b'"' + uuid.UUID(task["project_id"]).hex.encode() + b"." + version + b'"')]
    assert_problem(await client.delete(project_url, headers=project_headers), 412)
    assert (await client.get(url)).json()["version"] == 1


@pytest.mark.parametrize("version", IMPOSSIBLE_VERSIONS)
async def test_an_if_none_match_version_we_never_issue_is_a_normal_read(
    client: httpx.AsyncClient, task: dict[str, Any], version: bytes
) -> None:
    response = await client.get(f"/v1/tasks/{task['id']}", headers=[(b"if-none-match", _tag(task, version))])
    assert response.status_code == 200


async def test_a_long_list_of_tags_still_finds_the_current_one(client: httpx.AsyncClient, task: dict[str, Any]) -> None:
    url = f"/v1/tasks/{task['id']}"
    current = (await client.get(url)).headers["etag"]
    others = ", ".join(f'"{uuid.uuid4().hex}.{n}"' for n in range(200))
    assert (await client.get(url, headers={"If-None-Match": f"{others}, W/{current}"})).status_code == 304
    patched = await client.patch(url, json={"title": "y"}, headers={"If-Match": f"{others}, {current}"})
    assert patched.status_code == 200


# --- Idempotency-Key --------------------------------------------------------------------------------


async def test_an_idempotency_key_with_an_empty_body_answers_as_without_it(
    client: httpx.AsyncClient, project: dict[str, Any]
) -> None:
    json_type = {"content-type": "application/json"}
    for url in ["/v1/projects", f"/v1/projects/{project['id']}/tasks"]:
        without = await client.post(url, content=b"", headers=json_type)
        keyed = await client.post(url, content=b"", headers=json_type | {"Idempotency-Key": unique("empty")})
        assert assert_problem(keyed, 422)["errors"] == assert_problem(without, 422)["errors"]


async def test_two_idempotency_keys_are_refused(client: httpx.AsyncClient) -> None:
    headers = [("Idempotency-Key", unique("a")), ("Idempotency-Key", unique("b"))]
    response = await client.post("/v1/projects", json={"name": unique()}, headers=headers)
    assert ["header", "idempotency-key"] in error_locations(assert_problem(response, 422))
