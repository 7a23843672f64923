#!/usr/bin/env bash
# Runs Meridian on this machine: builds it (release), then starts the control plane in dev
# mode (embedded store, no etcd needed), creates a demo topology, starts four demo nodes
# that register themselves, two proxies (eu-west, us-east) and a little traffic through
# them, prints what to try, and keeps everything running until Ctrl-C, which stops all
# it started.
#
# Ports: control plane 7700/7701; proxies 7800/7801 (eu-west) and 7810/7811 (us-east);
# nodes 9101, 9102, 9201, 9202.
# Logs go to .meridian/logs/.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/prereqs.sh
ensure_prereqs

echo "== building (release; the first build takes a few minutes)"
cargo build --release --locked --bins
bin=${CARGO_TARGET_DIR:-target}/release
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
    start_with_token "" "$@"
}

# Like start, with MERIDIAN_TOKEN set to $1 in the process's environment only: a token
# never goes on a command line (where ps shows it) or into a log.
start_with_token() { # token, name, command...
    local token=$1 name=$2; shift 2
    (
        [ -n "$token" ] && export MERIDIAN_TOKEN=$token
        exec "$@"
    ) >"$logs/$name.log" 2>&1 &
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

new_token() { head -c 16 /dev/urandom | od -An -tx1 | tr -d ' \n'; }
# One credential per role: operator (meridianctl), node (self-registration), proxy
# (routing tables). The control plane reads them from its environment (dev mode).
token=$(new_token) node_token=$(new_token) proxy_token=$(new_token)
export MERIDIAN_TOKEN=$token
ctl="$bin/meridianctl"

export MERIDIAN_DEV_TOKEN=$token MERIDIAN_DEV_NODE_TOKEN=$node_token MERIDIAN_DEV_PROXY_TOKEN=$proxy_token
start control "$bin/meridian-control" --dev
unset MERIDIAN_DEV_TOKEN MERIDIAN_DEV_NODE_TOKEN MERIDIAN_DEV_PROXY_TOKEN
wait_http http://127.0.0.1:7701/ready "the control plane"

echo "== creating the demo topology: federation default, regions eu-west and us-east"
"$ctl" federations set default --description "Meridian demo" --allowed-networks 127.0.0.0/8 >/dev/null
"$ctl" regions set eu-west --federation default --lat 53.35 --lon -6.26 --zones eu-west-a,eu-west-b >/dev/null
"$ctl" regions set us-east --federation default --lat 38.9 --lon -77.04 --zones us-east-a,us-east-b >/dev/null
"$ctl" services set demo.v1.Echo --federation default --algorithm geographic >/dev/null

echo "== starting 4 demo nodes (self-registering with a 10 s lease) and 2 proxies"
node() { # id region zone port
    start_with_token "$node_token" "node-$1" "$bin/meridian-demo-node" --id "$1" --listen "127.0.0.1:$4" \
        --register-with http://127.0.0.1:7700 --federation default --region "$2" --zone "$3"
}
node eu-1 eu-west eu-west-a 9101
node eu-2 eu-west eu-west-b 9102
node us-1 us-east us-east-a 9201
node us-2 us-east us-east-b 9202
mkdir -p .meridian/cache
start_with_token "$proxy_token" proxy-eu "$bin/meridian-proxy" --id proxy-eu-west --federation default --region eu-west --zone eu-west-a \
    --grpc-addr 127.0.0.1:7800 --admin-addr 127.0.0.1:7801 --table-cache .meridian/cache/proxy-eu-west.table
start_with_token "$proxy_token" proxy-us "$bin/meridian-proxy" --id proxy-us-east --federation default --region us-east --zone us-east-a \
    --grpc-addr 127.0.0.1:7810 --admin-addr 127.0.0.1:7811 --table-cache .meridian/cache/proxy-us-east.table
wait_http http://127.0.0.1:7801/ready "proxy-eu-west"
wait_http http://127.0.0.1:7811/ready "proxy-us-east"

echo "== sending traffic: 20 calls/s of demo.v1.Echo/Say through each proxy, and RouteMessage"
start traffic-eu "$bin/meridian-loadgen" --target http://127.0.0.1:7800 --rate 20 --duration 0 --warmup 0 --progress 10
start traffic-us "$bin/meridian-loadgen" --target http://127.0.0.1:7810 --rate 20 --duration 0 --warmup 0 --progress 10
start traffic-rm "$bin/meridian-loadgen" --target http://127.0.0.1:7800 --mode route-message --rate 5 --duration 0 --warmup 0 --progress 10

cat <<TRY

Meridian is running: a control plane, 2 proxies, 4 nodes, and traffic.
  control plane   gRPC 127.0.0.1:7700   http://127.0.0.1:7701/metrics
  dashboard       http://127.0.0.1:7701/   (sign in with the operator token below)
  proxy eu-west   gRPC 127.0.0.1:7800   http://127.0.0.1:7801/debug/table  /metrics
  proxy us-east   gRPC 127.0.0.1:7810   http://127.0.0.1:7811/debug/table  /metrics
  nodes           eu-1 :9101  eu-2 :9102 (eu-west)   us-1 :9201  us-2 :9202 (us-east)
  traffic logs    $logs/traffic-*.log

Try (in another shell):
  export MERIDIAN_TOKEN=$token
  $ctl topology                 # regions, nodes (self-registered), services
  $ctl proxies                  # both proxies with the table version they acknowledged
  $ctl nodes drain eu-1         # the eu-west proxy stops sending it new calls
  $ctl events --follow          # registrations, drains, leases that lapse
  curl -s http://127.0.0.1:7801/debug/table
  $bin/meridian-loadgen --target http://127.0.0.1:7800 --duration 5 --connections 2 --streams 16
  grpcurl -plaintext -d '{"message":{"id":"m1","target_service":"demo.v1.Echo"}}' \\
      127.0.0.1:7800 meridian.v1.MessageRouter/RouteMessage

Ctrl-C stops everything.
TRY

wait -n "${pids[@]}" || true
echo "meridian: a process exited unexpectedly; see $logs/" >&2
