#!/usr/bin/env bash
# Meridian's routing-quality benchmark (issue #14): every balancing algorithm, plus
# oracles told the true capacities, through a real meridian-proxy to real demo nodes, with
# a closed-loop load, in five scenarios: one slow replica, one replica degrading at
# t = 10 s, heterogeneous capacity 1:2:4, consistent-hash key movement over 10 nodes, and
# three regions in network namespaces with netem delays between them (geo: needs root,
# `ip` and `tc`; without them it prints "not run", without netem it runs undelayed and
# says so). The namespaces and bridge it makes are named mrdb-<pid>-<region>/mrdb<pid>
# and deleted when it ends, or by the next run if it was killed.
# It starts its own etcd and control plane; every process it starts is stopped when it
# ends (by the benchmark program, which owns them). Prints the machine, the date, the
# command, then markdown tables with each goal marked met or not.
#
# Usage: scripts/routing-bench.sh [meridian-routing-bench flags, e.g. --seconds 10
#        --time-scale 5 --scenarios slow,degrading --algorithms round_robin,adaptive]
# Knobs (environment): PROFILE (release; "dev" reuses a debug build), SKIP_BUILD=1.
# About 8 minutes with the defaults (10 s per cell), 10 more for geo as root; bounded by
# --deadline (30 min).
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
source scripts/lib/prereqs.sh

PROFILE=${PROFILE:-release}
if [[ ${SKIP_BUILD:-0} != 1 ]]; then
    ensure_prereqs
    cargo build --profile "$PROFILE" --locked --bins >&2
fi
# The geo scenario's namespaces and delays (as root; otherwise it reports "not run").
if [[ $(id -u) == 0 ]]; then
    ensure_commands ip:iproute2 tc:iproute2 ||
        echo "routing-bench: ip/tc missing; the geo scenario will say why it did not run" >&2
fi
dir=$PROFILE
[[ $PROFILE == dev ]] && dir=debug
bin=${CARGO_TARGET_DIR:-$ROOT/target}/$dir

echo "## Routing quality run of $(date -u '+%Y-%m-%d %H:%M UTC')"
echo
echo "- machine: $(nproc) CPUs, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(free -g | awk '/Mem:/ {print $2}') GiB; load average at start: $(cut -d' ' -f1-3 /proc/loadavg)"
echo "- code: $(git rev-parse --short HEAD 2>/dev/null || echo unknown), profile $PROFILE"
echo "- command: scripts/routing-bench.sh $*"
echo
"$bin/meridian-routing-bench" "$@"
echo "- load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)"
