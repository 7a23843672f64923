#!/usr/bin/env bash
# Meridian's whole test suite, exactly as CI runs it (.ci/run calls this script):
# installs missing prerequisites (protoc, etcd; headless chromium for the dashboard test;
# the deploy/ check's tools), checks deploy/ (scripts/deploy-check.sh: Kubernetes manifests
# and the compose file), then checks formatting, lints with clippy (warnings are errors)
# and runs every test, including those that start real etcd and real Meridian processes
# on loopback.
#
# Usage: scripts/test.sh [extra cargo test arguments, e.g. a test name filter]
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/prereqs.sh
# A one-off build keeps no incremental caches: they would double the disk it needs.
if [ "${CI:-}" = "true" ]; then
    export CARGO_INCREMENTAL=0
fi
ensure_prereqs
ensure_test_prereqs
echo "== prerequisites usable (protoc resolves the well-known types, etcd --version runs)"
check_prereqs_usable

echo "== one version each of tonic, prost, hyper, h2, tower, rustls"
for crate in tonic prost hyper h2 tower rustls; do
    versions=$(grep -c "^name = \"$crate\"$" Cargo.lock || true)
    if [ "$versions" -gt 1 ]; then
        echo "Cargo.lock holds $versions versions of $crate; see \`cargo tree -d -i $crate\`" >&2
        exit 1
    fi
done
echo "== deploy/: Kubernetes manifests render and validate against the API schemas; the compose file validates"
scripts/deploy-check.sh
echo "== cargo fmt --check"
cargo fmt --all -- --check
echo "== cargo clippy --all-targets -- -D warnings"
cargo clippy --workspace --all-targets --locked -- -D warnings
echo "== cargo build --bins --tests (the multi-process tests run the real binaries)"
# Binaries and tests in one build share one feature set (dev-dependencies add tokio's
# test-util), so `cargo test` below reuses every artifact instead of building a second tree.
cargo build --workspace --bins --tests --locked
echo "== cargo test"
cargo test --workspace --locked -- "$@"
