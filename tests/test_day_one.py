"""The changes a new user makes on day one, the way FastAPI's and SQLModel's docs teach them, stay safe.

On one copy of the checkout (as tests/test_walkthrough.py makes it), served over HTTP by its
`make run` with AUTH_MODE=oidc:

- a column added to the `Project` table model and left out of `ProjectPublic` is in no answer
  (create, read, list, an idempotent replay, the answer kept for its key): the response model is
  the filter;
- routers added outside /v1 (`/v2/reports`, `/admin`) answer 401 to a caller without a token and
  200 to a verified one, while `/healthz` stays open: authentication is deny-by-default;
- a task column with a `default_factory` is filled on create.
"""

import asyncio
import re
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx

from tests.function_server import free_port
from tests.helpers import admin, assert_problem, fetch, run_alembic, unique
from tests.identity_fakes import AUDIENCE, Issuer
from tests.local_run import run_local, stop_with_ctrl_c, wait_until_serving
from tests.test_walkthrough import copy_checkout

NOTE = "kept in-house"

REPORTS = '''"""Reports, and an admin page: routers of their own, outside /v1."""

from fastapi import APIRouter

router = APIRouter(prefix="/v2/reports", tags=["reports"])
admin = APIRouter(prefix="/admin", tags=["admin"])


@router.get("")
async def list_reports() -> dict[str, int]:
    return {"reports": 0}


@admin.get("/stats")
async def stats() -> dict[str, str]:
    return {"stats": "for staff only"}
'''

# (file, the line as shipped, the line after the change): each line must occur exactly once.
EDITS = [
    (
        "app/projects/models.py",
        "    description: str | None = Field(default=None, max_length=2_000)\n",
        "    description: str | None = Field(default=None, max_length=2_000)\n"
        f'    internal_note: str = Field(default="{NOTE}")\n',
    ),
    (
        "app/tasks/models.py",
        "    due_date: date | None = None\n",
        "    due_date: date | None = None\n    ref: str = Field(default_factory=lambda: uuid.uuid4().hex)\n",
    ),
    (
        "app/api.py",
        "RESOURCE_ROUTERS = [projects_router, tasks_router]\n",
        "RESOURCE_ROUTERS = [projects_router, tasks_router, reports.router, reports.admin]\n",
    ),
    (
        "app/api.py",
        "from app.tasks.routes import router as tasks_router\n",
        "from app.tasks.routes import router as tasks_router\nfrom app import reports\n",
    ),
]
# The columns, as the user's migration would add them (no server default for `ref`: the app fills it).
COLUMNS = [
    f"ALTER TABLE projects ADD COLUMN internal_note varchar NOT NULL DEFAULT '{NOTE}'",
    "ALTER TABLE tasks ADD COLUMN ref varchar NOT NULL",
]


def make_day_one_changes(repository: Path) -> None:
    for name, old, new in EDITS:
        path = repository / name
        text = path.read_text()
        assert text.count(old) == 1, f"{name}: {old!r} occurs {text.count(old)} times, not once"
        path.write_text(text.replace(old, new))
    (repository / "app" / "reports.py").write_text(REPORTS)


def _no_unlisted_column(response: httpx.Response, status: int) -> dict[str, Any]:
    assert response.status_code == status, response.text
    assert "internal_note" not in response.text and NOTE not in response.text, response.text
    body: dict[str, Any] = response.json()
    return body


async def _add_columns(database_url: str) -> None:
    for statement in COLUMNS:
        await admin(database_url, statement)


def test_day_one_changes_on_a_copy_stay_safe(
    tmp_path: Path, create_database: Callable[[], str], issuer: Issuer
) -> None:
    repository = copy_checkout(tmp_path / "repository")
    make_day_one_changes(repository)
    database_url = create_database()
    run_alembic(database_url, "upgrade", "head")
    asyncio.run(_add_columns(database_url))
    port = free_port()
    settings = {
        "PORT": str(port),
        "DATABASE_URL": database_url,
        "AUTH_MODE": "oidc",
        "AUTH_AUDIENCE": AUDIENCE,
        "OIDC_ISSUER": issuer.issuer,
        "OIDC_JWKS_URL": issuer.jwks_url,
    }
    with run_local(repository, **settings) as server:
        wait_until_serving(server)
        token = {"Authorization": f"Bearer {issuer.token('alice@example.com')}"}
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as http:
            # Routers outside /v1: deny-by-default.
            for path in ["/v2/reports", "/admin/stats", "/admin", "/v2/nowhere"]:
                assert_problem(http.get(path), 401)
                assert_problem(http.post(path), 401)
            assert http.get("/v2/reports", headers=token).json() == {"reports": 0}
            assert http.get("/admin/stats", headers=token).json() == {"stats": "for staff only"}
            assert http.get("/healthz").status_code == 200
            spec = http.get("/openapi.json").json()
            assert spec["paths"]["/admin/stats"]["get"]["security"] == [{"HTTPBearer": []}]
            assert "security" not in spec["paths"]["/healthz"]["get"]

            # The column nobody published: in the database, in no answer.
            name = unique("day-one")
            keyed = token | {"Idempotency-Key": unique("key")}
            created = _no_unlisted_column(http.post("/v1/projects", json={"name": name}, headers=keyed), 201)
            replayed = http.post("/v1/projects", json={"name": name}, headers=keyed)
            assert replayed.headers.get("idempotent-replayed") == "true"
            assert _no_unlisted_column(replayed, 201) == created
            query = "SELECT body || resource::text AS kept FROM idempotency_keys WHERE key = $1"
            (kept,) = asyncio.run(fetch(database_url, query, keyed["Idempotency-Key"]))
            assert "internal_note" not in kept["kept"] and NOTE not in kept["kept"], kept[
                "kept"
            ]  # nor after a rollback
            _no_unlisted_column(http.get(f"/v1/projects/{created['id']}", headers=token), 200)
            listed = _no_unlisted_column(http.get("/v1/projects", params={"q": name}, headers=token), 200)
            assert [project["id"] for project in listed["items"]] == [created["id"]]
            stored = asyncio.run(fetch(database_url, "SELECT internal_note FROM projects WHERE name = $1", name))
            assert [row["internal_note"] for row in stored] == [NOTE]

            # The default_factory column: filled on create.
            task = http.post(f"/v1/projects/{created['id']}/tasks", json={"title": "Draft"}, headers=token)
            assert task.status_code == 201, task.text
            (row,) = asyncio.run(
                fetch(database_url, "SELECT ref FROM tasks WHERE id = $1", uuid.UUID(task.json()["id"]))
            )
            assert re.fullmatch(r"[0-9a-f]{32}", row["ref"]), row["ref"]
        stop_with_ctrl_c(server, port)
