"""The FastAPI application: settings in, routes, middleware and problem handlers wired once."""

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI

from app.database import Database
from app.errors import install_problem_handlers
from app.logs import configure_logging
from app.middleware import BodySizeLimitMiddleware, RequestContextMiddleware
from app.routes import health, projects, tasks
from app.settings import Settings, get_settings

logger = logging.getLogger(__name__)


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
    app = FastAPI(
        title="Projects and tasks API",
        version="1.0.0",
        summary="A reference CRUD service for Google Cloud Functions on Cloud SQL for PostgreSQL.",
        root_path=settings.root_path,
        lifespan=lifespan,
    )
    app.state.settings = settings
    app.state.database = Database(settings)
    install_problem_handlers(app)
    app.add_middleware(BodySizeLimitMiddleware)
    app.add_middleware(RequestContextMiddleware)  # added last, so it runs first and wraps everything
    for router in (health.router, projects.router, tasks.router):
        app.include_router(router)
    return app
