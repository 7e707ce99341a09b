#!/usr/bin/env bash
# Sends all of the function's traffic back to an earlier promoted revision, or forward to the newest. The
# database is not touched: every migration keeps the release before it working (README,
# "Expand, then contract"), so the earlier code runs on today's schema. See --help.
set -euo pipefail

usage() {
  cat <<'EOF'
Usage: scripts/rollback.sh [REVISION | --to-latest | --help]

A Cloud Run function runs as the Cloud Run service of the same name, one revision per deploy.
Only revisions the build promoted (smoke-tested, then given all traffic; each keeps a tag
promoted-NNNNN) are targets: a candidate that failed its smoke test never is. With no argument,
all traffic goes to the promoted revision before the one serving now; with REVISION, to that one
(it must have been promoted); with --to-latest, to the newest promoted revision. The next build
moves traffic again, after its own smoke test. Migrations are not undone: the earlier code runs on
today's schema (docs/operations.md).

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
# Promoted revisions, newest promotion first, and the one revision serving all traffic, if any.
promoted="$(awk -F '\t' '$1 ~ /^promoted-[0-9]+$/ { print substr($1, 10) "\t" $2 }' <<<"$entries" |
  sort -rn | cut -f2 | awk '!seen[$0]++')"
[ -n "$promoted" ] || die "the function $FUNCTION has no promoted revision in $REGION (did a build pass?)"
serving="$(awk -F '\t' '$3 != "" { share[$2] += $3 } END { for (r in share) if (share[r] == 100) print r }' <<<"$entries")"

if [ "$target" = LATEST ]; then
  target="$(head -n 1 <<<"$promoted")"
elif [ -z "$target" ]; then
  [ -n "$serving" ] || die "traffic is split between revisions: name the one to send it all to (try --help)"
  grep -Fxq -- "$serving" <<<"$promoted" ||
    die "$serving serves but was never promoted: name a promoted revision ($(paste -sd ' ' <<<"$promoted"))"
  target="$(awk -v serving="$serving" 'found { print; exit } $0 == serving { found = 1 }' <<<"$promoted")"
  [ -n "$target" ] || die "$serving is the oldest promoted revision of $FUNCTION: there is none to roll back to"
elif ! grep -Fxq -- "$target" <<<"$promoted"; then
  die "$target was never promoted (a candidate that failed its smoke test, or unknown); promoted revisions of $FUNCTION, newest first: $(paste -sd ' ' <<<"$promoted")"
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
