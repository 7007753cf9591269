#!/bin/sh
# `postgres ARGS`: on the first start (an empty PGDATA) make the cluster as the official image
# does: POSTGRES_USER (default postgres) the superuser with POSTGRES_PASSWORD (required), and
# POSTGRES_DB (default POSTGRES_USER) its database; logins over the network need the password
# (scram-sha-256), the container's own socket trusts (pg_isready, psql in `exec`). Then run the
# server listening on every address, later arguments still winning. Anything else (psql, sh)
# runs as given.
set -eu
if [ "${1:-}" = postgres ]; then
    shift
    user="${POSTGRES_USER:-postgres}"
    db="${POSTGRES_DB:-$user}"
    if [ ! -s "$PGDATA/PG_VERSION" ]; then
        if [ -z "${POSTGRES_PASSWORD:-}" ]; then
            echo "postgres-entrypoint: set POSTGRES_PASSWORD (the cluster is made on the first" \
                 "start, with a password for logins from other containers)" >&2
            exit 2
        fi
        # The password through a pipe: never in a file, nor in a process's arguments.
        printf '%s\n' "$POSTGRES_PASSWORD" \
            | initdb -D "$PGDATA" -U "$user" --pwfile=/dev/stdin --encoding=UTF8 \
                --locale=C.UTF-8 --auth-local=trust --auth-host=scram-sha-256 >/dev/null
        printf 'host all all all scram-sha-256\n' >>"$PGDATA/pg_hba.conf"
        if [ "$db" != postgres ]; then
            # Single-user mode: no server, no socket, nothing listening yet.
            printf 'CREATE DATABASE "%s" OWNER "%s"\n' "$db" "$user" \
                | postgres --single -D "$PGDATA" postgres >/dev/null
        fi
        echo "postgres-entrypoint: made the cluster in $PGDATA (user $user, database $db)" >&2
    fi
    set -- postgres -D "$PGDATA" -c listen_addresses='*' "$@"
fi
exec "$@"
