"""scripts/rollback.sh against the stand-in gcloud, which keeps the function's Cloud Run revisions,
traffic and tags and enforces docs/permissions.md: one promoted revision back at a time, to a named
one, forward to the newest promoted one, never to a candidate that was not promoted, the refusals;
and the two roles it needs.
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
FAILED_CANDIDATE = f"{FUNCTION}-00004-x"


@pytest.fixture
def deployed(tmp_path: Path) -> Project:
    """A project whose function was promoted three times (the newest serves), then got a candidate
    that failed its smoke test: it holds the `candidate` tag and no traffic."""
    state = fake_gcloud.new_state(PROJECT, fake_gcloud.OWNER)
    state["service_accounts"][RUNTIME_SA] = {"policy": {}}
    state["functions"][FUNCTION] = {
        "policy": {},
        "region": REGION,
        "service_account": RUNTIME_SA,
        "managed_by": "run",
        "revisions": [*REVISIONS, FAILED_CANDIDATE],
        "traffic": {REVISIONS[-1]: 100},
        "tags": {
            **{f"promoted-0000{number}": revision for number, revision in enumerate(REVISIONS, 1)},
            "candidate": FAILED_CANDIDATE,
        },
    }
    return Project(tmp_path, state)


def traffic(project: Project) -> dict[str, int]:
    served: dict[str, int] = project.state["functions"][FUNCTION]["traffic"]
    return served


def test_rollback_steps_back_one_promoted_revision_at_a_time_and_forward_to_the_newest(deployed: Project) -> None:
    first = deployed.run("rollback.sh")
    assert first.returncode == 0, first.stdout + first.stderr
    assert traffic(deployed) == {REVISIONS[1]: 100}
    assert f"from {REVISIONS[2]} to {REVISIONS[1]}" in first.stdout
    assert deployed.run("rollback.sh").returncode == 0
    assert traffic(deployed) == {REVISIONS[0]: 100}
    oldest = deployed.run("rollback.sh")
    assert oldest.returncode == 1 and "is the oldest promoted revision" in oldest.stderr
    latest = deployed.run("rollback.sh", "--to-latest")
    assert latest.returncode == 0, latest.stderr
    assert traffic(deployed) == {REVISIONS[2]: 100}, "the newest promoted revision, not the failed candidate"
    assert not any("--to-latest" in args for args in deployed.calls()), "gcloud's --to-latest would pick it"


def test_rollback_never_lands_on_a_candidate_that_was_not_promoted(deployed: Project) -> None:
    refused = deployed.run("rollback.sh", FAILED_CANDIDATE)
    assert refused.returncode == 1 and f"{FAILED_CANDIDATE} was never promoted" in refused.stderr
    assert traffic(deployed) == {REVISIONS[2]: 100}
    # The first deploy's revision serves at once and is tagged only once it passed: until then,
    # stepping back from it is refused rather than guessed.
    state = deployed.state
    state["functions"][FUNCTION]["traffic"] = {FAILED_CANDIDATE: 100}
    deployed.state_file.write_text(json.dumps(state))
    unpromoted = deployed.run("rollback.sh")
    assert unpromoted.returncode == 1 and "was never promoted" in unpromoted.stderr
    named = deployed.run("rollback.sh", REVISIONS[1])
    assert named.returncode == 0, named.stderr
    assert traffic(deployed) == {REVISIONS[1]: 100}


def test_rollback_to_a_named_revision_and_refusals(deployed: Project) -> None:
    named = deployed.run("rollback.sh", REVISIONS[0])
    assert named.returncode == 0, named.stderr
    assert traffic(deployed) == {REVISIONS[0]: 100}
    unknown = deployed.run("rollback.sh", f"{FUNCTION}-00009-x")
    assert unknown.returncode == 1 and REVISIONS[2] in unknown.stderr and FAILED_CANDIDATE not in unknown.stderr
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
