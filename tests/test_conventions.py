"""The contract's conventions that hold for every endpoint: problems, request ids, sizes, media types."""

import re
import uuid
from email.message import Message

import httpx
import pytest
from fastapi import FastAPI, Request
from hypothesis import given
from hypothesis import strategies as st

from app.api import create_app
from app.core.settings import Settings
from app.core.web.resources import _media_type
from tests.helpers import MISSING_ID, assert_problem, error_locations, unique

ONE_MIB = 1024 * 1024


async def test_a_sane_request_id_is_echoed(client: httpx.AsyncClient) -> None:
    response = await client.get("/healthz", headers={"X-Request-ID": "abc-123.trace:7"})
    assert response.headers["x-request-id"] == "abc-123.trace:7"


@pytest.mark.parametrize("sent", ["", "has space", "x" * 129, "semi;colon", "ünïcode"])
async def test_an_insane_request_id_is_replaced(client: httpx.AsyncClient, sent: str) -> None:
    response = await client.get("/healthz", headers={"X-Request-ID": sent.encode()})
    generated = response.headers["x-request-id"]
    assert generated != sent
    assert uuid.UUID(generated)


async def test_every_response_gets_a_request_id(client: httpx.AsyncClient) -> None:
    for response in [
        await client.get("/healthz"),
        await client.get("/v1/projects"),
        await client.post("/v1/projects", json={}),
        await client.get("/nowhere"),
    ]:
        assert uuid.UUID(response.headers["x-request-id"])


async def test_an_unknown_path_is_a_404_problem(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get("/v1/nowhere"), 404)
    assert_problem(await client.get("/"), 404)


async def test_a_wrong_method_is_a_405_problem_with_allow(client: httpx.AsyncClient) -> None:
    response = await client.put("/v1/projects", json={"name": "x"})
    assert_problem(response, 405)
    assert response.headers["allow"] == "POST" or "POST" in response.headers["allow"]
    assert_problem(await client.post(f"/v1/tasks/{MISSING_ID}", json={}), 405)


async def test_a_body_over_one_mib_is_a_413_problem(client: httpx.AsyncClient) -> None:
    body = b'{"name": "' + b"x" * ONE_MIB + b'"}'
    assert_problem(await client.post("/v1/projects", content=body, headers={"content-type": "application/json"}), 413)


async def test_a_chunked_body_over_one_mib_is_a_413_problem(client: httpx.AsyncClient) -> None:
    async def chunks():  # type: ignore[no-untyped-def]
        yield b'{"name": "'
        for _ in range(17):
            yield b"x" * 65536
        yield b'"}'

    response = await client.post("/v1/projects", content=chunks(), headers={"content-type": "application/json"})
    assert "content-length" not in response.request.headers
    assert_problem(response, 413)


async def test_a_body_of_exactly_the_limit_is_read(client: httpx.AsyncClient) -> None:
    padding = ONE_MIB - len(b'{"name": "", "x": ""}') - 5
    body = b'{"name": "' + b"abcde" + b'", "x": "' + b" " * padding + b'"}'
    assert len(body) == ONE_MIB
    response = await client.post("/v1/projects", content=body, headers={"content-type": "application/json"})
    assert ["body", "x"] in error_locations(assert_problem(response, 422))  # read, then refused as unknown


@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded", "application/xml"])
async def test_post_without_json_media_type_is_415(client: httpx.AsyncClient, content_type: str | None) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = await client.post("/v1/projects", content=b'{"name": "x"}', headers=headers)
    assert_problem(response, 415)


async def test_post_with_merge_patch_media_type_is_415(client: httpx.AsyncClient) -> None:
    headers = {"content-type": "application/merge-patch+json"}
    assert_problem(await client.post("/v1/projects", content=b'{"name": "x"}', headers=headers), 415)


async def test_json_media_type_with_charset_is_accepted(client: httpx.AsyncClient) -> None:
    body = f'{{"name": "{unique()}"}}'.encode()
    response = await client.post(
        "/v1/projects", content=body, headers={"content-type": "application/json; charset=utf-8"}
    )
    assert response.status_code == 201


_MEDIA_TYPE_TEXT = st.text(st.sampled_from(list(' ;/\t"=+,abjnosAJN\u00e9\x85')), max_size=24)


@given(st.one_of(_MEDIA_TYPE_TEXT, st.sampled_from(["application/JSON ; x", " application/json", "a/b/c", "json"])))
def test_the_media_type_is_read_as_the_email_package_reads_it(header: str) -> None:
    """The media type checks read a Content-Type as FastAPI's email.message does, without it."""
    message = Message()
    message["content-type"] = header
    request = Request({"type": "http", "headers": [(b"content-type", header.encode("latin-1"))]})
    expected = message.get_content_type() if header else ""
    assert _media_type(request) == expected


async def test_patch_with_another_media_type_is_415(client: httpx.AsyncClient, task: dict[str, object]) -> None:
    response = await client.patch(f"/v1/tasks/{task['id']}", content=b"{}", headers={"content-type": "text/json"})
    assert_problem(response, 415)


@pytest.mark.parametrize("raw", [b"{", b'{"name": }', b"not json", b"\xff\xfe", b'{"name": "a"} trailing'])
async def test_a_body_that_is_not_json_is_422(client: httpx.AsyncClient, raw: bytes) -> None:
    response = await client.post("/v1/projects", content=raw, headers={"content-type": "application/json"})
    assert_problem(response, 422)


@pytest.mark.parametrize("raw", [b"[]", b'"name"', b"null", b"42"])
async def test_a_body_that_is_not_an_object_is_422(client: httpx.AsyncClient, raw: bytes) -> None:
    response = await client.post("/v1/projects", content=raw, headers={"content-type": "application/json"})
    assert_problem(response, 422)


async def test_validation_problems_list_each_error(client: httpx.AsyncClient, project: dict[str, object]) -> None:
    response = await client.post(f"/v1/projects/{project['id']}/tasks", json={"title": "", "priority": 9})
    body = assert_problem(response, 422)
    assert sorted(error_locations(body)) == [["body", "priority"], ["body", "title"]]
    assert all(set(error) == {"loc", "msg", "type"} for error in body["errors"])


async def test_an_unhandled_exception_is_a_500_problem_that_leaks_nothing(
    client: httpx.AsyncClient, caplog: pytest.LogCaptureFixture
) -> None:
    response = await client.get("/__test__/boom", headers={"X-Request-ID": "boom-1"})
    body = assert_problem(response, 500)
    assert body["request_id"] == "boom-1"
    for secret in ["hunter2", "SELECT", "Traceback", "RuntimeError", "boom()"]:
        assert secret not in response.text
    assert [record.exc_info is not None for record in caplog.records if record.name == "app.core.errors"] == [True]


async def test_healthz_touches_no_database() -> None:
    app = create_app(Settings(database_url="postgresql+asyncpg://nobody@127.0.0.1:1/none"))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        response = await client.get("/healthz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})
    assert app.state.database.pool.result() is None


async def test_readyz_is_200_when_the_database_answers(client: httpx.AsyncClient) -> None:
    response = await client.get("/readyz")
    assert (response.status_code, response.json()) == (200, {"status": "ok"})


async def _unreachable_app() -> FastAPI:
    return create_app(Settings(database_url="postgresql+asyncpg://nobody@127.0.0.1:1/none"))


async def test_readyz_is_a_503_problem_with_retry_after_when_the_database_is_down() -> None:
    app = await _unreachable_app()
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t") as client:
        response = await client.get("/readyz")
    assert_problem(response, 503)
    assert response.headers["retry-after"] == "5"
    await app.state.database.dispose()


async def test_openapi_documents_problem_responses(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    operation = spec["paths"]["/v1/projects/{project_id}"]["patch"]
    for status in ["404", "409", "412", "415", "422"]:
        assert "application/problem+json" in operation["responses"][status]["content"], status


async def test_every_operation_documents_its_errors_as_problem_documents(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    for path, item in spec["paths"].items():
        for method, operation in item.items():
            for status, response in operation["responses"].items():
                if status == "default" or int(status) >= 400:
                    assert set(response.get("content", {})) == {"application/problem+json"}, (method, path, status)


async def test_every_path_answers_a_method_it_does_not_take_with_405_and_allow(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    for path, item in spec["paths"].items():
        taken = {method.upper() for method in item} | ({"HEAD"} if "get" in item else set())
        url = re.sub(r"\{\w+\}", MISSING_ID, path)
        for method in sorted({"GET", "POST", "PUT", "PATCH", "DELETE"} - taken):
            response = await client.request(method, url)
            assert_problem(response, 405)
            assert set(response.headers["allow"].split(", ")) == taken, (method, path)


async def test_declared_and_streamed_oversized_bodies_get_the_same_problem(client: httpx.AsyncClient) -> None:
    async def chunks():  # type: ignore[no-untyped-def]
        for _ in range(17):
            yield b"x" * 65536

    headers = {"content-type": "application/json"}
    declared = assert_problem(await client.post("/v1/projects", content=b"x" * (ONE_MIB + 1), headers=headers), 413)
    streamed = assert_problem(await client.post("/v1/projects", content=chunks(), headers=headers), 413)
    assert {key: declared[key] for key in ("type", "title", "detail")} == {
        key: streamed[key] for key in ("type", "title", "detail")
    }
