"""Keyset pagination: newest first, each row exactly once, even while rows are being inserted."""

from typing import Any

import httpx

from tests.helpers import unique


async def _walk(client: httpx.AsyncClient, url: str, params: dict[str, Any], on_page: Any = None) -> list[str]:
    ids: list[str] = []
    cursor = None
    while True:
        page = (await client.get(url, params=params | ({"cursor": cursor} if cursor else {}))).json()
        assert len(page["items"]) <= params["limit"]
        ids += [item["id"] for item in page["items"]]
        if on_page:
            await on_page()
        cursor = page["next_cursor"]
        if cursor is None:
            return ids


async def test_walking_every_page_yields_each_task_once_while_tasks_are_inserted(
    client: httpx.AsyncClient, project: dict[str, Any]
) -> None:
    url = f"/v1/projects/{project['id']}/tasks"
    existing = [(await client.post(url, json={"title": f"t{n}"})).json()["id"] for n in range(23)]
    inserted: list[str] = []

    async def insert_one() -> None:
        inserted.append((await client.post(url, json={"title": "during the walk"})).json()["id"])

    walked = await _walk(client, url, {"limit": 5}, on_page=insert_one)
    assert len(walked) == len(set(walked)), "a row was returned twice"
    assert walked == existing[::-1], "every row present before the walk, newest first"
    assert len(inserted) == 5 and not set(inserted) & set(walked)


async def test_the_default_page_has_twenty_items_and_the_last_page_no_cursor(
    client: httpx.AsyncClient, project: dict[str, Any]
) -> None:
    url = f"/v1/projects/{project['id']}/tasks"
    for n in range(21):
        await client.post(url, json={"title": f"t{n}"})
    first = (await client.get(url)).json()
    assert len(first["items"]) == 20 and first["next_cursor"]
    second = (await client.get(url, params={"cursor": first["next_cursor"]})).json()
    assert len(second["items"]) == 1 and second["next_cursor"] is None


async def test_an_exactly_full_last_page_has_no_cursor(client: httpx.AsyncClient, project: dict[str, Any]) -> None:
    url = f"/v1/projects/{project['id']}/tasks"
    for n in range(4):
        await client.post(url, json={"title": f"t{n}"})
    page = (await client.get(url, params={"limit": 4})).json()
    assert len(page["items"]) == 4 and page["next_cursor"] is None


async def test_project_pages_walk_newest_first_with_a_filter(client: httpx.AsyncClient) -> None:
    marker = unique("walk")
    created = [(await client.post("/v1/projects", json={"name": f"{marker}-{n}"})).json()["id"] for n in range(7)]
    walked = await _walk(client, "/v1/projects", {"limit": 3, "q": marker})
    assert walked == created[::-1]


async def test_the_status_filter_pages_through_matching_tasks(
    client: httpx.AsyncClient, project: dict[str, Any]
) -> None:
    url = f"/v1/projects/{project['id']}/tasks"
    done = []
    for n in range(9):
        task = (await client.post(url, json={"title": f"t{n}", "status": "done" if n % 2 else "todo"})).json()
        if task["status"] == "done":
            done.append(task["id"])
    assert await _walk(client, url, {"limit": 2, "status": "done"}) == done[::-1]


def test_the_lists_are_bound_as_the_cursors_clients_hold() -> None:
    """A cursor is bound to its list's table and filter as SQL text (`Keyset`): the same text as the
    releases whose statements were written from the table models, so cursors handed out before a
    deploy still continue their lists after it, and a rewrite of a list's statement that changes
    the text, and so every client's cursor, fails here first."""
    from app.projects import service as projects
    from app.tasks import service as tasks

    assert [keyset._list for keyset in (projects._PROJECTS, projects._PROJECTS_NAMED_LIKE)] == [
        b"projects\nNone",
        b"projects\n(lower(projects.name) LIKE '%' || lower(:name) || '%' ESCAPE '\\')",
    ]
    assert [keyset._list for keyset in (tasks._TASKS, tasks._TASKS_WITH_STATUS)] == [
        b"tasks\ntasks.project_id = :project_id",
        b"tasks\ntasks.project_id = :project_id AND tasks.status = :status",
    ]
