"""/v1/projects. Each handler reads top to bottom: connection, service call, response."""

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
from app.projects import service
from app.projects.models import NameSearch, ProjectCreate, ProjectPublic, ProjectUpdate

# Operation ids are the endpoints' names, as the app's; declared here too, the app serves these
# routes as they are built instead of building them again (app/core/web/routing.py).
router = APIRouter(
    prefix="/v1/projects",
    tags=["projects"],
    responses=problem_responses(422, 500, 503),
    generate_unique_id_function=operation_id,
)


@router.post(
    "",
    status_code=201,
    response_model=ProjectPublic,
    dependencies=[Depends(require_json)],
    responses=problem_responses(409, 413, 415),
)
async def create_project(body: ProjectCreate, idempotency: IdempotencyDep, request: Request) -> Response:
    """Create a project. Send `Idempotency-Key` to make retries safe."""
    prefix = location_of(request, "/v1/projects/")
    async with database_of(request).connection() as connection:  # one statement, the key's answer included
        project = await service.create_project(
            connection=connection,
            data=body,
            principal=principal_of(request),
            idempotency=idempotency,
            location_prefix=prefix,
        )
    return created_response(project, location_prefix=prefix)


@router.get("", response_model=Page[ProjectPublic])
async def list_projects(
    request: Request,
    page: PageDep,
    q: Annotated[NameSearch | None, Query(description="Names containing this text, any case")] = None,
) -> Response:
    """List projects, newest first, a page at a time (`next_cursor` gives the next page)."""
    async with database_of(request).connection() as connection:
        found = await service.list_projects(connection=connection, page=page, name_contains=q)
    return RenderedJSON(found)


@router.get("/{project_id}", response_model=ProjectPublic, responses=NOT_MODIFIED | problem_responses(404))
async def read_project(project_id: uuid.UUID, request: Request, if_none_match: IfNoneMatch = None) -> Response:
    """Read one project. `If-None-Match` with its ETag answers 304 while it is unchanged."""
    async with database_of(request).connection() as connection:
        project = await service.get_project(connection=connection, project_id=project_id)  # or a 404 problem
    return conditional_response(project, if_none_match)


@router.patch(
    "/{project_id}",
    response_model=ProjectPublic,
    dependencies=[Depends(require_json_or_merge_patch)],
    responses=problem_responses(404, 409, 412, 413, 415),
)
async def update_project(
    project_id: uuid.UUID,
    body: ProjectUpdate,
    request: Request,
    if_match: IfMatch = None,
) -> Response:
    """Change a project with a JSON merge patch. `If-Match` with its ETag guards against lost updates."""
    async with database_of(request).connection() as connection:  # one UPDATE: its own transaction
        project = await service.update_project(
            connection=connection,
            project_id=project_id,
            changes=body,
            accepted_versions=accepted_versions(if_match, project_id),
            principal=principal_of(request),
        )
    return resource_response(project)


@router.delete("/{project_id}", status_code=204, responses=problem_responses(404, 412))
async def delete_project(project_id: uuid.UUID, request: Request, if_match: IfMatch = None) -> Response:
    """Delete a project and all its tasks. `If-Match` makes the delete conditional."""
    async with database_of(request).connection() as connection:  # one DELETE: its own transaction
        await service.delete_project(
            connection=connection,
            project_id=project_id,
            accepted_versions=accepted_versions(if_match, project_id),
            principal=principal_of(request),
        )
    return Response(status_code=204)
