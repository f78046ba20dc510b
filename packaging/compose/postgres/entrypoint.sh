#!/bin/sh
# First start: a cluster with one role and one database, POSTGRES_USER and
# POSTGRES_DB (owner), password POSTGRES_PASSWORD (never printed), reachable
# from the compose network with scram-sha-256 only. Later starts reuse it.
set -eu
: "${POSTGRES_PASSWORD:?set POSTGRES_PASSWORD}"
user="${POSTGRES_USER:-tether}"
db="${POSTGRES_DB:-tether}"
data=/var/lib/tether-postgres/data
bin="$(dirname "$(ls /usr/lib/postgresql/*/bin/postgres | sort -V | tail -n 1)")"

if [ ! -s "$data/PG_VERSION" ]; then
    pwfile="$(mktemp)"
    printf '%s\n' "$POSTGRES_PASSWORD" >"$pwfile"
    "$bin/initdb" -D "$data" -U "$user" --pwfile="$pwfile" -E UTF8 \
        --auth-local=trust --auth-host=scram-sha-256 >/dev/null
    rm -f "$pwfile"
    echo "host all all all scram-sha-256" >>"$data/pg_hba.conf"
    # The database, made over the local socket before anyone can connect.
    "$bin/pg_ctl" -D "$data" -o "-c listen_addresses=''" -w start >/dev/null
    "$bin/createdb" -h /run/postgresql -U "$user" -O "$user" "$db"
    "$bin/pg_ctl" -D "$data" -m fast -w stop >/dev/null
    echo "tether-postgres: made database $db, owner $user"
fi
exec "$bin/postgres" -D "$data" -c listen_addresses='*' -c unix_socket_directories=/run/postgresql "$@"
