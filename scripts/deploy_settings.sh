# Settings and helpers shared by the scripts that act on Google Cloud (bootstrap.sh, grant_roles.sh,
# alerts.sh, rollback.sh, teardown.sh, and release.sh for its helpers), which source this file first. Each setting is an
# environment variable; its default follows the colon. load_settings reads them, once the
# arguments are checked.
#   PROJECT      project id: gcloud config get-value project
#   REGION       region of the instance, the function and the build: europe-west1
#   INSTANCE     Cloud SQL instance: projects-db
#   DB_NAME      database: app
#   FUNCTION     the function: projects-api
#   RUNTIME_SA   the function's service account: projects-api@PROJECT.iam.gserviceaccount.com
#   MIGRATOR_SA  the deploy build's service account (migrations, deploy): projects-api-migrator@PROJECT.iam.gserviceaccount.com
#   TESTER_SA    the test build's service account (lint, tests): projects-api-tester@PROJECT.iam.gserviceaccount.com
#   BUILDER_SA   builds the function's image: projects-api-builder@PROJECT.iam.gserviceaccount.com
#   DB_IP_TYPE   how the function reaches the instance: public (its public IP, through the connector)
#                or private (a private IP in NETWORK; docs/operations.md, "Keep the database private"): public
#   NETWORK      the VPC network of the private path: default
#   SUBNET       the subnet in REGION that the function's Direct VPC egress uses: NETWORK

# How far back scripts/rollback.sh reaches: promoted revisions among the newest ROLLBACK_WINDOW
# revisions of the service. Every deploy, passed or failed, makes one revision and one image, so
# scripts/artifact-cleanup-policy.json keeps the newest ROLLBACK_WINDOW + 1 images of the function
# (one more for a build under way): change both together (tests/test_rollback.py checks them).
ROLLBACK_WINDOW=10

die() {
  echo "$(basename "$0"): $*" >&2
  exit 1
}

step() {
  echo "==> $*"
}

# Each script takes one optional argument: --help prints its usage (the script's `usage`), the
# script's one flag (the first argument here, if any) is accepted, anything else is refused.
check_arguments() {
  local allowed="$1"
  shift
  if [ "$#" -gt 1 ]; then
    echo "one argument at most (try --help)" >&2
    exit 2
  fi
  case "${1:-}" in
    -h | --help)
      usage
      exit 0
      ;;
    "") ;;
    *)
      if [ -z "$allowed" ] || [ "$1" != "$allowed" ]; then
        echo "unknown argument: $1 (try --help)" >&2
        exit 2
      fi
      ;;
  esac
}

# The revision serving all of a service's traffic, from its traffic entries on stdin (tag, revision,
# percent; a line each, as `gcloud run services describe --flatten='status.traffic[]'` prints
# them); nothing when traffic is split.
serving_revision() {
  awk -F '\t' '$3 != "" { share[$2] += $3 } END { for (r in share) if (share[r] == 100) print r }'
}

# projects-api-00007-xiz -> 00007, the number a `promoted-` tag carries.
revision_number() {
  local number="${1%-*}"
  echo "${number##*-}"
}

# For the scripts that call gcloud themselves: say so once, before the first call fails obscurely.
require_gcloud() {
  command -v gcloud >/dev/null || die "gcloud is not installed (https://cloud.google.com/sdk/docs/install)"
}

# The settings and the names derived from them. Not on --help: looking PROJECT up calls gcloud.
load_settings() {
  if [ -z "${PROJECT:-}" ] && command -v gcloud >/dev/null; then
    PROJECT="$(gcloud config get-value project 2>/dev/null || true)"
  fi
  [ -n "${PROJECT:-}" ] || die "no project: set PROJECT or run 'gcloud config set project PROJECT_ID'"
  REGION="${REGION:-europe-west1}"
  INSTANCE="${INSTANCE:-projects-db}"
  DB_NAME="${DB_NAME:-app}"
  FUNCTION="${FUNCTION:-projects-api}"
  RUNTIME_SA="${RUNTIME_SA:-projects-api@${PROJECT}.iam.gserviceaccount.com}"
  MIGRATOR_SA="${MIGRATOR_SA:-projects-api-migrator@${PROJECT}.iam.gserviceaccount.com}"
  TESTER_SA="${TESTER_SA:-projects-api-tester@${PROJECT}.iam.gserviceaccount.com}"
  BUILDER_SA="${BUILDER_SA:-projects-api-builder@${PROJECT}.iam.gserviceaccount.com}"
  SOURCE_BUCKET="gs://${PROJECT}_cloudbuild"
  # The Artifact Registry repository gcloud's source deploys use in REGION.
  IMAGE_REPOSITORY=cloud-run-source-deploy
  DB_IP_TYPE="${DB_IP_TYPE:-public}"
  NETWORK="${NETWORK:-default}"
  SUBNET="${SUBNET:-$NETWORK}"
  case "$DB_IP_TYPE" in
    public | private) ;;
    *) die "DB_IP_TYPE=$DB_IP_TYPE: expected public or private" ;;
  esac

  for sa in "$RUNTIME_SA" "$MIGRATOR_SA" "$TESTER_SA" "$BUILDER_SA"; do
    [[ "$sa" == *"@${PROJECT}.iam.gserviceaccount.com" ]] ||
      die "$sa: expected a service account of project $PROJECT (NAME@${PROJECT}.iam.gserviceaccount.com)"
  done

  # Cloud SQL names a service account's IAM database user after its email without the domain suffix.
  RUNTIME_DB_USER="${RUNTIME_SA%.gserviceaccount.com}"
  MIGRATOR_DB_USER="${MIGRATOR_SA%.gserviceaccount.com}"
  CONNECTION_NAME="${PROJECT}:${REGION}:${INSTANCE}"
}
