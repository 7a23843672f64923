#!/usr/bin/env bash
# Writes the example overlay's Secrets into secrets/ (replacing the placeholders): a
# tokens file with fresh random tokens (operator "admin", viewer "viewer", node "nodes",
# proxy "proxies"), the proxies' token, and a CA with a certificate for the control
# plane's Service in NAMESPACE (default meridian). The CA's key is not kept: run again to
# rotate everything. Needs openssl. Marks the files skip-worktree in git, so what it
# writes is never committed over the placeholders.
#
# Usage: deploy/kubernetes/overlays/example/make-secrets.sh [NAMESPACE]
set -euo pipefail
cd "$(dirname "$0")/secrets"
namespace=${1:-meridian}
umask 077
token() { openssl rand -hex 24; }
operator=$(token) viewer=$(token) node=$(token) proxy=$(token)

cat >tokens.toml <<TOKENS
# Written by make-secrets.sh. meridianctl: MERIDIAN_TOKEN=<admin's token>.
[[tokens]]
name = "admin"
token = "$operator"
role = "operator"

[[tokens]]
name = "viewer"
token = "$viewer"
role = "viewer"

[[tokens]]
name = "nodes"
token = "$node"
role = "node"
federation = "default"

[[tokens]]
name = "proxies"
token = "$proxy"
role = "proxy"
federation = "default"
TOKENS
printf '%s' "$proxy" >proxy.token

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 365 \
    -subj "/CN=meridian example CA" -keyout "$work/ca.key" -out ca.crt 2>/dev/null
service=meridian-control
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
    -subj "/CN=$service.$namespace.svc" -keyout tls.key -out "$work/tls.csr" 2>/dev/null
# localhost too: meridianctl through `kubectl port-forward` (docs/kubernetes.md).
printf 'subjectAltName=DNS:%s,DNS:%s.%s,DNS:%s.%s.svc,DNS:%s.%s.svc.cluster.local,DNS:localhost\nextendedKeyUsage=serverAuth\n' \
    "$service" "$service" "$namespace" "$service" "$namespace" "$service" "$namespace" >"$work/ext"
openssl x509 -req -in "$work/tls.csr" -CA ca.crt -CAkey "$work/ca.key" -CAserial "$work/ca.srl" -CAcreateserial \
    -days 365 -extfile "$work/ext" -out tls.crt 2>/dev/null
chmod 0644 ca.crt tls.crt
chmod 0600 tls.key tokens.toml proxy.token
# The placeholders are tracked so that the overlay renders from a fresh clone; keep git
# from ever staging the real secrets over them (`git update-index --no-skip-worktree` undoes).
if git rev-parse --is-inside-work-tree >/dev/null 2>&1; then
    git update-index --skip-worktree tokens.toml proxy.token tls.crt tls.key ca.crt 2>/dev/null || true
fi
echo "wrote $(pwd)/{tokens.toml,proxy.token,tls.crt,tls.key,ca.crt} for namespace $namespace (git ignores these changes)"
echo "operator token (for meridianctl, MERIDIAN_TOKEN): $operator"
