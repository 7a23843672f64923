#!/usr/bin/env python3
"""Helpers of scripts/bench.sh (the data-plane benchmark), one subcommand each:

  body OUT PAYLOAD                 write a gRPC-framed demo.v1.SayRequest{payload} for h2load
  check-reply REPLY PAYLOAD        exit 1 unless REPLY (a response body) is one gRPC message,
                                   a SayReply echoing the payload; prints its size
  h2load H2LOAD_OUT REQLOG         one h2load run as TSV: calls/s, succeeded, failed, errored,
                                   timeout, 2xx, data bytes, p50, p90, p99 (µs, from the
                                   per-request log: main phase only)
  loadgen JSON                     one meridian-loadgen --json report as the same TSV
  cpu-snapshot OUT ROOTPID         CPU ticks (utime+stime) of every process, marking
                                   ROOTPID's tree as ours
  cpu-foreign BEFORE AFTER         CPU seconds used by processes not ours between snapshots
  ticks PID...                     summed utime+stime ticks of PIDs (all threads)
  sample-mem OUT SECONDS PID...    every 0.5 s for SECONDS, max summed VmRSS (kB) into OUT
  summarize RUNS_TSV               the medians table (markdown)

The method follows the reference harness (../shared/bench/): latency percentiles from
h2load's per-request log, CPU other tenants used during a run, RSS sampled during the run.
"""
import json
import os
import re
import statistics
import struct
import sys
import time
from collections import OrderedDict, defaultdict

TCK = os.sysconf("SC_CLK_TCK")


def varint(n):
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        out.append(b | (0x80 if n else 0))
        if not n:
            return bytes(out)


def payload_of(size):
    return bytes((i * 7 + 13) % 256 for i in range(size))


def body(out, size):
    size = int(size)
    msg = b"\x12" + varint(size) + payload_of(size)  # SayRequest.payload = 2 (bytes)
    with open(out, "wb") as f:
        f.write(b"\x00" + struct.pack(">I", len(msg)) + msg)


def read_varint(buf, i):
    n, shift = 0, 0
    while True:
        b = buf[i]
        i += 1
        n |= (b & 0x7F) << shift
        shift += 7
        if not b & 0x80:
            return n, i


def check_reply(path, size):
    data = open(path, "rb").read()
    if len(data) < 5 or data[0] != 0:
        sys.exit(f"reply of {len(data)} bytes is not an uncompressed gRPC message")
    (length,) = struct.unpack(">I", data[1:5])
    if len(data) != 5 + length:
        sys.exit(f"reply is {len(data)} bytes, its gRPC frame says {5 + length}")
    msg, i, fields = data[5:], 0, {}
    while i < len(msg):
        key, i = read_varint(msg, i)
        if key & 7 != 2:
            sys.exit(f"unexpected wire type in field {key >> 3}")
        n, i = read_varint(msg, i)
        fields[key >> 3] = msg[i : i + n]
        i += n
    if fields.get(2) != payload_of(int(size)):
        sys.exit("the reply does not echo the request payload")
    print(len(data))


def percentile(sorted_values, q):
    if not sorted_values:
        return float("nan")
    return float(sorted_values[min(len(sorted_values) - 1, int(q * len(sorted_values)))])


def h2load(out, reqlog):
    txt = open(out, errors="replace").read()

    def grab(pat, cast=float, default=float("nan")):
        m = re.search(pat, txt)
        return cast(m.group(1)) if m else default

    rps = grab(r"finished in [\d.]+\w+, ([\d.]+) req/s")
    req = re.search(r"requests: \d+ total, \d+ started, \d+ done, (\d+) succeeded, (\d+) failed, (\d+) errored, (\d+) timeout", txt)
    succ, failed, errored, tmo = (int(req.group(i)) for i in (1, 2, 3, 4)) if req else (0, -1, -1, -1)
    s2xx = grab(r"status codes: (\d+) 2xx", int, -1)
    data = grab(r"traffic: .*?, [\d.]+\w* \((\d+)\) data", int, -1)
    lat = []
    try:
        with open(reqlog) as f:
            for line in f:
                parts = line.split("\t")
                if len(parts) == 3:
                    lat.append(int(parts[2]))
    except FileNotFoundError:
        pass
    lat.sort()
    row = [rps, succ, failed, errored, tmo, s2xx, data] + [percentile(lat, q) for q in (0.5, 0.9, 0.99)]
    print("\t".join(f"{v:.1f}" if isinstance(v, float) else str(v) for v in row))


def loadgen(path):
    try:
        r = json.load(open(path))
    except (OSError, ValueError):
        print("\t".join(["nan", "0", "-1", "-1", "-1", "-1", "-1", "nan", "nan", "nan"]))
        return
    row = [r["throughput_per_s"], r["calls"], r["errors"], 0, 0, r["calls"], -1,
           float(r["p50_us"]), float(r["p90_us"]), float(r["p99_us"])]
    print("\t".join(f"{v:.1f}" if isinstance(v, float) else str(v) for v in row))


def read_procs():
    procs = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                s = f.read()
        except OSError:
            continue
        rest = s[s.rindex(")") + 2 :].split()
        pid, ppid = int(d), int(rest[1])
        if pid == 2 or ppid == 2:  # kernel threads
            continue
        # utime + stime only: a parent's cutime would charge the run with whole lifetimes
        # of children reaped during it (a build's compilers).
        procs[pid] = (ppid, int(rest[11]) + int(rest[12]))
    return procs


def cpu_snapshot(out, root):
    procs = read_procs()
    kids = defaultdict(list)
    for p, (pp, _) in procs.items():
        kids[pp].append(p)
    ours, stack = set(), [int(root)]
    while stack:
        p = stack.pop()
        if p not in ours:
            ours.add(p)
            stack += kids.get(p, [])
    with open(out, "w") as f:
        for p, (_, t) in procs.items():
            f.write(f"{p} {t} {int(p in ours)}\n")


def cpu_foreign(before, after):
    def load(path):
        d = {}
        for line in open(path):
            p, t, o = line.split()
            d[int(p)] = (int(t), o == "1")
        return d

    b, a = load(before), load(after)
    total = sum(max(0, t - b.get(p, (0, False))[0]) for p, (t, o) in a.items() if not o and not b.get(p, (0, False))[1])
    print(f"{total / TCK:.2f}")


def ticks(pids):
    total = 0
    for p in pids:
        try:
            s = open(f"/proc/{p}/stat").read()
            rest = s[s.rindex(")") + 2 :].split()
            total += int(rest[11]) + int(rest[12])
        except (OSError, ValueError):
            pass
    print(total)


def sample_mem(out, seconds, pids):
    end, peak = time.monotonic() + float(seconds), 0
    while time.monotonic() < end:
        rss = 0
        for p in pids:
            try:
                for line in open(f"/proc/{p}/status"):
                    if line.startswith("VmRSS:"):
                        rss += int(line.split()[1])
                        break
            except OSError:
                pass
        peak = max(peak, rss)
        with open(out + ".tmp", "w") as f:  # renamed, so a reader never sees it half written
            f.write(f"{peak}\n")
        os.replace(out + ".tmp", out)
        time.sleep(0.5)


COLUMNS = ["mode", "round", "shape", "target", "calls_s", "succeeded", "failed", "errored", "timeout",
           "ok_2xx", "data_bytes", "p50_us", "p90_us", "p99_us", "reply_bytes", "proxy_cpu_s",
           "window_s", "rss_kb", "foreign_s", "wall_s", "clean"]


def summarize(path):
    rows = [dict(zip(COLUMNS, line.rstrip("\n").split("\t"))) for line in open(path) if line.strip()]
    fl = lambda r, k: float(r[k]) if r[k] not in ("", "-") else float("nan")
    groups, order = defaultdict(list), OrderedDict()
    for r in rows:
        key = (r["mode"], r["shape"], r["target"])
        order.setdefault(key, None)
        groups[key].append(r)

    def med(rs, f):
        vals = [v for v in map(f, rs) if v == v]
        return statistics.median(vals) if vals else float("nan")

    def cpu_per_call(r):  # proxy CPU rate over the measured window, per call served
        return fl(r, "proxy_cpu_s") / fl(r, "window_s") / fl(r, "calls_s") * 1e6 if fl(r, "calls_s") > 0 else float("nan")

    def issues(r):
        bad = [f"{k}={r[k]}" for k in ("failed", "errored", "timeout") if fl(r, k) != 0]
        if fl(r, "succeeded") <= 0:
            bad.append("no successes")
        # h2load counts reply bytes over warm-up and measurement, calls over the
        # measurement only: every call must have had a whole echoed reply, and the
        # warm-up's share can only add replies. (The exact one-reply-per-call check
        # is the verification before measuring.)
        reply = fl(r, "reply_bytes")
        if reply > 0 and fl(r, "data_bytes") >= 0:
            bodies = fl(r, "data_bytes") / reply
            if bodies != int(bodies) or bodies < fl(r, "succeeded"):
                bad.append(f"{bodies:.1f} echoed replies for {r['succeeded']} calls")
        if r["clean"] != "1":
            bad.append("other tenants busy")
        return bad

    f0 = lambda x: "n/a" if x != x else f"{x:,.0f}"
    ratio = lambda a, b: "–" if not (a == a and b == b and b > 0) else f"{a / b:.2f}"
    print("| mode | shape | target | calls/s median [min–max] | vs direct | vs HAProxy | p50 µs | p99 µs "
          "| proxy CPU µs/call | CPU vs HAProxy | proxy RSS max MiB | foreign CPU % of a core | runs / issues |")
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for (mode, shape, target) in order:
        rs = groups[(mode, shape, target)]
        rps = [fl(r, "calls_s") for r in rs]
        m = med(rs, lambda r: fl(r, "calls_s"))
        ref = lambda t, f: med(groups.get((mode, shape, t), []), f)
        cpu = med(rs, cpu_per_call)
        ha_cpu = ref("haproxy", cpu_per_call)
        proxy = target != "direct"
        rss = med(rs, lambda r: fl(r, "rss_kb") / 1024)
        foreign = med(rs, lambda r: fl(r, "foreign_s") / fl(r, "wall_s") * 100)
        problems = sorted({p for r in rs for p in issues(r)})
        print(f"| {mode} | {shape} | {target} | {f0(m)} [{f0(min(rps))}–{f0(max(rps))}] "
              f"| {ratio(m, ref('direct', lambda r: fl(r, 'calls_s')))} | {ratio(m, ref('haproxy', lambda r: fl(r, 'calls_s')))} "
              f"| {f0(med(rs, lambda r: fl(r, 'p50_us')))} | {f0(med(rs, lambda r: fl(r, 'p99_us')))} "
              f"| {f'{cpu:.1f}' if proxy else '–'} | {ratio(cpu, ha_cpu) if proxy else '–'} "
              f"| {f'{rss:.1f}' if proxy else '–'} | {foreign:.0f} | {len(rs)} / {', '.join(problems) or 'ok'} |")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    {
        "body": lambda: body(*args),
        "check-reply": lambda: check_reply(*args),
        "h2load": lambda: h2load(*args),
        "loadgen": lambda: loadgen(*args),
        "cpu-snapshot": lambda: cpu_snapshot(*args),
        "cpu-foreign": lambda: cpu_foreign(*args),
        "ticks": lambda: ticks(args),
        "sample-mem": lambda: sample_mem(args[0], args[1], args[2:]),
        "summarize": lambda: summarize(*args),
    }[cmd]()
