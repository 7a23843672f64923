#!/usr/bin/env bash
# Runs Meridian on this machine: builds it (release), then starts the control plane in dev
# mode (embedded store, no etcd needed) and a proxy, prints what to try, and keeps them
# running until Ctrl-C, which stops everything it started.
#
# Ports: control plane gRPC 7700 / HTTP 7701; proxy gRPC 7800 / admin 7801.
# Logs go to .meridian/logs/.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/prereqs.sh
ensure_prereqs

echo "== building (release; the first build takes a few minutes)"
cargo build --release --locked --bins
bin=target/release
logs=.meridian/logs
mkdir -p "$logs"

pids=()
stop_all() {
    trap - INT TERM EXIT
    echo
    echo "== stopping"
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    echo "stopped"
    exit 0
}
trap stop_all INT TERM EXIT

start() { # name, command...
    local name=$1; shift
    "$@" >"$logs/$name.log" 2>&1 &
    pids+=($!)
    echo "started $name (pid $!, log $logs/$name.log)"
}

wait_http() { # url, what
    for _ in $(seq 1 100); do
        curl -fsS "$1" >/dev/null 2>&1 && return 0
        sleep 0.1
    done
    echo "meridian: $2 did not come up; see $logs/" >&2
    return 1
}

token=$(head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n')
export MERIDIAN_TOKEN=$token
ctl="$bin/meridianctl"

start control "$bin/meridian-control" --dev --dev-token "$token"
wait_http http://127.0.0.1:7701/ready "the control plane"

echo "== creating the demo topology: federation default, regions eu-west and us-east"
"$ctl" federations set default --description "Meridian demo" >/dev/null
"$ctl" regions set eu-west --federation default --lat 53.35 --lon -6.26 --zones eu-west-a,eu-west-b >/dev/null
"$ctl" regions set us-east --federation default --lat 38.9 --lon -77.04 --zones us-east-a,us-east-b >/dev/null
"$ctl" services set demo.v1.Echo --federation default --algorithm least_connections >/dev/null

start proxy-eu "$bin/meridian-proxy" --id proxy-eu-west --region eu-west --zone eu-west-a
wait_http http://127.0.0.1:7801/live "proxy-eu-west"

cat <<TRY

Meridian is running.
  control plane  gRPC 127.0.0.1:7700   HTTP http://127.0.0.1:7701/metrics
  proxy eu-west  gRPC 127.0.0.1:7800   admin http://127.0.0.1:7801/metrics

Try (in another shell):
  export MERIDIAN_TOKEN=$token
  $ctl topology
  $ctl nodes register eu-1 --address 127.0.0.1:9001 --federation default \\
      --region eu-west --zone eu-west-a --services demo.v1.Echo
  $ctl events --follow
  $ctl proxies
  grpcurl -plaintext 127.0.0.1:7700 list

Ctrl-C stops everything.
TRY

"$ctl" topology
wait -n "${pids[@]}" || true
echo "meridian: a process exited; see $logs/" >&2
