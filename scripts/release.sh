#!/usr/bin/env bash
# The two gcloud halves of a rollout, run by cloudbuild.yaml around the smoke test (scripts/smoke_test.py):
#
#   release.sh deploy gcloud run deploy FUNCTION ...   the candidate: a new revision tagged `candidate`,
#                                                      with --no-traffic when the service exists
#   release.sh promote                                 all traffic to the candidate, which then also
#                                                      keeps a tag `promoted-NNNNN` (rollback targets)
#
# `deploy` runs the gcloud command it is given, adding --tag=candidate, --no-traffic (the CLI refuses
# it when it creates the service: the first deploy takes traffic at once, nobody calls it yet, and
# it is still smoke-tested before the build succeeds) and, for DB_IP_TYPE=private, Direct VPC
# egress. It then writes what the next steps need to candidate.env in the working directory (the
# build's /workspace): the revision, its tag URL and the service URL (the ID token's audience).
# No credential is written.
#
# A function made by an earlier release of this template with `gcloud functions deploy` belongs to
# the Cloud Functions API, which would move all traffic to every new revision. `deploy` stops on
# one and says how to hand it to Cloud Run once (`gcloud functions detach`, docs/operations.md).
# On the first build after that, the revision serving all traffic (the previous release's code) is
# tagged promoted-NNNNN before the candidate, so that scripts/rollback.sh can return to it.
#
# Settings: FUNCTION, REGION, PROJECT, DB_IP_TYPE, NETWORK, SUBNET (scripts/deploy_settings.sh).
set -euo pipefail

source "$(dirname "$0")/deploy_settings.sh"

CANDIDATE_TAG=candidate
CANDIDATE_FILE=candidate.env

die() {
  echo "release.sh: $*" >&2
  exit 1
}

: "${FUNCTION:?}" "${REGION:?}" "${PROJECT:?}"
where=(--region="$REGION" --project="$PROJECT")

deploy() {
  [ "$#" -gt 0 ] || die "usage: release.sh deploy gcloud run deploy FUNCTION ..."
  local labels errors
  errors="$(mktemp)"
  if labels="$(gcloud run services describe "$FUNCTION" "${where[@]}" --format='value(metadata.labels)' 2>"$errors")"; then
    exists=yes
  elif grep -Eq 'could not be found|NOT_FOUND' "$errors"; then
    exists=no
  else
    cat "$errors" >&2
    die "could not tell whether the service $FUNCTION exists"
  fi
  if [ "$exists" = yes ] && grep -q 'goog-managed-by=cloudfunctions' <<<"$labels"; then
    local detach="gcloud functions detach $FUNCTION --region=$REGION --project=$PROJECT"
    die "$FUNCTION was deployed with the Cloud Functions API (an earlier release of this template),
which would send all traffic to every new revision. Hand it to Cloud Run once, as a project Owner
(it keeps serving, at the same URLs), then run the build again:
  $detach
(docs/operations.md, \"Upgrading a function deployed with gcloud functions deploy\")"
  fi

  if [ "$exists" = yes ]; then
    mark_previous_release
  fi

  local extra=(--tag="$CANDIDATE_TAG")
  if [ "$exists" = yes ]; then
    extra+=(--no-traffic)
  else
    echo "first deploy of $FUNCTION: the CLI refuses --no-traffic when it creates a service, so this"
    echo "revision takes traffic at once; the smoke test still runs before the build succeeds."
  fi
  if [ "${DB_IP_TYPE:-public}" = private ]; then
    extra+=(--network="$NETWORK" --subnet="$SUBNET" --vpc-egress=private-ranges-only)
  fi
  "$@" "${extra[@]}"

  local described revision service_url tag_url
  described="$(gcloud run services describe "$FUNCTION" "${where[@]}" \
    --format='value(status.latestCreatedRevisionName,status.url)')"
  revision="$(cut -f1 <<<"$described")"
  service_url="$(cut -f2 <<<"$described")"
  tag_url="$(gcloud run services describe "$FUNCTION" "${where[@]}" \
    --flatten='status.traffic[]' --format='value(status.traffic.tag,status.traffic.url)' |
    awk -F '\t' -v tag="$CANDIDATE_TAG" '$1 == tag { print $2 }')"
  [ -n "$revision" ] && [ -n "$service_url" ] && [ -n "$tag_url" ] ||
    die "the service $FUNCTION does not show the candidate (revision '$revision', tag URL '$tag_url')"
  printf 'REVISION=%s\nTAG_URL=%s\nSERVICE_URL=%s\nFIRST_DEPLOY=%s\n' \
    "$revision" "$tag_url" "$service_url" "$([ "$exists" = no ] && echo yes || echo no)" >"$CANDIDATE_FILE"
  echo "candidate $revision at $tag_url (no traffic before its smoke test passes)"
}

# A service no build of this release has deployed to carries neither the `candidate` tag nor a
# `promoted-` one: a function of the previous release of this template, just detached. The
# revision serving all its traffic is that release's code, which served users: it becomes a
# rollback target (promoted-NNNNN) before the first candidate, so scripts/rollback.sh can return to
# it. A service this release created always has the `candidate` tag, even when its first revision
# failed its smoke test, so such a revision is never marked.
mark_previous_release() {
  local entries serving
  entries="$(gcloud run services describe "$FUNCTION" "${where[@]}" --flatten='status.traffic[]' \
    --format='value(status.traffic.tag,status.traffic.revisionName,status.traffic.percent)')"
  if awk -F '\t' -v tag="$CANDIDATE_TAG" '$1 == tag || $1 ~ /^promoted-[0-9]+$/ { found = 1 } END { exit !found }' \
    <<<"$entries"; then
    return 0
  fi
  serving="$(serving_revision <<<"$entries")"
  if [ -z "$serving" ]; then
    echo "$FUNCTION has no revision of this release and its traffic is split: none is marked as a rollback target"
    return 0
  fi
  local number
  number="$(revision_number "$serving")"
  gcloud run services update-traffic "$FUNCTION" "${where[@]}" --update-tags="promoted-$number=$serving" --quiet
  echo "$serving (deployed before this release) serves all traffic: tagged promoted-$number, a rollback target"
}

promote() {
  [ -f "$CANDIDATE_FILE" ] || die "no $CANDIDATE_FILE: the deploy step did not run"
  local revision
  revision="$(sed -n 's/^REVISION=//p' "$CANDIDATE_FILE")"
  # projects-api-00007-xiz -> promoted-00007: a lasting mark that this revision once served all
  # traffic after passing its smoke test, which scripts/rollback.sh reads.
  local number
  number="$(revision_number "$revision")"
  gcloud run services update-traffic "$FUNCTION" "${where[@]}" \
    --to-revisions="$revision=100" --update-tags="promoted-$number=$revision" --quiet
  echo "$revision serves all traffic of $FUNCTION"
}

case "${1:-}" in
  deploy)
    shift
    deploy "$@"
    ;;
  promote) promote ;;
  *) die "usage: release.sh deploy gcloud run deploy FUNCTION ... | release.sh promote" ;;
esac
