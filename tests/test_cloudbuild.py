"""cloudbuild.yaml and the IAM it needs, checked offline.

The pipeline's shape (ids, waitFor, order), its substitutions and service accounts, and no secret
anywhere. The permissions: docs/permissions.md lists what every step needs; scripts/bootstrap.sh
runs against a stand-in gcloud that keeps IAM policies (tests/fake_gcloud.py), and each service
account must then hold every permission of its steps. What can run here does: the lint step's
commands, and the deploy and smoke-test steps as the migrator, through the stand-in gcloud, real
curl, an emulation of Google's front end (identity token, run.routes.invoke) and the real function.
The test step is not run (it is this suite); it must be the README's test command, which CI runs.
"""

import ast
import asyncio
import http.server
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from sqlalchemy.engine import make_url

from tests import fake_gcloud, iam_model
from tests.function_server import serve_function
from tests.helpers import admin, fetchval

ROOT = Path(__file__).resolve().parent.parent
CONFIG = ROOT / "cloudbuild.yaml"
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
    loaded: dict[str, Any] = yaml.safe_load(CONFIG.read_text())
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
    """The deploy step's gcloud command: bash -c SCRIPT deploy gcloud functions deploy ... runs it
    as "$@", with the private path's flags added."""
    words = command(step(config, "deploy"))
    assert words[:2] == ["bash", "-c"] and words[3] == "deploy", words[:4]
    return words[4:]


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


def test_the_config_parses_into_named_steps(config: dict[str, Any]) -> None:
    assert isinstance(config, dict)
    assert steps(config), "no steps"
    for build_step in steps(config):
        assert build_step.get("name"), build_step
        assert build_step.get("id"), build_step


def test_step_ids_are_unique(config: dict[str, Any]) -> None:
    ids = [build_step["id"] for build_step in steps(config)]
    assert len(ids) == len(set(ids)), ids


def test_every_wait_for_names_an_earlier_step(config: dict[str, Any]) -> None:
    earlier: set[str] = set()
    for position, build_step in enumerate(steps(config)):
        if position > 0:
            assert "waitFor" in build_step, f"{build_step['id']}: no explicit waitFor"
        for needed in build_step.get("waitFor", []):
            assert needed == "-" or needed in earlier, f"{build_step['id']} waits for {needed!r}, not an earlier step"
        earlier.add(build_step["id"])


def test_lint_and_test_side_by_side_then_budget_migrate_deploy_smoke_test_in_turn(config: dict[str, Any]) -> None:
    assert [build_step["id"] for build_step in steps(config)] == [
        "install",
        "lint",
        "test",
        "connection-budget",
        "migrate",
        "deploy",
        "smoke-test",
    ]
    assert step(config, "lint")["waitFor"] == ["install"]
    assert step(config, "test")["waitFor"] == ["install"]
    assert sorted(step(config, "connection-budget")["waitFor"]) == ["lint", "test"]
    assert step(config, "migrate")["waitFor"] == ["connection-budget"]
    assert step(config, "deploy")["waitFor"] == ["migrate"]
    assert step(config, "smoke-test")["waitFor"] == ["deploy"]


def test_every_substitution_used_is_declared(config: dict[str, Any]) -> None:
    declared = set(config["substitutions"])
    document = {key: value for key, value in config.items() if key != "substitutions"}
    used = set().union(*(references(text) for text in strings(document)))
    used |= set().union(*(references(str(value)) for value in config["substitutions"].values()))
    user_defined = {name for name in used if name.startswith("_")}
    assert user_defined <= declared, f"used but not declared: {sorted(user_defined - declared)}"
    assert used - user_defined <= BUILT_INS, f"not Cloud Build substitutions: {sorted(used - user_defined - BUILT_INS)}"


def test_every_declared_substitution_is_used(config: dict[str, Any]) -> None:
    document = {key: value for key, value in config.items() if key != "substitutions"}
    used = set().union(*(references(text) for text in strings(document)))
    assert set(config["substitutions"]) <= used, f"declared but unused: {sorted(set(config['substitutions']) - used)}"


def test_defaults_that_reference_substitutions_have_dynamic_substitutions_on(config: dict[str, Any]) -> None:
    nested = [name for name, value in config["substitutions"].items() if references(str(value))]
    assert nested, "no default references another substitution: the option could go"
    assert config["options"]["dynamicSubstitutions"] is True


def test_every_project_specific_value_has_a_default(config: dict[str, Any]) -> None:
    expected = {
        "_REGION",
        "_INSTANCE",
        "_DB_NAME",
        "_FUNCTION",
        "_RUNTIME_SA",
        "_MIGRATOR_SA",
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


def test_the_build_runs_as_the_migrator_and_logs_to_cloud_logging_only(config: dict[str, Any]) -> None:
    assert config["serviceAccount"] == "projects/$PROJECT_ID/serviceAccounts/${_MIGRATOR_SA}"
    assert config["options"]["logging"] == "CLOUD_LOGGING_ONLY"  # required with a user-specified account
    assert re.fullmatch(r"\d+s", config["timeout"])


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
    assert migrate["name"] == step(config, "install")["name"], "the venv is only valid in the image that made it"


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
    environment = dict(item.split("=", 1) for item in flag(deploy, "--set-env-vars").split(","))
    assert flag(arguments, "--pool-size") == environment["DB_POOL_SIZE"]
    assert flag(arguments, "--max-overflow") == environment["DB_MAX_OVERFLOW"]
    assert "--max-connections" not in " ".join(arguments), "the build reads the limit from the server"


def test_the_default_substitutions_fit_the_default_tier(config: dict[str, Any]) -> None:
    assert 'DB_TIER="${DB_TIER:-db-custom-1-3840}"' in BOOTSTRAP.read_text()
    result = run_budget([*budget_command(config), f"--max-connections={DEFAULT_TIER_MAX_CONNECTIONS}", "--reserved=3"])
    assert result.returncode == 0, result.stderr
    assert "= 89 connections; the database allows 97 (max_connections 100 - 3 reserved): 8 to spare" in result.stdout


def test_a_deploy_over_the_budget_fails_with_the_numbers_and_the_fix(config: dict[str, Any]) -> None:
    arguments = budget_command(config, _MAX_INSTANCES="50")
    result = run_budget([*arguments, f"--max-connections={DEFAULT_TIER_MAX_CONNECTIONS}", "--reserved=3"])
    assert result.returncode == 1
    assert "connection budget exceeded: 50 instances x 4 connections" in result.stderr
    assert "= 441 connections; the database allows 97" in result.stderr
    assert "Fix: _MAX_INSTANCES=10 (the most that fit with 4 per instance)" in result.stderr
    assert "max_connections >= 444" in result.stderr


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
    assert arguments[:3] == ["gcloud", "functions", "deploy"]
    assert "--gen2" in arguments
    assert flag(arguments, "--service-account") == "${_RUNTIME_SA}"
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
    entry_point = flag(arguments, "--entry-point")
    tree = ast.parse((ROOT / "main.py").read_text())
    functions = {node.name: node for node in tree.body if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef)}
    assert entry_point in functions, f"main.py defines no function {entry_point!r}"
    decorators = [ast.unparse(decorator) for decorator in functions[entry_point].decorator_list]
    assert "functions_framework.aio.http" in decorators, decorators


def test_the_test_step_runs_the_readme_test_command(config: dict[str, Any]) -> None:
    block = re.search(r"```sh\n(.*?)```", readme_section("Two commands"), re.DOTALL)
    assert block is not None
    test_lines = [line for line in block[1].splitlines() if "#" in line and "test" in line.split("#", 1)[1]]
    assert len(test_lines) == 1, test_lines
    assert command(step(config, "test")) == shlex.split(test_lines[0], comments=True)


def test_the_lint_step_runs_make_lint_and_its_commands_pass(config: dict[str, Any]) -> None:
    assert command(step(config, "lint")) == ["make", "lint"]
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


def test_every_make_target_a_step_runs_exists(config: dict[str, Any]) -> None:
    for build_step in steps(config):
        if build_step.get("entrypoint") == "make":
            for target in build_step["args"]:
                result = subprocess.run([tool("make"), "-n", target], cwd=ROOT, capture_output=True, text=True)
                assert result.returncode == 0, f"{build_step['id']}: make {target}: {result.stderr}"


def test_every_script_a_step_calls_exists(config: dict[str, Any]) -> None:
    for build_step in steps(config):
        for text in strings(build_step):
            for path in re.findall(r"(?<![\w.-])(?:\./)?((?:scripts|\.ci|migrations|tests)/[\w./-]+)", text):
                assert (ROOT / path).exists(), f"{build_step['id']} calls {path}, which does not exist"
            for absolute in re.findall(r"/workspace/([\w./-]+)", text):
                assert absolute.startswith(".venv/") or (ROOT / absolute).exists(), (build_step["id"], absolute)


def test_nothing_looks_like_a_secret(config: dict[str, Any]) -> None:
    for path in (CONFIG, *sorted((ROOT / "scripts").glob("*.sh"))):
        for line_number, line in enumerate(path.read_text().splitlines(), start=1):
            for pattern in SECRET_LOOKING:
                assert not pattern.search(line), f"{path.name}:{line_number} looks like a secret: {line.strip()}"


def test_every_build_submit_uploads_with_the_gitignore() -> None:
    """.gcloudignore is the function's upload list; `gcloud builds submit` needs the tests and the Makefile."""
    documented = [CONFIG.read_text(), readme_section("Deploy"), BOOTSTRAP.read_text()]
    submits = [re.sub(r"\\\n\s*", " ", text) for text in documented]
    commands = [
        line for text in submits for line in text.splitlines() if re.search(r"gcloud (beta )?builds submit -", line)
    ]
    assert len(commands) >= 3, commands
    for line in commands:
        assert "--config=cloudbuild.yaml" in line and "--ignore-file=.gitignore" in line, line
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


def run_bootstrap(state_file: Path, bin_dir: Path) -> subprocess.CompletedProcess[str]:
    """scripts/bootstrap.sh as a project Owner with default settings (PROJECT from gcloud's config)."""
    return subprocess.run(
        [tool("bash"), str(BOOTSTRAP)],
        env=fake_gcloud.environment(bin_dir, state_file, OWNER),
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture(scope="module")
def bootstrapped(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The project's state after bootstrap, as the stand-in gcloud kept it."""
    folder = tmp_path_factory.mktemp("bootstrap")
    state_file = folder / "state.json"
    state_file.write_text(json.dumps(fake_gcloud.new_state(PROJECT, OWNER)))
    result = run_bootstrap(state_file, fake_gcloud.install(folder))
    assert result.returncode == 0, result.stdout + result.stderr
    state: dict[str, Any] = json.loads(state_file.read_text())
    return state


def member_of(runs_as: str) -> str:
    return {"you": OWNER, "migrator": MIGRATOR, "runtime": RUNTIME}[runs_as]


def resource_of(on: str) -> str:
    return {
        "project": "project",
        "function": "function",
        "RUNTIME_SA": RUNTIME.split(":", 1)[1],
        "MIGRATOR_SA": MIGRATOR.split(":", 1)[1],
    }[on]


def test_every_identity_holds_every_permission_its_steps_need(bootstrapped: dict[str, Any]) -> None:
    """Each row of docs/permissions.md: the identity holds the row's role, through bootstrap's
    grants, on the row's resource, and the role table says that role holds the permission."""
    roles = iam_model.role_permissions()
    for need in iam_model.needs():
        if need.permission == "—":
            continue
        assert need.permission in roles[need.role], f"the role table does not give {need.role} {need.permission}"
        member, resource = member_of(need.runs_as), resource_of(need.on)
        if need.runs_as == "you":  # an Owner; the row's role is what a non-Owner would need
            assert iam_model.holds(bootstrapped, member, need.permission, resource), need
        else:
            held = iam_model.granted_roles(bootstrapped, member, resource)
            assert need.role in held, f"{need.runs_as} lacks {need.role} on {need.on} for {need.command}: {held}"


def test_the_table_covers_the_steps_of_the_build(config: dict[str, Any]) -> None:
    ids = {build_step["id"] for build_step in steps(config)}
    table_steps = {need.step for need in iam_model.needs() if need.runs_as == "migrator"}
    assert table_steps <= ids | {"build", "function build"}, table_steps - ids
    assert {"migrate", "deploy", "smoke-test"} <= table_steps
    for build_step in steps(config):  # every gcloud command a step runs has its rows
        text = " ".join(command(build_step))
        for words in re.findall(r"\bgcloud((?: [a-z][a-z-]+)+)", text):
            rows = [need for need in iam_model.needs() if need.step == build_step["id"]]
            called = words.split()
            assert any(iam_model.gcloud_command(need.command) == called[: len(called)] for need in rows), (
                build_step["id"],
                words,
            )


def test_bootstrap_grants_the_service_accounts_nothing_the_table_does_not_name(bootstrapped: dict[str, Any]) -> None:
    for runs_as in ("migrator", "runtime"):
        member = member_of(runs_as)
        named = {need.role for need in iam_model.needs() if need.runs_as == runs_as}
        granted = iam_model.roles_of(member, bootstrapped["project_policy"])
        for account in bootstrapped["service_accounts"].values():
            granted |= iam_model.roles_of(member, account["policy"])
        assert granted == named, f"{runs_as}: granted {sorted(granted - named)}, missing {sorted(named - granted)}"


def test_the_smoke_tests_token_is_the_migrators_own_and_service_account_user_does_not_give_it(
    bootstrapped: dict[str, Any],
) -> None:
    migrator = MIGRATOR.split(":", 1)[1]
    assert "roles/iam.serviceAccountOpenIdTokenCreator" in iam_model.granted_roles(bootstrapped, MIGRATOR, migrator)
    assert "iam.serviceAccounts.getOpenIdToken" not in iam_model.role_permissions()["roles/iam.serviceAccountUser"]


# The deploy and smoke-test steps, run here as the migrator: the stand-in gcloud (with the IAM
# state bootstrap left), real curl, and an emulation of Google's front end, which admits a caller
# only with an identity token for its URL and run.routes.invoke, then forwards to the function.


class FrontEnd(http.server.ThreadingHTTPServer):
    """Google's front end of a private function. `upstream` is the function's URL, or a list of
    canned statuses for the authorized calls (the last one repeats)."""

    def __init__(self, state_file: Path, upstream: str | list[int]) -> None:
        self.authorized_calls = 0
        front = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                status, body = front.answer(self.path, self.headers.get("Authorization", ""))
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server_address[1]}"
        self.state_file = state_file
        self.upstream = upstream

    def answer(self, path: str, authorization: str) -> tuple[int, bytes]:
        member = "allUsers"
        if authorization:
            claims = fake_gcloud.read_identity_token(authorization.removeprefix("Bearer "))
            if claims is None or claims["aud"] != self.url:
                return 401, b"Unauthorized: not an identity token for this URL"
            member = claims["sub"]
        state = json.loads(self.state_file.read_text())
        if not iam_model.holds(state, member, "run.routes.invoke", "function"):
            return 403, b"Forbidden: your client does not have permission to get this URL"
        if isinstance(self.upstream, list):
            status = 200 if member == "allUsers" else self.upstream[min(self.authorized_calls, len(self.upstream) - 1)]
            self.authorized_calls += member != "allUsers"
            return status, b'{"items": [], "next_cursor": null}' if status == 200 else b'{"status": %d}' % status
        self.authorized_calls += member != "allUsers"
        answer = httpx.get(self.upstream + path, timeout=30)
        return answer.status_code, answer.content


def deploy_and_smoke_test(
    config: dict[str, Any],
    folder: Path,
    state: dict[str, Any],
    upstream: str | list[int],
    **substitutions: str,
) -> tuple[subprocess.CompletedProcess[str], FrontEnd]:
    """The deploy step, then the smoke-test script, both as the migrator."""
    tool("curl")  # the script's HTTP client, as in the cloud-sdk image
    state_file = folder / "state.json"
    state_file.write_text(json.dumps(state))
    bin_dir = fake_gcloud.install(folder)
    values = default_values(config) | {"PROJECT_ID": PROJECT} | substitutions
    front = FrontEnd(state_file, upstream)
    threading.Thread(target=front.serve_forever, daemon=True).start()
    try:
        with_uri = json.loads(state_file.read_text()) | {"function_uri": front.url}
        state_file.write_text(json.dumps(with_uri))
        deploy_step = step(config, "deploy")
        deploy = [substitute(argument, values) for argument in command(deploy_step)]
        environment = fake_gcloud.environment(bin_dir, state_file, MIGRATOR)
        deployed = subprocess.run(
            deploy,
            env=environment | step_environment(deploy_step, values),
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert deployed.returncode == 0, deployed.stderr
        smoke = step(config, "smoke-test")
        assert smoke["entrypoint"] == "bash" and smoke["args"][0] == "-c"
        script = substitute(smoke["args"][1], values)
        settings = step_environment(smoke, values)
        result = subprocess.run(
            [tool("bash"), "-c", script], env=environment | settings, capture_output=True, text=True, timeout=120
        )
    finally:
        front.shutdown()
        front.server_close()
    return result, front


@pytest.fixture(scope="module")
def served_function(database_url: str) -> Iterator[str]:
    """The real function on the suite's database, whose user may read and write every table."""
    with serve_function(database_url, source="main.py") as server:
        yield server.base_url


@pytest.fixture(scope="module")
def function_without_grants(server_url: str, database_url: str) -> Iterator[str]:
    """The real function logged in as a database user that may connect but was granted no table,
    as when roles.sql has not run: /readyz answers 200, every /v1 read fails."""
    user = f"no_grants_{uuid.uuid4().hex[:10]}"
    asyncio.run(admin(server_url, f'CREATE ROLE "{user}" LOGIN'))
    url = make_url(database_url).set(username=user).render_as_string(hide_password=False)
    try:
        with serve_function(url, source="main.py") as server:
            assert httpx.get(f"{server.base_url}/readyz", timeout=10).status_code == 200
            yield server.base_url
    finally:
        asyncio.run(admin(server_url, f'DROP ROLE IF EXISTS "{user}"'))


def test_deploy_then_smoke_test_read_a_table_through_the_front_end(
    config: dict[str, Any], tmp_path: Path, bootstrapped: dict[str, Any], served_function: str
) -> None:
    result, front = deploy_and_smoke_test(config, tmp_path, bootstrapped, served_function)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "GET /v1/projects?limit=1: 200, the runtime reads its tables" in result.stdout
    assert front.authorized_calls == 1
    state = json.loads((tmp_path / "state.json").read_text())
    calls = [call["args"][:2] for call in state["calls"] if call["account"] == MIGRATOR]
    assert calls == [["functions", "deploy"], ["functions", "describe"], ["auth", "print-identity-token"]]
    (function,) = state["functions"].values()
    assert function["service_account"] == RUNTIME.split(":", 1)[1]
    assert function["network"] == {}, "the public path needs no VPC"
    assert function["environment"]["DB_IP_TYPE"] == "public"


def test_the_private_path_deploys_with_direct_vpc_egress_and_a_private_ip(
    config: dict[str, Any], tmp_path: Path, bootstrapped: dict[str, Any]
) -> None:
    """_DB_IP_TYPE=private: the function's egress into the VPC, and the connector's ip_type private."""
    result, _ = deploy_and_smoke_test(
        config, tmp_path, bootstrapped, [200], _DB_IP_TYPE="private", _NETWORK="shared", _SUBNET="shared-eu"
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (function,) = json.loads((tmp_path / "state.json").read_text())["functions"].values()
    assert function["network"] == {
        "network": "shared",
        "subnet": "shared-eu",
        "direct-vpc-egress": "private-ranges-only",  # Google APIs (the connector's Admin API calls) stay direct
    }
    assert function["environment"]["DB_IP_TYPE"] == "private"
    migrate = step_environment(step(config, "migrate"), default_values(config) | {"_DB_IP_TYPE": "private"})
    assert migrate["DB_IP_TYPE"] == "private"


def test_the_build_fails_when_the_runtime_cannot_read_its_tables(
    config: dict[str, Any], tmp_path: Path, bootstrapped: dict[str, Any], function_without_grants: str
) -> None:
    """/readyz says 200; the read of a table is what shows the grants are missing."""
    result, front = deploy_and_smoke_test(config, tmp_path, bootstrapped, function_without_grants)
    assert result.returncode != 0
    assert front.authorized_calls == 1, "a 500 is not worth retrying"
    assert "GET /v1/projects?limit=1 answered 500" in result.stdout
    assert "lacks its grants (scripts/grant_roles.sh)" in result.stdout


def test_without_the_openid_token_role_the_smoke_test_gets_no_token(
    config: dict[str, Any], tmp_path: Path, bootstrapped: dict[str, Any]
) -> None:
    state = json.loads(json.dumps(bootstrapped))
    migrator = MIGRATOR.split(":", 1)[1]
    del state["service_accounts"][migrator]["policy"]["roles/iam.serviceAccountOpenIdTokenCreator"]
    result, front = deploy_and_smoke_test(config, tmp_path, state, [200])
    assert result.returncode != 0
    assert "Permission 'iam.serviceAccounts.getOpenIdToken' denied" in result.stderr
    assert front.authorized_calls == 0


def test_the_smoke_test_retries_while_the_function_starts(
    config: dict[str, Any], tmp_path: Path, bootstrapped: dict[str, Any]
) -> None:
    result, front = deploy_and_smoke_test(config, tmp_path, bootstrapped, [503, 403, 200])
    assert result.returncode == 0, result.stdout + result.stderr
    assert front.authorized_calls == 3


def test_the_smoke_test_fails_when_the_function_never_answers_200(
    config: dict[str, Any], tmp_path: Path, bootstrapped: dict[str, Any]
) -> None:
    result, front = deploy_and_smoke_test(config, tmp_path, bootstrapped, [503])
    assert result.returncode != 0
    assert front.authorized_calls == 6
    assert "never answered 200" in result.stdout


def test_the_smoke_test_fails_when_the_function_answers_anonymous_callers(
    config: dict[str, Any], tmp_path: Path, bootstrapped: dict[str, Any]
) -> None:
    state = json.loads(json.dumps(bootstrapped))
    state["project_policy"].setdefault("roles/run.invoker", []).append("allUsers")
    result, front = deploy_and_smoke_test(config, tmp_path, state, [200])
    assert result.returncode != 0
    assert "must refuse callers without a token" in result.stdout
    assert front.authorized_calls == 0
