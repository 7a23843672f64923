#!/usr/bin/env bash
# Checks deploy/ without a cluster or a container engine, as scripts/test.sh does:
# - renders the base and every overlay with `kubectl kustomize`;
# - validates every rendered object against the Kubernetes API schemas, offline and
#   strict (kubernetes-validate: unknown fields fail, and so does a kind it has no schema
#   for);
# - checks what the manifests promise beyond the schemas (scripts/lib/kubernetes_policy.py:
#   non-root, probes on /live and /ready, requests and limits, PodDisruptionBudgets);
# - runs the kubectl-scale actuator example with a stand-in kubectl;
# - validates deploy/compose/compose.yaml against the Compose schema (`docker-compose
#   config`) and checks that the files it mounts exist.
# Prerequisites are installed by scripts/lib/prereqs.sh (ensure_deploy_check_tools).
# The container image itself is checked by scripts/image-check.sh (slow; not in CI).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/prereqs.sh
ensure_deploy_check_tools

out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
failed=0
for dir in deploy/kubernetes/base deploy/kubernetes/overlays/*; do
    name=${dir#deploy/kubernetes/}
    rendered=$out/${name//\//-}.yaml
    if ! "$KUBECTL" kustomize "$dir" >"$rendered" 2>"$out/err"; then
        echo "FAIL $dir: kubectl kustomize: $(cat "$out/err")"
        failed=1
        continue
    fi
    count=$(grep -c '^kind:' "$rendered" || true)
    if [ "$count" -eq 0 ]; then
        echo "FAIL $dir: renders no object"
        failed=1
        continue
    fi
    # kubernetes-validate exits 0 on a kind it has no schema for (a WARN line): count it.
    if ! "$KUBERNETES_VALIDATE" --strict --quiet "$rendered" >"$out/validate" 2>&1 \
        || grep -q . "$out/validate"; then
        echo "FAIL $dir: objects that do not validate:"
        sed 's/^/    /' "$out/validate"
        failed=1
        continue
    fi
    complete=()
    [ "$dir" != deploy/kubernetes/base ] && complete=(--complete)
    if ! "$KUBERNETES_TOOLS_PYTHON" scripts/lib/kubernetes_policy.py "$rendered" "${complete[@]}"; then
        echo "FAIL $dir: see the lines above"
        failed=1
        continue
    fi
    echo "ok   $dir: $count objects render and validate (strict), policy holds"
done

# The actuator of deploy/kubernetes/README.md, with a kubectl that prints its arguments.
mkdir -p "$out/bin"
printf '#!/bin/sh\necho "kubectl $*"\n' >"$out/bin/kubectl"
chmod +x "$out/bin/kubectl"
got=$(echo '{}' | PATH="$out/bin:$PATH" MERIDIAN_SCALE_DESIRED=3 deploy/kubernetes/meridian-kubectl-scale echo prod)
if [ "$got" = "kubectl scale deployment echo --namespace prod --replicas=3" ]; then
    echo "ok   deploy/kubernetes/meridian-kubectl-scale runs: $got"
else
    echo "FAIL deploy/kubernetes/meridian-kubectl-scale printed: $got"
    failed=1
fi

# The compose file: schema, then every file it mounts from the repository.
compose=deploy/compose/compose.yaml
if docker-compose -f "$compose" config -q 2>"$out/err"; then
    missing=$("$KUBERNETES_TOOLS_PYTHON" - "$compose" <<'PY'
import os, sys, yaml
path = sys.argv[1]
base = os.path.dirname(path)
doc = yaml.safe_load(open(path))
sources = [s["file"] for s in doc.get("secrets", {}).values()]
for service in doc["services"].values():
    for volume in service.get("volumes", []):
        source = volume.split(":")[0]
        if source.startswith("."):
            sources.append(source)
for source in sorted(set(sources)):
    # deploy/observability/ (Grafana dashboards, alert rules) is mounted whole; it is
    # optional here: without it Prometheus loads no rules and Grafana no dashboard.
    if source == "../observability":
        continue
    if not os.path.exists(os.path.join(base, source)):
        print(source)
PY
)
    if [ -z "$missing" ]; then
        echo "ok   $compose: valid, every mounted file exists"
    else
        echo "FAIL $compose mounts files that do not exist: $missing"
        failed=1
    fi
else
    echo "FAIL $compose: docker-compose config: $(cat "$out/err")"
    failed=1
fi
exit $failed
