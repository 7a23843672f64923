#!/usr/bin/env bash
# The README's test command on a fresh machine, without touching this one: a Debian
# bookworm container (made once with mmdebstrap, kept as localhost/meridian-fresh:bookworm)
# holding only what a new contributor's machine has (a C toolchain, git, curl, Python,
# procps, iproute2, and this machine's Rust toolchain mounted read-only) clones a branch
# of this repository and runs `CI=true bash .ci/run` in it, as root, on the host's network
# (loopback included), trusting what the host trusts (its CA bundle, mounted read-only,
# for a TLS-inspecting proxy on the way to crates.io and PyPI; pip's PIP_* settings are
# passed on). Everything else the tests need (protoc, etcd, chromium, the deploy check's
# tools) must come from the test command's own set-up, as on CI.
# Prints PASS or FAIL with the end of the log; the log stays in the work dir it names.
#
# Complements scripts/fresh-machine-check.sh, which purges this machine's packages (so
# cannot run beside other work) and also runs scripts/run.sh. A cold build and the whole
# suite: about 40 minutes on 2 cores, bounded at 100.
#
# Usage: scripts/fresh-container-check.sh [BRANCH]   (default main)
set -uo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
source scripts/lib/prereqs.sh
source scripts/lib/container.sh
branch=${1:-main}

ensure_container_tools || exit 2
image=localhost/meridian-fresh:bookworm
ensure_debian_image "$image" ca-certificates,gcc,libc6-dev,git,curl,python3,procps,iproute2 \
    PATH=/usr/local/rust/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin ||
    exit 2
work=$(mktemp -d /tmp/meridian-fresh-container.XXXXXX)
echo "== CI=true bash .ci/run on a fresh clone of $branch in $image (log: $work/ci.log)"
timeout 100m podman run "${PODMAN_OPTS[@]}" --rm --network host \
    --volume "$(rustc --print sysroot):/usr/local/rust:ro" \
    --volume "$repo:/src:ro" \
    --volume "$work:/work" \
    --volume /etc/ssl/certs/ca-certificates.crt:/etc/ssl/certs/ca-certificates.crt:ro \
    --env CI=true \
    --env 'PIP_*' \
    "$image" bash -c "
        set -e
        git config --global --add safe.directory '*'
        git clone -q --branch '$branch' /src /work/meridian
        cd /work/meridian
        git log --oneline -1
        bash .ci/run </dev/null
    " >"$work/ci.log" 2>&1
status=$?
grep -E "^test result:" "$work/ci.log" | awk '{p+=$4; f+=$6} END {print "tests: " p " passed, " f " failed"}'
if [ $status -eq 0 ]; then
    echo "fresh-container-check: PASS (exit 0; log $work/ci.log)"
else
    tail -n 40 "$work/ci.log"
    echo "fresh-container-check: FAIL (exit $status; log $work/ci.log)"
fi
# The build tree is large; the log is what is kept.
rm -rf "$work/meridian" 2>/dev/null || podman unshare rm -rf "$work/meridian" 2>/dev/null
exit $status
