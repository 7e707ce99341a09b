"""examples/client.py against the served function: retries, Idempotency-Key, pages, If-Match, ID tokens.

The database sits behind a relay the tests can cut, so a 503 is the service's real answer to a
database it cannot reach. The ID token comes from google-auth itself, reading a service account
key file whose token endpoint is a fake that signs with the test issuer; the service checks it
with AUTH_MODE=google.
"""

import importlib.util
import json
import socket
import threading
import uuid
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import ModuleType
from typing import Any
from urllib.parse import parse_qs

import httpx
import jwt
import pytest
import requests
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from sqlalchemy.engine import make_url

from tests.conftest import ROOT, unique
from tests.function_server import FunctionServer, serve_function
from tests.identity_fakes import AUDIENCE, Issuer


def _load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("example_client", ROOT / "examples" / "client.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


example = _load_example()


class Relay:
    """A TCP hop to PostgreSQL that can be cut: down() closes the port and every relayed connection."""

    def __init__(self, database_url: str) -> None:
        url = make_url(database_url)
        socket_dir = url.query.get("host")
        if isinstance(socket_dir, str) and socket_dir.startswith("/"):  # the embedded server's Unix socket
            (path,) = [p for p in Path(socket_dir).glob(".s.PGSQL.*") if not p.name.endswith(".lock")]
            self.upstream: tuple[Any, ...] = (socket.AF_UNIX, str(path))
        else:
            self.upstream = (socket.AF_INET, (url.host or "127.0.0.1", url.port or 5432))
        self.url = url.set(host="127.0.0.1", port=0, query={})
        self.port = 0
        self.relayed: set[socket.socket] = set()
        self.listener: socket.socket | None = None
        self.up()

    def service_url(self) -> str:
        return self.url.set(port=self.port).render_as_string(hide_password=False)

    def up(self) -> None:
        if self.listener is None:
            self.listener = socket.create_server(("127.0.0.1", self.port))
            self.port = self.listener.getsockname()[1]
            threading.Thread(target=self._accept, args=(self.listener,), daemon=True).start()

    def down(self) -> None:
        if self.listener is not None:
            self.listener.shutdown(socket.SHUT_RDWR)  # wakes the accepting thread; close() alone would not
            self.listener.close()
            self.listener = None
        for connection in list(self.relayed):
            connection.close()

    def _accept(self, listener: socket.socket) -> None:
        while True:
            try:
                client, _ = listener.accept()
            except OSError:  # closed by down()
                return
            family, address = self.upstream
            server = socket.socket(family, socket.SOCK_STREAM)
            server.connect(address)
            self.relayed |= {client, server}
            for source, target in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(source, target), daemon=True).start()

    def _pump(self, source: socket.socket, target: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                target.sendall(data)
        except OSError:
            pass
        finally:
            for end in (source, target):
                end.close()
                self.relayed.discard(end)


@pytest.fixture(scope="module")
def relay(database_url: str) -> Iterator[Relay]:
    running = Relay(database_url)
    yield running
    running.down()


@pytest.fixture(scope="module")
def function(relay: Relay) -> Iterator[FunctionServer]:
    with serve_function(relay.service_url(), AUTH_MODE="none") as server:
        yield server


class Recorded(requests.Session):
    """A session that keeps every response, and so every request as sent."""

    def __init__(self) -> None:
        super().__init__()
        self.responses: list[requests.Response] = []
        self.hooks["response"].append(lambda response, *args, **kwargs: self.responses.append(response))


def test_a_create_waits_out_a_503_and_retries_with_the_same_idempotency_key(
    function: FunctionServer, relay: Relay
) -> None:
    waits: list[float] = []

    def sleep(seconds: float) -> None:
        waits.append(seconds)
        relay.up()  # the database is back by the time the client retries

    session = Recorded()
    client = example.Client(function.base_url, session=session, sleep=sleep)
    name = unique("client-retry")
    relay.down()
    try:
        created = client.create("/v1/projects", {"name": name})
    finally:
        relay.up()
    assert [response.status_code for response in session.responses] == [503, 201]
    assert waits == [float(session.responses[0].headers["Retry-After"])]
    keys = {response.request.headers["Idempotency-Key"] for response in session.responses}
    assert len(keys) == 1, keys
    assert [project["id"] for project in client.items("/v1/projects", q=name)] == [created["id"]]

    # The same key again (the first answer was lost, say): the first answer, nothing new.
    again = client.create("/v1/projects", {"name": name}, idempotency_key=keys.pop())
    assert again == created
    assert session.responses[-1].headers["Idempotent-Replayed"] == "true"


def test_retries_end_with_the_problem_when_the_database_stays_away(function: FunctionServer, relay: Relay) -> None:
    waits: list[float] = []
    client = example.Client(function.base_url, attempts=3, sleep=waits.append)
    relay.down()
    try:
        with pytest.raises(example.ApiError) as refused:
            client.create("/v1/projects", {"name": unique("client-away")})
    finally:
        relay.up()
    assert refused.value.status == 503 and refused.value.request_id
    assert refused.value.problem["type"] == "urn:problem-type:unavailable"
    assert len(waits) == 2


def test_items_follows_next_cursor_through_every_page(function: FunctionServer) -> None:
    session = Recorded()
    client = example.Client(function.base_url, session=session)
    project = client.create("/v1/projects", {"name": unique("client-pages")})
    created = [client.create(f"/v1/projects/{project['id']}/tasks", {"title": f"t{n}"})["id"] for n in range(5)]
    before = len(session.responses)
    walked = [task["id"] for task in client.items(f"/v1/projects/{project['id']}/tasks", limit=2)]
    assert walked == created[::-1]  # newest first, each once
    assert len(session.responses) - before == 3


def test_writes_send_if_match_and_a_stale_etag_changes_nothing(function: FunctionServer) -> None:
    client = example.Client(function.base_url)
    project = client.create("/v1/projects", {"name": unique("client-etag")})
    path = f"/v1/projects/{project['id']}"
    first, first_etag = client.read(path)
    changed, changed_etag = client.update(path, {"description": "mine"}, first_etag)
    assert changed["version"] == first["version"] + 1 and changed_etag != first_etag

    with pytest.raises(example.ApiError) as stale:
        client.update(path, {"description": "based on the old version"}, first_etag)
    assert stale.value.status == 412
    with pytest.raises(example.ApiError) as stale_delete:
        client.delete(path, first_etag)
    assert stale_delete.value.status == 412
    assert client.read(path)[0]["description"] == "mine"

    client.delete(path, changed_etag)
    with pytest.raises(example.ApiError) as gone:
        client.read(path)
    assert gone.value.status == 404


class IdTokenEndpoint:
    """Google's OAuth 2.0 token endpoint, for one service account's ID-token grants (JWT bearer)."""

    def __init__(self, issuer: Issuer, folder: Path) -> None:
        self.email = "caller@fake-project.iam.gserviceaccount.com"
        self.key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        self.grants = 0
        endpoint = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: Any) -> None:
                pass

            def do_POST(self) -> None:
                form = parse_qs(self.rfile.read(int(self.headers["Content-Length"])).decode())
                public = endpoint.key.public_key()
                claims = jwt.decode(
                    form["assertion"][0], public, algorithms=["RS256"], audience="https://oauth2.googleapis.com/token"
                )
                assert form["grant_type"] == ["urn:ietf:params:oauth:grant-type:jwt-bearer"]
                endpoint.grants += 1
                token = issuer.token(claims["iss"], audience=claims["target_audience"])
                body = json.dumps({"id_token": token}).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        pem = self.key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
        self.key_file = folder / "caller.json"
        self.key_file.write_text(
            json.dumps(
                {
                    "type": "service_account",
                    "project_id": "fake-project",
                    "private_key_id": uuid.uuid4().hex,
                    "private_key": pem.decode(),
                    "client_email": self.email,
                    "client_id": "1",
                    "token_uri": f"http://127.0.0.1:{self.server.server_address[1]}/token",
                }
            )
        )


async def test_google_id_tokens_are_accepted_by_the_service_with_auth_on(
    authed: httpx.AsyncClient, issuer: Issuer, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """google-auth's own ID-token flow (a key file's JWT grant), checked by the app with AUTH_MODE=google."""
    endpoint = IdTokenEndpoint(issuer, tmp_path)
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(endpoint.key_file))
    try:
        tokens = example.google_id_tokens(AUDIENCE)
        first, second = tokens(), tokens()
    finally:
        endpoint.server.shutdown()
        endpoint.server.server_close()
    assert first == second and endpoint.grants == 1  # one token, reused until it nears its expiry
    response = await authed.post(
        "/v1/projects", json={"name": unique("client-authed")}, headers={"Authorization": f"Bearer {first}"}
    )
    assert response.status_code == 201, response.text
    assert response.json()["created_by"] == endpoint.email


def test_every_request_asks_the_token_source_for_its_bearer_token(function: FunctionServer) -> None:
    session = Recorded()
    issued = iter(["first", "second"])
    client = example.Client(function.base_url, lambda: next(issued), session=session)
    for _ in range(2):
        client.request("GET", "/v1/projects", params={"limit": "1"})  # AUTH_MODE=none: the header is ignored
    assert [response.request.headers["Authorization"] for response in session.responses] == [
        "Bearer first",
        "Bearer second",
    ]
