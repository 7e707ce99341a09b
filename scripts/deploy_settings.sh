# Settings shared by scripts/bootstrap.sh, scripts/grant_roles.sh and scripts/teardown.sh, which
# source this file. Each is an environment variable; its default follows the colon.
#   PROJECT      project id: gcloud config get-value project
#   REGION       region of the instance, the function and the build: europe-west1
#   INSTANCE     Cloud SQL instance: projects-db
#   DB_NAME      database: app
#   FUNCTION     the function: projects-api
#   RUNTIME_SA   the function's service account: projects-api@PROJECT.iam.gserviceaccount.com
#   MIGRATOR_SA  the build's service account (migrations, deploy): migrator@PROJECT.iam.gserviceaccount.com

die() {
  echo "$(basename "$0"): $*" >&2
  exit 1
}

step() {
  echo "==> $*"
}

if [ -z "${PROJECT:-}" ] && command -v gcloud >/dev/null; then
  PROJECT="$(gcloud config get-value project 2>/dev/null || true)"
fi
[ -n "${PROJECT:-}" ] || die "no project: set PROJECT or run 'gcloud config set project PROJECT_ID'"
REGION="${REGION:-europe-west1}"
INSTANCE="${INSTANCE:-projects-db}"
DB_NAME="${DB_NAME:-app}"
FUNCTION="${FUNCTION:-projects-api}"
RUNTIME_SA="${RUNTIME_SA:-projects-api@${PROJECT}.iam.gserviceaccount.com}"
MIGRATOR_SA="${MIGRATOR_SA:-migrator@${PROJECT}.iam.gserviceaccount.com}"

for sa in "$RUNTIME_SA" "$MIGRATOR_SA"; do
  [[ "$sa" == *"@${PROJECT}.iam.gserviceaccount.com" ]] ||
    die "$sa: expected a service account of project $PROJECT (NAME@${PROJECT}.iam.gserviceaccount.com)"
done

# Cloud SQL names a service account's IAM database user after its email without the domain suffix.
RUNTIME_DB_USER="${RUNTIME_SA%.gserviceaccount.com}"
MIGRATOR_DB_USER="${MIGRATOR_SA%.gserviceaccount.com}"
CONNECTION_NAME="${PROJECT}:${REGION}:${INSTANCE}"
