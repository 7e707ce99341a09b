"""The resources' routes on the app itself (app/core/web/routing.py): served exactly as
`include_router` would serve them, without its per-request resolution."""

from typing import Any

import pytest
from fastapi import APIRouter, Depends, FastAPI
from fastapi.routing import APIRoute

import app.api
from app.api import RESOURCE_ROUTERS, create_app
from app.core.settings import Settings
from app.core.web import routing
from app.core.web.routing import add_routes
from tests.helpers import asgi_client


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


def test_the_openapi_document_is_the_one_include_router_gives(
    database_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    flat = create_app(Settings(database_url=database_url)).openapi()
    monkeypatch.setattr(app.api, "add_routes", _included_as_usual)
    included = create_app(Settings(database_url=database_url)).openapi()
    assert flat == included


async def _who() -> str:
    return "the real dependency"


def _scratch_router() -> APIRouter:
    router = APIRouter(tags=["scratch"], dependencies=[Depends(_who)])

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


def test_an_option_fastapi_no_longer_keeps_falls_back_to_include_router(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(routing, "_OPTIONS", (*routing._OPTIONS, "an_option_of_a_later_fastapi"))
    served = FastAPI()
    add_routes(served, _scratch_router())
    assert type(served.routes[-1]).__name__ == "_IncludedRouter"
