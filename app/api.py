"""The FastAPI application: the platform (`app/core/`) wired once around the resources' routers."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from sqlmodel import SQLModel

from app.core.db.database import Database
from app.core.db.statements import check_python_defaults
from app.core.errors import install_problem_handlers
from app.core.identity.auth import AuthenticationMiddleware, build_verifier
from app.core.observability.logs import configure_logging
from app.core.settings import Settings, get_settings
from app.core.web import health
from app.core.web.cors import ProblemCORSMiddleware
from app.core.web.middleware import BodyLimitMiddleware, RequestContextMiddleware
from app.core.web.openapi import install_openapi, operation_id
from app.core.web.resources import RowShapes
from app.core.web.routing import add_routes
from app.projects.routes import router as projects_router
from app.tasks.routes import router as tasks_router

# The resources: one line each (their tables register with SQLModel.metadata on import).
RESOURCE_ROUTERS = [projects_router, tasks_router]

logger = logging.getLogger(__name__)

API_DESCRIPTION = """
JSON in and out. Every error is an RFC 9457 `application/problem+json` document with a
`request_id`, which every response also carries as `X-Request-ID`.

- **Concurrency:** single resources carry a strong `ETag`; send it as `If-Match` on PATCH and
  DELETE (a stale one gives 412), or as `If-None-Match` on GET (304 while unchanged).
- **Pages:** lists are newest first; pass `next_cursor` back as `cursor`, with the same filters,
  until it is null.
- **Safe retries:** POST takes an `Idempotency-Key`: a repeat within 24 hours replays the first answer.
- **Identity:** with authentication on, send an ID token as `Authorization: Bearer <token>`.
"""


@asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    """Runs in the serving process (on Cloud Functions: lazily, on the worker's first request)."""
    settings: Settings = app.state.settings
    configure_logging(level=settings.log_level, json_lines=settings.log_format == "json")
    try:
        yield
    finally:  # also on cancellation, which is how the function's worker ends it
        await app.state.database.dispose()
        logger.info("database connections closed")


def create_app(settings: Settings | None = None) -> FastAPI:
    """Build the app. Does no I/O: the engine is created on first use, inside the serving loop."""
    settings = settings or get_settings()
    check_python_defaults(SQLModel.metadata)  # a default only SQLAlchemy's ORM could compute: refuse to start
    app = FastAPI(
        title="Projects and tasks API",
        version="1.0.0",
        summary="A reference CRUD service for Google Cloud Functions on Cloud SQL for PostgreSQL.",
        description=API_DESCRIPTION,
        openapi_tags=[
            {"name": "projects", "description": "Projects; deleting one deletes its tasks."},
            {"name": "tasks", "description": "Tasks, created and listed under their project."},
            {"name": "health", "description": "Liveness and readiness, open to every caller."},
        ],
        root_path=settings.root_path,
        lifespan=lifespan,
        redirect_slashes=False,  # a redirect would be built from the client's Host header; 404 instead
        generate_unique_id_function=operation_id,
    )
    app.state.settings = settings
    app.state.database = Database(settings)
    install_problem_handlers(app)
    # Middleware runs in the reverse order of adding: request context (head limits, HEAD, access log),
    # then CORS (before authentication: preflights carry no token), authentication, body limits, and
    # innermost the route's response model as the filter of the rows it renders.
    app.add_middleware(RowShapes)
    app.add_middleware(BodyLimitMiddleware)
    verifier = build_verifier(settings)
    if verifier is not None:
        allowed = settings.allowed_principals
        app.add_middleware(AuthenticationMiddleware, verifier=verifier, allowed=allowed, application=app)
    if settings.cors_origins:
        app.add_middleware(ProblemCORSMiddleware, origins=settings.cors_origins)
    app.add_middleware(RequestContextMiddleware, trusted_proxy_hops=settings.trusted_proxy_hops)
    # Public, open to every caller: the routes declared with `dependencies=[Public]` (on the route, its
    # router as health's is, or where its router is added) and FastAPI's docs (/docs, /redoc,
    # /docs/oauth2-redirect, /openapi.json). With AUTH_MODE google or oidc, every other path, routed or
    # not, answers 401 to a caller without a token. The routes go on the app itself (add_routes:
    # FastAPI's include_router costs ~45 µs a request).
    add_routes(app, health.router)
    for router in RESOURCE_ROUTERS:
        add_routes(app, router)
    install_openapi(app, bearer=verifier is not None)
    return app
