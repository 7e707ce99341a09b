"""Every row of the contract's Projects table, through HTTP."""

import asyncio
import re
from typing import Any

import httpx

from tests.helpers import MISSING_ID, assert_problem, error_locations, unique

RFC3339_WITH_OFFSET = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$")


async def test_create_returns_201_with_location_etag_and_server_fields(client: httpx.AsyncClient) -> None:
    name = unique("alpha")
    response = await client.post("/v1/projects", json={"name": name, "description": "first"})
    assert response.status_code == 201
    body = response.json()
    assert response.headers["location"] == f"/v1/projects/{body['id']}"
    assert response.headers["etag"].startswith('"') and response.headers["etag"].endswith('"')
    assert body["name"] == name and body["description"] == "first"
    assert body["version"] == 1
    assert body["created_by"] is None and body["updated_by"] is None
    assert RFC3339_WITH_OFFSET.match(body["created_at"]) and RFC3339_WITH_OFFSET.match(body["updated_at"])
    assert set(body) == {"id", "name", "description", "created_at", "updated_at", "version", "created_by", "updated_by"}


async def test_create_trims_surrounding_whitespace_from_the_name(client: httpx.AsyncClient) -> None:
    name = unique("trim")
    response = await client.post("/v1/projects", json={"name": f"  {name}\t"})
    assert response.json()["name"] == name


async def test_create_rejects_a_duplicate_name_in_any_case(client: httpx.AsyncClient) -> None:
    name = unique("dup")
    assert (await client.post("/v1/projects", json={"name": name})).status_code == 201
    response = await client.post("/v1/projects", json={"name": f" {name.upper()} "})
    assert "already exists" in assert_problem(response, 409)["detail"]


async def test_concurrent_creates_with_the_same_name_let_exactly_one_win(client: httpx.AsyncClient) -> None:
    name = unique("race")
    responses = await asyncio.gather(*(client.post("/v1/projects", json={"name": name}) for _ in range(5)))
    assert sorted(response.status_code for response in responses) == [201, 409, 409, 409, 409]


async def test_create_rejects_invalid_names_and_descriptions(client: httpx.AsyncClient) -> None:
    for body, location in [
        ({"name": ""}, ["body", "name"]),
        ({"name": "   "}, ["body", "name"]),
        ({"name": "x" * 101}, ["body", "name"]),
        ({"name": 5}, ["body", "name"]),
        ({}, ["body", "name"]),
        ({"name": unique(), "description": "d" * 2001}, ["body", "description"]),
    ]:
        response = await client.post("/v1/projects", json=body)
        assert location in error_locations(assert_problem(response, 422)), body


async def test_create_accepts_the_longest_valid_values(client: httpx.AsyncClient) -> None:
    name = unique("n") + "x" * 85
    response = await client.post("/v1/projects", json={"name": name[:100], "description": "d" * 2000})
    assert response.status_code == 201


async def test_create_rejects_unknown_and_server_owned_fields(client: httpx.AsyncClient) -> None:
    for field, value in [("colour", "red"), ("id", MISSING_ID), ("version", 9)]:
        response = await client.post("/v1/projects", json={"name": unique(), field: value})
        assert ["body", field] in error_locations(assert_problem(response, 422))


async def test_text_is_stored_verbatim_unicode_and_sql_alike(client: httpx.AsyncClient) -> None:
    name = unique("名前 🚀 O'Brien; DROP TABLE projects;--")
    description = "Ünïcödé ‮ right-to-left, 'quotes', \"double\", \\backslash, %_ wildcards, 🧪\n\ttabs"
    created = (await client.post("/v1/projects", json={"name": name, "description": description})).json()
    fetched = (await client.get(f"/v1/projects/{created['id']}")).json()
    assert (fetched["name"], fetched["description"]) == (name, description)


async def test_nul_characters_and_lone_surrogates_are_client_errors(client: httpx.AsyncClient) -> None:
    for raw in [b'{"name": "a\\u0000b"}', b'{"name": "a\\ud800b"}', b'{"name": "ok", "description": "\\udfff"}']:
        response = await client.post("/v1/projects", content=raw, headers={"content-type": "application/json"})
        assert_problem(response, 422)


async def test_read_returns_the_project_with_its_etag(client: httpx.AsyncClient, project: dict[str, Any]) -> None:
    response = await client.get(f"/v1/projects/{project['id']}")
    assert response.status_code == 200
    assert response.json() == project
    assert response.headers["etag"]


async def test_read_with_a_matching_if_none_match_gives_304(client: httpx.AsyncClient, project: dict[str, Any]) -> None:
    url = f"/v1/projects/{project['id']}"
    etag = (await client.get(url)).headers["etag"]
    for header in [etag, f"W/{etag}", f'"other", {etag}', "*"]:
        response = await client.get(url, headers={"If-None-Match": header})
        assert response.status_code == 304, header
        assert response.content == b""
        assert response.headers["etag"] == etag


async def test_read_with_a_stale_if_none_match_gives_200(client: httpx.AsyncClient, project: dict[str, Any]) -> None:
    url = f"/v1/projects/{project['id']}"
    etag = (await client.get(url)).headers["etag"]
    await client.patch(url, json={"description": "changed"})
    response = await client.get(url, headers={"If-None-Match": etag})
    assert response.status_code == 200
    assert response.headers["etag"] != etag


async def test_read_of_a_missing_project_is_404(client: httpx.AsyncClient) -> None:
    response = await client.get(f"/v1/projects/{MISSING_ID}")
    assert_problem(response, 404)


async def test_a_malformed_id_is_422_not_500(client: httpx.AsyncClient) -> None:
    for method in ["GET", "PATCH", "DELETE"]:
        response = await client.request(method, "/v1/projects/not-a-uuid", json={})
        assert ["path", "project_id"] in error_locations(assert_problem(response, 422))


async def test_list_filters_names_by_a_literal_case_insensitive_substring(client: httpx.AsyncClient) -> None:
    marker = unique("q")
    names = [f"{marker} Apple", f"{marker} apple pie", f"{marker} banana", f"{marker} 100%_done"]
    for name in names:
        await client.post("/v1/projects", json={"name": name})
    found = (await client.get("/v1/projects", params={"q": f"{marker} APPLE"})).json()["items"]
    assert sorted(item["name"] for item in found) == sorted(names[:2])
    literal = (await client.get("/v1/projects", params={"q": f"{marker} 100%_"})).json()["items"]
    assert [item["name"] for item in literal] == [names[3]]
    wildcard = (await client.get("/v1/projects", params={"q": "%"})).json()["items"]
    assert all("%" in item["name"] for item in wildcard)


async def test_list_rejects_bad_limits_and_cursors(client: httpx.AsyncClient) -> None:
    for params, location in [
        ({"limit": 0}, ["query", "limit"]),
        ({"limit": 101}, ["query", "limit"]),
        ({"limit": "ten"}, ["query", "limit"]),
        ({"cursor": "not-a-cursor"}, ["query", "cursor"]),
        ({"cursor": "bm90fGE"}, ["query", "cursor"]),
        ({"q": "a\x00b"}, ["query", "q"]),
    ]:
        response = await client.get("/v1/projects", params=params)
        assert location in error_locations(assert_problem(response, 422)), params


async def test_patch_merges_absent_fields_and_clears_null_ones(
    client: httpx.AsyncClient, project: dict[str, Any]
) -> None:
    url = f"/v1/projects/{project['id']}"
    described = await client.patch(url, json={"description": "set"})
    body = described.json()
    assert (body["name"], body["description"], body["version"]) == (project["name"], "set", 2)
    cleared = await client.patch(url, json={"description": None})
    assert cleared.status_code == 200
    assert (cleared.json()["description"], cleared.json()["version"]) == (None, 3)
    assert cleared.headers["etag"] != described.headers["etag"]
    assert cleared.json()["updated_at"] >= project["updated_at"]
    assert cleared.json()["created_at"] == project["created_at"]


async def test_patch_accepts_merge_patch_media_type(client: httpx.AsyncClient, project: dict[str, Any]) -> None:
    response = await client.patch(
        f"/v1/projects/{project['id']}",
        content=b'{"description": "merged"}',
        headers={"content-type": "application/merge-patch+json"},
    )
    assert response.status_code == 200
    assert response.json()["description"] == "merged"


async def test_patch_refuses_null_for_the_name(client: httpx.AsyncClient, project: dict[str, Any]) -> None:
    response = await client.patch(f"/v1/projects/{project['id']}", json={"name": None})
    assert ["body", "name"] in error_locations(assert_problem(response, 422))


async def test_patch_with_nothing_to_change_keeps_the_version(
    client: httpx.AsyncClient, project: dict[str, Any]
) -> None:
    response = await client.patch(f"/v1/projects/{project['id']}", json={})
    assert response.status_code == 200
    assert response.json()["version"] == 1


async def test_patch_to_a_taken_name_is_409_and_changes_nothing(
    client: httpx.AsyncClient, project: dict[str, Any]
) -> None:
    other = (await client.post("/v1/projects", json={"name": unique("other")})).json()
    response = await client.patch(f"/v1/projects/{project['id']}", json={"name": other["name"].upper()})
    assert_problem(response, 409)
    assert (await client.get(f"/v1/projects/{project['id']}")).json()["version"] == 1


async def test_patch_with_a_stale_if_match_is_412_and_changes_nothing(
    client: httpx.AsyncClient, project: dict[str, Any]
) -> None:
    url = f"/v1/projects/{project['id']}"
    stale = (await client.get(url)).headers["etag"]
    fresh = (await client.patch(url, json={"description": "v2"})).headers["etag"]
    response = await client.patch(url, json={"description": "lost?"}, headers={"If-Match": stale})
    assert_problem(response, 412)
    assert (await client.get(url)).json()["description"] == "v2"
    weak = await client.patch(url, json={"description": "weak"}, headers={"If-Match": f"W/{fresh}"})
    assert_problem(weak, 412)  # If-Match uses the strong comparison
    ok = await client.patch(url, json={"description": "v3"}, headers={"If-Match": fresh})
    assert ok.status_code == 200
    assert ok.json()["version"] == 3


async def test_patch_with_if_match_star_requires_only_existence(
    client: httpx.AsyncClient, project: dict[str, Any]
) -> None:
    response = await client.patch(f"/v1/projects/{project['id']}", json={"description": "x"}, headers={"If-Match": "*"})
    assert response.status_code == 200
    missing = await client.patch(f"/v1/projects/{MISSING_ID}", json={"description": "x"}, headers={"If-Match": "*"})
    assert_problem(missing, 404)


async def test_an_etag_of_one_project_does_not_match_another(client: httpx.AsyncClient) -> None:
    first = await client.post("/v1/projects", json={"name": unique()})
    second = (await client.post("/v1/projects", json={"name": unique()})).json()
    response = await client.patch(
        f"/v1/projects/{second['id']}", json={"description": "x"}, headers={"If-Match": first.headers["etag"]}
    )
    assert_problem(response, 412)


async def test_two_concurrent_patches_with_the_same_if_match_never_both_win(client: httpx.AsyncClient) -> None:
    for _ in range(5):
        created = await client.post("/v1/projects", json={"name": unique("lost-update")})
        url, etag = f"/v1/projects/{created.json()['id']}", created.headers["etag"]
        responses = await asyncio.gather(
            client.patch(url, json={"description": "A"}, headers={"If-Match": etag}),
            client.patch(url, json={"description": "B"}, headers={"If-Match": etag}),
        )
        assert sorted(response.status_code for response in responses) == [200, 412]
        winner = next(response for response in responses if response.status_code == 200).json()
        current = (await client.get(url)).json()
        assert (current["description"], current["version"]) == (winner["description"], 2)


async def test_patch_of_a_missing_project_is_404(client: httpx.AsyncClient) -> None:
    response = await client.patch(f"/v1/projects/{MISSING_ID}", json={"description": "x"})
    assert_problem(response, 404)


async def test_delete_returns_204_and_the_project_is_gone(client: httpx.AsyncClient, project: dict[str, Any]) -> None:
    url = f"/v1/projects/{project['id']}"
    response = await client.delete(url)
    assert response.status_code == 204
    assert response.content == b""
    assert_problem(await client.get(url), 404)
    assert_problem(await client.delete(url), 404)


async def test_delete_with_a_stale_if_match_is_412_and_keeps_the_project(
    client: httpx.AsyncClient, project: dict[str, Any]
) -> None:
    url = f"/v1/projects/{project['id']}"
    stale = (await client.get(url)).headers["etag"]
    fresh = (await client.patch(url, json={"description": "v2"})).headers["etag"]
    assert_problem(await client.delete(url, headers={"If-Match": stale}), 412)
    assert (await client.get(url)).status_code == 200
    assert (await client.delete(url, headers={"If-Match": fresh})).status_code == 204


async def test_delete_removes_the_projects_tasks(client: httpx.AsyncClient, project: dict[str, Any]) -> None:
    created = [
        (await client.post(f"/v1/projects/{project['id']}/tasks", json={"title": f"t{n}"})).json() for n in range(3)
    ]
    assert (await client.delete(f"/v1/projects/{project['id']}")).status_code == 204
    for task in created:
        assert_problem(await client.get(f"/v1/tasks/{task['id']}"), 404)
