#!/bin/sh
# First start: initialise the cluster, set the password, create the user and database.
set -eu
USER_NAME=${POSTGRES_USER:-postgres}
DB_NAME=${POSTGRES_DB:-$USER_NAME}
if [ ! -s "$PGDATA/PG_VERSION" ]; then
  : "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
  PWFILE=$(mktemp)
  printf '%s\n' "$POSTGRES_PASSWORD" > "$PWFILE"
  initdb -D "$PGDATA" -U "$USER_NAME" --pwfile="$PWFILE" --auth-local=trust \
    --auth-host=scram-sha-256 >/dev/null
  rm -f "$PWFILE"
  echo "host all all 0.0.0.0/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
  echo "host all all ::/0 scram-sha-256" >> "$PGDATA/pg_hba.conf"
  pg_ctl -D "$PGDATA" -o "-c listen_addresses=''" -w start >/dev/null
  if [ "$DB_NAME" != "postgres" ]; then
    createdb -U "$USER_NAME" "$DB_NAME"
  fi
  pg_ctl -D "$PGDATA" -m fast -w stop >/dev/null
fi
exec postgres -D "$PGDATA" -c listen_addresses='*'
