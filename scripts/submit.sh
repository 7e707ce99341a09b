#!/usr/bin/env bash
# One command for a release: the test build, then the deploy build from the very source the test
# build passed. See --help.
set -euo pipefail

usage() {
  cat <<'EOF2'
Usage: scripts/submit.sh [--help]

Submits, as you, from the repository root:
  1. cloudbuild-test.yaml (lint and the test suite) as TESTER_SA, which may only write its logs and
     read its source. gcloud uploads the source once, to a folder of its own in gs://PROJECT_cloudbuild;
  2. once that build passed, cloudbuild.yaml (migrate, deploy a candidate, smoke-test it, move the
     traffic) as MIGRATOR_SA, from that same uploaded archive: what was tested is what ships.
A failed test build stops here: nothing is migrated or deployed.
Extra substitutions for the deploy build: SUBSTITUTIONS=_MAX_INSTANCES=20,... With
DB_IP_TYPE=private the deploy build runs in the private pool BUILD_POOL (default FUNCTION-builds).
You need Cloud Build Editor, Service Usage Consumer, Service Account User on both build accounts
(bootstrap grants it to SUBMITTER) and object rights on the source bucket (docs/permissions.md).

Settings (environment variables; default after the colon):
EOF2
  sed -n 's/^#   /  /p' "$(dirname "$0")/deploy_settings.sh"
}

source "$(dirname "$0")/deploy_settings.sh"
check_arguments "" "$@"
require_gcloud
load_settings
cd "$(dirname "$0")/.."

# A folder of this run's own, so the archive gcloud uploads is the only object in it.
run_id="$(date -u +%Y%m%dT%H%M%SZ)-$$"
staging="${SOURCE_BUCKET}/source/${run_id}"
common=(--project="$PROJECT" --region="$REGION")
deploy_substitutions="_REGION=${REGION},_INSTANCE=${INSTANCE},_DB_NAME=${DB_NAME},_FUNCTION=${FUNCTION}"
deploy_substitutions+=",_RUNTIME_SA=${RUNTIME_SA},_MIGRATOR_SA=${MIGRATOR_SA},_BUILDER_SA=${BUILDER_SA}"
deploy_substitutions+=",_DB_IP_TYPE=${DB_IP_TYPE},_NETWORK=${NETWORK},_SUBNET=${SUBNET}"
[ -z "${SUBSTITUTIONS:-}" ] || deploy_substitutions+=",${SUBSTITUTIONS}"
pool=()
if [ "$DB_IP_TYPE" = private ]; then
  pool=(--worker-pool="projects/${PROJECT}/locations/${REGION}/workerPools/${BUILD_POOL:-${FUNCTION}-builds}")
fi

step "Test build (cloudbuild-test.yaml, as $TESTER_SA)"
gcloud builds submit . "${common[@]}" --config=cloudbuild-test.yaml --ignore-file=.gitignore \
  --gcs-source-staging-dir="$staging" --substitutions="_TESTER_SA=${TESTER_SA}"

source_archive="$(gcloud storage ls "${staging}/")"
[ "$(wc -l <<<"$source_archive")" = 1 ] && [[ "$source_archive" == gs://*.tgz ]] ||
  die "expected the one archive the test build ran on in $staging/, found: $source_archive"

step "Deploy build (cloudbuild.yaml, as $MIGRATOR_SA) from $source_archive"
gcloud builds submit "$source_archive" "${common[@]}" --config=cloudbuild.yaml \
  --substitutions="$deploy_substitutions" ${pool[@]+"${pool[@]}"}
