#!/usr/bin/env bash
# Sends all of the function's traffic back to an earlier promoted revision, or forward to the newest. The
# database is not touched: every migration keeps the release before it working (README,
# "Expand, then contract"), so the earlier code runs on today's schema. See --help.
set -euo pipefail

usage() {
  cat <<EOF
Usage: scripts/rollback.sh [REVISION | --to-latest | --help]

A Cloud Run function runs as the Cloud Run service of the same name, one revision per deploy.
Only revisions the build promoted (smoke-tested, then given all traffic; each keeps a tag
promoted-NNNNN) are targets: a candidate that failed its smoke test never is. With no argument,
all traffic goes to the promoted revision before the one serving now; with REVISION, to that one
(it must have been promoted); with --to-latest, to the newest promoted revision. Only promoted
revisions among the newest $ROLLBACK_WINDOW revisions are targets (ROLLBACK_WINDOW in
scripts/deploy_settings.sh): the image cleanup policy bootstrap sets keeps their images, not
older ones. The next build moves traffic again, after its own smoke test. Migrations are not
undone: the earlier code runs on today's schema (docs/operations.md).

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

# What the service routes, one traffic entry a line: tag, revision, percent (any may be empty).
entries="$(gcloud run services describe "$FUNCTION" "${where[@]}" --flatten='status.traffic[]' \
  --format='value(status.traffic.tag,status.traffic.revisionName,status.traffic.percent)')"
# Promoted revisions, newest promotion first ("NUMBER<tab>REVISION"), and the one revision serving all
# traffic, if any.
promoted_numbered="$(awk -F '\t' '$1 ~ /^promoted-[0-9]+$/ { print substr($1, 10) "\t" $2 }' <<<"$entries" |
  sort -rn | awk -F '\t' '!seen[$2]++')"
promoted="$(cut -f2 <<<"$promoted_numbered")"
[ -n "$promoted" ] || die "the function $FUNCTION has no promoted revision in $REGION (did a build pass?)"
serving="$(serving_revision <<<"$entries")"
# Targets: the promoted revisions among the newest ROLLBACK_WINDOW revisions (NAME-NNNNN-xyz). The
# repository's cleanup policy keeps that many images and one more; an older revision's image may be
# gone, and Cloud Run could not start it.
latest="$(gcloud run services describe "$FUNCTION" "${where[@]}" --format='value(status.latestCreatedRevisionName)')"
latest_number="$((10#$(revision_number "$latest")))"
targets="$(awk -F '\t' -v oldest="$((latest_number - ROLLBACK_WINDOW + 1))" '$1 + 0 >= oldest { print $2 }' \
  <<<"$promoted_numbered")"
out_of_window() {
  die "$1 was promoted more than $ROLLBACK_WINDOW revisions ago: the repository's cleanup policy may have deleted its image (docs/operations.md, \"Images a rollback may need\"); targets, newest first: $(paste -sd ' ' <<<"$targets")"
}

if [ "$target" = LATEST ]; then
  target="$(head -n 1 <<<"$targets")"
  [ -n "$target" ] || out_of_window "$(head -n 1 <<<"$promoted")"
elif [ -z "$target" ]; then
  [ -n "$serving" ] || die "traffic is split between revisions: name the one to send it all to (try --help)"
  grep -Fxq -- "$serving" <<<"$promoted" ||
    die "$serving serves but was never promoted: name a promoted revision ($(paste -sd ' ' <<<"$targets"))"
  target="$(awk -v serving="$serving" 'found { print; exit } $0 == serving { found = 1 }' <<<"$promoted")"
  [ -n "$target" ] || die "$serving is the oldest promoted revision of $FUNCTION: there is none to roll back to"
  grep -Fxq -- "$target" <<<"$targets" || out_of_window "$target"
elif ! grep -Fxq -- "$target" <<<"$promoted"; then
  die "$target was never promoted (a candidate that failed its smoke test, or unknown); promoted revisions of $FUNCTION, newest first: $(paste -sd ' ' <<<"$targets")"
elif ! grep -Fxq -- "$target" <<<"$targets"; then
  out_of_window "$target"
fi
if [ "$target" = "$serving" ]; then
  echo "$target already serves all traffic of $FUNCTION"
  exit 0
fi

step "All traffic of $FUNCTION from ${serving:-several revisions} to $target"
gcloud run services update-traffic "$FUNCTION" "${where[@]}" --to-revisions="$target=100" --quiet
cat <<EOF

Done: $target serves $FUNCTION. The next build moves traffic to its own candidate once that passes
its smoke test; to return to the newest promoted revision now: scripts/rollback.sh --to-latest
EOF
