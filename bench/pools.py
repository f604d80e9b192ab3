#!/usr/bin/env python3
"""Pools of model servers on loopback for the benchmarks: N engine simulators, each with flags of
its own (a slow one, a small-KV one, ...), and N llama-servers running SmolLM2.

As a library (what the balancing benchmarks build on):

    with Pool.start([Sim("fast"), Sim("slow", "--step-base-us", "40000")], [Llama("l0")]) as pool:
        for e in pool.endpoints: ...   # e.name, e.kind, e.port, e.url, e.load()

As a command (`make bench-pools`), it starts the pool asked for, sends every endpoint the same
two chat completions sharing a long system prompt (the second finds it in the prefix cache),
prints each endpoint's time to first token for both and the load it reports on /metrics, and
stops everything:

    bench/pools.py --sim fast --sim slow:--step-base-us=40000 --sim small-kv:--kv-blocks=300 --llama 2

Every wait is bounded; every process started is stopped on exit, also on failure.
"""

import argparse
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "build" / "models" / "SmolLM2-135M-Instruct.Q4_1.gguf"
LLAMA = ROOT / "build" / "bin" / "llama-server"
# The simulator as the images ship it, else the host builds.
SIM_CANDIDATES = [
    ROOT / "target" / "x86_64-unknown-linux-musl" / "release" / "infermesh-model-server",
    ROOT / "target" / "release" / "infermesh-model-server",
    ROOT / "target" / "debug" / "infermesh-model-server",
]
# What each engine publishes about its load, by the names the sidecar will read (DESIGN: vLLM
# and llama.cpp metric names).
LOAD_METRICS = {
    "sim": ["vllm:num_requests_running", "vllm:num_requests_waiting", "vllm:kv_cache_usage_perc"],
    "llama": ["llamacpp:requests_processing", "llamacpp:requests_deferred"],
}
SYSTEM = " ".join(f"Rule {i}: answer briefly and politely, in plain words." for i in range(40))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class Sim:
    """An engine simulator named `name`, started with extra flags."""

    name: str
    flags: tuple = ()
    address: str = "127.0.0.1"
    port: int = 0  # 0: a free port
    env: dict = None  # extra environment (e.g. HOSTNAME, the pod name it reports)

    def __init__(self, name, *flags, address="127.0.0.1", port=0, env=None):
        self.name, self.flags = name, tuple(flags)
        self.address, self.port, self.env = address, port, env


@dataclass
class Llama:
    """A llama-server named `name`: `parallel` slots of `ctx / parallel` tokens, `threads`."""

    name: str
    parallel: int = 2
    ctx: int = 4096
    threads: int = 1
    address: str = "127.0.0.1"
    port: int = 0


@dataclass
class Endpoint:
    name: str
    kind: str
    port: int
    proc: subprocess.Popen = field(repr=False)
    log: Path = field(repr=False)
    host: str = "127.0.0.1"

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def metrics(self) -> str:
        with urllib.request.urlopen(self.url + "/metrics", timeout=5) as r:
            return r.read().decode()

    def load(self) -> dict:
        """The engine's own load figures (LOAD_METRICS), summed over label sets."""
        text, out = self.metrics(), {}
        for name in LOAD_METRICS[self.kind]:
            pat = re.compile(rf"^{re.escape(name)}(?:{{[^}}]*}})? (\S+)$", re.M)
            values = [float(v) for v in pat.findall(text)]
            out[name] = sum(values) if values else None
        return out


def simulator_binary(explicit=None) -> Path:
    for p in [Path(explicit)] if explicit else SIM_CANDIDATES:
        if p.is_file() and os.access(p, os.X_OK):
            return p
    sys.exit("no infermesh-model-server binary: cargo build --release -p infermesh-model-server, "
             "or pass --model-server PATH")


class Pool:
    """The endpoints started; a context manager that stops them all."""

    def __init__(self, endpoints, work):
        self.endpoints, self.work = endpoints, work

    @classmethod
    def start(cls, sims, llamas, model_server=None, ready_timeout=60.0):
        work = Path(tempfile.mkdtemp(prefix="infermesh-pool-"))
        pool = cls([], work)
        try:
            if sims:
                binary = simulator_binary(model_server)
            for s in sims:
                port = s.port or free_port()
                argv = [str(binary), "--address", s.address, "--port", str(port),
                        "--version", s.name, "--model", "pool", *s.flags]
                pool._spawn(s.name, "sim", port, argv, host=s.address, env=s.env)
            for l in llamas:
                if not (LLAMA.exists() and MODEL.exists()):
                    sys.exit("no llama-server or model in build/: run hack/llama-server.sh")
                port = l.port or free_port()
                argv = [str(LLAMA), "-m", str(MODEL), "--alias", "pool", "--host", l.address,
                        "--port", str(port), "--metrics", "-np", str(l.parallel),
                        "-c", str(l.ctx), "-t", str(l.threads)]
                pool._spawn(l.name, "llama", port, argv, host=l.address)
            deadline = time.monotonic() + ready_timeout
            for e in pool.endpoints:
                pool._wait_healthy(e, deadline)
        except BaseException:
            pool.stop()
            raise
        return pool

    def _spawn(self, name, kind, port, argv, host="127.0.0.1", env=None):
        log = self.work / f"{name}.log"
        with open(log, "wb") as f:
            proc = subprocess.Popen(argv, stdout=f, stderr=subprocess.STDOUT,
                                    env={**os.environ, **env} if env else None)
        self.endpoints.append(Endpoint(name, kind, port, proc, log, host))

    @staticmethod
    def _wait_healthy(e, deadline):
        while time.monotonic() < deadline:
            if e.proc.poll() is not None:
                raise RuntimeError(f"{e.name} exited ({e.proc.returncode}): {e.log.read_text()[-2000:]}")
            try:
                with urllib.request.urlopen(e.url + "/health", timeout=2) as r:
                    if r.status == 200:
                        return
            except OSError:
                pass
            time.sleep(0.1)
        raise RuntimeError(f"{e.name} not healthy in time: {e.log.read_text()[-2000:]}")

    def stop(self):
        for e in self.endpoints:
            if e.proc.poll() is None:
                e.proc.terminate()
        for e in self.endpoints:
            try:
                e.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                e.proc.kill()
                e.proc.wait(timeout=5)
        shutil.rmtree(self.work, ignore_errors=True)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.stop()


def ttft(e: Endpoint, question: str, max_tokens=8, timeout=120.0):
    """Streams one chat completion; returns (seconds to the first content event, usage)."""
    body = json.dumps({
        "model": "pool",
        "messages": [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}],
        "max_tokens": max_tokens, "temperature": 0, "stream": True,
        "stream_options": {"include_usage": True},
    }).encode()
    req = urllib.request.Request(e.url + "/v1/chat/completions", data=body,
                                 headers={"content-type": "application/json"})
    start, first, usage = time.monotonic(), None, None
    with urllib.request.urlopen(req, timeout=timeout) as r:
        for raw in r:
            line = raw.decode().strip()
            if not line.startswith("data:") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[5:])
            if chunk.get("usage"):
                usage = chunk["usage"]
            for c in chunk.get("choices", []):
                if first is None and (c.get("delta") or {}).get("content"):
                    first = time.monotonic() - start
    return first, usage


def parse_sim(spec: str) -> Sim:
    """`name[:--flag=value,--flag2=value]` (an `=` splits a flag from its value)."""
    name, _, rest = spec.partition(":")
    flags = []
    for f in filter(None, rest.split(",")):
        flags.extend(f.split("=", 1))
    return Sim(name, *flags)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--sim", action="append", default=[], metavar="NAME[:FLAGS]",
                   help="a simulator, e.g. slow:--step-base-us=40000 (repeatable)")
    p.add_argument("--llama", type=int, default=0, help="llama-servers to start (1 thread each)")
    p.add_argument("--model-server", help="the simulator binary (default: the workspace's build)")
    a = p.parse_args()
    sims = [parse_sim(s) for s in a.sim]
    llamas = [Llama(f"llama-{i}") for i in range(a.llama)]
    if not sims and not llamas:
        p.error("nothing to start: give --sim and/or --llama")
    with Pool.start(sims, llamas, a.model_server) as pool:
        print(f"{'endpoint':<12}{'kind':<7}{'port':>6}{'TTFT cold (s)':>15}{'TTFT cached (s)':>17}"
              f"{'cached tokens':>15}  load after")
        for e in pool.endpoints:
            cold, _ = ttft(e, "What is a service mesh?")
            warm, usage = ttft(e, "What is a load balancer?")
            cached = ((usage or {}).get("prompt_tokens_details") or {}).get("cached_tokens")
            fmt = lambda v: f"{v:.3f}" if v is not None else "-"  # noqa: E731
            load = {k.split(":")[1]: v for k, v in e.load().items()}
            print(f"{e.name:<12}{e.kind:<7}{e.port:>6}{fmt(cold):>15}{fmt(warm):>17}"
                  f"{str(cached):>15}  {json.dumps(load)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
