"""The router alone: instructions and CPU per request, with a fixed responder in place of the runtime.

It starts nats-server (JetStream on, for the request-log stream), a responder
that answers every HTTP request of the benchmark's hello app with the same
``HttpResponse`` a runtime sends for it, and ``python -m router`` from one or
more source trees (``--tree``: e.g. this branch and ``main``, to compare
before and after in the same run). Then, per tree:

- ``--mode callgrind``: the router runs under ``valgrind --tool=callgrind``
  with instrumentation off until warmed up; for each ``--path``, counters are
  zeroed, ``--requests`` sequential requests are sent on one kept-alive
  connection, and the dump's instructions per request are printed (the dumps
  are kept in ``--out`` for ``callgrind_annotate``);
- ``--mode cpu``: ``wrk`` at ``--connections`` for ``--seconds``, rounds
  interleaved between trees; the router's CPU (utime+stime from /proc, and the
  system part) per request, medians and the ratio per round;
- ``--mode pyspy``: as ``cpu``, with ``py-spy`` (``.venv/bin/pip install
  py-spy``) sampling the first round; prints each function's inclusive and own
  share of the samples (wall time of a running thread: a system call waiting
  for the CPU counts as long as it waits);
- ``--mode cprofile``: as ``cpu`` under cProfile, the top functions by own time, then every function's own time
  per request summed into the router's steps (:func:`_breakdown`; built-ins counted with their callers);
- ``--mode latency``: ``wrk``'s p50 at one connection, rounds interleaved, and
  in each round the p50 of a nats-py client asking the responder directly
  (the round trip through NATS that no router can avoid), and the difference.

``--path`` picks the request (``/`` goes to the responder, ``/static/page.html``
never leaves the router); ``callgrind`` takes several.

Usage::

    .venv/bin/python bench/router_profile.py --mode callgrind --tree . --tree ../main --path / \
        --path /static/page.html --requests 300
"""

from __future__ import annotations

import argparse
import http.client
import os
import pathlib
import pstats
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kiln_platform.supervisor import free_port, port_open  # noqa: E402

APP = ROOT / "bench" / "hello"
RESPONDER = r"""
import asyncio, sys
import nats
from kiln.pb.runtime.v1 import http_pb2

async def main():
    nc = await nats.connect(sys.argv[1])
    resp = http_pb2.HttpResponse(status=200, body=b"Hello world!", instance_id="bench-instance", cpu_micros=100)
    resp.headers.add(name="Content-Type", value=b"text/plain")
    resp.headers.add(name="Content-Length", value=b"12")
    data = resp.SerializeToString()

    async def answer(msg):
        await nc.publish(msg.reply, data)

    await nc.subscribe("kiln.http.hello.v1", queue="kiln.http.hello.v1", cb=answer)
    await nc.flush()
    print("ready", flush=True)
    await asyncio.Event().wait()

asyncio.run(main())
"""

NATS_ALONE = r"""
import asyncio, statistics, sys, time
import nats
from kiln.pb.runtime.v1 import http_pb2

async def main():
    nc = await nats.connect(sys.argv[1])
    data = http_pb2.HttpRequest(request_id="0" * 32, app_id="hello", version_id="v1", method="GET", path="/",
                                protocol="HTTP/1.1").SerializeToString()
    for _ in range(100):
        await nc.request("kiln.http.hello.v1", data, timeout=10)
    times = []
    deadline = time.monotonic() + float(sys.argv[2])
    while time.monotonic() < deadline:
        start = time.perf_counter()
        await nc.request("kiln.http.hello.v1", data, timeout=10)
        times.append(time.perf_counter() - start)
    print(statistics.median(times) * 1e3)
    await nc.close()

import uvloop
uvloop.run(main())
"""


def _wait(predicate: object, what: str, seconds: float = 60) -> None:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        if predicate():  # type: ignore[operator]
            return
        time.sleep(0.05)
    raise RuntimeError(f"{what} did not happen within {seconds} s")


def _cpu(pid: int) -> tuple[float, float]:
    """User and system CPU seconds of ``pid`` so far."""
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    tick = os.sysconf("SC_CLK_TCK")
    return int(fields[11]) / tick, int(fields[12]) / tick


class Router:
    """``python -m router`` from ``tree``, serving the hello app, optionally under valgrind or cProfile."""

    def __init__(self, tree: pathlib.Path, nats_url: str, tmp: pathlib.Path, *, wrap: str) -> None:
        self.tree = tree
        self.port = free_port()
        self.out = tmp / f"router-{self.port}"
        cmd = [sys.executable]
        if wrap == "cprofile":
            cmd += ["-m", "cProfile", "-o", f"{self.out}.prof"]
        cmd += ["-m", "router", "--listen", f"127.0.0.1:{self.port}", "--dev-app", "hello=v1",
                "--app-dirs", f"hello/v1={APP}", "--log-level", "WARNING"]
        if wrap == "callgrind":
            cmd = ["valgrind", "--tool=callgrind", "--instr-atstart=no", f"--callgrind-out-file={self.out}.cg",
                   *cmd]
        env = {**os.environ, "KILN_ROUTER_NATS_URL": nats_url, "KILN_ROUTER_SESSION_SECRET": "s" * 32,
               "KILN_ROUTER_PLATFORM_SECRET": "p" * 32, "KILN_ROUTER_INBOUND_SECRET": "i" * 32,
               "PYTHONPATH": str(tree)}
        self.proc = subprocess.Popen(cmd, cwd=tree, env=env, stdout=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL if wrap == "callgrind" else None)
        _wait(lambda: port_open("127.0.0.1", self.port), f"router from {tree} listening", 600)
        self.url = f"http://127.0.0.1:{self.port}"

    def sequential(self, path: str, count: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
        for _ in range(count):
            conn.request("GET", path, headers={"User-Agent": "bench", "Accept": "*/*"})
            resp = conn.getresponse()
            resp.read()
            if resp.status != 200:
                raise RuntimeError(f"router from {self.tree} answered {resp.status}")
        conn.close()

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        self.proc.wait(60)


def _wrk(url: str, connections: int, seconds: int) -> float:
    out = subprocess.run(["wrk", f"-t{min(2, connections)}", f"-c{connections}", f"-d{seconds}s", url],
                         capture_output=True, text=True, check=True).stdout
    if "Non-2xx" in out:
        raise RuntimeError(f"errors from {url}: {out}")
    return float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]


def _mkdir(path: pathlib.Path) -> pathlib.Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def _summarise(raw: pathlib.Path, top: int = 60) -> None:
    """Inclusive and own share of samples per function, from py-spy's collapsed stacks."""
    inclusive: dict[str, int] = {}
    own: dict[str, int] = {}
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        frames = [re.sub(r" \((?:/[^)]*/)?([^/)]+)\)$", r" (\1)", f) for f in stack.split(";")]
        n = int(count)
        total += n
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + n
        own[frames[-1]] = own.get(frames[-1], 0) + n
    print(f"--- {raw.name}: {total} samples; inclusive %, own %")
    for frame, n in sorted(inclusive.items(), key=lambda kv: -kv[1])[:top]:
        print(f"{n / total * 100:6.1f} {own.get(frame, 0) / total * 100:6.1f}  {frame[:150]}")


# The router's steps, by where a function lives: the first (file part, function name or "") that matches wins.
_STEPS: list[tuple[str, str, str]] = [
    ("logship.py", "", "request log: shipping (router/logship.py: batch, publish, PING, ack)"),
    ("app.py", "_publish_log", "request log: the record (Router._publish_log)"),
    ("asyncio/tasks.py", "shield", "request log: waiting for it (asyncio.shield)"),
    ("asyncio/streams.py", "", "nats: socket writes (nats-py's StreamWriter)"),
    ("nats/aio/client.py", "_flusher", "nats: flusher task"),
    ("nats/", "", "nats-py: publish, parse, dispatch of replies and acks"),
    ("asyncio/queues.py", "", "nats-py: subscription queues (asyncio.Queue)"),
    ("router/replies.py", "", "nats request-reply (router/replies.py)"),
    ("http_writer.py", "_writelines", "http: socket writes (aiohttp)"),
    ("router/connections.py", "", "http: connection timers and tracking (router/connections.py)"),
    ("aiohttp/", "", "http: aiohttp server (protocol, request, response objects)"),
    ("multidict", "", "http: aiohttp server (protocol, request, response objects)"),
    ("yarl", "", "http: aiohttp server (protocol, request, response objects)"),
    ("router/responses.py", "", "kiln rules: response build (router/responses.py)"),
    ("httpfields.py", "", "kiln rules: response build (router/responses.py)"),
    ("app.py", "_envelope", "kiln rules: envelope and header rules"),
    ("router/headers.py", "", "kiln rules: envelope and header rules"),
    ("router/cookies.py", "", "kiln rules: envelope and header rules"),
    ("app.py", "_encoded", "kiln rules: envelope and header rules"),
    ("router/", "", "kiln rules: the rest (Host, routing, handler, login, caller checks, glue in handle)"),
    ("kiln_platform/", "", "kiln rules: the rest (Host, routing, handler, login, caller checks, glue in handle)"),
    ("asyncio/runners.py", "", "event loop (uvloop's C: epoll, reads, callbacks, task steps)"),
    ("asyncio/", "", "asyncio (futures, tasks, events)"),
]


def _step(func: tuple[str, int, str]) -> str | None:
    path, _, name = func
    for part, function, step in _STEPS:
        if part in path and (not function or name.startswith(function)):
            return step
    return None


def _breakdown(stats: pstats.Stats) -> None:
    """Own time of every function per request (cProfile's inflated µs, and each step's share), summed into the
    router's steps. A built-in's time is split over its callers (by the time each call site spent in it) and
    counted with theirs; functions that belong to no step (imports, start-up) are left out."""
    table: dict[Any, Any] = stats.stats  # type: ignore[attr-defined]
    requests = sum(v[1] for k, v in table.items() if k[2] == "_publish_log")
    steps: dict[str, float] = {}
    for func, (_, _, own, _, callers) in table.items():
        step = _step(func)
        if step is not None:
            steps[step] = steps.get(step, 0.0) + own
            continue
        if func[0] != "~":
            continue
        for caller, (_, _, spent, _) in callers.items():
            step = _step(caller)
            if step is not None:
                steps[step] = steps.get(step, 0.0) + spent
    total = sum(steps.values())
    print(f"--- own time per request under cProfile ({requests} requests), by step; share of the total")
    for step, seconds in sorted(steps.items(), key=lambda kv: -kv[1]):
        print(f"{seconds / requests * 1e6:8.1f} us {seconds / total * 100:5.1f} %  {step}")
    print(f"{total / requests * 1e6:8.1f} us 100.0 %  in all")


def _latency(routers: list[Router], args: argparse.Namespace, nats_url: str) -> int:
    """wrk's p50 at one connection, per tree, rounds interleaved; with, in each round, the p50 of the same
    responder asked directly by a nats-py client (the NATS round trip the router cannot avoid)."""
    found: dict[pathlib.Path, list[float]] = {r.tree: [] for r in routers}
    alone: list[float] = []
    for router in routers:
        router.sequential(args.path[0], 100)
    for number in range(args.rounds):
        out = subprocess.run([sys.executable, "-c", NATS_ALONE, nats_url, str(args.seconds)], capture_output=True,
                             text=True, check=True, env={**os.environ, "PYTHONPATH": str(ROOT)}).stdout
        alone.append(float(out))
        for router in (routers if number % 2 == 0 else list(reversed(routers))):
            out = subprocess.run(["wrk", "-t1", "-c1", f"-d{args.seconds}s", "--latency", router.url + args.path[0]],
                                 capture_output=True, text=True, check=True).stdout
            value, unit = re.search(r"\s50%\s+([\d.]+)(us|ms|s)\b", out).groups()  # type: ignore[union-attr]
            found[router.tree].append(float(value) * {"us": 1e-3, "ms": 1.0, "s": 1e3}[unit])
        print(f"round {number + 1}: nats request alone {alone[-1]:.3f} ms  "
              + "  ".join(f"{t}: {v[-1]:.3f} ms" for t, v in found.items()), flush=True)
    print(f"nats-py request to the responder alone: p50 {statistics.median(alone):.3f} ms "
          f"(rounds: {' '.join(f'{v:.3f}' for v in alone)})")
    for tree, values in found.items():
        added = [v - a for v, a in zip(values, alone)]
        print(f"{tree}: p50 at one connection {statistics.median(values):.3f} ms "
              f"(rounds: {' '.join(f'{v:.3f}' for v in values)}); over the request alone "
              f"{statistics.median(added):+.3f} ms (rounds: {' '.join(f'{a:+.3f}' for a in added)})")
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--mode", choices=("callgrind", "cpu", "cprofile", "pyspy", "latency"), default="cpu")
    parser.add_argument("--tree", type=pathlib.Path, action="append", help="source tree(s) of the router")
    parser.add_argument("--path", action="append", help="request path(s); default /")
    parser.add_argument("--requests", type=int, default=300, help="sequential requests counted (callgrind)")
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--out", type=pathlib.Path, default=None, help="keep callgrind/cProfile files here")
    args = parser.parse_args()
    args.path = args.path or ["/"]
    trees = [t.resolve() for t in (args.tree or [ROOT])]
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="kiln-router-profile-"))
    load = pathlib.Path("/proc/loadavg").read_text().split()[:3]
    nats_port = free_port()
    nats_url = f"nats://127.0.0.1:{nats_port}"
    bindir = pathlib.Path(sys.executable).parent
    nats_cmd = [str(bindir / "nats-server"), "-a", "127.0.0.1", "-p", str(nats_port), "-js", "-sd", str(tmp / "js")]
    procs: list[subprocess.Popen[Any]] = [subprocess.Popen(nats_cmd, stdout=subprocess.DEVNULL,
                                                           stderr=subprocess.DEVNULL)]
    routers: list[Router] = []
    try:
        _wait(lambda: port_open("127.0.0.1", nats_port), "nats-server listening")
        responder = subprocess.Popen([sys.executable, "-c", RESPONDER, nats_url], stdout=subprocess.PIPE, text=True,
                                     env={**os.environ, "PYTHONPATH": str(ROOT)})
        procs.append(responder)
        assert responder.stdout is not None
        responder.stdout.readline()
        routers = [Router(t, nats_url, tmp, wrap="callgrind" if args.mode == "callgrind" else
                          "cprofile" if args.mode == "cprofile" else "") for t in trees]
        print(f"router profile: {args.mode}, paths {' '.join(args.path)}, load average at start {' '.join(load)}")
        if args.mode == "callgrind":
            found: dict[pathlib.Path, list[str]] = {}
            for router in routers:
                pid = str(router.proc.pid)
                subprocess.run(["callgrind_control", "-i", "on", pid], check=True, capture_output=True)
                found[router.tree] = []
                for path in args.path:
                    router.sequential(path, 100)  # warm up (imports, caches, the reply subscription)
                    subprocess.run(["callgrind_control", "-z", pid], check=True, capture_output=True)
                    router.sequential(path, args.requests)
                    dumps = set(tmp.glob(f"{router.out.name}.cg.*"))
                    subprocess.run(["callgrind_control", "-d", pid], check=True, capture_output=True)
                    (dump,) = set(tmp.glob(f"{router.out.name}.cg.*")) - dumps
                    match = re.search(r"^totals: (\d+)", dump.read_text(errors="replace"), re.M)
                    total = int(match.group(1)) if match else 0
                    if args.out:
                        name = f"{router.tree.name}-{path.strip('/').replace('/', '_')}.cg"
                        shutil.copy(dump, _mkdir(args.out) / name)
                    found[router.tree].append(f"{path} {total / args.requests / 1e6:.3f} M")
            for tree, lines in found.items():
                print(f"{tree}: instructions per request ({args.requests} sequential): {'; '.join(lines)}")
            return 0
        if args.mode == "latency":
            return _latency(routers, args, nats_url)
        per: dict[pathlib.Path, list[float]] = {r.tree: [] for r in routers}
        system: dict[pathlib.Path, list[float]] = {r.tree: [] for r in routers}
        for router in routers:
            _wrk(router.url + args.path[0], args.connections, 2)  # warm up
        for number in range(args.rounds):
            order = routers if number % 2 == 0 else list(reversed(routers))
            for router in order:
                before = _cpu(router.proc.pid)
                spy = None
                if args.mode == "pyspy" and number == 0:
                    raw = _mkdir(args.out or tmp) / f"{router.tree.name}.txt"
                    spy = subprocess.Popen([str(pathlib.Path(sys.executable).with_name("py-spy")), "record",
                                            "-r", "400", "-f", "raw", "-o", str(raw),
                                            "-d", str(args.seconds), "--pid", str(router.proc.pid)],
                                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
                rps = _wrk(router.url + args.path[0], args.connections, args.seconds)
                if spy is not None:
                    spy.wait()
                after = _cpu(router.proc.pid)
                per[router.tree].append((sum(after) - sum(before)) / (rps * args.seconds) * 1e6)
                system[router.tree].append((after[1] - before[1]) / (rps * args.seconds) * 1e6)
            print(f"round {number + 1}: " + "  ".join(f"{t}: {v[-1]:.0f} us" for t, v in per.items()), flush=True)
        for tree, values in per.items():
            print(f"{tree}: router CPU per request at {args.connections} connections: "
                  f"{statistics.median(values):.0f} us (rounds: {' '.join(f'{v:.0f}' for v in values)}), of which "
                  f"system {statistics.median(system[tree]):.0f} us")
        if len(trees) == 2:
            ratios = [a / b for a, b in zip(per[trees[0]], per[trees[1]])]
            print(f"{trees[0].name}/{trees[1].name}: {statistics.median(ratios):.2f}x "
                  f"(rounds: {' '.join(f'{r:.2f}' for r in ratios)})")
        if args.mode == "pyspy":
            for router in routers:
                _summarise((args.out or tmp) / f"{router.tree.name}.txt")
        if args.mode == "cprofile":
            for router in routers:
                router.stop()
                print(f"--- {router.tree}")
                pstats.Stats(f"{router.out}.prof").sort_stats("tottime").print_stats(45)
                _breakdown(pstats.Stats(f"{router.out}.prof"))
                if args.out:
                    shutil.copy(f"{router.out}.prof", _mkdir(args.out) / f"{router.tree.name}.prof")
            routers = []
        return 0
    finally:
        for router in routers:
            router.stop()
        for proc in reversed(procs):
            proc.terminate()
            proc.wait()
        shutil.rmtree(tmp, ignore_errors=True)


if __name__ == "__main__":
    raise SystemExit(main())
