#!/usr/bin/env bash
# Log-based metrics and alert policies for the function, from monitoring/, notifying an e-mail
# channel. Safe to run again: whatever exists is updated to match the files. See --help.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  cat <<'EOF'
Usage: scripts/alerts.sh [--help]

Creates, or updates to match monitoring/, what tells you of trouble before your users do:
  - an e-mail notification channel for ALERT_EMAIL (an existing one is reused);
  - the log-based metrics of monitoring/metrics/, named FUNCTION-<file name>, read from the
    function's own log lines: requests, 5xx, 503, latency, database connection saturation;
  - the alert policies of monitoring/policies/, named "FUNCTION: ...": the 5xx and 503 shares of
    requests, the p99 latency, and database connections exhausted.
Google e-mails ALERT_EMAIL to confirm the channel the first time. scripts/bootstrap.sh runs this
when ALERT_EMAIL is set. `gcloud beta` is needed for the channel: gcloud components install beta.

Settings (environment variables; default after the colon):
EOF
  sed -n 's/^#   /  /p' scripts/deploy_settings.sh
  cat <<'EOF'
  ALERT_EMAIL           where alerts go: required
  ALERT_5XX_RATIO       alert when more than this share of 5 minutes' requests got a 5xx: 0.02
  ALERT_503_RATIO       the same for 503 (database unavailable): 0.01
  ALERT_P99_SECONDS     alert when the 5-minute p99 latency exceeds this: 1.0
  ALERT_DB_CONNECTIONS  alert when the instance holds more connections than this for 5 minutes,
                        about 80 % of max_connections (100 on db-custom-1-3840): 80
EOF
}

source scripts/deploy_settings.sh
check_arguments "" "$@"

require_gcloud
load_settings
ALERT_EMAIL="${ALERT_EMAIL:-}"
ALERT_5XX_RATIO="${ALERT_5XX_RATIO:-0.02}"
ALERT_503_RATIO="${ALERT_503_RATIO:-0.01}"
ALERT_P99_SECONDS="${ALERT_P99_SECONDS:-1.0}"
ALERT_DB_CONNECTIONS="${ALERT_DB_CONNECTIONS:-80}"
[[ "$ALERT_EMAIL" == ?*@?*.?* ]] || die "set ALERT_EMAIL to the address alerts go to (try --help)"
for setting in ALERT_5XX_RATIO ALERT_503_RATIO ALERT_P99_SECONDS ALERT_DB_CONNECTIONS; do
  [[ "${!setting}" =~ ^[0-9]+(\.[0-9]+)?$ ]] || die "$setting=${!setting}: expected a number"
done

echo "Project $PROJECT, function $FUNCTION, instance $INSTANCE; alerts to $ALERT_EMAIL"

# A file of monitoring/ with its ${NAME} placeholders filled in; any left unfilled is an error.
render() {
  local text name
  text="$(<"$1")"
  for name in FUNCTION PROJECT INSTANCE CHANNEL ALERT_5XX_RATIO ALERT_503_RATIO ALERT_P99_SECONDS \
    ALERT_DB_CONNECTIONS; do
    text="${text//"\${$name}"/${!name:-}}"
  done
  if [[ "$text" == *'${'* ]]; then
    die "$1: a placeholder is not filled in: $(grep -o '\${[A-Za-z0-9_]*}' <<<"$text" | head -n 1)"
  fi
  printf '%s\n' "$text"
}

rendered="$(mktemp -d)"
trap 'rm -rf "$rendered"' EXIT

step "E-mail notification channel for $ALERT_EMAIL"
CHANNEL="$(gcloud beta monitoring channels list --project="$PROJECT" \
  --format='value(name,type,labels.email_address)' | awk -F '\t' -v email="$ALERT_EMAIL" \
  '$2 == "email" && $3 == email { print $1; exit }')"
if [ -n "$CHANNEL" ]; then
  echo "    exists: $CHANNEL"
else
  CHANNEL="$(gcloud beta monitoring channels create --project="$PROJECT" --type=email \
    --display-name="${FUNCTION} alerts (${ALERT_EMAIL})" --channel-labels=email_address="$ALERT_EMAIL" \
    --format='value(name)')"
  echo "    created: $CHANNEL (Google e-mails $ALERT_EMAIL to confirm it)"
fi

step "Log-based metrics"
for file in monitoring/metrics/*.yaml; do
  metric="${FUNCTION}-$(basename "$file" .yaml)"
  render "$file" >"$rendered/$metric.yaml"
  if gcloud logging metrics describe "$metric" --project="$PROJECT" >/dev/null 2>&1; then
    echo "    $metric: updating"
    gcloud logging metrics update "$metric" --project="$PROJECT" --config-from-file="$rendered/$metric.yaml" >/dev/null
  else
    echo "    $metric: creating"
    gcloud logging metrics create "$metric" --project="$PROJECT" --config-from-file="$rendered/$metric.yaml" >/dev/null
  fi
done

step "Alert policies"
existing="$(gcloud monitoring policies list --project="$PROJECT" --format='value(name,displayName)')"
for file in monitoring/policies/*.yaml; do
  policy_file="$rendered/policy-$(basename "$file")"
  render "$file" >"$policy_file"
  display_name="$(sed -n 's/^displayName: "\(.*\)"$/\1/p' "$policy_file")"
  [ -n "$display_name" ] || die "$file: no displayName line"
  policy="$(awk -F '\t' -v wanted="$display_name" '$2 == wanted { print $1; exit }' <<<"$existing")"
  if [ -n "$policy" ]; then
    echo "    $display_name: updating"
    gcloud monitoring policies update "$policy" --project="$PROJECT" --policy-from-file="$policy_file" >/dev/null
  else
    echo "    $display_name: creating"
    gcloud monitoring policies create --project="$PROJECT" --policy-from-file="$policy_file" >/dev/null
  fi
done

echo "Done. The policies and their incidents: https://console.cloud.google.com/monitoring/alerting?project=${PROJECT}"
