"""The resources' routes registered on the app itself, as FastAPI's `include_router` did before 0.137.

Since 0.137, `include_router` keeps the router as one node that FastAPI resolves on every request,
matching its routes twice (once to find the router, once to pick the route). With this app's
routers that cost about 45 µs of CPU per request, some 10 % of a task read (docs/benchmarks.md);
a route on the app itself is one regular-expression match. `add_routes` declares each `APIRoute`
of a router on the app with `add_api_route`, FastAPI's public call, passing every option the route
was declared with, so the route is the one the router would have served: same dependencies (the
router's are already in each route), responses, tags, operation ids, body limits, and
`app.dependency_overrides` apply. A router holding anything else (a plain Starlette route, a
WebSocket, a nested router, a streaming route, a frontend), or with a lifespan, start-up or shutdown
handlers or form limits of its own, is included as usual. The app takes the routes when
`create_app` runs: one added to a resource's router later is not served (add it where the router
is declared).

A route is built once, not twice, where it can be: when the options the app would build it with
(FastAPI's `add_api_route` merges the app's own in) are those the router built it with, the
router's route itself is served, with the app as its `dependency_overrides_provider` and its
request handler made again for it (FastAPI builds the handler around that provider). Building it
again would check its signature and dependencies and make a pydantic validator per parameter once
more: about 5 ms of `import main` for this app's routes (docs/benchmarks.md). It takes a router
whose operation ids are the app's (`generate_unique_id_function=operation_id`, as the resources'
routers declare) and a route of FastAPI's `APIRoute` class or of a subclass that keeps its
`__init__` (a subclass's own `__init__` would not run again). It holds for the first app a route is
added to, which `import main` makes; any other app, in tests say, and every other router get new
routes, served alike (tests/test_routing.py checks both ways).
"""

import inspect
from collections.abc import Callable, Sequence
from typing import Any, cast

from fastapi import APIRouter, FastAPI, params
from fastapi.datastructures import DefaultPlaceholder
from fastapi.routing import APIRoute, request_response

# The options `add_api_route` takes, each kept by APIRoute under the same name.
_OPTIONS = tuple(
    name
    for name in inspect.signature(APIRouter.add_api_route).parameters
    if name not in {"self", "path", "endpoint", "route_class_override"}
)


def _declared(route: APIRoute) -> dict[str, Any] | None:
    """The options `route` was declared with, or None where they do not say it all: FastAPI no
    longer keeps one of them, or the route streams (its item type is inferred, not an option)."""
    if not all(hasattr(route, name) for name in _OPTIONS):
        return None
    streams = (getattr(route, name, None) for name in ("stream_item_type", "is_json_stream", "is_sse_stream"))
    if any(streams):
        return None
    declared = {name: getattr(route, name) for name in _OPTIONS}
    declared["form_limits"] = declared["form_limits"] or None  # as declared: a route class may not take it
    return declared


_DEFAULT_LIFESPAN = type(APIRouter().lifespan_context)


def add_routes(app: FastAPI, router: APIRouter, *, dependencies: Sequence[params.Depends] = ()) -> None:
    """Serve `router`'s routes from the app's own route list (see above), else `include_router`.
    `dependencies` come before each route's own, as `include_router(dependencies=...)` puts them."""
    options = [_declared(route) if isinstance(route, APIRoute) else None for route in router.routes]
    # What the router serves itself, not through a route: its lifespan and handlers, its form
    # limits, a frontend (served after every route).
    own = (
        not isinstance(router.lifespan_context, _DEFAULT_LIFESPAN),
        router.on_startup or router.on_shutdown,
        router.form_limits,
        getattr(router, "_low_priority_routes", None),
    )
    if any(own) or any(option is None for option in options):
        app.include_router(router, dependencies=dependencies)
        return
    for route, declared in zip(router.routes, options, strict=True):
        assert isinstance(route, APIRoute) and declared is not None
        declared["dependencies"] = [*dependencies, *declared["dependencies"]]
        build = cast(type[APIRoute], _served_as_built(route))  # called as add_api_route calls a route class
        app.router.add_api_route(route.path, route.endpoint, route_class_override=build, **declared)


_UNSET = object()


def _served_as_built(route: APIRoute) -> Callable[..., APIRoute]:
    """What `add_api_route` calls as the route class, with the options the app builds the route
    with: `route` itself when they are the ones it was built with (see above), else a new route."""

    def build(path: str, **options: Any) -> APIRoute:
        if not _built_alike(route, path, options):
            return type(route)(path, **options)
        # Only the provider changes; every other option stays as the router gave it (a default stays
        # a default, so the router's routes still take the defaults of another app they are added to).
        route.dependency_overrides_provider = options["dependency_overrides_provider"]
        # As APIRoute makes it (without a body limit, see _built_alike). The handler is made a second
        # time from the same dependant: an integration that wraps `dependant.call` while a handler is
        # made (FastAPI's own comment in from_api_route allows for them) would wrap it twice.
        route.app = request_response(route.get_route_handler())
        return route

    return build


def _value(option: Any) -> Any:
    return option.value if isinstance(option, DefaultPlaceholder) else option


def _built_alike(route: APIRoute, path: str, options: dict[str, Any]) -> bool:
    if type(route).__init__ is not APIRoute.__init__:
        return False  # a route class's own __init__ may do more than its options say
    if route.dependency_overrides_provider is not None or path != route.path or route.max_body_size is not None:
        return False  # served by another app already, a provider of the router's own, or a limit to wrap
    if (route.operation_id or _value(options["generate_unique_id_function"])(route)) != route.unique_id:
        return False  # the id names the route's validators, so they would differ too
    for name, value in options.items():
        if name in {"generate_unique_id_function", "dependency_overrides_provider"}:
            continue
        built = getattr(route, name, _UNSET)
        if name == "strict_content_type":  # the app passes True where the router kept Default(True)
            built, value = (_value(option) for option in (built, value))
        if built != value:
            return False
    return True
