#!/usr/bin/env bash
# Builds Meridian's container image (scripts/image-build.sh) and proves it runs: from the
# image, a control plane on a real etcd (this machine's, on free loopback ports), a demo
# node that registers itself, and a proxy that takes its routing table; meridianctl from
# the image sees them, and a gRPC call through the proxy reaches the node. Containers use
# the host's network and listen on 127.0.0.1 only. Everything it starts (containers, etcd,
# temp files) is removed at the end, pass or fail; the image stays.
#
# Usage: scripts/image-check.sh [--no-build]   (--no-build: use the image as it is)
# Needs root (podman) and what scripts/lib/prereqs.sh installs; see docs/kubernetes.md.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/prereqs.sh
source scripts/lib/container.sh
ensure_prereqs
ensure_container_tools

if [ "${1:-}" != --no-build ]; then
    scripts/image-build.sh "$MERIDIAN_IMAGE"
fi

run_id=meridian-image-check-$$
work=$(mktemp -d)
etcd_pid=
containers=()
cleanup() {
    local status=$? c
    set +e
    for c in "${containers[@]}"; do
        if [ $status -ne 0 ]; then
            echo "--- last log lines of $c"
            podman logs --tail 30 "$c" 2>&1
        fi
        podman rm --force --time 5 "$c" >/dev/null 2>&1
    done
    if [ -n "$etcd_pid" ]; then
        kill "$etcd_pid" 2>/dev/null
        wait "$etcd_pid" 2>/dev/null
    fi
    rm -rf "$work"
    if [ $status -eq 0 ]; then
        echo "image check passed: $MERIDIAN_IMAGE"
    else
        echo "image check FAILED: $MERIDIAN_IMAGE" >&2
    fi
    exit $status
}
trap cleanup EXIT

free_port() {
    python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'
}
# Polls until the command succeeds, up to 60 s (a loaded 2-core machine starts slowly).
wait_for() { # what, command...
    local what=$1
    shift
    for _ in $(seq 1 120); do
        "$@" >/dev/null 2>&1 && return 0
        sleep 0.5
    done
    echo "meridian: $what did not happen within 60 s" >&2
    return 1
}
new_token() { head -c 24 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
container() { # name, podman run arguments...
    local name=$run_id-$1
    shift
    containers+=("$name")
    podman run "${PODMAN_OPTS[@]}" --detach --name "$name" --network host "$@" >/dev/null
}
ctl() { # meridianctl from the image, as the operator
    MERIDIAN_TOKEN=$operator_token podman run "${PODMAN_OPTS[@]}" --rm --network host \
        -e MERIDIAN_TOKEN "$MERIDIAN_IMAGE" meridianctl --control-plane "http://127.0.0.1:$cp_grpc" "$@"
}

echo "== the image runs as a non-root user"
uid=$(podman run "${PODMAN_OPTS[@]}" --rm "$MERIDIAN_IMAGE" id -u)
[ "$uid" = 10001 ] || { echo "meridian: the image runs as uid $uid, not 10001" >&2; exit 1; }
for bin in meridian-control meridian-proxy meridianctl meridian-demo-node; do
    podman run "${PODMAN_OPTS[@]}" --rm "$MERIDIAN_IMAGE" "$bin" --version
done

echo "== etcd on this machine (loopback, free ports)"
etcd_client=$(free_port) etcd_peer=$(free_port)
etcd --name image-check --data-dir "$work/etcd" \
    --listen-client-urls "http://127.0.0.1:$etcd_client" --advertise-client-urls "http://127.0.0.1:$etcd_client" \
    --listen-peer-urls "http://127.0.0.1:$etcd_peer" --initial-advertise-peer-urls "http://127.0.0.1:$etcd_peer" \
    --initial-cluster "image-check=http://127.0.0.1:$etcd_peer" >"$work/etcd.log" 2>&1 &
etcd_pid=$!
wait_for "etcd on :$etcd_client answering" curl -fsS "http://127.0.0.1:$etcd_client/health"

echo "== control plane from the image (etcd store, tokens file)"
operator_token=$(new_token) node_token=$(new_token) proxy_token=$(new_token)
mkdir -p "$work/auth"
cat >"$work/auth/tokens.toml" <<TOKENS
[[tokens]]
name = "image-check"
token = "$operator_token"
role = "operator"

[[tokens]]
name = "image-check-nodes"
token = "$node_token"
role = "node"

[[tokens]]
name = "image-check-proxies"
token = "$proxy_token"
role = "proxy"
TOKENS
# Readable by the image's user (gid 10001) and nobody else.
chgrp 10001 "$work/auth/tokens.toml"
chmod 0640 "$work/auth/tokens.toml"
cp_grpc=$(free_port) cp_http=$(free_port)
container control -v "$work/auth:/etc/meridian/auth:ro" "$MERIDIAN_IMAGE" \
    meridian-control --replica-id image-check --etcd-endpoints "http://127.0.0.1:$etcd_client" \
    --tokens-file /etc/meridian/auth/tokens.toml \
    --grpc-addr "127.0.0.1:$cp_grpc" --http-addr "127.0.0.1:$cp_http"
wait_for "the control plane's /ready answering 200" curl -fsS "http://127.0.0.1:$cp_http/ready"
ctl status

echo "== topology through meridianctl from the image"
ctl federations set default --allowed-networks 127.0.0.0/8 >/dev/null
ctl regions set eu-west --federation default --lat 53.35 --lon -6.26 --zones eu-west-a >/dev/null
ctl services set demo.v1.Echo --federation default --algorithm least_connections >/dev/null

echo "== a demo node and a proxy from the image"
node_port=$(free_port)
MERIDIAN_TOKEN=$node_token container node -e MERIDIAN_TOKEN "$MERIDIAN_IMAGE" \
    meridian-demo-node --id image-check-node --listen "127.0.0.1:$node_port" \
    --register-with "http://127.0.0.1:$cp_grpc" --federation default --region eu-west --zone eu-west-a
proxy_grpc=$(free_port) proxy_admin=$(free_port)
MERIDIAN_TOKEN=$proxy_token container proxy -e MERIDIAN_TOKEN "$MERIDIAN_IMAGE" \
    meridian-proxy --id image-check-proxy --federation default --region eu-west --zone eu-west-a \
    --control-planes "http://127.0.0.1:$cp_grpc" --table-cache /var/lib/meridian/table.json \
    --grpc-addr "127.0.0.1:$proxy_grpc" --admin-addr "127.0.0.1:$proxy_admin"
wait_for "the proxy's /ready answering 200" curl -fsS "http://127.0.0.1:$proxy_admin/ready"
node_ready() { ctl nodes list -o json | grep -q '"image-check-node"' && curl -fsS "http://127.0.0.1:$proxy_admin/debug/table" | grep -q "$node_port"; }
wait_for "the node in the proxy's table" node_ready
proxy_acked() { ctl proxies -o json | grep -q '"image-check-proxy"'; }
wait_for "meridianctl proxies listing the proxy" proxy_acked
ctl proxies

echo "== a gRPC call through the proxy reaches the node"
# demo.v1.Echo/Say with an empty request: a 5-byte gRPC frame, over HTTP/2 cleartext.
printf '\0\0\0\0\0' >"$work/empty.grpc"
curl -sS --http2-prior-knowledge -o /dev/null -D "$work/headers" \
    -H 'content-type: application/grpc' -H 'te: trailers' --data-binary "@$work/empty.grpc" \
    "http://127.0.0.1:$proxy_grpc/demo.v1.Echo/Say"
grep -qi '^x-meridian-node: image-check-node' "$work/headers" || {
    echo "meridian: the call through the proxy was not served by image-check-node:" >&2
    cat "$work/headers" >&2
    exit 1
}
grep -i '^x-meridian-node\|^grpc-status' "$work/headers"
