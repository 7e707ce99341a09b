"""scripts/rollback.sh against the stand-in gcloud, which keeps the function's Cloud Run revisions,
traffic and tags and enforces docs/permissions.md: one promoted revision back at a time, to a named
one, forward to the newest promoted one, never to a candidate that was not promoted, the refusals;
the two roles it needs; and the image cleanup policy, which keeps the image of every revision it
may target.
"""

import json
import subprocess
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


# The image cleanup policy bootstrap sets (scripts/artifact-cleanup-policy.json) against the
# revisions rollback.sh may target, both read from the files the scripts use.

SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
POLICY_FILE = SCRIPTS / "artifact-cleanup-policy.json"
BUILDER_SA = f"projects-api-builder@{PROJECT}.iam.gserviceaccount.com"
WHERE = [f"--region={REGION}", f"--project={PROJECT}"]


def rollback_window() -> int:
    """ROLLBACK_WINDOW as rollback.sh reads it, from scripts/deploy_settings.sh."""
    printed = subprocess.run(
        ["bash", "-c", f'source "{SCRIPTS / "deploy_settings.sh"}" && echo "$ROLLBACK_WINDOW"'],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(printed.stdout)


@pytest.fixture
def source_deployed(tmp_path: Path) -> Project:
    """A project where the function's builds run through the stand-in's `gcloud run deploy`, which
    pushes one image per deploy to cloud-run-source-deploy."""
    state = fake_gcloud.new_state(PROJECT, fake_gcloud.OWNER)
    state["service_accounts"] |= {RUNTIME_SA: {"policy": {}}, BUILDER_SA: {"policy": {}}}
    state["project_policy"]["roles/run.builder"] = [f"serviceAccount:{BUILDER_SA}"]
    return Project(tmp_path, state)


def build(project: Project, day: int, passes: bool) -> str:
    """One deploy build as release.sh runs it: a candidate, promoted only when it passed."""
    project.update(day=day)
    exists = FUNCTION in project.state["functions"]
    deployed = project.gcloud(
        "run",
        "deploy",
        FUNCTION,
        "--function=api",
        "--source=.",
        "--base-image=python312",
        *WHERE,
        f"--service-account={RUNTIME_SA}",
        f"--build-service-account=projects/{PROJECT}/serviceAccounts/{BUILDER_SA}",
        "--set-env-vars=DB_IP_TYPE=public",
        "--tag=candidate",
        *(["--no-traffic"] if exists else []),
    )
    assert deployed.returncode == 0, deployed.stderr
    revision: str = project.state["functions"][FUNCTION]["revisions"][-1]
    if passes:
        number = revision.split("-")[-2]
        promoted = project.gcloud(
            "run",
            "services",
            "update-traffic",
            FUNCTION,
            *WHERE,
            f"--to-revisions={revision}=100",
            f"--update-tags=promoted-{number}={revision}",
        )
        assert promoted.returncode == 0, promoted.stderr
    return revision


def test_the_cleanup_policy_keeps_every_image_rollback_may_target(source_deployed: Project) -> None:
    """Two months of builds, some candidates failing (one streak of four), then the policy that
    bootstrap sets and a run of Artifact Registry's cleanup long after: every revision rollback.sh
    accepts still has its image; the images it refuses may be gone."""
    window = rollback_window()
    policies = json.loads(POLICY_FILE.read_text())
    (keep,) = [policy for policy in policies if "mostRecentVersions" in policy]
    assert keep["action"]["type"] == "Keep"
    assert keep["mostRecentVersions"]["keepCount"] >= window + 1, "the window's images and a build under way"
    assert all(
        policy.get("mostRecentVersions", policy.get("condition", {})).get("packageNamePrefixes") == [FUNCTION]
        for policy in policies
    ), "the policies touch the function's images alone: the repository is shared with other services"
    outcomes = [True, True, False, True, False, False, False, False, True, True, False, True, True, True, False, True]
    revisions = [build(source_deployed, day * 4, passes) for day, passes in enumerate(outcomes)]
    promoted = [revision for revision, passes in zip(revisions, outcomes, strict=True) if passes]

    source_deployed.update(day=200)
    applied = source_deployed.gcloud(
        "artifacts",
        "repositories",
        "set-cleanup-policies",
        "cloud-run-source-deploy",
        f"--location={REGION}",
        f"--project={PROJECT}",
        f"--policy={POLICY_FILE}",
        "--no-dry-run",
    )
    assert applied.returncode == 0, applied.stderr
    state = source_deployed.state
    deleted = fake_gcloud.run_cleanup(state)
    source_deployed.state_file.write_text(json.dumps(state))
    assert deleted, "the policy deletes old images (the test would prove nothing otherwise)"
    images = state["functions"][FUNCTION]["images"]

    accepted, refused = [], []
    for revision in promoted:
        answer = source_deployed.run("rollback.sh", revision)
        (accepted if answer.returncode == 0 else refused).append(revision)
        if answer.returncode != 0:
            assert "was promoted more than" in answer.stderr, answer.stderr
    latest = int(revisions[-1].split("-")[-2])
    assert accepted == [revision for revision in promoted if int(revision.split("-")[-2]) > latest - window]
    assert accepted and refused, "targets inside the window and refusals outside it"
    for revision in accepted:
        assert fake_gcloud.image_exists(state, images[revision]), f"{revision} is a rollback target without its image"
    assert not all(fake_gcloud.image_exists(state, images[revision]) for revision in refused)
    to_latest = source_deployed.run("rollback.sh", "--to-latest")
    assert to_latest.returncode == 0 and traffic(source_deployed) == {promoted[-1]: 100}


def test_setting_the_cleanup_policy_needs_repository_update(source_deployed: Project) -> None:
    """The stand-in refuses a caller without artifactregistry.repositories.update, and keeps the
    policies of one who has it."""
    owner = source_deployed.gcloud(
        *("artifacts", "repositories", "create", "cloud-run-source-deploy", "--repository-format=docker"),
        f"--location={REGION}",
    )
    assert owner.returncode == 0, owner.stderr
    command = [
        *("artifacts", "repositories", "set-cleanup-policies", "cloud-run-source-deploy"),
        *(f"--location={REGION}", f"--project={PROJECT}", f"--policy={POLICY_FILE}", "--no-dry-run"),
    ]
    writer = "user:dev@example.com"
    source_deployed.grant(writer, "roles/artifactregistry.writer")
    refused = source_deployed.gcloud(*command, account=writer)
    assert refused.returncode == 1
    assert "Permission 'artifactregistry.repositories.update' denied" in refused.stderr
    assert source_deployed.state["repositories"][f"{REGION}/cloud-run-source-deploy"]["policies"] == []
    admin = "user:registry-admin@example.com"
    source_deployed.grant(admin, "roles/artifactregistry.admin")
    allowed = source_deployed.gcloud(*command, account=admin)
    assert allowed.returncode == 0, allowed.stderr
    repository = source_deployed.state["repositories"][f"{REGION}/cloud-run-source-deploy"]
    assert repository["policies"] == json.loads(POLICY_FILE.read_text()) and repository["dry_run"] is False
