"""cloudbuild.yaml and scripts/bootstrap.sh, checked offline.

The pipeline's shape (ids, waitFor, order), its substitutions and service accounts, and no secret
anywhere. What can run here does: the lint step's commands, bootstrap's syntax and --help, and the
smoke-test script against stub `gcloud` and `sleep` commands and a local HTTP server. The test step is
not run (it is this suite); it must be the README's test command, which CI runs.
"""

import ast
import http.server
import os
import re
import shlex
import shutil
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

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
    re.compile(r"PGPASSWORD", re.IGNORECASE),
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


def test_lint_and_test_run_side_by_side_then_migrate_deploy_and_smoke_test_in_turn(config: dict[str, Any]) -> None:
    assert [build_step["id"] for build_step in steps(config)] == [
        "install",
        "lint",
        "test",
        "migrate",
        "deploy",
        "smoke-test",
    ]
    assert step(config, "lint")["waitFor"] == ["install"]
    assert step(config, "test")["waitFor"] == ["install"]
    assert sorted(step(config, "migrate")["waitFor"]) == ["lint", "test"]
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
    }
    assert command(migrate)[-3:] == ["alembic", "upgrade", "head"]
    assert migrate["name"] == step(config, "install")["name"], "the venv is only valid in the image that made it"


def test_the_function_runs_as_the_runtime_account(config: dict[str, Any]) -> None:
    arguments = command(step(config, "deploy"))
    assert arguments[:3] == ["gcloud", "functions", "deploy"]
    assert "--gen2" in arguments
    assert flag(arguments, "--service-account") == "${_RUNTIME_SA}"
    environment = dict(item.split("=", 1) for item in flag(arguments, "--set-env-vars").split(","))
    assert environment["DB_IAM_USER"] == "${_RUNTIME_SA}"
    assert environment["INSTANCE_CONNECTION_NAME"] == "$PROJECT_ID:${_REGION}:${_INSTANCE}"
    assert "DATABASE_URL" not in environment
    assert flag(arguments, "--concurrency") == "${_CONCURRENCY}"
    assert flag(arguments, "--min-instances") == "${_MIN_INSTANCES}"
    assert flag(arguments, "--max-instances") == "${_MAX_INSTANCES}"
    assert flag(arguments, "--memory") == "${_MEMORY}"
    assert "--allow-unauthenticated" not in arguments


def test_the_deploy_entry_point_is_an_aio_http_function_in_main(config: dict[str, Any]) -> None:
    arguments = command(step(config, "deploy"))
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


def test_bootstrap_passes_bash_n() -> None:
    result = subprocess.run([tool("bash"), "-n", str(BOOTSTRAP)], capture_output=True, text=True)
    assert result.returncode == 0, result.stderr


def test_bootstrap_help_calls_no_gcloud(tmp_path: Path) -> None:
    calls = tmp_path / "gcloud-calls"
    gcloud = tmp_path / "gcloud"
    gcloud.write_text(f'#!/bin/sh\necho "$*" >> {shlex.quote(str(calls))}\n')
    gcloud.chmod(0o755)
    environment = {"PATH": f"{tmp_path}:{os.environ['PATH']}"}
    result = subprocess.run([tool("bash"), str(BOOTSTRAP), "--help"], capture_output=True, text=True, env=environment)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith("Usage: scripts/bootstrap.sh")
    refused = subprocess.run([tool("bash"), str(BOOTSTRAP), "--bogus"], capture_output=True, text=True, env=environment)
    assert refused.returncode == 2
    assert not calls.exists(), calls.read_text()


def test_nothing_looks_like_a_secret(config: dict[str, Any]) -> None:
    for path in (CONFIG, BOOTSTRAP):
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
        "requirements-dev.txt",
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


# The smoke test, run here: stub `gcloud` (URL and token) and `sleep`, real curl, a local server.

TOKEN = "stub-identity-token"


class FunctionStub(http.server.ThreadingHTTPServer):
    """GET /readyz as a private function would answer it: `anonymous` without the token, then `authorized`."""

    def __init__(self, anonymous: int, authorized: list[int]) -> None:
        self.authorized_calls = 0
        stub = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self) -> None:
                if self.headers.get("Authorization") == f"Bearer {TOKEN}":
                    status = authorized[min(stub.authorized_calls, len(authorized) - 1)]
                    stub.authorized_calls += 1
                else:
                    status = anonymous
                body = b'{"status": "ok"}' if status == 200 else b'{"status": %d}' % status
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: object) -> None:
                pass

        super().__init__(("127.0.0.1", 0), Handler)


def run_smoke_test(
    config: dict[str, Any], tmp_path: Path, anonymous_status: int, authorized_statuses: list[int]
) -> tuple[subprocess.CompletedProcess[str], list[str], int]:
    tool("curl")  # the script's HTTP client, as in the cloud-sdk image
    smoke = step(config, "smoke-test")
    assert smoke["entrypoint"] == "bash" and smoke["args"][0] == "-c"
    values = default_values(config)
    script = substitute(smoke["args"][1], values)
    environment = dict(substitute(item, values).split("=", 1) for item in smoke["env"])

    server = FunctionStub(anonymous_status, authorized_statuses)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    url = f"http://127.0.0.1:{server.server_address[1]}"

    stubs = tmp_path / "bin"
    stubs.mkdir()
    (stubs / "gcloud").write_text(
        "#!/bin/sh\n"
        'echo "$*" >> "$STUB_LOG"\n'
        'case "$1 $2" in\n'
        f'  "functions describe") echo "{url}" ;;\n'
        f'  "auth print-identity-token") echo "{TOKEN}" ;;\n'
        "  *) exit 3 ;;\n"
        "esac\n"
    )
    (stubs / "sleep").write_text("#!/bin/sh\n")
    for stub in stubs.iterdir():
        stub.chmod(0o755)
    log = tmp_path / "gcloud.log"
    try:
        result = subprocess.run(
            [tool("bash"), "-c", script],
            env={**environment, "PATH": f"{stubs}:{os.environ['PATH']}", "STUB_LOG": str(log)},
            capture_output=True,
            text=True,
            timeout=120,
        )
    finally:
        server.shutdown()
        server.server_close()
    return result, log.read_text().splitlines(), server.authorized_calls


def test_the_smoke_test_passes_once_readyz_answers_200_to_the_token(config: dict[str, Any], tmp_path: Path) -> None:
    result, gcloud_calls, calls = run_smoke_test(config, tmp_path, 403, [503, 200])
    assert result.returncode == 0, result.stdout + result.stderr
    assert calls == 2  # retried after the 503
    url = result.stdout.split("function URL: ", 1)[1].split()[0]
    assert gcloud_calls == [
        "functions describe projects-api --gen2 --region=europe-west1 --format=value(serviceConfig.uri)",
        f"auth print-identity-token --audiences={url}",
    ]


def test_the_smoke_test_fails_when_the_function_answers_anonymous_callers(
    config: dict[str, Any], tmp_path: Path
) -> None:
    result, _, calls = run_smoke_test(config, tmp_path, 200, [200])
    assert result.returncode != 0
    assert calls == 0
    assert "must refuse callers without a token" in result.stdout


def test_the_smoke_test_fails_when_readyz_never_answers_200(config: dict[str, Any], tmp_path: Path) -> None:
    result, _, calls = run_smoke_test(config, tmp_path, 403, [503])
    assert result.returncode != 0
    assert calls == 6
    assert "never answered 200" in result.stdout
