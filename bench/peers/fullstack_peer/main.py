"""Benchmark peer: the three endpoints as full-stack-fastapi-template's backend writes its CRUD routes.

That template is what most FastAPI + SQLModel services start from: a synchronous SQLModel
`Session` per request from a generator dependency (`SessionDep`), plain `def` routes (FastAPI runs
them, and the sync dependency, in its thread pool), `session.get` / `session.exec(select(...))` on
SQLModel table classes, `Model.model_validate(body, update=...)`, `session.add` + `commit` +
`refresh` for a create, and `response_model=` validating the returned ORM objects. Its engine is
`create_engine("postgresql+psycopg://...")`: sync SQLAlchemy over psycopg 3. Pool of 5 + 2, as
every server in the benchmark (the template keeps SQLAlchemy's default 5 + 10).

Served like the service: an `@functions_framework.aio.http` function handing the ASGI call to the
app, gunicorn with one uvicorn worker. No logs, auth, ETags or idempotency.

    DATABASE_URL=postgresql+asyncpg://... functions-framework --target=tasks \
        --source=bench/peers/fullstack_peer/main.py
"""

import base64
import binascii
import os
import uuid
from collections.abc import Generator
from datetime import UTC, date, datetime
from enum import StrEnum
from typing import Annotated, Any

import functions_framework.aio
from fastapi import Depends, FastAPI, HTTPException, Query, Response
from pydantic import StringConstraints
from sqlalchemy import SmallInteger, String, tuple_
from sqlalchemy.exc import IntegrityError
from sqlmodel import Field, Session, SQLModel, col, create_engine, select
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

# ---- core/db.py: one engine; the service's URL names asyncpg, the template's psycopg 3

engine = create_engine(
    os.environ["DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql+psycopg://", 1),
    pool_size=5,
    max_overflow=2,
)


# ---- models.py: a base with the shared fields, the table, the create and public schemas


def _now() -> datetime:
    return datetime.now(UTC)


class TaskStatus(StrEnum):
    todo = "todo"
    in_progress = "in_progress"
    done = "done"


class Project(SQLModel, table=True):
    __tablename__ = "projects"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    name: str = Field(max_length=100)


class TaskBase(SQLModel):
    title: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    description: str | None = Field(default=None, max_length=10_000)
    status: TaskStatus = Field(default=TaskStatus.todo, sa_type=String(20))
    priority: int = Field(default=1, ge=0, le=3, sa_type=SmallInteger)
    due_date: date | None = None


class TaskCreate(TaskBase):
    pass


class Task(TaskBase, table=True):
    __tablename__ = "tasks"

    id: uuid.UUID = Field(default_factory=uuid.uuid4, primary_key=True)
    project_id: uuid.UUID = Field(foreign_key="projects.id", nullable=False)
    created_at: datetime = Field(default_factory=_now)
    updated_at: datetime = Field(default_factory=_now)
    version: int = 1
    created_by: str | None = None
    updated_by: str | None = None


class TaskPublic(TaskBase):
    id: uuid.UUID
    project_id: uuid.UUID
    created_at: datetime
    updated_at: datetime
    version: int
    created_by: str | None
    updated_by: str | None


class TasksPublic(SQLModel):
    items: list[TaskPublic]
    next_cursor: str | None


# ---- api/deps.py


def get_db() -> Generator[Session, None, None]:
    with Session(engine) as session:
        yield session


SessionDep = Annotated[Session, Depends(get_db)]


# ---- api/routes/tasks.py


def encode_cursor(task: Task) -> str:
    """The service's cursor: `created_at|id`, base64url without padding."""
    return base64.urlsafe_b64encode(f"{task.created_at.isoformat()}|{task.id}".encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        created_at, task_id = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().split("|")
        return datetime.fromisoformat(created_at), uuid.UUID(task_id)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        raise HTTPException(status_code=422, detail="Invalid cursor") from None


app = FastAPI()


@app.get("/v1/tasks/{task_id}", response_model=TaskPublic)
def read_task(session: SessionDep, task_id: uuid.UUID) -> Any:
    task = session.get(Task, task_id)
    if not task:
        raise HTTPException(status_code=404, detail="Task not found")
    return task


@app.get("/v1/projects/{project_id}/tasks", response_model=TasksPublic)
def read_tasks(
    session: SessionDep,
    project_id: uuid.UUID,
    limit: Annotated[int, Query(ge=1, le=100)] = 20,
    cursor: Annotated[str | None, Query(max_length=200)] = None,
) -> Any:
    statement = (
        select(Task)
        .where(Task.project_id == project_id)
        .order_by(col(Task.created_at).desc(), col(Task.id).desc())
        .limit(limit + 1)
    )
    if cursor:
        statement = statement.where(tuple_(col(Task.created_at), col(Task.id)) < tuple_(*decode_cursor(cursor)))
    tasks = session.exec(statement).all()
    if not tasks and not session.get(Project, project_id):
        raise HTTPException(status_code=404, detail="Project not found")
    next_cursor = encode_cursor(tasks[limit - 1]) if len(tasks) > limit else None
    return TasksPublic(items=tasks[:limit], next_cursor=next_cursor)


@app.post("/v1/projects/{project_id}/tasks", response_model=TaskPublic, status_code=201)
def create_task(*, session: SessionDep, project_id: uuid.UUID, task_in: TaskCreate, response: Response) -> Any:
    task = Task.model_validate(task_in, update={"project_id": project_id})
    session.add(task)
    try:
        session.commit()
    except IntegrityError:  # the only constraint a validated body can break: the project's foreign key
        session.rollback()
        raise HTTPException(status_code=404, detail="Project not found") from None
    session.refresh(task)
    response.headers["Location"] = f"/v1/tasks/{task.id}"
    return task


# ---- served by functions-framework: the function hands the raw ASGI call to the app (the same few
# lines in both FastAPI peers: each peer is one file that can be read, and run, on its own)

_FRAMEWORK_SCOPE_KEYS = frozenset({"router", "endpoint", "route", "path_params", "app"})


class _ServedByApp(Response):
    def __init__(self) -> None:  # the app writes the response itself
        pass

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        # Without the framework's routing keys, FastAPI routes the path as if it were the server.
        await app({key: value for key, value in scope.items() if key not in _FRAMEWORK_SCOPE_KEYS}, receive, send)


@functions_framework.aio.http
async def tasks(request: Request) -> Response:
    return _ServedByApp()
