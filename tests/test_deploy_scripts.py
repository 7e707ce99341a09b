"""scripts/bootstrap.sh and scripts/teardown.sh against the stand-in gcloud (tests/fake_gcloud.py),
which keeps a project's state and refuses what IAM would refuse: both are safe to run twice,
bootstrap keeps an instance's other database flags and protects its data (backups, point-in-time
recovery, deletion protection), its private path is complete, teardown asks before deleting the
instance and only then lifts the protection.
"""

import json
import os
import pty
import re
import select
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

import pytest

from tests import fake_gcloud
from tests.fake_gcloud import Project
from tests.helpers import ROOT

SCRIPTS = ROOT / "scripts"
PROJECT = "demo-project"
OWNER = fake_gcloud.OWNER
MIGRATOR_SA = f"projects-api-migrator@{PROJECT}.iam.gserviceaccount.com"
RUNTIME_SA = f"projects-api@{PROJECT}.iam.gserviceaccount.com"
TESTER_SA = f"projects-api-tester@{PROJECT}.iam.gserviceaccount.com"
BUILDER_SA = f"projects-api-builder@{PROJECT}.iam.gserviceaccount.com"


def bash() -> str:
    found = shutil.which("bash")
    assert found, "bash is not installed"
    return found


@pytest.fixture
def project(tmp_path: Path) -> Project:
    return Project(tmp_path)


@pytest.fixture(scope="module")
def after_bootstrap(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The state bootstrap leaves in an empty project, alerts included, plus the function the build
    deploys (tests/test_cloudbuild.py runs that step through the stand-in)."""
    project = Project(tmp_path_factory.mktemp("bootstrap"))
    result = project.run("bootstrap.sh", ALERT_EMAIL="oncall@example.com")
    assert result.returncode == 0, result.stdout + result.stderr
    state = project.state
    state["functions"]["projects-api"] = {
        "policy": {},
        "region": "europe-west1",
        "service_account": RUNTIME_SA,
        "managed_by": "run",
        "revisions": ["projects-api-00001-x"],
        "traffic": {"projects-api-00001-x": 100},
    }
    return state


@pytest.fixture
def bootstrapped(tmp_path: Path, after_bootstrap: dict[str, Any]) -> Project:
    return Project(tmp_path, json.loads(json.dumps(after_bootstrap)))


def creations(calls: list[list[str]]) -> list[list[str]]:
    return [args for args in calls if {"create", "patch", "add-iam-policy-binding", "delete", "enable"} & set(args)]


SCRIPT_NAMES = ["bootstrap.sh", "grant_roles.sh", "teardown.sh", "alerts.sh", "rollback.sh"]


@pytest.mark.parametrize("script", [*SCRIPT_NAMES, "deploy_settings.sh"])
def test_the_scripts_pass_bash_n(script: str) -> None:
    result = subprocess.run([bash(), "-n", str(SCRIPTS / script)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


@pytest.mark.parametrize("script", SCRIPT_NAMES)
def test_help_and_a_wrong_argument_call_no_gcloud(project: Project, script: str) -> None:
    helped = project.run(script, "--help")
    assert helped.returncode == 0, helped.stderr
    assert helped.stdout.startswith(f"Usage: scripts/{script}")
    assert "PROJECT      project id" in helped.stdout  # the shared settings, from deploy_settings.sh
    assert project.run(script, "--bogus").returncode == 2
    assert project.calls() == []


def test_bootstrap_builds_the_project_and_a_second_run_changes_nothing(bootstrapped: Project) -> None:
    state = bootstrapped.state
    assert set(state["service_accounts"]) == {MIGRATOR_SA, RUNTIME_SA, TESTER_SA, BUILDER_SA}
    source_bucket = state["buckets"][f"gs://{PROJECT}_cloudbuild"]
    readers = source_bucket["policy"]["roles/storage.objectViewer"]
    assert readers == [f"serviceAccount:{TESTER_SA}", f"serviceAccount:{MIGRATOR_SA}"], (
        "read rights on this bucket only"
    )
    (instance,) = state["instances"].values()
    assert instance["flags"] == {"cloudsql.iam_authentication": "on"}
    assert instance["backups"] and instance["pitr"] and instance["deletion_protection"]
    assert instance["maintenance_window"] == {"day": 7, "hour": 4}, "Sundays at 04:00 UTC, not any hour"
    assert "private_network" not in instance and instance["public_ip"]
    assert "app" in instance["databases"]
    assert {f"projects-api-migrator@{PROJECT}.iam", f"projects-api@{PROJECT}.iam"} <= set(instance["users"])
    assert {"sqladmin.googleapis.com", "iamcredentials.googleapis.com"} <= set(state["services"])
    assert "compute.googleapis.com" not in state["services"], "the public path needs no Compute Engine API"
    assert len(state["policies"]) == 4 and len(state["log_metrics"]) == 5, "ALERT_EMAIL: scripts/alerts.sh ran"
    before = len(state["calls"])
    again = bootstrapped.run("bootstrap.sh")
    assert again.returncode == 0, again.stderr
    changes = creations(bootstrapped.calls(before))
    # Only the grants are repeated (each a no-op in IAM); nothing is created or patched.
    assert all("add-iam-policy-binding" in args or "enable" in args for args in changes), changes
    after = bootstrapped.state
    assert (after["project_policy"], after["service_accounts"]) == (state["project_policy"], state["service_accounts"])
    assert after["instances"] == state["instances"]


def test_bootstrap_turns_the_flag_on_and_keeps_an_instances_other_flags(project: Project) -> None:
    """`gcloud sql instances patch --database-flags` replaces the whole list (the stand-in does too)."""
    flags = {"max_connections": "200", "log_min_duration_statement": "1000,2000"}
    instance = {"flags": flags, "databases": ["postgres"], "users": ["postgres"]}
    project.update(instances={"projects-db": instance})
    result = project.run("bootstrap.sh")
    assert result.returncode == 0, result.stdout + result.stderr
    instance = project.state["instances"]["projects-db"]
    assert instance["flags"] == flags | {"cloudsql.iam_authentication": "on"}
    assert instance["backups"] and instance["pitr"] and instance["deletion_protection"]


def test_the_private_path_bootstrap_builds_every_piece_and_a_second_run_changes_nothing(project: Project) -> None:
    result = project.run("bootstrap.sh", DB_IP_TYPE="private", NETWORK="shared")
    assert result.returncode == 0, result.stdout + result.stderr
    state = project.state
    assert {"compute.googleapis.com", "servicenetworking.googleapis.com"} <= set(state["services"])
    assert state["addresses"] == {"google-managed-services-shared": {"network": "shared", "prefix_length": 16}}
    assert state["peerings"] == {"shared": ["google-managed-services-shared"]}
    instance = state["instances"]["projects-db"]
    assert instance["private_network"] == f"projects/{PROJECT}/global/networks/shared"
    assert instance["public_ip"], "kept until the first build has passed: grant_roles.sh reaches it"
    assert state["worker_pools"] == {"projects-api-builds": {"region": "europe-west1", "network": "shared"}}
    printed = " ".join(re.sub(r"\\\n", " ", result.stdout).split())
    pool = "BUILD_POOL=projects-api-builds"
    assert f"DB_IP_TYPE=private NETWORK=shared SUBNET=shared {pool} scripts/submit.sh" in printed
    # The printed release command: its deploy build runs in the pool, with the private path's substitutions.
    before_submit = len(project.state["calls"])
    submitted = project.run(
        "submit.sh", DB_IP_TYPE="private", NETWORK="shared", SUBNET="shared", BUILD_POOL="projects-api-builds"
    )
    assert submitted.returncode == 0, submitted.stdout + submitted.stderr
    builds = [args for args in project.calls(before_submit) if args[:2] == ["builds", "submit"]]
    assert len(builds) == 2 and not any("--worker-pool" in arg for arg in builds[0]), "the tests need no database"
    submit = " ".join(builds[1])
    assert (
        f"--worker-pool=projects/{PROJECT}/locations/europe-west1/workerPools/projects-api-builds" in submit
        and ",_DB_IP_TYPE=private,_NETWORK=shared,_SUBNET=shared" in submit
    ), submit
    assert f"gcloud sql instances patch projects-db --project={PROJECT} --no-assign-ip" in result.stdout
    before = len(state["calls"])
    again = project.run("bootstrap.sh", DB_IP_TYPE="private", NETWORK="shared")
    assert again.returncode == 0, again.stdout + again.stderr
    changes = creations(project.calls(before))
    assert all("add-iam-policy-binding" in args or "enable" in args for args in changes), changes
    # the documented last step of the private path
    closing = project.gcloud("sql", "instances", "patch", "projects-db", f"--project={PROJECT}", "--no-assign-ip")
    assert closing.returncode == 0, closing.stderr
    assert not project.state["instances"]["projects-db"]["public_ip"]
    teardown = project.run("teardown.sh", "--yes", DB_IP_TYPE="private", NETWORK="shared")
    assert teardown.returncode == 0, teardown.stdout + teardown.stderr
    assert project.state["worker_pools"] == {} and project.state["instances"] == {}


def test_the_private_path_adds_a_private_ip_to_an_existing_public_instance(bootstrapped: Project) -> None:
    assert "private_network" not in bootstrapped.state["instances"]["projects-db"]
    private = bootstrapped.run("bootstrap.sh", DB_IP_TYPE="private")
    assert private.returncode == 0, private.stdout + private.stderr
    instance = bootstrapped.state["instances"]["projects-db"]
    assert instance["private_network"] == f"projects/{PROJECT}/global/networks/default"
    assert instance["public_ip"]


def test_a_wrong_ip_type_or_backup_time_stops_bootstrap_before_any_change(project: Project) -> None:
    for settings in ({"DB_IP_TYPE": "internal"}, {"BACKUP_START_TIME": "25:00"}):
        result = project.run("bootstrap.sh", **settings)
        assert result.returncode == 1
        assert next(iter(settings)) in result.stderr
    assert creations(project.calls()) == []


def test_teardown_deletes_everything_bootstrap_made_and_a_second_run_finds_nothing(bootstrapped: Project) -> None:
    started = len(bootstrapped.state["calls"])
    result = bootstrapped.run("teardown.sh", "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    state = bootstrapped.state
    assert state["functions"] == {} and state["instances"] == {} and state["service_accounts"] == {}
    calls = bootstrapped.calls(started)
    sql_calls = [args[2] for args in calls if args[:2] == ["sql", "instances"] and args[2] != "describe"]
    assert sql_calls == ["patch", "delete"], "deletion protection is lifted just before the delete"
    assert state["final_backups"] == [{"instance": "projects-db", "days": 30}], "a final backup, kept 30 days"
    assert state["policies"] == {} and state["log_metrics"] == {}
    assert len(state["channels"]) == 1, "the e-mail channel is listed, not deleted: other policies may use it"
    members = {member for members in state["project_policy"].values() for member in members}
    assert members == {OWNER}, members  # no binding of the service accounts is left, deleted or not
    before = len(state["calls"])
    again = bootstrapped.run("teardown.sh", "--yes")
    assert again.returncode == 0, again.stdout + again.stderr
    assert creations(bootstrapped.calls(before)) == []
    assert "not found" in again.stdout


def test_teardown_without_a_terminal_keeps_the_instance_unless_told_yes(bootstrapped: Project) -> None:
    result = bootstrapped.run("teardown.sh")
    assert result.returncode == 0, result.stdout + result.stderr
    assert "kept: to delete it, run this on a terminal and confirm, or pass --yes" in result.stdout
    state = bootstrapped.state
    assert set(state["instances"]) == {"projects-db"}
    assert state["functions"] == {} and state["service_accounts"] == {}
    # Still protected: a delete is refused (the stand-in refuses it as Cloud SQL does).
    assert state["instances"]["projects-db"]["deletion_protection"]
    assert not any("--no-deletion-protection" in args for args in bootstrapped.calls())
    refused = bootstrapped.gcloud("sql", "instances", "delete", "projects-db", f"--project={PROJECT}", "--quiet")
    assert refused.returncode == 1 and "deletion protection" in refused.stderr


def test_teardown_removes_the_bindings_a_deleted_service_account_left(bootstrapped: Project) -> None:
    """An earlier run deleted the account but was interrupted before its bindings were removed."""
    state = bootstrapped.state
    del state["service_accounts"][RUNTIME_SA]
    for members in state["project_policy"].values():
        members[:] = [
            f"deleted:serviceAccount:{RUNTIME_SA}?uid=7" if m == f"serviceAccount:{RUNTIME_SA}" else m for m in members
        ]
    bootstrapped.update(**state)
    result = bootstrapped.run("teardown.sh", "--yes")
    assert result.returncode == 0, result.stdout + result.stderr
    members = {member for members in bootstrapped.state["project_policy"].values() for member in members}
    assert members == {OWNER}


def _teardown_on_a_terminal(project: Project, answer: str) -> str:
    """Runs teardown on a pseudo-terminal and types `answer` at its prompt."""
    leader, follower = pty.openpty()
    process = subprocess.Popen(
        [bash(), str(SCRIPTS / "teardown.sh")],
        env=fake_gcloud.environment(project.bin_dir, project.state_file, OWNER),
        stdin=follower,
        stdout=follower,
        stderr=follower,
        close_fds=True,
    )
    os.close(follower)
    output = b""
    deadline = time.monotonic() + 60
    answered = False
    while time.monotonic() < deadline:
        ready, _, _ = select.select([leader], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(leader, 4096)
            except OSError:  # the script ended and closed the terminal
                break
            output += chunk
            if not answered and b"Type the instance name to confirm:" in output:
                os.write(leader, answer.encode() + b"\n")
                answered = True
        elif process.poll() is not None:
            break
    process.wait(timeout=10)
    os.close(leader)
    assert process.returncode == 0, output.decode(errors="replace")
    return output.decode(errors="replace")


def test_teardown_on_a_terminal_deletes_the_instance_only_when_its_name_is_typed(bootstrapped: Project) -> None:
    output = _teardown_on_a_terminal(bootstrapped, "yes")
    assert "kept: the answer was not the instance name" in output
    assert set(bootstrapped.state["instances"]) == {"projects-db"}
    output = _teardown_on_a_terminal(bootstrapped, "projects-db")
    assert bootstrapped.state["instances"] == {}, output
