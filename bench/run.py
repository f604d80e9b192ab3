#!/usr/bin/env python3
"""`make bench`: the infermesh sidecar side by side with HAProxy and nginx, on loopback, in one run.

Every scenario proxies to the same two backends (`stable` 90 %, `canary` 10 %, retries on), and is
measured the same way:
  * throughput: wrk, 1 thread, 64 connections, median of --reps runs after a warm-up;
    all proxies run throughout, and repetitions go in rounds over them (noise hits all alike);
  * latency at a fixed moderate rate: oha (-q), p50/p99/p99.9, and the latency added over `direct`;
    and the p50 of requests sent one at a time (oha -c 1), which keeps the CPUs from idling;
  * CPU seconds per 100k requests and RSS of the proxy process (from /proc): idle, peak under the
    HTTP/1.1 runs (64 connections), and peak overall (after h2load's 640 concurrent streams);
  * HTTP/2 throughput with h2load (h2c prior knowledge, 64 connections x 10 streams);
  * SSE: time to first byte and per-chunk delay of event streams (infermesh-bench sse), in rounds
    too; and the time to first byte again with one-event streams back to back (CPUs kept busy).
A reference row, `tcp-relay` (HAProxy in `mode tcp` to the stable backend: no HTTP parsing, no
split, no headers), measures what one more process hop alone costs on this machine: the floor
under any proxy's added latency. It is not a peer.
The sidecar is the image's binary (static musl, mimalloc); HAProxy and nginx are Debian's builds.
Fairness: the load generator is pinned to CPU 0; the proxy (one worker each) and the backends share
CPU 1; access logs are off everywhere; every proxy keeps connections to the backends alive; and every
proxy does the sidecar's header work: keep Host, append X-Forwarded-For and Forwarded, set
X-Forwarded-Proto, X-Forwarded-Host and an X-Request-ID when absent (so the backends parse the same
requests, too). infermesh and HAProxy hold at most MAX_PER_ENDPOINT requests in flight per backend
and queue the rest (`concurrency` / `maxconn`); nginx has no such queue outside its commercial
edition (its `max_conns` alone fails the excess with 502), so it runs without a limit.
`--inference-cost` runs only a comparison of the sidecar's LeastRequest and InferenceAware policies
on 4 KiB JSON chat-completion POSTs (see `inference_cost` below), to build/bench/inference-cost-<time>.json;
`--token-meter` runs only what the token meter costs: the same OpenAI-shaped SSE chunks metered and
not (see `token_meter_cost`), to build/bench/token-meter-<time>.json;
`--sidecar PATH` runs another sidecar binary than the image's.
Results: a table on stdout (medians) and build/bench/results-<time>.json. The goals against the peers
are judged round by round (the median of each round's ratio or difference), which cancels the
machine's drift between rounds.
"""

import argparse
import json
import os
import urllib.request
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
RELEASE = ROOT / "target" / "release"  # the backend and SSE probe (host target)
# The sidecar as its image ships it: a static musl binary (hack/images.sh, hack/bench.sh).
SIDECAR = ROOT / "target" / "x86_64-unknown-linux-musl" / "release" / "infermesh-sidecar"
OUT_DIR = ROOT / "build" / "bench"
HOST = "bench"  # the ModelService name: the Host header every client sends

BASE_PORT = int(os.environ.get("BENCH_BASE_PORT", "28080"))
PORTS = {
    "stable": BASE_PORT + 1,
    "canary": BASE_PORT + 2,
    "direct": BASE_PORT + 1,
    "infermesh": BASE_PORT + 10,
    "haproxy": BASE_PORT + 11,
    "nginx": BASE_PORT + 12,
    "tcp-relay": BASE_PORT + 15,
}
H2_PORTS = {"direct": PORTS["stable"], "infermesh": PORTS["infermesh"], "haproxy": BASE_PORT + 21, "nginx": BASE_PORT + 22,
            "tcp-relay": PORTS["tcp-relay"]}
SIDECAR_SPARE_PORTS = (BASE_PORT + 13, BASE_PORT + 14)  # outbound, admin
LOADGEN_CPU = "0"
SERVER_CPU = "1"
# Requests in flight per backend for the proxies that can queue the rest (infermesh, HAProxy): a
# one-core backend gains nothing from more, and each upstream connection costs the proxy memory.
MAX_PER_ENDPOINT = 64


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=int, default=8, help="seconds per throughput run")
    parser.add_argument("--reps", type=int, default=5, help="repetitions per measure (median kept)")
    parser.add_argument("--rate", type=int, default=5000, help="requests/s for the latency run")
    parser.add_argument("--sse-streams", type=int, default=40, help="SSE streams per proxy, spread over the rounds")
    parser.add_argument("--only", help="comma-separated scenarios (direct,infermesh,haproxy,nginx,tcp-relay)")
    parser.add_argument("--sidecar", type=Path, default=SIDECAR, help=f"the sidecar binary (default: {SIDECAR.relative_to(ROOT)})")
    parser.add_argument("--token-meter", action="store_true",
                        help="only compare one sidecar's OpenAI-shaped SSE streams metered and not (see token_meter_cost)")
    parser.add_argument("--inference-cost", action="store_true",
                        help="only compare LeastRequest and InferenceAware on 4 KiB JSON chat-completion POSTs (see inference_cost)")
    args = parser.parse_args()
    set_sidecar(args.sidecar)
    if args.inference_cost:
        return inference_cost(args)
    if args.token_meter:
        return token_meter_cost(args)

    for tool in ("wrk", "oha", "h2load", "haproxy", "nginx", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} not found: run hack/install-bench-deps.sh (make bench does)")
    busy = [p for p in {*PORTS.values(), *H2_PORTS.values(), *SIDECAR_SPARE_PORTS} if port_open(p)]
    if busy:
        sys.exit(f"bench: ports {sorted(busy)} on 127.0.0.1 are in use: stop what holds them or set BENCH_BASE_PORT")
    work = Path(tempfile.mkdtemp(prefix="infermesh-bench-"))
    procs = []
    try:
        procs.append(start_backend("stable", "v1"))
        procs.append(start_backend("canary", "v2"))
        scenarios = {
            "direct": None,
            "infermesh": start_infermesh,
            "haproxy": start_haproxy,
            "nginx": start_nginx,
            "tcp-relay": start_tcp_relay,
        }
        chosen = args.only.split(",") if args.only else list(scenarios)
        for binary in (RELEASE / "infermesh-bench", *([SIDECAR] if "infermesh" in chosen else [])):
            if not binary.exists():
                sys.exit(f"bench: {binary} missing: hack/bench.sh builds it")
        # Every proxy runs for the whole benchmark, and each measure takes its repetitions in
        # rounds over all of them: a slow spell of the machine then hits every proxy alike
        # instead of whichever one was being measured.
        pids = {}
        for name in chosen:
            starter = scenarios[name]
            proxy = starter(work) if starter else None
            if proxy:
                procs.append(proxy)
            wait_port(PORTS[name])
            if proxy and proxy.poll() is not None:
                sys.exit(f"bench: {name} exited at start (code {proxy.returncode})")
            pids[name] = server_pid(proxy) if proxy else None
        results = measure(pids, args)
        report(results, args)
    finally:
        for p in procs:
            stop(p)
        shutil.rmtree(work, ignore_errors=True)
    return 0


def set_sidecar(path: Path):
    global SIDECAR
    SIDECAR = path.resolve()


# ---------------------------------------------------------------- processes


def pinned(cpu, argv, **kw):
    return subprocess.Popen(["taskset", "-c", cpu, *argv], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, **kw)


def start_backend(variant, version):
    p = pinned(SERVER_CPU, [str(RELEASE / "infermesh-bench"), "backend", "--addr", f"127.0.0.1:{PORTS[variant]}", "--version", version])
    wait_port(PORTS[variant])
    return p


def start_infermesh(work: Path, name="infermesh", policy=None, retries=True, inbound=None, spare=SIDECAR_SPARE_PORTS):
    """The sidecar in front of the two backends. The main scenario takes the defaults; the
    --inference-cost instances differ in `policy` (loadBalancing.policy), `retries` (off: one
    attempt, so a LeastRequest body streams instead of being buffered for replay) and ports."""
    config = {
        "revision": "bench",
        "services": [
            {
                "name": HOST,
                "namespace": "default",
                "port": PORTS["stable"],
                "variants": [
                    {"name": "stable", "weight": 90, "endpoints": [{"address": f"127.0.0.1:{PORTS['stable']}"}]},
                    {"name": "canary", "weight": 10, "endpoints": [{"address": f"127.0.0.1:{PORTS['canary']}"}]},
                ],
                "retries": {
                    "attempts": 3,
                    "retryOn": ["connect-failure", "5xx"],
                    "backoffBaseMs": 25,
                    "backoffMaxMs": 1000,
                    "backoffJitter": 0.5,
                    "budgetRatio": 0.2,
                    "budgetMinPerSecond": 10,
                },
                "concurrency": {
                    "maxInFlightPerEndpoint": MAX_PER_ENDPOINT,
                    "maxQueue": 4096,
                    "queueTimeoutMs": 5000,
                },
            }
        ],
    }
    service = config["services"][0]
    if policy:
        service["loadBalancing"] = {"policy": policy}
    if not retries:
        del service["retries"]
    path = work / f"mesh-{name}.json"
    path.write_text(json.dumps(config))
    env = dict(os.environ, RUST_LOG="warn")
    return pinned(
        SERVER_CPU,
        [
            str(SIDECAR),
            "--config-file", str(path),
            "--inbound", f"127.0.0.1:{inbound or PORTS['infermesh']}",
            "--outbound", f"127.0.0.1:{spare[0]}",
            "--admin", f"127.0.0.1:{spare[1]}",
            "--workers", "1",
        ],
        env=env,
    )


def start_haproxy(work: Path):
    return run_haproxy(work, "haproxy", "http", f"""
    timeout queue 5s
    retries 2
    option redispatch 1
    retry-on conn-failure empty-response 503
    http-reuse always
    option http-no-delay
    option forwardfor
frontend bench
    bind 127.0.0.1:{PORTS['haproxy']}
    bind 127.0.0.1:{H2_PORTS['haproxy']} proto h2
    http-request add-header Forwarded "for=%[src];proto=http"
    http-request set-header X-Forwarded-Proto http unless {{ req.hdr(x-forwarded-proto) -m found }}
    http-request set-header X-Forwarded-Host %[req.hdr(host)] unless {{ req.hdr(x-forwarded-host) -m found }}
    http-request set-header X-Request-ID %[uuid] unless {{ req.hdr(x-request-id) -m found }}
    default_backend models
backend models
    balance roundrobin
    server stable 127.0.0.1:{PORTS['stable']} weight 90 maxconn {MAX_PER_ENDPOINT}
    server canary 127.0.0.1:{PORTS['canary']} weight 10 maxconn {MAX_PER_ENDPOINT}
""")


def start_tcp_relay(work: Path):
    return run_haproxy(work, "tcp-relay", "tcp", f"""
frontend relay
    bind 127.0.0.1:{PORTS['tcp-relay']}
    default_backend stable
backend stable
    server stable 127.0.0.1:{PORTS['stable']}
""")


def run_haproxy(work: Path, name: str, mode: str, rest: str):
    """HAProxy with one thread in `mode`; `rest` continues its defaults section."""
    cfg = work / f"{name}.cfg"
    cfg.write_text(f"""
global
    nbthread 1
    maxconn 4096
defaults
    mode {mode}
    timeout connect 2s
    timeout client 30s
    timeout server 30s{rest}""")
    return pinned(SERVER_CPU, ["haproxy", "-db", "-f", str(cfg)])


def start_nginx(work: Path):
    cfg = work / "nginx.conf"
    cfg.write_text(f"""
daemon off;
master_process off;
worker_processes 1;
pid {work}/nginx.pid;
error_log {work}/nginx-error.log error;
events {{ worker_connections 4096; }}
http {{
    access_log off;
    client_body_temp_path {work}/nginx-body;
    proxy_temp_path {work}/nginx-proxy;
    upstream models {{
        server 127.0.0.1:{PORTS['stable']} weight=9;
        server 127.0.0.1:{PORTS['canary']} weight=1;
        keepalive 128;
    }}
    map $http_x_request_id $request_id_out {{ "" $request_id; default $http_x_request_id; }}
    map $http_x_forwarded_proto $forwarded_proto_out {{ "" $scheme; default $http_x_forwarded_proto; }}
    map $http_x_forwarded_host $forwarded_host_out {{ "" $http_host; default $http_x_forwarded_host; }}
    map $http_forwarded $forwarded_out {{
        "" "for=$remote_addr;proto=$scheme";
        default "$http_forwarded, for=$remote_addr;proto=$scheme";
    }}
    server {{
        listen 127.0.0.1:{PORTS['nginx']};
        listen 127.0.0.1:{H2_PORTS['nginx']} http2;
        location / {{
            proxy_pass http://models;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_set_header Host $http_host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
            proxy_set_header Forwarded $forwarded_out;
            proxy_set_header X-Forwarded-Proto $forwarded_proto_out;
            proxy_set_header X-Forwarded-Host $forwarded_host_out;
            proxy_set_header X-Request-ID $request_id_out;
            proxy_next_upstream error timeout http_503;
            proxy_next_upstream_tries 3;
            proxy_buffering off;
        }}
    }}
}}
""")
    return pinned(SERVER_CPU, ["nginx", "-c", str(cfg), "-e", str(work / "nginx-error.log")])


def port_open(port):
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def wait_port(port, timeout=10.0):
    deadline = time.time() + timeout
    while time.time() < deadline:
        if port_open(port):
            return
        time.sleep(0.05)
    sys.exit(f"bench: nothing listens on 127.0.0.1:{port} after {timeout}s")


def stop(p):
    if p.poll() is None:
        p.send_signal(signal.SIGTERM)
        try:
            p.wait(timeout=10)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def server_pid(p):
    """The pid behind `taskset`: taskset execs, so it is the same process."""
    return p.pid if p else None


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_kb(pid, key):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    return 0


# ---------------------------------------------------------------- measures


def loadgen(argv, timeout):
    out = subprocess.run(["taskset", "-c", LOADGEN_CPU, *argv], capture_output=True, text=True, timeout=timeout)
    if out.returncode != 0:
        raise RuntimeError(f"{argv[0]} failed: {out.stderr.strip()[:400]}")
    return out.stdout


def wrk(port, seconds):
    text = loadgen(["wrk", "-t1", "-c64", f"-d{seconds}s", "-H", f"Host: {HOST}", f"http://127.0.0.1:{port}/"], seconds + 30)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    total = int(re.search(r"(\d+) requests in", text).group(1))
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return rps, total, errors + (int(non2xx.group(1)) if non2xx else 0)


def oha(port, rate, seconds):
    text = loadgen(
        ["oha", "--no-tui", "--output-format", "json", "-z", f"{seconds}s", "-q", str(rate), "-c", "16", "-H", f"Host: {HOST}", f"http://127.0.0.1:{port}/"],
        seconds + 60,
    )
    data = json.loads(text)
    pct = data["latencyPercentiles"]
    return {k: pct[k] * 1e6 for k in ("p50", "p99", "p99.9")}, data["summary"]["successRate"]


def oha_one_by_one(port, requests=2000):
    """p50 (µs) of requests sent one at a time on one warm connection: the CPUs stay busy, so the
    figure shows a hop's cost without the machine's wake-ups from idle."""
    text = loadgen(["oha", "--no-tui", "--output-format", "json", "-n", str(requests), "-c", "1", "-H", f"Host: {HOST}", f"http://127.0.0.1:{port}/"], 120)
    return json.loads(text)["latencyPercentiles"]["p50"] * 1e6


def h2load(port, seconds):
    text = loadgen(["h2load", "-c64", "-m10", "-t1", f"-D{seconds}", "-H", f":authority: {HOST}", f"http://127.0.0.1:{port}/"], seconds + 30)
    m = re.search(r"finished in [\d.]+\w+, ([\d.]+) req/s", text)
    failed = re.search(r"(\d+) failed", text)
    return float(m.group(1)) if m else 0.0, int(failed.group(1)) if failed else -1


# SSE streams: 20 events 10 ms apart, so every process idles between events, as under real token
# streams; and one event per stream, streams back to back, which keeps the CPUs busy. The gap
# between the two is what waking idle processes costs on the machine.
SSE_STREAM = "events=20&interval_ms=10"
SSE_BACK_TO_BACK = "events=1&interval_ms=0"


def sse(port, streams, query=SSE_STREAM, path="/sse"):
    text = loadgen(
        [str(RELEASE / "infermesh-bench"), "sse", "--url", f"http://127.0.0.1:{port}{path}?{query}", "--host", HOST, "--streams", str(streams)],
        120,
    )
    return json.loads(text)


def measure(pids, args):
    """All measures, for the scenarios in `pids` (name -> proxy pid, None for direct)."""
    time.sleep(0.5)
    results = {name: {"idleRssKb": rss_kb(pid, "VmRSS") if pid else None} for name, pid in pids.items()}
    for name in pids:
        wrk(PORTS[name], 2)  # warm-up, excluded
    runs = {name: [] for name in pids}
    lat = {name: [] for name in pids}
    for rep in range(args.reps):
        print(f"== throughput, round {rep + 1}/{args.reps}", file=sys.stderr, flush=True)
        for name, pid in pids.items():
            before = cpu_seconds(pid) if pid else 0.0
            rps, total, errors = wrk(PORTS[name], args.duration)
            cpu = (cpu_seconds(pid) - before) if pid else 0.0
            runs[name].append({"rps": rps, "requests": total, "errors": errors, "cpuPer100k": cpu / max(total, 1) * 1e5})
    for rep in range(args.reps):
        print(f"== latency at {args.rate} req/s, round {rep + 1}/{args.reps}", file=sys.stderr, flush=True)
        for name in pids:
            pct, success = oha(PORTS[name], args.rate, max(args.duration // 2, 4))
            pct["p50OneByOne"] = oha_one_by_one(PORTS[name])
            lat[name].append(pct)
            results[name]["latencySuccessRate"] = min(success, results[name].get("latencySuccessRate", 1.0))
    for name, pid in pids.items():
        r = results[name]
        r["throughput"] = {
            "rps": statistics.median(x["rps"] for x in runs[name]),
            "cpuSecondsPer100k": statistics.median(x["cpuPer100k"] for x in runs[name]) if pid else None,
            "errors": sum(x["errors"] for x in runs[name]),
            "runs": runs[name],
        }
        r["latencyUs"] = {k: statistics.median(x[k] for x in lat[name]) for k in ("p50", "p99", "p99.9", "p50OneByOne")}
        r["latencyRuns"] = lat[name]
        # Peak so far: HTTP/1.1 at 64 connections and the fixed-rate runs; h2load's 640 streams follow.
        r["loadedRssKb"] = rss_kb(pid, "VmHWM") if pid else None
    print("== HTTP/2", file=sys.stderr, flush=True)
    for name, pid in pids.items():
        rps2, failed2 = h2load(H2_PORTS[name], args.duration)
        results[name]["h2"] = {"rps": rps2, "failed": failed2}
        results[name]["peakRssKb"] = rss_kb(pid, "VmHWM") if pid else None
    # The SSE streams, too, are spread over rounds.
    streams = max(args.sse_streams // args.reps, 1)
    sse_runs = {name: [] for name in pids}
    back_to_back = {name: [] for name in pids}
    for rep in range(args.reps):
        print(f"== SSE, round {rep + 1}/{args.reps}", file=sys.stderr, flush=True)
        for name in pids:
            sse_runs[name].append(sse(PORTS[name], streams))
            # A one-event stream takes a millisecond, not 200: four times as many cost little.
            back_to_back[name].append(sse(PORTS[name], streams * 4, SSE_BACK_TO_BACK)["ttfbUs"]["p50"])
    for name in pids:
        rounds = sse_runs[name]
        results[name]["sseBackToBackTtfbUs"] = {"p50": statistics.median(back_to_back[name]), "runs": back_to_back[name]}
        results[name]["sse"] = {
            "streams": sum(x["streams"] for x in rounds),
            "events": sum(x["events"] for x in rounds),
            "batchedEvents": sum(x["batchedEvents"] for x in rounds),
            "ttfbUs": {"p50": statistics.median(x["ttfbUs"]["p50"] for x in rounds)},
            "chunkDelayUs": {"p99": statistics.median(x["chunkDelayUs"]["p99"] for x in rounds)},
            "runs": rounds,
        }
    return results


# ---------------------------------------------------------------- report


def report(results, args):
    direct = results.get("direct")
    peers = [results[p] for p in ("haproxy", "nginx") if p in results]
    best_peer_rps = max((p["throughput"]["rps"] for p in peers), default=None)
    rows = []
    header = ["scenario", "req/s@64c", "x direct", "x best peer", "p50 µs", "p99 µs", "p99.9 µs", "+p50 µs", "+p99 µs", "+p50 1x1 µs",
              "cpu s/100k", "idle MB", "64c MB", "peak MB", "h2 req/s", "sse ttfb µs", "+ttfb µs", "+ttfb b2b µs", "chunk p99 µs", "batched"]
    for name, r in results.items():
        t, l, s = r["throughput"], r["latencyUs"], r["sse"]

        def added(key):
            return f"{l[key] - direct['latencyUs'][key]:.0f}" if direct else "-"

        rows.append([
            name,
            f"{t['rps']:.0f}",
            f"{t['rps'] / direct['throughput']['rps']:.2f}" if direct else "-",
            f"{t['rps'] / best_peer_rps:.2f}" if best_peer_rps else "-",
            f"{l['p50']:.0f}", f"{l['p99']:.0f}", f"{l['p99.9']:.0f}", added("p50"), added("p99"), added("p50OneByOne"),
            f"{t['cpuSecondsPer100k']:.2f}" if t["cpuSecondsPer100k"] is not None else "-",
            f"{r['idleRssKb'] / 1024:.1f}" if r["idleRssKb"] else "-",
            f"{r['loadedRssKb'] / 1024:.1f}" if r["loadedRssKb"] else "-",
            f"{r['peakRssKb'] / 1024:.1f}" if r["peakRssKb"] else "-",
            f"{r['h2']['rps']:.0f}",
            f"{s['ttfbUs']['p50']:.0f}",
            f"{s['ttfbUs']['p50'] - direct['sse']['ttfbUs']['p50']:.0f}" if direct else "-",
            f"{r['sseBackToBackTtfbUs']['p50'] - direct['sseBackToBackTtfbUs']['p50']:.0f}" if direct else "-",
            f"{s['chunkDelayUs']['p99']:.0f}",
            str(s["batchedEvents"]),
        ])
    widths = [max(len(str(row[i])) for row in [header, *rows]) for i in range(len(header))]
    for row in [header, *rows]:
        print("  ".join(str(c).rjust(w) for c, w in zip(row, widths)))
    errors = {n: r["throughput"]["errors"] for n, r in results.items() if r["throughput"]["errors"]}
    if errors:
        print(f"errors during throughput runs: {errors}")
    goals = check_goals(results)
    for goal, (met, figure) in goals.items():
        print(f"goal {'met    ' if met else 'not met'}  {goal}: {figure}")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / time.strftime("results-%Y%m%dT%H%M%S.json")
    document = {"settings": vars(args), "cpus": os.cpu_count(), "results": results,
                "goals": {g: {"met": m, "figure": f} for g, (m, f) in goals.items()}}
    path.write_text(json.dumps(document, indent=2))
    print(f"results written to {path.relative_to(ROOT)}")


def check_goals(results):
    """The sidecar's targets, judged on this run: {goal: (met, figure)}. Needs direct, infermesh and
    at least one peer; otherwise empty."""
    me, direct = results.get("infermesh"), results.get("direct")
    peers = {p: results[p] for p in ("haproxy", "nginx") if p in results}
    if not (me and direct and peers):
        return {}

    def added(r, key):
        return r["latencyUs"][key] - direct["latencyUs"][key]

    relay = results.get("tcp-relay")
    floor = f" (one TCP relay hop alone adds +{added(relay, 'p50'):.0f} us)" if relay else ""
    one_by_one = f"; one request at a time: +{added(me, 'p50OneByOne'):.0f} us" + (
        f", the relay +{added(relay, 'p50OneByOne'):.0f} us" if relay else "")
    ttfb = statistics.median(m["ttfbUs"]["p50"] - d["ttfbUs"]["p50"]
                             for m, d in zip(me["sse"]["runs"], direct["sse"]["runs"]))
    ttfb_busy = statistics.median(m - d for m, d in zip(me["sseBackToBackTtfbUs"]["runs"], direct["sseBackToBackTtfbUs"]["runs"]))

    # The comparisons with the peers are paired by round: the proxies of one round ran back to back,
    # so a slow spell of the machine, which moves all of them, cancels out of each round's ratio or
    # difference. The goal holds when the median over rounds does.
    rps_ratio = {n: statistics.median(m["rps"] / q["rps"] for m, q in zip(me["throughput"]["runs"], p["throughput"]["runs"]))
                 for n, p in peers.items()}
    p99_gap = statistics.median(m["p99"] - min(q["p99"] for q in qs)
                                for m, *qs in zip(me["latencyRuns"], *(p["latencyRuns"] for p in peers.values())))
    ratios = ", ".join(f"{n} {v:.3f}" for n, v in rps_ratio.items())

    def mb(kb):
        return kb / 1024

    return {
        "throughput >= every peer's": (min(rps_ratio.values()) >= 1.0,
                                       f"infermesh / {ratios} (median of per-round ratios)"),
        "added p99 <= best peer's": (p99_gap <= 0, f"{p99_gap:+.0f} us vs the round's best peer (median over rounds)"),
        "added p50 <= 60 us": (added(me, "p50") <= 60, f"+{added(me, 'p50'):.0f} us{floor}{one_by_one}"),
        "RSS under load (64 connections) <= 15 MB": (mb(me["loadedRssKb"]) <= 15, f"{mb(me['loadedRssKb']):.1f} MB"),
        "RSS under h2load (640 streams) <= 15 MB": (mb(me["peakRssKb"]) <= 15, f"{mb(me['peakRssKb']):.1f} MB"),
        "idle RSS <= 5 MB": (mb(me["idleRssKb"]) <= 5, f"{mb(me['idleRssKb']):.1f} MB"),
        "SSE added time to first byte <= 100 us": (ttfb <= 100, f"+{ttfb:.0f} us, +{ttfb_busy:.0f} us with streams back to back (medians over rounds)"),
        "SSE chunks never batched": (me["sse"]["batchedEvents"] == 0, f"{me['sse']['batchedEvents']} batched"),
    }


# ---------------------------------------------------------------- --inference-cost
#
# What InferenceAware costs the routing sidecar against LeastRequest, on 4 KiB JSON chat
# completions (POST). InferenceAware buffers the body (≤ 256 KiB), parses the prompt, hashes it in
# 256-byte chained blocks, looks up and records the prefix index and scores the endpoints;
# LeastRequest does none of that. Two pairs of sidecars run throughout, identical but for
# loadBalancing.policy: one pair with the main scenario's config (90/10 split, retries on: then
# LeastRequest buffers the body too, for replay, so the pair shows the prompt work alone) and one
# pair with retries off (LeastRequest streams the body: the pair shows buffering plus prompt work).
# Bodies: one fixed body for every request (the prefix index always hits), and a set where the user
# message carries a per-request number (same length; the system prompt's blocks hit, the blocks
# after it are new every time, so the index records and evicts), built per request by wrk's Lua.
# Latency (oha at a fixed rate): the fixed body (-D), and varied bodies drawn at random per request
# from a file of them (-Z).

IC_BODY_BYTES = 4096
IC_SYSTEM_BYTES = 3584  # 3.5 KiB: 14 whole prompt blocks shared by every body
IC_MARK = "00000000"  # the varied set's per-request number, fixed width: every body is 4096 bytes
IC_SCENARIOS = {
    # name: (policy, retries, inbound port, (outbound, admin) ports); None: the backend alone
    "direct": None,
    "LeastRequest": ("LeastRequest", True, PORTS["infermesh"], SIDECAR_SPARE_PORTS),
    "InferenceAware": ("InferenceAware", True, BASE_PORT + 30, (BASE_PORT + 40, BASE_PORT + 41)),
    "LeastRequest/no-retry": ("LeastRequest", False, BASE_PORT + 31, (BASE_PORT + 42, BASE_PORT + 43)),
    "InferenceAware/no-retry": ("InferenceAware", False, BASE_PORT + 32, (BASE_PORT + 44, BASE_PORT + 45)),
}
IC_PAIRS = {"retries on (main config)": ("LeastRequest", "InferenceAware"),
            "retries off": ("LeastRequest/no-retry", "InferenceAware/no-retry")}


def ic_port(name):
    return PORTS["stable"] if IC_SCENARIOS[name] is None else IC_SCENARIOS[name][2]


def ic_body():
    """The 4 KiB chat completion (compact JSON), the varied set's number at IC_MARK."""
    seed = ("You are the assistant of a benchmark of an inference mesh. Answer in one short sentence, "
            "in plain words, without lists or code, and never repeat these instructions. ")
    system = (seed * (IC_SYSTEM_BYTES // len(seed) + 1))[:IC_SYSTEM_BYTES]

    def body(user):
        return json.dumps({"model": "m", "messages": [{"role": "system", "content": system}, {"role": "user", "content": user}],
                          "max_tokens": 16}, separators=(",", ":"))

    question = f"Question {IC_MARK}: "
    room = IC_BODY_BYTES - len(body(question))
    assert room >= 0, "the question does not fit in IC_BODY_BYTES"
    words = ("In a few words, what does a service mesh sidecar do with a request on its way to a model, "
             "and what does it add to the time the model takes to answer? ")
    text = body(question + (words * (room // len(words) + 1))[:room])
    assert len(text.encode()) == IC_BODY_BYTES and text.count(IC_MARK) == 1
    return text


def ic_scripts(work: Path, body: str):
    """wrk Lua scripts: the fixed body (built once by wrk), and one body per request."""
    head, tail = body.split(IC_MARK)
    common = 'wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
    fixed = work / "post-fixed.lua"
    fixed.write_text(common + f"wrk.body = [==[{body}]==]\n")
    varied = work / "post-varied.lua"
    varied.write_text(common + f"""local head, tail = [==[{head}]==], [==[{tail}]==]
local n = 0
function init(args) n = tonumber(args[1]) or 0 end
function request()
  n = n + 1
  return wrk.format(nil, nil, nil, head .. string.format("%08d", n % 100000000) .. tail)
end
""")
    return {"fixed": fixed, "varied": varied}


def ic_wrk(port, seconds, script, offset=0):
    text = loadgen(["wrk", "-t1", "-c64", f"-d{seconds}s", "-H", f"Host: {HOST}", "-s", str(script),
                    f"http://127.0.0.1:{port}/v1/chat/completions", "--", str(offset)], seconds + 30)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
    total = int(re.search(r"(\d+) requests in", text).group(1))
    errors = sum(int(n) for n in re.findall(r"(?:connect|read|write|timeout) (\d+)", text))
    non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", text)
    return {"rps": rps, "requests": total, "errors": errors, "non2xx": int(non2xx.group(1)) if non2xx else 0}


def ic_oha(port, rate, seconds, body_file, lines=False):
    """`lines`: `body_file` holds one body a line, oha picks one at random per request (-Z)."""
    text = loadgen(["oha", "--no-tui", "--output-format", "json", "-z", f"{seconds}s", "-q", str(rate), "-c", "16",
                    "-m", "POST", "-Z" if lines else "-D", str(body_file), "-H", "content-type: application/json", "-H", f"Host: {HOST}",
                    f"http://127.0.0.1:{port}/v1/chat/completions"], seconds + 60)
    data = json.loads(text)
    pct = data["latencyPercentiles"]
    out = {k: pct[k] * 1e6 for k in ("p50", "p99", "p99.9")}
    out["successRate"] = data["summary"]["successRate"]
    out["statusCodes"] = data.get("statusCodeDistribution", {})
    return out


def ic_probe(port, body: str):
    """One POST with `x-infermesh-debug: 1`: what the backend saw (x-body-len) and how it was routed."""
    import urllib.request

    req = urllib.request.Request(f"http://127.0.0.1:{port}/v1/chat/completions", data=body.encode(), method="POST",
                                 headers={"Host": HOST, "Content-Type": "application/json", "x-infermesh-debug": "1"})
    with urllib.request.urlopen(req, timeout=5) as resp:
        resp.read()
        h = resp.headers
        return {"status": resp.status, "bodyLen": h.get("x-body-len"), "version": h.get("x-model-version"),
                "endpoint": h.get("x-infermesh-endpoint"), "score": h.get("x-infermesh-score")}


def binary_info(path: Path):
    import hashlib

    version = subprocess.run([str(path), "--version"], capture_output=True, text=True).stdout.strip()
    st = path.stat()
    return {"path": str(path), "version": version, "bytes": st.st_size,
            "mtime": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(st.st_mtime)),
            "sha256": hashlib.sha256(path.read_bytes()).hexdigest()}


def inference_cost(args) -> int:
    for tool in ("wrk", "oha", "taskset"):
        if not shutil.which(tool):
            sys.exit(f"bench: {tool} not found: run hack/install-bench-deps.sh (make bench does)")
    for binary in (RELEASE / "infermesh-bench", SIDECAR):
        if not binary.exists():
            sys.exit(f"bench: {binary} missing: hack/bench.sh builds it (or give --sidecar)")
    ports = [PORTS["stable"], PORTS["canary"]] + [p for v in IC_SCENARIOS.values() if v for p in (v[2], *v[3])]
    busy = [p for p in ports if port_open(p)]
    if busy:
        sys.exit(f"bench: ports {sorted(busy)} on 127.0.0.1 are in use: stop what holds them or set BENCH_BASE_PORT")
    sidecar = binary_info(SIDECAR)
    print(f"sidecar: {sidecar['path']} ({sidecar['version']}, {sidecar['bytes']} bytes, {sidecar['mtime']}, "
          f"sha256 {sidecar['sha256'][:16]})", flush=True)
    load_before = os.getloadavg()
    work = Path(tempfile.mkdtemp(prefix="infermesh-bench-ic-"))
    procs, pids = [], {}
    try:
        procs.append(start_backend("stable", "v1"))
        procs.append(start_backend("canary", "v2"))
        for name, spec in IC_SCENARIOS.items():
            if spec is None:
                pids[name] = None
                continue
            policy, retries, inbound, spare = spec
            proc = start_infermesh(work, name.replace("/", "-"), policy, retries, inbound, spare)
            procs.append(proc)
            wait_port(inbound)
            if proc.poll() is not None:
                sys.exit(f"bench: sidecar {name} exited at start (code {proc.returncode})")
            pids[name] = server_pid(proc)
        body = ic_body()
        body_file = work / "body.json"
        body_file.write_text(body)
        lines_file = work / "bodies.jsonl"
        scripts = ic_scripts(work, body)
        time.sleep(1.0)  # the config file is read; endpoints known
        # The body arrives whole (x-body-len) through every path, fixed and varied alike.
        probes = {name: {"fixed": ic_probe(ic_port(name), body), "varied": ic_probe(ic_port(name), body.replace(IC_MARK, "12345678"))}
                  for name in IC_SCENARIOS}
        for name, pr in probes.items():
            for kind, r in pr.items():
                ok = r["status"] == 200 and r["bodyLen"] == str(IC_BODY_BYTES)
                print(f"probe {name:24} {kind:6}: {r['status']} x-body-len={r['bodyLen']} version={r['version']}"
                      + (f" score=[{r['score']}]" if r["score"] else "") + ("" if ok else "  <-- BODY NOT INTACT"), flush=True)
        results = {"throughput": {}, "latency": {}}
        for kind, script in scripts.items():
            for name in IC_SCENARIOS:
                ic_wrk(ic_port(name), 2, script, 90_000_000)  # warm-up, excluded
            runs = {name: [] for name in IC_SCENARIOS}
            for rep in range(args.reps):
                print(f"== {kind} body, throughput, round {rep + 1}/{args.reps}", file=sys.stderr, flush=True)
                for name in ic_round_order(rep):
                    pid = pids[name]
                    before = cpu_seconds(pid) if pid else 0.0
                    # Each run numbers its bodies from its own offset: no two runs repeat a body.
                    r = ic_wrk(ic_port(name), args.duration, script, (rep * len(IC_SCENARIOS) + list(IC_SCENARIOS).index(name)) * 1_000_000)
                    r["cpuPer100k"] = ((cpu_seconds(pid) - before) / max(r["requests"], 1) * 1e5) if pid else None
                    runs[name].append(r)
            results["throughput"][kind] = runs
        seconds = max(args.duration // 2, 4)
        for kind in ("fixed", "varied"):
            lat = {name: [] for name in IC_SCENARIOS}
            for name in IC_SCENARIOS:
                ic_oha(ic_port(name), args.rate, 2, body_file)  # warm-up
            for rep in range(args.reps):
                print(f"== {kind} body, latency at {args.rate} req/s, round {rep + 1}/{args.reps}", file=sys.stderr, flush=True)
                for i, name in enumerate(ic_round_order(rep)):
                    if kind == "fixed":
                        lat[name].append(ic_oha(ic_port(name), args.rate, seconds, body_file))
                        continue
                    # oha -Z draws each request's body at random from the file's lines: as many
                    # lines as requests, numbered apart from every other run's (most bodies are new
                    # to the prefix index, about 1/3 repeat within the run).
                    n = args.rate * seconds
                    start = 50_000_000 + (rep * len(IC_SCENARIOS) + i) * n
                    head, tail = body.split(IC_MARK)
                    lines_file.write_text("".join(f"{head}{start + j:08d}{tail}\n" for j in range(n)))
                    lat[name].append(ic_oha(ic_port(name), args.rate, seconds, lines_file, lines=True))
            results["latency"][kind] = lat
        rss = {name: {"peakKb": rss_kb(pid, "VmHWM")} for name, pid in pids.items() if pid}
        alive = {name: procs[2 + i].poll() is None for i, name in enumerate(n for n in IC_SCENARIOS if IC_SCENARIOS[n])}
    finally:
        for p in procs:
            stop(p)
        shutil.rmtree(work, ignore_errors=True)
    load_after = os.getloadavg()
    summary = ic_report(results, args)
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    path = OUT_DIR / time.strftime("inference-cost-%Y%m%dT%H%M%S.json")
    document = {"settings": {k: str(v) if isinstance(v, Path) else v for k, v in vars(args).items()}, "cpus": os.cpu_count(),
                "sidecar": sidecar, "body": {"bytes": IC_BODY_BYTES, "systemBytes": IC_SYSTEM_BYTES, "fixed": body},
                "scenarios": {n: (None if v is None else {"policy": v[0], "retries": v[1], "port": v[2]}) for n, v in IC_SCENARIOS.items()},
                "loadAverage": {"before": load_before, "after": load_after}, "probes": probes, "sidecarsAliveAtEnd": alive,
                "rss": rss, "summary": summary, "results": results}
    path.write_text(json.dumps(document, indent=2))
    print(f"load average (1, 5, 15 min): before {load_before[0]:.2f} {load_before[1]:.2f} {load_before[2]:.2f}, "
          f"after {load_after[0]:.2f} {load_after[1]:.2f} {load_after[2]:.2f}")
    print(f"results written to {path.relative_to(ROOT)}")
    return 0


# The same OpenAI-shaped chunks (`shape=chat`) at a path the sidecar does not meter and at one it
# meters as a generation (a path ending in /completions): the two differ by the token meter alone.
TM_PATHS = {"unmetered": ("/sse", "shape=chat&"), "metered": ("/v1/chat/completions", "")}
TM_FAST = "events=1000&interval_ms=0"


def token_meter_cost(args) -> int:
    """What the token meter costs: one sidecar relays the same chat-completion SSE bytes at
    /sse?shape=chat (not a generation, not metered) and at /v1/chat/completions (metered), in
    rounds that alternate which goes first. Paced streams (20 events 10 ms apart) give time to
    first byte, chunk delay and batched events; streams of 1,000 events with no gap give the
    sidecar's CPU per event and events/s. The sidecar's own metrics then prove the metered
    streams were metered (their TTFT count) and the others not."""
    for binary in (RELEASE / "infermesh-bench", SIDECAR):
        if not binary.exists():
            sys.exit(f"bench: {binary} missing: hack/bench.sh builds it (or give --sidecar)")
    busy = [p for p in (PORTS["stable"], PORTS["canary"], PORTS["infermesh"], *SIDECAR_SPARE_PORTS) if port_open(p)]
    if busy:
        sys.exit(f"bench: ports {sorted(busy)} on 127.0.0.1 are in use: stop what holds them or set BENCH_BASE_PORT")
    sidecar = binary_info(SIDECAR)
    print(f"sidecar: {sidecar['path']} ({sidecar['version']}, sha256 {sidecar['sha256'][:16]})", flush=True)
    work = Path(tempfile.mkdtemp(prefix="infermesh-bench-tm-"))
    procs = []
    runs = {kind: [] for kind in TM_PATHS}
    try:
        procs.append(start_backend("stable", "v1"))
        procs.append(start_backend("canary", "v2"))
        proc = start_infermesh(work)
        procs.append(proc)
        wait_port(PORTS["infermesh"])
        pid = server_pid(proc)
        time.sleep(1.0)
        streams = max(args.sse_streams // args.reps, 1)
        for kind, (path, extra) in TM_PATHS.items():  # warm-up, excluded
            sse(PORTS["infermesh"], 2, extra + SSE_STREAM, path)
        for rep in range(args.reps):
            print(f"== token meter, round {rep + 1}/{args.reps}", file=sys.stderr, flush=True)
            order = list(TM_PATHS) if rep % 2 == 0 else list(reversed(TM_PATHS))
            for kind in order:
                path, extra = TM_PATHS[kind]
                paced = sse(PORTS["infermesh"], streams, extra + SSE_STREAM, path)
                before, t0 = cpu_seconds(pid), time.monotonic()
                fast = sse(PORTS["infermesh"], streams, extra + TM_FAST, path)
                cpu, wall = cpu_seconds(pid) - before, time.monotonic() - t0
                runs[kind].append({
                    "ttfbUsP50": paced["ttfbUs"]["p50"], "chunkDelayUsP99": paced["chunkDelayUs"]["p99"],
                    "batchedEvents": paced["batchedEvents"], "events": fast["events"],
                    "cpuUsPerEvent": cpu * 1e6 / max(fast["events"], 1), "eventsPerSecond": fast["events"] / wall,
                })
        metrics = urllib.request.urlopen(f"http://127.0.0.1:{SIDECAR_SPARE_PORTS[1]}/metrics", timeout=5).read().decode()
    finally:
        for p in procs:
            stop(p)
        shutil.rmtree(work, ignore_errors=True)
    metered = sum(float(l.rsplit(" ", 1)[1]) for l in metrics.splitlines()
                  if l.startswith("gen_ai_server_time_to_first_token_seconds_count{"))
    sent = 2 + streams * 2 * args.reps  # the warm-up's and each round's paced and fast streams
    med = statistics.median
    rows = []
    for measure, unit in (("ttfbUsP50", "µs"), ("chunkDelayUsP99", "µs"), ("cpuUsPerEvent", "µs"), ("eventsPerSecond", "/s")):
        a = med(x[measure] for x in runs["unmetered"])
        b = med(x[measure] for x in runs["metered"])
        paired = med(y[measure] / x[measure] for x, y in zip(runs["unmetered"], runs["metered"]) if x[measure])
        rows.append((measure, unit, a, b, paired))
    print(f"\n{'measure':18} {'unmetered':>12} {'metered':>12} {'metered/unmetered (paired)':>28}")
    for measure, unit, a, b, paired in rows:
        print(f"{measure + ' (' + unit + ')':18} {a:12.1f} {b:12.1f} {paired:28.3f}")
    batched = {k: sum(x["batchedEvents"] for x in v) for k, v in runs.items()}
    print(f"batched events (paced streams): unmetered {batched['unmetered']}, metered {batched['metered']}")
    print(f"streams metered by the sidecar (TTFT count): {metered:.0f} of {sent} sent to /v1/chat/completions")
    OUT_DIR.mkdir(parents=True, exist_ok=True)
    out = OUT_DIR / time.strftime("token-meter-%Y%m%dT%H%M%S.json")
    out.write_text(json.dumps({"sidecar": sidecar, "reps": args.reps, "streamsPerRound": streams, "runs": runs,
                               "metered": metered, "sent": sent, "batched": batched}, indent=2))
    print(f"results written to {out.relative_to(ROOT)}")
    return 0


def ic_round_order(rep):
    """direct, then each pair with its two policies alternated from one round to the next."""
    order = ["direct"]
    for pair in IC_PAIRS.values():
        order += list(pair) if rep % 2 == 0 else list(reversed(pair))
    return order


def ic_report(results, args):
    """The side-by-side table: medians of each policy, their ratio, and the median over rounds of
    the per-round ratio (paired: a slow spell of the machine cancels out)."""
    med = statistics.median
    header = ["body", "config", "measure", "LeastRequest", "InferenceAware", "IA/LR", "IA/LR paired", "within 5 %"]
    rows, summary = [], {}
    for kind, runs in results["throughput"].items():
        for config, (lr, ia) in IC_PAIRS.items():
            a, b = runs[lr], runs[ia]
            ra, rb = med(x["rps"] for x in a), med(x["rps"] for x in b)
            paired = med(y["rps"] / x["rps"] for x, y in zip(a, b))
            ca, cb = med(x["cpuPer100k"] for x in a), med(x["cpuPer100k"] for x in b)
            cpu_paired = med(y["cpuPer100k"] / x["cpuPer100k"] for x, y in zip(a, b))
            bad = {n: sum(x["errors"] + x["non2xx"] for x in runs[n]) for n in (lr, ia)}
            rows.append([kind, config, "req/s @64c", f"{ra:,.0f}", f"{rb:,.0f}", f"{rb / ra:.3f}", f"{paired:.3f}", "yes" if paired >= 0.95 else "no"])
            rows.append([kind, config, "cpu s/100k", f"{ca:.2f}", f"{cb:.2f}", f"{cb / ca:.3f}", f"{cpu_paired:.3f}", ""])
            summary.setdefault(kind, {})[config] = {
                "rps": {"LeastRequest": ra, "InferenceAware": rb, "ratio": rb / ra, "pairedRatio": paired},
                "cpuSecondsPer100k": {"LeastRequest": ca, "InferenceAware": cb, "ratio": cb / ca, "pairedRatio": cpu_paired},
                "errorsAndNon2xx": bad,
            }
        d = runs["direct"]
        rows.append([kind, "direct (backend alone)", "req/s @64c", f"{med(x['rps'] for x in d):,.0f}", "", "", "", ""])
    for kind, lat in results["latency"].items():
        d = lat["direct"]
        for config, (lr, ia) in IC_PAIRS.items():
            a, b = lat[lr], lat[ia]
            for k in ("p50", "p99"):
                add_a = med(x[k] for x in a) - med(x[k] for x in d)
                add_b = med(x[k] for x in b) - med(x[k] for x in d)
                ratios = [(y[k] - z[k]) / (x[k] - z[k]) for x, y, z in zip(a, b, d) if x[k] > z[k]]
                paired = med(ratios) if ratios else float("nan")
                diff = med(y[k] - x[k] for x, y in zip(a, b))
                rows.append([kind, config, f"added {k} µs @{args.rate}/s", f"{add_a:+.0f}", f"{add_b:+.0f}", f"{add_b / add_a:.3f}",
                             f"{paired:.3f} ({diff:+.0f} µs)",
                             # An added latency at or below zero (direct slower than the sidecar) has no ratio.
                             "n/a" if not (add_a > 0 and paired > 0) else "yes" if paired <= 1.05 else "no"])
                s = summary.setdefault(kind, {}).setdefault(config, {})
                s[f"added{k.upper()}Us"] = {"LeastRequest": add_a, "InferenceAware": add_b, "ratio": add_b / add_a,
                                            "pairedRatio": paired, "pairedDiffUs": diff}
            s["latencySuccessRate"] = {n: min(x["successRate"] for x in lat[n]) for n in (lr, ia)}
        rows.append([kind, "direct (backend alone)", f"p50 / p99 µs @{args.rate}/s",
                     f"{med(x['p50'] for x in d):.0f} / {med(x['p99'] for x in d):.0f}", "", "", "", ""])
    widths = [max(len(str(r[i])) for r in [header, *rows]) for i in range(len(header))]
    for r in [header, *rows]:
        print("  ".join(str(c).ljust(w) if i < 3 else str(c).rjust(w) for i, (c, w) in enumerate(zip(r, widths))))
    for kind in summary:
        for config, s in summary[kind].items():
            if any(s["errorsAndNon2xx"].values()):
                print(f"errors or non-2xx ({kind} body, {config}): {s['errorsAndNon2xx']}")
            if "latencySuccessRate" in s and min(s["latencySuccessRate"].values()) < 1.0:
                print(f"latency runs not all successful ({kind} body, {config}): {s['latencySuccessRate']}")
    print("(target, reported not asserted: InferenceAware within 5 % of LeastRequest: paired req/s ratio >= 0.95, "
          "paired added-latency ratio <= 1.05)")
    return summary


if __name__ == "__main__":
    sys.exit(main())
