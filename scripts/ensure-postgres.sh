#!/usr/bin/env bash
# Make the local PostgreSQL ready for logical decoding. Idempotent: it changes and
# restarts the server only when a setting is short of what searchsync needs.
#
#   PGSETUP_URL   superuser connection (default postgresql://postgres@127.0.0.1:5432/postgres)
set -euo pipefail

url=${PGSETUP_URL:-postgresql://postgres@127.0.0.1:5432/postgres}
psql_() { psql -X -q -v ON_ERROR_STOP=1 -At "$url" "$@"; }

cluster() {
  # The Debian cluster that serves $url (pg_ctlcluster wants "version name").
  pg_lsclusters -h 2>/dev/null | awk '$3 == "5432" {print $1, $2; exit}'
}

if ! psql_ -c 'SELECT 1' >/dev/null 2>&1; then
  read -r version name <<<"$(cluster)"
  if [ -n "${version:-}" ]; then
    echo "ensure-postgres: starting PostgreSQL $version/$name"
    pg_ctlcluster --skip-systemctl-redirect "$version" "$name" start
  fi
  psql_ -c 'SELECT 1' >/dev/null || { echo "ensure-postgres: cannot connect to $url" >&2; exit 1; }
fi

setting() { psql_ -c "SELECT setting FROM pg_settings WHERE name = '$1'"; }

changed=0
if [ "$(setting wal_level)" != "logical" ]; then
  psql_ -c "ALTER SYSTEM SET wal_level = 'logical'"
  changed=1
fi
# Every subscription holds a slot and, while its worker streams, a walsender; the
# test suite and bench/idle.py run a hundred or more at once, each beside a normal
# connection (docs/capacity.md has the arithmetic for a deployment).
for pair in max_replication_slots:200 max_wal_senders:160 max_connections:400; do
  name=${pair%%:*} want=${pair##*:}
  if [ "$(setting "$name")" -lt "$want" ]; then
    psql_ -c "ALTER SYSTEM SET $name = $want"
    changed=1
  fi
done

if [ "$changed" = 1 ]; then
  read -r version name <<<"$(cluster)"
  if [ -z "${version:-}" ]; then
    echo "ensure-postgres: settings changed; restart PostgreSQL yourself to apply them" >&2
    exit 1
  fi
  echo "ensure-postgres: restarting PostgreSQL $version/$name to enable logical decoding"
  pg_ctlcluster --skip-systemctl-redirect "$version" "$name" restart
  for _ in $(seq 1 50); do psql_ -c 'SELECT 1' >/dev/null 2>&1 && break; sleep 0.2; done
fi

[ "$(setting wal_level)" = "logical" ] || { echo "ensure-postgres: wal_level is still not logical" >&2; exit 1; }
echo "ensure-postgres: PostgreSQL ready (wal_level=logical, max_replication_slots=$(setting max_replication_slots))"
