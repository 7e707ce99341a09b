"""A stand-in for the `gcloud` commands this repository runs, which enforces IAM as Google does.

State lives in the JSON file FAKE_GCLOUD_STATE: the project, its IAM policy, its service accounts
(each with its own policy), Cloud SQL instances (flags, backups, deletion protection, networks,
databases, users), functions (each with its Cloud Run revisions, their images and traffic),
Artifact Registry repositories (their image versions and cleanup policies), enabled services,
the private path's address ranges, peerings and build pools, and the log-based metrics,
notification channels and alert policies. The caller is FAKE_GCLOUD_ACCOUNT (`user:...` or
`serviceAccount:...`), as `gcloud config get-value account` or Cloud Build's metadata server would
make it.

Before doing anything a command checks the permissions docs/permissions.md lists for it against
the caller's roles (tests/iam_model.py), and fails as gcloud does, with PERMISSION_DENIED and exit
status 1, when one is missing. A stub that accepts everything would prove nothing about the grants.
Every call is appended to the state's `calls`.
"""

import base64
import json
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from subprocess import CompletedProcess

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from tests import iam_model

TOKEN_PREFIX = "fake-identity-token."


class Refused(Exception):
    pass


def read_identity_token(token: str) -> dict[str, str] | None:
    """The caller and audience of a token this stand-in printed; None for anything else."""
    if not token.startswith(TOKEN_PREFIX):
        return None
    claims: dict[str, str] = json.loads(base64.urlsafe_b64decode(token.removeprefix(TOKEN_PREFIX)))
    return claims


def _flags(words: list[str]) -> tuple[list[str], dict[str, str]]:
    positional, flags = [], {}
    for word in words:
        if word.startswith("--"):
            name, _, value = word[2:].partition("=")
            flags[name] = value
        else:
            positional.append(word)
    return positional, flags


class Gcloud:
    def __init__(self, state: dict[str, Any], account: str) -> None:
        self.state = state
        self.account = account

    # ---- IAM ---------------------------------------------------------------------------------
    def require(self, command: list[str], **resources: str) -> None:
        """Every permission the table lists for this command, on the resource each row names."""
        rows = {
            (need.permission, need.on)
            for need in iam_model.needs()
            if iam_model.gcloud_command(need.command) == command and need.permission != "—"
        }
        for permission, on in sorted(rows):
            resource = resources.get(on, "project") if on != "project" else "project"
            if not iam_model.holds(self.state, self.account, permission, resource):
                target = "" if resource == "project" else f" on {resource}"
                raise Refused(
                    f"PERMISSION_DENIED: Permission '{permission}' denied{target} "
                    f"for {self.account} (gcloud {' '.join(command)})"
                )

    # ---- commands ------------------------------------------------------------------------------
    def run(self, words: list[str]) -> str:
        positional, flags = _flags(words)
        known = [command for need in iam_model.needs() if (command := iam_model.gcloud_command(need.command))]
        matches = [command for command in known if positional[: len(command)] == command]
        if not matches:
            raise Refused(f"docs/permissions.md lists no command gcloud {' '.join(positional[:3])}")
        path = max(matches, key=len)
        arguments = positional[len(path) :]
        handler = getattr(self, "_" + "_".join(part.replace("-", "_") for part in path))
        self.require(path, **self._resources(path, arguments, flags))
        output: str = handler(arguments, flags)
        return output

    def _resources(self, path: list[str], arguments: list[str], flags: dict[str, str]) -> dict[str, str]:
        """The resources the table's rows name, as this call names them."""
        if path == ["functions", "deploy"]:
            return {
                "RUNTIME_SA": flags["service-account"],
                "MIGRATOR_SA": flags["build-service-account"].rsplit("/", 1)[-1],
            }
        if path == ["auth", "print-identity-token"]:
            return {"MIGRATOR_SA": self.account.removeprefix("serviceAccount:")}
        if path[:2] == ["iam", "service-accounts"] and arguments:
            return {"RUNTIME_SA": arguments[0], "MIGRATOR_SA": arguments[0]}
        if path == ["run", "services", "update-traffic"] and arguments[0] in self.state["functions"]:
            return {"RUNTIME_SA": self.state["functions"][arguments[0]]["service_account"]}
        if path == ["run", "deploy"]:
            return {
                "RUNTIME_SA": flags["service-account"],
                "BUILDER_SA": flags["build-service-account"].rsplit("/", 1)[-1],
            }
        if path == ["builds", "submit"]:
            build_account = _build_service_account(flags["config"], self.state["project"])
            bucket = f"gs://{self.state['project']}_cloudbuild"
            return {"TESTER_SA": build_account, "MIGRATOR_SA": build_account, "SOURCE_BUCKET": bucket}
        if path[:2] == ["storage", "buckets"] and arguments:
            return {"SOURCE_BUCKET": arguments[0]}
        if path == ["storage", "ls"]:
            return {"SOURCE_BUCKET": "gs://" + arguments[0].removeprefix("gs://").split("/", 1)[0]}
        return {}

    def _config_get_value(self, arguments: list[str], flags: dict[str, str]) -> str:
        return {"project": self.state["project"], "account": self.account.split(":", 1)[1]}[arguments[0]]

    def _services_enable(self, arguments: list[str], flags: dict[str, str]) -> str:
        self.state["services"] = sorted(set(self.state["services"]) | set(arguments))
        return ""

    def _iam_service_accounts_describe(self, arguments: list[str], flags: dict[str, str]) -> str:
        if arguments[0] not in self.state["service_accounts"]:
            raise Refused(f"NOT_FOUND: Unknown service account {arguments[0]}")
        return f"email: {arguments[0]}"

    def _iam_service_accounts_create(self, arguments: list[str], flags: dict[str, str]) -> str:
        email = f"{arguments[0]}@{self.state['project']}.iam.gserviceaccount.com"
        if email in self.state["service_accounts"]:
            raise Refused(f"ALREADY_EXISTS: Service account {email} already exists")
        self.state["service_accounts"][email] = {"policy": {}}
        return f"Created service account [{arguments[0]}]."

    def _iam_service_accounts_delete(self, arguments: list[str], flags: dict[str, str]) -> str:
        if self.state["service_accounts"].pop(arguments[0], None) is None:
            raise Refused(f"NOT_FOUND: Unknown service account {arguments[0]}")
        # IAM keeps the bindings, under a `deleted:` member, until someone removes them.
        for members in self.state["project_policy"].values():
            members[:] = [
                f"deleted:{member}?uid=1" if member == f"serviceAccount:{arguments[0]}" else member
                for member in members
            ]
        return f"deleted service account [{arguments[0]}]"

    def _iam_service_accounts_add_iam_policy_binding(self, arguments: list[str], flags: dict[str, str]) -> str:
        account = self.state["service_accounts"].get(arguments[0])
        if account is None:
            raise Refused(f"NOT_FOUND: Unknown service account {arguments[0]}")
        self._bind(account["policy"], flags["member"], flags["role"])
        return ""

    def _projects_add_iam_policy_binding(self, arguments: list[str], flags: dict[str, str]) -> str:
        assert flags.get("condition") == "None", "a project binding without --condition=None prompts"
        self._bind(self.state["project_policy"], flags["member"], flags["role"])
        return ""

    def _projects_get_iam_policy(self, arguments: list[str], flags: dict[str, str]) -> str:
        assert flags == {"flatten": "bindings[].members", "format": "value(bindings.role,bindings.members)"}, flags
        return "\n".join(
            f"{role}\t{member}" for role, members in self.state["project_policy"].items() for member in members
        )

    def _projects_remove_iam_policy_binding(self, arguments: list[str], flags: dict[str, str]) -> str:
        assert "all" in flags, "without --all a conditional binding would stay"
        members = self.state["project_policy"].get(flags["role"], [])
        if flags["member"] not in members:
            raise Refused(f"Policy binding with the specified principal, role, and condition not found! {flags}")
        members.remove(flags["member"])
        return ""

    def _bind(self, policy: dict[str, list[str]], member: str, role: str) -> None:
        if member.startswith("serviceAccount:") and member.split(":", 1)[1] not in self.state["service_accounts"]:
            raise Refused(f"INVALID_ARGUMENT: Service account {member} does not exist.")
        members = policy.setdefault(role, [])
        if member not in members:
            members.append(member)

    def _sql_instances_describe(self, arguments: list[str], flags: dict[str, str]) -> str:
        instance = self._instance(arguments[0])
        fields = {
            "settings.backupConfiguration.enabled": str(instance.get("backups", False)),
            "settings.backupConfiguration.pointInTimeRecoveryEnabled": str(instance.get("pitr", False)),
            "settings.deletionProtectionEnabled": str(instance.get("deletion_protection", False)),
            "settings.ipConfiguration.privateNetwork": instance.get("private_network", ""),
            "settings.maintenanceWindow.day": str(instance.get("maintenance_window", {}).get("day", "")),
        }
        requested = flags.get("format", "")
        if requested.startswith("value[separator"):
            return "\n".join(f"{name}={value}" for name, value in instance["flags"].items())
        if requested.startswith("value(") and requested.endswith(")"):
            return "\t".join(fields[field] for field in requested[len("value(") : -1].split(","))
        assert not requested, f"the stand-in knows no --format={requested}"
        return f"name: {arguments[0]}"

    def _sql_instances_create(self, arguments: list[str], flags: dict[str, str]) -> str:
        if arguments[0] in self.state["instances"]:
            raise Refused(f"the instance {arguments[0]} already exists")
        database_flags = dict(flag.split("=", 1) for flag in flags["database-flags"].split(","))
        instance = {"flags": database_flags, "databases": ["postgres"], "users": ["postgres"]}
        self.state["instances"][arguments[0]] = instance
        self._protect(instance, flags)
        if "network" in flags:
            self._private_ip(instance, flags["network"])
        instance["public_ip"] = "assign-ip" in flags
        return ""

    def _sql_instances_patch(self, arguments: list[str], flags: dict[str, str]) -> str:
        instance = self._instance(arguments[0])
        if "database-flags" in flags:
            value = flags["database-flags"]
            separator = ","
            if value.startswith("^"):
                separator, value = value[1], value[3:]
            # --database-flags replaces every flag, as on Google Cloud.
            instance["flags"] = dict(flag.split("=", 1) for flag in value.split(separator))
        self._protect(instance, flags)
        if "no-deletion-protection" in flags:
            instance["deletion_protection"] = False
        if "network" in flags:
            self._private_ip(instance, flags["network"])
        if "no-assign-ip" in flags:
            if not instance.get("private_network"):
                raise Refused("INVALID_ARGUMENT: an instance needs a public or a private IP")
            instance["public_ip"] = False
        return ""

    def _protect(self, instance: dict[str, Any], flags: dict[str, str]) -> None:
        """--backup-start-time, --enable-point-in-time-recovery, --deletion-protection, as Cloud SQL
        takes them: point-in-time recovery needs backups, and Enterprise keeps 1 to 7 days of logs."""
        if "backup-start-time" in flags:
            instance["backups"] = True
        if "enable-point-in-time-recovery" in flags:
            if not instance.get("backups"):
                raise Refused("INVALID_ARGUMENT: point-in-time recovery requires automated backups")
            instance["pitr"] = True
        if "retained-transaction-log-days" in flags and not 1 <= int(flags["retained-transaction-log-days"]) <= 7:
            raise Refused("INVALID_ARGUMENT: Enterprise edition keeps 1 to 7 days of transaction logs")
        if "deletion-protection" in flags:
            instance["deletion_protection"] = True
        if "maintenance-window-day" in flags:
            day = ["MON", "TUE", "WED", "THU", "FRI", "SAT", "SUN"].index(flags["maintenance-window-day"]) + 1
            hour = int(flags["maintenance-window-hour"])
            if not 0 <= hour <= 23:
                raise Refused("INVALID_ARGUMENT: the maintenance window's hour is 0 to 23")
            instance["maintenance_window"] = {"day": day, "hour": hour}

    def _private_ip(self, instance: dict[str, Any], network: str) -> None:
        """A private IP needs Private Service Access on the network (a range and the peering)."""
        name = network.rsplit("/", 1)[-1]
        if name not in self.state.setdefault("peerings", {}):
            raise Refused(f"FAILED_PRECONDITION: no private services connection on network {name}")
        instance["private_network"] = network

    def _sql_instances_delete(self, arguments: list[str], flags: dict[str, str]) -> str:
        if self._instance(arguments[0]).get("deletion_protection"):
            raise Refused(f"FAILED_PRECONDITION: the instance {arguments[0]} has deletion protection enabled")
        if "enable-final-backup" in flags:
            days = int(flags.get("final-backup-retention-days", "30"))
            if not 1 <= days <= 365:
                raise Refused("INVALID_ARGUMENT: the final backup is kept 1 to 365 days")
            self.state.setdefault("final_backups", []).append({"instance": arguments[0], "days": days})
        del self.state["instances"][arguments[0]]
        return ""

    def _sql_databases_describe(self, arguments: list[str], flags: dict[str, str]) -> str:
        if arguments[0] not in self._instance(flags["instance"])["databases"]:
            raise Refused(f"NOT_FOUND: database {arguments[0]}")
        return f"name: {arguments[0]}"

    def _sql_databases_create(self, arguments: list[str], flags: dict[str, str]) -> str:
        self._instance(flags["instance"])["databases"].append(arguments[0])
        return ""

    def _sql_users_list(self, arguments: list[str], flags: dict[str, str]) -> str:
        assert flags.get("format") == "value(name)", flags
        return "\n".join(self._instance(flags["instance"])["users"])

    def _sql_users_create(self, arguments: list[str], flags: dict[str, str]) -> str:
        users = self._instance(flags["instance"])["users"]
        if arguments[0] in users:
            raise Refused(f"the user {arguments[0]} already exists")
        users.append(arguments[0])
        return ""

    def _sql_users_delete(self, arguments: list[str], flags: dict[str, str]) -> str:
        users = self._instance(flags["instance"])["users"]
        if arguments[0] not in users:
            raise Refused(f"NOT_FOUND: user {arguments[0]}")
        users.remove(arguments[0])
        return ""

    def _instance(self, name: str) -> dict[str, Any]:
        if name not in self.state["instances"]:
            raise Refused(f"NOT_FOUND: The Cloud SQL instance {name} does not exist.")
        instance: dict[str, Any] = self.state["instances"][name]
        return instance

    def _functions_deploy(self, arguments: list[str], flags: dict[str, str]) -> str:
        assert "gen2" in flags, "a 2nd gen function needs --gen2"
        function = self.state["functions"].setdefault(arguments[0], {"policy": {}})
        network = {name: flags[name] for name in ("network", "subnet", "direct-vpc-egress") if name in flags}
        assert not network or len(network) == 3, (
            f"Direct VPC egress takes a network, a subnet and the egress: {network}"
        )
        revisions = function.setdefault("revisions", [])
        revisions.append(f"{arguments[0]}-{len(revisions) + 1:05d}-x")
        # The Cloud Functions API keeps its images in a repository of its own.
        self._push_image(flags["region"], "gcf-artifacts", arguments[0], function, revisions[-1])
        function |= {
            "region": flags["region"],
            "service_account": flags["service-account"],
            "uri": self.state.get("function_uri", f"https://{arguments[0]}-fake.a.run.app"),
            "environment": dict(item.split("=", 1) for item in flags["set-env-vars"].split(",")),
            "network": network,
            # The Cloud Functions API deploys with allTrafficOnLatestRevision: the new revision takes it all.
            "traffic": {revisions[-1]: 100},
            "managed_by": "cloudfunctions",
        }
        return ""

    def _functions_detach(self, arguments: list[str], flags: dict[str, str]) -> str:
        """The function becomes a plain Cloud Run service: same URL, same revisions, same traffic."""
        function = self.state["functions"].get(arguments[0])
        if function is None or function.get("managed_by") != "cloudfunctions":
            raise Refused(f"Function [{arguments[0]}] does not exist.")
        function["managed_by"] = "run"
        return f"Function {arguments[0]} has been detached successfully!"

    # ---- Cloud Run: a function deployed through the Cloud Run Admin API -------------------------
    def _run_deploy(self, arguments: list[str], flags: dict[str, str]) -> str:
        assert flags.get("function") == "api" and flags.get("source") == ".", flags
        assert flags.get("base-image") == "python312", flags
        name = arguments[0]
        function = self.state["functions"].get(name)
        if function is None and "no-traffic" in flags:
            # The CLI's own refusal (command_lib/run/config_changes.py).
            raise Refused("--no-traffic not supported when creating a new service.")
        if function is not None and function.get("managed_by") == "cloudfunctions":
            raise Refused(
                f"FAILED_PRECONDITION: service {name} is managed by Cloud Functions: gcloud functions detach {name}"
            )
        network = {name: flags[name] for name in ("network", "subnet", "vpc-egress") if name in flags}
        assert not network or len(network) == 3, (
            f"Direct VPC egress takes a network, a subnet and the egress: {network}"
        )
        # The nested source build runs as the build service account: it needs what its page lists.
        builder = "serviceAccount:" + flags["build-service-account"].rsplit("/", 1)[-1]
        for need in iam_model.needs():
            if need.step == "function build" and not iam_model.holds(self.state, builder, need.permission, "project"):
                raise Refused(f"the build of {name} failed: {builder} lacks {need.permission}")
        if function is None:
            function = self.state["functions"][name] = {"policy": {}, "revisions": [], "traffic": {}, "tags": {}}
        revisions = function.setdefault("revisions", [])
        revisions.append(f"{name}-{len(revisions) + 1:05d}-x")
        # gcloud's source deploys push to cloud-run-source-deploy (made on the first one if missing),
        # one image version per deploy, in a package named after the service.
        self._push_image(flags["region"], "cloud-run-source-deploy", name, function, revisions[-1])
        function |= {
            "region": flags["region"],
            "service_account": flags["service-account"],
            "build_service_account": flags["build-service-account"],
            "uri": self._service_url(name),
            "environment": dict(item.split("=", 1) for item in flags["set-env-vars"].split(",")),
            "network": network,
            "managed_by": "run",
        }
        if "no-traffic" not in flags:
            function["traffic"] = {revisions[-1]: 100}
        if "tag" in flags:
            function.setdefault("tags", {})[flags["tag"]] = revisions[-1]
        return ""

    def _push_image(self, region: str, repository: str, package: str, function: dict[str, Any], revision: str) -> None:
        """A new image version of `package`, made today (the state's `day`), run by `revision`."""
        repo = self.state.setdefault("repositories", {}).setdefault(
            f"{region}/{repository}", {"format": "docker", "policies": [], "dry_run": True, "versions": []}
        )
        digest = f"sha256:{len(repo['versions']) + 1:064x}"
        repo["versions"].append({"package": package, "version": digest, "day": self.state.get("day", 0)})
        image = f"{region}-docker.pkg.dev/{self.state['project']}/{repository}/{package}@{digest}"
        function.setdefault("images", {})[revision] = image

    def _service_url(self, name: str) -> str:
        base = self.state.get("function_uri")
        return f"{base}/s/{name}" if base else f"https://{name}-fake.a.run.app"

    def _tag_url(self, name: str, tag: str) -> str:
        base = self.state.get("function_uri")
        return f"{base}/t/{tag}/{name}" if base else f"https://{tag}---{name}-fake.a.run.app"

    def _traffic_entries(self, name: str, function: dict[str, Any]) -> list[dict[str, str]]:
        """status.traffic as Cloud Run reports it: a revision's share and its tags in one entry."""
        entries = []
        tags_of: dict[str, list[str]] = {}
        for tag, revision in function.get("tags", {}).items():
            tags_of.setdefault(revision, []).append(tag)
        for revision, percent in function["traffic"].items():
            tags = tags_of.pop(revision, [])
            entries.append({"revisionName": revision, "percent": str(percent), "tag": tags[0] if tags else ""})
            entries += [{"revisionName": revision, "percent": "", "tag": tag} for tag in tags[1:]]
        for revision, tags in tags_of.items():
            entries += [{"revisionName": revision, "percent": "", "tag": tag} for tag in tags]
        for entry in entries:
            entry["url"] = self._tag_url(name, entry["tag"]) if entry["tag"] else ""
        return entries

    # ---- the function's Cloud Run service ------------------------------------------------------
    def _run_revisions_list(self, arguments: list[str], flags: dict[str, str]) -> str:
        assert flags.get("sort-by") == "~metadata.creationTimestamp", flags
        assert flags.get("format") == "value(metadata.name)", flags
        function = self._service(flags["service"], flags)
        return "\n".join(reversed(function.get("revisions", [])))

    def _run_services_describe(self, arguments: list[str], flags: dict[str, str]) -> str:
        function = self._service(arguments[0], flags)
        requested = flags.get("format", "")
        if requested == "value(metadata.labels)":
            managed_by = function.get("managed_by", "cloudfunctions")
            return "goog-managed-by=cloudfunctions" if managed_by == "cloudfunctions" else ""
        if not requested:
            return f"metadata:\n  name: {arguments[0]}"
        if requested == "value(status.latestCreatedRevisionName)":
            return str(function["revisions"][-1])
        if requested == "value(status.latestCreatedRevisionName,status.url)":
            return f"{function['revisions'][-1]}\t{function.get('uri', self._service_url(arguments[0]))}"
        assert flags.get("flatten") == "status.traffic[]", flags
        fields = requested.removeprefix("value(").removesuffix(")").split(",")
        known = {"status.traffic." + key for key in ("revisionName", "percent", "tag", "url")}
        assert requested.startswith("value(") and set(fields) <= known, f"the stand-in knows no --format={requested}"
        return "\n".join(
            "\t".join(entry[field.removeprefix("status.traffic.")] for field in fields)
            for entry in self._traffic_entries(arguments[0], function)
        )

    def _run_services_update_traffic(self, arguments: list[str], flags: dict[str, str]) -> str:
        function = self._service(arguments[0], flags)
        tags = function.setdefault("tags", {})
        for tag in filter(None, flags.get("remove-tags", "").split(",")):
            tags.pop(tag, None)
        for item in filter(None, flags.get("update-tags", "").split(",")):
            tag, revision = item.split("=", 1)
            if revision not in function["revisions"]:
                raise Refused(f"NOT_FOUND: revision {revision} of service {arguments[0]}")
            tags[tag] = revision
        if "to-latest" in flags:
            function["traffic"] = {function["revisions"][-1]: 100}
            return ""
        targets: dict[str, int] = {}
        for item in filter(None, flags.get("to-revisions", "").split(",")):
            revision, percent = item.split("=", 1)
            targets[function["revisions"][-1] if revision == "LATEST" else revision] = int(percent)
        for item in filter(None, flags.get("to-tags", "").split(",")):
            tag, percent = item.split("=", 1)
            if tag not in tags:
                raise Refused(f"NOT_FOUND: tag {tag} of service {arguments[0]}")
            targets[tags[tag]] = int(percent)
        if not targets:
            return ""
        unknown = set(targets) - set(function["revisions"])
        if unknown:
            raise Refused(f"NOT_FOUND: revision {sorted(unknown)} of service {arguments[0]}")
        if sum(targets.values()) != 100:
            raise Refused(f"INVALID_ARGUMENT: the traffic percentages add up to {sum(targets.values())}, not 100")
        function["traffic"] = targets
        return ""

    def _run_services_delete(self, arguments: list[str], flags: dict[str, str]) -> str:
        self._service(arguments[0], flags)
        del self.state["functions"][arguments[0]]
        return ""

    def _service(self, name: str, flags: dict[str, str]) -> dict[str, Any]:
        function = self.state["functions"].get(name)
        if function is None or function.get("region") != flags.get("region"):
            raise Refused(f"NOT_FOUND: Service [{name}] could not be found in {flags.get('region')}")
        found: dict[str, Any] = function
        return found

    # ---- Artifact Registry ---------------------------------------------------------------------
    def _repository(self, arguments: list[str], flags: dict[str, str]) -> dict[str, Any] | None:
        repositories = self.state.setdefault("repositories", {})
        found: dict[str, Any] | None = repositories.get(f"{flags['location']}/{arguments[0]}")
        return found

    def _artifacts_repositories_describe(self, arguments: list[str], flags: dict[str, str]) -> str:
        if self._repository(arguments, flags) is None:
            raise Refused(f"NOT_FOUND: Requested entity was not found. (repository {arguments[0]})")
        return f"name: projects/{self.state['project']}/locations/{flags['location']}/repositories/{arguments[0]}"

    def _artifacts_repositories_create(self, arguments: list[str], flags: dict[str, str]) -> str:
        if self._repository(arguments, flags) is not None:
            raise Refused(f"ALREADY_EXISTS: the repository {arguments[0]} already exists")
        assert flags.get("repository-format") == "docker", flags
        self.state["repositories"][f"{flags['location']}/{arguments[0]}"] = {
            "format": "docker",
            "policies": [],
            # A repository without policies deletes nothing; set-cleanup-policies says which mode applies.
            "dry_run": True,
            "versions": [],
        }
        return ""

    def _artifacts_repositories_set_cleanup_policies(self, arguments: list[str], flags: dict[str, str]) -> str:
        repository = self._repository(arguments, flags)
        if repository is None:
            raise Refused(f"NOT_FOUND: Requested entity was not found. (repository {arguments[0]})")
        assert "policy" in flags or "dry-run" in flags or "no-dry-run" in flags, "one of --policy, --[no-]dry-run"
        if "policy" in flags:
            repository["policies"] = _cleanup_policies(flags["policy"])
        if "no-dry-run" in flags or "dry-run" in flags:
            repository["dry_run"] = "dry-run" in flags
        return ""

    # ---- the private path ----------------------------------------------------------------------
    def _compute_addresses_describe(self, arguments: list[str], flags: dict[str, str]) -> str:
        assert "global" in flags, "a Private Service Access range is a global address"
        if arguments[0] not in self.state.setdefault("addresses", {}):
            raise Refused(f"NOT_FOUND: The resource 'global/addresses/{arguments[0]}' was not found")
        return f"name: {arguments[0]}"

    def _compute_addresses_create(self, arguments: list[str], flags: dict[str, str]) -> str:
        assert "global" in flags and flags.get("purpose") == "VPC_PEERING", flags
        addresses = self.state.setdefault("addresses", {})
        if arguments[0] in addresses:
            raise Refused(f"ALREADY_EXISTS: The resource {arguments[0]} already exists")
        addresses[arguments[0]] = {"network": flags["network"], "prefix_length": int(flags["prefix-length"])}
        return ""

    def _services_vpc_peerings_list(self, arguments: list[str], flags: dict[str, str]) -> str:
        assert flags.get("format") == "value(service)", flags
        peering = self.state.setdefault("peerings", {}).get(flags["network"])
        return "servicenetworking.googleapis.com" if peering else ""

    def _services_vpc_peerings_connect(self, arguments: list[str], flags: dict[str, str]) -> str:
        assert flags.get("service") == "servicenetworking.googleapis.com", flags
        ranges = flags["ranges"].split(",")
        for name in ranges:
            address = self.state.setdefault("addresses", {}).get(name)
            if address is None or address["network"] != flags["network"]:
                raise Refused(f"FAILED_PRECONDITION: no allocated range {name} on network {flags['network']}")
        self.state.setdefault("peerings", {})[flags["network"]] = ranges
        return ""

    def _builds_worker_pools_describe(self, arguments: list[str], flags: dict[str, str]) -> str:
        if arguments[0] not in self.state.setdefault("worker_pools", {}):
            raise Refused(f"NOT_FOUND: worker pool {arguments[0]}")
        return f"name: {arguments[0]}"

    def _builds_worker_pools_create(self, arguments: list[str], flags: dict[str, str]) -> str:
        network = flags["peered-network"].rsplit("/", 1)[-1]
        if network not in self.state.setdefault("peerings", {}):
            raise Refused(f"FAILED_PRECONDITION: network {network} has no private services connection")
        self.state.setdefault("worker_pools", {})[arguments[0]] = {"region": flags["region"], "network": network}
        return ""

    def _builds_worker_pools_delete(self, arguments: list[str], flags: dict[str, str]) -> str:
        if self.state.setdefault("worker_pools", {}).pop(arguments[0], None) is None:
            raise Refused(f"NOT_FOUND: worker pool {arguments[0]}")
        return ""

    # ---- builds ----------------------------------------------------------------------------------
    def _builds_submit(self, arguments: list[str], flags: dict[str, str]) -> str:
        """Records the build; its steps are not run here (tests run them step by step)."""
        account = _build_service_account(flags["config"], self.state["project"])
        if account not in self.state["service_accounts"]:
            raise Refused(f"INVALID_ARGUMENT: service account {account} does not exist")
        objects = self.state.setdefault("objects", [])
        if arguments and arguments[0].startswith("gs://"):
            if arguments[0] not in objects:
                raise Refused(f"NOT_FOUND: {arguments[0]}")
            source = arguments[0]
        else:
            staging = flags.get("gcs-source-staging-dir", f"gs://{self.state['project']}_cloudbuild/source")
            source = f"{staging}/{len(objects) + 1:04d}-source.tgz"
            objects.append(source)
        builds = self.state.setdefault("builds", [])
        builds.append({"config": Path(flags["config"]).name, "service_account": account, "source": source})
        if self.state.get("failing_builds") and Path(flags["config"]).name in self.state["failing_builds"]:
            raise Refused(f"build {len(builds)} completed with status FAILURE")
        return f"build {len(builds)}: SUCCESS"

    def _storage_buckets_describe(self, arguments: list[str], flags: dict[str, str]) -> str:
        if arguments[0] not in self.state.setdefault("buckets", {}):
            raise Refused(f"NOT_FOUND: bucket {arguments[0]} does not exist")
        return f"name: {arguments[0]}"

    def _storage_buckets_create(self, arguments: list[str], flags: dict[str, str]) -> str:
        assert "uniform-bucket-level-access" in flags, "bucket-level IAM needs uniform access"
        buckets = self.state.setdefault("buckets", {})
        if arguments[0] in buckets:
            raise Refused(f"HTTPError 409: The requested bucket name {arguments[0]} is not available.")
        buckets[arguments[0]] = {"policy": {}, "location": flags["location"]}
        return ""

    def _storage_buckets_add_iam_policy_binding(self, arguments: list[str], flags: dict[str, str]) -> str:
        bucket = self.state.setdefault("buckets", {}).get(arguments[0])
        if bucket is None:
            raise Refused(f"NOT_FOUND: bucket {arguments[0]} does not exist")
        self._bind(bucket["policy"], flags["member"], flags["role"])
        return ""

    def _storage_ls(self, arguments: list[str], flags: dict[str, str]) -> str:
        prefix = arguments[0]
        return "\n".join(name for name in self.state.setdefault("objects", []) if name.startswith(prefix))

    # ---- alerts --------------------------------------------------------------------------------
    def _logging_metrics_describe(self, arguments: list[str], flags: dict[str, str]) -> str:
        if arguments[0] not in self.state.setdefault("log_metrics", {}):
            raise Refused(f"NOT_FOUND: Metric {arguments[0]} does not exist")
        return f"name: {arguments[0]}"

    def _logging_metrics_create(self, arguments: list[str], flags: dict[str, str]) -> str:
        metrics = self.state.setdefault("log_metrics", {})
        if arguments[0] in metrics:
            raise Refused(f"ALREADY_EXISTS: Metric {arguments[0]} already exists")
        metrics[arguments[0]] = _config(flags["config-from-file"])
        return ""

    def _logging_metrics_update(self, arguments: list[str], flags: dict[str, str]) -> str:
        self._logging_metrics_describe(arguments, flags)
        self.state["log_metrics"][arguments[0]] = _config(flags["config-from-file"])
        return ""

    def _logging_metrics_delete(self, arguments: list[str], flags: dict[str, str]) -> str:
        self._logging_metrics_describe(arguments, flags)
        del self.state["log_metrics"][arguments[0]]
        return ""

    def _beta_monitoring_channels_list(self, arguments: list[str], flags: dict[str, str]) -> str:
        assert flags.get("format") == "value(name,type,labels.email_address)", flags
        channels = self.state.setdefault("channels", {})
        return "\n".join(f"{name}\t{c['type']}\t{c['labels']['email_address']}" for name, c in channels.items())

    def _beta_monitoring_channels_create(self, arguments: list[str], flags: dict[str, str]) -> str:
        assert flags.get("type") == "email" and flags.get("format") == "value(name)", flags
        channels = self.state.setdefault("channels", {})
        name = f"projects/{self.state['project']}/notificationChannels/{len(channels) + 1}"
        labels = dict(item.split("=", 1) for item in flags["channel-labels"].split(","))
        channels[name] = {"type": "email", "labels": labels, "display_name": flags["display-name"]}
        return name

    def _monitoring_policies_list(self, arguments: list[str], flags: dict[str, str]) -> str:
        assert flags.get("format") == "value(name,displayName)", flags
        policies = self.state.setdefault("policies", {})
        return "\n".join(f"{name}\t{policy['displayName']}" for name, policy in policies.items())

    def _monitoring_policies_create(self, arguments: list[str], flags: dict[str, str]) -> str:
        policy = self._policy(flags["policy-from-file"])
        policies = self.state.setdefault("policies", {})
        policies[f"projects/{self.state['project']}/alertPolicies/{len(policies) + 1}"] = policy
        return ""

    def _monitoring_policies_update(self, arguments: list[str], flags: dict[str, str]) -> str:
        if arguments[0] not in self.state.setdefault("policies", {}):
            raise Refused(f"NOT_FOUND: alert policy {arguments[0]}")
        self.state["policies"][arguments[0]] = self._policy(flags["policy-from-file"])
        return ""

    def _monitoring_policies_delete(self, arguments: list[str], flags: dict[str, str]) -> str:
        if self.state.setdefault("policies", {}).pop(arguments[0], None) is None:
            raise Refused(f"NOT_FOUND: alert policy {arguments[0]}")
        return ""

    def _policy(self, path: str) -> dict[str, Any]:
        """A policy whose every metric exists and whose channels are the project's, as the API checks."""
        policy = _config(path)
        for channel in policy.get("notificationChannels", []):
            if channel not in self.state.setdefault("channels", {}):
                raise Refused(f"INVALID_ARGUMENT: notification channel {channel} does not exist")
        for condition in policy["conditions"]:
            threshold = condition["conditionThreshold"]
            for filter_text in (threshold["filter"], threshold.get("denominatorFilter", "")):
                for metric in re.findall(r'metric\.type="logging\.googleapis\.com/user/([^"]+)"', filter_text):
                    if metric not in self.state.setdefault("log_metrics", {}):
                        raise Refused(f"INVALID_ARGUMENT: the log-based metric {metric} does not exist")
        return policy

    def _functions_describe(self, arguments: list[str], flags: dict[str, str]) -> str:
        function = self._function(arguments[0], flags)
        if flags.get("format") == "value(serviceConfig.uri)":
            return str(function["uri"])
        return f"name: {arguments[0]}"

    def _functions_delete(self, arguments: list[str], flags: dict[str, str]) -> str:
        self._function(arguments[0], flags)
        del self.state["functions"][arguments[0]]
        return ""

    def _function(self, name: str, flags: dict[str, str]) -> dict[str, Any]:
        assert "gen2" in flags, "a 2nd gen function needs --gen2"
        if name not in self.state["functions"]:
            raise Refused(f"NOT_FOUND: Resource 'projects/{self.state['project']}/.../functions/{name}' was not found")
        function: dict[str, Any] = self.state["functions"][name]
        return function

    def _auth_print_identity_token(self, arguments: list[str], flags: dict[str, str]) -> str:
        claims = json.dumps({"sub": self.account, "aud": flags["audiences"]}).encode()
        return TOKEN_PREFIX + base64.urlsafe_b64encode(claims).decode()


def _build_service_account(config: str, project: str) -> str:
    """The email a build config's `serviceAccount` names, with its substitutions' defaults applied."""
    loaded = _config(config)
    text = loaded["serviceAccount"]
    values = {"PROJECT_ID": project, **loaded.get("substitutions", {})}
    for _ in range(3):  # dynamic substitutions: a default may itself name one
        text = re.sub(r"\$\{?(\w+)\}?", lambda match: str(values[match[1]]), text)
    return str(text.rsplit("/", 1)[-1])


def _config(path: str) -> dict[str, Any]:
    """A --config-from-file or --policy-from-file: YAML (JSON is YAML too), parsed as gcloud does."""
    sys.path.append(os.environ["FAKE_GCLOUD_YAML_PATH"])
    import yaml

    loaded: dict[str, Any] = yaml.safe_load(Path(path).read_text())
    assert isinstance(loaded, dict), path
    return loaded


def _cleanup_policies(path: str) -> list[dict[str, Any]]:
    """A cleanup policy file, checked as gcloud's parser checks it (command_lib/artifacts/
    cleanup_policy_util.py): a list of named policies, each a Keep or Delete action with either a
    condition or mostRecentVersions."""
    policies = json.loads(Path(path).read_text())
    if not isinstance(policies, list):
        raise Refused("Policy file must contain a list of policies.")
    names = [policy.get("name") for policy in policies]
    if None in names or len(set(names)) != len(names):
        raise Refused(f"every policy needs a name of its own: {names}")
    for policy in policies:
        if policy.get("action", {}).get("type") not in ("Keep", "Delete"):
            raise Refused(f"Invalid action in policy {policy['name']}")
        if ("condition" in policy) == ("mostRecentVersions" in policy):
            raise Refused(f'Only one of "condition" or "mostRecentVersions" allowed in policy "{policy["name"]}".')
    return list(policies)


def _days(duration: str) -> int:
    number, unit = int(duration[:-1]), duration[-1]
    return {"d": number, "h": number // 24}[unit]


def run_cleanup(state: dict[str, Any]) -> list[str]:
    """One run of Artifact Registry's cleanup on every repository, on the state's `day`; returns the
    versions deleted. As Google's cleanup policy overview says: a version matching a Keep policy is
    kept even when a Delete policy matches it; Keep most recent versions keeps the newest keepCount
    versions of each package its prefixes name; a repository in dry run deletes nothing."""
    today = state.get("day", 0)
    deleted = []
    for repository in state.get("repositories", {}).values():
        if repository["dry_run"]:
            continue
        versions = repository["versions"]

        def matches(version: dict[str, Any], prefixes: list[str] | None) -> bool:
            return prefixes is None or any(version["package"].startswith(prefix) for prefix in prefixes)

        kept, doomed = set(), set()
        for policy in repository["policies"]:
            if "mostRecentVersions" in policy:
                recent = policy["mostRecentVersions"]
                by_package: dict[str, list[dict[str, Any]]] = {}
                for version in versions:
                    if matches(version, recent.get("packageNamePrefixes")):
                        by_package.setdefault(version["package"], []).append(version)
                for listed in by_package.values():
                    # Newest first: by day, then by push order within a day.
                    newest = [v for _, v in sorted(enumerate(listed), key=lambda p: (p[1]["day"], p[0]), reverse=True)]
                    kept |= {version["version"] for version in newest[: recent["keepCount"]]}
                continue
            condition = policy["condition"]
            assert condition.get("tagState", "ANY") == "ANY", "the stand-in keeps no tags"
            chosen = {
                version["version"]
                for version in versions
                if matches(version, condition.get("packageNamePrefixes"))
                and today - version["day"] > _days(condition.get("olderThan", "0d"))
            }
            if policy["action"]["type"] == "Keep":
                kept |= chosen
            else:
                doomed |= chosen
        gone = doomed - kept
        repository["versions"] = [version for version in versions if version["version"] not in gone]
        deleted += sorted(gone)
    return deleted


def image_exists(state: dict[str, Any], image: str) -> bool:
    """Whether the image a revision runs (REGION-docker.pkg.dev/PROJECT/REPO/PACKAGE@DIGEST) is still stored."""
    location, _, repository, _ = image.split("/", 3)
    stored = state.get("repositories", {}).get(f"{location.removesuffix('-docker.pkg.dev')}/{repository}")
    return stored is not None and any(image.endswith("@" + version["version"]) for version in stored["versions"])


FILE_FLAGS = re.compile(r"^--(config|policy|[a-z-]+-from-file)=(.+)$")


def record(args: list[str]) -> None:
    """With FAKE_GCLOUD_RECORD set: the call appended to calls.jsonl there, each file it names
    copied beside it (gcloud reads them while it parses, so a replay needs them)."""
    folder = os.environ.get("FAKE_GCLOUD_RECORD")
    if not folder:
        return
    recorded = []
    for arg in args:
        named = FILE_FLAGS.match(arg)
        if named and Path(named[2]).is_file():
            copy = Path(folder) / "files" / f"{len(list(Path(folder).glob('files/*')))}-{Path(named[2]).name}"
            copy.parent.mkdir(parents=True, exist_ok=True)
            copy.write_bytes(Path(named[2]).read_bytes())
            arg = f"--{named[1]}={copy}"
        recorded.append(arg)
    with open(Path(folder) / "calls.jsonl", "a") as calls:
        calls.write(json.dumps(recorded) + "\n")


def main() -> int:
    state_file = Path(os.environ["FAKE_GCLOUD_STATE"])
    state = json.loads(state_file.read_text())
    account = os.environ["FAKE_GCLOUD_ACCOUNT"]
    words = [word for word in sys.argv[1:] if word not in ("--quiet", "-q")]
    state["calls"].append({"account": account, "args": sys.argv[1:]})
    record(sys.argv[1:])
    gcloud = Gcloud(state, account)
    try:
        output = gcloud.run(words)
    except Refused as refusal:
        state_file.write_text(json.dumps(state, indent=1))
        print(f"ERROR: (gcloud) {refusal}", file=sys.stderr)
        return 1
    state_file.write_text(json.dumps(state, indent=1))
    if output:
        print(output)
    return 0


def new_state(project: str, owner: str) -> dict[str, Any]:
    """An empty project whose Owner is `owner` (a `user:` member)."""
    return {
        "project": project,
        "project_policy": {"roles/owner": [owner]},
        "service_accounts": {},
        "instances": {},
        "functions": {},
        "repositories": {},
        "services": [],
        "calls": [],
    }


if __name__ == "__main__":
    sys.exit(main())


def install(folder: Path) -> Path:
    """A directory for the front of PATH: `gcloud` is this stand-in, `sleep` returns at once."""
    bin_dir = folder / "fake-bin"
    bin_dir.mkdir(exist_ok=True)
    # -I -S: no site-packages to scan; the stand-in needs the standard library, and PyYAML for the
    # files of --config-from-file and --policy-from-file, found where this process found it.
    import yaml

    yaml_path = Path(yaml.__file__).resolve().parent.parent
    script = Path(__file__).resolve()
    (bin_dir / "gcloud").write_text(
        f'#!/bin/sh\nFAKE_GCLOUD_YAML_PATH="{yaml_path}" exec "{sys.executable}" -I -S "{script}" "$@"\n'
    )
    (bin_dir / "sleep").write_text("#!/bin/sh\n")
    for tool in bin_dir.iterdir():
        tool.chmod(0o755)
    return bin_dir


def environment(bin_dir: Path, state_file: Path, account: str, **settings: str) -> dict[str, str]:
    """The environment a script runs in: the stand-in first on PATH, none of the real gcloud's settings."""
    settings_names = {
        *("PROJECT", "REGION", "INSTANCE", "DB_NAME", "FUNCTION", "RUNTIME_SA", "MIGRATOR_SA", "SUBMITTER"),
        *("TESTER_SA", "BUILDER_SA"),
        *("DB_IP_TYPE", "NETWORK", "SUBNET", "BUILD_POOL", "BACKUP_START_TIME", "ALERT_EMAIL"),
    }
    kept = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("CLOUDSDK_") and key not in settings_names | {"DB_VERSION", "DB_TIER"}
    }
    return (
        kept
        | {
            "PATH": f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
            "FAKE_GCLOUD_STATE": str(state_file),
            "FAKE_GCLOUD_ACCOUNT": account,
        }
        | settings
    )


SCRIPTS = Path(__file__).resolve().parent.parent / "scripts"
OWNER = "user:owner@example.com"


class Project:
    """A project's state file and the stand-in gcloud, for running scripts/ against it, by default
    as its Owner."""

    def __init__(self, folder: Path, state: dict[str, Any] | None = None, owner: str = OWNER) -> None:
        self.owner = owner
        self.state_file = folder / "state.json"
        self.state_file.write_text(json.dumps(state or new_state("demo-project", owner)))
        self.bin_dir = install(folder)

    @property
    def state(self) -> dict[str, Any]:
        loaded: dict[str, Any] = json.loads(self.state_file.read_text())
        return loaded

    def update(self, **changes: Any) -> None:
        self.state_file.write_text(json.dumps(self.state | changes))

    def grant(self, member: str, *roles: str) -> None:
        """Project roles for `member`, as a project's IAM admin would grant them."""
        state = self.state
        for role in roles:
            state["project_policy"].setdefault(role, []).append(member)
        self.state_file.write_text(json.dumps(state))

    def run(self, script: str, *args: str, account: str | None = None, **settings: str) -> "CompletedProcess[str]":
        import shutil
        import subprocess

        bash = shutil.which("bash")
        assert bash, "bash is not installed"
        return subprocess.run(
            [bash, str(SCRIPTS / script), *args],
            env=environment(self.bin_dir, self.state_file, account or self.owner, **settings),
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=120,
        )

    def gcloud(self, *args: str, account: str | None = None) -> "CompletedProcess[str]":
        """One command of the stand-in, as a script would run it."""
        import subprocess

        return subprocess.run(
            ["gcloud", *args],
            env=environment(self.bin_dir, self.state_file, account or self.owner),
            capture_output=True,
            text=True,
        )

    def calls(self, since: int = 0) -> list[list[str]]:
        return [call["args"] for call in self.state["calls"][since:]]
