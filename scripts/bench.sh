#!/usr/bin/env bash
# Meridian's data-plane benchmark. In one run, with the same three demo nodes as backends,
# it loads
#   direct      the first node itself (the limit),
#   meridian    meridian-proxy (least_connections over the three nodes),
#   meridian-b  a second meridian-proxy binary, when PROXY_B is set (A/B of two builds),
#   meridian-c  a third one, when PROXY_C is set,
#   nginx       nginx grpc_pass (least_conn),
#   haproxy     HAProxy, proto h2 (leastconn),
# round after round, every target once per round and shape before the next (interleaved;
# the order changes each round, see targets_of_round; by default there are as many
# rounds as targets, which balances the order),
# in two arrangements: shared (nothing pinned; nginx 2 workers, HAProxy 2 threads, tokio
# 2 workers) and pinned (the load generator on CPU 0, everything else on CPU 1).
#
# Shapes (LEVELS):
#   CxM         unary demo.v1.Echo/Say, 100-byte payload, driven by h2load: C connections
#               x M concurrent streams each (default 1x1 and 4x64)
#   route:CxM   meridian.v1.MessageRouter/RouteMessage by meridian-loadgen (proxies only)
#   chat:CxM    demo.v1.Echo/Chat bidi streams of 1,000 messages each, one message in
#               flight per stream, by meridian-loadgen; a "call" is one message round trip
#
# Before measuring, every target must answer an h2load burst with HTTP 200, gRPC status 0
# (nghttp shows the trailer) and the echoed payload in every reply; a run whose echoed
# bodies do not match its successful calls is flagged in the table. Reported per target:
# calls/s, p50/p99 (h2load's per-request log of the measured phase), the proxy's CPU per
# call (its user+system CPU over the measured window divided by the calls served in it),
# its peak RSS during the run, and each figure's ratio to HAProxy's in the same round set.
# CPU used by processes outside this script during each run is reported; the script waits
# (boundedly) for a quieter machine before each run and retries a disturbed run once.
#
# Usage: scripts/bench.sh [SECONDS_PER_RUN (10)] [ROUNDS (the number of targets)]
# Knobs (environment): MODES ("shared pinned"), LEVELS ("1x1 4x64 route:4x16 chat:4x16"),
#   TARGETS (default: all), WARM (2 s), PROXY_A / PROXY_B / PROXY_C (meridian-proxy binaries; A
#   defaults to this checkout's `dist` build: fat LTO, as shipped; the backends, control
#   plane and loadgen are release builds), SKIP_BUILD=1, OUT (results directory),
#   QUIET_PCT (15) / QUIET_MAX (20 s) / FOREIGN_MAX (25 % of a core) / RETRIES (1),
#   PREPARE_ONLY=1 (make the request body and the cached routing table in OUT, then stop:
#   what scripts/bench-instructions.sh starts from).
# Every load run is bounded (h2load -D / loadgen --duration, under `timeout`); everything
# listens on 127.0.0.1 and everything started here is stopped on exit, by PID.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
source scripts/lib/prereqs.sh

DUR=${1:-${DUR:-10}}
ROUNDS=${2:-${ROUNDS:-}}
WARM=${WARM:-2}
MODES=${MODES:-"shared pinned"}
LEVELS=${LEVELS:-"1x1 4x64 route:4x16 chat:4x16"}
PAYLOAD=100
QUIET_PCT=${QUIET_PCT:-15}
QUIET_MAX=${QUIET_MAX:-20}
FOREIGN_MAX=${FOREIGN_MAX:-25}
RETRIES=${RETRIES:-1}
OUT=${OUT:-/tmp/meridian-bench-$(date +%Y%m%d-%H%M%S)}
TOOL=(python3 "$ROOT/scripts/lib/bench_tool.py")

ensure_commands h2load:nghttp2-client nghttp:nghttp2-client nginx:nginx-light haproxy:haproxy \
    taskset:util-linux python3:python3 curl:curl
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    ensure_prereqs
    cargo build --release --locked --bins >&2
    # The proxy as shipped: the `dist` profile (fat LTO; see Cargo.toml).
    [[ -n ${PROXY_A:-} ]] || cargo build --profile dist --locked --bin meridian-proxy >&2
fi
bin=${CARGO_TARGET_DIR:-$ROOT/target}/release
PROXY_A=${PROXY_A:-${CARGO_TARGET_DIR:-$ROOT/target}/dist/meridian-proxy}
PROXY_B=${PROXY_B:-}
PROXY_C=${PROXY_C:-}
declare -A PORT=([direct]=19101 [meridian]=18000 [meridian-b]=18010 [meridian-c]=18020 [nginx]=18100 [haproxy]=18200)
TARGETS=${TARGETS:-"direct meridian ${PROXY_B:+meridian-b }${PROXY_C:+meridian-c }nginx haproxy"}
ROUNDS=${ROUNDS:-$(wc -w <<<"$TARGETS")}
NODES=(19101 19102 19103)
mkdir -p "$OUT"
log() { echo "[$(date +%T)] $*" | tee -a "$OUT/bench.log" >&2; }

# === processes ===

PIDS=()      # everything started here, stopped on exit
declare -A TARGET_PIDS=()
stop_pid() { # TERM one PID started here, wait up to 5 s, then KILL it
    local p=$1
    kill -0 "$p" 2>/dev/null || return 0
    kill -TERM "$p" 2>/dev/null || true
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -0 "$p" 2>/dev/null && kill -KILL "$p" 2>/dev/null || true
    wait "$p" 2>/dev/null || true
}
stop_all() {
    local p
    for p in "${PIDS[@]}"; do stop_pid "$p"; done
    PIDS=()
    TARGET_PIDS=()
}
trap stop_all EXIT
trap 'exit 130' INT TERM
start() { # LOG-NAME COMMAND...; the PID is in $! of the caller via LAST_PID
    local name=$1
    shift
    "$@" >"$OUT/$name.log" 2>&1 &
    LAST_PID=$!
    PIDS+=("$LAST_PID")
}
wait_port() {
    for _ in $(seq 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
    log "nothing listens on port $1; logs in $OUT"
    return 1
}
start_nodes() { # SRV-PREFIX...
    local i
    for i in 0 1 2; do
        start "node$i" "$@" "$bin/meridian-demo-node" --id "bench-$i" --listen "127.0.0.1:${NODES[$i]}" --plain
    done
    for i in 0 1 2; do wait_port "${NODES[$i]}"; done
}
proxy_cmd() { # BINARY PORT
    echo "$1" --id "bench-proxy-$2" --federation bench --region local --zone a \
        --control-planes http://127.0.0.1:1 --grpc-addr "127.0.0.1:$2" --admin-addr "127.0.0.1:$(($2 + 1))" \
        --table-cache "$OUT/table-$2.json" --log-level warn
}

# The proxies serve from a cached routing table (made once, below, by a proxy following a
# dev-mode control plane), so only the proxy runs during the measurement, as in the
# reference harness.
prepare_table() {
    local token=bench-operator-token-0123456789
    start_nodes
    start control "$bin/meridian-control" --dev --dev-token "$token" --grpc-addr 127.0.0.1:17700 \
        --http-addr 127.0.0.1:17701 --log-level warn
    local control=$LAST_PID
    wait_port 17700
    ctl() { "$bin/meridianctl" --control-plane http://127.0.0.1:17700 --token "$token" "$@" >/dev/null; }
    ctl federations set bench --allowed-networks 127.0.0.0/8
    ctl regions set local --federation bench --lat 0 --lon 0 --zones a
    ctl services set demo.v1.Echo --federation bench --algorithm least_connections
    local i
    for i in 0 1 2; do
        ctl nodes register "bench-$i" --address "127.0.0.1:${NODES[$i]}" --federation bench \
            --region local --zone a --services demo.v1.Echo
    done
    MERIDIAN_TOKEN=$token start table-prep "$bin/meridian-proxy" --id bench-proxy --federation bench --region local --zone a \
        --control-planes http://127.0.0.1:17700 --grpc-addr 127.0.0.1:17710 --admin-addr 127.0.0.1:17711 \
        --table-cache "$OUT/table.json" --log-level warn
    local prep=$LAST_PID usable=0
    for _ in $(seq 200); do
        usable=$(curl -fs http://127.0.0.1:17711/debug/table 2>/dev/null | grep -o '"usable": *true' | wc -l || true)
        ((usable >= 3)) && break
        sleep 0.1
    done
    stop_pid "$prep"
    stop_pid "$control"
    [[ -s $OUT/table.json && $usable -ge 3 ]] || { log "no routing table with 3 usable nodes; see $OUT/*.log"; exit 1; }
    stop_all
}

start_targets() { # MODE
    local mode=$1 workers=2 t
    GEN=() SRV=()
    if [[ $mode == pinned ]]; then GEN=(taskset -c 0) SRV=(taskset -c 1) workers=1; fi
    start_nodes "${SRV[@]}"
    for t in $TARGETS; do
        case $t in
            direct) TARGET_PIDS[$t]="" ;;
            meridian | meridian-b | meridian-c)
                local binary=$PROXY_A
                [[ $t == meridian-b ]] && binary=$PROXY_B
                [[ $t == meridian-c ]] && binary=$PROXY_C
                cp "$OUT/table.json" "$OUT/table-${PORT[$t]}.json"
                # shellcheck disable=SC2046
                start "$mode-$t" "${SRV[@]}" $(proxy_cmd "$binary" "${PORT[$t]}")
                TARGET_PIDS[$t]=$LAST_PID
                ;;
            nginx)
                mkdir -p "$OUT/nginx-$mode"
                write_nginx_conf "$OUT/nginx-$mode" "$workers"
                start "$mode-nginx" "${SRV[@]}" nginx -p "$OUT/nginx-$mode" -c "$OUT/nginx-$mode/nginx.conf" \
                    -e "$OUT/nginx-$mode/error.log"
                TARGET_PIDS[$t]=$LAST_PID
                ;;
            haproxy)
                write_haproxy_conf "$OUT/haproxy-$mode.cfg" "$workers"
                start "$mode-haproxy" "${SRV[@]}" haproxy -db -f "$OUT/haproxy-$mode.cfg"
                TARGET_PIDS[$t]=$LAST_PID
                ;;
            *) log "unknown target $t"; exit 1 ;;
        esac
        wait_port "${PORT[$t]}"
    done
    sleep 0.5
}

# PIDs whose CPU and memory count for a target: nginx's master and workers.
target_pids() {
    local p=${TARGET_PIDS[$1]:-}
    [[ -n $p ]] || return 0
    echo "$p $(cat "/proc/$p/task/$p/children" 2>/dev/null || true)"
}

write_nginx_conf() { # DIR WORKERS (as the reference harness's nginx.conf.in)
    cat >"$1/nginx.conf" <<NGINX_CONF
worker_processes $2;
daemon off;
pid $1/nginx.pid;
error_log $1/error.log warn;
worker_rlimit_nofile 16384;
events { worker_connections 8192; }
http {
    access_log off;
    client_body_temp_path $1/body;
    proxy_temp_path $1/proxy;
    fastcgi_temp_path $1/fastcgi;
    uwsgi_temp_path $1/uwsgi;
    scgi_temp_path $1/scgi;
    # The default (1000 calls per connection) would make nginx close busy HTTP/2
    # connections and fail the calls in flight on them.
    keepalive_requests 10000000;
    keepalive_timeout 300s;
    http2_max_concurrent_streams 128;
    upstream nodes {
        least_conn;
        zone nodes 64k;
        server 127.0.0.1:${NODES[0]};
        server 127.0.0.1:${NODES[1]};
        server 127.0.0.1:${NODES[2]};
        keepalive 512;
        keepalive_requests 10000000;
        keepalive_timeout 300s;
    }
    server {
        listen 127.0.0.1:${PORT[nginx]} http2;
        location / { grpc_pass grpc://nodes; }
    }
}
NGINX_CONF
}

write_haproxy_conf() { # FILE THREADS (as the reference harness's haproxy.cfg.in)
    cat >"$1" <<HAPROXY_CONF
global
    nbthread $2
    maxconn 8000
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend grpc_in
    bind 127.0.0.1:${PORT[haproxy]} proto h2
    default_backend nodes
backend nodes
    balance leastconn
    http-reuse always
    server n0 127.0.0.1:${NODES[0]} proto h2
    server n1 127.0.0.1:${NODES[1]} proto h2
    server n2 127.0.0.1:${NODES[2]} proto h2
HAPROXY_CONF
}

# === checks ===

H2_HEADERS=(-H 'content-type: application/grpc' -H 'te: trailers')
verify_targets() {
    local t url reply n=2000 out
    for t in $TARGETS; do
        url="http://127.0.0.1:${PORT[$t]}/demo.v1.Echo/Say"
        timeout 10 nghttp "${H2_HEADERS[@]}" -d "$OUT/request.bin" "$url" >"$OUT/reply-$t.bin" 2>/dev/null || true
        reply=$("${TOOL[@]}" check-reply "$OUT/reply-$t.bin" "$PAYLOAD") ||
            { log "VERIFY FAILED: $t did not echo the payload"; exit 1; }
        timeout 10 nghttp -v "${H2_HEADERS[@]}" -d "$OUT/request.bin" "$url" 2>&1 | grep -aq 'grpc-status: 0' ||
            { log "VERIFY FAILED: $t did not answer grpc-status 0"; exit 1; }
        out="$OUT/verify-$t.txt"
        timeout 60 "${GEN[@]}" h2load -n "$n" -c 4 -m 16 "${H2_HEADERS[@]}" -d "$OUT/request.bin" "$url" >"$out" 2>&1 || true
        local succeeded data
        succeeded=$(grep -aoP '\d+(?= succeeded)' "$out" || echo 0)
        data=$(grep -aoP '\(\d+\) data' "$out" | tr -dc 0-9 || echo 0)
        if [[ $succeeded != "$n" || $data != $((n * reply)) ]]; then
            log "VERIFY FAILED: $t: $succeeded of $n calls succeeded, $data B of replies (expected $((n * reply)))"
            exit 1
        fi
        REPLY_BYTES=$reply
    done
    log "verify: every target answered grpc-status 0 and echoed $PAYLOAD B ($REPLY_BYTES B replies, $n calls each)"
}

# === runs ===

foreign_pct() { # CPU % of one core other tenants used over 1 s
    "${TOOL[@]}" cpu-snapshot "$OUT/.q0" $$
    sleep 1
    "${TOOL[@]}" cpu-snapshot "$OUT/.q1" $$
    "${TOOL[@]}" cpu-foreign "$OUT/.q0" "$OUT/.q1" | awk '{ printf "%.0f", $1 * 100 }'
}
wait_quiet() {
    local waited=0 pct
    while pct=$(foreign_pct) && ((pct > QUIET_PCT && waited < QUIET_MAX)); do waited=$((waited + 1)); done
    ((waited == 0)) || log "waited ${waited}s for other tenants (now ${pct}% of a core)"
}
now() { date +%s.%N; }

run_one() { # MODE ROUND SHAPE TARGET; prints the TSV row; returns 1 when disturbed
    local mode=$1 round=$2 shape=$3 t=$4
    local kind=unary level=$shape
    [[ $shape == *:* ]] && kind=${shape%%:*} level=${shape#*:}
    local c=${level%x*} m=${level#*x} port=${PORT[$t]}
    local f="$OUT/run-$mode-$round-${shape/:/-}-$t"
    local pp
    pp=$(target_pids "$t")
    local sampler=""
    if [[ -n $pp ]]; then
        # shellcheck disable=SC2086
        "${GEN[@]}" "${TOOL[@]}" sample-mem "$f.mem" $((DUR + WARM + 2)) $pp &
        sampler=$!
    fi
    "${TOOL[@]}" cpu-snapshot "$f.cpu0" $$
    local t0 load
    t0=$(now)
    case $kind in
        unary)
            "${GEN[@]}" timeout $((DUR + WARM + 30)) h2load -c "$c" -m "$m" -D "$DUR" --warm-up-time="$WARM" \
                "${H2_HEADERS[@]}" -d "$OUT/request.bin" --log-file="$f.reqlog" \
                "http://127.0.0.1:$port/demo.v1.Echo/Say" >"$f.out" 2>&1 &
            ;;
        route | chat)
            local args=(--mode route-message)
            [[ $kind == chat ]] && args=(--mode stream --messages-per-stream 1000)
            "${GEN[@]}" timeout $((DUR + WARM + 30)) "$bin/meridian-loadgen" --target "http://127.0.0.1:$port" \
                "${args[@]}" --connections "$c" --streams "$m" --duration "$DUR" --warmup "$WARM" \
                --payload "$PAYLOAD" --json >"$f.out" 2>"$f.err" &
            ;;
    esac
    load=$!
    sleep "$WARM"
    local c0 w0 c1 w1
    # shellcheck disable=SC2086
    c0=$("${TOOL[@]}" ticks $pp) w0=$(now)
    wait "$load" || log "load generator exit $? ($f)"
    # shellcheck disable=SC2086
    c1=$("${TOOL[@]}" ticks $pp) w1=$(now)
    "${TOOL[@]}" cpu-snapshot "$f.cpu1" $$
    [[ -z $sampler ]] || stop_pid "$sampler"
    local parsed reply=-1
    if [[ $kind == unary ]]; then
        parsed=$("${TOOL[@]}" h2load "$f.out" "$f.reqlog")
        reply=$REPLY_BYTES
    else
        parsed=$("${TOOL[@]}" loadgen "$f.out")
    fi
    local foreign wall rss clean=1
    foreign=$("${TOOL[@]}" cpu-foreign "$f.cpu0" "$f.cpu1")
    wall=$(awk -v a="$t0" -v b="$w1" 'BEGIN { printf "%.2f", b - a }')
    rss=$(cat "$f.mem" 2>/dev/null || echo -)
    awk -v f="$foreign" -v w="$wall" -v max="$FOREIGN_MAX" 'BEGIN { exit !(f / w * 100 > max) }' && clean=0
    rm -f "$f.reqlog" "$f.cpu0" "$f.cpu1" "$f.mem" "$f.mem.tmp"
    printf '%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\t%s\n' "$mode" "$round" "$shape" "$t" "$parsed" "$reply" \
        "$(awk -v a="$c0" -v b="$c1" -v k="$(getconf CLK_TCK)" 'BEGIN { printf "%.3f", (b - a) / k }')" \
        "$(awk -v a="$w0" -v b="$w1" 'BEGIN { printf "%.3f", b - a }')" "$rss" "$foreign" "$wall" "$clean"
    ((clean == 1))
}

applies() { # SHAPE TARGET: RouteMessage is a service of meridian-proxy only
    [[ $1 != route:* || $2 == meridian* ]]
}

# === main ===

{
    echo "date: $(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD)$(git diff --quiet HEAD -- . || echo ' (with uncommitted changes)')"
    echo "host: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), load average $(cut -d' ' -f1-3 /proc/loadavg)"
    echo "$(h2load --version | head -1); $(nginx -v 2>&1); $(haproxy -v | head -1)"
    echo "DUR=$DUR s WARM=$WARM s ROUNDS=$ROUNDS MODES=$MODES LEVELS=$LEVELS TARGETS=$TARGETS"
    echo "PROXY_A=$PROXY_A${PROXY_B:+ PROXY_B=$PROXY_B}${PROXY_C:+ PROXY_C=$PROXY_C}"
} | tee "$OUT/env.txt" >&2
"${TOOL[@]}" body "$OUT/request.bin" "$PAYLOAD"
prepare_table
[[ ${PREPARE_ONLY:-0} == 1 ]] && exit 0
# The targets in the order of round ROUND: a row of a balanced Latin square (Williams),
# so that over N rounds of N targets (N even) each target runs once in each place and
# right after each other target once. What ran just before a run can change its figures
# (BENCHMARKS.md, sessions 10 and 11: first in a round, a proxy measured worse in most
# checks); a plain rotation kept every target after the same neighbour.
targets_of_round() {
    local -a all=($TARGETS) order=()
    local n=${#all[@]} row=$((($1 - 1) % ${#all[@]})) j step
    for ((j = 0; j < n; j++)); do
        # Offsets 0, 1, n-1, 2, n-2, ... from the row's first target.
        if ((j == 0)); then step=0; elif ((j % 2)); then step=$(((j + 1) / 2)); else step=$((n - j / 2)); fi
        order+=("${all[(row + step) % n]}")
    done
    echo "${order[@]}"
}
: >"$OUT/runs.tsv"
for mode in $MODES; do
    start_targets "$mode"
    verify_targets
    for round in $(seq "$ROUNDS"); do
        for shape in $LEVELS; do
            for t in $(targets_of_round "$round"); do
                applies "$shape" "$t" || continue
                for attempt in $(seq 0 "$RETRIES"); do
                    wait_quiet
                    if row=$(run_one "$mode" "$round" "$shape" "$t"); then
                        echo "$row" >>"$OUT/runs.tsv"
                        break
                    fi
                    if ((attempt == RETRIES)); then
                        echo "$row" >>"$OUT/runs.tsv"
                        log "other tenants were busy during $mode $shape $t again; kept, flagged"
                    else
                        log "other tenants were busy during $mode $shape $t; retrying"
                    fi
                done
                log "$(tail -1 "$OUT/runs.tsv" | awk -F'\t' '{ printf "%s r%s %s %s: %.0f calls/s p50 %s p99 %s µs, proxy CPU %s s in %s s, RSS %s kB", $1, $2, $3, $4, $5, $12, $14, $16, $17, $18 }')"
            done
        done
    done
    stop_all
done
echo "load average after: $(cut -d' ' -f1-3 /proc/loadavg)" | tee -a "$OUT/env.txt" >&2
"${TOOL[@]}" summarize "$OUT/runs.tsv" | tee "$OUT/summary.md"
echo
cat "$OUT/env.txt"
log "results in $OUT"
