"""Every row of the contract's Tasks table, through HTTP."""

import asyncio
from typing import Any

import httpx
import pytest

from tests.helpers import MISSING_ID, assert_problem, error_locations, unique


async def test_create_returns_201_with_defaults_location_and_etag(
    client: httpx.AsyncClient, project: dict[str, Any]
) -> None:
    response = await client.post(f"/v1/projects/{project['id']}/tasks", json={"title": "  Write tests  "})
    assert response.status_code == 201
    task = response.json()
    assert response.headers["location"] == f"/v1/tasks/{task['id']}"
    assert response.headers["etag"]
    assert task["project_id"] == project["id"]
    assert (task["title"], task["status"], task["priority"], task["due_date"]) == ("Write tests", "todo", 1, None)
    assert (task["description"], task["version"], task["created_by"], task["updated_by"]) == (None, 1, None, None)


async def test_create_stores_every_field(client: httpx.AsyncClient, project: dict[str, Any]) -> None:
    body = {"title": "t", "description": "d" * 10_000, "status": "in_progress", "priority": 0, "due_date": "2027-02-28"}
    task = (await client.post(f"/v1/projects/{project['id']}/tasks", json=body)).json()
    assert {key: task[key] for key in body} == body


async def test_create_under_a_missing_project_is_404(client: httpx.AsyncClient) -> None:
    response = await client.post(f"/v1/projects/{MISSING_ID}/tasks", json={"title": "orphan"})
    assert MISSING_ID in assert_problem(response, 404)["detail"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"title": ""}, "title"),
        ({"title": " \n "}, "title"),
        ({"title": "x" * 201}, "title"),
        ({}, "title"),
        ({"title": "t", "description": "d" * 10_001}, "description"),
        ({"title": "t", "status": "blocked"}, "status"),
        ({"title": "t", "priority": 4}, "priority"),
        ({"title": "t", "priority": -1}, "priority"),
        ({"title": "t", "priority": True}, "priority"),
        ({"title": "t", "priority": "1"}, "priority"),
        ({"title": "t", "priority": 1.5}, "priority"),
        ({"title": "t", "due_date": "28/02/2027"}, "due_date"),
        ({"title": "t", "due_date": "2027-02-30"}, "due_date"),
        ({"title": "t", "project_id": MISSING_ID}, "project_id"),
        ({"title": "t", "version": 3}, "version"),
    ],
)
async def test_create_rejects_invalid_fields(
    client: httpx.AsyncClient, project: dict[str, Any], body: dict[str, Any], field: str
) -> None:
    response = await client.post(f"/v1/projects/{project['id']}/tasks", json=body)
    assert ["body", field] in error_locations(assert_problem(response, 422))


async def test_list_returns_the_projects_tasks_newest_first(client: httpx.AsyncClient, project: dict[str, Any]) -> None:
    ids = [
        (await client.post(f"/v1/projects/{project['id']}/tasks", json={"title": f"t{n}"})).json()["id"]
        for n in range(3)
    ]
    other = (await client.post("/v1/projects", json={"name": unique()})).json()
    await client.post(f"/v1/projects/{other['id']}/tasks", json={"title": "elsewhere"})
    page = (await client.get(f"/v1/projects/{project['id']}/tasks")).json()
    assert [item["id"] for item in page["items"]] == ids[::-1]
    assert page["next_cursor"] is None


async def test_list_filters_by_status(client: httpx.AsyncClient, project: dict[str, Any]) -> None:
    url = f"/v1/projects/{project['id']}/tasks"
    for status in ["todo", "done", "in_progress", "done"]:
        await client.post(url, json={"title": status, "status": status})
    done = (await client.get(url, params={"status": "done"})).json()["items"]
    assert [item["status"] for item in done] == ["done", "done"]
    assert_problem(await client.get(url, params={"status": "someday"}), 422)


async def test_list_of_an_empty_project_is_an_empty_page(client: httpx.AsyncClient, project: dict[str, Any]) -> None:
    response = await client.get(f"/v1/projects/{project['id']}/tasks")
    assert response.json() == {"items": [], "next_cursor": None}


async def test_list_of_a_missing_project_is_404(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get(f"/v1/projects/{MISSING_ID}/tasks"), 404)


async def test_read_returns_the_task_and_304_when_unchanged(client: httpx.AsyncClient, task: dict[str, Any]) -> None:
    response = await client.get(f"/v1/tasks/{task['id']}")
    assert response.status_code == 200
    assert response.json() == task
    again = await client.get(f"/v1/tasks/{task['id']}", headers={"If-None-Match": response.headers["etag"]})
    assert (again.status_code, again.content, again.headers["etag"]) == (304, b"", response.headers["etag"])


async def test_read_of_a_missing_or_malformed_task(client: httpx.AsyncClient) -> None:
    assert_problem(await client.get(f"/v1/tasks/{MISSING_ID}"), 404)
    assert_problem(await client.get("/v1/tasks/42"), 422)


async def test_patch_merges_and_clears_nullable_fields(client: httpx.AsyncClient, project: dict[str, Any]) -> None:
    body = {"title": "t", "description": "d", "due_date": "2027-01-01", "priority": 3}
    task = (await client.post(f"/v1/projects/{project['id']}/tasks", json=body)).json()
    response = await client.patch(
        f"/v1/tasks/{task['id']}", json={"status": "done", "description": None, "due_date": None}
    )
    assert response.status_code == 200
    patched = response.json()
    assert (patched["status"], patched["description"], patched["due_date"]) == ("done", None, None)
    assert (patched["title"], patched["priority"], patched["version"]) == ("t", 3, 2)


async def test_patch_changes_the_etag(client: httpx.AsyncClient, task: dict[str, Any]) -> None:
    url = f"/v1/tasks/{task['id']}"
    before = (await client.get(url)).headers["etag"]
    after = (await client.patch(url, json={"priority": 0})).headers["etag"]
    assert before != after
    assert (await client.get(url)).headers["etag"] == after


@pytest.mark.parametrize("field", ["title", "status", "priority", "project_id"])
async def test_patch_refuses_null_for_required_fields(
    client: httpx.AsyncClient, task: dict[str, Any], field: str
) -> None:
    response = await client.patch(f"/v1/tasks/{task['id']}", json={field: None})
    assert ["body", field] in error_locations(assert_problem(response, 422))


async def test_patch_moves_a_task_to_another_project(client: httpx.AsyncClient, task: dict[str, Any]) -> None:
    target = (await client.post("/v1/projects", json={"name": unique("target")})).json()
    moved = (await client.patch(f"/v1/tasks/{task['id']}", json={"project_id": target["id"]})).json()
    assert moved["project_id"] == target["id"]
    listed = (await client.get(f"/v1/projects/{target['id']}/tasks")).json()["items"]
    assert [item["id"] for item in listed] == [task["id"]]


async def test_patch_to_a_missing_project_is_422_and_changes_nothing(
    client: httpx.AsyncClient, task: dict[str, Any]
) -> None:
    response = await client.patch(f"/v1/tasks/{task['id']}", json={"project_id": MISSING_ID, "title": "moved"})
    assert ["body", "project_id"] in error_locations(assert_problem(response, 422))
    assert (await client.get(f"/v1/tasks/{task['id']}")).json() == task


async def test_patch_with_a_stale_if_match_is_412(client: httpx.AsyncClient, task: dict[str, Any]) -> None:
    url = f"/v1/tasks/{task['id']}"
    stale = (await client.get(url)).headers["etag"]
    await client.patch(url, json={"title": "v2"})
    assert_problem(await client.patch(url, json={"title": "v3"}, headers={"If-Match": stale}), 412)
    assert (await client.get(url)).json()["title"] == "v2"


async def test_two_concurrent_task_patches_with_the_same_if_match_never_both_win(
    client: httpx.AsyncClient, task: dict[str, Any]
) -> None:
    url = f"/v1/tasks/{task['id']}"
    etag = (await client.get(url)).headers["etag"]
    responses = await asyncio.gather(
        *(client.patch(url, json={"priority": n}, headers={"If-Match": etag}) for n in range(4))
    )
    assert sorted(response.status_code for response in responses) == [200, 412, 412, 412]
    assert (await client.get(url)).json()["version"] == 2


async def test_patch_of_a_missing_task_is_404(client: httpx.AsyncClient) -> None:
    assert_problem(await client.patch(f"/v1/tasks/{MISSING_ID}", json={"title": "x"}), 404)


async def test_delete_returns_204_then_404(client: httpx.AsyncClient, task: dict[str, Any]) -> None:
    url = f"/v1/tasks/{task['id']}"
    response = await client.delete(url)
    assert (response.status_code, response.content) == (204, b"")
    assert_problem(await client.get(url), 404)
    assert_problem(await client.delete(url), 404)


async def test_delete_with_a_stale_if_match_is_412(client: httpx.AsyncClient, task: dict[str, Any]) -> None:
    url = f"/v1/tasks/{task['id']}"
    stale = (await client.get(url)).headers["etag"]
    fresh = (await client.patch(url, json={"title": "v2"})).headers["etag"]
    assert_problem(await client.delete(url, headers={"If-Match": stale}), 412)
    assert (await client.delete(url, headers={"If-Match": fresh})).status_code == 204
