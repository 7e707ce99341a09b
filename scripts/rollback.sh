#!/usr/bin/env bash
# Sends all of the function's traffic back to an earlier revision, or forward to the latest. The
# database is not touched: every migration keeps the release before it working (README,
# "Expand, then contract"), so the earlier code runs on today's schema. See --help.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/rollback.sh [REVISION | --to-latest | --help]

A 2nd gen function runs as the Cloud Run service of the same name, one revision per deploy. With no
argument, all traffic goes to the revision deployed before the one serving now; with REVISION
(from `gcloud run revisions list --service=FUNCTION --region=REGION`), to that one; with
--to-latest, back to the newest. The next build's deploy sends all traffic to its new revision.
Migrations are not undone: the earlier code runs on today's schema (docs/operations.md).

Settings (environment variables; default after the colon):
EOF
  sed -n 's/^#   /  /p' "$(dirname "$0")/deploy_settings.sh"
}

source "$(dirname "$0")/deploy_settings.sh"
target=""
case "$#:${1:-}" in
  0:) ;;
  1:-h | 1:--help)
    usage
    exit 0
    ;;
  1:--to-latest) target=LATEST ;;
  1:-*)
    echo "unknown argument: $1 (try --help)" >&2
    exit 2
    ;;
  1:*) target="$1" ;;
  *)
    echo "one argument at most (try --help)" >&2
    exit 2
    ;;
esac

require_gcloud
load_settings
where=(--region="$REGION" --project="$PROJECT")

if [ "$target" = LATEST ]; then
  step "All traffic of $FUNCTION to its latest revision"
  gcloud run services update-traffic "$FUNCTION" "${where[@]}" --to-latest --quiet
  exit 0
fi

# Newest first, and what serves now (revision and percent, one line each).
revisions="$(gcloud run revisions list --service="$FUNCTION" "${where[@]}" \
  --sort-by='~metadata.creationTimestamp' --format='value(metadata.name)')"
[ -n "$revisions" ] || die "the function $FUNCTION has no revision in $REGION (is it deployed?)"
serving="$(gcloud run services describe "$FUNCTION" "${where[@]}" \
  --flatten='status.traffic[]' --format='value(status.traffic.revisionName,status.traffic.percent)' |
  awk -F '\t' '$2 == 100 { print $1 }')"

if [ -z "$target" ]; then
  [ -n "$serving" ] || die "traffic is split between revisions: name the one to send it all to (try --help)"
  target="$(awk -v serving="$serving" 'found { print; exit } $0 == serving { found = 1 }' <<<"$revisions")"
  [ -n "$target" ] || die "$serving is the oldest revision of $FUNCTION: there is none to roll back to"
elif ! grep -Fxq -- "$target" <<<"$revisions"; then
  die "$FUNCTION has no revision $target; its revisions, newest first: $(paste -sd ' ' <<<"$revisions")"
fi
if [ "$target" = "$serving" ]; then
  echo "$target already serves all traffic of $FUNCTION"
  exit 0
fi

step "All traffic of $FUNCTION from ${serving:-several revisions} to $target"
gcloud run services update-traffic "$FUNCTION" "${where[@]}" --to-revisions="$target=100" --quiet
cat <<EOF

Done: $target serves $FUNCTION. The next build sends all traffic to its new revision; to return
to the latest one now: scripts/rollback.sh --to-latest
EOF
