"""The service's name is written in several places; they agree, and `make rename` changes them all."""

import re
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

from app.core.settings import Settings
from tests.helpers import ROOT


def _names(root: Path) -> dict[str, str]:
    deploy_settings = (root / "scripts" / "deploy_settings.sh").read_text()
    roles_sql = (root / "migrations" / "roles.sql").read_text()
    cloudbuild = yaml.safe_load((root / "cloudbuild.yaml").read_text())["substitutions"]
    settings_source = (root / "app" / "core" / "settings.py").read_text()
    return {
        "pyproject": tomllib.loads((root / "pyproject.toml").read_text())["project"]["name"],
        "settings": re.search(r'service_name: str = Field\(default="([^"]+)"', settings_source).group(1),  # type: ignore[union-attr]
        "cloudbuild _FUNCTION": cloudbuild["_FUNCTION"],
        "cloudbuild _RUNTIME_SA": cloudbuild["_RUNTIME_SA"].split("@")[0],
        "deploy settings FUNCTION": re.search(r'FUNCTION="\$\{FUNCTION:-([^}]+)\}"', deploy_settings).group(1),  # type: ignore[union-attr]
        # migrations/env.py acts as SERVICE_NAME-owner; roles.sql creates it under its default name.
        "roles.sql owner": re.search(r"\\set owner (\S+)-owner\n", roles_sql).group(1),  # type: ignore[union-attr]
    }


def test_every_place_carries_the_same_name() -> None:
    names = _names(ROOT)
    assert set(names.values()) == {names["pyproject"]}, names
    assert Settings.model_fields["service_name"].default == names["pyproject"]


def test_rename_changes_every_place(tmp_path: Path) -> None:
    copy = tmp_path / "repo"
    listing = ["git", "ls-files", "--cached", "--others", "--exclude-standard"]  # committed or not
    tracked = subprocess.run(listing, cwd=ROOT, capture_output=True, text=True, check=True).stdout
    for name in tracked.splitlines():
        if (ROOT / name).is_file():
            (copy / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(ROOT / name, copy / name)
    subprocess.run(["git", "init", "-q"], cwd=copy, check=True)
    subprocess.run(["git", "add", "-A"], cwd=copy, check=True)
    old = _names(copy)["pyproject"]
    result = subprocess.run(
        [sys.executable, "scripts/rename.py", "orders-api"], cwd=copy, capture_output=True, text=True, check=True
    )
    assert "renamed" in result.stdout
    assert set(_names(copy).values()) == {"orders-api"}
    leftovers = subprocess.run(["git", "grep", "-l", old], cwd=copy, capture_output=True, text=True, check=False)
    assert leftovers.stdout == "", f"{old} is still written in: {leftovers.stdout}"


def test_rename_refuses_a_name_cloud_functions_would_refuse() -> None:
    result = subprocess.run(
        [sys.executable, "scripts/rename.py", "Orders_API"], cwd=ROOT, capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert "lower-case" in result.stderr
