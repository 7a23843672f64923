"""What Meridian's Kubernetes manifests promise beyond the API schemas, checked on the
rendered output of `kubectl kustomize` (scripts/deploy-check.sh):

- every workload's pods run as non-root, without privilege escalation or capabilities,
  with CPU and memory requests and a memory limit;
- Meridian's containers have liveness and readiness probes on /live and /ready;
- every control-plane and proxy Deployment has a PodDisruptionBudget selecting its pods;
- every proxy Deployment names its region;
- every ConfigMap and Secret a pod mounts is rendered too (with --complete; the base
  leaves Secrets to overlays).

Usage: python kubernetes_policy.py RENDERED.yaml [--complete]
Prints one line per problem and exits 1 if there is any.
"""

import sys

import yaml

WORKLOADS = {"Deployment", "StatefulSet"}


def problems(objects, complete):
    names = {(o["kind"], o["metadata"]["name"]) for o in objects}
    pdbs = [o for o in objects if o["kind"] == "PodDisruptionBudget"]
    for o in objects:
        if o["kind"] not in WORKLOADS:
            continue
        where = f'{o["kind"]}/{o["metadata"]["name"]}'
        pod = o["spec"]["template"]["spec"]
        labels = o["spec"]["template"]["metadata"].get("labels", {})
        if not pod.get("securityContext", {}).get("runAsNonRoot"):
            yield f"{where}: pod securityContext.runAsNonRoot is not true"
        for c in pod["containers"]:
            at = f"{where} container {c['name']}"
            sc = c.get("securityContext", {})
            if sc.get("allowPrivilegeEscalation") is not False:
                yield f"{at}: allowPrivilegeEscalation is not false"
            if "ALL" not in sc.get("capabilities", {}).get("drop", []):
                yield f"{at}: capabilities do not drop ALL"
            res = c.get("resources", {})
            for kind in ("cpu", "memory"):
                if kind not in res.get("requests", {}):
                    yield f"{at}: no {kind} request"
            if "memory" not in res.get("limits", {}):
                yield f"{at}: no memory limit"
            if labels.get("app.kubernetes.io/name") == "meridian":
                for probe, path in (("livenessProbe", "/live"), ("readinessProbe", "/ready")):
                    got = c.get(probe, {}).get("httpGet", {}).get("path")
                    if got != path:
                        yield f"{at}: {probe} is {got!r}, not an HTTP GET of {path}"
        component = labels.get("app.kubernetes.io/component")
        if labels.get("app.kubernetes.io/name") == "meridian" and o["kind"] == "Deployment":
            selecting = [
                p
                for p in pdbs
                if p["spec"]["selector"]["matchLabels"].items() <= labels.items()
            ]
            if not selecting:
                yield f"{where}: no PodDisruptionBudget selects its pods"
            if component == "proxy":
                env = {e["name"]: e.get("value") for e in pod["containers"][0].get("env", [])}
                region = env.get("MERIDIAN_REGION")
                if not region or region == "set-by-the-overlay":
                    yield f"{where}: MERIDIAN_REGION is {region!r}; an overlay must name the region"
        for v in pod.get("volumes", []):
            if "configMap" in v and ("ConfigMap", v["configMap"]["name"]) not in names:
                yield f"{where}: volume {v['name']} names ConfigMap {v['configMap']['name']}, which is not rendered"
            if complete and "secret" in v and ("Secret", v["secret"]["secretName"]) not in names:
                yield f"{where}: volume {v['name']} names Secret {v['secret']['secretName']}, which is not rendered"


def main():
    path = sys.argv[1]
    complete = "--complete" in sys.argv[2:]
    with open(path) as f:
        objects = [o for o in yaml.safe_load_all(f) if o]
    found = list(problems(objects, complete))
    for p in found:
        print(f"{path}: {p}")
    sys.exit(1 if found else 0)


if __name__ == "__main__":
    main()
