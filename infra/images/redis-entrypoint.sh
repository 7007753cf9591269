#!/bin/sh
# `redis-server ARGS`: run it with protected mode off, as the official image does (later
# arguments still win). Anything else (redis-cli, sh) runs as given.
set -e
if [ "${1:-}" = redis-server ]; then
    shift
    set -- redis-server --protected-mode no "$@"
fi
exec "$@"
