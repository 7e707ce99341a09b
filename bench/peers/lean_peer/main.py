"""Benchmark peer: lean FastAPI on SQLModel tables, the fastest way that still reads as FastAPI + SQLModel.

What a performance-minded engineer writes with these libraries: SQLModel table classes for the
schema, every statement built once at import with SQLAlchemy Core from those tables, no ORM session
(no identity map, no unit of work) on any request, the reads on the asyncpg connection under a
connection from SQLAlchemy's async pool, the write as one Core INSERT ... RETURNING in a
transaction on an `AsyncConnection`, each response rendered once by orjson into a `Response`
(no `response_model` validation, no `jsonable_encoder`), and one small async dependency. Served
like the service: an `@functions_framework.aio.http` function handing the ASGI call to the app,
gunicorn with one uvicorn worker (uvloop and httptools, as installed). No ETags, logs, auth or
idempotency: what it does not do is what the service's features cost.

    DATABASE_URL=postgresql+asyncpg://... functions-framework --target=tasks \
        --source=bench/peers/lean_peer/main.py
"""

import base64
import binascii
import os
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import date, datetime
from enum import StrEnum
from typing import Annotated, Any

import asyncpg
import functions_framework.aio
import orjson
from fastapi import Depends, FastAPI, Header, HTTPException, Query, Response
from pydantic import StringConstraints
from sqlalchemy import FetchedValue, SmallInteger, String, bindparam, exists, func, insert, select, tuple_, update
from sqlalchemy.dialects.postgresql import asyncpg as asyncpg_dialect
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import create_async_engine
from sqlalchemy.util import greenlet_spawn
from sqlmodel import Field, SQLModel
from starlette.requests import Request
from starlette.types import Receive, Scope, Send

# ---- the schema: SQLModel tables (the service's migrations made them; nothing is created here)


class TaskStatus(StrEnum):
    todo = "todo"
    in_progress = "in_progress"
    done = "done"


class Project(SQLModel, table=True):
    __tablename__ = "projects"

    id: uuid.UUID = Field(primary_key=True)
    name: str = Field(max_length=100)


_SET_BY_DATABASE: Any = {"server_default": FetchedValue()}  # id, timestamps and version: the table's defaults


class Task(SQLModel, table=True):
    __tablename__ = "tasks"

    id: uuid.UUID = Field(primary_key=True, sa_column_kwargs=_SET_BY_DATABASE)
    project_id: uuid.UUID = Field(foreign_key="projects.id")
    title: str = Field(max_length=200)
    description: str | None = Field(default=None, max_length=10_000)
    status: TaskStatus = Field(default=TaskStatus.todo, sa_type=String(20))
    priority: int = Field(default=1, sa_type=SmallInteger)
    due_date: date | None = None
    created_at: datetime = Field(sa_column_kwargs=_SET_BY_DATABASE)
    updated_at: datetime = Field(sa_column_kwargs=_SET_BY_DATABASE)
    version: int = Field(sa_column_kwargs=_SET_BY_DATABASE)
    created_by: str | None = None
    updated_by: str | None = None


class TaskUpdate(SQLModel):
    """A JSON merge patch of the task's fields (the ones sent are set)."""

    model_config = {"extra": "forbid"}

    title: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)] | None = None
    description: Annotated[str, StringConstraints(max_length=10_000)] | None = None
    status: TaskStatus | None = None
    priority: int | None = Field(default=None, ge=0, le=3)
    due_date: date | None = None


class TaskCreate(SQLModel):
    """The request body, validated by FastAPI (a plain model: no table, no ORM state)."""

    model_config = {"extra": "forbid"}

    title: Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
    description: Annotated[str, StringConstraints(max_length=10_000)] | None = None
    status: TaskStatus = TaskStatus.todo
    priority: int = Field(default=1, ge=0, le=3)
    due_date: date | None = None


# ---- statements, built once from the tables

tasks_table, projects_table = Task.__table__, Project.__table__  # type: ignore[attr-defined]
_DIALECT = asyncpg_dialect.dialect()


class Statement:
    """A Core statement compiled once to asyncpg's `$n` SQL, run with named values on the driver."""

    def __init__(self, statement: Any) -> None:
        compiled = statement.compile(dialect=_DIALECT)
        self.sql, self.names = str(compiled), tuple(compiled.positiontup)

    def arguments(self, values: dict[str, Any]) -> list[Any]:
        return [values[name] for name in self.names]


_NEWEST_FIRST = (tasks_table.c.created_at.desc(), tasks_table.c.id.desc())
_PAGE = select(tasks_table).where(tasks_table.c.project_id == bindparam("project_id")).order_by(*_NEWEST_FIRST)
_AFTER = tuple_(tasks_table.c.created_at, tasks_table.c.id) < tuple_(bindparam("after_at"), bindparam("after_id"))
GET_TASK = Statement(select(tasks_table).where(tasks_table.c.id == bindparam("id")))
FIRST_PAGE = Statement(_PAGE.limit(bindparam("limit")))
LATER_PAGE = Statement(_PAGE.where(_AFTER).limit(bindparam("limit")))
PROJECT_EXISTS = Statement(select(exists().where(projects_table.c.id == bindparam("project_id"))))
INSERT_TASK = insert(tasks_table).returning(*tasks_table.c)  # run through SQLAlchemy: values vary per body
# PATCH, to the peers' one spec: the fields sent, the version bumped, only while the version is the
# one If-Match names (UPDATE ... WHERE id = $1 AND version = $2 ... RETURNING); no row means 412.
# The WHERE's parameters must not be named as a column: in an UPDATE, SQLAlchemy reserves those
# names for the SET clause and refuses to compile the statement ("bindparam() name 'id' is reserved").
_MATCHED = (tasks_table.c.id == bindparam("task_id"), tasks_table.c.version == bindparam("expected_version"))
UPDATE_TASK = update(tasks_table).where(*_MATCHED).returning(*tasks_table.c)

# ---- the pool: SQLAlchemy's async engine; created at import, it connects on first use in the worker

engine = create_async_engine(
    os.environ["DATABASE_URL"],  # postgresql+asyncpg://...
    pool_size=5,  # connections kept open, as every server in the benchmark
    max_overflow=2,  # extra connections under bursts
    pool_recycle=1800,  # reopen connections older than 30 min
)


@asynccontextmanager
async def driver_connection() -> AsyncIterator[asyncpg.Connection]:
    """The asyncpg connection under a pooled one: reads skip SQLAlchemy's result layer entirely.
    Autocommit: a lone SELECT needs no BEGIN; returning it to the pool rolls back nothing."""
    pooled = await greenlet_spawn(engine.sync_engine.raw_connection)
    try:
        yield pooled.driver_connection
    finally:
        await greenlet_spawn(pooled.close)


def json_response(content: Any, status_code: int = 200, headers: dict[str, str] | None = None) -> Response:
    body = orjson.dumps(content, default=str, option=orjson.OPT_UTC_Z)  # default: asyncpg's UUID type
    return Response(body, status_code=status_code, headers=headers, media_type="application/json")


# ---- the page cursor: `created_at|id`, base64url without padding (as the service's)


@dataclass(frozen=True, slots=True)
class PageRequest:
    limit: int
    after: tuple[datetime, uuid.UUID] | None


def encode_cursor(row: asyncpg.Record) -> str:
    return base64.urlsafe_b64encode(f"{row['created_at'].isoformat()}|{row['id']}".encode()).decode().rstrip("=")


async def page_request(
    limit: Annotated[int, Query(ge=1, le=100)] = 20, cursor: Annotated[str | None, Query(max_length=200)] = None
) -> PageRequest:
    if cursor is None:
        return PageRequest(limit, None)
    try:
        created_at, row_id = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().split("|")
        after = datetime.fromisoformat(created_at), uuid.UUID(row_id)
    except (binascii.Error, UnicodeDecodeError, ValueError):
        after = None
    if after is None or after[0].tzinfo is None:
        raise HTTPException(422, "the cursor is not valid")
    return PageRequest(limit, after)


# ---- the routes

app = FastAPI()


@app.get("/v1/tasks/{task_id}")
async def read_task(task_id: uuid.UUID) -> Response:
    async with driver_connection() as connection:
        row = await connection.fetchrow(GET_TASK.sql, task_id)
    if row is None:
        raise HTTPException(404, "task not found")
    return json_response(dict(row))


@app.get("/v1/projects/{project_id}/tasks")
async def list_tasks(project_id: uuid.UUID, page: Annotated[PageRequest, Depends(page_request)]) -> Response:
    values: dict[str, Any] = {"project_id": project_id, "limit": page.limit + 1}
    statement = FIRST_PAGE
    if page.after is not None:
        statement = LATER_PAGE
        values |= {"after_at": page.after[0], "after_id": page.after[1]}
    async with driver_connection() as connection:
        rows = await connection.fetch(statement.sql, *statement.arguments(values))
        if not rows and not await connection.fetchval(PROJECT_EXISTS.sql, project_id):
            raise HTTPException(404, "project not found")
    next_cursor = encode_cursor(rows[page.limit - 1]) if len(rows) > page.limit else None
    return json_response({"items": [dict(row) for row in rows[: page.limit]], "next_cursor": next_cursor})


@app.post("/v1/projects/{project_id}/tasks", status_code=201)
async def create_task(project_id: uuid.UUID, body: TaskCreate) -> Response:
    try:
        async with engine.begin() as connection:  # one transaction, committed on leaving the block
            result = await connection.execute(INSERT_TASK, body.model_dump() | {"project_id": project_id})
            row = result.mappings().one()
    except IntegrityError as error:
        if getattr(error.orig, "sqlstate", None) == asyncpg.ForeignKeyViolationError.sqlstate:
            raise HTTPException(404, "project not found") from None
        raise
    return json_response(dict(row), 201, {"Location": f"/v1/tasks/{row['id']}"})


@app.patch("/v1/tasks/{task_id}")
async def patch_task(
    task_id: uuid.UUID, body: TaskUpdate, if_match: Annotated[str | None, Header()] = None
) -> Response:
    prefix = f'"{task_id.hex}.'
    version = if_match[len(prefix) : -1] if if_match and if_match.startswith(prefix) and if_match.endswith('"') else ""
    if not version.isdigit() or len(version) > 9:
        raise HTTPException(428, "If-Match with the task's ETag is required")
    changes = body.model_dump(exclude_unset=True) | {"version": tasks_table.c.version + 1, "updated_at": func.now()}
    async with engine.begin() as connection:  # one transaction, committed on leaving the block
        result = await connection.execute(
            UPDATE_TASK.values(changes), {"task_id": task_id, "expected_version": int(version)}
        )
        row = result.mappings().first()
    if row is None:
        raise HTTPException(412, "If-Match does not match the current ETag")
    return json_response(dict(row), 200, {"ETag": f'"{row["id"].hex}.{row["version"]}"'})


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
