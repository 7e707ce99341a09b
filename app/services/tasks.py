"""Task behaviours. A task's project is checked by its foreign key, not by a racy read first."""

import uuid

from sqlalchemy.exc import IntegrityError
from sqlmodel import col, exists, select
from sqlmodel.ext.asyncio.session import AsyncSession

from app.errors import InvalidRequest
from app.models import Page, Project, Task, TaskCreate, TaskStatus, TaskUpdate
from app.pagination import PageRequest, keyset, to_page
from app.services import versioned


async def create_task(
    *,
    session: AsyncSession,
    project_id: uuid.UUID,
    data: TaskCreate,
    principal: str | None,
    before_commit: versioned.BeforeCommit | None = None,
) -> Task:
    values = data.model_dump() | {"project_id": project_id}
    try:
        return await versioned.insert_returning(session, Task, values, principal=principal, before_commit=before_commit)
    except IntegrityError as error:
        if versioned.missing_parent(error, Task, Project):
            raise versioned.not_found(Project, project_id) from None
        raise


async def list_tasks(
    *, session: AsyncSession, project_id: uuid.UUID, page: PageRequest, status: TaskStatus | None
) -> Page[Task]:
    statement = select(Task).where(Task.project_id == project_id)
    if status is not None:
        statement = statement.where(Task.status == status)
    rows = list((await session.exec(keyset(statement, Task, page))).all())
    # An empty page is the only case where "no such project" and "no tasks" look alike.
    if not rows and not (await session.exec(select(exists().where(col(Project.id) == project_id)))).one():
        raise versioned.not_found(Project, project_id)
    return to_page(rows, page)


async def update_task(
    *,
    session: AsyncSession,
    task_id: uuid.UUID,
    changes: TaskUpdate,
    expected_versions: frozenset[int] | None,
    principal: str | None,
) -> Task:
    try:
        return await versioned.update_versioned(
            session,
            Task,
            resource_id=task_id,
            values=changes.model_dump(exclude_unset=True),
            expected_versions=expected_versions,
            principal=principal,
        )
    except IntegrityError as error:
        if versioned.missing_parent(error, Task, Project):
            problem = {"loc": ["body", "project_id"], "msg": "no project has this id", "type": "foreign_key"}
            raise InvalidRequest(f"project {changes.project_id} does not exist", errors=[problem]) from None
        raise


async def delete_task(
    *, session: AsyncSession, task_id: uuid.UUID, expected_versions: frozenset[int] | None, principal: str | None
) -> None:
    await versioned.delete_versioned(
        session, Task, resource_id=task_id, expected_versions=expected_versions, principal=principal
    )
