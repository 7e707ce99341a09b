"""Project behaviours: keyword-only, connection first; typed errors, never HTTP responses."""

import uuid
from typing import Any

import asyncpg
from sqlalchemy import bindparam, select

from app.core.db import crud
from app.core.db.failures import violated_constraint
from app.core.db.pagination import Keyset, PageRequest
from app.core.db.statements import LIKE_ESCAPE, Row, escape_like, table_of
from app.core.errors import Conflict
from app.core.web.idempotency import Idempotency
from app.projects.models import Project, ProjectCreate, ProjectUpdate

_projects = table_of(Project)  # Core, not select(Project): see app/core/db/statements.py
_PROJECTS = Keyset(select(_projects))
_NAMED_LIKE = _projects.c.name.icontains(bindparam("name"), escape=LIKE_ESCAPE)
_PROJECTS_NAMED_LIKE = Keyset(select(_projects).where(_NAMED_LIKE))


def _name_taken(name: str | None) -> Conflict:
    return Conflict(f"a project named {name!r} already exists (names are case-insensitive)")


async def get_project(*, connection: asyncpg.Connection, project_id: uuid.UUID) -> Row:
    return await crud.get(connection, Project, project_id)


async def create_project(
    *,
    connection: asyncpg.Connection,
    data: ProjectCreate,
    principal: str | None,
    idempotency: Idempotency | None = None,
    location_prefix: str | None = None,
) -> Row:
    try:
        return await crud.create(
            connection,
            Project,
            data.model_dump(),
            principal=principal,
            idempotency=idempotency,
            location_prefix=location_prefix,
        )
    except asyncpg.UniqueViolationError as error:  # the unique index decides: of two racing creates, one wins
        if violated_constraint(error) == "uq_projects_name_lower":
            raise _name_taken(data.name) from None
        raise


async def list_projects(
    *, connection: asyncpg.Connection, page: PageRequest, name_contains: str | None
) -> dict[str, Any]:
    if name_contains:
        return await _PROJECTS_NAMED_LIKE.page(connection, page, name=escape_like(name_contains))
    return await _PROJECTS.page(connection, page)


async def update_project(
    *,
    connection: asyncpg.Connection,
    project_id: uuid.UUID,
    changes: ProjectUpdate,
    accepted_versions: frozenset[int] | None,
    principal: str | None,
) -> Row:
    values = changes.model_dump(exclude_unset=True)
    try:
        return await crud.update(
            connection, Project, project_id, values, accepted_versions=accepted_versions, principal=principal
        )
    except asyncpg.UniqueViolationError as error:
        if violated_constraint(error) == "uq_projects_name_lower":
            raise _name_taken(changes.name) from None
        raise


async def delete_project(
    *,
    connection: asyncpg.Connection,
    project_id: uuid.UUID,
    accepted_versions: frozenset[int] | None,
    principal: str | None,
) -> None:
    """Deletes the project's tasks too (ON DELETE CASCADE), in the same statement."""
    await crud.delete(connection, Project, project_id, accepted_versions=accepted_versions, principal=principal)
