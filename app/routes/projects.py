"""/v1/projects: straight-line handlers; loading, errors and headers live in shared pieces."""

import uuid
from typing import Annotated

from fastapi import APIRouter, Depends, Query, Request, Response

from app.auth import PrincipalDep
from app.database import ReadSessionDep, SessionDep
from app.idempotency import IdempotencyDep
from app.models import Page, Project, ProjectCreate, ProjectPublic, ProjectUpdate, SearchText
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
from app.services import projects
from app.services.versioned import BeforeCommit

router = APIRouter(prefix="/v1/projects", tags=["projects"], responses=problem_responses(422, 500, 503))


ValidProject = Annotated[Project, Depends(load_or_404(Project))]


@router.post(
    "",
    status_code=201,
    response_model=ProjectPublic,
    dependencies=[Depends(require_json)],
    responses=problem_responses(409, 413, 415),
)
async def create_project(
    body: ProjectCreate,
    session: SessionDep,
    principal: PrincipalDep,
    idempotency: IdempotencyDep,
    request: Request,
    response: Response,
) -> Project | Response:
    """Create a project. Send `Idempotency-Key` to make retries safe."""

    async def create(before_commit: BeforeCommit | None) -> Project:
        return await projects.create_project(
            session=session, data=body, principal=principal, before_commit=before_commit
        )

    return await created_response(
        request=request,
        response=response,
        idempotency=idempotency,
        public=ProjectPublic,
        read_route="read_project",
        create=create,
    )


@router.get("", response_model=Page[ProjectPublic])
async def list_projects(
    session: ReadSessionDep,
    page: PageDep,
    q: Annotated[SearchText | None, Query(description="Names containing this text, any case")] = None,
) -> Page[Project]:
    """List projects, newest first, a page at a time (`next_cursor` gives the next page)."""
    return await projects.list_projects(session=session, page=page, name_contains=q)


@router.get("/{project_id}", response_model=ProjectPublic, responses=NOT_MODIFIED | problem_responses(404))
async def read_project(
    project: ValidProject, response: Response, if_none_match: IfNoneMatch = None
) -> Project | Response:
    """Read one project. `If-None-Match` with its ETag answers 304 while it is unchanged."""
    return conditional_read(project, response, if_none_match) or project


@router.patch(
    "/{project_id}",
    response_model=ProjectPublic,
    dependencies=[Depends(require_json_or_merge_patch)],
    responses=problem_responses(404, 409, 412, 413, 415),
)
async def update_project(
    project_id: uuid.UUID,
    body: ProjectUpdate,
    session: SessionDep,
    principal: PrincipalDep,
    response: Response,
    if_match: IfMatch = None,
) -> Project:
    """Change a project with a JSON merge patch. `If-Match` with its ETag guards against lost updates."""
    project = await projects.update_project(
        session=session,
        project_id=project_id,
        changes=body,
        expected_versions=acceptable_versions(if_match, project_id),
        principal=principal,
    )
    with_etag(response, project)
    return project


@router.delete("/{project_id}", status_code=204, responses=problem_responses(404, 412))
async def delete_project(
    project_id: uuid.UUID, session: SessionDep, principal: PrincipalDep, if_match: IfMatch = None
) -> None:
    """Delete a project and all its tasks. `If-Match` makes the delete conditional."""
    await projects.delete_project(
        session=session,
        project_id=project_id,
        expected_versions=acceptable_versions(if_match, project_id),
        principal=principal,
    )
