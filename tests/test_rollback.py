"""scripts/rollback.sh against the stand-in gcloud, which keeps the function's Cloud Run revisions
and traffic and enforces docs/permissions.md: one revision back at a time, to a named one, forward
to the latest, and the refusals; and the two roles it needs.
"""

import json
from pathlib import Path

import pytest

from tests import fake_gcloud
from tests.fake_gcloud import Project

PROJECT = "demo-project"
FUNCTION = "projects-api"
REGION = "europe-west1"
RUNTIME_SA = f"projects-api@{PROJECT}.iam.gserviceaccount.com"


REVISIONS = [f"{FUNCTION}-00001-x", f"{FUNCTION}-00002-x", f"{FUNCTION}-00003-x"]


@pytest.fixture
def deployed(tmp_path: Path) -> Project:
    """A project whose function was deployed three times; the newest revision serves."""
    state = fake_gcloud.new_state(PROJECT, fake_gcloud.OWNER)
    state["service_accounts"][RUNTIME_SA] = {"policy": {}}
    state["functions"][FUNCTION] = {
        "policy": {},
        "region": REGION,
        "service_account": RUNTIME_SA,
        "revisions": REVISIONS,
        "traffic": {REVISIONS[-1]: 100},
    }
    return Project(tmp_path, state)


def traffic(project: Project) -> dict[str, int]:
    served: dict[str, int] = project.state["functions"][FUNCTION]["traffic"]
    return served


def test_rollback_steps_back_one_revision_at_a_time_and_forward_to_the_latest(deployed: Project) -> None:
    first = deployed.run("rollback.sh")
    assert first.returncode == 0, first.stdout + first.stderr
    assert traffic(deployed) == {REVISIONS[1]: 100}
    assert f"from {REVISIONS[2]} to {REVISIONS[1]}" in first.stdout
    assert deployed.run("rollback.sh").returncode == 0
    assert traffic(deployed) == {REVISIONS[0]: 100}
    oldest = deployed.run("rollback.sh")
    assert oldest.returncode == 1 and "is the oldest revision" in oldest.stderr
    latest = deployed.run("rollback.sh", "--to-latest")
    assert latest.returncode == 0, latest.stderr
    assert traffic(deployed) == {REVISIONS[2]: 100}


def test_rollback_to_a_named_revision_and_refusals(deployed: Project) -> None:
    named = deployed.run("rollback.sh", REVISIONS[0])
    assert named.returncode == 0, named.stderr
    assert traffic(deployed) == {REVISIONS[0]: 100}
    unknown = deployed.run("rollback.sh", f"{FUNCTION}-00009-x")
    assert unknown.returncode == 1 and REVISIONS[2] in unknown.stderr
    state = deployed.state
    state["functions"][FUNCTION]["traffic"] = {REVISIONS[1]: 50, REVISIONS[2]: 50}
    deployed.state_file.write_text(json.dumps(state))
    split = deployed.run("rollback.sh")
    assert split.returncode == 1 and "traffic is split" in split.stderr
    assert traffic(deployed) == {REVISIONS[1]: 50, REVISIONS[2]: 50}
    assert deployed.run("rollback.sh", "--bogus").returncode == 2


def test_rollback_needs_cloud_run_developer_and_service_account_user_on_the_runtime(deployed: Project) -> None:
    """Updating the service's traffic acts as its identity: the table's two rollback roles."""
    operator = "user:sre@example.com"
    deployed.grant(operator, "roles/run.developer")
    refused = deployed.run("rollback.sh", account=operator, PROJECT=PROJECT)
    assert refused.returncode == 1
    assert f"Permission 'iam.serviceAccounts.actAs' denied on {RUNTIME_SA}" in refused.stderr
    assert traffic(deployed) == {REVISIONS[2]: 100}
    state = deployed.state
    state["service_accounts"][RUNTIME_SA]["policy"]["roles/iam.serviceAccountUser"] = [operator]
    deployed.state_file.write_text(json.dumps(state))
    allowed = deployed.run("rollback.sh", account=operator, PROJECT=PROJECT)
    assert allowed.returncode == 0, allowed.stderr
    assert traffic(deployed) == {REVISIONS[1]: 100}
