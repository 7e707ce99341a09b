"""Safe retries: Idempotency-Key on POST, per the contract's "Safe retries" section."""

import asyncio
import uuid
from typing import Any

import asyncpg
import httpx
import pytest

from tests.helpers import assert_problem, error_locations, fetch, fetchval, libpq_url, unique
from tests.identity_fakes import Issuer


def key() -> dict[str, str]:
    return {"Idempotency-Key": f"key-{uuid.uuid4()}"}


async def _count_projects(database_url: str, name: str) -> int:
    count: int = await fetchval(database_url, "SELECT count(*) FROM projects WHERE name = $1", name)
    return count


async def test_a_repeat_replays_the_first_response_and_creates_nothing(
    client: httpx.AsyncClient, database_url: str
) -> None:
    headers, name = key(), unique("idem")
    first = await client.post("/v1/projects", json={"name": name}, headers=headers)
    again = await client.post("/v1/projects", json={"name": name}, headers=headers)
    assert (first.status_code, again.status_code) == (201, 201)
    assert again.json() == first.json()
    for header in ["location", "etag"]:
        assert again.headers[header] == first.headers[header]
    assert again.headers["idempotent-replayed"] == "true"
    assert await _count_projects(database_url, name) == 1


async def test_the_replay_is_the_first_response_even_after_the_resource_changed(client: httpx.AsyncClient) -> None:
    headers, name = key(), unique("snapshot")
    first = await client.post("/v1/projects", json={"name": name}, headers=headers)
    await client.patch(first.headers["location"], json={"description": "changed"})
    again = await client.post("/v1/projects", json={"name": name}, headers=headers)
    assert again.json() == first.json()
    assert again.json()["version"] == 1


async def test_key_order_and_spacing_do_not_make_a_different_body(
    client: httpx.AsyncClient, project: dict[str, Any]
) -> None:
    url, headers = f"/v1/projects/{project['id']}/tasks", key() | {"content-type": "application/json"}
    first = await client.post(url, content=b'{"title": "t", "priority": 2}', headers=headers)
    again = await client.post(url, content=b'{ "priority":2,"title":"t" }', headers=headers)
    assert again.json()["id"] == first.json()["id"]


async def test_the_same_key_with_a_different_body_is_422(client: httpx.AsyncClient) -> None:
    headers = key()
    await client.post("/v1/projects", json={"name": unique()}, headers=headers)
    response = await client.post("/v1/projects", json={"name": unique()}, headers=headers)
    assert ["header", "idempotency-key"] in error_locations(assert_problem(response, 422))


async def test_the_same_key_on_another_endpoint_is_422(client: httpx.AsyncClient, project: dict[str, Any]) -> None:
    headers = key()
    await client.post(f"/v1/projects/{project['id']}/tasks", json={"title": "t"}, headers=headers)
    other = (await client.post("/v1/projects", json={"name": unique()})).json()
    response = await client.post(f"/v1/projects/{other['id']}/tasks", json={"title": "t"}, headers=headers)
    assert_problem(response, 422)


async def test_a_repeat_while_the_first_is_in_progress_is_409(client: httpx.AsyncClient, database_url: str) -> None:
    headers, name = key(), unique("busy")
    holder = await asyncpg.connect(libpq_url(database_url))
    try:  # hold the key's lock, as a first request still running would
        await holder.execute("SELECT pg_advisory_lock(hashtextextended($1, 0))", f"\n{headers['Idempotency-Key']}")
        response = await client.post("/v1/projects", json={"name": name}, headers=headers)
    finally:
        await holder.close()
    assert "in progress" in assert_problem(response, 409)["detail"]
    assert await _count_projects(database_url, name) == 0
    assert (await client.post("/v1/projects", json={"name": name}, headers=headers)).status_code == 201


async def test_concurrent_repeats_create_exactly_once(client: httpx.AsyncClient, database_url: str) -> None:
    headers, name = key(), unique("race")
    responses = await asyncio.gather(
        *(client.post("/v1/projects", json={"name": name}, headers=headers) for _ in range(8))
    )
    assert {response.status_code for response in responses} <= {201, 409}
    created = {response.json()["id"] for response in responses if response.status_code == 201}
    assert len(created) == 1
    assert await _count_projects(database_url, name) == 1


async def test_a_failed_request_is_not_remembered(
    client: httpx.AsyncClient, database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A 500 inside the write's transaction rolls back the write and the record: the retry creates."""
    from app.core.web import idempotency

    headers, name = key(), unique("fail")

    remember = idempotency.Idempotency.remember

    async def remember_then_fail(self: idempotency.Idempotency, connection: Any, response: Any) -> None:
        await remember(self, connection, response)
        raise RuntimeError("injected between the record and the commit")

    monkeypatch.setattr(idempotency.Idempotency, "remember", remember_then_fail)
    failed = await client.post("/v1/projects", json={"name": name}, headers=headers)
    monkeypatch.undo()
    assert_problem(failed, 500)
    assert await _count_projects(database_url, name) == 0
    retried = await client.post("/v1/projects", json={"name": name}, headers=headers)
    assert retried.status_code == 201
    assert "idempotent-replayed" not in retried.headers
    assert await _count_projects(database_url, name) == 1


async def test_a_client_error_is_not_remembered(client: httpx.AsyncClient, project: dict[str, Any]) -> None:
    headers = key()
    taken = await client.post("/v1/projects", json={"name": project["name"]}, headers=headers)
    assert_problem(taken, 409)
    await client.delete(f"/v1/projects/{project['id']}")
    assert (await client.post("/v1/projects", json={"name": project["name"]}, headers=headers)).status_code == 201


async def test_a_key_expires_after_24_hours(client: httpx.AsyncClient, database_url: str) -> None:
    headers = key()
    await client.post("/v1/projects", json={"name": unique()}, headers=headers)
    await fetch(
        database_url,
        "UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = $1",
        headers["Idempotency-Key"],
    )
    name = unique("after-expiry")
    response = await client.post("/v1/projects", json={"name": name}, headers=headers)
    assert response.status_code == 201
    assert response.json()["name"] == name


async def test_each_stored_answer_forgets_other_expired_keys(client: httpx.AsyncClient, database_url: str) -> None:
    old = [key() for _ in range(3)]
    for headers in old:
        await client.post("/v1/projects", json={"name": unique()}, headers=headers)
    keys = [headers["Idempotency-Key"] for headers in old]
    await fetch(
        database_url, "UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = ANY($1)", keys
    )
    assert (await client.post("/v1/projects", json={"name": unique()}, headers=key())).status_code == 201
    assert await fetchval(database_url, "SELECT count(*) FROM idempotency_keys WHERE key = ANY($1)", keys) == 0


async def test_an_answer_stored_meanwhile_wins_and_the_late_write_is_undone(
    client: httpx.AsyncClient, database_url: str
) -> None:
    """A repeat that commits its answer between another's read and lock must not get a second one:
    the store is the arbiter. Here the first answer appears after the read (a trigger-free stand-in:
    a concurrent session inserts it while the request's transaction waits on the project insert)."""
    headers, name = key(), unique("late")
    blocker = await asyncpg.connect(libpq_url(database_url))
    try:
        async with blocker.transaction():  # holds the name: the request's INSERT waits for this transaction
            await blocker.execute("INSERT INTO projects (name) VALUES ($1)", name)
            request = asyncio.create_task(client.post("/v1/projects", json={"name": name}, headers=headers))
            await asyncio.sleep(0.3)  # the request has read "no answer" and now waits on the unique index
            await blocker.execute(
                "INSERT INTO idempotency_keys (principal, key, fingerprint, status, body, location, etag)"
                " VALUES ('', $1, 'f', 201, '{}', '/x', '\"x\"')",
                headers["Idempotency-Key"],
            )
            await blocker.execute("DELETE FROM projects WHERE name = $1", name)  # the request's insert may go on
        response = await request
    finally:
        await blocker.close()
    assert "in progress" in assert_problem(response, 409)["detail"]
    assert await _count_projects(database_url, name) == 0  # its project was rolled back with it


@pytest.mark.parametrize("bad", ["", "x" * 256, "has space", "ünï", "tab\there"])
async def test_a_malformed_key_is_422(client: httpx.AsyncClient, bad: str) -> None:
    response = await client.post("/v1/projects", json={"name": unique()}, headers={"Idempotency-Key": bad.encode()})
    assert ["header", "idempotency-key"] in error_locations(assert_problem(response, 422))


async def test_the_longest_key_is_accepted(client: httpx.AsyncClient) -> None:
    longest = unique("k").ljust(255, "k")  # unique: a key used before with another body would be a 422
    response = await client.post("/v1/projects", json={"name": unique()}, headers={"Idempotency-Key": longest})
    assert response.status_code == 201


async def test_keys_are_scoped_per_principal(authed: httpx.AsyncClient, issuer: Issuer) -> None:
    shared = key()
    alice = {"Authorization": f"Bearer {issuer.token('alice@example.com')}"} | shared
    bob = {"Authorization": f"Bearer {issuer.token('bob@example.com')}"} | shared
    first = await authed.post("/v1/projects", json={"name": unique("alice")}, headers=alice)
    second = await authed.post("/v1/projects", json={"name": unique("bob")}, headers=bob)
    assert (first.status_code, second.status_code) == (201, 201)
    assert first.json()["id"] != second.json()["id"]
    assert second.json()["created_by"] == "bob@example.com"
