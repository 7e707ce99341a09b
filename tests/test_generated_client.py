"""A typed client generated from the served /openapi.json, as README shows, drives a whole session.

openapi-python-client writes the client into a temporary folder at test time (nothing generated is
committed, so a resource a user adds needs no edit here), and the session goes through its typed
functions against the function served as Google's runtime serves it: every answer must parse into
the declared model, every problem into a ProblemDocument whose `type` is one of the enum's.

openapi-python-client 0.29 ignores declared response headers (ETag, Location, Idempotent-Replayed,
X-Request-ID): its `Response` carries them only in the raw `headers` map, which is where they are read.
"""

import importlib
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from tests.function_server import FunctionServer
from tests.helpers import unique

GENERATOR = Path(sys.executable).parent / "openapi-python-client"
PACKAGE = "generated_api_client"


@pytest.fixture(scope="module")
def generated(served: FunctionServer, tmp_path_factory: pytest.TempPathFactory) -> Iterator[ModuleType]:
    """README's command, with the output put in a temporary folder as a bare package."""
    folder = tmp_path_factory.mktemp("client")
    command = [str(GENERATOR), "generate", "--url", f"{served.base_url}/openapi.json"]
    command += ["--meta", "none", "--output-path", str(folder / PACKAGE)]
    result = subprocess.run(command, cwd=folder, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0 and (folder / PACKAGE / "client.py").is_file(), result.stdout + result.stderr
    assert "Warning" not in result.stdout, result.stdout  # a piece of the document it could not use
    sys.path.insert(0, str(folder))
    try:
        yield importlib.import_module(PACKAGE)
    finally:
        sys.path.remove(str(folder))
        for name in [name for name in sys.modules if name == PACKAGE or name.startswith(f"{PACKAGE}.")]:
            del sys.modules[name]


def _module(package: ModuleType, name: str) -> Any:
    return importlib.import_module(f"{package.__name__}.{name}")


def _problem(package: ModuleType, response: Any, status: int, problem_type: str) -> Any:
    models = _module(package, "models")
    assert response.status_code == status, response.content
    problem = response.parsed
    assert isinstance(problem, models.ProblemDocument), problem
    assert problem.status == status and str(problem.type_) == problem_type
    assert problem.request_id == response.headers["x-request-id"]
    return problem


def test_a_generated_client_drives_a_whole_session(generated: ModuleType, served: FunctionServer) -> None:
    models = _module(generated, "models")
    projects = _module(generated, "api.projects")
    tasks = _module(generated, "api.tasks")
    create_project = _module(projects, "create_project")
    read_project, list_projects = _module(projects, "read_project"), _module(projects, "list_projects")
    update_project, delete_project = _module(projects, "update_project"), _module(projects, "delete_project")
    create_task, read_task, list_tasks = (_module(tasks, name) for name in ("create_task", "read_task", "list_tasks"))
    update_task = _module(tasks, "update_task")
    client = generated.Client(base_url=served.base_url, raise_on_unexpected_status=True)

    # a keyed create and its replay
    key, name = str(uuid.uuid4()), unique("generated")
    created = create_project.sync_detailed(client=client, body=models.ProjectCreate(name=name), idempotency_key=key)
    assert created.status_code == 201 and isinstance(created.parsed, models.ProjectPublic)
    project = created.parsed
    assert created.headers["location"] == f"/v1/projects/{project.id}"
    replay = create_project.sync_detailed(client=client, body=models.ProjectCreate(name=name), idempotency_key=key)
    assert replay.status_code == 201 and replay.parsed.id == project.id
    assert replay.headers["idempotent-replayed"] == "true"
    _problem(
        generated,
        create_project.sync_detailed(client=client, body=models.ProjectCreate(name=name)),
        409,
        "urn:problem-type:conflict",
    )

    # a page walk
    made = {
        create_task.sync(project.id, client=client, body=models.TaskCreate(title=f"task {n}", priority=n % 4)).id
        for n in range(5)
    }
    seen: list[uuid.UUID] = []
    cursor, pages = _module(generated, "types").UNSET, 0
    while True:
        page = list_tasks.sync(project.id, client=client, limit=2, cursor=cursor)
        assert isinstance(page, models.PageTaskPublic)
        seen += [task.id for task in page.items]
        pages += 1
        if not page.next_cursor:
            break
        cursor = page.next_cursor
    assert set(seen) == made and len(seen) == len(made) and pages == 3
    assert list_projects.sync(client=client, q=name).items[0].id == project.id

    # a conditional GET
    read = read_project.sync_detailed(project.id, client=client)
    tag = read.headers["etag"]
    unchanged = read_project.sync_detailed(project.id, client=client, if_none_match=tag)
    assert unchanged.status_code == 304 and unchanged.parsed is None and unchanged.headers["etag"] == tag

    # PATCH with If-Match, then a stale one; a null the schema allows clears; a bound refused is a typed 422
    changed = update_project.sync_detailed(
        project.id, client=client, body=models.ProjectUpdate(description=None), if_match=tag
    )
    assert changed.status_code == 200 and changed.parsed.description is None and changed.parsed.version == 2
    stale = update_project.sync_detailed(
        project.id, client=client, body=models.ProjectUpdate(description="x"), if_match=tag
    )
    _problem(generated, stale, 412, "urn:problem-type:precondition-failed")
    a_task = next(iter(made))
    moved = update_task.sync(a_task, client=client, body=models.TaskUpdate(status=models.TaskStatus.DONE, priority=0))
    assert isinstance(moved, models.TaskPublic) and moved.status == models.TaskStatus.DONE
    invalid = update_task.sync_detailed(a_task, client=client, body=models.TaskUpdate(priority=9))
    problem = _problem(generated, invalid, 422, "urn:problem-type:validation-error")
    assert [error.loc for error in problem.errors] == [["body", "priority"]]

    # a DELETE, and the typed 404 after it
    assert delete_project.sync_detailed(project.id, client=client, if_match=changed.headers["etag"]).status_code == 204
    _problem(generated, read_project.sync_detailed(project.id, client=client), 404, "urn:problem-type:not-found")
    _problem(generated, read_task.sync_detailed(a_task, client=client), 404, "urn:problem-type:not-found")
