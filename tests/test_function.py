"""The Cloud Function as Google runs it: `functions-framework --target=api`, real HTTP, one worker."""

import asyncio
import json
import subprocess
import sys
from collections.abc import Callable, Iterator
from typing import Any

import httpx
import pytest

from tests.function_server import FunctionServer, serve_function
from tests.helpers import ROOT, assert_problem, fetchval, run_alembic, unique


@pytest.fixture(scope="module")
def function_database(create_database: Callable[[], str]) -> str:
    url = create_database()
    run_alembic(url, "upgrade", "head")
    return url


@pytest.fixture(scope="module")
def server(function_database: str) -> Iterator[FunctionServer]:
    with serve_function(function_database) as running:
        yield running


@pytest.fixture
def http(server: FunctionServer) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=server.base_url, timeout=10) as client:
        yield client


def test_crud_through_the_function(http: httpx.Client) -> None:
    created = http.post("/v1/projects", json={"name": unique("fn")})
    assert created.status_code == 201
    location, etag = created.headers["location"], created.headers["etag"]
    assert http.get(location).json() == created.json()
    assert http.get(location, headers={"If-None-Match": etag}).status_code == 304
    listed = http.get("/v1/projects", params={"q": created.json()["name"]}).json()["items"]
    assert [item["id"] for item in listed] == [created.json()["id"]]
    task = http.post(f"{location}/tasks", json={"title": "through the function"})
    assert task.status_code == 201
    patched = http.patch(location, json={"description": "patched"}, headers={"If-Match": etag})
    assert patched.status_code == 200
    assert_problem(http.patch(location, json={"description": "stale"}, headers={"If-Match": etag}), 412)
    assert http.delete(location, headers={"If-Match": patched.headers["etag"]}).status_code == 204
    assert_problem(http.get(task.headers["location"]), 404)


def test_an_unknown_route_is_a_404_problem(http: httpx.Client) -> None:
    assert_problem(http.get("/v2/whatever"), 404)
    assert_problem(http.delete("/"), 404)


def test_the_framework_itself_answers_favicon_and_robots(http: httpx.Client) -> None:
    # functions-framework routes these two paths to its own 404 before calling the function.
    for path in ["/favicon.ico", "/robots.txt"]:
        response = http.get(path)
        assert response.status_code == 404
        assert "x-request-id" not in response.headers


def test_an_oversized_body_is_a_413_problem(http: httpx.Client) -> None:
    body = b'{"name": "' + b"x" * (1024 * 1024) + b'"}'
    assert_problem(http.post("/v1/projects", content=body, headers={"content-type": "application/json"}), 413)


def test_a_chunked_request_body_is_read_whole(http: httpx.Client) -> None:
    name = unique("chunked")

    def chunks() -> Iterator[bytes]:
        yield b'{"name": '
        yield json.dumps(name).encode()
        yield b', "description": "' + b"d" * 1500 + b'"}'

    response = http.post("/v1/projects", content=chunks(), headers={"content-type": "application/json"})
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert response.status_code == 201
    assert response.json()["name"] == name


def test_an_endpoint_that_raises_gives_one_500_problem_and_one_logged_traceback(
    http: httpx.Client, server: FunctionServer
) -> None:
    request_id = unique("boom")
    response = http.get("/__test__/boom", headers={"X-Request-ID": request_id})
    body = assert_problem(response, 500)
    assert "hunter2" not in response.text and "Traceback" not in response.text
    assert body["request_id"] == request_id
    _wait_for(lambda: any(entry.get("request_id") == request_id for entry in server.json_logs()))
    _wait_for(lambda: len([entry for entry in server.json_logs() if entry.get("request_id") == request_id]) >= 2)
    entries = {entry["logger"]: entry for entry in server.json_logs() if entry.get("request_id") == request_id}
    assert sorted(entries) == ["app.access", "app.core.errors"]  # one error with its traceback, one access line
    assert entries["app.core.errors"]["message"].count("Traceback") == 1
    assert "Traceback" not in entries["app.access"]["message"]
    assert entries["app.access"]["httpRequest"]["status"] == 500
    output = "".join(server.output)
    assert "Unexpected ASGI message" not in output
    assert "Exception on /__test__/boom" not in output  # the framework did not answer a second time


def test_logs_carry_the_execution_id_and_the_trace(http: httpx.Client, server: FunctionServer) -> None:
    request_id = unique("trace")
    trace = "4bf92f3577b34da6a3ce929d0e0e4736"
    http.get(
        "/__test__/boom",
        headers={"X-Request-ID": request_id, "traceparent": f"00-{trace}-00f067aa0ba902b7-01"},
    )
    _wait_for(lambda: any(entry.get("request_id") == request_id for entry in server.json_logs()))
    entry = next(entry for entry in server.json_logs() if entry.get("request_id") == request_id)
    assert entry["logging.googleapis.com/trace"].endswith(trace)
    assert entry["logging.googleapis.com/spanId"] == "00f067aa0ba902b7"
    assert len(entry["logging.googleapis.com/labels"]["execution_id"]) >= 8  # made by the framework


def test_a_sent_execution_id_and_cloud_trace_header_reach_the_logs(http: httpx.Client, server: FunctionServer) -> None:
    request_id = unique("xct")
    trace = "105445aa7843bc8bf206b12000100000"
    cloud_trace = {"X-Cloud-Trace-Context": f"{trace}/1;o=1", "Function-Execution-Id": "exec-42"}
    http.get("/__test__/boom", headers={"X-Request-ID": request_id, **cloud_trace})
    _wait_for(lambda: any(entry.get("request_id") == request_id for entry in server.json_logs()))
    entry = next(entry for entry in server.json_logs() if entry.get("request_id") == request_id)
    assert entry["logging.googleapis.com/trace"].endswith(trace)
    assert entry["logging.googleapis.com/spanId"] == "0000000000000001"
    assert entry["logging.googleapis.com/labels"] == {"execution_id": "exec-42"}


async def test_fifty_concurrent_requests_on_one_worker_all_succeed(server: FunctionServer) -> None:
    limits = httpx.Limits(max_connections=50)
    async with httpx.AsyncClient(base_url=server.base_url, limits=limits, timeout=30) as client:
        project = (await client.post("/v1/projects", json={"name": unique("load")})).json()
        writes = [client.post(f"/v1/projects/{project['id']}/tasks", json={"title": f"t{n}"}) for n in range(25)]
        reads = [client.get(f"/v1/projects/{project['id']}") for _ in range(25)]
        responses = await asyncio.gather(*writes, *reads)
    assert sorted({response.status_code for response in responses}) == [200, 201]
    assert len({response.json()["id"] for response in responses[:25]}) == 25


def test_sigterm_stops_the_worker_and_leaves_no_connection_open(create_database: Callable[[], str]) -> None:
    database_url = create_database()  # its own database, so only this server's connections count
    run_alembic(database_url, "upgrade", "head")
    with serve_function(database_url) as running:
        assert httpx.get(f"{running.base_url}/v1/projects").status_code == 200
        assert asyncio.run(_connections(database_url)) == 1
        running.process.terminate()
        assert running.process.wait(timeout=30) == 0
    _wait_for(lambda: asyncio.run(_connections(database_url)) == 0)


def test_docs_and_openapi_work_under_root_path(function_database: str) -> None:
    with serve_function(function_database, ROOT_PATH="/api") as server, httpx.Client(base_url=server.base_url) as http:
        docs = http.get("/api/docs")
        assert docs.status_code == 200
        assert "/api/openapi.json" in docs.text
        spec = http.get("/api/openapi.json")
        assert spec.status_code == 200
        assert spec.json()["servers"] == [{"url": "/api"}]
        assert http.get("/docs").status_code == 200  # a proxy that strips the prefix works too
        created = http.post("/api/v1/projects", json={"name": unique("prefixed")})
        assert created.headers["location"] == f"/api/v1/projects/{created.json()['id']}"
        assert http.get(created.headers["location"]).status_code == 200


def test_importing_main_opens_no_socket_starts_no_thread_and_makes_no_loop(function_database: str) -> None:
    probe = """
import asyncio, socket, sys, threading
opened = []
real_socket = socket.socket.__init__
def spy(self, *args, **kwargs):
    opened.append(args)
    real_socket(self, *args, **kwargs)
socket.socket.__init__ = spy
import main
assert main.api is not None
assert opened == [], opened
assert threading.active_count() == 1, threading.enumerate()
assert asyncio.get_event_loop_policy()._local._loop is None
print("clean import")
"""
    env = {"DATABASE_URL": function_database, "PATH": "", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "clean import"


async def _connections(database_url: str) -> int:
    database = database_url.rsplit("/", 1)[1].split("?")[0]
    query = "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()"
    count: int = await fetchval(database_url, query, database)
    return count


def _wait_for(condition: Callable[[], Any], timeout_s: float = 5) -> None:
    import time

    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)
