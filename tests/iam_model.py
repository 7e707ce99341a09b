"""docs/permissions.md as data, and IAM's rule for deciding whether a principal holds a permission.

Both tables of the document are parsed here: what each command needs (per step, identity and
resource) and which permissions each role holds. tests/fake_gcloud.py refuses commands with it;
tests/test_cloudbuild.py checks bootstrap's grants against it.
"""

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DOCUMENT = Path(__file__).resolve().parent.parent / "docs" / "permissions.md"
ALL_PERMISSIONS = "*"


@dataclass(frozen=True)
class Need:
    step: str
    runs_as: str  # you, migrator or runtime
    command: str  # `gcloud functions deploy`, or a description of an API call
    permission: str
    on: str  # project, RUNTIME_SA, MIGRATOR_SA or function
    role: str
    source: str


def _cells(line: str) -> list[str]:
    return [cell.strip() for cell in line.strip().strip("|").split("|")]


def _plain(cell: str) -> str:
    return cell.replace("`", "").strip()


def _table(text: str, heading: str) -> list[list[str]]:
    section = text.split(f"\n## {heading}\n", 1)[1].split("\n## ", 1)[0]
    lines = [line for line in section.splitlines() if line.startswith("|")]
    return [_cells(line) for line in lines[2:]]  # past the header and its rule


def needs(document: Path = DOCUMENT) -> list[Need]:
    rows = _table(document.read_text(), "Permissions per command")
    found = []
    for step, runs_as, command, permission, on, role, source in rows:
        link = re.search(r"\]\((https://[^)]+)\)", source)
        found.append(
            Need(step, runs_as, _plain(command), _plain(permission), on, _plain(role), link[1] if link else source)
        )
    return found


def role_permissions(document: Path = DOCUMENT) -> dict[str, set[str]]:
    roles: dict[str, set[str]] = {}
    for role, permission, _source, _confirmed in _table(document.read_text(), "Roles"):
        roles.setdefault(_plain(role), set()).add(_plain(permission))
    return roles


def gcloud_command(command: str) -> list[str] | None:
    """`gcloud functions deploy` -> ["functions", "deploy"]; None for anything that is not gcloud."""
    words = command.split()
    if not words or words[0] != "gcloud":
        return None
    return [word for word in words[1:] if not word.startswith("-")]


def roles_of(member: str, policy: dict[str, list[str]]) -> set[str]:
    return {role for role, members in policy.items() if member in members}


def granted_roles(state: dict[str, Any], member: str, resource: str) -> set[str]:
    """Roles `member` holds on `resource` (a service account's email, "function" or "project"):
    those bound on the project, which every resource inherits, and those bound on the resource."""
    roles = roles_of(member, state["project_policy"])
    if resource in state["service_accounts"]:
        roles |= roles_of(member, state["service_accounts"][resource]["policy"])
    elif resource == "function":
        for function in state["functions"].values():
            roles |= roles_of(member, function.get("policy", {}))
    return roles


def holds(state: dict[str, Any], member: str, permission: str, resource: str) -> bool:
    table = role_permissions()
    return any(
        permission in table.get(role, set()) or ALL_PERMISSIONS in table.get(role, set())
        for role in granted_roles(state, member, resource)
    )
