"""Liveness and readiness: the first never touches the database, the second proves it answers."""

import asyncio
import logging
from typing import Literal

from fastapi import APIRouter, Request
from pydantic import BaseModel

from app.core.db.database import database_of
from app.core.db.failures import DatabaseUnavailable
from app.core.identity.auth import Public
from app.core.web.openapi import operation_id, problem_responses

logger = logging.getLogger(__name__)
# Open to every caller (Public), whatever the authentication mode; operation ids as the app's (see
# app/projects/routes.py).
router = APIRouter(tags=["health"], dependencies=[Public], generate_unique_id_function=operation_id)

READY_TIMEOUT_S = 2.0


class Health(BaseModel):
    """What both checks answer when they pass (a named model: generated clients name theirs after it)."""

    status: Literal["ok"] = "ok"


@router.get("/healthz")
async def healthz() -> Health:
    """Liveness: the process answers. Touches no database."""
    return Health()


@router.get("/readyz", responses=problem_responses(503))
async def readyz(request: Request) -> Health:
    """Readiness: the database answers; 503 with `Retry-After` when it does not."""
    try:
        async with asyncio.timeout(READY_TIMEOUT_S):
            async with database_of(request).connection() as connection:
                await connection.execute("SELECT 1")
    except DatabaseUnavailable:
        raise
    except Exception as error:  # any failure to answer means "not ready", whatever its cause
        logger.warning("readiness check failed: %s", type(error).__name__)
        raise DatabaseUnavailable("it does not answer") from None
    return Health()
