"""Safe retries: Idempotency-Key on POST, per the contract's "Safe retries" section."""

import asyncio
import json
import random
import re
import uuid
from collections.abc import AsyncIterator, Callable
from datetime import UTC, date, datetime
from typing import Annotated, Any, ClassVar

import asyncpg
import httpx
import orjson
import pytest
import sqlalchemy as sa
from fastapi import APIRouter, Cookie, Depends, FastAPI, Header, Request, Response
from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import DateTime
from sqlalchemy.dialects import postgresql
from sqlalchemy.schema import CreateTable
from sqlmodel import Field, SQLModel

import app.api
from app.core.db import crud
from app.core.db.database import database_of
from app.core.errors import install_problem_handlers
from app.core.models import TIMESTAMP, Audited, AuditedPublic
from app.core.settings import Settings
from app.core.web import idempotency
from app.core.web.idempotency import IdempotencyDep
from app.core.web.openapi import install_openapi
from app.core.web.resources import created_response
from app.tasks.models import Task, TaskPublic
from tests.helpers import (
    admin,
    asgi_client,
    assert_problem,
    error_locations,
    fetch,
    fetchval,
    libpq_url,
    run_alembic,
    unique,
)
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


def assert_same_answer(again: httpx.Response, first: httpx.Response) -> None:
    """Byte for byte: status, body, Location and ETag."""
    assert (again.status_code, again.content) == (first.status_code, first.content)
    for header in ["location", "etag", "content-type"]:
        assert again.headers[header] == first.headers[header]


async def test_a_repeat_while_the_first_is_in_progress_waits_and_replays_its_answer(
    client: httpx.AsyncClient, database_url: str
) -> None:
    """A session stands in for a first request still running: it has stored its answer under the
    key, uncommitted. The repeat waits on the key, then replays that answer once it commits."""
    headers, name = key(), unique("busy")
    first = await client.post("/v1/projects", json={"name": unique("first")}, headers=key())
    fingerprint = await _fingerprint_of(client, database_url, name)
    holder = await asyncpg.connect(libpq_url(database_url))
    try:
        async with holder.transaction():
            await _store_answer(holder, headers["Idempotency-Key"], fingerprint, first)
            repeat = asyncio.create_task(client.post("/v1/projects", json={"name": name}, headers=headers))
            await asyncio.sleep(0.3)
            assert not repeat.done()  # waiting for the first to end
        response = await repeat
    finally:
        await holder.close()
    assert_same_answer(response, first)
    assert response.headers["idempotent-replayed"] == "true"
    assert await _count_projects(database_url, name) == 0


async def _fingerprint_of(client: httpx.AsyncClient, database_url: str, name: str) -> str:
    """The fingerprint the service stores for POST /v1/projects {"name": name}: read back from a
    keyed create of that body, then deleted."""
    probe = key()
    created = await client.post("/v1/projects", json={"name": name}, headers=probe)
    query = "SELECT fingerprint FROM idempotency_keys WHERE key = $1"
    fingerprint: str = await fetchval(database_url, query, probe["Idempotency-Key"])
    await client.delete(created.headers["location"])
    return fingerprint


async def _store_answer(connection: asyncpg.Connection, key: str, fingerprint: str, answer: httpx.Response) -> None:
    """The key with `answer`, as the release before stored its keys (the rendered answer)."""
    await connection.execute(
        "INSERT INTO idempotency_keys (principal, key, fingerprint, status, body, location, etag)"
        " VALUES ('', $1, $2, 201, $3, $4, $5)",
        key,
        fingerprint,
        answer.text,
        answer.headers["location"],
        answer.headers["etag"],
    )


async def test_concurrent_repeats_create_one_row_and_all_get_the_first_answer(
    client: httpx.AsyncClient, database_url: str
) -> None:
    headers, name = key(), unique("race")
    responses = await asyncio.gather(
        *(client.post("/v1/projects", json={"name": name}, headers=headers) for _ in range(20))
    )
    first = next(response for response in responses if "idempotent-replayed" not in response.headers)
    assert first.status_code == 201
    for response in responses:
        assert_same_answer(response, first)
    assert sum("idempotent-replayed" not in response.headers for response in responses) == 1
    assert await _count_projects(database_url, name) == 1


async def test_concurrent_repeats_of_a_task_create_one_row(
    client: httpx.AsyncClient, database_url: str, project: dict[str, Any]
) -> None:
    """Tasks have no unique column: the key's index alone makes the repeats wait and replay."""
    headers, title = key(), unique("task-race")
    url = f"/v1/projects/{project['id']}/tasks"
    responses = await asyncio.gather(*(client.post(url, json={"title": title}, headers=headers) for _ in range(20)))
    first = next(response for response in responses if "idempotent-replayed" not in response.headers)
    for response in responses:
        assert_same_answer(response, first)
    assert await fetchval(database_url, "SELECT count(*) FROM tasks WHERE title = $1", title) == 1


async def test_a_failure_while_storing_the_answer_leaves_neither_row_nor_key(
    client: httpx.AsyncClient, database_url: str
) -> None:
    """The key is stored by the create's own statement: when that part fails (a test-only trigger on
    the keys table), the row goes too, and a retry runs afresh."""
    headers, name = {"Idempotency-Key": f"fail-{uuid.uuid4()}"}, unique("fail")
    await fetch(
        database_url,
        "CREATE OR REPLACE FUNCTION test_refuse_key() RETURNS trigger LANGUAGE plpgsql AS $$"
        " BEGIN IF NEW.key LIKE 'fail-%' THEN RAISE EXCEPTION 'refused by the test'; END IF; RETURN NEW; END $$",
    )
    await fetch(
        database_url,
        "CREATE TRIGGER test_refuse_key BEFORE INSERT ON idempotency_keys"
        " FOR EACH ROW EXECUTE FUNCTION test_refuse_key()",
    )
    try:
        failed = await client.post("/v1/projects", json={"name": name}, headers=headers)
    finally:
        await fetch(database_url, "DROP TRIGGER test_refuse_key ON idempotency_keys")
        await fetch(database_url, "DROP FUNCTION test_refuse_key()")
    assert_problem(failed, 500)
    assert await _count_projects(database_url, name) == 0
    assert (
        await fetchval(database_url, "SELECT count(*) FROM idempotency_keys WHERE key = $1", headers["Idempotency-Key"])
        == 0
    )
    retried = await client.post("/v1/projects", json={"name": name}, headers=headers)
    assert retried.status_code == 201
    assert "idempotent-replayed" not in retried.headers
    assert await _count_projects(database_url, name) == 1


async def test_a_key_stored_by_the_release_before_replays_as_it_was_stored(
    client: httpx.AsyncClient, database_url: str
) -> None:
    """The release before stored the rendered answer (body, Location, ETag) and no columns."""
    headers = key()
    first = await client.post("/v1/projects", json={"name": unique("old")}, headers=headers)
    await fetch(
        database_url,
        "UPDATE idempotency_keys SET resource = NULL, body = $2 WHERE key = $1",
        headers["Idempotency-Key"],
        first.text,
    )
    again = await client.post("/v1/projects", json=json.loads(first.request.content), headers=headers)
    assert_same_answer(again, first)


async def _stored_answer(database_url: str, headers: dict[str, str]) -> asyncpg.Record:
    rows = await fetch(
        database_url,
        "SELECT body, resource::text, etag FROM idempotency_keys WHERE key = $1",
        headers["Idempotency-Key"],
    )
    return rows[0]


# Characters JSON escapes, and some it need not: both renderings must spell them alike.
AWKWARD = 'quote " backslash \\ newline \n tab \t bell \x07 unit \x1f del \x7f é / < \u2028 😀'


@pytest.mark.parametrize("resource", ["project", "task"])
async def test_the_stored_body_is_the_first_answer_byte_for_byte(
    client: httpx.AsyncClient, database_url: str, project: dict[str, Any], resource: str
) -> None:
    """A release rolled back to replays `body` as it is: it must be the first answer's bytes."""
    headers = key()
    if resource == "project":
        url, body = "/v1/projects", {"name": unique(AWKWARD), "description": AWKWARD}
    else:
        url = f"/v1/projects/{project['id']}/tasks"
        body = {"title": AWKWARD, "description": None, "priority": 0, "due_date": "2027-03-01", "status": "done"}
    first = await client.post(url, json=body, headers=headers)
    assert first.status_code == 201, first.text
    stored = await _stored_answer(database_url, headers)
    assert stored["body"].encode() == first.content
    await fetch(database_url, "UPDATE idempotency_keys SET resource = NULL WHERE key = $1", headers["Idempotency-Key"])
    assert_same_answer(await client.post(url, json=body, headers=headers), first)  # as that release answers


async def test_a_key_stored_again_by_the_release_before_replays_its_body_not_stale_columns(
    client: httpx.AsyncClient, database_url: str
) -> None:
    """After a rollback, the release before replaces an expired key's body, Location and ETag but
    not `resource`: those columns belong to another answer and are not replayed."""
    headers, name = key(), unique("restored")
    await client.post("/v1/projects", json={"name": unique("expired")}, headers=headers)
    second = await client.post("/v1/projects", json={"name": name}, headers=key())
    await fetch(
        database_url,
        "UPDATE idempotency_keys SET body = $2, location = $3, etag = $4,"
        " fingerprint = (SELECT fingerprint FROM idempotency_keys WHERE key = $5) WHERE key = $1",
        headers["Idempotency-Key"],
        second.text,
        second.headers["location"],
        second.headers["etag"],
        second.request.headers["idempotency-key"],
    )
    assert_same_answer(await client.post("/v1/projects", json={"name": name}, headers=headers), second)


async def test_an_expired_key_runs_afresh_even_when_the_new_request_conflicts(
    client: httpx.AsyncClient, database_url: str, project: dict[str, Any]
) -> None:
    """After 24 hours the key is forgotten: the create of a taken name is the ordinary 409."""
    headers = key()
    assert (await client.post("/v1/projects", json={"name": unique("expires")}, headers=headers)).status_code == 201
    await fetch(
        database_url,
        "UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = $1",
        headers["Idempotency-Key"],
    )
    assert_problem(await client.post("/v1/projects", json={"name": project["name"]}, headers=headers), 409)


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


async def test_forgetting_expired_keys_spares_one_being_stored_again(
    client: httpx.AsyncClient, database_url: str
) -> None:
    """A request storing a new answer under an expired key holds its row: another keyed create
    that is forgetting expired keys passes it by, and the new answer stays."""
    reused = key()
    await client.post("/v1/projects", json={"name": unique()}, headers=reused)
    reused_key = reused["Idempotency-Key"]
    age = "UPDATE idempotency_keys SET created_at = now() - interval '25 hours' WHERE key = $1"
    await fetch(database_url, age, reused_key)
    holder = await asyncpg.connect(libpq_url(database_url))
    try:
        async with holder.transaction():  # the new answer, stored but not yet committed
            await holder.execute("UPDATE idempotency_keys SET created_at = now() WHERE key = $1", reused_key)
            other = client.post("/v1/projects", json={"name": unique()}, headers=key())
            assert (await asyncio.wait_for(other, timeout=10)).status_code == 201  # not queued behind it
    finally:
        await holder.close()
    assert await fetchval(database_url, "SELECT count(*) FROM idempotency_keys WHERE key = $1", reused_key) == 1


async def test_a_repeat_just_after_the_first_committed_replays_instead_of_name_taken(
    client: httpx.AsyncClient, database_url: str
) -> None:
    """A repeat whose project insert meets the unique name of the project the first request made
    (committed just after the repeat began) replays the first answer instead of a 409 "name taken".
    Here a session stands in for the first request: it holds the name and the key, then commits."""
    headers, name = key(), unique("late")
    probe = await client.post("/v1/projects", json={"name": unique("probe")}, headers=key())
    fingerprint = await _fingerprint_of(client, database_url, name)
    blocker = await asyncpg.connect(libpq_url(database_url))
    try:
        async with blocker.transaction():  # holds the name: the repeat's INSERT waits for this transaction
            await blocker.execute("INSERT INTO projects (name) VALUES ($1)", name)
            request = asyncio.create_task(client.post("/v1/projects", json={"name": name}, headers=headers))
            await asyncio.sleep(0.3)  # the repeat now waits on the unique name index
            await _store_answer(blocker, headers["Idempotency-Key"], fingerprint, probe)
        response = await request
    finally:
        await blocker.close()
    assert_same_answer(response, probe)
    assert await _count_projects(database_url, name) == 1  # the first's, not a second


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


class Order(Audited, table=True):
    """A table whose names SQL must quote (a reserved word, a schema in capitals), with a column
    named like the keyed create's CTE and one nobody published."""

    __tablename__ = "order"
    __table_args__ = {"schema": "Sales"}  # noqa: RUF012 # SQLAlchemy's own spelling
    resource_name: ClassVar[str] = "order"

    created: str = Field(max_length=100)
    status: int = Field(default=0)  # a task's status ("todo") is no int
    ships_at: datetime | None = Field(default=None, sa_type=TIMESTAMP)
    ships_on: date | None = None
    internal_note: str = Field(default="for staff only")


SQLModel.metadata.remove(Order.__table__)  # type: ignore[attr-defined]


class OrderCreate(SQLModel):
    created: str
    ships_at: datetime | None = None
    ships_on: date | None = None


class OrderPublic(AuditedPublic):
    created: str
    status: int
    ships_at: datetime | None
    ships_on: date | None = Field(alias="shipsOn")


orders = APIRouter(prefix="/v1/orders")


@orders.post("", status_code=201, response_model=OrderPublic)
async def create_order(body: OrderCreate, idempotency: IdempotencyDep, request: Request) -> Response:
    prefix = "/v1/orders/"
    async with database_of(request).connection() as connection:
        order = await crud.create(
            connection, Order, body.model_dump(), principal=None, idempotency=idempotency, location_prefix=prefix
        )
    return created_response(order, location_prefix=prefix)


@pytest.fixture(scope="module")
def orders_database(create_database: Callable[[], str]) -> str:
    url = create_database()
    run_alembic(url, "upgrade", "head")
    table = CreateTable(Order.__table__).compile(dialect=postgresql.dialect())  # type: ignore[attr-defined,no-untyped-call]
    asyncio.run(admin(url, 'CREATE SCHEMA "Sales"'))
    asyncio.run(admin(url, str(table)))
    return url


@pytest.fixture
async def orders_client(orders_database: str, monkeypatch: pytest.MonkeyPatch) -> AsyncIterator[httpx.AsyncClient]:
    monkeypatch.setattr(app.api, "RESOURCE_ROUTERS", [*app.api.RESOURCE_ROUTERS, orders])
    application = app.api.create_app(Settings(database_url=orders_database, instance_connection_name=None))
    async with asgi_client(application) as http:
        yield http
    await application.state.database.dispose()


@pytest.mark.parametrize(
    "ships_at", ["2027-03-01T10:00:00Z", "2027-03-01T10:00:00.000120+02:00", "1999-12-31T23:59:59.5-08:00", None]
)
async def test_a_table_sql_must_quote_stores_only_its_public_columns_and_replays_them(
    orders_client: httpx.AsyncClient, orders_database: str, ships_at: str | None
) -> None:
    headers, body = key(), {"created": unique("by hand"), "ships_at": ships_at, "ships_on": "2027-03-02"}
    first = await orders_client.post("/v1/orders", json=body, headers=headers)
    assert first.status_code == 201, first.text
    assert list(first.json()) == [*list(OrderPublic.model_fields)[:-1], "shipsOn"]
    stored = await _stored_answer(orders_database, headers)
    assert stored["body"].encode() == first.content
    assert "internal_note" not in stored["body"] + stored["resource"] and "staff" not in stored["resource"]
    assert set(json.loads(stored["resource"])) == set(OrderPublic.model_fields)  # by column, typed
    again = await orders_client.post("/v1/orders", json=body, headers=headers)
    assert_same_answer(again, first)
    assert again.headers["idempotent-replayed"] == "true"


async def test_a_key_reused_on_an_endpoint_of_another_table_is_422(orders_client: httpx.AsyncClient) -> None:
    """The stored columns are a task's, which an order's row type cannot hold: never read."""
    headers = key()
    project = (await orders_client.post("/v1/projects", json={"name": unique()})).json()
    task = await orders_client.post(f"/v1/projects/{project['id']}/tasks", json={"title": "t"}, headers=headers)
    assert task.status_code == 201, task.text
    response = await orders_client.post("/v1/orders", json={"created": "x"}, headers=headers)
    assert ["header", "idempotency-key"] in error_locations(assert_problem(response, 422))


async def test_a_create_given_idempotency_without_a_location_prefix_fails_even_without_a_key() -> None:
    """Forgetting the prefix fails the route's first test, not only its keyed requests."""
    from app.core.db import crud
    from app.core.web.idempotency import Idempotency
    from app.projects.models import Project

    unkeyed = Idempotency(principal="", key=None, fingerprint="")
    with pytest.raises(TypeError, match="location_prefix="):
        await crud.create(None, Project, {"name": "x"}, principal=None, idempotency=unkeyed)  # type: ignore[arg-type]


@settings(max_examples=300, deadline=None)
@given(
    path=st.text(alphabet=st.sampled_from("/a%?#\\\t\r\n :;.é\x00\x85\u2028"), max_size=12).map("/".__add__),
    host=st.sampled_from([[(b"host", b"example.com")], [(b"host", b"")], []]),
    server=st.sampled_from([("testserver", 80), None]),
)
def test_the_fingerprinted_path_is_the_one_earlier_releases_hashed(
    path: str, host: list[tuple[bytes, bytes]], server: tuple[str, int] | None
) -> None:
    """Keys stored before an upgrade replay only if the request hashes as it did: `request.url.path`."""
    request = Request({"type": "http", "method": "POST", "path": path, "headers": host, "server": server})
    assert idempotency._url_path(request) == request.url.path


def _moments(zone: Any) -> list[datetime]:
    """Whole seconds, fractions with trailing zeros, the calendar's ends (asyncpg sends the very last
    microsecond as infinity), and a spread between."""
    chosen = random.Random(20261207)
    edges = [(1, 1, 1, 0), (9999, 12, 31, 999_998), (2024, 2, 29, 0), (2026, 12, 7, 1), (2026, 12, 7, 100_000)]
    moments = [datetime(year, month, day, 23, 59, 59, micro, tzinfo=zone) for year, month, day, micro in edges]
    for _ in range(300):
        micro = chosen.choice([0, chosen.randrange(1_000_000), chosen.randrange(100) * 10_000])
        moments.append(datetime.fromtimestamp(chosen.uniform(-2e9, 4e9), UTC).replace(microsecond=micro, tzinfo=zone))
    return moments


@pytest.mark.parametrize("zone", [UTC, None])
async def test_timestamps_are_spelled_in_sql_as_the_renderer_spells_them(database_url: str, zone: Any) -> None:
    """The stored `body`, replayed as it is by a release rolled back to, spells each timestamp as
    the first answer (orjson) did: with or without a fraction, in UTC with Z, or without a zone."""
    kind = DateTime(timezone=zone is not None)
    spelled = idempotency._as_json_text(sa.column("moment", kind)).compile(dialect=postgresql.dialect())
    array = "timestamptz[]" if zone is not None else "timestamp[]"
    moments = _moments(zone)
    rows = await fetch(
        database_url, f"SELECT {spelled} FROM unnest($1::{array}) WITH ORDINALITY AS t(moment, n) ORDER BY n", moments
    )
    rendered = [orjson.dumps(moment, option=orjson.OPT_UTC_Z).decode().strip('"') for moment in moments]
    assert [row[0] for row in rows] == rendered


EXPIRED = idempotency.EXPIRED_ROWS_PER_WRITE


def _literal(value: Any) -> str:
    return (
        "NULL" if value is None else str(value) if isinstance(value, int) else "'" + str(value).replace("'", "''") + "'"
    )


def test_a_keyed_create_reads_only_the_keys_it_forgets(create_database: Callable[[], str]) -> None:
    """The plan the statement keeps was made when the table was empty (a fresh deploy, or a table
    just cleared). Thousands of keys later, none expired, a keyed create looks at one index entry
    to learn that nothing is to forget; with some expired, it reads the oldest few through the
    index and deletes them by address: never a scan of the keys."""
    url = create_database()
    run_alembic(url, "upgrade", "head")

    async def plans_of_keyed_creates() -> list[str]:
        connection = await asyncpg.connect(libpq_url(url))
        try:
            # No autovacuum: its ANALYZE would make PostgreSQL plan again, on the full table.
            await connection.execute("ALTER TABLE idempotency_keys SET (autovacuum_enabled = off)")
            await connection.execute("VACUUM ANALYZE idempotency_keys")  # its statistics: no rows
            await connection.execute("SET plan_cache_mode = force_generic_plan")  # planned now, on them
            project = await connection.fetchval("INSERT INTO projects (name) VALUES ('p') RETURNING id")
            values = {"title": "t", "status": "todo", "priority": 1, "project_id": project, "created_by": None}
            pairs = tuple((name, name) for name in TaskPublic.model_fields)
            statement = idempotency._remembering(crud._insert_returning(Task, tuple(values)), pairs)
            await connection.execute(f"PREPARE keyed AS {statement.sql}")
            await connection.execute(
                "INSERT INTO idempotency_keys (principal, key, fingerprint, status, body, location, etag) "
                "SELECT '', 'old-' || n, 'f', 201, '{}', '/', 'e' FROM generate_series(1, 5000) AS n"
            )
            plans = []
            for expired in (0, 30):
                await connection.execute(
                    "UPDATE idempotency_keys SET created_at = now() - interval '25 hours' "
                    "WHERE key IN (SELECT key FROM idempotency_keys ORDER BY key LIMIT $1)",
                    expired,
                )
                keyed = {
                    "idempotency_principal": "",
                    "idempotency_key": f"new-{expired}",
                    "idempotency_fingerprint": "f",
                }
                arguments = statement.arguments(values | keyed | {"idempotency_location": "/v1/tasks/"})
                rows = await connection.fetch(
                    f"EXPLAIN (ANALYZE, COSTS OFF) EXECUTE keyed({', '.join(map(_literal, arguments))})"
                )
                plans.append("\n".join(row[0] for row in rows))
            return plans
        finally:
            await connection.close()

    none_expired, some_expired = asyncio.run(plans_of_keyed_creates())
    for plan in (none_expired, some_expired):
        assert not re.search(r"Seq Scan on idempotency_keys", plan), plan
        removed = [int(count) for count in re.findall(r"Rows Removed by Filter: (\d+)", plan)]
        assert all(count <= EXPIRED for count in removed), plan
    read = [line for line in none_expired.splitlines() if re.search(r"Scan .*on idempotency_keys", line)]
    read = [line for line in read if "never executed" not in line]
    assert len(read) == 1 and "Index Only Scan using ix_idempotency_keys_created_at" in read[0], none_expired
    assert re.search(r"Tid Scan on idempotency_keys .*rows=20", some_expired), some_expired


def _declared_key(
    idempotency_key: Annotated[
        str | None,
        Header(
            min_length=1,
            max_length=255,
            pattern=r"^[\x21-\x7e]+$",
            description="Retry safely: the same key and body within 24 h replays the first response",
        ),
    ] = None,
) -> str | None:
    return idempotency_key


def _reference_app() -> FastAPI:
    """The key declared as a FastAPI `Header()` parameter, as FastAPI validates and documents it."""
    reference = FastAPI()
    install_problem_handlers(reference)

    @reference.post("/keyed")
    async def keyed(key: Annotated[str | None, Depends(_declared_key)]) -> dict[str, str | None]:
        return {"key": key}

    return reference


def test_the_key_is_documented_as_fastapi_documents_a_declared_header(app: FastAPI) -> None:
    """The same fields, in the same order, as in the document FastAPI serves for a declared header."""
    (parameter,) = _reference_app().openapi()["paths"]["/keyed"]["post"]["parameters"]
    assert parameter == idempotency.KEY_PARAMETER
    served = app.openapi()["paths"]["/v1/projects"]["post"]["parameters"]
    assert [json.dumps(p) for p in served if p["name"] == "idempotency-key"] == [json.dumps(parameter)]


def test_the_key_is_placed_where_fastapi_places_a_header_and_on_nested_dependencies() -> None:
    """A user's route with a query parameter and a cookie, reading the key through a dependency of
    its own: the key is listed between them, as FastAPI lists a header."""
    scratch = FastAPI()
    install_openapi(scratch, bearer=False)

    async def wrapped(idempotency: IdempotencyDep) -> str | None:
        return idempotency.key

    @scratch.post("/notes")
    async def create_note(
        key: Annotated[str | None, Depends(wrapped)], q: int = 0, session: Annotated[str, Cookie()] = ""
    ) -> None:
        pass

    @scratch.post("/pings")
    async def ping(idempotency: IdempotencyDep) -> None:  # no parameter FastAPI would declare a 422 for
        pass

    document = scratch.openapi()
    names = [(p["in"], p["name"]) for p in document["paths"]["/notes"]["post"]["parameters"]]
    assert names == [("query", "q"), ("header", "idempotency-key"), ("cookie", "session")]
    assert "422" in document["paths"]["/pings"]["post"]["responses"]  # what a refused key answers


def _keys_a_client_may_send() -> list[str]:
    """Edge cases, then keys of any length over all of latin-1 (what a header value decodes to)."""
    draw = random.Random(20261207)
    alphabets = ["".join(map(chr, range(0x21, 0x7F))), "".join(chr(c) for c in range(1, 256) if chr(c) not in "\r\n")]
    drawn = [
        "".join(draw.choice(alphabets[i % 2]) for _ in range(draw.choice([1, 2, 40, 254, 255, 256, 300])))
        for i in range(40)
    ]
    return ["", " ", "a b", " a", "a" * 255, "a" * 256, "k\x7f", "é", "\t", *drawn]


async def test_a_key_is_refused_exactly_as_fastapi_refuses_a_declared_header(app: FastAPI) -> None:
    """Through HTTP: whatever the client sends as the key, the header's errors are those of FastAPI's
    `Header()` declaration; a key it takes is taken. A refused key is answered before the body's
    fields are checked (docs/api.md), so the body's own error (no name) shows only once the key is valid."""
    reference = httpx.AsyncClient(transport=httpx.ASGITransport(app=_reference_app()), base_url="http://test")
    async with reference, asgi_client(app) as client:
        for key in _keys_a_client_may_send():
            headers = [("idempotency-key", key.encode("latin-1"))]
            expected = await reference.post("/keyed", headers=headers)
            answered = await client.post("/v1/projects", json={}, headers=headers)  # no name: 422 either way
            assert answered.status_code == 422, key
            if expected.status_code == 422:
                assert answered.json()["errors"] == expected.json()["errors"], key
            else:
                assert expected.json() == {"key": key}
                assert {error["loc"][0] for error in answered.json()["errors"]} == {"body"}, key
