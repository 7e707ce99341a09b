#!/usr/bin/env bash
# One-time set-up of a Google Cloud project for this service, safe to run again: everything it
# makes is looked up first, and every grant is a no-op when it is already there. See --help.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/bootstrap.sh [--help]

Prepares an empty Google Cloud project for the two builds (cloudbuild-test.yaml, cloudbuild.yaml):
  - enables the APIs the build, the function, Cloud SQL and the alerts use;
  - creates the Cloud SQL for PostgreSQL instance with cloudsql.iam_authentication=on (or turns the
    flag on for an existing instance, keeping its other flags), daily backups, point-in-time
    recovery, a maintenance window and deletion protection, and the database;
  - creates the builds' source bucket gs://PROJECT_cloudbuild;
  - creates the function's image repository (cloud-run-source-deploy) with a cleanup policy that
    keeps every image scripts/rollback.sh may target (scripts/artifact-cleanup-policy.json);
  - with DB_IP_TYPE=private: Private Service Access on NETWORK, a private IP for the instance, and
    a Cloud Build private pool in NETWORK for the migrations (docs/operations.md);
  - creates the service accounts: the runtime (the function), the tester (the test build), the
    migrator (owns the schema; the deploy build) and the builder (the function's image); grants
    them their roles, and creates the IAM database users of the runtime and the migrator;
  - with ALERT_EMAIL set: the log-based metrics and alert policies (scripts/alerts.sh);
  - prints the one step left: scripts/grant_roles.sh (migrations/roles.sql as the admin user).
Run it as a project Owner (or someone who may enable APIs, create Cloud SQL instances and service
accounts, and set IAM policies). It changes nothing that is already as it should be.

Settings (environment variables; default after the colon):
EOF
  sed -n 's/^#   /  /p' "$(dirname "$0")/deploy_settings.sh"
  cat <<'EOF'
  DB_VERSION   PostgreSQL version of a new instance: POSTGRES_17
  DB_TIER      machine type of a new instance: db-custom-1-3840
  SUBMITTER    account allowed to start builds as MIGRATOR_SA (set it empty to skip that grant):
               gcloud config get-value account
  BACKUP_START_TIME  start of the daily backup window, HH:MM in UTC: 03:00
  MAINTENANCE_DAY, MAINTENANCE_HOUR  Cloud SQL's maintenance window (day, hour in UTC): SUN, 4
  BUILD_POOL   the Cloud Build private pool of DB_IP_TYPE=private: FUNCTION-builds
  ALERT_EMAIL  where alerts go; when set, bootstrap ends by running scripts/alerts.sh: unset

db-custom-1-3840 (Enterprise edition) allows 100 connections: room for the build's default
--max-instances=10 with pools of 2 + 2, Cloud Run's surge past the maximum, the old revision
while it drains, and the migrator (the build's connection-budget step checks the sum).
If creating the instance outlasts gcloud's wait, let the operation finish and run this again.
Backups are kept 8 days, transaction logs for point-in-time recovery 7 (docs/operations.md).

Example:
  PROJECT=my-project REGION=europe-west1 INSTANCE=projects-db scripts/bootstrap.sh
EOF
}

source "$(dirname "$0")/deploy_settings.sh"
check_arguments "" "$@"

# IAM answers "does not exist" for a few seconds after a service account is created: try again.
retry() {
  local attempt
  for attempt in 1 2 3 4 5 6; do
    if "$@"; then
      return 0
    fi
    echo "    (attempt $attempt failed; retrying in 10 s)" >&2
    sleep 10
  done
  "$@"
}

require_gcloud
load_settings
DB_VERSION="${DB_VERSION:-POSTGRES_17}"
DB_TIER="${DB_TIER:-db-custom-1-3840}"
SUBMITTER="${SUBMITTER-$(gcloud config get-value account 2>/dev/null || true)}"
BACKUP_START_TIME="${BACKUP_START_TIME:-03:00}"
MAINTENANCE_DAY="${MAINTENANCE_DAY:-SUN}"
MAINTENANCE_HOUR="${MAINTENANCE_HOUR:-4}"
BUILD_POOL="${BUILD_POOL:-${FUNCTION}-builds}"
[[ "$BACKUP_START_TIME" =~ ^([01][0-9]|2[0-3]):[0-5][0-9]$ ]] ||
  die "BACKUP_START_TIME=$BACKUP_START_TIME: expected HH:MM (UTC)"
NETWORK_PATH="projects/${PROJECT}/global/networks/${NETWORK}"

echo "Project $PROJECT, region $REGION, instance $INSTANCE, database $DB_NAME, $DB_IP_TYPE IP"
echo "Runtime $RUNTIME_SA, migrator $MIGRATOR_SA, tester $TESTER_SA, builder $BUILDER_SA"

step "Enabling APIs"
# With a public IP, compute.googleapis.com is not needed: the function builds and runs as the
# service accounts below, never as the Compute Engine default account. The private path needs it
# (the VPC network and its address range) and Service Networking (the peering Cloud SQL is behind).
apis=(
  cloudresourcemanager.googleapis.com
  serviceusage.googleapis.com
  iam.googleapis.com
  iamcredentials.googleapis.com
  cloudfunctions.googleapis.com
  run.googleapis.com
  cloudbuild.googleapis.com
  artifactregistry.googleapis.com
  storage.googleapis.com
  sqladmin.googleapis.com
  logging.googleapis.com
  monitoring.googleapis.com
)
if [ "$DB_IP_TYPE" = private ]; then
  apis+=(compute.googleapis.com servicenetworking.googleapis.com)
fi
gcloud services enable --project="$PROJECT" "${apis[@]}"

step "Service accounts"
ensure_service_account() {
  local email="$1" description="$2"
  if gcloud iam service-accounts describe "$email" --project="$PROJECT" >/dev/null 2>&1; then
    echo "    $email exists"
  else
    gcloud iam service-accounts create "${email%%@*}" --project="$PROJECT" --display-name="$description"
  fi
}
ensure_service_account "$RUNTIME_SA" "projects API function (runtime)"
ensure_service_account "$MIGRATOR_SA" "projects API migrations and deploys (the deploy build)"
ensure_service_account "$TESTER_SA" "projects API lint and tests (the test build)"
ensure_service_account "$BUILDER_SA" "projects API function image builds"

grant_project_role() {
  local member="$1" role="$2"
  echo "    $role -> $member"
  retry gcloud projects add-iam-policy-binding "$PROJECT" \
    --member="$member" --role="$role" --condition=None --quiet >/dev/null
}

grant_on_service_account() {
  local service_account="$1" member="$2" role="$3"
  echo "    $role on $service_account -> $member"
  retry gcloud iam service-accounts add-iam-policy-binding "$service_account" --project="$PROJECT" \
    --member="$member" --role="$role" --quiet >/dev/null
}

grant_on_bucket() {
  local bucket="$1" member="$2" role="$3"
  echo "    $role on $bucket -> $member"
  retry gcloud storage buckets add-iam-policy-binding "$bucket" --project="$PROJECT" \
    --member="$member" --role="$role" --quiet >/dev/null
}

# Where `gcloud builds submit` uploads the source both builds read (scripts/submit.sh): made here,
# so that read rights can be granted on this bucket alone.
step "Build source bucket $SOURCE_BUCKET"
if gcloud storage buckets describe "$SOURCE_BUCKET" --project="$PROJECT" >/dev/null 2>&1; then
  echo "    exists"
else
  gcloud storage buckets create "$SOURCE_BUCKET" --project="$PROJECT" --location="$REGION" \
    --uniform-bucket-level-access
fi

# Where `gcloud run deploy --source` stores the function's images (gcloud makes it on the first
# deploy otherwise), made here so that its cleanup policy is in place before the first image:
# scripts/artifact-cleanup-policy.json keeps the newest images a rollback may target
# (ROLLBACK_WINDOW, scripts/deploy_settings.sh) and deletes the function's other images after 30 days.
step "Image repository $IMAGE_REPOSITORY in $REGION"
if gcloud artifacts repositories describe "$IMAGE_REPOSITORY" --location="$REGION" --project="$PROJECT" >/dev/null 2>&1; then
  echo "    exists"
else
  gcloud artifacts repositories create "$IMAGE_REPOSITORY" --location="$REGION" --project="$PROJECT" \
    --repository-format=docker --description="Cloud Run source deploy images"
fi
# Setting the same policies again changes nothing. --no-dry-run: a policy in dry run deletes nothing.
gcloud artifacts repositories set-cleanup-policies "$IMAGE_REPOSITORY" --location="$REGION" \
  --project="$PROJECT" --policy="$(dirname "$0")/artifact-cleanup-policy.json" --no-dry-run >/dev/null

# What each role is for, command by command, with Google's page for it: docs/permissions.md.
step "Roles"
# Both identities fetch connector certificates (client) and log in as their IAM database user.
for sa in "$RUNTIME_SA" "$MIGRATOR_SA"; do
  grant_project_role "serviceAccount:$sa" roles/cloudsql.client
  grant_project_role "serviceAccount:$sa" roles/cloudsql.instanceUser
done
# The tester runs cloudbuild-test.yaml: third-party dev dependencies run with its credentials, so
# it may write its build's logs and read the uploaded source, and nothing else.
grant_project_role "serviceAccount:$TESTER_SA" roles/logging.logWriter
grant_on_bucket "$SOURCE_BUCKET" "serviceAccount:$TESTER_SA" roles/storage.objectViewer
# The migrator runs cloudbuild.yaml (locked runtime dependencies only):
#   logging.logWriter                    build logs (options.logging: CLOUD_LOGGING_ONLY)
#   storage.objectViewer on the bucket   the uploaded source
#   run.sourceDeveloper                  deploy the candidate from source, move its traffic
#   serviceusage.serviceUsageConsumer    the nested source build, as Google's page asks
#   run.invoker                          the smoke test's calls; project-wide because the service
#                                        does not exist before the first build. Once it does, you
#                                        may move the grant to it (docs/permissions.md)
for role in roles/logging.logWriter roles/run.sourceDeveloper roles/serviceusage.serviceUsageConsumer \
  roles/run.invoker; do
  grant_project_role "serviceAccount:$MIGRATOR_SA" "$role"
done
grant_on_bucket "$SOURCE_BUCKET" "serviceAccount:$MIGRATOR_SA" roles/storage.objectViewer
# The function's image is built by its own account, with the role Google's build-account page names.
grant_project_role "serviceAccount:$BUILDER_SA" roles/run.builder
# Deploying as the migrator attaches the runtime account to the function and builds as the builder.
grant_on_service_account "$RUNTIME_SA" "serviceAccount:$MIGRATOR_SA" roles/iam.serviceAccountUser
grant_on_service_account "$BUILDER_SA" "serviceAccount:$MIGRATOR_SA" roles/iam.serviceAccountUser
# The smoke test's identity token is the migrator's own: iam.serviceAccounts.getOpenIdToken,
# which Service Account User does not include.
grant_on_service_account "$MIGRATOR_SA" "serviceAccount:$MIGRATOR_SA" roles/iam.serviceAccountOpenIdTokenCreator
# On the private path the function's own account needs Cloud Run Invoker for Direct VPC egress
# (Google's page on Direct VPC egress for functions).
if [ "$DB_IP_TYPE" = private ]; then
  grant_project_role "serviceAccount:$RUNTIME_SA" roles/run.invoker
fi
# Whoever runs scripts/submit.sh must be allowed to start the two builds as their identities.
if [ -n "$SUBMITTER" ]; then
  if [[ "$SUBMITTER" == *.gserviceaccount.com ]]; then
    submitter_member="serviceAccount:$SUBMITTER"
  else
    submitter_member="user:$SUBMITTER"
  fi
  grant_on_service_account "$TESTER_SA" "$submitter_member" roles/iam.serviceAccountUser
  grant_on_service_account "$MIGRATOR_SA" "$submitter_member" roles/iam.serviceAccountUser
fi

if [ "$DB_IP_TYPE" = private ]; then
  # Private Service Access: an address range of NETWORK reserved for Google's services, and the
  # peering they reach NETWORK through. Cloud SQL's private IP and the build's private pool use both.
  psa_range="google-managed-services-${NETWORK}"
  step "Private Service Access on network $NETWORK"
  if gcloud compute addresses describe "$psa_range" --global --project="$PROJECT" >/dev/null 2>&1; then
    echo "    address range $psa_range exists"
  else
    gcloud compute addresses create "$psa_range" --global --project="$PROJECT" \
      --purpose=VPC_PEERING --prefix-length=16 --network="$NETWORK"
  fi
  peerings="$(gcloud services vpc-peerings list --network="$NETWORK" --project="$PROJECT" --format='value(service)')"
  if grep -Fxq servicenetworking.googleapis.com <<<"$peerings"; then
    echo "    peering with servicenetworking.googleapis.com exists"
  else
    gcloud services vpc-peerings connect --service=servicenetworking.googleapis.com \
      --ranges="$psa_range" --network="$NETWORK" --project="$PROJECT"
  fi
fi

step "Cloud SQL instance $INSTANCE"
if gcloud sql instances describe "$INSTANCE" --project="$PROJECT" >/dev/null 2>&1; then
  # `patch --database-flags` replaces the whole list: keep the instance's other flags.
  current_flags="$(gcloud sql instances describe "$INSTANCE" --project="$PROJECT" \
    --flatten=settings.databaseFlags \
    --format='value[separator="="](settings.databaseFlags.name,settings.databaseFlags.value)')"
  flags=()
  iam_authentication=off
  while IFS= read -r flag; do
    case "$flag" in
      "" | "=") ;;
      cloudsql.iam_authentication=on) iam_authentication=on ;;
      cloudsql.iam_authentication=*) ;;
      *) flags+=("$flag") ;;
    esac
  done <<<"$current_flags"
  if [ "$iam_authentication" = on ]; then
    echo "    exists, cloudsql.iam_authentication=on"
  else
    flags+=("cloudsql.iam_authentication=on")
    joined="$(IFS='|' && echo "${flags[*]}")"
    # ^|^ makes | the list separator, so a flag value may contain commas.
    gcloud sql instances patch "$INSTANCE" --project="$PROJECT" --database-flags="^|^${joined}" --quiet
  fi
  # Data protection and the private IP, each patched only when missing (these patches keep the flags).
  IFS=$'\t' read -r backups pitr protected private_network < <(gcloud sql instances describe "$INSTANCE" \
    --project="$PROJECT" --format='value(settings.backupConfiguration.enabled,settings.backupConfiguration.pointInTimeRecoveryEnabled,settings.deletionProtectionEnabled,settings.ipConfiguration.privateNetwork)')
  if [ "$backups" = True ] && [ "$pitr" = True ] && [ "$protected" = True ]; then
    echo "    backups, point-in-time recovery and deletion protection are on"
  else
    gcloud sql instances patch "$INSTANCE" --project="$PROJECT" --backup-start-time="$BACKUP_START_TIME" \
      --retained-backups-count=8 --enable-point-in-time-recovery --retained-transaction-log-days=7 \
      --deletion-protection --quiet
  fi
  # Without a window Cloud SQL may restart the instance for maintenance at any hour.
  window="$(gcloud sql instances describe "$INSTANCE" --project="$PROJECT" --format='value(settings.maintenanceWindow.day)')"
  if [ -n "$window" ] && [ "$window" != 0 ]; then
    echo "    maintenance window set (day $window)"
  else
    gcloud sql instances patch "$INSTANCE" --project="$PROJECT" --maintenance-window-day="$MAINTENANCE_DAY" \
      --maintenance-window-hour="$MAINTENANCE_HOUR" --quiet
  fi
  if [ "$DB_IP_TYPE" = private ]; then
    if [ -n "$private_network" ]; then
      echo "    private IP in $private_network"
    else
      echo "    adding a private IP in $NETWORK_PATH (the instance restarts; its public IP stays)"
      gcloud sql instances patch "$INSTANCE" --project="$PROJECT" --network="$NETWORK_PATH" --quiet
    fi
  fi
else
  echo "    creating (this takes several minutes)"
  # Daily backups kept 8 days, and 7 days of transaction logs for point-in-time recovery (one
  # backup more than the days of logs, as Google advises); deletion protection refuses a delete
  # until it is turned off (scripts/teardown.sh asks first). The public IP is assigned in both
  # modes, with no authorized network, so only the connector and the Auth Proxy reach it, with IAM;
  # the private path closes it once the first build has passed (docs/operations.md).
  network=()
  if [ "$DB_IP_TYPE" = private ]; then
    network=(--network="$NETWORK_PATH")
  fi
  gcloud sql instances create "$INSTANCE" --project="$PROJECT" --region="$REGION" \
    --database-version="$DB_VERSION" --edition=enterprise --tier="$DB_TIER" \
    --assign-ip --database-flags=cloudsql.iam_authentication=on \
    --backup-start-time="$BACKUP_START_TIME" --retained-backups-count=8 \
    --enable-point-in-time-recovery --retained-transaction-log-days=7 --deletion-protection \
    --maintenance-window-day="$MAINTENANCE_DAY" --maintenance-window-hour="$MAINTENANCE_HOUR" \
    ${network[@]+"${network[@]}"}
fi

if [ "$DB_IP_TYPE" = private ]; then
  # The build's migrate step reaches the private IP from a private pool peered with NETWORK.
  step "Cloud Build private pool $BUILD_POOL"
  if gcloud builds worker-pools describe "$BUILD_POOL" --region="$REGION" --project="$PROJECT" >/dev/null 2>&1; then
    echo "    exists"
  else
    gcloud builds worker-pools create "$BUILD_POOL" --region="$REGION" --project="$PROJECT" \
      --peered-network="$NETWORK_PATH"
  fi
fi

step "Database $DB_NAME"
if gcloud sql databases describe "$DB_NAME" --instance="$INSTANCE" --project="$PROJECT" >/dev/null 2>&1; then
  echo "    exists"
else
  gcloud sql databases create "$DB_NAME" --instance="$INSTANCE" --project="$PROJECT"
fi

step "IAM database users"
existing_users="$(gcloud sql users list --instance="$INSTANCE" --project="$PROJECT" --format='value(name)')"
for db_user in "$MIGRATOR_DB_USER" "$RUNTIME_DB_USER"; do
  if grep -Fxq -- "$db_user" <<<"$existing_users"; then
    echo "    $db_user exists"
  else
    # No --database-roles: the roles that carry the users' rights come from migrations/roles.sql,
    # after this, and gcloud accepts only roles that exist; whether Cloud SQL then makes the user a
    # member of cloudsqlsuperuser is checked before each deploy by the build's least-privilege step
    # (docs/permissions.md). Right after its service account is created, Cloud SQL may not see it
    # yet: try again.
    retry gcloud sql users create "$db_user" --instance="$INSTANCE" --project="$PROJECT" \
      --type=cloud_iam_service_account
  fi
done

cat <<EOF

Done. One step is left, once per database: migrations/roles.sql, run as the instance's admin
user, so that the migrator may migrate and the runtime may only read and write rows. With psql,
pg_isready and the Cloud SQL Auth Proxy installed (README, Deploy), from the repository root:

  gcloud sql users set-password postgres --instance=${INSTANCE} --project=${PROJECT} --prompt-for-password
  PROJECT=${PROJECT} REGION=${REGION} INSTANCE=${INSTANCE} DB_NAME=${DB_NAME} \\
    RUNTIME_SA=${RUNTIME_SA} MIGRATOR_SA=${MIGRATOR_SA} scripts/grant_roles.sh

Then release: the test build, then the deploy build from the same upload (migrate, a candidate
without traffic, its smoke test, the traffic):

EOF
settings="PROJECT=${PROJECT} REGION=${REGION} INSTANCE=${INSTANCE} DB_NAME=${DB_NAME} FUNCTION=${FUNCTION}"
if [ "$DB_IP_TYPE" = private ]; then
  cat <<EOF
  ${settings} DB_IP_TYPE=private NETWORK=${NETWORK} SUBNET=${SUBNET} BUILD_POOL=${BUILD_POOL} \\
    scripts/submit.sh

Once that release has passed, close the instance's public IP (docs/operations.md):

  gcloud sql instances patch ${INSTANCE} --project=${PROJECT} --no-assign-ip
EOF
else
  cat <<EOF
  ${settings} scripts/submit.sh
EOF
fi

echo
if [ -n "${ALERT_EMAIL:-}" ]; then
  "$(dirname "$0")/alerts.sh"
else
  echo "Alerts: ALERT_EMAIL=you@example.com scripts/alerts.sh (or set ALERT_EMAIL for bootstrap)."
fi
