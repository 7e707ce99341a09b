"""The resources' routes on the app itself (app/core/web/routing.py): served exactly as
`include_router` would serve them, without its per-request resolution."""

import subprocess
import sys
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest
from fastapi import APIRouter, Depends, FastAPI
from fastapi.routing import APIRoute
from pydantic import BaseModel

import app.api
from app.api import RESOURCE_ROUTERS, create_app
from app.core.settings import Settings
from app.core.web import routing
from app.core.web.openapi import operation_id
from app.core.web.routing import add_routes
from tests.helpers import ROOT, asgi_client


def _included_as_usual(app: FastAPI, router: APIRouter, *, dependencies: Any = ()) -> None:
    app.include_router(router, dependencies=dependencies)


def test_the_resources_routes_are_the_apps_own(database_url: str) -> None:
    served = create_app(Settings(database_url=database_url))
    paths = {route.path for route in served.routes if isinstance(route, APIRoute)}
    for router in RESOURCE_ROUTERS:
        assert {route.path for route in router.routes} <= paths  # type: ignore[attr-defined]
    docs = {"/openapi.json", "/docs", "/docs/oauth2-redirect", "/redoc"}
    kinds = [type(route).__name__ for route in served.routes]
    assert all(isinstance(route, APIRoute) or getattr(route, "path", None) in docs for route in served.routes), kinds


@pytest.mark.parametrize("auth_mode", ["none", "google"])
def test_the_openapi_document_is_the_one_include_router_gives(
    database_url: str, monkeypatch: pytest.MonkeyPatch, auth_mode: str
) -> None:
    """Operation ids, responses, tags, and with authentication on the bearer scheme of every route
    but the public ones (the health checks, Public by their router's dependencies)."""
    settings = Settings(database_url=database_url, auth_mode=auth_mode, auth_audience="https://example.com")
    flat = create_app(settings).openapi()
    monkeypatch.setattr(app.api, "add_routes", _included_as_usual)
    included = create_app(settings).openapi()
    assert flat == included
    if auth_mode == "google":
        assert "security" not in flat["paths"]["/healthz"]["get"]
        assert "security" in flat["paths"]["/v1/tasks/{task_id}"]["get"]


async def _who() -> str:
    return "the real dependency"


def _scratch_router(**options: Any) -> APIRouter:
    router = APIRouter(tags=["scratch"], dependencies=[Depends(_who)], **options)

    @router.get("/v1/scratch")
    async def scratch(who: str = Depends(_who)) -> dict[str, str]:
        return {"who": who}

    return router


@pytest.fixture
def scratch_app(database_url: str, monkeypatch: pytest.MonkeyPatch) -> FastAPI:
    monkeypatch.setattr(app.api, "RESOURCE_ROUTERS", [*RESOURCE_ROUTERS, _scratch_router()])
    return create_app(Settings(database_url=database_url))


async def test_dependency_overrides_reach_a_flat_route(scratch_app: FastAPI) -> None:
    """FastAPI's testing idiom, app.dependency_overrides, works on the routes add_routes declares."""
    async with asgi_client(scratch_app) as client:
        assert (await client.get("/v1/scratch")).json() == {"who": "the real dependency"}
        scratch_app.dependency_overrides[_who] = lambda: "the override"
        assert (await client.get("/v1/scratch")).json() == {"who": "the override"}


async def test_a_route_built_as_the_app_would_build_it_is_served_as_built(database_url: str) -> None:
    """Built once: the router's own route, made the app's (its overrides are the app's); a second
    app, or a router whose operation ids are not the app's, gets a route of its own."""
    router = _scratch_router(generate_unique_id_function=operation_id)
    first, second = (create_app(Settings(database_url=database_url)) for _ in range(2))
    add_routes(first, router)
    add_routes(second, router)
    own = router.routes[0]
    assert first.routes[-1] is own and second.routes[-1] is not own
    first.dependency_overrides[_who] = lambda: "the first app's override"
    async with asgi_client(first) as client, asgi_client(second) as other:
        assert (await client.get("/v1/scratch")).json() == {"who": "the first app's override"}
        assert (await other.get("/v1/scratch")).json() == {"who": "the real dependency"}
    for router, dependencies in [
        (_scratch_router(), ()),
        (_scratch_router(generate_unique_id_function=operation_id), [Depends(_who)]),
    ]:
        served = create_app(Settings(database_url=database_url))
        add_routes(served, router, dependencies=dependencies)
        assert served.routes[-1] is not router.routes[0] and isinstance(served.routes[-1], APIRoute)


async def test_a_route_taken_over_keeps_its_defaults_for_the_next_app(database_url: str) -> None:
    """The first app's taking over a route changes nothing another app reads: a lenient app built
    after it still gets its own default (a JSON body without a content type is read as JSON)."""
    router = APIRouter(generate_unique_id_function=operation_id)

    @router.post("/v1/echo")
    async def echo(item: Item) -> Item:
        return item

    add_routes(create_app(Settings(database_url=database_url)), router)
    lenient = FastAPI(strict_content_type=False, generate_unique_id_function=operation_id)
    add_routes(lenient, router)
    async with asgi_client(lenient) as client:
        answer = await client.post("/v1/echo", content=b'{"name": "x"}', headers={"content-type": ""})
        assert answer.status_code == 200, answer.text


async def test_a_route_class_with_a_handler_of_its_own_is_taken_over_with_it(database_url: str) -> None:
    """FastAPI's documented custom route class, one that overrides get_route_handler only, is served
    as built with its handler made for the app."""

    class Stamped(APIRoute):
        def get_route_handler(self) -> Any:
            handler = super().get_route_handler()

            async def stamped(request: Any) -> Any:
                response = await handler(request)
                response.headers["x-stamped"] = "yes"
                return response

            return stamped

    router = _scratch_router(generate_unique_id_function=operation_id, route_class=Stamped)
    served = create_app(Settings(database_url=database_url))
    add_routes(served, router)
    assert served.routes[-1] is router.routes[0]
    served.dependency_overrides[_who] = lambda: "the override"
    async with asgi_client(served) as client:
        answer = await client.get("/v1/scratch")
    assert answer.headers["x-stamped"] == "yes" and answer.json() == {"who": "the override"}


def test_a_route_taken_over_holds_what_one_built_again_holds(database_url: str) -> None:
    """What add_routes takes over is what the app would have built: the same attributes, equal where
    they are values (FastAPI's objects built per route, validators and the handler, aside)."""
    router = _scratch_router(generate_unique_id_function=operation_id)
    taker, builder = (create_app(Settings(database_url=database_url)) for _ in range(2))
    add_routes(taker, router)
    add_routes(builder, router)
    taken, built = taker.routes[-1], builder.routes[-1]
    assert taken is router.routes[0] and built is not taken
    assert vars(taken).keys() == vars(built).keys()
    per_route = {"app", "dependant", "body_field", "response_field", "response_fields", "param_convertors"}
    value = routing._value  # a default compared by its value: Default(True) from the router, True from the app
    different = {
        name
        for name in vars(taken)
        if name not in per_route and value(getattr(taken, name)) != value(getattr(built, name))
    }
    assert different == {"dependency_overrides_provider"}  # each app's own


def test_import_main_builds_each_route_once_and_documents_it_as_include_router_does(database_url: str) -> None:
    """The app `import main` makes serves the routers' own routes, none built twice, and its OpenAPI
    document is the one `include_router` gives (auth on, so the public routes are told apart)."""
    probe = """
import app.api, main
from app.api import RESOURCE_ROUTERS, create_app
from app.core.web import health
served = {id(route) for route in main.app.routes}
routes = [route for router in [health.router, *RESOURCE_ROUTERS] for route in router.routes]
built_twice = [route.path for route in routes if id(route) not in served]
assert not built_twice, built_twice
app.api.add_routes = lambda app, router, dependencies=(): app.include_router(router, dependencies=dependencies)
assert main.app.openapi() == create_app().openapi()
print("built once")
"""
    env = {
        "DATABASE_URL": database_url,
        "AUTH_MODE": "google",
        "AUTH_AUDIENCE": "https://example.com",
        "PATH": "",
        "PYTHONPATH": str(ROOT),
    }
    result = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, env=env, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "built once"


def test_a_router_with_more_than_api_routes_is_included_as_usual() -> None:
    router = APIRouter()

    @router.get("/v1/plain")
    async def plain() -> dict[str, str]:
        return {}

    @router.websocket("/v1/socket")
    async def socket() -> None:  # pragma: no cover - never connected
        pass

    served = FastAPI()
    add_routes(served, router)
    assert [type(route).__name__ for route in served.routes][-1] == "_IncludedRouter"
    assert not any(getattr(route, "path", None) == "/v1/plain" for route in served.routes)


class Item(BaseModel):
    name: str


@asynccontextmanager
async def _own_lifespan(_: Any) -> AsyncIterator[None]:
    yield


def _routers_include_router_must_serve(folder: Path) -> list[tuple[str, APIRouter]]:
    """Routers holding what FastAPI serves from the router itself, not from a route's options."""
    streaming = APIRouter()

    @streaming.get("/v1/items")
    async def items() -> AsyncIterator[Item]:  # pragma: no cover - never called
        yield Item(name="one")

    form_limited = APIRouter(form_limits={"max_files": 0})
    form_limited.get("/v1/limited")(_plain)
    frontend = APIRouter()
    frontend.get("/v1/api")(_plain)
    frontend.frontend("/", directory=folder, check_dir=False)
    with_lifespan = APIRouter(lifespan=_own_lifespan)
    with_lifespan.get("/v1/lifespan")(_plain)
    with_startup = APIRouter(on_startup=[_plain])
    with_startup.get("/v1/startup")(_plain)
    return [
        ("a streaming route's item type", streaming),
        ("the router's form limits", form_limited),
        ("a frontend", frontend),
        ("a lifespan", with_lifespan),
        ("a start-up handler", with_startup),
    ]


async def _plain() -> dict[str, str]:  # pragma: no cover - never called
    return {}


def test_a_router_with_what_only_include_router_serves_is_included_as_usual(tmp_path: Path) -> None:
    for what, router in _routers_include_router_must_serve(tmp_path):
        served = FastAPI()
        add_routes(served, router)
        assert type(served.routes[-1]).__name__ == "_IncludedRouter", what


def test_a_route_class_of_its_own_is_declared_with_the_options_it_takes(database_url: str) -> None:
    """A custom APIRoute that predates form_limits is not handed one it was not declared with."""

    class Timed(APIRoute):
        def __init__(self, path: str, endpoint: Any, **options: Any) -> None:
            assert "form_limits" not in options  # add_api_route passes it only when one is set
            super().__init__(path, endpoint, **options)

    router = APIRouter(route_class=Timed)
    router.get("/v1/timed")(_plain)
    served = FastAPI()
    add_routes(served, router)
    assert isinstance(served.routes[-1], Timed)
    assert served.routes[-1] is not router.routes[0]  # its own __init__ ran again, with the app's options


async def test_a_route_with_a_body_limit_of_its_own_is_built_again_and_keeps_it() -> None:
    router = APIRouter(generate_unique_id_function=operation_id)

    @router.post("/v1/small", max_body_size=16, responses={413: {"description": "Over 16 bytes"}})
    async def small(item: Item) -> Item:
        return item

    served = FastAPI(generate_unique_id_function=operation_id)
    add_routes(served, router)
    assert served.routes[-1] is not router.routes[0]
    async with asgi_client(served) as client:
        assert (await client.post("/v1/small", json={"name": "x"})).status_code == 200
        assert (await client.post("/v1/small", json={"name": "x" * 20})).status_code == 413


def test_an_option_fastapi_no_longer_keeps_falls_back_to_include_router(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(routing, "_OPTIONS", (*routing._OPTIONS, "an_option_of_a_later_fastapi"))
    served = FastAPI()
    add_routes(served, _scratch_router())
    assert type(served.routes[-1]).__name__ == "_IncludedRouter"
