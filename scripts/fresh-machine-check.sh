#!/usr/bin/env bash
# Proves the README's two commands set up everything they need on a machine that has only
# Rust, git, curl and Python: purges the Debian packages the project installs (the list in
# scripts/lib/prereqs.sh, so a package added there is purged here too), clones `main` into
# a temp dir, runs the test command there with CI=true, then runs scripts/run.sh until
# traffic flows through both proxies and stops it with Ctrl-C (SIGINT), expecting exit 0.
# Prints PASS or FAIL with the last lines of what failed.
#
# NOT part of CI: it changes this machine (removes packages, which the run then reinstalls).
# Needs root (apt-get purge). Usage: scripts/fresh-machine-check.sh [--skip-tests]
#   --skip-tests  only the run command (faster; for set-up changes that cannot affect tests)
set -uo pipefail
repo=$(cd "$(dirname "$0")/.." && pwd)
source "$repo/scripts/lib/prereqs.sh"

skip_tests=false
[ "${1:-}" = "--skip-tests" ] && skip_tests=true
[ "$(id -u)" -eq 0 ] || { echo "fresh-machine-check: run as root (it purges packages)" >&2; exit 2; }

work=$(mktemp -d /tmp/meridian-fresh.XXXXXX)
purge=("${PREREQ_PACKAGES[@]}" "${TEST_PREREQ_COMMANDS[@]#*:}")
echo "== purging ${purge[*]}"
DEBIAN_FRONTEND=noninteractive apt-get purge -y -qq "${purge[@]}" >/dev/null 2>&1
DEBIAN_FRONTEND=noninteractive apt-get autoremove -y -qq >/dev/null 2>&1
for tool in protoc etcd etcdctl; do
    if command -v "$tool" >/dev/null 2>&1; then
        echo "fresh-machine-check: $tool is still on PATH ($(command -v "$tool")) after the purge; remove it by hand" >&2
        exit 2
    fi
done

echo "== cloning main into $work/meridian"
git clone -q --branch main "$repo" "$work/meridian" || { echo "FAIL: clone"; exit 1; }
cd "$work/meridian"

result=0
if ! $skip_tests; then
    echo "== CI=true bash scripts/test.sh (log: $work/test.log)"
    if CI=true bash scripts/test.sh </dev/null >"$work/test.log" 2>&1; then
        echo "test command: PASS"
        grep -E "^test result:" "$work/test.log" | awk '{p+=$4; f+=$6} END {print "  tests: " p " passed, " f " failed"}'
    else
        echo "test command: FAIL"; tail -n 30 "$work/test.log"; result=1
    fi
fi

echo "== scripts/run.sh (log: $work/run.log), until traffic flows, then Ctrl-C"
set -m # run.sh in its own process group, where SIGINT is not ignored, as in a terminal
bash scripts/run.sh </dev/null >"$work/run.log" 2>&1 &
run_pid=$!
set +m
ok_calls() { # proxy admin port -> count of calls answered OK through that proxy
    curl -fsS "http://127.0.0.1:$1/metrics" 2>/dev/null |
        awk '/^meridian_proxy_requests_total\{.*code="ok"/ {s += $NF} END {print s + 0}'
}
flowing=false
for _ in $(seq 1 1800); do # up to 30 min: the release build comes first
    kill -0 "$run_pid" 2>/dev/null || break
    if grep -q "Meridian is running" "$work/run.log" &&
        [ "$(ok_calls 7801)" -ge 20 ] && [ "$(ok_calls 7811)" -ge 20 ]; then
        flowing=true
        break
    fi
    sleep 1
done
if $flowing; then
    echo "run command: traffic flows (OK calls: eu-west $(ok_calls 7801), us-east $(ok_calls 7811))"
else
    echo "run command: FAIL, no traffic through both proxies"; tail -n 30 "$work/run.log"; result=1
fi
kill -INT -- "-$run_pid" 2>/dev/null
wait "$run_pid"
status=$?
if [ "$status" -eq 0 ] && grep -q "^stopped" "$work/run.log"; then
    echo "run command: Ctrl-C stopped everything, exit 0"
else
    echo "run command: FAIL, exit $status after Ctrl-C"; tail -n 10 "$work/run.log"; result=1
fi

if [ $result -eq 0 ]; then
    echo "fresh-machine-check: PASS (work dir $work)"
else
    echo "fresh-machine-check: FAIL (logs in $work)"
fi
exit $result
