"""What Prometheus metrics cost per request: each metered part against the same part with metrics off.

Three measures, in one run:

1. the hooks alone, in-process and without sockets: the router's wrapper (:func:`kiln_platform.metrics.router_handler`
   plus the one label assignment in ``Router.handle``) and the gRPC wrapper (:func:`instrument_unary`), as
   CPU nanoseconds per call over a bare coroutine, by ``timeit`` (best of 5);
2. gRPC: two memcache_svc processes, one with ``--metrics-listen``, driven alternately round by round with the
   same unary ``Get`` calls; the server's CPU microseconds per call (utime+stime from /proc before/after);
3. the router: two ``kiln dev`` stacks of bench/hello (one with ``--metrics-port``, started first), loaded
   alternately by ``wrk``; the router's CPU microseconds per request, and requests/s.

Rounds interleave the two configurations; figures are medians, ratios per round (metered / plain), then their
median. The load average at the start is printed.

Usage::

    .venv/bin/python bench/metrics_bench.py [--rounds 3] [--calls 3000] [--seconds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import re
import statistics
import subprocess
import sys
import tempfile
import time
import timeit
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from deploy.dev import DevOptions, DevServer  # noqa: E402
from kiln.pb.memcache.v1 import memcache_pb2, memcache_pb2_grpc  # noqa: E402
from kiln_platform import auth, metrics  # noqa: E402
from kiln_platform.supervisor import Supervisor, free_port, python_module  # noqa: E402

SECRET = "bench-secret"
TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime


# ------------------------------------------------------------------ 1. the hooks alone

class _Response:
    status = 200


class _Context:
    def code(self) -> None:
        return None


def hook_costs(metrics: Any = metrics) -> dict[str, float]:
    """Nanoseconds per call each wrapper adds over the bare coroutine."""
    from aiohttp.test_utils import make_mocked_request
    request = make_mocked_request("GET", "/")
    response = _Response()

    async def handle(req: Any) -> Any:
        req[metrics.VERSION_KEY] = ("app", "v1")  # what Router.handle adds when metrics are on
        return response

    async def bare_handle(req: Any) -> Any:
        return response

    async def unary(req: Any, ctx: Any) -> Any:
        return response

    measured = metrics.router_handler(handle, metrics.RouterMetrics())
    instrumented = metrics.instrument_unary(unary, "/bench.Service/Method")
    context = _Context()

    def drive(coro: Any) -> None:
        try:
            coro.send(None)
        except StopIteration:
            pass

    n = 100_000
    runs = {
        "router plain": lambda: drive(bare_handle(request)),
        "router metered": lambda: drive(measured(request)),
        "grpc plain": lambda: drive(unary(request, context)),
        "grpc metered": lambda: drive(instrumented(request, context)),
    }
    # CPU time, not wall time: on a shared machine the wall clock counts other processes' turns too.
    ns = {name: min(timeit.repeat(fn, number=n, repeat=5, timer=time.process_time)) / n * 1e9
          for name, fn in runs.items()}
    return {"router hook ns": ns["router metered"] - ns["router plain"],
            "grpc hook ns": ns["grpc metered"] - ns["grpc plain"]}


# ------------------------------------------------------------------ 2. gRPC

def grpc_rounds(sup: Supervisor, rounds: int, calls: int) -> list[dict[str, float]]:
    env = {**os.environ, "KILN_MEMCACHE_SERVICE_SECRET": SECRET}
    servers = {}
    for name, extra in (("plain", []), ("metered", ["--metrics-listen", f"127.0.0.1:{free_port()}"])):
        ready = sup.run_dir / f"memcache-{name}.addr"
        servers[name] = sup.start(f"memcache-{name}", python_module(
            "memcache_svc", "--listen", "127.0.0.1:0", "--ready-file", str(ready), *extra), env=env, ready_file=ready)
    metadata = (("authorization", f"Bearer {auth.mint_app_token(SECRET, 'bench')}"),)
    stubs = {name: memcache_pb2_grpc.MemcacheServiceStub(grpc.insecure_channel(child.address))
             for name, child in servers.items()}
    request = memcache_pb2.GetRequest(keys=[b"k"])
    for stub in stubs.values():
        for _ in range(200):  # warm: channels connected, handlers wrapped
            stub.Get(request, metadata=metadata)
    out = []
    for i in range(rounds):
        row = {}
        for name, stub in sorted(stubs.items(), reverse=i % 2 == 1):  # each goes first every other round
            pid = servers[name].proc.pid
            before = cpu_seconds(pid)
            for _ in range(calls):
                stub.Get(request, metadata=metadata)
            row[name] = (cpu_seconds(pid) - before) / calls * 1e6
        out.append(row)
    return out


# ------------------------------------------------------------------ 3. the router

def wrk(url: str, seconds: int) -> float:
    done = subprocess.run(["wrk", "-t1", "-c8", f"-d{seconds}s", url], capture_output=True, text=True, check=True)
    match = re.search(r"Requests/sec:\s+([\d.]+)", done.stdout)
    assert match, done.stdout
    return float(match.group(1))


def router_rounds(rounds: int, seconds: int) -> list[dict[str, float]]:
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="metrics-bench-"))
    stacks = {}
    try:
        for name, port in (("metered", 0), ("plain", None)):
            srv = DevServer(DevOptions(app_dir=ROOT / "bench" / "hello", port=0, data_dir=tmp / name,
                                       metrics_port=port))
            srv.start()
            stacks[name] = srv
        routers = {name: next(c for c in srv.supervisor.children if c.name == "router").proc.pid
                   for name, srv in stacks.items()}
        for srv in stacks.values():
            wrk(srv.url, 1)  # warm
        out = []
        for i in range(rounds):
            row = {}
            for name, srv in sorted(stacks.items(), reverse=i % 2 == 1):  # each goes first every other round
                before = cpu_seconds(routers[name])
                rate = wrk(srv.url, seconds)
                row[name] = (cpu_seconds(routers[name]) - before) / (rate * seconds) * 1e6
                row[name + " rps"] = rate
            out.append(row)
        return out
    finally:
        for srv in stacks.values():
            srv.stop()


def summary(title: str, rows: list[dict[str, float]], unit: str) -> None:
    print(f"\n{title}")
    for i, row in enumerate(rows, 1):
        cells = ", ".join(f"{k} {row[k]:.1f}" for k in sorted(row))
        print(f"  round {i}: {cells}; ratio metered/plain {row['metered'] / row['plain']:.3f}")
    for key in rows[0]:
        print(f"  median {key}: {statistics.median(r[key] for r in rows):.1f} {'' if 'rps' in key else unit}")
    print(f"  median of ratios: {statistics.median(r['metered'] / r['plain'] for r in rows):.3f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--calls", type=int, default=3000, help="gRPC calls per server per round")
    parser.add_argument("--seconds", type=int, default=3, help="wrk seconds per router per round")
    parser.add_argument("--only", choices=("hooks", "grpc", "router"), help="one measure only")
    args = parser.parse_args()
    print("load average at start:", " ".join(pathlib.Path("/proc/loadavg").read_text().split()[:3]))
    if args.only in (None, "hooks"):
        for name, ns in hook_costs().items():
            print(f"{name} (CPU added per call, in-process, best of 5): {ns:.0f}")
    if args.only in (None, "grpc"):
        sup = Supervisor(pathlib.Path(tempfile.mkdtemp(prefix="metrics-bench-run-")))
        try:
            summary("memcache_svc Get: server CPU µs per call", grpc_rounds(sup, args.rounds, args.calls), "µs")
        finally:
            sup.stop_all()
    if args.only in (None, "router"):
        summary("router (kiln dev, bench/hello, wrk -c8): router CPU µs per request",
                router_rounds(args.rounds, args.seconds), "µs")


if __name__ == "__main__":
    asyncio.set_event_loop(asyncio.new_event_loop())
    main()
