"""The service's names are written in several places; they agree, and `make rename` changes them all.

The renames run on a copy of the checkout: to a name that appears nowhere in the repository, then
from there to the README's own example, so they hold whatever the checkout is called now.
"""

import os
import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

from tests.helpers import ROOT, unused_name, uv

sys.path.insert(0, str(ROOT / "scripts"))
import rename  # scripts/ is not a package


def _default(shell: str, variable: str) -> str:
    found = re.search(rf'^\s*{variable}="\$\{{{variable}:-(.+)\}}"$', shell, flags=re.MULTILINE)
    assert found, f"scripts/deploy_settings.sh sets no default for {variable}"
    return found[1]


def _account(email: str) -> str:
    return email.split("@")[0]


def written_names(root: Path) -> dict[str, str]:
    """Every place a name is written, read the way its own tool reads it."""
    deploy_settings = (root / "scripts" / "deploy_settings.sh").read_text()
    cloudbuild = yaml.safe_load((root / "cloudbuild.yaml").read_text())["substitutions"]
    settings = (root / "app" / "core" / "settings.py").read_text()
    service_default = re.search(r'service_name: str = Field\(default="([^"]+)"', settings)
    assert service_default, "app/core/settings.py: no SERVICE_NAME default"
    # migrations/env.py acts as SERVICE_NAME-owner; roles.sql creates it under its default name.
    owner = re.search(r"\\set owner (\S+)-owner\n", (root / "migrations" / "roles.sql").read_text())
    assert owner, "migrations/roles.sql: no default owner role"
    return {
        "pyproject.toml name": tomllib.loads((root / "pyproject.toml").read_text())["project"]["name"],
        "SERVICE_NAME default": service_default[1],
        "roles.sql owner": owner[1],
        "cloudbuild _FUNCTION": cloudbuild["_FUNCTION"],
        "cloudbuild _RUNTIME_SA": _account(cloudbuild["_RUNTIME_SA"]),
        "deploy settings FUNCTION": _default(deploy_settings, "FUNCTION"),
        "deploy settings RUNTIME_SA": _account(_default(deploy_settings, "RUNTIME_SA")),
        "cloudbuild _MIGRATOR_SA": _account(cloudbuild["_MIGRATOR_SA"]),
        "deploy settings MIGRATOR_SA": _account(_default(deploy_settings, "MIGRATOR_SA")),
        "cloudbuild _INSTANCE": cloudbuild["_INSTANCE"],
        "deploy settings INSTANCE": _default(deploy_settings, "INSTANCE"),
    }


def test_every_place_carries_the_same_names() -> None:
    names = written_names(ROOT)
    service = names["pyproject.toml name"]
    assert {names[key] for key in names if "MIGRATOR" not in key and "INSTANCE" not in key} == {service}, names
    assert names["cloudbuild _MIGRATOR_SA"] == names["deploy settings MIGRATOR_SA"], names
    assert names["cloudbuild _INSTANCE"] == names["deploy settings INSTANCE"], names
    assert rename.problems(service) == [], service


def _rename(repository: Path, name: str) -> subprocess.CompletedProcess[str]:
    """`make rename` as a user runs it, with the Python the venv was made from: none of its packages."""
    base_python = getattr(sys, "_base_executable", sys.executable)
    return subprocess.run(
        ["make", "--no-print-directory", "rename", f"NAME={name}", f"PYTHON={base_python}"],
        cwd=repository,
        capture_output=True,
        text=True,
        timeout=60,
    )


def _git(repository: Path, *arguments: str) -> str:
    command = ["git", "-c", "safe.directory=*", "-c", "user.email=test@example.test", "-c", "user.name=test"]
    return subprocess.run([*command, *arguments], cwd=repository, capture_output=True, text=True, check=True).stdout


def _readme_example() -> str:
    found = re.findall(r"make rename NAME=([a-z0-9-]+)", (ROOT / "README.md").read_text())
    assert found, "the README shows no `make rename NAME=...` example"
    return found[0]


@pytest.fixture(scope="module")
def repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A committed copy of the checkout, so `git grep` and `git status` describe what rename did."""
    copy = tmp_path_factory.mktemp("renamed") / "repository"
    for path in rename.text_files(ROOT):
        (copy / path.relative_to(ROOT)).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(path, copy / path.relative_to(ROOT))
    _git(copy, "init", "-q")
    _git(copy, "add", "-A")
    _git(copy, "commit", "-q", "-m", "as cloned")
    return copy


def test_rename_to_a_new_name_then_to_the_readme_example(repository: Path) -> None:
    example = _readme_example()
    for name in (unused_name(), example):
        before = rename.current_names(repository)
        result = _rename(repository, name)
        assert result.returncode == 0, result.stderr
        assert f"renamed {before.service} to {name}" in result.stdout
        expected = rename.Names.of(name)

        names = written_names(repository)
        assert names == dict.fromkeys(names, name) | {
            "cloudbuild _MIGRATOR_SA": expected.migrator,
            "deploy settings MIGRATOR_SA": expected.migrator,
            "cloudbuild _INSTANCE": expected.instance,
            "deploy settings INSTANCE": expected.instance,
        }
        assert (repository / "app" / "__init__.py").read_text().startswith(f'"""{expected.title}:')
        bootstrap = (repository / "scripts" / "bootstrap.sh").read_text()
        assert f'"$RUNTIME_SA" "{expected.title} (runtime)"' in bootstrap
        assert f'"$MIGRATOR_SA" "{expected.title} migrations and deploys (Cloud Build)"' in bootstrap

        leftovers = {
            old: [
                str(path.relative_to(repository))
                for path in rename.text_files(repository)
                if pattern.search(path.read_text())
            ]
            for old, pattern in {
                before.service: re.compile(re.escape(before.service)),
                before.instance: re.compile(re.escape(before.instance)),
                before.title: re.compile(re.escape(before.title)),
                f"{before.migrator}@": re.compile(rf"(?<![\w.])(?<!\w-){re.escape(before.migrator)}@"),
            }.items()
        }
        assert not any(leftovers.values()), f"still written: {leftovers}"

        _git(repository, "commit", "-q", "-a", "-m", f"renamed to {name}")

    # The renamed app still builds (checked once, at the end), with the new title and SERVICE_NAME default.
    probe = (
        "import typing; from app.api import create_app;"
        "hints = typing.get_args(typing.get_type_hints(create_app)['settings']);"
        "settings = next(kind for kind in hints if kind is not type(None))(database_url='postgresql+asyncpg://u@h/d');"
        "print(create_app(settings).openapi()['info']['title']); print(settings.service_name)"
    )
    environment = {key: value for key, value in os.environ.items() if key != "SERVICE_NAME"}
    built = subprocess.run(
        [sys.executable, "-c", probe], cwd=repository, env=environment, capture_output=True, text=True, timeout=120
    )
    assert built.returncode == 0, built.stderr
    assert built.stdout.splitlines() == [rename.Names.of(example).title, example]
    # The lock still matches pyproject.toml (uv.lock names the project), without a new resolution.
    locked = subprocess.run(
        [uv(), "lock", "--locked", "--offline", "--quiet"], cwd=repository, capture_output=True, text=True, timeout=120
    )
    assert locked.returncode == 0, locked.stderr
    # And the README keeps its own example, so the next reader can follow it.
    assert _readme_example() in (repository / "README.md").read_text()


@pytest.mark.parametrize(
    ("name", "reason"),
    [
        ("Orders_API", "lower-case letters, digits and hyphens"),
        ("orders-", "not ending with a hyphen"),
        ("9orders", "starting with a letter"),
        ("order", "at least 6 characters"),
        ("orders-api-for-the-shop", "orders-api-for-the-shop-migrator"),  # 23 + 9 characters
    ],
)
def test_rename_refuses_a_name_google_cloud_would_refuse(repository: Path, name: str, reason: str) -> None:
    before = _git(repository, "rev-parse", "HEAD")
    result = _rename(repository, name)
    assert result.returncode != 0
    assert reason in result.stderr
    assert _git(repository, "status", "--porcelain") == "" and _git(repository, "rev-parse", "HEAD") == before


def test_the_longest_accepted_name_fits_every_service_account_id() -> None:
    longest = "a" * rename.LONGEST
    assert rename.problems(longest) == []
    assert rename.problems(longest + "b")
    assert len(rename.Names.of(longest).migrator) == 30


def test_rename_needs_no_venv() -> None:
    dry_run = subprocess.run(
        ["make", "--no-print-directory", "-n", "rename", "NAME=orders-api", "PYTHON=python3"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    )
    assert dry_run.stdout.splitlines() == ["python3 scripts/rename.py orders-api"]
