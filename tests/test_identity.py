"""Identity: ID tokens checked against a key set served on loopback, the allow-list, authorship."""

import asyncio
import base64
import json
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI, WebSocket
from starlette.types import Message

from app.api import create_app
from app.core.identity import tokens
from app.core.identity.auth import Public
from app.core.settings import Settings
from app.core.web.routing import add_routes
from tests.helpers import assert_problem, unique
from tests.identity_fakes import AUDIENCE, Issuer, SigningKey


async def _client_for(app: FastAPI) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://testserver")


@pytest.fixture
async def google_app(database_url: str, issuer: Issuer) -> AsyncIterator[FastAPI]:
    app = create_app(
        Settings(
            database_url=database_url,
            auth_mode="google",
            auth_audience=AUDIENCE,
            oidc_jwks_url=issuer.jwks_url,  # instead of Google's key set, which is not reachable here
            auth_allowed_principals="alice@example.com, *@corp.example.com",
        )
    )
    yield app
    await app.state.database.dispose()


@pytest.fixture
async def client(google_app: FastAPI) -> AsyncIterator[httpx.AsyncClient]:
    async with await _client_for(google_app) as http:
        yield http


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def _forged(issuer: Issuer, **header_and_claims: Any) -> str:
    """A token whose header we choose freely (alg none, HMAC with a public key...)."""
    header = {
        "alg": header_and_claims.pop("alg"),
        "kid": header_and_claims.pop("kid", issuer.keys[0].kid),
        "typ": "JWT",
    }
    payload = json.loads(base64.urlsafe_b64decode(issuer.token().split(".")[1] + "=="))

    def encode(part: dict[str, Any]) -> str:
        return base64.urlsafe_b64encode(json.dumps(part).encode()).decode().rstrip("=")

    return f"{encode(header)}.{encode(payload)}.{header_and_claims.get('signature', '')}"


async def test_a_call_without_a_token_is_401_with_a_bearer_challenge(client: httpx.AsyncClient) -> None:
    for method, path in [("GET", "/v1/projects"), ("POST", "/v1/projects"), ("DELETE", "/v1/tasks/x"), ("GET", "/v1")]:
        response = await client.request(method, path)
        assert_problem(response, 401)
        assert response.headers["www-authenticate"] == "Bearer"


async def test_another_scheme_is_401(client: httpx.AsyncClient) -> None:
    response = await client.get("/v1/projects", headers={"Authorization": "Basic YWxpY2U6c2VjcmV0"})
    assert_problem(response, 401)
    assert response.headers["www-authenticate"] == "Bearer"


@pytest.mark.parametrize(
    ("case", "reason"),
    [
        ("malformed", "not a well-formed JWT"),
        ("expired", "expired"),
        ("wrong_audience", "audience"),
        ("wrong_issuer", "issuer"),
        ("bad_signature", "signature"),
        ("unknown_key", "unknown key"),
        ("alg_none", "algorithm"),
        ("hmac_with_public_key", "algorithm"),
        ("alg_not_a_string", "algorithm"),
        ("kid_not_a_string", "not a well-formed JWT"),
    ],
)
async def test_an_invalid_token_is_401_and_says_why(
    client: httpx.AsyncClient, issuer: Issuer, case: str, reason: str
) -> None:
    impostor = SigningKey(kid=issuer.keys[0].kid)  # same key id, different private key
    token = {
        "malformed": lambda: "not.a.jwt",
        "expired": lambda: issuer.token(expires_in=-120),
        "wrong_audience": lambda: issuer.token(audience="https://someone-else.example"),
        "wrong_issuer": lambda: issuer.token(issuer="https://evil.example"),
        "bad_signature": lambda: issuer.token(key=impostor),
        "unknown_key": lambda: issuer.token(key=SigningKey()),
        "alg_none": lambda: _forged(issuer, alg="none"),
        "hmac_with_public_key": lambda: _forged(issuer, alg="HS256", signature="c2lnbmF0dXJl"),
        "alg_not_a_string": lambda: _forged(issuer, alg=["RS256"], signature="c2lnbmF0dXJl"),
        "kid_not_a_string": lambda: _forged(issuer, alg="RS256", kid=[issuer.keys[0].kid]),
    }[case]()
    response = await client.get("/v1/projects", headers=bearer(token))
    body = assert_problem(response, 401)
    assert reason in body["detail"]
    assert response.headers["www-authenticate"].startswith('Bearer error="invalid_token"')


async def test_a_verified_caller_outside_the_allow_list_is_403(client: httpx.AsyncClient, issuer: Issuer) -> None:
    response = await client.get("/v1/projects", headers=bearer(issuer.token("mallory@example.com")))
    assert "mallory@example.com" in assert_problem(response, 403)["detail"]


@pytest.mark.parametrize("email", ["alice@example.com", "ALICE@Example.com", "bob@corp.example.com"])
async def test_the_allow_list_takes_exact_emails_and_domain_patterns(
    client: httpx.AsyncClient, issuer: Issuer, email: str
) -> None:
    assert (await client.get("/v1/projects", headers=bearer(issuer.token(email)))).status_code == 200


async def test_a_subdomain_does_not_match_a_domain_pattern(client: httpx.AsyncClient, issuer: Issuer) -> None:
    response = await client.get("/v1/projects", headers=bearer(issuer.token("eve@evil.corp.example.com")))
    assert_problem(response, 403)


async def test_an_unverified_email_is_not_the_principal(client: httpx.AsyncClient, issuer: Issuer) -> None:
    token = issuer.token("alice@example.com", email_verified=False)  # principal becomes `sub`, not allowed
    assert_problem(await client.get("/v1/projects", headers=bearer(token)), 403)


async def test_a_rejected_call_writes_nothing(client: httpx.AsyncClient, issuer: Issuer) -> None:
    name = unique("rejected")
    for headers in [{}, bearer(issuer.token(expires_in=-60)), bearer(issuer.token("mallory@example.com"))]:
        response = await client.post("/v1/projects", json={"name": name}, headers=headers)
        assert response.status_code in (401, 403)
    listed = await client.get("/v1/projects", params={"q": name}, headers=bearer(issuer.token()))
    assert listed.json()["items"] == []


async def test_a_bad_token_is_refused_before_the_body_is_read(client: httpx.AsyncClient) -> None:
    response = await client.post("/v1/projects", content=b"{not json", headers={"content-type": "application/json"})
    assert_problem(response, 401)


async def test_health_docs_and_openapi_stay_open(client: httpx.AsyncClient) -> None:
    for path in ["/healthz", "/readyz", "/docs", "/openapi.json"]:
        assert (await client.get(path)).status_code == 200, path


async def test_openapi_documents_the_bearer_scheme(client: httpx.AsyncClient) -> None:
    spec = (await client.get("/openapi.json")).json()
    assert spec["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    assert spec["paths"]["/v1/projects"]["post"]["security"] == [{"HTTPBearer": []}]


# --- deny by default: only what is declared public answers a caller without a token ------------------

PUBLIC_PATHS = ["/healthz", "/readyz", "/docs", "/redoc", "/docs/oauth2-redirect", "/openapi.json"]


def _users_routers() -> list[APIRouter]:
    """Routers a user adds the FastAPI way, outside /v1: two protected, one declared public."""
    reports, admin, status = APIRouter(prefix="/v2/reports"), APIRouter(prefix="/admin"), APIRouter(prefix="/status")

    @reports.get("")
    async def list_reports() -> dict[str, str]:
        return {"reports": "all"}

    @reports.post("/{report_id}")
    async def file_report(report_id: str) -> dict[str, str]:
        return {"filed": report_id}

    @admin.get("/stats")
    async def stats() -> dict[str, str]:
        return {"stats": "secret"}

    @status.get("/banner", dependencies=[Public])
    async def banner() -> dict[str, str]:
        return {"banner": "hello"}

    return [reports, admin, status]


@pytest.fixture
async def extended(database_url: str, issuer: Issuer) -> AsyncIterator[FastAPI]:
    """The app with authentication on, the users' routers registered beside the resources, with
    include_router and with add_routes."""
    app = create_app(
        Settings(
            database_url=database_url,
            auth_mode="oidc",
            auth_audience=AUDIENCE,
            oidc_issuer=issuer.issuer,
            oidc_jwks_url=issuer.jwks_url,
        )
    )
    reports, admin, status = _users_routers()
    app.include_router(admin)  # both ways a router reaches the app: FastAPI's, and app/api.py's add_routes
    add_routes(app, reports)
    add_routes(app, status)
    yield app
    await app.state.database.dispose()


async def test_a_router_outside_v1_needs_a_verified_caller(extended: FastAPI, issuer: Issuer) -> None:
    async with await _client_for(extended) as http:
        for method, path in [("GET", "/v2/reports"), ("POST", "/v2/reports/r1"), ("GET", "/admin/stats")]:
            anonymous = await http.request(method, path)
            assert_problem(anonymous, 401)
            assert anonymous.headers["www-authenticate"] == "Bearer"
            assert_problem(await http.request(method, path, headers=bearer(issuer.token(expires_in=-60))), 401)
            verified = await http.request(method, path, headers=bearer(issuer.token()))
            assert verified.status_code == 200, (method, path, verified.text)
        for path in [*PUBLIC_PATHS, "/status/banner"]:
            assert (await http.get(path)).status_code == 200, path
            assert (await http.head(path)).status_code == 200, path
            assert (await http.get(path, headers=bearer("not.a.jwt"))).status_code == 200, path


async def test_an_unknown_path_or_a_wrong_method_is_401_without_a_token(extended: FastAPI, issuer: Issuer) -> None:
    """No route discovery: without a token nothing says which paths exist or which methods they take."""
    unknown = ["/", "/nowhere", "/v1/nowhere", "/v2", "/v2/reports/r1/x", "/admin", "/healthz/", "/docs/x"]
    wrong_method = [("PUT", "/v1/projects"), ("DELETE", "/v2/reports")]
    # A public path is no secret: a method it does not take is its 405, with `Allow`, token or not.
    public_path_wrong_method = [
        ("POST", "/healthz"),
        ("DELETE", "/docs"),
        ("PATCH", "/openapi.json"),
        ("OPTIONS", "/readyz"),
    ]
    async with await _client_for(extended) as http:
        for method, path in [
            *(("GET", path) for path in unknown),
            *(("POST", path) for path in unknown),
            *wrong_method,
        ]:
            response = await http.request(method, path)
            assert_problem(response, 401)
            assert "allow" not in response.headers, (method, path)
        for method, path in public_path_wrong_method:
            response = await http.request(method, path)
            assert_problem(response, 405)
            assert "GET" in response.headers["allow"], (method, path)
        token = bearer(issuer.token())
        assert_problem(await http.get("/nowhere", headers=token), 404)  # a verified caller learns what it is
        assert_problem(await http.delete("/v2/reports", headers=token), 405)


async def test_a_public_route_shadowed_by_an_earlier_protected_one_is_not_public(
    extended: FastAPI, issuer: Issuer
) -> None:
    """The router picks the first route that matches; so does the check, so declaring a later route
    public opens no path an earlier protected route serves."""
    pages = APIRouter(prefix="/pages")

    @pages.get("/{name}")
    async def page(name: str) -> dict[str, str]:
        return {"page": name}

    @pages.get("/about", dependencies=[Public])
    async def about() -> dict[str, str]:
        return {"page": "about (public)"}

    extended.include_router(pages)
    async with await _client_for(extended) as http:
        assert_problem(await http.get("/pages/about"), 401)
        served = await http.get("/pages/about", headers=bearer(issuer.token()))
        assert served.json() == {"page": "about"}


async def test_root_path_is_handled_as_routing_handles_it(database_url: str, issuer: Issuer) -> None:
    app = create_app(
        Settings(
            database_url=database_url,
            auth_mode="google",
            auth_audience=AUDIENCE,
            oidc_jwks_url=issuer.jwks_url,
            root_path="/api",
        )
    )
    for router in _users_routers():
        app.include_router(router)
    async with await _client_for(app) as http:
        for path in ["/api/healthz", "/healthz", "/api/docs", "/api/openapi.json", "/api/status/banner"]:
            assert (await http.get(path)).status_code == 200, path  # whether a proxy strips the prefix or not
        for path in [
            "/api/v1/projects",
            "/v1/projects",
            "/api/admin/stats",
            "/api",
            "/api/",
            "/apihealthz",
            "/other/healthz",
            "/api/api/healthz",
        ]:
            assert_problem(await http.get(path), 401)
        verified = await http.get("/api/admin/stats", headers=bearer(issuer.token()))
        assert verified.json() == {"stats": "secret"}
    await app.state.database.dispose()


async def test_preflights_are_answered_before_authentication_on_every_path(database_url: str, issuer: Issuer) -> None:
    settings = Settings(
        database_url=database_url,
        auth_mode="google",
        auth_audience=AUDIENCE,
        oidc_jwks_url=issuer.jwks_url,
        cors_allowed_origins="https://app.example",
    )
    app = create_app(settings)
    for router in _users_routers():
        app.include_router(router)
    origin = {"Origin": "https://app.example"}
    preflight = origin | {"Access-Control-Request-Method": "GET", "Access-Control-Request-Headers": "authorization"}
    async with await _client_for(app) as http:
        for path in ["/v2/reports", "/admin/stats", "/nowhere", "/healthz"]:
            assert (await http.options(path, headers=preflight)).status_code == 200, path  # a browser sends no token
        for path in ["/v2/reports", "/admin/stats", "/nowhere"]:
            refused = await http.get(path, headers=origin)
            assert_problem(refused, 401)
            assert refused.headers["access-control-allow-origin"] == "https://app.example"  # the page can read why
        without_origin = await http.options("/v2/reports", headers={"Access-Control-Request-Method": "GET"})
        assert_problem(without_origin, 401)  # not a preflight: authenticated like any other request
    await app.state.database.dispose()


async def _websocket(app: FastAPI, path: str, headers: dict[str, str]) -> list[Message]:
    """What the app sends to a WebSocket client that connects, then waits."""
    scope = {
        "type": "websocket",
        "asgi": {"version": "3.0"},
        "path": path,
        "raw_path": path.encode(),
        "root_path": "",
        "scheme": "ws",
        "query_string": b"",
        "headers": [(name.lower().encode(), value.encode()) for name, value in headers.items()],
        "client": ("127.0.0.1", 5000),
        "server": ("testserver", 80),
        "subprotocols": [],
    }
    incoming = [{"type": "websocket.connect"}]
    sent: list[Message] = []

    async def receive() -> Message:
        return incoming.pop(0) if incoming else {"type": "websocket.disconnect", "code": 1000}

    async def send(message: Message) -> None:
        sent.append(message)

    await app(scope, receive, send)
    return sent


async def test_a_websocket_needs_a_verified_caller_too(extended: FastAPI, issuer: Issuer) -> None:
    @extended.websocket("/v2/live")
    async def live(websocket: WebSocket) -> None:
        await websocket.accept()
        await websocket.send_text("hello")
        await websocket.close()

    refused = await _websocket(extended, "/v2/live", {})
    assert refused == [{"type": "websocket.close", "code": 1008}]  # before accept: the server answers 403
    verified = await _websocket(extended, "/v2/live", bearer(issuer.token()))
    assert [message["type"] for message in verified] == ["websocket.accept", "websocket.send", "websocket.close"]


async def test_openapi_names_the_bearer_scheme_on_every_operation_but_the_public_ones(extended: FastAPI) -> None:
    async with await _client_for(extended) as http:
        spec = (await http.get("/openapi.json")).json()
    public = {("get", "/healthz"), ("get", "/readyz"), ("get", "/status/banner")}
    operations = {
        (method, path): operation for path, item in spec["paths"].items() for method, operation in item.items()
    }
    assert {("get", "/v2/reports"), ("post", "/v2/reports/{report_id}"), ("get", "/admin/stats")} <= set(operations)
    for key, operation in operations.items():
        assert operation.get("security") == (None if key in public else [{"HTTPBearer": []}]), key


async def test_created_by_and_updated_by_are_the_principals(client: httpx.AsyncClient, issuer: Issuer) -> None:
    alice, bob = issuer.token("alice@example.com"), issuer.token("bob@corp.example.com")
    created = (await client.post("/v1/projects", json={"name": unique()}, headers=bearer(alice))).json()
    assert (created["created_by"], created["updated_by"]) == ("alice@example.com", "alice@example.com")
    url = f"/v1/projects/{created['id']}"
    patched = (await client.patch(url, json={"description": "b"}, headers=bearer(bob))).json()
    assert (patched["created_by"], patched["updated_by"]) == ("alice@example.com", "bob@corp.example.com")
    task = await client.post(f"{url}/tasks", json={"title": "t", "created_by": "x"}, headers=bearer(bob))
    assert_problem(task, 422)  # a client cannot claim authorship


async def test_oidc_mode_checks_the_configured_issuer(database_url: str) -> None:
    other = Issuer(issuer="https://login.example.org").start()
    try:
        app = create_app(
            Settings(
                database_url=database_url,
                auth_mode="oidc",
                auth_audience=AUDIENCE,
                oidc_issuer="https://login.example.org",
                oidc_jwks_url=other.jwks_url,
            )
        )
        async with await _client_for(app) as client:
            ok = await client.get("/v1/projects", headers=bearer(other.token("anyone@anywhere.example")))
            assert ok.status_code == 200  # an empty allow-list admits any verified caller
            google = await client.get("/v1/projects", headers=bearer(other.token(issuer="https://accounts.google.com")))
            assert "issuer" in assert_problem(google, 401)["detail"]
        await app.state.database.dispose()
    finally:
        other.stop()


async def test_an_unknown_key_refetches_the_key_set_once_and_is_rate_limited(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(tokens, "MIN_REFETCH_S", 1.0)
    rotating = Issuer().start()
    try:
        app = create_app(
            Settings(
                database_url=database_url, auth_mode="google", auth_audience=AUDIENCE, oidc_jwks_url=rotating.jwks_url
            )
        )
        # Keys are made before the clock starts: five RSA keys can take over a second on a busy machine.
        new_key = SigningKey()
        strangers = [bearer(rotating.token(key=SigningKey())) for _ in range(5)]
        async with await _client_for(app) as client:
            assert (await client.get("/v1/projects", headers=bearer(rotating.token()))).status_code == 200
            assert rotating.fetches == 1
            for _ in range(3):  # cached keys: no fetch on the hot path
                await client.get("/v1/projects", headers=bearer(rotating.token()))
            assert rotating.fetches == 1
            rotating.published.append(new_key)
            await asyncio.gather(*(client.get("/v1/projects", headers=headers) for headers in strangers))
            assert rotating.fetches == 1, "unknown keys within the interval must not refetch"
            await asyncio.sleep(1.1)
            rotated = await client.get("/v1/projects", headers=bearer(rotating.token(key=new_key)))
            assert rotated.status_code == 200
            assert rotating.fetches == 2
        await app.state.database.dispose()
    finally:
        rotating.stop()


async def test_an_unreachable_key_set_is_a_503(database_url: str) -> None:
    down = Issuer().start()
    down.down = True
    try:
        app = create_app(
            Settings(database_url=database_url, auth_mode="google", auth_audience=AUDIENCE, oidc_jwks_url=down.jwks_url)
        )
        async with await _client_for(app) as client:
            response = await client.get("/v1/projects", headers=bearer(down.token()))
        assert_problem(response, 503)
        assert response.headers["retry-after"] == "5"
        await app.state.database.dispose()
    finally:
        down.stop()


def test_pyjwt_is_not_loaded_without_authentication() -> None:
    import subprocess
    import sys

    from tests.helpers import ROOT

    code = "import sys, main; print('jwt' in sys.modules)"
    env = {"DATABASE_URL": "postgresql+asyncpg://u@h/d", "PYTHONPATH": str(ROOT)}
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "False"


async def test_a_token_is_verified_once_and_refused_once_it_expires(
    client: httpx.AsyncClient, issuer: Issuer, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Verified tokens are remembered (no second signature check), but never past their `exp`."""
    monkeypatch.setattr(tokens, "CLOCK_SKEW_S", 0)
    decode, decoded = tokens.jwt.decode, []

    def counting_decode(*args: Any, **kwargs: Any) -> Any:
        decoded.append(1)
        return decode(*args, **kwargs)

    monkeypatch.setattr(tokens.jwt, "decode", counting_decode)
    headers = {"Authorization": f"Bearer {issuer.token(expires_in=2)}"}
    for _ in range(3):
        assert (await client.get("/v1/projects", headers=headers)).status_code == 200
    assert len(decoded) == 1
    await asyncio.sleep(2.1)
    assert "expired" in assert_problem(await client.get("/v1/projects", headers=headers), 401)["detail"]
