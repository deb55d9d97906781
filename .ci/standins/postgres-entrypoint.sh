#!/bin/sh
# The stand-in's entry point: on the first start (empty PGDATA) create the cluster
# with POSTGRES_USER/POSTGRES_PASSWORD and the POSTGRES_DB database, listening on
# every interface with password (SCRAM) logins, as the official image does.
set -o errexit -o nounset
if [ "${1:-}" = postgres ] && [ ! -s "$PGDATA/PG_VERSION" ]; then
  : "${POSTGRES_PASSWORD:?POSTGRES_PASSWORD is required}"
  user=${POSTGRES_USER:-postgres}
  pwfile=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
  initdb --pgdata="$PGDATA" --username="$user" --pwfile="$pwfile" \
    --auth-local=trust --auth-host=scram-sha-256 --encoding=UTF8 --locale=C.UTF-8 >/dev/null
  rm -f "$pwfile"
  printf "listen_addresses = '*'\n" >>"$PGDATA/postgresql.conf"
  printf 'host all all all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"
  db=${POSTGRES_DB:-$user}
  if [ "$db" != postgres ]; then
    # A server on the Unix socket only, while the database is created.
    pg_ctl --pgdata="$PGDATA" --options="-c listen_addresses=''" --wait --silent start
    psql --quiet --username="$user" --dbname=postgres --set=ON_ERROR_STOP=1 \
      --command="CREATE DATABASE \"$db\" OWNER \"$user\""
    pg_ctl --pgdata="$PGDATA" --mode=fast --wait --silent stop
  fi
  echo "docker-entrypoint.sh: initialised $PGDATA (database $db)"
fi
exec "$@"
