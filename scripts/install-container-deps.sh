#!/usr/bin/env bash
# Install what `make test-containers` needs, with apt, only when it is missing: podman; runc
# (podman's default runtime crun cannot set rlimits or use hybrid cgroups in some sandboxes);
# debootstrap (base images are built locally: no image registry is needed). Debian's
# redis-server is installed inside the Redis image, not here.
# Tests never skip for a missing tool: if this fails, `make test-containers` fails loudly.
set -euo pipefail

need=()
command -v podman >/dev/null || need+=(podman)
command -v runc >/dev/null || need+=(runc)
command -v debootstrap >/dev/null || need+=(debootstrap)
# podman's networking (netavark; aardvark-dns, so compose services find each other by name)
# comes as recommends: name it, as --no-install-recommends leaves it out.
[ -x /usr/lib/podman/netavark ] || need+=(netavark)
[ -x /usr/lib/podman/aardvark-dns ] || need+=(aardvark-dns)
# netavark sets up container networks with iptables ("netavark: No such file or directory").
command -v iptables >/dev/null || need+=(iptables)

if [ ${#need[@]} -eq 0 ]; then
    exit 0
fi

echo "installing system packages: ${need[*]}" >&2
sudo=""
if [ "$(id -u)" -ne 0 ]; then
    command -v sudo >/dev/null || { echo "need root (or sudo) to install: ${need[*]}" >&2; exit 1; }
    sudo="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$sudo apt-get update -q
$sudo apt-get install -y -q --no-install-recommends "${need[@]}"
