"""Tasks: created and listed under their project, read and changed at /v1/tasks/{id}."""

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from app.auth import PrincipalDep
from app.database import ReadSessionDep, SessionDep
from app.idempotency import IdempotencyDep
from app.models import Page, Task, TaskCreate, TaskPublic, TaskStatus, TaskUpdate
from app.openapi import NOT_MODIFIED, problem_responses
from app.pagination import PageDep
from app.preconditions import IfMatch, IfNoneMatch, acceptable_versions
from app.routes.common import (
    conditional_read,
    created_response,
    load_or_404,
    require_json,
    require_json_or_merge_patch,
    with_etag,
)
from app.services import tasks
from app.services.versioned import BeforeCommit

router = APIRouter(tags=["tasks"], responses=problem_responses(422, 500, 503))


ValidTask = Annotated[Task, Depends(load_or_404(Task))]


@router.post(
    "/v1/projects/{project_id}/tasks",
    status_code=201,
    response_model=TaskPublic,
    dependencies=[Depends(require_json)],
    responses=problem_responses(404, 409, 413, 415),
)
async def create_task(
    project_id: uuid.UUID,
    body: TaskCreate,
    session: SessionDep,
    principal: PrincipalDep,
    idempotency: IdempotencyDep,
    request: Request,
    response: Response,
) -> Task | Response:
    """Create a task in a project. Send `Idempotency-Key` to make retries safe."""

    async def create(before_commit: BeforeCommit | None) -> Task:
        return await tasks.create_task(
            session=session, project_id=project_id, data=body, principal=principal, before_commit=before_commit
        )

    return await created_response(
        request=request,
        response=response,
        idempotency=idempotency,
        public=TaskPublic,
        read_route="read_task",
        create=create,
    )


@router.get("/v1/projects/{project_id}/tasks", response_model=Page[TaskPublic], responses=problem_responses(404))
async def list_tasks(
    project_id: uuid.UUID,
    session: ReadSessionDep,
    page: PageDep,
    status: Annotated[TaskStatus | None, Query(description="Only tasks with this status")] = None,
) -> Page[Task]:
    """List a project's tasks, newest first, optionally only those with one status."""
    return await tasks.list_tasks(session=session, project_id=project_id, page=page, status=status)


@router.get("/v1/tasks/{task_id}", response_model=TaskPublic, responses=NOT_MODIFIED | problem_responses(404))
async def read_task(task: ValidTask, response: Response, if_none_match: IfNoneMatch = None) -> Task | Response:
    """Read one task. `If-None-Match` with its ETag answers 304 while it is unchanged."""
    return conditional_read(task, response, if_none_match) or task


@router.patch(
    "/v1/tasks/{task_id}",
    response_model=TaskPublic,
    dependencies=[Depends(require_json_or_merge_patch)],
    responses=problem_responses(404, 412, 413, 415),
)
async def update_task(
    task_id: uuid.UUID,
    body: TaskUpdate,
    session: SessionDep,
    principal: PrincipalDep,
    response: Response,
    if_match: IfMatch = None,
) -> Task:
    """Change a task with a JSON merge patch; `project_id` moves it. `If-Match` guards the write."""
    task = await tasks.update_task(
        session=session,
        task_id=task_id,
        changes=body,
        expected_versions=acceptable_versions(if_match, task_id),
        principal=principal,
    )
    with_etag(response, task)
    return task


@router.delete("/v1/tasks/{task_id}", status_code=204, responses=problem_responses(404, 412))
async def delete_task(
    task_id: uuid.UUID, session: SessionDep, principal: PrincipalDep, if_match: IfMatch = None
) -> None:
    """Delete a task. `If-Match` makes the delete conditional."""
    await tasks.delete_task(
        session=session, task_id=task_id, expected_versions=acceptable_versions(if_match, task_id), principal=principal
    )
