#!/usr/bin/env bash
# Builds Meridian's container image (deploy/image/Dockerfile) with podman, on a machine
# that reaches Debian's archive and crates.io but no image registry: the base images are
# made locally from Debian's packages (mmdebstrap, once; kept as
# localhost/meridian-{runtime,build}-base:bookworm), and the build stage borrows this
# machine's Rust toolchain (`rustc --print sysroot`, mounted read-only), as the Debian
# base has no Rust 1.95. Cargo downloads crates from crates.io (the build uses the host's
# network, and trusts what the host trusts: the host's CA bundle is mounted read-only
# over the image's, for the build only, so a TLS-inspecting proxy the host accepts works);
# the registry and target directory are cache mounts, so rebuilds compile only what
# changed.
#
# Usage: scripts/image-build.sh [TAG]     (default localhost/meridian:dev)
# Where a registry is reachable, plain `docker build -f deploy/image/Dockerfile .` does.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/prereqs.sh
source scripts/lib/container.sh
[ $# -gt 0 ] && MERIDIAN_IMAGE=$1

ensure_container_tools
ensure_base_images
sysroot=$(rustc --print sysroot)
ca_bundle=/etc/ssl/certs/ca-certificates.crt
echo "== building $MERIDIAN_IMAGE (release build in the image; the first takes a while)"
podman build "${PODMAN_OPTS[@]}" --network host \
    --volume "$sysroot:/usr/local/rust:ro" \
    --volume "$ca_bundle:/etc/ssl/certs/ca-certificates.crt:ro" \
    --build-arg "BUILD_IMAGE=$MERIDIAN_BUILD_BASE" \
    --build-arg "RUNTIME_IMAGE=$MERIDIAN_RUNTIME_BASE" \
    --file deploy/image/Dockerfile --tag "$MERIDIAN_IMAGE" .
echo "== built $MERIDIAN_IMAGE"
