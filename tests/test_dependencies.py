"""uv.lock is the one lock; requirements.txt, which Cloud Functions installs, is its runtime part."""

import subprocess
import tomllib

from tests.conftest import ROOT
from tests.helpers import uv


def _requirements(text: str) -> list[str]:
    """The requirement lines, without uv's header and `# via` annotations."""
    return [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


def test_requirements_txt_is_the_export_of_uv_lock() -> None:
    # The Makefile's `lock` target writes it with these flags; --frozen reads the lock as it is.
    export = [uv(), "export", "--frozen", "--quiet", "--no-dev", "--no-hashes", "--no-emit-project"]
    exported = subprocess.run(export, cwd=ROOT, capture_output=True, text=True, check=True, timeout=60).stdout
    committed = (ROOT / "requirements.txt").read_text()
    assert _requirements(committed) == _requirements(exported), (
        "requirements.txt is not the runtime part of uv.lock: run `make lock` and commit both"
    )


def test_requirements_txt_holds_every_runtime_dependency_and_no_dev_tool() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())
    pinned = {line.split("==")[0].lower() for line in _requirements((ROOT / "requirements.txt").read_text())}
    declared = {requirement.split("==")[0].split("[")[0].lower() for requirement in project["project"]["dependencies"]}
    dev = {requirement.split("==")[0].split("[")[0].lower() for requirement in project["dependency-groups"]["dev"]}
    assert declared <= pinned, declared - pinned
    assert not dev & pinned, dev & pinned


def test_requirements_locked_txt_is_the_hashed_export_of_uv_lock() -> None:
    """What the deploy build's migrator installs with --require-hashes: the same pins, each with hashes."""
    export = [uv(), "export", "--frozen", "--quiet", "--no-dev", "--no-emit-project"]
    exported = subprocess.run(export, cwd=ROOT, capture_output=True, text=True, check=True, timeout=60).stdout
    committed = (ROOT / "requirements-locked.txt").read_text()
    assert _requirements(committed) == _requirements(exported), (
        "requirements-locked.txt is not the hashed runtime part of uv.lock: run `make lock` and commit it"
    )
    pins = [line for line in _requirements(committed) if "==" in line]
    assert pins and all(line.rstrip().endswith("\\") for line in pins), "every pin needs its --hash lines"
