"""Tasks: created and listed under their project, read and changed at /v1/tasks/{task_id}."""

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from app.core.db.database import database_of
from app.core.db.pagination import Page, PageDep
from app.core.identity.auth import principal_of
from app.core.web.idempotency import IdempotencyDep
from app.core.web.openapi import NOT_MODIFIED, operation_id, problem_responses
from app.core.web.resources import (
    IfMatch,
    IfNoneMatch,
    RenderedJSON,
    accepted_versions,
    conditional_response,
    created_response,
    location_of,
    require_json,
    require_json_or_merge_patch,
    resource_response,
)
from app.tasks import service
from app.tasks.models import TaskCreate, TaskPublic, TaskStatus, TaskUpdate

# Operation ids are the endpoints' names, as the app's; declared here too, the app serves these
# routes as they are built instead of building them again (app/core/web/routing.py).
router = APIRouter(
    tags=["tasks"],
    responses=problem_responses(422, 500, 503),
    generate_unique_id_function=operation_id,
)


@router.post(
    "/v1/projects/{project_id}/tasks",
    status_code=201,
    response_model=TaskPublic,
    dependencies=[Depends(require_json)],
    responses=problem_responses(404, 413, 415),
)
async def create_task(
    project_id: uuid.UUID,
    body: TaskCreate,
    idempotency: IdempotencyDep,
    request: Request,
) -> Response:
    """Create a task in a project. Send `Idempotency-Key` to make retries safe."""
    prefix = location_of(request, "/v1/tasks/")
    async with database_of(request).connection() as connection:  # one statement, the key's answer included
        task = await service.create_task(
            connection=connection,
            project_id=project_id,
            data=body,
            principal=principal_of(request),
            idempotency=idempotency,
            location_prefix=prefix,
        )
    return created_response(task, location_prefix=prefix)


@router.get("/v1/projects/{project_id}/tasks", response_model=Page[TaskPublic], responses=problem_responses(404))
async def list_tasks(
    project_id: uuid.UUID,
    request: Request,
    page: PageDep,
    status: Annotated[TaskStatus | None, Query(description="Only tasks with this status")] = None,
) -> Response:
    """List a project's tasks, newest first, optionally only those with one status."""
    async with database_of(request).connection() as connection:
        found = await service.list_tasks(connection=connection, project_id=project_id, page=page, status=status)
    return RenderedJSON(found)


@router.get("/v1/tasks/{task_id}", response_model=TaskPublic, responses=NOT_MODIFIED | problem_responses(404))
async def read_task(task_id: uuid.UUID, request: Request, if_none_match: IfNoneMatch = None) -> Response:
    """Read one task. `If-None-Match` with its ETag answers 304 while it is unchanged."""
    async with database_of(request).connection() as connection:
        task = await service.get_task(connection=connection, task_id=task_id)  # or a 404 problem
    return conditional_response(task, if_none_match)


@router.patch(
    "/v1/tasks/{task_id}",
    response_model=TaskPublic,
    dependencies=[Depends(require_json_or_merge_patch)],
    responses=problem_responses(404, 412, 413, 415),
)
async def update_task(task_id: uuid.UUID, body: TaskUpdate, request: Request, if_match: IfMatch = None) -> Response:
    """Change a task with a JSON merge patch; `project_id` moves it. `If-Match` guards the write."""
    async with database_of(request).connection() as connection:  # one UPDATE: its own transaction
        task = await service.update_task(
            connection=connection,
            task_id=task_id,
            changes=body,
            accepted_versions=accepted_versions(if_match, task_id),
            principal=principal_of(request),
        )
    return resource_response(task)


@router.delete("/v1/tasks/{task_id}", status_code=204, responses=problem_responses(404, 412))
async def delete_task(task_id: uuid.UUID, request: Request, if_match: IfMatch = None) -> Response:
    """Delete a task. `If-Match` makes the delete conditional."""
    async with database_of(request).connection() as connection:  # one DELETE: its own transaction
        await service.delete_task(
            connection=connection,
            task_id=task_id,
            accepted_versions=accepted_versions(if_match, task_id),
            principal=principal_of(request),
        )
    return Response(status_code=204)
