"""Benchmark peer: the three endpoints written the way Google's Cloud SQL Python samples write them.

One plain `@functions_framework.http` (Flask) function that routes on `request.path` and
`request.method`, synchronous SQLAlchemy Core with psycopg 3, and the samples' pool settings
(QueuePool of 5, 2 overflow, 30 s timeout, 30 min recycle). functions-framework serves it with
gunicorn's gthread worker and the threads it chooses itself.

    DATABASE_URL=postgresql+asyncpg://... functions-framework --target=tasks \
        --source=bench/peers/flask_peer/main.py

Deliberately plain: no request ids, no problem documents, no ETags, no logging; bodies are
checked only as far as the insert needs.
"""

import base64
import binascii
import datetime
import os
import uuid
from collections.abc import Mapping

import flask
import functions_framework
import psycopg
import sqlalchemy

# The service's URL names the asyncpg driver; the same server and database are reached with psycopg 3.
# For the Unix-socket form (`...@/db?host=/socket/dir`) the `host` query parameter goes to psycopg as is.
_URL = os.environ["DATABASE_URL"].replace("postgresql+asyncpg://", "postgresql+psycopg://", 1)

# Made at import (in the gunicorn master, before the fork): create_engine opens no connection,
# so the worker starts with an empty pool of its own.
db = sqlalchemy.create_engine(
    _URL,
    pool_size=5,  # as in Google's samples
    max_overflow=2,
    pool_timeout=30,
    pool_recycle=1800,
)

_COLUMNS = (
    "id, project_id, title, description, status, priority, due_date, "
    "created_at, updated_at, version, created_by, updated_by"
)
_GET_TASK = sqlalchemy.text(f"SELECT {_COLUMNS} FROM tasks WHERE id = :id")
_LIST_TASKS = sqlalchemy.text(
    f"SELECT {_COLUMNS} FROM tasks WHERE project_id = :project_id ORDER BY created_at DESC, id DESC LIMIT :limit"
)
_LIST_TASKS_AFTER = sqlalchemy.text(
    f"SELECT {_COLUMNS} FROM tasks WHERE project_id = :project_id AND (created_at, id) < (:after_at, :after_id) "
    "ORDER BY created_at DESC, id DESC LIMIT :limit"
)
_PROJECT_EXISTS = sqlalchemy.text("SELECT 1 FROM projects WHERE id = :id")
_INSERT_TASK = sqlalchemy.text(
    "INSERT INTO tasks (project_id, title, description, status, priority, due_date) "
    f"VALUES (:project_id, :title, :description, :status, :priority, :due_date) RETURNING {_COLUMNS}"
)
# PATCH, to the peers' one spec: the fields sent, the version bumped, only while the version is the
# one If-Match names; no row back means 412.
_PATCHABLE = ("title", "description", "status", "priority", "due_date")
_DEFAULT_LIMIT, _MAX_LIMIT = 20, 100


def _if_match_version(header: str | None, task_id: uuid.UUID) -> int | None:
    """`"<id hex>.<version>"`, as the service's ETag; None for anything else."""
    prefix = f'"{task_id.hex}.'
    if header is None or not header.startswith(prefix) or not header.endswith('"'):
        return None
    version = header[len(prefix) : -1]
    return int(version) if version.isdigit() and len(version) <= 9 else None


def _row_to_dict(row: sqlalchemy.Row) -> dict:
    """A task as JSON-ready values, with the service's field names (RFC 3339 timestamps)."""
    task = dict(row._mapping)
    for key, value in task.items():
        if isinstance(value, uuid.UUID):
            task[key] = str(value)
        elif isinstance(value, datetime.date):  # datetimes too: both have isoformat()
            task[key] = value.isoformat()
    return task


def _cursor(row: sqlalchemy.Row) -> str:
    """The same opaque cursor the service issues: `created_at|id`, base64url without padding."""
    raw = f"{row.created_at.isoformat()}|{row.id}".encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _page(args: Mapping[str, str]) -> dict | None:
    """`limit` (1-100, default 20) and `cursor` as query values, or None when either is invalid."""
    limit = args.get("limit", str(_DEFAULT_LIMIT))
    if not limit.isdigit() or not 1 <= int(limit) <= _MAX_LIMIT:
        return None
    values = {"limit": int(limit) + 1}  # one row more tells whether another page exists
    if "cursor" in args:
        try:
            cursor = args["cursor"]
            created_at, task_id = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4)).decode().split("|")
            values |= {"after_at": datetime.datetime.fromisoformat(created_at), "after_id": uuid.UUID(task_id)}
        except (binascii.Error, UnicodeDecodeError, ValueError):
            return None
    return values


def _not_found(what: str) -> tuple[dict, int]:
    return {"detail": f"{what} not found"}, 404


def _uuid_or_none(text: str) -> uuid.UUID | None:
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


def get_task(task_id: uuid.UUID) -> tuple[dict, int]:
    with db.connect() as conn:
        row = conn.execute(_GET_TASK, {"id": task_id}).first()
    if row is None:
        return _not_found("task")
    return _row_to_dict(row), 200


def list_tasks(project_id: uuid.UUID, args: Mapping[str, str]) -> tuple[dict, int]:
    page = _page(args)
    if page is None:
        return {"detail": "limit must be 1 to 100, cursor one this API issued"}, 422
    statement, limit = (_LIST_TASKS_AFTER if "after_at" in page else _LIST_TASKS), page["limit"] - 1
    with db.connect() as conn:
        rows = conn.execute(statement, {"project_id": project_id, **page}).all()
        if not rows and conn.execute(_PROJECT_EXISTS, {"id": project_id}).first() is None:
            return _not_found("project")
    next_cursor = _cursor(rows[limit - 1]) if len(rows) > limit else None
    return {"items": [_row_to_dict(row) for row in rows[:limit]], "next_cursor": next_cursor}, 200


def create_task(project_id: uuid.UUID, request: flask.Request) -> tuple[dict, int] | flask.Response:
    body = request.get_json(silent=True)
    if not isinstance(body, dict) or not isinstance(body.get("title"), str) or not body["title"].strip():
        return {"detail": "a JSON object with a non-empty title is required"}, 422
    values = {
        "project_id": project_id,
        "title": body["title"].strip(),
        "description": body.get("description"),
        "status": body.get("status", "todo"),
        "priority": body.get("priority", 1),
        "due_date": body.get("due_date"),
    }
    try:
        with db.begin() as conn:  # one transaction, committed on leaving the block
            row = conn.execute(_INSERT_TASK, values).one()
    except sqlalchemy.exc.IntegrityError as error:
        if isinstance(error.orig, psycopg.errors.ForeignKeyViolation):
            return _not_found("project")
        return {"detail": "status or priority out of range"}, 422  # the table's CHECK constraints
    except sqlalchemy.exc.DataError:  # a value PostgreSQL cannot read as the column's type
        return {"detail": "a field has the wrong type"}, 422
    response = flask.jsonify(_row_to_dict(row))
    response.status_code = 201
    response.headers["Location"] = f"/v1/tasks/{row.id}"
    return response


def patch_task(task_id: uuid.UUID, request: flask.Request) -> tuple[dict, int] | flask.Response:
    body = request.get_json(silent=True, force=True)
    if not isinstance(body, dict) or not body or set(body) - set(_PATCHABLE):
        return {"detail": "a JSON merge patch of the task's fields is required"}, 422
    version = _if_match_version(request.headers.get("If-Match"), task_id)
    if version is None:
        return {"detail": "If-Match with the task's ETag is required"}, 428
    assignments = ", ".join(f"{name} = :{name}" for name in body)
    statement = sqlalchemy.text(
        f"UPDATE tasks SET {assignments}, version = version + 1, updated_at = now() "
        f"WHERE id = :id AND version = :version RETURNING {_COLUMNS}"
    )
    try:
        with db.begin() as conn:
            row = conn.execute(statement, {**body, "id": task_id, "version": version}).first()
    except (sqlalchemy.exc.IntegrityError, sqlalchemy.exc.DataError):
        return {"detail": "a field is out of range or has the wrong type"}, 422
    if row is None:
        return {"detail": "If-Match does not match the current ETag"}, 412
    response = flask.jsonify(_row_to_dict(row))
    response.headers["ETag"] = f'"{row.id.hex}.{row.version}"'
    return response


@functions_framework.http
def tasks(request: flask.Request) -> tuple[dict, int] | flask.Response:
    """Routes on the path and method, as a single Cloud Function does."""
    parts = request.path.strip("/").split("/")
    # /v1/tasks/{id}
    if len(parts) == 3 and parts[:2] == ["v1", "tasks"] and request.method in ("GET", "PATCH"):
        task_id = _uuid_or_none(parts[2])
        if task_id is None:
            return _not_found("task")
        return get_task(task_id) if request.method == "GET" else patch_task(task_id, request)
    # /v1/projects/{id}/tasks
    if len(parts) == 4 and parts[:2] == ["v1", "projects"] and parts[3] == "tasks":
        project_id = _uuid_or_none(parts[2])
        if project_id is None:
            return _not_found("project")
        if request.method == "GET":
            return list_tasks(project_id, request.args)
        if request.method == "POST":
            return create_task(project_id, request)
        return {"detail": "method not allowed"}, 405
    return _not_found("resource")
