"""What OpenTelemetry traces cost per request: each traced hook against the same code with tracing off.

In one process and without kiln's sockets, each hook of kiln_platform/tracing.py runs ``--calls`` times with tracing
on (spans exported for real: OTLP/HTTP to a collector in a child process, which answers 200 to every POST) and the
same code with tracing off:

- router: the router's wrapper (:func:`kiln_platform.tracing.router_handler`) and the envelope stamp
  (:func:`envelope_traceparent`) around a bare handler; off: the bare handler;
- runtime: the runtime's span of a request (made and ended as the instance's loop does), naming the request's
  trace context for its thread and one API call's metadata (``kiln.api._rpc.metadata``); off: the metadata alone;
- grpc: the server span of one call (:func:`instrument_unary`) around a bare handler, continuing a traceparent from
  the call's metadata; off: the bare handler.

The figure is this process's CPU time (utime+stime of every thread, so the SDK's exporting thread and the HTTP POSTs
count) per call, the batches flushed every 500 calls (the SDK's batch is 512 spans) before the clock stops. Rounds
interleave on and off (each goes first every other round); figures are medians, ratios per round (on / off), then
their median. The load average at the start is printed. A request through kiln costs router + runtime + grpc × the
API calls it makes.

With ``--unsampled``, tracing is on but no request is sampled (the SDK's ``OTEL_TRACES_SAMPLER``): the cost of the
hooks for a request not recorded.

Usage::

    .venv/bin/python bench/traces_bench.py [--rounds 5] [--calls 3000] [--unsampled]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import re
import statistics
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kiln.api import _rpc
from kiln_platform import tracing
from kiln_platform.supervisor import free_port

PARENT = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
FLUSH_EVERY = 500
TICKS = os.sysconf("SC_CLK_TCK")
COLLECTOR = """
import http.server, sys
class H(http.server.BaseHTTPRequestHandler):
    def do_POST(self):
        self.rfile.read(int(self.headers['Content-Length']))
        self.send_response(200); self.send_header('Content-Length', '0'); self.end_headers()
    def log_message(self, *a): pass
http.server.ThreadingHTTPServer(('127.0.0.1', int(sys.argv[1])), H).serve_forever()
"""


class _Response:
    status = 200


class _Context:
    def code(self) -> None:
        return None

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return (("authorization", "Bearer token"), (tracing.TRACEPARENT, PARENT))


def hooks(tracer: tracing.Tracing | None) -> dict[str, Callable[[], Awaitable[Any]]]:
    """One call of each hook, traced by ``tracer`` (None: the same code with tracing off)."""
    from aiohttp.test_utils import make_mocked_request
    request = make_mocked_request("GET", "/")
    response, context = _Response(), _Context()

    async def routed(req: Any) -> Any:
        if tracer is not None:  # what Router.handle adds when tracing is on
            tracing.envelope_traceparent(req, "app", "v1")
        return response

    async def unary(req: Any, ctx: Any) -> Any:
        return response

    async def served() -> Any:
        if tracer is None:
            return _rpc.metadata()
        span, traceparent = tracer.runtime_span("GET", PARENT, "app", "v1", "instance", "request-id")
        _rpc.set_trace_parent(traceparent)
        found = _rpc.metadata()
        _rpc.set_trace_parent(None)
        tracer.end_runtime_span(span, 200)
        return found

    router = tracing.router_handler(routed, tracer, trust_client=False) if tracer is not None else routed
    grpc_call = (tracing.instrument_unary(unary, "/kiln.pb.memcache.v1.MemcacheService/Get", tracer)
                 if tracer is not None else unary)
    return {"router": lambda: router(request), "runtime": served, "grpc": lambda: grpc_call(None, context)}


def cpu_per_call(call: Callable[[], Awaitable[Any]], calls: int, tracer: tracing.Tracing | None) -> float:
    """Microseconds of this process's CPU per call, the spans' export included."""
    loop = asyncio.new_event_loop()
    try:
        start = time.process_time()
        done = 0
        while done < calls:
            chunk = min(FLUSH_EVERY, calls - done)
            loop.run_until_complete(_times(call, chunk))
            if tracer is not None:
                tracer.provider.force_flush()
            done += chunk
        return (time.process_time() - start) / calls * 1e6
    finally:
        loop.close()


async def _times(call: Callable[[], Awaitable[Any]], n: int) -> None:
    for _ in range(n):
        await call()


def wrk(url: str, seconds: int) -> float:
    done = subprocess.run(["wrk", "-t1", "-c8", f"-d{seconds}s", url], capture_output=True, text=True, check=True)
    match = re.search(r"Requests/sec:\s+([\d.]+)", done.stdout)
    assert match, done.stdout
    return float(match.group(1))


def cpu_seconds(pids: list[int]) -> float:
    total = 0.0
    for pid in pids:
        fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
        total += (int(fields[11]) + int(fields[12])) / TICKS  # utime, stime
    return total


def instances_of(manager_pid: int) -> list[int]:
    """The runtime instances under an instance manager (its descendants running ``-m runtime``)."""
    found, todo = [], [manager_pid]
    while todo:
        pid = todo.pop()
        children = pathlib.Path(f"/proc/{pid}/task/{pid}/children")
        for child in map(int, children.read_text().split()) if children.exists() else ():
            argv = pathlib.Path(f"/proc/{child}/cmdline").read_bytes().split(b"\0")
            if b"runtime" in argv and b"-m" in argv:
                found.append(child)
            todo.append(child)
    return found


def e2e_rounds(rounds: int, seconds: int, endpoint: str) -> None:
    """Two kiln dev stacks of bench/hello, one tracing to ``endpoint``, loaded alternately by wrk: the router's and
    the instance's CPU µs per request."""
    from deploy.dev import DevOptions, DevServer
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="traces-bench-"))
    stacks: dict[str, DevServer] = {}
    try:
        for name, otlp in (("traced", endpoint), ("plain", "")):
            srv = DevServer(DevOptions(app_dir=ROOT / "bench" / "hello", port=0, data_dir=tmp / name,
                                       otlp_endpoint=otlp))
            srv.start()
            stacks[name] = srv
        pids = {}
        for name, srv in stacks.items():
            children = {c.name: c.proc.pid for c in srv.supervisor.children}
            wrk(srv.url, 1)  # warm (and the instance started)
            pids[name] = {"router": [children["router"]], "runtime": instances_of(children["manager"])}
        rows = []
        for i in range(rounds):
            row: dict[str, float] = {}
            for name, srv in sorted(stacks.items(), reverse=i % 2 == 1):  # each goes first every other round
                before = {part: cpu_seconds(p) for part, p in pids[name].items()}
                rate = wrk(srv.url, seconds)
                for part, p in pids[name].items():
                    row[f"{part} {name}"] = (cpu_seconds(p) - before[part]) / (rate * seconds) * 1e6
                row[f"rps {name}"] = rate
            rows.append(row)
            print(f"round {i + 1}: " + ", ".join(f"{k} {v:.1f}" for k, v in sorted(row.items())) + "; ratios " +
                  ", ".join(f"{part} x{row[f'{part} traced'] / row[f'{part} plain']:.2f}"
                            for part in ("router", "runtime", "rps")))
        print("\nkiln dev, bench/hello, wrk -c8: median CPU µs per request (rps: requests/s)")
        for key in sorted(rows[0]):
            print(f"  {key}: {statistics.median(r[key] for r in rows):.1f}")
        for part in ("router", "runtime", "rps"):
            ratio = statistics.median(r[f"{part} traced"] / r[f"{part} plain"] for r in rows)
            print(f"  median ratio traced/plain, {part}: x{ratio:.2f}")
    finally:
        for srv in stacks.values():
            srv.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--unsampled", action="store_true",
                        help="tracing on, no request sampled (OTEL_TRACES_SAMPLER=parentbased_traceidratio, ratio 0; "
                             "the callers' traceparent not sampled): what tracing costs a request it does not record")
    parser.add_argument("--e2e", action="store_true",
                        help="instead: two kiln dev stacks of bench/hello, one tracing, loaded alternately by wrk "
                             "(router and instance CPU per request)")
    parser.add_argument("--seconds", type=int, default=3, help="--e2e: wrk seconds per stack per round")
    args = parser.parse_args()
    global PARENT
    if args.unsampled:
        os.environ["OTEL_TRACES_SAMPLER"] = "parentbased_traceidratio"
        os.environ["OTEL_TRACES_SAMPLER_ARG"] = "0"
        PARENT = PARENT[:-2] + "00"
    print(f"load average at start: {os.getloadavg()[0]:.2f}")
    port = free_port()
    collector = subprocess.Popen([sys.executable, "-c", COLLECTOR, str(port)])
    os.environ["KILN_APP_TOKEN"] = "token"
    try:
        deadline = time.monotonic() + 30
        while True:  # until the collector listens
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or collector.poll() is not None:
                    raise SystemExit("the OTLP collector did not start listening within 30 s") from None
                time.sleep(0.05)
        if args.e2e:
            e2e_rounds(args.rounds, args.seconds, f"http://127.0.0.1:{port}")
            return
        tracer = tracing.Tracing(f"http://127.0.0.1:{port}", "kiln-bench")
        on, off = hooks(tracer), hooks(None)
        for name in on:  # warm up: imports, first connection
            cpu_per_call(on[name], 200, tracer)
            cpu_per_call(off[name], 200, None)
        figures: dict[str, dict[str, list[float]]] = {name: {"on": [], "off": []} for name in on}
        for round_no in range(args.rounds):
            for name in on:
                order = [("on", on, tracer), ("off", off, None)]
                if round_no % 2:
                    order.reverse()
                for label, table, used in order:
                    figures[name][label].append(cpu_per_call(table[name], args.calls, used))
            print(f"round {round_no + 1}: " + "  ".join(
                f"{name} on {f['on'][-1]:.1f} off {f['off'][-1]:.1f} µs (x{f['on'][-1] / f['off'][-1]:.1f})"
                for name, f in figures.items()))
        print("\nmedian CPU µs per call (this process, export included):")
        total = 0.0
        for name, f in figures.items():
            ratios = [a / b for a, b in zip(f["on"], f["off"])]
            added = statistics.median(f["on"]) - statistics.median(f["off"])
            total += added
            print(f"  {name:8s} on {statistics.median(f['on']):7.1f}  off {statistics.median(f['off']):6.1f}  "
                  f"added {added:6.1f}  median ratio x{statistics.median(ratios):.1f}")
        print(f"  a request with one API call: +{total:.1f} µs of CPU across router, runtime and one service")
        tracer.close()
    finally:
        collector.terminate()
        collector.wait()


if __name__ == "__main__":
    main()
