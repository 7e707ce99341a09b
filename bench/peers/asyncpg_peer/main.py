"""Benchmark peer: the practical limit of one worker: asyncpg directly, no ORM, no FastAPI.

An `@functions_framework.aio.http` function (served, like the service, by gunicorn with one
uvicorn worker) with minimal routing, hand-written SQL and stdlib `json` responses through a
Starlette `Response`. The pool (5 connections) is created lazily on the first request, inside
the worker's running loop: an asyncpg pool is bound to the loop it was made in.

    DATABASE_URL=postgresql+asyncpg://... functions-framework --target=tasks \
        --source=bench/peers/asyncpg_peer/main.py
"""

import asyncio
import base64
import binascii
import datetime
import json
import os
import uuid

import asyncpg
import functions_framework.aio
from starlette.datastructures import QueryParams
from starlette.requests import Request
from starlette.responses import Response

# asyncpg takes the plain libpq-style URL, `host=/socket/dir` query parameter included.
_DSN = os.environ["DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql://", 1)
_POOL_SIZE = 5

_COLUMNS = (
    "id, project_id, title, description, status, priority, due_date, "
    "created_at, updated_at, version, created_by, updated_by"
)
_GET_TASK = f"SELECT {_COLUMNS} FROM tasks WHERE id = $1"
_LIST_TASKS = f"SELECT {_COLUMNS} FROM tasks WHERE project_id = $1 ORDER BY created_at DESC, id DESC LIMIT $2"
_LIST_TASKS_AFTER = (
    f"SELECT {_COLUMNS} FROM tasks WHERE project_id = $1 AND (created_at, id) < ($3, $4) "
    "ORDER BY created_at DESC, id DESC LIMIT $2"
)
_PROJECT_EXISTS = "SELECT 1 FROM projects WHERE id = $1"
_INSERT_TASK = (
    "INSERT INTO tasks (project_id, title, description, status, priority, due_date) "
    f"VALUES ($1, $2, $3, $4, $5, $6) RETURNING {_COLUMNS}"
)
_DEFAULT_LIMIT, _MAX_LIMIT = 20, 100

_pool: "asyncio.Task[asyncpg.Pool] | None" = None


async def _get_pool() -> asyncpg.Pool:
    """One pool per worker; concurrent first requests all await the same creation."""
    global _pool
    if _pool is None or (_pool.done() and _pool.exception() is not None):  # a failed start is retried
        # min_size=1: like SQLAlchemy's pool, connections are opened as they are needed.
        _pool = asyncio.ensure_future(asyncpg.create_pool(_DSN, min_size=1, max_size=_POOL_SIZE))
    return await asyncio.shield(_pool)


def _json_default(value: object) -> str:
    if isinstance(value, datetime.date):  # dates and datetimes: RFC 3339
        return value.isoformat()
    return str(value)  # asyncpg's UUIDs


def _json(body: object, status: int = 200, headers: dict[str, str] | None = None) -> Response:
    content = json.dumps(body, default=_json_default, separators=(",", ":"))
    return Response(content, status_code=status, headers=headers, media_type="application/json")


def _page(query: QueryParams) -> tuple[int, tuple[datetime.datetime, uuid.UUID] | None] | None:
    """(limit, after) from `limit` (1-100, default 20) and `cursor`, or None when either is invalid."""
    limit = query.get("limit", str(_DEFAULT_LIMIT))
    if not limit.isdigit() or not 1 <= int(limit) <= _MAX_LIMIT:
        return None
    if "cursor" not in query:
        return int(limit), None
    try:
        cursor = query["cursor"]
        created_at, task_id = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().split("|")
        return int(limit), (datetime.datetime.fromisoformat(created_at), uuid.UUID(task_id))
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return None


def _not_found(what: str) -> Response:
    return _json({"detail": f"{what} not found"}, 404)


def _uuid_or_none(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


def _cursor(row: asyncpg.Record) -> str:
    """The same opaque cursor the service issues: `created_at|id`, base64url without padding."""
    raw = f"{row['created_at'].isoformat()}|{row['id']}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


async def get_task(task_id: uuid.UUID) -> Response:
    row = await (await _get_pool()).fetchrow(_GET_TASK, task_id)
    return _json(dict(row)) if row is not None else _not_found("task")


async def list_tasks(project_id: uuid.UUID, query: QueryParams) -> Response:
    page = _page(query)
    if page is None:
        return _json({"detail": "limit must be 1 to 100, cursor one this API issued"}, 422)
    limit, after = page
    async with (await _get_pool()).acquire() as conn:
        if after is None:
            rows = await conn.fetch(_LIST_TASKS, project_id, limit + 1)
        else:
            rows = await conn.fetch(_LIST_TASKS_AFTER, project_id, limit + 1, *after)
        if not rows and await conn.fetchval(_PROJECT_EXISTS, project_id) is None:
            return _not_found("project")
    next_cursor = _cursor(rows[limit - 1]) if len(rows) > limit else None
    return _json({"items": [dict(row) for row in rows[:limit]], "next_cursor": next_cursor})


async def create_task(project_id: uuid.UUID, request: Request) -> Response:
    try:
        body = json.loads(await request.body())
    except ValueError:
        body = None
    if not isinstance(body, dict) or not isinstance(body.get("title"), str) or not body["title"].strip():
        return _json({"detail": "a JSON object with a non-empty title is required"}, 422)
    try:
        due_date = datetime.date.fromisoformat(body["due_date"]) if body.get("due_date") else None
        row = await (await _get_pool()).fetchrow(
            _INSERT_TASK,
            project_id,
            body["title"].strip(),
            body.get("description"),
            body.get("status", "todo"),
            body.get("priority", 1),
            due_date,
        )
    except asyncpg.ForeignKeyViolationError:
        return _not_found("project")
    except (ValueError, TypeError, asyncpg.DataError, asyncpg.CheckViolationError):
        return _json({"detail": "a field has the wrong type or is out of range"}, 422)
    return _json(dict(row), 201, {"Location": f"/v1/tasks/{row['id']}"})


@functions_framework.aio.http
async def tasks(request: Request) -> Response:
    parts = request.url.path.strip("/").split("/")
    # /v1/tasks/{id}
    if len(parts) == 3 and parts[:2] == ["v1", "tasks"] and request.method == "GET":
        task_id = _uuid_or_none(parts[2])
        return await get_task(task_id) if task_id else _not_found("task")
    # /v1/projects/{id}/tasks
    if len(parts) == 4 and parts[:2] == ["v1", "projects"] and parts[3] == "tasks":
        project_id = _uuid_or_none(parts[2])
        if project_id is None:
            return _not_found("project")
        if request.method == "GET":
            return await list_tasks(project_id, request.query_params)
        if request.method == "POST":
            return await create_task(project_id, request)
        return _json({"detail": "method not allowed"}, 405)
    return _not_found("resource")
