"""The alerts, checked offline: scripts/alerts.sh and monitoring/ against the stand-in gcloud that
enforces docs/permissions.md, and the log-based metrics' filters read against the log lines the
function really writes, turned into Cloud Logging entries the way Google's agent does it
(tests/cloud_logging.py).
"""

import asyncio
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
import yaml
from sqlalchemy.engine import make_url

from tests import cloud_logging, fake_gcloud
from tests.fake_gcloud import Project
from tests.function_server import serve_function
from tests.helpers import MISSING_ID, ROOT, admin, libpq_url, unique

PROJECT = "demo-project"
OWNER = fake_gcloud.OWNER
FUNCTION = "projects-api"
METRICS = sorted((ROOT / "monitoring" / "metrics").glob("*.yaml"))
POLICIES = sorted((ROOT / "monitoring" / "policies").glob("*.yaml"))


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(tmp_path, fake_gcloud.new_state(PROJECT, OWNER))


ALERT_ROLES = [
    "roles/logging.configWriter",
    "roles/monitoring.alertPolicyEditor",
    "roles/monitoring.notificationChannelEditor",
]


def test_alerts_create_the_channel_metrics_and_policies_and_a_second_run_only_updates(project: Project) -> None:
    """Run by a non-Owner who holds exactly the roles docs/permissions.md names for the alerts step."""
    operator = "user:sre@example.com"
    project.grant(operator, *ALERT_ROLES[:2])
    refused = project.run("alerts.sh", account=operator, ALERT_EMAIL="oncall@example.com")
    assert refused.returncode != 0, "each of the three roles is needed"
    assert "Permission 'monitoring.notificationChannels.list' denied" in refused.stderr
    project.grant(operator, ALERT_ROLES[2])
    first = project.run("alerts.sh", account=operator, ALERT_EMAIL="oncall@example.com")
    assert first.returncode == 0, first.stdout + first.stderr
    state = project.state
    (channel,) = state["channels"].values()
    assert channel["labels"] == {"email_address": "oncall@example.com"}
    assert set(state["log_metrics"]) == {f"{FUNCTION}-{path.stem}" for path in METRICS}
    names = sorted(policy["displayName"] for policy in state["policies"].values())
    assert names == [
        f"{FUNCTION}: 503 responses",
        f"{FUNCTION}: 5xx responses",
        f"{FUNCTION}: database connections exhausted",
        f"{FUNCTION}: p99 latency",
    ]
    for policy in state["policies"].values():
        assert policy["notificationChannels"] == list(state["channels"])
        for condition in policy["conditions"]:
            assert isinstance(condition["conditionThreshold"]["thresholdValue"], int | float), condition
    before = len(state["calls"])
    second = project.run("alerts.sh", account=operator, ALERT_EMAIL="oncall@example.com", ALERT_P99_SECONDS="0.5")
    assert second.returncode == 0, second.stdout + second.stderr
    verbs = [args[2] if args[0] == "beta" else args[1:3] for args in project.calls(before)]
    assert not [verb for verb in verbs if "create" in verb], verbs  # nothing new: updates only
    after = project.state
    assert (len(after["channels"]), len(after["log_metrics"]), len(after["policies"])) == (1, len(METRICS), 4)
    (latency,) = [p for p in after["policies"].values() if p["displayName"].endswith("p99 latency")]
    assert latency["conditions"][0]["conditionThreshold"]["thresholdValue"] == 0.5


@pytest.mark.parametrize(
    ("settings", "message"),
    [
        ({}, "set ALERT_EMAIL"),
        ({"ALERT_EMAIL": "not-an-address"}, "set ALERT_EMAIL"),
        ({"ALERT_EMAIL": "a@example.com", "ALERT_5XX_RATIO": "2%"}, "ALERT_5XX_RATIO=2%: expected a number"),
    ],
)
def test_alerts_refuse_bad_settings_before_any_call(project: Project, settings: dict[str, str], message: str) -> None:
    result = project.run("alerts.sh", **settings)
    assert result.returncode == 1 and message in result.stderr, result.stderr
    assert [args[:2] for args in project.calls()] in ([], [["config", "get-value"]])


def test_every_policy_reads_a_metric_of_monitoring_and_every_metric_is_read() -> None:
    """The stand-in also refuses a policy naming a metric that does not exist, as the API does."""
    defined = {f"{FUNCTION}-{path.stem}" for path in METRICS}
    read: set[str] = set()
    for path in POLICIES:
        text = path.read_text().replace("${FUNCTION}", FUNCTION)
        read |= {
            name.split('"', 1)[0] for name in text.split("logging.googleapis.com/user/")[1:] if name.split('"', 1)[0]
        }
    assert read == defined


# ---- the metrics against the function's real log lines ------------------------------------------


@pytest.fixture(scope="module")
async def function_log_entries(server_url: str, database_url: str) -> AsyncIterator[list[dict[str, Any]]]:
    """Log lines of the real function (functions-framework, JSON logs), driven through HTTP into
    every case the metrics count, then read as Cloud Logging entries:

    - PostgreSQL has no free slot for its database user (a role limited to one connection, which
      the test holds): 503, logged by the pool's first connect;
    - 201, 200, 404, and a 500 from a route that raises;
    - its one pooled connection (DB_POOL_SIZE=1) busy on a table the test has locked, while a
      second request waits DB_POOL_TIMEOUT_S=1 for it: 503 "every database connection is busy",
      and the first request's latency over a second.
    """
    role = f"metered_{uuid.uuid4().hex[:10]}"
    await admin(server_url, f'CREATE ROLE "{role}" LOGIN CONNECTION LIMIT 1')
    await admin(database_url, f'GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA public TO "{role}"')
    url = make_url(database_url).set(username=role).render_as_string(hide_password=False)
    settings = {"DB_POOL_SIZE": "1", "DB_MAX_OVERFLOW": "0", "DB_POOL_TIMEOUT_S": "1", "GOOGLE_CLOUD_PROJECT": PROJECT}
    try:
        holder = await asyncpg.connect(libpq_url(url))  # the role's only slot
        with serve_function(url, **settings) as server:
            async with httpx.AsyncClient(base_url=server.base_url, timeout=30) as http:
                assert (await http.get("/v1/projects")).status_code == 503
                await holder.close()
                created = await http.post("/v1/projects", json={"name": unique("logged")})
                assert created.status_code == 201, created.text
                assert (await http.get("/v1/projects")).status_code == 200
                assert (await http.get(f"/v1/projects/{MISSING_ID}")).status_code == 404
                assert (await http.get("/__test__/boom")).status_code == 500
                locker = await asyncpg.connect(libpq_url(database_url))
                try:
                    transaction = locker.transaction()
                    await transaction.start()
                    await locker.execute("LOCK TABLE projects IN ACCESS EXCLUSIVE MODE")
                    slow = asyncio.create_task(http.get("/v1/projects", params={"limit": 2}))
                    await asyncio.sleep(0.3)  # the slow request holds the pool's one connection
                    waiting = await http.get("/v1/projects", params={"limit": 3})
                    assert waiting.status_code == 503 and "busy" in waiting.json()["detail"], waiting.text
                    await transaction.rollback()
                    assert (await slow).status_code == 200
                finally:
                    await locker.close()
        lines = [line for line in server.output if line.startswith("{")]
    finally:
        await admin(database_url, f'DROP OWNED BY "{role}"')
        await admin(server_url, f'DROP ROLE IF EXISTS "{role}"')
    return [
        cloud_logging.entry_from_stdout(line, project=PROJECT, service=FUNCTION, revision=f"{FUNCTION}-00001-x")
        for line in lines
    ]


def metric(name: str) -> dict[str, Any]:
    """A metric file of monitoring/, rendered for FUNCTION as scripts/alerts.sh renders it."""
    loaded: dict[str, Any] = yaml.safe_load((ROOT / "monitoring" / "metrics" / f"{name}.yaml").read_text())
    loaded["filter"] = loaded["filter"].replace("${FUNCTION}", FUNCTION)
    return loaded


def matching(name: str, entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [entry for entry in entries if cloud_logging.matches(metric(name)["filter"], entry)]


def access_entries(entries: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [entry for entry in entries if entry["jsonPayload"].get("logger") == "app.access"]


@pytest.mark.parametrize("path", METRICS, ids=lambda path: path.stem)
def test_every_field_a_filter_reads_is_in_the_entries_it_should_match(
    path: Path, function_log_entries: list[dict[str, Any]]
) -> None:
    """A filter naming a field the entries lack (jsonPayload.httpRequest, say) would match nothing."""
    matched = matching(path.stem, function_log_entries)
    assert matched, f"{path.name} matches none of the function's log lines"
    for field in cloud_logging.fields_of(metric(path.stem)["filter"]):
        assert all(cloud_logging.field(entry, field) is not None for entry in matched if field != "jsonPayload.message")


def test_the_request_metrics_count_each_access_line_once(function_log_entries: list[dict[str, Any]]) -> None:
    access = access_entries(function_log_entries)
    assert matching("requests", function_log_entries) == access
    statuses = sorted(entry["httpRequest"]["status"] for entry in access)
    assert {200, 201, 404, 500, 503} <= set(statuses)
    assert sorted(entry["httpRequest"]["status"] for entry in matching("5xx", function_log_entries)) == [500, 503, 503]
    assert [entry["httpRequest"]["status"] for entry in matching("503", function_log_entries)] == [503, 503]
    # Cloud Run's own request log of the same 500 has httpRequest too: it must not be counted twice.
    front = cloud_logging.cloud_run_request_entry(project=PROJECT, service=FUNCTION, status=500, latency="0.2s")
    assert not any(cloud_logging.matches(metric(name)["filter"], front) for name in ("requests", "5xx", "503"))


def test_the_latency_metric_reads_seconds_from_every_access_line(function_log_entries: list[dict[str, Any]]) -> None:
    latency = metric("latency")
    values = {
        entry["httpRequest"]["requestUrl"]: cloud_logging.extract(latency["valueExtractor"], entry)
        for entry in matching("latency", function_log_entries)
    }
    assert len(values) >= 5 and all(value > 0 for value in values.values())
    assert values["/v1/projects?limit=2"] > 0.9, values  # it waited for the table lock
    assert values["/v1/projects?limit=3"] > 0.9, values  # it waited DB_POOL_TIMEOUT_S for a connection
    assert latency["metricDescriptor"]["unit"] == "s"


def test_the_saturation_metric_counts_requests_that_found_no_connection(
    function_log_entries: list[dict[str, Any]],
) -> None:
    matched = matching("db-saturation", function_log_entries)
    messages = sorted(entry["jsonPayload"]["message"] for entry in matched)
    assert len(messages) == 2, messages
    assert "no free connection slots" in messages[0] and "every database connection is busy" in messages[1]
    assert all(entry["severity"] in {"WARNING", "ERROR"} for entry in matched)


def test_the_filter_language_here_refuses_what_it_does_not_know() -> None:
    entry = {"jsonPayload": {"logger": "app.access"}, "httpRequest": {"status": 500}}
    for unsupported in ('jsonPayload.logger=~"app"', "NOT httpRequest.status=500", 'severity>="ERROR"'):
        with pytest.raises(cloud_logging.Unsupported):
            cloud_logging.matches(unsupported, entry)
    assert cloud_logging.matches('httpRequest.status>=500 AND jsonPayload.logger="app.access"', entry)
    assert not cloud_logging.matches('httpRequest.status>=500 AND jsonPayload.logger="app.audit"', entry)
    assert cloud_logging.matches('jsonPayload.logger="x" OR httpRequest.status=500', entry)
