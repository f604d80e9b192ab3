#!/usr/bin/env python3
"""`make bench-hardening`: what hostile or bursty clients cost a sidecar, in memory and CPU.

Three measures, each on a fresh sidecar process, figures from /proc:
  * replay: 100 concurrent 1 MiB POSTs to a service with retries on, against a backend that reads
    the body and answers after 1 s: peak RSS, and RSS 2 s after the clients left. Run with the
    replay cap (--replay-buffer-bytes, default 64 MiB) and without it (a cap of 1 TiB: the design
    before the cap), in the same run;
  * connections: 2,000 keep-alive connections each sending one GET and staying open, then all
    closed: RSS at start, with them open, and 2 s after they closed;
  * prefaces: 1,000 connections that send part of the HTTP/2 preface and stop: the sidecar's CPU
    time over 5 s while they stall, and over 5 s after their clients closed them.
--sidecar PATH measures another build of the sidecar (e.g. an older one, for before/after);
flags it does not know are left out. Every loop is bounded in count and time.
"""

import argparse
import http.server
import json
import os
import resource
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SIDECAR = ROOT / "target" / "x86_64-unknown-linux-musl" / "release" / "infermesh-sidecar"
BASE_PORT = int(os.environ.get("BENCH_BASE_PORT", "29080"))
BACKEND, INBOUND, OUTBOUND, ADMIN = BASE_PORT, BASE_PORT + 1, BASE_PORT + 2, BASE_PORT + 3
MIB = 1 << 20


class SlowBackend(http.server.BaseHTTPRequestHandler):
    """Reads the whole body, waits a second, answers 200."""

    protocol_version = "HTTP/1.1"

    def do_POST(self):
        left = int(self.headers.get("content-length", "0"))
        while left > 0:
            chunk = self.rfile.read(min(left, 1 << 16))
            if not chunk:
                return
            left -= len(chunk)
        time.sleep(1.0)
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def do_GET(self):
        self.send_response(200)
        self.send_header("content-length", "2")
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args):
        pass


class Backend(http.server.ThreadingHTTPServer):
    request_queue_size = 4096  # the listen backlog: thousands of connections arrive at once
    daemon_threads = True


def start_backend():
    server = Backend(("127.0.0.1", BACKEND), SlowBackend)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


_FLAGS = {}


def sidecar_flags(binary):
    """The binary's --help text, read once: which flags this build knows."""
    if binary not in _FLAGS:
        _FLAGS[binary] = subprocess.run([binary, "--help"], capture_output=True, text=True, timeout=10).stdout
    return _FLAGS[binary]


def start_sidecar(binary, work, extra):
    config = {
        "revision": "hardening",
        "services": [{
            "name": "bench", "port": BACKEND,
            "variants": [{"name": "stable", "weight": 100,
                          "endpoints": [{"address": f"127.0.0.1:{BACKEND}"}]}],
            "retries": {"attempts": 3, "retryOn": ["connect-failure", "5xx"]},
        }],
    }
    path = Path(work) / "mesh.json"
    path.write_text(json.dumps(config))
    argv = [binary, "--config-file", str(path), "--inbound", f"127.0.0.1:{INBOUND}",
            "--outbound", f"127.0.0.1:{OUTBOUND}", "--admin", f"127.0.0.1:{ADMIN}", "--workers", "1"]
    for port in (INBOUND, OUTBOUND, ADMIN):
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            raise RuntimeError(f"port {port} is taken: stop what listens there (BENCH_BASE_PORT moves them)")
        except OSError:
            pass
    known = sidecar_flags(binary)
    for flag, value in extra:
        if flag in known:
            argv += [flag, value]
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                         env=dict(os.environ, RUST_LOG="error"))
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", INBOUND), timeout=0.2).close()
            time.sleep(0.3)
            if p.poll() is not None:
                raise RuntimeError(f"the sidecar exited with {p.returncode}")
            return p
        except OSError:
            time.sleep(0.05)
    p.kill()
    raise RuntimeError("the sidecar did not start")


class Running:
    """A sidecar for one measure, stopped however the measure ends."""

    def __init__(self, binary, work, extra):
        self.p = start_sidecar(binary, work, extra)

    def __enter__(self):
        return self.p

    def __exit__(self, *exc):
        stop(self.p)


def stop(p):
    p.terminate()
    try:
        p.wait(timeout=25)
    except subprocess.TimeoutExpired:
        p.kill()
        p.wait()


def rss_mb(pid, key="VmRSS"):
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1]) / 1024
    return 0.0


def cpu_seconds(pid):
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def post_1mib(results, i):
    body = b"x" * MIB
    try:
        s = socket.create_connection(("127.0.0.1", INBOUND), timeout=30)
        s.sendall(b"POST /v1/completions HTTP/1.1\r\nHost: bench\r\nContent-Length: %d\r\n"
                  b"Connection: close\r\n\r\n" % len(body) + body)
        reply = b""
        while chunk := s.recv(65536):
            reply += chunk
        s.close()
        results[i] = reply.split(b" ", 2)[1].decode() if reply else "no reply"
    except OSError as e:
        results[i] = f"error {e}"


def measure_replay(binary, work, capped):
    extra = [] if capped else [("--replay-buffer-bytes", str(1 << 40))]
    with Running(binary, work, extra) as p:
        return replay_figures(p)


def replay_figures(p):
    idle = rss_mb(p.pid)
    results = [None] * 100
    threads = [threading.Thread(target=post_1mib, args=(results, i)) for i in range(100)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    time.sleep(2)
    return {"idle": idle, "peak": rss_mb(p.pid, "VmHWM"), "after": rss_mb(p.pid),
            "ok": sum(1 for r in results if r == "200")}


def measure_connections(binary, work, n=2000):
    with Running(binary, work, []) as p:
        return connection_figures(p, n)


def connection_figures(p, n):
    start = rss_mb(p.pid)
    conns = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", INBOUND), timeout=10)
        s.sendall(b"GET / HTTP/1.1\r\nHost: bench\r\n\r\n")
        conns.append(s)
    ok = 0
    for s in conns:
        try:
            s.settimeout(30)
            if s.recv(4096).startswith(b"HTTP/1.1 200"):
                ok += 1
        except OSError:
            pass
    time.sleep(1)
    open_rss = rss_mb(p.pid)
    for s in conns:
        s.close()
    time.sleep(2)
    return {"start": start, "open": open_rss, "closed": rss_mb(p.pid), "ok": ok}


def measure_prefaces(binary, work, n=1000):
    with Running(binary, work, []) as p:
        return preface_figures(p, n)


def preface_figures(p, n):
    conns = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", INBOUND), timeout=10)
        s.sendall(b"PRI * HTTP/2.0\r\n")
        conns.append(s)
    time.sleep(0.5)
    before = cpu_seconds(p.pid)
    time.sleep(5)
    stalled = cpu_seconds(p.pid) - before
    for s in conns:
        s.close()
    time.sleep(0.5)
    before = cpu_seconds(p.pid)
    time.sleep(5)
    closed = cpu_seconds(p.pid) - before
    return {"stalled": stalled / 5 * 100, "closed": closed / 5 * 100}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sidecar", default=str(SIDECAR), help="the sidecar binary to measure")
    args = parser.parse_args()
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (min(hard, 16384), hard))
    backend = start_backend()
    try:
        with tempfile.TemporaryDirectory() as work:
            capped = measure_replay(args.sidecar, work, capped=True)
            uncapped = measure_replay(args.sidecar, work, capped=False)
            conns = measure_connections(args.sidecar, work)
            prefaces = measure_prefaces(args.sidecar, work)
    finally:
        backend.shutdown()
    print(f"sidecar: {args.sidecar}")
    print("100 x 1 MiB POSTs, retries on      idle MB  peak MB  after MB  200s")
    has_cap = "--replay-buffer-bytes" in sidecar_flags(args.sidecar)
    first = "  replay cap 64 MiB (default)" if has_cap else "  default (this build has no cap)"
    for name, r in [(first, capped), ("  no cap (1 TiB)", uncapped)]:
        print(f"{name:<36}{r['idle']:7.1f}  {r['peak']:7.1f}  {r['after']:8.1f}  {r['ok']:4}")
    print("2,000 keep-alive connections        start MB  open MB  closed MB  200s")
    print(f"{'':36}{conns['start']:8.1f}  {conns['open']:7.1f}  {conns['closed']:9.1f}  {conns['ok']:4}")
    print("1,000 partial HTTP/2 prefaces       CPU % stalled  CPU % after close")
    print(f"{'':36}{prefaces['stalled']:13.1f}  {prefaces['closed']:17.1f}")
    out = ROOT / "build" / "bench" / f"hardening-{time.strftime('%Y%m%d-%H%M%S')}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps({"sidecar": args.sidecar, "replayCapped": capped, "replayUncapped": uncapped,
                               "connections": conns, "prefaces": prefaces}, indent=2))
    print(f"figures: {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
