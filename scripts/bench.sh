#!/usr/bin/env bash
# Meridian's data-plane benchmark. In one run, with the same three demo nodes, measures a
# gRPC client calling
#   direct    the first node itself (the limit),
#   meridian  through meridian-proxy (least_connections over the three nodes),
#   nginx     through nginx grpc_pass (round robin), when nginx is installed,
#   haproxy   through HAProxy, proto h2 (round robin), when haproxy is installed,
# interleaved round by round, at 1 connection x 1 stream and at 4 connections x 64 streams
# (unary demo.v1.Echo/Say, 100-byte payload), and reports throughput, p50/p99 latency, the
# proxy's CPU time per call and its RSS. Everything runs on this machine, on loopback.
#
# Usage: scripts/bench.sh [SECONDS_PER_RUN (default 10)] [ROUNDS (default 3)]
# Install the comparison proxies with: apt-get install nginx-light haproxy
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/lib/prereqs.sh
ensure_prereqs

seconds=${1:-10}
rounds=${2:-3}
cargo build --release --locked --bins >/dev/null
bin=$PWD/target/release
work=$(mktemp -d /tmp/meridian-bench.XXXXXX)
pids=()
cleanup() {
    for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
    for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
    rm -rf "$work"
}
trap cleanup EXIT INT TERM
start() { # log-name, command...
    local name=$1; shift
    "$@" >"$work/$name.log" 2>&1 &
    pids+=($!)
}
wait_port() {
    for _ in $(seq 1 200); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
    echo "bench: nothing listens on port $1; logs in $work" >&2; return 1
}

# Three nodes, a dev control plane, one proxy.
nodes=(19101 19102 19103)
for i in 0 1 2; do start "node$i" "$bin/meridian-demo-node" --id "bench-$i" --listen "127.0.0.1:${nodes[$i]}"; done
token=bench-operator-token-0123456789
start control "$bin/meridian-control" --dev --dev-token "$token" --grpc-addr 127.0.0.1:17700 --http-addr 127.0.0.1:17701 --log-level warn
for p in "${nodes[@]}" 17700; do wait_port "$p"; done
ctl() { "$bin/meridianctl" --control-plane http://127.0.0.1:17700 --token "$token" "$@" >/dev/null; }
ctl federations set bench --allowed-networks 127.0.0.0/8
ctl regions set local --federation bench --lat 0 --lon 0 --zones a
for i in 0 1 2; do
    ctl nodes register "bench-$i" --address "127.0.0.1:${nodes[$i]}" --federation bench --region local --zone a --services demo.v1.Echo
done
ctl services set demo.v1.Echo --federation bench --algorithm least_connections
start meridian "$bin/meridian-proxy" --id bench-proxy --federation bench --region local --zone a \
    --control-planes http://127.0.0.1:17700 --grpc-addr 127.0.0.1:18000 --admin-addr 127.0.0.1:18001 --log-level warn
for _ in $(seq 1 200); do curl -fs http://127.0.0.1:18001/ready >/dev/null 2>&1 && break; sleep 0.05; done
targets=("direct 127.0.0.1:${nodes[0]}" "meridian 127.0.0.1:18000")
declare -A proxy_pids=([meridian]="${pids[-1]}")

if command -v nginx >/dev/null; then
    mkdir -p "$work/nginx"
    cat >"$work/nginx/nginx.conf" <<NGINX
worker_processes 1;
daemon off;
pid $work/nginx/nginx.pid;
error_log $work/nginx/error.log warn;
events { worker_connections 4096; }
http {
    access_log off;
    # The default (1000 calls per connection) makes nginx close busy HTTP/2 connections
    # and fail the calls in flight on them.
    keepalive_requests 100000000;
    keepalive_timeout 300s;
    client_body_temp_path $work/nginx;
    upstream nodes { server 127.0.0.1:${nodes[0]}; server 127.0.0.1:${nodes[1]}; server 127.0.0.1:${nodes[2]}; keepalive 16; keepalive_requests 100000000; }
    server {
        listen 127.0.0.1:18100 http2;
        http2_max_concurrent_streams 1024;
        location / { grpc_pass grpc://nodes; }
    }
}
NGINX
    start nginx nginx -c "$work/nginx/nginx.conf" -e "$work/nginx/error.log"
    wait_port 18100
    proxy_pids[nginx]=${pids[-1]}
    targets+=("nginx 127.0.0.1:18100")
fi
if command -v haproxy >/dev/null; then
    cat >"$work/haproxy.cfg" <<HAPROXY
global
    nbthread 1
defaults
    mode http
    timeout connect 5s
    timeout client 60s
    timeout server 60s
frontend grpc
    bind 127.0.0.1:18200 proto h2
    default_backend nodes
backend nodes
    balance roundrobin
    server n0 127.0.0.1:${nodes[0]} proto h2
    server n1 127.0.0.1:${nodes[1]} proto h2
    server n2 127.0.0.1:${nodes[2]} proto h2
HAPROXY
    start haproxy haproxy -f "$work/haproxy.cfg" -db
    wait_port 18200
    proxy_pids[haproxy]=${pids[-1]}
    targets+=("haproxy 127.0.0.1:18200")
fi

# CPU seconds (user + system, children included) of a process tree's root and its children.
cpu_seconds() {
    local total=0 ticks
    ticks=$(getconf CLK_TCK)
    for pid in $1 $(pgrep -P "$1" 2>/dev/null); do
        [ -r "/proc/$pid/stat" ] || continue
        total=$(awk -v t="$total" '{ print t + $14 + $15 }' "/proc/$pid/stat")
    done
    awk -v t="$total" -v k="$ticks" 'BEGIN { printf "%.3f", t / k }'
}
rss_mib() {
    local total=0
    for pid in $1 $(pgrep -P "$1" 2>/dev/null); do
        [ -r "/proc/$pid/status" ] || continue
        total=$((total + $(awk '/VmRSS/ { print $2 }' "/proc/$pid/status")))
    done
    awk -v k="$total" 'BEGIN { printf "%.1f", k / 1024 }'
}

results="$work/results.tsv"
: >"$results"
for round in $(seq 1 "$rounds"); do
    for shape in "1 1" "4 64"; do
        read -r conns streams <<<"$shape"
        for target in "${targets[@]}"; do
            read -r name addr <<<"$target"
            pid=${proxy_pids[$name]:-}
            before=$([ -n "$pid" ] && cpu_seconds "$pid" || echo 0)
            out=$("$bin/meridian-loadgen" --target "http://$addr" --connections "$conns" --streams "$streams" \
                --duration "$seconds" --warmup 1 --payload 100 --json)
            after=$([ -n "$pid" ] && cpu_seconds "$pid" || echo 0)
            rss=$([ -n "$pid" ] && rss_mib "$pid" || echo "-")
            calls=$(sed -E 's/.*"calls":([0-9]+).*/\1/' <<<"$out")
            echo -e "$round\t${conns}x${streams}\t$name\t$(python3 -c "import json,sys; r=json.loads(sys.argv[1]); print('%.0f\t%d\t%d\t%d' % (r['throughput_per_s'], r['p50_us'], r['p99_us'], r['errors']))" "$out")\t$before\t$after\t$calls\t$rss" >>"$results"
            echo "round $round ${conns}x${streams} $name: $(python3 -c "import json,sys; r=json.loads(sys.argv[1]); print('%.0f/s p50 %d us p99 %d us errors %d' % (r['throughput_per_s'], r['p50_us'], r['p99_us'], r['errors']))" "$out")" >&2
        done
    done
done

python3 - "$results" "$seconds" "$rounds" <<'PY'
import sys, statistics, collections
path, seconds, rounds = sys.argv[1], sys.argv[2], sys.argv[3]
rows = collections.defaultdict(list)
for line in open(path):
    r = line.rstrip("\n").split("\t")
    rnd, shape, name, tput, p50, p99, errs, cpu0, cpu1, calls, rss = r
    cpu_us = (float(cpu1) - float(cpu0)) * 1e6 / max(int(calls), 1) if float(cpu1) > 0 else None
    rows[(shape, name)].append((float(tput), int(p50), int(p99), int(errs), cpu_us, rss))
direct = {shape: statistics.median(x[0] for x in rows[(shape, "direct")]) for shape in ("1x1", "4x64")}
print(f"| shape | target | throughput (calls/s) | vs direct | p50 (µs) | p99 (µs) | proxy CPU per call (µs) | proxy RSS (MiB) | errors |")
print("|---|---|---:|---:|---:|---:|---:|---:|---:|")
for shape in ("1x1", "4x64"):
    for name in ("direct", "meridian", "nginx", "haproxy"):
        runs = rows.get((shape, name))
        if not runs:
            continue
        med = lambda i: statistics.median(x[i] for x in runs)
        cpu = [x[4] for x in runs if x[4] is not None]
        cpu = f"{statistics.median(cpu):.1f}" if cpu else "-"
        rss = runs[-1][5]
        print(f"| {shape} | {name} | {med(0):.0f} | {med(0) / direct[shape]:.2f}x | {med(1):.0f} | {med(2):.0f} | {cpu} | {rss} | {sum(x[3] for x in runs)} |")
print(f"\nMedians of {rounds} interleaved rounds of {seconds} s each (after 1 s warm-up).")
PY
