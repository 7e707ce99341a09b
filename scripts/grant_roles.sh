#!/usr/bin/env bash
# Runs migrations/roles.sql on the Cloud SQL database as the instance's admin user, through the
# Cloud SQL Auth Proxy, which it starts, waits for, and stops. Safe to run again. See --help.
set -euo pipefail
cd "$(dirname "$0")/.."

usage() {
  cat <<'EOF'
Usage: scripts/grant_roles.sh [--help]

Gives the service's two IAM database users their least privileges (migrations/roles.sql): the
migrator may act as the schema's owner role, the runtime may read and write rows. Run it once per
database, after scripts/bootstrap.sh, from a machine with psql, pg_isready and cloud-sql-proxy.

It starts `cloud-sql-proxy --gcloud-auth` on 127.0.0.1:PROXY_PORT (your gcloud credentials; you
need roles/cloudsql.client), waits until the instance answers through it, runs
`psql -v ON_ERROR_STOP=1 ... -f migrations/roles.sql` as DB_ADMIN_USER, and stops the proxy.
psql asks for DB_ADMIN_USER's password unless PGPASSWORD is set; set it once with
  gcloud sql users set-password postgres --instance=INSTANCE --prompt-for-password

Settings (environment variables; default after the colon):
EOF
  sed -n 's/^#   /  /p' scripts/deploy_settings.sh
  cat <<'EOF'
  DB_ADMIN_USER  the instance's admin user: postgres
  PROXY_PORT     local port of the proxy: 5433
  OWNER_ROLE     the schema's owner role, if SERVICE_NAME is not the default: SERVICE_NAME-owner
EOF
}

source scripts/deploy_settings.sh
check_arguments "" "$@"

load_settings
DB_ADMIN_USER="${DB_ADMIN_USER:-postgres}"
PROXY_PORT="${PROXY_PORT:-5433}"

for tool in cloud-sql-proxy psql pg_isready; do
  command -v "$tool" >/dev/null || die "$tool is not installed (README, Deploy: what you need)"
done

proxy_log="$(mktemp)"
cloud-sql-proxy --gcloud-auth --address=127.0.0.1 --port="$PROXY_PORT" "$CONNECTION_NAME" >"$proxy_log" 2>&1 &
proxy_pid=$!
stop_proxy() {
  kill "$proxy_pid" 2>/dev/null || true
  wait "$proxy_pid" 2>/dev/null || true
  rm -f "$proxy_log"
}
trap stop_proxy EXIT

step "Waiting for $CONNECTION_NAME through the proxy on 127.0.0.1:$PROXY_PORT"
for attempt in $(seq 1 120); do  # every half second, for a minute
  if pg_isready -q -h 127.0.0.1 -p "$PROXY_PORT" -U "$DB_ADMIN_USER" -d "$DB_NAME"; then
    break
  fi
  if ! kill -0 "$proxy_pid" 2>/dev/null; then
    die "cloud-sql-proxy stopped: $(cat "$proxy_log")"
  fi
  [ "$attempt" -lt 120 ] || die "the instance did not answer through the proxy within 60 s: $(cat "$proxy_log")"
  sleep 0.5
done

step "migrations/roles.sql as $DB_ADMIN_USER on database $DB_NAME"
owner_variable=()
if [ -n "${OWNER_ROLE:-}" ]; then
  owner_variable=(-v "owner=$OWNER_ROLE")
fi
psql "host=127.0.0.1 port=$PROXY_PORT dbname=$DB_NAME user=$DB_ADMIN_USER" \
  -v ON_ERROR_STOP=1 -v "database=$DB_NAME" -v "migrator=$MIGRATOR_DB_USER" -v "runtime=$RUNTIME_DB_USER" \
  ${owner_variable[@]+"${owner_variable[@]}"} -f migrations/roles.sql
echo "Done: $MIGRATOR_DB_USER may migrate, $RUNTIME_DB_USER may read and write rows."
