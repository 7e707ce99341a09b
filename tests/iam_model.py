"""IAM as the tests model it: which permissions each predefined role grants (ROLES, each role cited
from Google's page for it), what each command needs (docs/permissions.md's first table, parsed),
and IAM's rule for deciding whether a principal holds a permission.

tests/fake_gcloud.py refuses commands with it; tests/test_cloudbuild.py checks bootstrap's grants
against it, and that docs/permissions.md's role table says exactly what ROLES says.
"""

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DOCUMENT = Path(__file__).resolve().parent.parent / "docs" / "permissions.md"
ALL_PERMISSIONS = "*"


@dataclass(frozen=True)
class Role:
    source: str  # the Google page the permissions were read from
    permissions: frozenset[str]
    confirmed: str  # whether that page lists each permission, or only names the role for the task


# Only the permissions the commands here need: a role grants more. "*" is every permission.
ROLES: dict[str, Role] = {
    "roles/owner": Role(
        "https://cloud.google.com/sql/docs/postgres/iam-roles",
        frozenset({"*"}),
        (
            "partly: the Cloud SQL page lists `cloudsql.*` for Owner; that Owner holds every other "
            "permission here is the basic roles summary (all of Editor's, plus managing roles and "
            "permissions), not a listing"
        ),
    ),
    "roles/serviceusage.serviceUsageAdmin": Role(
        "https://cloud.google.com/build/docs/securing-builds/authorize-service-to-service-access",
        frozenset({"serviceusage.services.enable"}),
        "yes",
    ),
    "roles/serviceusage.serviceUsageConsumer": Role(
        "https://cloud.google.com/build/docs/securing-builds/configure-access-control",
        frozenset({"serviceusage.services.use"}),
        "yes",
    ),
    "roles/iam.serviceAccountCreator": Role(
        "https://cloud.google.com/docs/authentication/set-up-adc-attached-service-account",
        frozenset({"iam.serviceAccounts.create"}),
        "partly: the page names the role for creating service accounts, not the permission",
    ),
    "roles/iam.serviceAccountAdmin": Role(
        "https://cloud.google.com/iam/docs/roles-permissions/iam",
        frozenset(
            {
                "iam.serviceAccounts.get",
                "iam.serviceAccounts.delete",
                "iam.serviceAccounts.getIamPolicy",
                "iam.serviceAccounts.setIamPolicy",
            }
        ),
        "no: not read from the page",
    ),
    "roles/resourcemanager.projectIamAdmin": Role(
        "https://cloud.google.com/docs/authentication/set-up-adc-attached-service-account",
        frozenset({"resourcemanager.projects.getIamPolicy", "resourcemanager.projects.setIamPolicy"}),
        "partly: the page names the role for granting project roles, not the permissions",
    ),
    "roles/cloudsql.viewer": Role(
        "https://cloud.google.com/sql/docs/postgres/iam-roles",
        frozenset(
            {"cloudsql.instances.get", "cloudsql.databases.get", "cloudsql.users.list", "cloudsql.backupRuns.list"}
        ),
        (
            "partly: read-only access to Cloud SQL resources; the listing read was the basic Viewer's "
            "(`cloudsql.*.get`, `cloudsql.*.list`)"
        ),
    ),
    "roles/cloudsql.editor": Role(
        "https://cloud.google.com/sql/docs/postgres/iam-roles",
        frozenset({"cloudsql.instances.update", "cloudsql.databases.create"}),
        (
            'partly: "full control of existing instances, excluding modifying users, SSL certificates or '
            'deleting resources"'
        ),
    ),
    "roles/cloudsql.admin": Role(
        "https://cloud.google.com/sql/docs/postgres/iam-roles",
        frozenset(
            {
                "cloudsql.instances.create",
                "cloudsql.instances.delete",
                "cloudsql.users.create",
                "cloudsql.users.delete",
                "cloudsql.instances.clone",
                "cloudsql.instances.restoreBackup",
            }
        ),
        "yes: Cloud SQL Admin holds `cloudsql.*`",
    ),
    "roles/cloudsql.client": Role(
        "https://cloud.google.com/sql/docs/postgres/roles-and-permissions",
        frozenset({"cloudsql.instances.connect", "cloudsql.instances.get"}),
        "yes",
    ),
    "roles/cloudsql.instanceUser": Role(
        "https://cloud.google.com/sql/docs/postgres/iam-logins",
        frozenset({"cloudsql.instances.login"}),
        "yes",
    ),
    "roles/cloudbuild.builds.editor": Role(
        "https://cloud.google.com/build/docs/iam-roles-permissions",
        frozenset({"cloudbuild.builds.create"}),
        "partly: the submit page names the role for submitting builds; the permission listing was not read",
    ),
    "roles/cloudfunctions.developer": Role(
        "https://cloud.google.com/functions/docs/reference/iam/roles",
        frozenset(
            {
                "cloudfunctions.functions.create",
                "cloudfunctions.functions.update",
                "cloudfunctions.functions.get",
                "cloudfunctions.functions.delete",
                "cloudfunctions.functions.sourceCodeSet",
                "cloudfunctions.operations.get",
            }
        ),
        "yes",
    ),
    "roles/iam.serviceAccountUser": Role(
        "https://cloud.google.com/iam/docs/service-account-permissions",
        frozenset({"iam.serviceAccounts.actAs"}),
        "yes: the role lets a principal attach a service account to a resource, and does not let it create credentials",
    ),
    "roles/iam.serviceAccountOpenIdTokenCreator": Role(
        "https://cloud.google.com/build/docs/securing-builds/authorize-service-to-service-access",
        frozenset({"iam.serviceAccounts.getOpenIdToken"}),
        "yes",
    ),
    "roles/run.invoker": Role(
        "https://cloud.google.com/functions/docs/securing/authenticating",
        frozenset({"run.routes.invoke"}),
        "yes",
    ),
    "roles/logging.logWriter": Role(
        "https://cloud.google.com/build/docs/securing-builds/configure-user-specified-service-accounts",
        frozenset({"logging.logEntries.create"}),
        "yes",
    ),
    "roles/artifactregistry.writer": Role(
        "https://cloud.google.com/run/docs/configuring/services/build-service-account",
        frozenset({"artifactregistry.repositories.uploadArtifacts"}),
        "partly: the page names the role for storing the build's images; the permission is inferred",
    ),
    "roles/artifactregistry.admin": Role(
        "https://cloud.google.com/iam/docs/roles-permissions/artifactregistry",
        frozenset(
            {
                "artifactregistry.repositories.get",
                "artifactregistry.repositories.create",
                "artifactregistry.repositories.update",
            }
        ),
        (
            "yes: the role reference gives Artifact Registry Administrator `artifactregistry.*`; the "
            "cleanup-policy page names this role and `artifactregistry.repositories.update` for applying policies"
        ),
    ),
    "roles/compute.networkAdmin": Role(
        "https://cloud.google.com/vpc/docs/configure-private-services-access",
        frozenset(
            {
                "compute.globalAddresses.get",
                "compute.globalAddresses.create",
                "servicenetworking.services.get",
                "servicenetworking.services.addPeering",
            }
        ),
        (
            'partly: the page says Compute Network Admin "can create allocated IP address ranges and '
            'manage private connections"; the permission names are inferred'
        ),
    ),
    "roles/cloudbuild.workerPoolOwner": Role(
        "https://cloud.google.com/build/docs/iam-roles-permissions",
        frozenset({"cloudbuild.workerpools.get", "cloudbuild.workerpools.create", "cloudbuild.workerpools.delete"}),
        "no: not read from the page",
    ),
    "roles/cloudbuild.workerPoolUser": Role(
        "https://cloud.google.com/build/docs/iam-roles-permissions",
        frozenset({"cloudbuild.workerpools.use"}),
        "no: not read from the page",
    ),
    "roles/logging.configWriter": Role(
        "https://cloud.google.com/iam/docs/roles-permissions/logging",
        frozenset(
            {
                "logging.logMetrics.get",
                "logging.logMetrics.create",
                "logging.logMetrics.update",
                "logging.logMetrics.delete",
            }
        ),
        (
            "partly: the page lists `logging.logMetrics.*` for Logging Admin; Logs Configuration Writer's"
            " listing was not read"
        ),
    ),
    "roles/monitoring.notificationChannelEditor": Role(
        "https://cloud.google.com/iam/docs/roles-permissions/monitoring",
        frozenset({"monitoring.notificationChannels.list", "monitoring.notificationChannels.create"}),
        "partly: the page lists the permission for Monitoring Admin; the narrower role's listing was not read",
    ),
    "roles/monitoring.alertPolicyEditor": Role(
        "https://cloud.google.com/iam/docs/roles-permissions/monitoring",
        frozenset(
            {
                "monitoring.alertPolicies.list",
                "monitoring.alertPolicies.create",
                "monitoring.alertPolicies.update",
                "monitoring.alertPolicies.delete",
            }
        ),
        (
            "partly: the page lists `monitoring.alertPolicies.*` for Monitoring Admin; the narrower "
            "role's listing was not read"
        ),
    ),
    "roles/run.developer": Role(
        "https://cloud.google.com/run/docs/reference/iam/roles",
        frozenset({"run.revisions.list", "run.services.get", "run.services.update", "run.services.delete"}),
        "yes (`run.revisions.*`)",
    ),
    "roles/storage.objectAdmin": Role(
        "https://cloud.google.com/storage/docs/access-control/iam-roles",
        frozenset({"storage.objects.get", "storage.objects.create", "storage.objects.list"}),
        "yes (`storage.objects.*`)",
    ),
    "roles/run.sourceDeveloper": Role(
        "https://cloud.google.com/iam/docs/roles-permissions/run",
        frozenset(
            {
                "run.services.get",
                "run.services.create",
                "run.services.update",
                "cloudbuild.builds.create",
                "storage.objects.create",
            }
        ),
        (
            "partly: Google's build-service-account page names this role for deploying from source; its "
            "listing on the role reference was not read, so these permissions are what a source deploy "
            "does"
        ),
    ),
    "roles/run.builder": Role(
        "https://cloud.google.com/iam/docs/roles-permissions/run",
        frozenset(
            {"logging.logEntries.create", "artifactregistry.repositories.uploadArtifacts", "storage.objects.get"}
        ),
        "yes: the Cloud Run role reference lists all three",
    ),
    "roles/storage.admin": Role(
        "https://cloud.google.com/iam/docs/roles-permissions/storage",
        frozenset(
            {
                "storage.buckets.get",
                "storage.buckets.create",
                "storage.buckets.getIamPolicy",
                "storage.buckets.setIamPolicy",
            }
        ),
        "partly: the role reference gives Storage Admin `storage.buckets.*`; the expansion was not read",
    ),
    "roles/storage.objectViewer": Role(
        "https://cloud.google.com/iam/docs/roles-permissions/storage",
        frozenset({"storage.objects.get", "storage.objects.list"}),
        "yes (Cloud Storage IAM roles)",
    ),
}


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


def role_permissions() -> dict[str, set[str]]:
    return {role: set(granted.permissions) for role, granted in ROLES.items()}


def documented_roles(document: Path = DOCUMENT) -> dict[str, tuple[set[str], str, str]]:
    """docs/permissions.md's role table: role -> (permissions, source URL, confirmed)."""
    roles = {}
    for role, permissions, source, confirmed in _table(document.read_text(), "Roles"):
        link = re.search(r"\]\((https://[^)]+)\)", source)
        roles[_plain(role)] = ({_plain(p) for p in permissions.split(",")}, link[1] if link else source, confirmed)
    return roles


def role_table() -> str:
    """The role table docs/permissions.md carries, rendered from ROLES."""
    lines = ["| role | permissions | source | confirmed |", "|---|---|---|---|"]
    for role, granted in ROLES.items():
        permissions = ", ".join(f"`{permission}`" for permission in sorted(granted.permissions))
        lines.append(f"| `{role}` | {permissions} | [{granted.source}]({granted.source}) | {granted.confirmed} |")
    return "\n".join(lines)


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
    elif resource.startswith("gs://"):
        roles |= roles_of(member, state.get("buckets", {}).get(resource, {}).get("policy", {}))
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
