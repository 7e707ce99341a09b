"""cloudbuild-test.yaml and cloudbuild.yaml and the IAM they need, checked offline.

The pipelines' shape (ids, waitFor, order), their substitutions and service accounts, and no
secret anywhere. The permissions: docs/permissions.md lists what every step needs; scripts/
bootstrap.sh runs against a stand-in gcloud that keeps IAM policies (tests/fake_gcloud.py), and
each service account must then hold every permission of its steps and no other role. What can
run here does: the lint step's commands, and the rollout (deploy-candidate, smoke-test, promote)
as the migrator, through the stand-in gcloud, an emulation of Google's front end with per-revision
routing and of the build's metadata server (tests/cloud_run_front.py), and real function servers,
the old revision and the candidate. The test step is not run (it is this suite); it must be the
README's test command, which CI runs.
"""

import ast
import asyncio
import itertools
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy.engine import make_url

from tests import fake_gcloud, iam_model
from tests.cloud_run_front import FrontEnd, MetadataServer, identity_token
from tests.function_server import serve_function, serve_functions
from tests.helpers import admin, fetchval

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "cloudbuild.yaml"
TEST_CONFIG = ROOT / "cloudbuild-test.yaml"
BOOTSTRAP = ROOT / "scripts" / "bootstrap.sh"
README = ROOT / "README.md"

# Cloud Build's built-in substitutions; any other `$NAME` is an error when the build is submitted.
BUILT_INS = {
    "PROJECT_ID",
    "PROJECT_NUMBER",
    "BUILD_ID",
    "LOCATION",
    "TRIGGER_NAME",
    "COMMIT_SHA",
    "REVISION_ID",
    "SHORT_SHA",
    "REPO_NAME",
    "REPO_FULL_NAME",
    "BRANCH_NAME",
    "TAG_NAME",
    "REF_NAME",
    "TRIGGER_BUILD_CONFIG_PATH",
    "SERVICE_ACCOUNT_EMAIL",
    "SERVICE_ACCOUNT",
}
# `$$` is a literal `$`; `${NAME}` and `$NAME` are substitutions.
REFERENCE = re.compile(r"\$\$|\$\{(\w+)\}|\$(\w+)")
SECRET_LOOKING = [
    re.compile(r"passw(?:or)?d\s*[=:]", re.IGNORECASE),
    re.compile(r"--(?:root-)?password(?:=|\s)", re.IGNORECASE),
    re.compile(r"PGPASSWORD\s*=", re.IGNORECASE),  # set in a file; naming the variable is fine
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\"private_key(?:_id)?\"\s*:"),
    re.compile(r"GOOGLE_APPLICATION_CREDENTIALS"),
    re.compile(r"\bAIza[0-9A-Za-z_-]{35}\b"),  # API key
    re.compile(r"\bya29\.[0-9A-Za-z_-]{20,}"),  # OAuth access token
    re.compile(r"\beyJ[0-9A-Za-z_-]{10,}\.[0-9A-Za-z_-]{10,}\."),  # JWT
    re.compile(r"\b(?:secretEnv|availableSecrets)\b"),
]


@pytest.fixture(scope="module")
def config() -> dict[str, Any]:
    """The deploy build."""
    loaded: dict[str, Any] = yaml.safe_load(CONFIG.read_text())
    return loaded


@pytest.fixture(scope="module")
def test_config() -> dict[str, Any]:
    """The test build."""
    loaded: dict[str, Any] = yaml.safe_load(TEST_CONFIG.read_text())
    return loaded


@pytest.fixture(scope="module", params=["cloudbuild-test.yaml", "cloudbuild.yaml"])
def any_config(request: pytest.FixtureRequest) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load((ROOT / request.param).read_text())
    return loaded


def tool(name: str) -> str:
    """The full path of a command the test runs (bash, make, git)."""
    path = shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed")
    return path


def steps(config: dict[str, Any]) -> list[dict[str, Any]]:
    found: list[dict[str, Any]] = config["steps"]
    return found


def step(config: dict[str, Any], step_id: str) -> dict[str, Any]:
    (found,) = [candidate for candidate in steps(config) if candidate.get("id") == step_id]
    return found


def command(build_step: dict[str, Any]) -> list[str]:
    """What the step's container runs: its entrypoint (when set) followed by its args."""
    entrypoint = [build_step["entrypoint"]] if "entrypoint" in build_step else []
    return [*entrypoint, *(str(arg) for arg in build_step.get("args", []))]


def deploy_arguments(config: dict[str, Any]) -> list[str]:
    """The candidate's gcloud command: bash scripts/release.sh deploy gcloud run deploy ... runs it,
    adding the tag, --no-traffic and the private path's flags."""
    words = command(step(config, "deploy-candidate"))
    assert words[:3] == ["bash", "scripts/release.sh", "deploy"], words[:3]
    return words[3:]


def step_environment(build_step: dict[str, Any], values: dict[str, str]) -> dict[str, str]:
    return dict(substitute(item, values).split("=", 1) for item in build_step.get("env", []))


def strings(node: object) -> Iterator[str]:
    if isinstance(node, str):
        yield node
    elif isinstance(node, dict):
        for value in node.values():
            yield from strings(value)
    elif isinstance(node, list):
        for item in node:
            yield from strings(item)


def references(text: str) -> set[str]:
    return {match[1] or match[2] for match in REFERENCE.finditer(text) if match[0] != "$$"}


def substitute(text: str, values: dict[str, str]) -> str:
    """Cloud Build's substitution, dynamic: values may themselves contain substitutions."""

    def replace(match: re.Match[str]) -> str:
        if match[0] == "$$":
            return "$"
        return substitute(values[match[1] or match[2]], values)

    return REFERENCE.sub(replace, text)


def default_values(config: dict[str, Any]) -> dict[str, str]:
    return {"PROJECT_ID": "demo-project", **{name: str(value) for name, value in config["substitutions"].items()}}


def flag(arguments: list[str], name: str) -> str:
    (value,) = [argument.split("=", 1)[1] for argument in arguments if argument.startswith(f"{name}=")]
    return value


def readme_section(title: str) -> str:
    text = README.read_text()
    start = text.index(f"\n## {title}\n")
    end = text.find("\n## ", start + 1)
    return text[start : end if end != -1 else len(text)]


def test_the_config_parses_into_named_steps(any_config: dict[str, Any]) -> None:
    assert isinstance(any_config, dict)
    assert steps(any_config), "no steps"
    for build_step in steps(any_config):
        assert build_step.get("name"), build_step
        assert build_step.get("id"), build_step


def test_step_ids_are_unique(any_config: dict[str, Any]) -> None:
    ids = [build_step["id"] for build_step in steps(any_config)]
    assert len(ids) == len(set(ids)), ids


def test_every_wait_for_names_an_earlier_step(any_config: dict[str, Any]) -> None:
    earlier: set[str] = set()
    for position, build_step in enumerate(steps(any_config)):
        if position > 0:
            assert "waitFor" in build_step, f"{build_step['id']}: no explicit waitFor"
        for needed in build_step.get("waitFor", []):
            assert needed == "-" or needed in earlier, f"{build_step['id']} waits for {needed!r}, not an earlier step"
        earlier.add(build_step["id"])


def test_the_test_build_lints_and_tests_side_by_side(test_config: dict[str, Any]) -> None:
    assert [build_step["id"] for build_step in steps(test_config)] == ["install", "lint", "test"]
    assert step(test_config, "lint")["waitFor"] == ["install"]
    assert step(test_config, "test")["waitFor"] == ["install"]


def test_the_deploy_build_checks_migrates_deploys_a_candidate_smoke_tests_then_promotes(config: dict[str, Any]) -> None:
    order = ["install-runtime", "connection-budget", "least-privilege", "migrate", "deploy-candidate"]
    order += ["smoke-test", "promote"]
    assert [build_step["id"] for build_step in steps(config)] == order
    for before, after in itertools.pairwise(order):
        assert step(config, after)["waitFor"] == [before], after
    assert not {"lint", "test"} & {build_step["id"] for build_step in steps(config)}, "no dev tool runs as the migrator"


def test_the_migrator_installs_only_the_locked_runtime_dependencies_with_hashes(config: dict[str, Any]) -> None:
    script = command(step(config, "install-runtime"))[2]
    assert "--require-hashes" in script and "-r requirements-locked.txt" in script
    assert "make" not in script.split() and "uv" not in script.split(), "no dev group, no test tool"


def test_both_builds_pin_their_images_once(test_config: dict[str, Any], config: dict[str, Any]) -> None:
    python_image = config["substitutions"]["_PYTHON_IMAGE"]
    assert re.fullmatch(r"python:3\.12@sha256:[0-9a-f]{64}", python_image), python_image
    assert test_config["substitutions"]["_PYTHON_IMAGE"] == python_image
    assert re.fullmatch(r"\d+\.\d+\.\d+", config["substitutions"]["_GCLOUD_VERSION"])
    for build_step in [*steps(test_config), *steps(config)]:
        assert build_step["name"] in {
            "${_PYTHON_IMAGE}",
            "gcr.io/google.com/cloudsdktool/google-cloud-cli:${_GCLOUD_VERSION}-slim",
        }, build_step["name"]


def test_no_step_counts_on_curl(config: dict[str, Any]) -> None:
    """The google-cloud-cli image does not promise curl; the smoke test runs on Python's standard library."""
    assert not any("curl" in text for build_step in steps(config) for text in strings(build_step))
    assert "import httpx" not in (ROOT / "scripts" / "smoke_test.py").read_text()


def test_every_substitution_used_is_declared(any_config: dict[str, Any]) -> None:
    declared = set(any_config["substitutions"])
    document = {key: value for key, value in any_config.items() if key != "substitutions"}
    used = set().union(*(references(text) for text in strings(document)))
    used |= set().union(*(references(str(value)) for value in any_config["substitutions"].values()))
    user_defined = {name for name in used if name.startswith("_")}
    assert user_defined <= declared, f"used but not declared: {sorted(user_defined - declared)}"
    assert used - user_defined <= BUILT_INS, f"not Cloud Build substitutions: {sorted(used - user_defined - BUILT_INS)}"


def test_every_declared_substitution_is_used(any_config: dict[str, Any]) -> None:
    document = {key: value for key, value in any_config.items() if key != "substitutions"}
    used = set().union(*(references(text) for text in strings(document)))
    assert set(any_config["substitutions"]) <= used, (
        f"declared but unused: {sorted(set(any_config['substitutions']) - used)}"
    )


def test_defaults_that_reference_substitutions_have_dynamic_substitutions_on(any_config: dict[str, Any]) -> None:
    nested = [name for name, value in any_config["substitutions"].items() if references(str(value))]
    assert nested, "no default references another substitution: the option could go"
    assert any_config["options"]["dynamicSubstitutions"] is True


def test_every_project_specific_value_has_a_default(config: dict[str, Any]) -> None:
    expected = {
        "_REGION",
        "_INSTANCE",
        "_DB_NAME",
        "_FUNCTION",
        "_RUNTIME_SA",
        "_MIGRATOR_SA",
        "_BUILDER_SA",
        "_GCLOUD_VERSION",
        "_PYTHON_IMAGE",
        "_CONCURRENCY",
        "_MIN_INSTANCES",
        "_MAX_INSTANCES",
        "_MEMORY",
        "_DB_POOL_SIZE",
        "_DB_MAX_OVERFLOW",
        "_DB_IP_TYPE",
        "_NETWORK",
        "_SUBNET",
    }
    assert set(config["substitutions"]) == expected
    assert all(str(value) for value in config["substitutions"].values())


def test_each_build_runs_as_its_own_account_and_logs_to_cloud_logging_only(
    test_config: dict[str, Any], config: dict[str, Any]
) -> None:
    assert test_config["serviceAccount"] == "projects/$PROJECT_ID/serviceAccounts/${_TESTER_SA}"
    assert config["serviceAccount"] == "projects/$PROJECT_ID/serviceAccounts/${_MIGRATOR_SA}"
    for loaded in (test_config, config):
        assert loaded["options"]["logging"] == "CLOUD_LOGGING_ONLY"  # required with a user-specified account
        assert re.fullmatch(r"\d+s", loaded["timeout"])


def test_the_migration_logs_in_as_the_migrator_through_the_connector(config: dict[str, Any]) -> None:
    migrate = step(config, "migrate")
    environment = dict(item.split("=", 1) for item in migrate["env"])
    assert environment == {
        "INSTANCE_CONNECTION_NAME": "$PROJECT_ID:${_REGION}:${_INSTANCE}",
        "DB_IAM_USER": "${_MIGRATOR_SA}",
        "DB_NAME": "${_DB_NAME}",
        "DB_IP_TYPE": "${_DB_IP_TYPE}",  # private: the connector dials the private IP
    }
    assert command(migrate)[-3:] == ["alembic", "upgrade", "head"]
    assert migrate["name"] == step(config, "install-runtime")["name"], (
        "the venv is only valid in the image that made it"
    )
    assert step(config, "least-privilege")["env"] == migrate["env"], "checked as the migrator, on the same database"


# The connection budget: the build's step, run here on the default substitutions, on a failing
# example, and connected to a server whose limit it must read.

DEFAULT_TIER_MAX_CONNECTIONS = 100  # Cloud SQL's default for 3.75 GB (db-custom-1-3840): docs/scaling.md


def budget_command(config: dict[str, Any], **substitutions: str) -> list[str]:
    """The connection-budget step's command with the build's values, run by this interpreter."""
    values = default_values(config) | substitutions
    arguments = [substitute(argument, values) for argument in command(step(config, "connection-budget"))]
    assert arguments[0] == "/workspace/.venv/bin/python"
    return [sys.executable, *arguments[1:]]


def run_budget(arguments: list[str], **env: str) -> subprocess.CompletedProcess[str]:
    environment = {key: value for key, value in os.environ.items() if key != "INSTANCE_CONNECTION_NAME"} | env
    return subprocess.run(arguments, cwd=ROOT, env=environment, capture_output=True, text=True, timeout=60)


def test_the_budget_step_checks_what_the_deploy_passes_as_the_migrator(config: dict[str, Any]) -> None:
    budget, deploy = step(config, "connection-budget"), deploy_arguments(config)
    assert budget["env"] == step(config, "migrate")["env"], "connected exactly as the migration is"
    arguments = command(budget)
    assert flag(arguments, "--max-instances") == flag(deploy, "--max-instances") == "${_MAX_INSTANCES}"
    assert flag(arguments, "--min-instances") == flag(deploy, "--min-instances") == "${_MIN_INSTANCES}"
    environment = dict(item.split("=", 1) for item in flag(deploy, "--set-env-vars").split(","))
    assert flag(arguments, "--pool-size") == environment["DB_POOL_SIZE"]
    assert flag(arguments, "--max-overflow") == environment["DB_MAX_OVERFLOW"]
    assert "--max-connections" not in " ".join(arguments), "the build reads the limit from the server"


def test_the_default_substitutions_fit_the_default_tier(config: dict[str, Any]) -> None:
    assert 'DB_TIER="${DB_TIER:-db-custom-1-3840}"' in BOOTSTRAP.read_text()
    result = run_budget([*budget_command(config), f"--max-connections={DEFAULT_TIER_MAX_CONNECTIONS}", "--reserved=3"])
    assert result.returncode == 0, result.stderr
    assert "+ an unpromoted candidate 1 x 4 = 4" in result.stdout
    assert "= 93 connections; the database allows 97 (max_connections 100 - 3 reserved): 4 to spare" in result.stdout


def test_a_deploy_over_the_budget_fails_with_the_numbers_and_the_fix(config: dict[str, Any]) -> None:
    arguments = budget_command(config, _MAX_INSTANCES="50")
    result = run_budget([*arguments, f"--max-connections={DEFAULT_TIER_MAX_CONNECTIONS}", "--reserved=3"])
    assert result.returncode == 1
    assert "connection budget exceeded: 50 instances x 4 connections" in result.stderr
    assert "= 445 connections; the database allows 97" in result.stderr
    assert "Fix: _MAX_INSTANCES=10 (the most that fit with 4 per instance)" in result.stderr
    assert "max_connections >= 448" in result.stderr


def test_the_budget_reads_the_limit_from_the_server(config: dict[str, Any], database_url: str) -> None:
    """Connected as the build connects (here through DATABASE_URL): the server's own numbers."""
    limit = int(asyncio.run(fetchval(database_url, "SHOW max_connections")))
    reserved = int(asyncio.run(fetchval(database_url, "SHOW superuser_reserved_connections")))
    fits = run_budget(budget_command(config, _MAX_INSTANCES="1"), DATABASE_URL=database_url)
    assert fits.returncode == 0, fits.stderr
    assert f"(max_connections {limit} - {reserved} reserved)" in fits.stdout
    too_many = run_budget(budget_command(config, _MAX_INSTANCES=str(limit)), DATABASE_URL=database_url)
    assert too_many.returncode == 1
    assert f"(max_connections {limit} - {reserved} reserved)" in too_many.stderr


def test_the_function_runs_as_the_runtime_account(config: dict[str, Any]) -> None:
    arguments = deploy_arguments(config)
    assert arguments[:4] == ["gcloud", "run", "deploy", "${_FUNCTION}"]
    assert flag(arguments, "--base-image") == "python312"
    assert flag(arguments, "--service-account") == "${_RUNTIME_SA}"
    assert flag(arguments, "--build-service-account") == "projects/$PROJECT_ID/serviceAccounts/${_BUILDER_SA}"
    environment = dict(item.split("=", 1) for item in flag(arguments, "--set-env-vars").split(","))
    assert environment["DB_IAM_USER"] == "${_RUNTIME_SA}"
    assert environment["INSTANCE_CONNECTION_NAME"] == "$PROJECT_ID:${_REGION}:${_INSTANCE}"
    assert environment["DB_IP_TYPE"] == "${_DB_IP_TYPE}"
    assert "DATABASE_URL" not in environment
    assert flag(arguments, "--concurrency") == "${_CONCURRENCY}"
    assert flag(arguments, "--min-instances") == "${_MIN_INSTANCES}"
    assert flag(arguments, "--max-instances") == "${_MAX_INSTANCES}"
    assert flag(arguments, "--memory") == "${_MEMORY}"
    assert environment["DB_POOL_SIZE"] == "${_DB_POOL_SIZE}"  # what the connection-budget step checked
    assert environment["DB_MAX_OVERFLOW"] == "${_DB_MAX_OVERFLOW}"
    assert "--allow-unauthenticated" not in arguments


def test_the_deploy_entry_point_is_an_aio_http_function_in_main(config: dict[str, Any]) -> None:
    arguments = deploy_arguments(config)
    assert flag(arguments, "--source") == "."
    entry_point = flag(arguments, "--function")
    tree = ast.parse((ROOT / "main.py").read_text())
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}
    assert entry_point in functions, f"main.py defines no function {entry_point!r}"
    decorators = [ast.unparse(decorator) for decorator in functions[entry_point].decorator_list]
    assert "functions_framework.aio.http" in decorators, decorators


def test_the_test_step_runs_the_readme_test_command(test_config: dict[str, Any]) -> None:
    block = re.search(r"```sh\n(.*?)```", readme_section("Two commands"), re.DOTALL)
    assert block is not None
    test_lines = [line for line in block[1].splitlines() if "#" in line and "test" in line.split("#", 1)[1]]
    assert len(test_lines) == 1, test_lines
    assert command(step(test_config, "test")) == shlex.split(test_lines[0], comments=True)


def test_the_lint_step_runs_make_lint_and_its_commands_pass(test_config: dict[str, Any]) -> None:
    assert command(step(test_config, "lint")) == ["make", "lint"]
    dry_run = subprocess.run(
        [tool("make"), "--no-print-directory", "-n", "-o", ".venv/bin/.installed", "lint"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    lint_commands = [shlex.split(line) for line in dry_run.stdout.splitlines() if line.strip()]
    assert [" ".join(words[:2]) for words in lint_commands] == [
        ".venv/bin/ruff check",
        ".venv/bin/ruff format",
        ".venv/bin/mypy",
    ]
    for words in lint_commands:
        result = subprocess.run(words, cwd=ROOT, capture_output=True, text=True)
        assert result.returncode == 0, f"{shlex.join(words)}:\n{result.stdout}{result.stderr}"


def test_every_make_target_a_step_runs_exists(any_config: dict[str, Any]) -> None:
    for build_step in steps(any_config):
        if build_step.get("entrypoint") == "make":
            for target in build_step["args"]:
                result = subprocess.run([tool("make"), "-n", target], cwd=ROOT, capture_output=True, text=True)
                assert result.returncode == 0, f"{build_step['id']}: make {target}: {result.stderr}"


def test_every_script_a_step_calls_exists(any_config: dict[str, Any]) -> None:
    for build_step in steps(any_config):
        for text in strings(build_step):
            for path in re.findall(r"(?<![\w.-])(?:\./)?((?:scripts|\.ci|migrations|tests)/[\w./-]+)", text):
                assert (ROOT / path).exists(), f"{build_step['id']} calls {path}, which does not exist"
            for absolute in re.findall(r"/workspace/([\w./-]+)", text):
                assert absolute.startswith(".venv/") or (ROOT / absolute).exists(), (build_step["id"], absolute)


def test_nothing_looks_like_a_secret(config: dict[str, Any]) -> None:
    for path in (CONFIG, TEST_CONFIG, *sorted((ROOT / "scripts").glob("*.sh"))):
        for line_number, line in enumerate(path.read_text().splitlines(), start=1):
            for pattern in SECRET_LOOKING:
                assert not pattern.search(line), f"{path.name}:{line_number} looks like a secret: {line.strip()}"


def test_every_build_submit_uploads_with_the_gitignore() -> None:
    """.gcloudignore is the function's upload list; `gcloud builds submit` needs the tests and the
    Makefile. The deploy build reuses the test build's upload, so only the first upload names it."""
    submit = ROOT / "scripts" / "submit.sh"
    documented = [TEST_CONFIG.read_text(), readme_section("Deploy"), submit.read_text()]
    submits = [re.sub(r"\\\n\s*", " ", text) for text in documented]
    commands = [line for text in submits for line in text.splitlines() if re.search(r"gcloud builds submit [-.]", line)]
    assert len(commands) >= 2, commands
    for line in commands:
        assert "--config=cloudbuild-test.yaml" in line and "--ignore-file=.gitignore" in line, line
    (deploy,) = [line for line in submit.read_text().splitlines() if "--config=cloudbuild.yaml" in line]
    assert 'builds submit "$source_archive"' in deploy, "the deploy build ships the archive the tests ran on"
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("no git checkout to read .gitignore with")
    needed = [
        "Makefile",
        "requirements.txt",
        "uv.lock",
        "pyproject.toml",
        "alembic.ini",
        "main.py",
        ".gcloudignore",
        "app/api.py",
        "migrations/env.py",
        "tests/conftest.py",
        "scripts/embedded_db.py",
    ]
    ignored = subprocess.run(
        [tool("git"), "-c", "safe.directory=*", "check-ignore", "--no-index", *needed],
        cwd=ROOT,
        capture_output=True,
        text=True,
    )
    assert ignored.returncode == 1, f"the build's upload would lack: {ignored.stdout.split()} {ignored.stderr}"


def test_a_deploy_by_hand_uploads_only_the_function(tmp_path: Path) -> None:
    """`gcloud functions deploy --source=.` reads .gcloudignore (gitignore syntax plus `#!include:`):
    of every file in the repository, and of the ones a user makes (`.env` with a password), only
    app/, main.py and requirements.txt may ship."""
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("no git checkout to list the repository's files with")
    lines = []
    for line in (ROOT / ".gcloudignore").read_text().splitlines():
        included = line.removeprefix("#!include:")
        lines += (ROOT / included).read_text().splitlines() if included != line else [line]
    subprocess.run([tool("git"), "init", "-q", str(tmp_path)], check=True)
    (tmp_path / ".gitignore").write_text("\n".join(lines) + "\n")
    listed = subprocess.run(
        [tool("git"), "-c", "safe.directory=*", "ls-files"], cwd=ROOT, capture_output=True, text=True
    )
    tracked = listed.stdout.split()
    made_by_users = [
        ".env",
        ".env.local",
        ".coverage",
        "htmlcov/index.html",
        ".venv/bin/python",
        "app/__pycache__/x.pyc",
    ]
    # A resource package may be named like a top-level folder that stays behind: it must still ship.
    made_by_users += [
        ".hypothesis/constants/x",
        "app/docs/routes.py",
        "app/monitoring/models.py",
        "app/tests/service.py",
    ]
    paths = sorted(set(tracked) | set(made_by_users))
    ignored = subprocess.run(
        [tool("git"), "check-ignore", "--no-index", "--stdin"],
        cwd=tmp_path,
        input="\n".join(paths),
        capture_output=True,
        text=True,
    ).stdout.split()
    shipped = sorted(set(paths) - set(ignored))
    assert shipped, "nothing would ship"
    assert all(path.startswith("app/") or path in {"main.py", "requirements.txt"} for path in shipped), shipped
    assert {"main.py", "requirements.txt", "app/api.py", "app/docs/routes.py", "app/tests/service.py"} <= set(shipped)
    assert "app/__pycache__/x.pyc" not in shipped


# IAM: bootstrap's grants, run through the stand-in gcloud, against docs/permissions.md.

PROJECT = "demo-project"
OWNER = "user:owner@example.com"
MIGRATOR = f"serviceAccount:projects-api-migrator@{PROJECT}.iam.gserviceaccount.com"
RUNTIME = f"serviceAccount:projects-api@{PROJECT}.iam.gserviceaccount.com"
TESTER = f"serviceAccount:projects-api-tester@{PROJECT}.iam.gserviceaccount.com"
BUILDER = f"serviceAccount:projects-api-builder@{PROJECT}.iam.gserviceaccount.com"
SOURCE_BUCKET = f"gs://{PROJECT}_cloudbuild"
FUNCTION = "projects-api"


def run_bootstrap(state_file: Path, bin_dir: Path, **settings: str) -> subprocess.CompletedProcess[str]:
    """scripts/bootstrap.sh as a project Owner with default settings (PROJECT from gcloud's config)."""
    return subprocess.run(
        [tool("bash"), str(BOOTSTRAP)],
        env=fake_gcloud.environment(bin_dir, state_file, OWNER, **settings),
        capture_output=True,
        text=True,
        timeout=120,
    )


def bootstrap_state(folder: Path, **settings: str) -> dict[str, Any]:
    state_file = folder / "state.json"
    state_file.write_text(json.dumps(fake_gcloud.new_state(PROJECT, OWNER)))
    result = run_bootstrap(state_file, fake_gcloud.install(folder), **settings)
    assert result.returncode == 0, result.stdout + result.stderr
    state: dict[str, Any] = json.loads(state_file.read_text())
    return state


@pytest.fixture(scope="module")
def bootstrapped(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The project's state after bootstrap, as the stand-in gcloud kept it."""
    return bootstrap_state(tmp_path_factory.mktemp("bootstrap"))


@pytest.fixture(scope="module")
def bootstrapped_private(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return bootstrap_state(tmp_path_factory.mktemp("bootstrap-private"), DB_IP_TYPE="private")


IDENTITIES = {"you": OWNER, "migrator": MIGRATOR, "runtime": RUNTIME, "tester": TESTER, "builder": BUILDER}


def resource_of(on: str) -> str:
    return {
        "project": "project",
        "function": "function",
        "SOURCE_BUCKET": SOURCE_BUCKET,
        **{f"{name.upper()}_SA": member.split(":", 1)[1] for name, member in IDENTITIES.items() if name != "you"},
    }[on]


def private_only(need: iam_model.Need) -> bool:
    return "private path" in need.command


def test_every_identity_holds_every_permission_its_steps_need(
    bootstrapped: dict[str, Any], bootstrapped_private: dict[str, Any]
) -> None:
    """Each row of docs/permissions.md: the identity holds the row's role, through bootstrap's
    grants, on the row's resource, and the role model says that role holds the permission."""
    roles = iam_model.role_permissions()
    for need in iam_model.needs():
        if need.permission == "—":
            continue
        assert need.permission in roles[need.role], f"the role model does not give {need.role} {need.permission}"
        member, resource = IDENTITIES[need.runs_as], resource_of(need.on)
        state = bootstrapped_private if private_only(need) else bootstrapped
        if need.runs_as == "you":  # an Owner; the row's role is what a non-Owner would need
            assert iam_model.holds(state, member, need.permission, resource), need
        else:
            held = iam_model.granted_roles(state, member, resource)
            assert need.role in held, f"{need.runs_as} lacks {need.role} on {need.on} for {need.command}: {held}"


def test_bootstrap_makes_the_image_repository_with_its_cleanup_policy(bootstrapped: dict[str, Any]) -> None:
    """Before the first image: tests/test_rollback.py checks the policy against rollback.sh."""
    repository = bootstrapped["repositories"]["europe-west1/cloud-run-source-deploy"]
    assert repository["policies"] == json.loads((ROOT / "scripts" / "artifact-cleanup-policy.json").read_text())
    assert repository["dry_run"] is False, "a policy in dry run deletes nothing"


def test_the_role_table_of_the_document_is_the_model() -> None:
    documented = iam_model.documented_roles()
    for role, granted in iam_model.ROLES.items():
        assert role in documented, f"docs/permissions.md lacks {role}"
        permissions, source, confirmed = documented[role]
        assert permissions == set(granted.permissions), (role, permissions ^ set(granted.permissions))
        assert (source, confirmed) == (granted.source, granted.confirmed), role
    assert set(documented) == set(iam_model.ROLES), set(documented) ^ set(iam_model.ROLES)
    assert all(granted.source.startswith("https://cloud.google.com/") for granted in iam_model.ROLES.values())


def test_the_table_covers_the_steps_of_both_builds(test_config: dict[str, Any], config: dict[str, Any]) -> None:
    ids = {build_step["id"] for build_step in [*steps(test_config), *steps(config)]}
    table_steps = {need.step for need in iam_model.needs() if need.runs_as in {"migrator", "tester", "builder"}}
    assert table_steps <= ids | {"build", "test build", "function build"}, table_steps - ids
    assert {"migrate", "least-privilege", "deploy-candidate", "smoke-test", "promote"} <= table_steps
    for build_step in steps(config):  # every gcloud command a step runs has its rows
        text = " ".join(command(build_step))
        script = ROOT / "scripts" / "release.sh"
        found = re.findall(r"\bgcloud((?: [a-z][a-z-]+)+)", text)
        if "scripts/release.sh" in text:  # the commands it runs: gcloud first on a line or in $(...)
            found += re.findall(r"(?:^|\$\()\s*gcloud((?: [a-z][a-z-]+)+)", script.read_text(), re.MULTILINE)
        for words in found:
            called = words.split()
            assert any(
                iam_model.gcloud_command(need.command) == called[: len(iam_model.gcloud_command(need.command) or [])]
                for need in iam_model.needs()
                if need.runs_as == "migrator"
            ), (build_step["id"], words)


def test_bootstrap_grants_the_service_accounts_nothing_the_table_does_not_name(
    bootstrapped: dict[str, Any], bootstrapped_private: dict[str, Any]
) -> None:
    for state, private in ((bootstrapped, False), (bootstrapped_private, True)):
        for runs_as in ("migrator", "runtime", "tester", "builder"):
            member = IDENTITIES[runs_as]
            named = {
                need.role
                for need in iam_model.needs()
                if need.runs_as == runs_as and (private or not private_only(need))
            }
            granted = iam_model.roles_of(member, state["project_policy"])
            for holder in [*state["service_accounts"].values(), *state.get("buckets", {}).values()]:
                granted |= iam_model.roles_of(member, holder["policy"])
            assert granted == named, f"{runs_as}: granted {sorted(granted - named)}, missing {sorted(named - granted)}"


def test_the_test_builds_identity_can_only_write_logs_and_read_its_source(bootstrapped: dict[str, Any]) -> None:
    """It runs every dev dependency from PyPI: it must not migrate, deploy, read the database or
    start a build, least of all as a stronger identity."""
    may = {("logging.logEntries.create", "project"), ("storage.objects.get", SOURCE_BUCKET)}
    for permission, resource in may:
        assert iam_model.holds(bootstrapped, TESTER, permission, resource), permission
    assert not iam_model.holds(bootstrapped, TESTER, "storage.objects.get", "project"), "its bucket only"
    never = [
        "cloudsql.instances.connect",  # the database, through the connector
        "cloudsql.instances.login",
        "cloudsql.instances.get",
        "run.services.create",  # a deploy
        "run.services.update",
        "cloudbuild.builds.create",  # a build, of any identity
        "run.routes.invoke",
        "storage.objects.create",
    ]
    for permission in never:
        for resource in ("project", "function", SOURCE_BUCKET):
            assert not iam_model.holds(bootstrapped, TESTER, permission, resource), (permission, resource)
    for account in bootstrapped["service_accounts"]:
        for permission in ("iam.serviceAccounts.actAs", "iam.serviceAccounts.getOpenIdToken"):
            assert not iam_model.holds(bootstrapped, TESTER, permission, account), (permission, account)


def test_the_test_builds_identity_cannot_submit_a_build_through_the_stand_in(
    tmp_path: Path, bootstrapped: dict[str, Any]
) -> None:
    project = fake_gcloud.Project(tmp_path, json.loads(json.dumps(bootstrapped)))
    for config_file in ("cloudbuild.yaml", "cloudbuild-test.yaml"):
        refused = project.gcloud(
            "builds", "submit", ".", f"--config={ROOT / config_file}", f"--project={PROJECT}", account=TESTER
        )
        assert refused.returncode == 1 and "cloudbuild.builds.create" in refused.stderr, refused.stderr


def test_the_function_image_is_built_by_its_own_account(bootstrapped: dict[str, Any]) -> None:
    """The builder holds Cloud Run Builder and nothing on the database; the migrator may act as it."""
    assert iam_model.roles_of(BUILDER, bootstrapped["project_policy"]) == {"roles/run.builder"}
    builder = BUILDER.split(":", 1)[1]
    assert "roles/iam.serviceAccountUser" in iam_model.granted_roles(bootstrapped, MIGRATOR, builder)
    assert not iam_model.holds(bootstrapped, BUILDER, "cloudsql.instances.connect", "project")


def test_the_smoke_tests_token_is_the_migrators_own_and_service_account_user_does_not_give_it(
    bootstrapped: dict[str, Any],
) -> None:
    migrator = MIGRATOR.split(":", 1)[1]
    assert "roles/iam.serviceAccountOpenIdTokenCreator" in iam_model.granted_roles(bootstrapped, MIGRATOR, migrator)
    assert "iam.serviceAccounts.getOpenIdToken" not in iam_model.role_permissions()["roles/iam.serviceAccountUser"]


# scripts/submit.sh: the two builds, in order, from one upload, through the stand-in gcloud.


def test_submit_runs_the_test_build_then_the_deploy_build_from_the_same_upload(
    tmp_path: Path, bootstrapped: dict[str, Any]
) -> None:
    project = fake_gcloud.Project(tmp_path, json.loads(json.dumps(bootstrapped)))
    result = project.run("submit.sh", PROJECT=PROJECT)
    assert result.returncode == 0, result.stdout + result.stderr
    test_build, deploy_build = project.state["builds"]
    assert test_build["config"] == "cloudbuild-test.yaml" and test_build["service_account"] == TESTER.split(":")[1]
    assert deploy_build["config"] == "cloudbuild.yaml" and deploy_build["service_account"] == MIGRATOR.split(":")[1]
    assert deploy_build["source"] == test_build["source"], "the deploy build ships what the tests passed"


def test_submit_stops_when_the_test_build_fails(tmp_path: Path, bootstrapped: dict[str, Any]) -> None:
    state = json.loads(json.dumps(bootstrapped)) | {"failing_builds": ["cloudbuild-test.yaml"]}
    project = fake_gcloud.Project(tmp_path, state)
    result = project.run("submit.sh", PROJECT=PROJECT)
    assert result.returncode == 1
    assert [build["config"] for build in project.state["builds"]] == ["cloudbuild-test.yaml"]


def test_submit_needs_service_account_user_on_both_build_accounts(tmp_path: Path, bootstrapped: dict[str, Any]) -> None:
    state = json.loads(json.dumps(bootstrapped))
    engineer = "user:dev@example.com"
    for role in ("roles/cloudbuild.builds.editor", "roles/serviceusage.serviceUsageConsumer"):
        state["project_policy"].setdefault(role, []).append(engineer)
    state["buckets"][SOURCE_BUCKET]["policy"].setdefault("roles/storage.objectAdmin", []).append(engineer)
    state["service_accounts"][TESTER.split(":")[1]]["policy"]["roles/iam.serviceAccountUser"] = [engineer]
    project = fake_gcloud.Project(tmp_path, state)
    result = project.run("submit.sh", account=engineer, PROJECT=PROJECT)
    assert result.returncode == 1
    assert f"Permission 'iam.serviceAccounts.actAs' denied on {MIGRATOR.split(':')[1]}" in result.stderr
    assert [build["config"] for build in project.state["builds"]] == ["cloudbuild-test.yaml"]


# The rollout, run here as the migrator: deploy-candidate (scripts/release.sh and the stand-in
# gcloud), smoke-test (scripts/smoke_test.py against the emulated front end, with a token from the
# emulated metadata server) and promote, in the build's order; a failed step stops the build.


@dataclass
class Rollout:
    steps: dict[str, subprocess.CompletedProcess[str]]
    front: FrontEnd
    state_file: Path

    @property
    def passed(self) -> bool:
        return all(result.returncode == 0 for result in self.steps.values()) and "promote" in self.steps

    @property
    def output(self) -> str:
        return "".join(result.stdout + result.stderr for result in self.steps.values())

    @property
    def state(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.state_file.read_text())
        return loaded

    def service(self) -> dict[str, Any]:
        found: dict[str, Any] = self.state["functions"][FUNCTION]
        return found

    def call_service(self, count: int) -> list[int]:
        """`count` reads at the service URL, as the function's users make them."""
        token = identity_token(MIGRATOR, f"{self.front.url}/s/{FUNCTION}")  # an invoker
        statuses = []
        for _ in range(count):
            answer = httpx.get(
                f"{self.front.url}/s/{FUNCTION}/v1/projects?limit=1", headers={"Authorization": f"Bearer {token}"}
            )
            statuses.append(answer.status_code)
        return statuses


OPEN_FRONT_ENDS: list[Any] = []


@pytest.fixture(autouse=True)
def close_front_ends() -> Iterator[None]:
    yield
    while OPEN_FRONT_ENDS:
        OPEN_FRONT_ENDS.pop().__exit__()


def release_step(config: dict[str, Any], step_id: str, values: dict[str, str]) -> tuple[list[str], dict[str, str]]:
    build_step = step(config, step_id)
    words = [substitute(argument, values) for argument in command(build_step)]
    if words[0] == "bash":
        words = [tool("bash"), str(ROOT / words[1]), *words[2:]]
    else:
        assert words[:2] == ["python", "scripts/smoke_test.py"], words
        words = [sys.executable, str(ROOT / words[1]), *words[2:], "--pause-s=0"]
    return words, step_environment(build_step, values)


def rollout(
    config: dict[str, Any],
    folder: Path,
    state: dict[str, Any],
    upstreams: dict[str, str | list[int]],
    *,
    front: FrontEnd | None = None,
    **substitutions: str,
) -> Rollout:
    """The deploy build's last three steps, in /workspace's stead `folder`, as the migrator."""
    state_file = folder / "state.json"
    bin_dir = fake_gcloud.install(folder)
    if front is None:
        front = FrontEnd(state_file, upstreams)
        OPEN_FRONT_ENDS.append(front.__enter__())
    state_file.write_text(json.dumps(state | {"function_uri": front.url}))
    values = default_values(config) | {"PROJECT_ID": PROJECT, "BUILD_ID": "b-1234"} | substitutions
    environment = fake_gcloud.environment(bin_dir, state_file, MIGRATOR)
    done: dict[str, subprocess.CompletedProcess[str]] = {}
    with MetadataServer(state_file, MIGRATOR) as metadata:
        for step_id in ("deploy-candidate", "smoke-test", "promote"):
            words, settings = release_step(config, step_id, values)
            done[step_id] = subprocess.run(
                words,
                cwd=folder,
                env=environment | settings | {"GCE_METADATA_HOST": metadata.host},
                capture_output=True,
                text=True,
                timeout=120,
            )
            if done[step_id].returncode != 0:
                break
    return Rollout(done, front, state_file)


def deployed_once(bootstrapped: dict[str, Any]) -> dict[str, Any]:
    """The state after one passing build: revision 1 promoted and serving."""
    state = json.loads(json.dumps(bootstrapped))
    first = f"{FUNCTION}-00001-x"
    state["functions"][FUNCTION] = {
        "policy": {},
        "region": "europe-west1",
        "service_account": RUNTIME.split(":", 1)[1],
        "managed_by": "run",
        "revisions": [first],
        "traffic": {first: 100},
        "tags": {"candidate": first, "promoted-00001": first},
    }
    return state


OLD, CANDIDATE = f"{FUNCTION}-00001-x", f"{FUNCTION}-00002-x"


@pytest.fixture(scope="module")
def served_function(database_url: str) -> Iterator[str]:
    """The real function on the suite's database, whose user may read and write every table."""
    with serve_function(database_url, source="main.py") as server:
        yield server.base_url


@pytest.fixture(scope="module")
def old_and_new(database_url: str) -> Iterator[tuple[str, str]]:
    """Two real function servers on one database: the serving revision and the candidate."""
    with serve_functions(2, database_url, source="main.py") as (old, new):
        yield old.base_url, new.base_url


def function_as(server_url: str, database_url: str, grants: str) -> Iterator[str]:
    user = f"limited_{uuid.uuid4().hex[:10]}"
    asyncio.run(admin(server_url, f'CREATE ROLE "{user}" LOGIN'))
    if grants:
        asyncio.run(admin(database_url, grants.format(user=user)))
    url = make_url(database_url).set(username=user).render_as_string(hide_password=False)
    try:
        with serve_function(url, source="main.py") as server:
            assert httpx.get(f"{server.base_url}/readyz", timeout=10).status_code == 200
            yield server.base_url
    finally:
        if grants:
            asyncio.run(admin(database_url, f'DROP OWNED BY "{user}"'))
        asyncio.run(admin(server_url, f'DROP ROLE IF EXISTS "{user}"'))


@pytest.fixture(scope="module")
def function_without_grants(server_url: str, database_url: str) -> Iterator[str]:
    """Logged in as a database user granted no table, as when roles.sql has not run: /readyz
    answers 200, every /v1 read fails."""
    yield from function_as(server_url, database_url, "")


@pytest.fixture(scope="module")
def function_that_may_only_read(server_url: str, database_url: str) -> Iterator[str]:
    """Reads answer 200, a write is a 500: the write half of the smoke test is what catches it."""
    yield from function_as(server_url, database_url, 'GRANT SELECT ON ALL TABLES IN SCHEMA public TO "{user}"')


def test_the_first_deploy_takes_traffic_at_once_and_is_still_smoke_tested(
    config: dict[str, Any], tmp_path: Path, bootstrapped: dict[str, Any], served_function: str
) -> None:
    done = rollout(config, tmp_path, json.loads(json.dumps(bootstrapped)), {OLD: served_function})
    assert done.passed, done.output
    assert "the CLI refuses --no-traffic when it creates a service" in done.output
    (deploy,) = [call["args"] for call in done.state["calls"] if call["args"][:2] == ["run", "deploy"]]
    assert "--no-traffic" not in deploy and "--tag=candidate" in deploy
    assert done.service()["traffic"] == {OLD: 100}
    assert done.service()["tags"] == {"candidate": OLD, "promoted-00001": OLD}
    methods = [(method, status) for _, method, _, status in done.front.served]
    assert methods == [("GET", 200), ("POST", 201), ("DELETE", 204)], "anonymous refused, then read, write, delete"
    calls = [call["args"][:3] for call in done.state["calls"] if call["account"] == MIGRATOR]
    assert calls == [
        ["run", "services", "describe"],
        ["run", "deploy", FUNCTION],
        ["run", "services", "describe"],
        ["run", "services", "describe"],
        ["run", "services", "update-traffic"],
    ]
    assert done.service()["network"] == {}, "the public path needs no VPC"
    assert done.service()["environment"]["DB_IP_TYPE"] == "public"


def test_the_smoke_tests_requests_and_row_are_marked_as_the_smoke_test(
    config: dict[str, Any], tmp_path: Path, bootstrapped: dict[str, Any], database_url: str
) -> None:
    with serve_function(database_url, source="main.py") as server:
        done = rollout(config, tmp_path, json.loads(json.dumps(bootstrapped)), {OLD: server.base_url})
        assert done.passed, done.output
        logged = [entry for entry in server.json_logs() if str(entry.get("request_id", "")).startswith("smoke-b-1234-")]
    assert len(logged) >= 3, "every request of the smoke test is logged under its X-Request-ID"
    rows = asyncio.run(fetchval(database_url, "SELECT count(*) FROM projects WHERE name = 'smoke-test b-1234'"))
    assert rows == 0, "the smoke test deletes what it wrote"


def test_traffic_moves_to_the_candidate_only_after_its_smoke_test_passes(
    config: dict[str, Any], tmp_path: Path, bootstrapped: dict[str, Any], old_and_new: tuple[str, str]
) -> None:
    old, new = old_and_new
    done = rollout(config, tmp_path, deployed_once(bootstrapped), {OLD: old, CANDIDATE: new})
    assert done.passed, done.output
    (deploy,) = [call["args"] for call in done.state["calls"] if call["args"][:2] == ["run", "deploy"]]
    assert "--no-traffic" in deploy and "--tag=candidate" in deploy
    smoke = [revision for revision, method, path, _ in done.front.served if path != "/readyz"]
    assert smoke == [CANDIDATE] * 3, "the smoke test reached the candidate alone, at its tag URL"
    assert done.service()["traffic"] == {CANDIDATE: 100}
    assert done.service()["tags"]["promoted-00002"] == CANDIDATE
    assert done.call_service(5) == [200] * 5
    assert done.front.revisions_served()[-5:] == [CANDIDATE] * 5


@pytest.mark.parametrize("failure", ["no grants", "500 on write"])
def test_a_failing_smoke_test_leaves_the_old_revision_serving_every_request_and_fails_the_build(
    config: dict[str, Any],
    tmp_path: Path,
    bootstrapped: dict[str, Any],
    served_function: str,
    function_without_grants: str,
    function_that_may_only_read: str,
    failure: str,
) -> None:
    candidate = function_without_grants if failure == "no grants" else function_that_may_only_read
    done = rollout(config, tmp_path, deployed_once(bootstrapped), {OLD: served_function, CANDIDATE: candidate})
    assert not done.passed and "promote" not in done.steps
    assert done.steps["smoke-test"].returncode == 1
    assert f"revision {CANDIDATE} FAILED its smoke test" in done.output
    expected = "GET /v1/projects?limit=1 answered 500" if failure == "no grants" else "POST /v1/projects answered 500"
    assert expected in done.output
    assert "lacks its grants (scripts/grant_roles.sh)" in done.output
    assert done.service()["traffic"] == {OLD: 100}
    served_before = len(done.front.revisions_served())
    assert done.call_service(20) == [200] * 20
    assert done.front.revisions_served()[served_before:] == [OLD] * 20, "the old revision serves every request"


def test_the_private_path_deploys_with_direct_vpc_egress_and_a_private_ip(
    config: dict[str, Any], tmp_path: Path, bootstrapped_private: dict[str, Any]
) -> None:
    """_DB_IP_TYPE=private: the function's egress into the VPC, and the connector's ip_type private."""
    done = rollout(
        config,
        tmp_path,
        json.loads(json.dumps(bootstrapped_private)),
        {OLD: [200]},
        _DB_IP_TYPE="private",
        _NETWORK="shared",
        _SUBNET="shared-eu",
    )
    assert done.passed, done.output
    assert done.service()["network"] == {
        "network": "shared",
        "subnet": "shared-eu",
        "vpc-egress": "private-ranges-only",  # Google APIs (the connector's Admin API calls) stay direct
    }
    assert done.service()["environment"]["DB_IP_TYPE"] == "private"
    migrate = step_environment(step(config, "migrate"), default_values(config) | {"_DB_IP_TYPE": "private"})
    assert migrate["DB_IP_TYPE"] == "private"


def test_a_function_deployed_by_the_previous_release_is_detached_once_then_rolled_out(
    config: dict[str, Any], tmp_path: Path, bootstrapped: dict[str, Any], old_and_new: tuple[str, str]
) -> None:
    """The previous release deployed with `gcloud functions deploy`: the build stops and says how
    to hand the function to Cloud Run; after `gcloud functions detach`, the old revision keeps
    serving until the candidate passed."""
    state = json.loads(json.dumps(bootstrapped))
    (tmp_path / "previous").mkdir()
    previous_release = fake_gcloud.Project(tmp_path / "previous", state)
    deployed = previous_release.gcloud(
        "functions",
        "deploy",
        FUNCTION,
        "--gen2",
        "--runtime=python312",
        "--region=europe-west1",
        "--source=.",
        "--entry-point=api",
        "--trigger-http",
        f"--service-account={RUNTIME.split(':')[1]}",
        f"--build-service-account=projects/{PROJECT}/serviceAccounts/{MIGRATOR.split(':')[1]}",
        "--set-env-vars=DB_IP_TYPE=public",
    )
    assert deployed.returncode == 0, deployed.stderr
    old, new = old_and_new
    stopped = rollout(config, tmp_path, previous_release.state, {OLD: old, CANDIDATE: new})
    assert not stopped.passed and "smoke-test" not in stopped.steps
    assert f"gcloud functions detach {FUNCTION} --region=europe-west1" in stopped.output
    assert stopped.service()["revisions"] == [OLD] and stopped.service()["traffic"] == {OLD: 100}
    owner = fake_gcloud.Project(tmp_path / "previous", stopped.state)
    detached = owner.gcloud("functions", "detach", FUNCTION, "--region=europe-west1", f"--project={PROJECT}")
    assert detached.returncode == 0, detached.stderr
    upgraded = rollout(config, tmp_path, owner.state, {OLD: old, CANDIDATE: new}, front=stopped.front)
    assert upgraded.passed, upgraded.output
    (deploy,) = [call["args"] for call in upgraded.state["calls"] if call["args"][:2] == ["run", "deploy"]]
    assert "--no-traffic" in deploy, "the detached function exists: its candidate starts without traffic"
    assert upgraded.service()["traffic"] == {CANDIDATE: 100}
    # The previous release's revision, serving when the upgrade began, is a rollback target.
    assert upgraded.service()["tags"]["promoted-00001"] == OLD
    assert f"{OLD} (deployed before this release) serves all traffic: tagged promoted-00001" in upgraded.output
    owner = fake_gcloud.Project(tmp_path / "previous", upgraded.state)
    back = owner.run("rollback.sh", PROJECT=PROJECT)
    assert back.returncode == 0, back.stdout + back.stderr
    assert owner.state["functions"][FUNCTION]["traffic"] == {OLD: 100}


def test_a_first_revision_that_failed_its_smoke_test_never_becomes_a_rollback_target(
    config: dict[str, Any], tmp_path: Path, bootstrapped: dict[str, Any]
) -> None:
    """Only a service no build of this release deployed to has its serving revision marked: the
    first deploy of this release takes traffic at once, and when its smoke test failed, it keeps
    the `candidate` tag and is not marked by the next build."""
    upstreams: dict[str, str | list[int]] = {OLD: [503], CANDIDATE: [200]}
    failed = rollout(config, tmp_path, json.loads(json.dumps(bootstrapped)), upstreams)
    assert not failed.passed and failed.service()["tags"] == {"candidate": OLD}
    passed = rollout(config, tmp_path, failed.state, upstreams, front=failed.front)
    assert passed.passed, passed.output
    assert passed.service()["tags"] == {"candidate": CANDIDATE, "promoted-00002": CANDIDATE}


def test_without_the_openid_token_role_the_smoke_test_gets_no_token(
    config: dict[str, Any], tmp_path: Path, bootstrapped: dict[str, Any]
) -> None:
    state = deployed_once(bootstrapped)
    migrator = MIGRATOR.split(":", 1)[1]
    del state["service_accounts"][migrator]["policy"]["roles/iam.serviceAccountOpenIdTokenCreator"]
    done = rollout(config, tmp_path, state, {OLD: [200], CANDIDATE: [200]})
    assert not done.passed
    assert "Permission 'iam.serviceAccounts.getOpenIdToken' denied" in done.output
    assert done.service()["traffic"] == {OLD: 100}


def test_the_smoke_test_retries_while_the_candidate_starts(
    config: dict[str, Any], tmp_path: Path, bootstrapped: dict[str, Any]
) -> None:
    done = rollout(config, tmp_path, deployed_once(bootstrapped), {OLD: [200], CANDIDATE: [503, 403, 200]})
    assert done.passed, done.output
    assert [status for revision, _, _, status in done.front.served if revision == CANDIDATE][:3] == [503, 403, 200]


def test_the_smoke_test_fails_when_the_candidate_never_answers(
    config: dict[str, Any], tmp_path: Path, bootstrapped: dict[str, Any]
) -> None:
    done = rollout(config, tmp_path, deployed_once(bootstrapped), {OLD: [200], CANDIDATE: [503]})
    assert not done.passed
    assert len([1 for revision, *_ in done.front.served if revision == CANDIDATE]) == 6
    assert "never answered 200" in done.output
    assert done.service()["traffic"] == {OLD: 100}


def test_the_smoke_test_fails_when_the_function_answers_anonymous_callers(
    config: dict[str, Any], tmp_path: Path, bootstrapped: dict[str, Any]
) -> None:
    state = deployed_once(bootstrapped)
    state["project_policy"].setdefault("roles/run.invoker", []).append("allUsers")
    done = rollout(config, tmp_path, state, {OLD: [200], CANDIDATE: [200]})
    assert not done.passed
    assert "the function must refuse it" in done.output
    assert done.service()["traffic"] == {OLD: 100}


def test_a_token_for_the_tag_url_is_refused(tmp_path: Path, bootstrapped: dict[str, Any]) -> None:
    """The stand-in accepts what Google documents, the service URL as audience, and nothing else."""
    state_file = tmp_path / "state.json"
    state_file.write_text(json.dumps(deployed_once(bootstrapped)))
    with FrontEnd(state_file, {OLD: [200]}) as front:
        tag_url = f"{front.url}/t/candidate/{FUNCTION}"
        for audience, expected in ((tag_url, 401), (f"{front.url}/s/{FUNCTION}", 200)):
            token = identity_token(MIGRATOR, audience)
            answer = httpx.get(f"{tag_url}/v1/projects", headers={"Authorization": f"Bearer {token}"})
            assert answer.status_code == expected, audience
