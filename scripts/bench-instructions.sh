#!/usr/bin/env bash
# Instructions per forwarded call of meridian-proxy builds, counted by valgrind's callgrind.
#
# CPU time on this shared 2-core machine moves 10-20 % between runs, more than most single
# changes to the request path save, and scripts/bench.sh cannot tell them apart. An
# instruction count repeats within about 0.2 %: this script is for A/Bs of builds, not
# for comparing with other proxies (it counts the proxy's user-space instructions only,
# not the kernel's work, and not time).
#
# Method: the three demo nodes and the cached routing table of scripts/bench.sh (made by it
# with PREPARE_ONLY=1); each build runs under callgrind, h2load sends a warm-up of 1,000
# calls and then N unary demo.v1.Echo/Say calls (100-byte payload) at C connections x M
# streams, the proxy is stopped (SIGINT) and callgrind prints its total. Two runs per
# build and shape, with the two call counts of CALLS: the difference of the totals divided
# by the difference of the counts is the count per call, without start-up and shutdown.
#
# Usage: scripts/bench-instructions.sh [PROXY...]   (default: this checkout's dist build)
# Knobs (environment): LEVELS ("1x1 4x64"), CALLS ("4000 24000"), OUT (results directory;
#   the callgrind files stay there for callgrind_annotate), SKIP_BUILD=1.
# Bounded: every h2load run is under `timeout`; everything listens on 127.0.0.1 and is
# stopped on exit, by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
source scripts/lib/prereqs.sh

LEVELS=${LEVELS:-"1x1 4x64"}
read -r SHORT LONG <<<"${CALLS:-4000 24000}"
OUT=${OUT:-/tmp/meridian-instructions-$(date +%Y%m%d-%H%M%S)}
NODES=(19101 19102 19103)
PORT=18000
mkdir -p "$OUT"

ensure_commands valgrind:valgrind h2load:nghttp2-client
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    cargo build --release --locked --bins >&2
    [[ $# -gt 0 ]] || cargo build --profile dist --locked --bin meridian-proxy >&2
fi
bin=${CARGO_TARGET_DIR:-$ROOT/target}/release
PROXIES=("$@")
[[ ${#PROXIES[@]} -gt 0 ]] || PROXIES=("${CARGO_TARGET_DIR:-$ROOT/target}/dist/meridian-proxy")

PIDS=()
stop_all() {
    local p
    for p in "${PIDS[@]}"; do kill -TERM "$p" 2>/dev/null || true; done
    for p in "${PIDS[@]}"; do wait "$p" 2>/dev/null || true; done
    PIDS=()
}
trap stop_all EXIT
trap 'exit 130' INT TERM
wait_port() { # PORT SECONDS
    for _ in $(seq $(($2 * 10))); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.1; done
    echo "nothing listens on port $1; logs in $OUT" >&2
    return 1
}

SKIP_BUILD=1 PREPARE_ONLY=1 OUT="$OUT/prepare" scripts/bench.sh >"$OUT/prepare.log" 2>&1 ||
    { echo "making the routing table failed; see $OUT/prepare.log" >&2; exit 1; }
for i in 0 1 2; do
    "$bin/meridian-demo-node" --id "bench-$i" --listen "127.0.0.1:${NODES[$i]}" --plain >"$OUT/node$i.log" 2>&1 &
    PIDS+=($!)
done
for i in 0 1 2; do wait_port "${NODES[$i]}" 10; done

h2load_calls() { # N C M
    timeout 600 h2load -n "$1" -c "$2" -m "$3" -H 'content-type: application/grpc' -H 'te: trailers' \
        -d "$OUT/prepare/request.bin" "http://127.0.0.1:$PORT/demo.v1.Echo/Say"
}

# Instructions the proxy PROXY executed serving N calls at CxM, start-up and shutdown included.
instructions() { # PROXY C M N NAME
    local proxy=$1 c=$2 m=$3 n=$4 name=$5
    cp "$OUT/prepare/table.json" "$OUT/$name.table.json"
    valgrind --tool=callgrind --callgrind-out-file="$OUT/$name.callgrind" "$proxy" --id bench-proxy \
        --federation bench --region local --zone a --control-planes http://127.0.0.1:1 \
        --grpc-addr "127.0.0.1:$PORT" --admin-addr "127.0.0.1:$((PORT + 1))" \
        --table-cache "$OUT/$name.table.json" --log-level warn >"$OUT/$name.log" 2>&1 &
    # Not local: this runs in a command substitution, whose exit (however it comes) stops
    # the proxy.
    proxy_pid=$!
    trap 'kill "$proxy_pid" 2>/dev/null || true' EXIT
    wait_port "$PORT" 60
    h2load_calls 1000 "$c" "$m" >"$OUT/$name.warm.out" 2>&1
    h2load_calls "$n" "$c" "$m" >"$OUT/$name.h2load.out" 2>&1
    kill -INT "$proxy_pid"
    wait "$proxy_pid" 2>/dev/null || true
    grep -q "$n succeeded" "$OUT/$name.h2load.out" ||
        { echo "not every call of $name succeeded; see $OUT/$name.h2load.out" >&2; exit 1; }
    grep -o 'I *refs: *[0-9,]*' "$OUT/$name.log" | tr -dc '0-9'
}

echo "| proxy | shape | instructions per call |"
echo "|---|---|---:|"
for shape in $LEVELS; do
    c=${shape%x*} m=${shape#*x}
    for proxy in "${PROXIES[@]}"; do
        name=$(basename "$(dirname "$proxy")")-$(basename "$proxy")-$shape
        short=$(instructions "$proxy" "$c" "$m" "$SHORT" "$name-$SHORT")
        long=$(instructions "$proxy" "$c" "$m" "$LONG" "$name-$LONG")
        echo "| $proxy | $shape | $(((long - short) / (LONG - SHORT))) |"
    done
done | tee "$OUT/summary.md"
echo "results in $OUT" >&2
