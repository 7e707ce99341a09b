"""Task behaviours. A task's project is checked by its foreign key, not by a racy read first."""

import uuid
from typing import Any

import asyncpg
from sqlalchemy import bindparam, exists, select

from app.core.db import crud
from app.core.db.failures import missing_parent
from app.core.db.pagination import Keyset, PageRequest
from app.core.db.statements import Row, Statement, table_of
from app.core.errors import InvalidRequest, not_found
from app.core.web.idempotency import Idempotency
from app.projects.models import Project
from app.tasks.models import Task, TaskCreate, TaskStatus, TaskUpdate

_tasks = table_of(Task)  # Core, not select(Task): see app/core/db/statements.py
_IN_PROJECT = _tasks.c.project_id == bindparam("project_id")
_TASKS = Keyset(select(_tasks).where(_IN_PROJECT))
_TASKS_WITH_STATUS = Keyset(select(_tasks).where(_IN_PROJECT, _tasks.c.status == bindparam("status")))
_PROJECT_EXISTS = Statement(select(exists().where(table_of(Project).c.id == bindparam("project_id"))))


async def get_task(*, connection: asyncpg.Connection, task_id: uuid.UUID) -> Row:
    return await crud.get(connection, Task, task_id)


async def create_task(
    *,
    connection: asyncpg.Connection,
    project_id: uuid.UUID,
    data: TaskCreate,
    principal: str | None,
    idempotency: Idempotency | None = None,
    location_prefix: str | None = None,
) -> Row:
    values = data.model_dump() | {"project_id": project_id}
    try:
        return await crud.create(
            connection, Task, values, principal=principal, idempotency=idempotency, location_prefix=location_prefix
        )
    except asyncpg.ForeignKeyViolationError as error:
        if missing_parent(error, Task, Project):
            raise not_found(Project.resource_name, project_id) from None
        raise


async def list_tasks(
    *, connection: asyncpg.Connection, project_id: uuid.UUID, page: PageRequest, status: TaskStatus | None
) -> dict[str, Any]:
    if status is None:
        found = await _TASKS.page(connection, page, project_id=project_id)
    else:
        found = await _TASKS_WITH_STATUS.page(connection, page, project_id=project_id, status=status)
    # An empty page is the only case where "no such project" and "no tasks" look alike.
    if not found["items"] and not await _PROJECT_EXISTS.fetchval(connection, project_id=project_id):
        raise not_found(Project.resource_name, project_id)
    return found


async def update_task(
    *,
    connection: asyncpg.Connection,
    task_id: uuid.UUID,
    changes: TaskUpdate,
    accepted_versions: frozenset[int] | None,
    principal: str | None,
) -> Row:
    values = changes.model_dump(exclude_unset=True)
    try:
        return await crud.update(
            connection, Task, task_id, values, accepted_versions=accepted_versions, principal=principal
        )
    except asyncpg.ForeignKeyViolationError as error:
        if missing_parent(error, Task, Project):
            problem = {"loc": ["body", "project_id"], "msg": "no project has this id", "type": "foreign_key"}
            raise InvalidRequest(f"project {changes.project_id} does not exist", errors=[problem]) from None
        raise


async def delete_task(
    *,
    connection: asyncpg.Connection,
    task_id: uuid.UUID,
    accepted_versions: frozenset[int] | None,
    principal: str | None,
) -> None:
    await crud.delete(connection, Task, task_id, accepted_versions=accepted_versions, principal=principal)
