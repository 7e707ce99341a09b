#!/usr/bin/env bash
# Deletes what scripts/bootstrap.sh and the build created. Safe to run again. See --help.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/teardown.sh [--yes] [--help]

Deletes, in this order, whatever of it still exists:
  - the function FUNCTION in REGION (the build deployed it);
  - the Cloud SQL instance INSTANCE, with every database and its automated backups, after you type
    the instance's name to confirm (--yes: without asking); only then is its deletion protection
    turned off. A final backup is taken and kept FINAL_BACKUP_DAYS days (default 30, at most 365):
    docs/operations.md says how to restore it. Without a terminal and without --yes the instance is kept, protected, and so are
    its databases and database users;
  - with DB_IP_TYPE=private, the Cloud Build private pool BUILD_POOL (default FUNCTION-builds);
  - the alert policies and log-based metrics scripts/alerts.sh made (named after FUNCTION);
  - every project role of RUNTIME_SA, MIGRATOR_SA, TESTER_SA and BUILDER_SA, then the four service
    accounts (the grants made on them go with them).
It keeps the enabled APIs (other resources of the project may use them), and it lists at the end
what the builds left behind: Cloud Storage buckets and the function's images.
Run it as a project Owner, with the settings you gave scripts/bootstrap.sh.

Settings (environment variables; default after the colon):
EOF
  sed -n 's/^#   /  /p' "$(dirname "$0")/deploy_settings.sh"
}

source "$(dirname "$0")/deploy_settings.sh"
check_arguments --yes "$@"
delete_without_asking=no
if [ "${1:-}" = --yes ]; then
  delete_without_asking=yes
fi

require_gcloud
load_settings
FINAL_BACKUP_DAYS="${FINAL_BACKUP_DAYS:-30}"
[[ "$FINAL_BACKUP_DAYS" =~ ^[0-9]+$ ]] && [ "$FINAL_BACKUP_DAYS" -ge 1 ] && [ "$FINAL_BACKUP_DAYS" -le 365 ] ||
  die "FINAL_BACKUP_DAYS=$FINAL_BACKUP_DAYS: expected 1 to 365"

echo "Project $PROJECT, region $REGION, instance $INSTANCE, function $FUNCTION"
echo "Runtime $RUNTIME_SA, migrator $MIGRATOR_SA"

step "Function $FUNCTION (its Cloud Run service)"
if gcloud run services describe "$FUNCTION" --region="$REGION" --project="$PROJECT" >/dev/null 2>&1; then
  gcloud run services delete "$FUNCTION" --region="$REGION" --project="$PROJECT" --quiet
else
  echo "    not found"
fi

confirm_instance() {
  if [ "$delete_without_asking" = yes ]; then
    return 0
  fi
  if [ ! -t 0 ]; then
    echo "    kept: to delete it, run this on a terminal and confirm, or pass --yes"
    return 1
  fi
  local answer
  printf '    Delete %s and ALL its data? Type the instance name to confirm: ' "$INSTANCE"
  read -r answer || true
  if [ "$answer" = "$INSTANCE" ]; then
    return 0
  fi
  echo "    kept: the answer was not the instance name"
  return 1
}

step "Cloud SQL instance $INSTANCE"
if gcloud sql instances describe "$INSTANCE" --project="$PROJECT" >/dev/null 2>&1; then
  if confirm_instance; then
    protected="$(gcloud sql instances describe "$INSTANCE" --project="$PROJECT" \
      --format='value(settings.deletionProtectionEnabled)')"
    if [ "$protected" = True ]; then
      echo "    turning deletion protection off"
      gcloud sql instances patch "$INSTANCE" --project="$PROJECT" --no-deletion-protection --quiet
    fi
    # A final backup, kept FINAL_BACKUP_DAYS after the instance is gone (docs/operations.md, "Restore
    # a deleted instance from its final backup").
    gcloud sql instances delete "$INSTANCE" --project="$PROJECT" --quiet \
      --enable-final-backup --final-backup-retention-days="$FINAL_BACKUP_DAYS"
    echo "    a final backup is kept for $FINAL_BACKUP_DAYS days: gcloud sql backups list --project=$PROJECT (no --instance: the project-level backups)"
  else
    echo "    its IAM database users $MIGRATOR_DB_USER and $RUNTIME_DB_USER stay; once the service"
    echo "    accounts are gone they cannot log in (gcloud sql users delete ... removes them)"
  fi
else
  echo "    not found"
fi

if [ "$DB_IP_TYPE" = private ]; then
  BUILD_POOL="${BUILD_POOL:-${FUNCTION}-builds}"
  step "Cloud Build private pool $BUILD_POOL"
  if gcloud builds worker-pools describe "$BUILD_POOL" --region="$REGION" --project="$PROJECT" >/dev/null 2>&1; then
    gcloud builds worker-pools delete "$BUILD_POOL" --region="$REGION" --project="$PROJECT" --quiet
  else
    echo "    not found"
  fi
fi

step "Alert policies and log-based metrics of $FUNCTION"
policies="$(gcloud monitoring policies list --project="$PROJECT" --format='value(name,displayName)')"
while IFS=$'\t' read -r policy display_name; do
  case "$display_name" in
    "${FUNCTION}: "*) gcloud monitoring policies delete "$policy" --project="$PROJECT" --quiet ;;
  esac
done <<<"$policies"
for metric in "$(dirname "$0")"/../monitoring/metrics/*.yaml; do
  name="${FUNCTION}-$(basename "$metric" .yaml)"
  if gcloud logging metrics describe "$name" --project="$PROJECT" >/dev/null 2>&1; then
    gcloud logging metrics delete "$name" --project="$PROJECT" --quiet
  fi
done

step "Service accounts and their project roles"
# A deleted service account's bindings stay in the policy as deleted:serviceAccount:EMAIL?uid=...;
# those are removed too, so a second run cleans up after an interrupted first one.
policy="$(gcloud projects get-iam-policy "$PROJECT" --flatten='bindings[].members' \
  --format='value(bindings.role,bindings.members)')"
for sa in "$RUNTIME_SA" "$MIGRATOR_SA" "$TESTER_SA" "$BUILDER_SA"; do
  while IFS=$'\t' read -r role member; do
    case "$member" in
      "serviceAccount:$sa" | "deleted:serviceAccount:$sa?uid="*)
        echo "    $role: removing $member"
        gcloud projects remove-iam-policy-binding "$PROJECT" --member="$member" --role="$role" \
          --all --quiet >/dev/null
        ;;
    esac
  done <<<"$policy"
  if gcloud iam service-accounts describe "$sa" --project="$PROJECT" >/dev/null 2>&1; then
    gcloud iam service-accounts delete "$sa" --project="$PROJECT" --quiet
  else
    echo "    $sa not found"
  fi
done

cat <<EOF

Done. Left in the project, if you want them gone too:
  - the APIs bootstrap enabled: gcloud services disable ... (other resources may use them);
  - the alerts' e-mail notification channel (other policies may use it):
    gcloud beta monitoring channels list --project=${PROJECT}, then ... channels delete NAME;
  - with the private path, the peering and address range of ${NETWORK} (Google's other services may
    use them): gcloud services vpc-peerings delete --network=${NETWORK} --project=${PROJECT}, then
    gcloud compute addresses delete google-managed-services-${NETWORK} --global --project=${PROJECT};
  - the builds' sources: gcloud storage buckets list --project=${PROJECT} (${PROJECT}_cloudbuild,
    and run-sources-* for the function), then gcloud storage rm -r gs://BUCKET;
  - the function's images, in the cloud-run-source-deploy repository of ${REGION}:
    gcloud artifacts repositories delete cloud-run-source-deploy --location=${REGION} --project=${PROJECT}
    (it holds the images of every source deploy of the region).
EOF
