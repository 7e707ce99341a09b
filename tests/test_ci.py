"""GitHub Actions runs what a laptop runs: `.ci/run` (make lint, make test), on push and pull request."""

import shlex
from pathlib import Path
from typing import Any

import yaml

from tests.conftest import ROOT


def _workflows() -> dict[Path, dict[Any, Any]]:
    return {path: yaml.safe_load(path.read_text()) for path in sorted((ROOT / ".github" / "workflows").glob("*.yml"))}


def test_a_workflow_runs_ci_run_on_push_and_pull_request() -> None:
    runs = []
    for path, workflow in _workflows().items():
        triggers = workflow.get(True, workflow.get("on"))  # YAML 1.1 reads the key `on` as True
        for job in workflow["jobs"].values():
            assert "services" not in job and "container" not in job, f"{path.name}: the suite needs no service"
            commands = [shlex.split(step["run"]) for step in job["steps"] if "run" in step]
            if [".ci/run"] in commands:
                assert {"push", "pull_request"} <= set(triggers), f"{path.name}: runs on {triggers}"
                assert commands == [[".ci/run"]], f"{path.name}: .ci/run and nothing else, not {commands}"
                checkouts = [step for step in job["steps"] if str(step.get("uses", "")).startswith("actions/checkout")]
                assert all(step.get("with", {}).get("fetch-depth") == 0 for step in checkouts), (
                    f"{path.name}: a shallow checkout skips the release-compatibility test"
                )
                runs.append(path.name)
    assert runs, "no workflow runs .ci/run"


def test_ci_run_is_lint_then_the_readme_test_command() -> None:
    lines = [line for line in (ROOT / ".ci" / "run").read_text().splitlines() if line and not line.startswith("#")]
    assert lines[-2:] == ["make lint", "make test"], lines


def test_every_action_is_pinned_by_commit() -> None:
    """A tag can be moved to other code; a commit cannot."""
    for path, workflow in _workflows().items():
        for job in workflow["jobs"].values():
            for step in job["steps"]:
                if "uses" in step:
                    _action, _, ref = str(step["uses"]).partition("@")
                    assert len(ref) == 40 and all(c in "0123456789abcdef" for c in ref), f"{path.name}: {step['uses']}"
