"""HTTP benchmark: a hello-world WSGI app through kiln against the same app under gunicorn.

In one run on one machine, with the same load generator (``wrk``) and the
same connections, it measures, like with like (the same number of serving
processes): kiln with ``router --workers 2`` (router -> NATS -> runtime,
started by ``kiln dev`` machinery, one runtime instance) against gunicorn's
sync workers (2 workers), plus kiln with one router process as a row:

- ``/`` at 32 connections: requests/s and p50/p99 latency, and their ratios;
- ``/`` at one connection: p50, and kiln's added p50;
- a static file served by kiln's router against the same file returned by the
  app under gunicorn (gunicorn has no static handler);
- CPU microseconds per request of each kiln process on the request's path
  (router with its workers, runtime instance, nats-server, and logs_svc, which
  stores the request log) at 32 connections, from /proc (utime+stime
  before/after), and gunicorn's (master and workers);
- the CPU per request of the serving processes for the static file (kiln's
  router, gunicorn) and their ratio: on a machine shared with other load,
  requests/s follow how the scheduler shares the cores, while CPU per request
  says what each request costs;
- with ``--prototype DIR`` (the throwaway router -> NATS -> worker prototype,
  not part of kiln, run from its own directory): the same rows for it, as a
  yardstick of what the architecture alone costs.

Rounds interleave every configuration; figures are medians, ratios are per
round (then their median, min-max). The load average at the start is printed.

Usage::

    .venv/bin/python bench/http_bench.py [--seconds 5] [--rounds 3] [--prototype DIR]

Needs ``wrk`` (Debian package ``wrk``) and ``gunicorn`` (``pip install -e .[bench]``).
"""

from __future__ import annotations

import argparse
import os
import pathlib
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Callable

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deploy.dev import DevOptions, DevServer  # noqa: E402
from kiln_platform.supervisor import free_port, port_open  # noqa: E402

APP = ROOT / "bench" / "hello"
_UNITS = {"us": 1e-3, "ms": 1.0, "s": 1000.0}


def wrk(url: str, connections: int, seconds: int) -> dict[str, float]:
    """Run wrk; return requests/s, p50 and p99 in ms."""
    threads = min(2, connections)
    out = subprocess.run(["wrk", f"-t{threads}", f"-c{connections}", f"-d{seconds}s", "--latency", url],
                         capture_output=True, text=True, check=True).stdout
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    latency = {}
    for pct in ("50", "99"):
        value, unit = re.search(rf"\s{pct}%\s+([\d.]+)(us|ms|s)\b", out).groups()  # type: ignore[union-attr]
        latency[pct] = float(value) * _UNITS[unit]
    errors = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
    if errors:
        raise RuntimeError(f"wrk saw {errors.group(1)} error responses from {url}")
    return {"rps": rps, "p50": latency["50"], "p99": latency["99"]}


def _cpu_seconds(pid: int) -> float:
    """User + system CPU so far of a process and every process below it (an instance is its wrapper, the
    wrapper's init in the instance's PID namespace, and the runtime under that)."""
    stats = {}
    for entry in pathlib.Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue  # gone meanwhile
            stats[int(entry.name)] = (int(fields[1]), int(fields[11]) + int(fields[12]))
    tree = {pid}
    for _ in range(len(stats)):  # parents before children, however the pids were numbered
        grown = {p for p, (parent, _) in stats.items() if parent in tree} - tree
        if not grown:
            break
        tree |= grown
    ticks = sum(stats[p][1] for p in tree if p in stats)
    return ticks / os.sysconf("SC_CLK_TCK")


def wait_http(url: str) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if resp.status == 200:
                    return
        except OSError:
            time.sleep(0.1)
    raise RuntimeError(f"{url} did not answer")


def wrk_args(doc: str | None, extra: Callable[[argparse.ArgumentParser], None] | None = None,
             ) -> argparse.Namespace | None:
    """``--seconds``/``--rounds`` of a wrk benchmark; None (after saying why) when wrk is missing."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="duration of each wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    if extra is not None:
        extra(parser)
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return None
    return args


def _options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--workers", type=int, default=2, help="kiln router workers and gunicorn workers")
    parser.add_argument("--prototype", type=pathlib.Path, default=None,
                        help="directory of the router -> NATS -> worker prototype to measure as a yardstick")


class _Prototype:
    """The perf prototype (nats-server, one worker, its aiohttp front end), run from its own directory."""

    def __init__(self, directory: pathlib.Path) -> None:
        bindir = pathlib.Path(sys.executable).parent
        nats_port, self.port = free_port(), free_port()
        url = f"nats://127.0.0.1:{nats_port}"
        self.procs = {"nats-server": subprocess.Popen([str(bindir / "nats-server"), "-a", "127.0.0.1", "-p",
                                                        str(nats_port)], stdout=subprocess.DEVNULL,
                                                       stderr=subprocess.DEVNULL)}
        deadline = time.monotonic() + 20
        while not port_open("127.0.0.1", nats_port) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.procs["worker"] = subprocess.Popen([sys.executable, "nats_path_proto/worker.py", "--nats", url,
                                                 "--uvloop"], cwd=directory, stdout=subprocess.DEVNULL)
        self.procs["router"] = subprocess.Popen([sys.executable, "nats_path_proto/router.py", "--mode", "nats",
                                                 "--nats", url, "--port", str(self.port)], cwd=directory,
                                                stdout=subprocess.DEVNULL)
        self.url = f"http://127.0.0.1:{self.port}/"

    def stop(self) -> None:
        for proc in reversed(list(self.procs.values())):
            proc.terminate()
            proc.wait()


def main() -> int:
    args = wrk_args(__doc__, _options)
    if args is None:
        return 2
    gunicorn = pathlib.Path(sys.executable).with_name("gunicorn")
    if not gunicorn.exists():
        print("gunicorn is not installed: .venv/bin/pip install -e .[bench]", file=sys.stderr)
        return 2
    load = pathlib.Path("/proc/loadavg").read_text().split()[:3]
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="kiln-http-bench-"))
    kilns = {"kiln": DevServer(DevOptions(app_dir=APP, port=0, data_dir=tmp / "data", router_workers=args.workers)),
             "kiln_w1": DevServer(DevOptions(app_dir=APP, port=0, data_dir=tmp / "data1", router_workers=1))}
    port = free_port()
    guni = subprocess.Popen([str(gunicorn), "-w", str(args.workers), "-k", "sync", "-b", f"127.0.0.1:{port}",
                             "--chdir", str(APP), "--log-level", "warning", "main:app"], stdout=subprocess.DEVNULL)
    proto = _Prototype(args.prototype) if args.prototype else None
    rounds: list[dict[str, dict[str, float]]] = []
    cpu: dict[str, list[dict[str, float]]] = {name: [] for name in (*kilns, "proto", "guni")}
    static_cpu: dict[str, list[float]] = {name: [] for name in (*kilns, "guni")}  # the serving processes only
    try:
        for kiln in kilns.values():
            kiln.start()
        urls = {name: kiln.url for name, kiln in kilns.items()}
        urls["guni"] = f"http://127.0.0.1:{port}/"
        if proto is not None:
            urls["proto"] = proto.url
        for url in urls.values():
            wait_http(url)
            wrk(url, 32, 2)  # warm up
        pids: dict[str, dict[str, int]] = {}
        for name, kiln in kilns.items():
            (instance_pid,) = kiln.instances().values()
            children = {c.name: c.proc.pid for c in kiln.supervisor.children}
            pids[name] = {"router": children["router"], "runtime": instance_pid, "nats-server": children["nats-server"],
                          "logs_svc": children["logs_svc"]}  # stores each request's log record
        if proto is not None:
            pids["proto"] = {name: p.pid for name, p in proto.procs.items()}
        pids["guni"] = {"gunicorn": guni.pid}  # its master and workers
        for number in range(args.rounds):
            found: dict[str, dict[str, float]] = {}
            order = list(urls) if number % 2 == 0 else list(reversed(urls))  # neither side always goes first
            for name in order:
                before = {proc: _cpu_seconds(pid) for proc, pid in pids.get(name, {}).items()}
                found[f"{name}32"] = wrk(urls[name], 32, args.seconds)
                served = found[f"{name}32"]["rps"] * args.seconds
                if before:
                    cpu[name].append({proc: (_cpu_seconds(pids[name][proc]) - t) / served * 1e6
                                      for proc, t in before.items()})
            for name in order:
                found[f"{name}1"] = wrk(urls[name], 1, args.seconds)
            for name in order:
                if name != "proto":
                    # A static file never leaves kiln's router: its CPU per request is the router's alone.
                    server = pids[name]["router" if name in kilns else "gunicorn"]
                    before_static = _cpu_seconds(server)
                    found[f"{name}_static"] = wrk(urls[name] + "static/page.html", 32, args.seconds)
                    static_cpu[name].append((_cpu_seconds(server) - before_static)
                                            / (found[f"{name}_static"]["rps"] * args.seconds) * 1e6)
            rounds.append(found)
            print(f"round {number + 1}: " + "  ".join(f"{key} {value['rps']:.0f}/s" for key, value in found.items()),
                  flush=True)
    finally:
        guni.terminate()
        guni.wait()
        if proto is not None:
            proto.stop()
        for kiln in kilns.values():
            kiln.stop()

    def med(key: str, field: str) -> float:
        return statistics.median(r[key][field] for r in rounds)

    def ratio(a: str, b: str, field: str) -> str:
        values = [r[a][field] / r[b][field] for r in rounds]
        per_round = " ".join(f"{v:.2f}" for v in values)
        return f"{statistics.median(values):.2f}x ({min(values):.2f}-{max(values):.2f}; rounds: {per_round})"

    w = args.workers
    print(f"HTTP benchmark ({os.cpu_count()} CPUs, load average at start {' '.join(load)}, wrk {args.seconds}s runs, "
          f"median of {args.rounds} interleaved rounds)")
    print(f"like with like: kiln with router --workers {w} (one runtime instance) against gunicorn sync with {w} "
          f"workers; 'kiln, 1 router' is router --workers 1")
    print(f"{'':34}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}")
    rows = [(f"kiln ({w} routers), 32 connections", "kiln32"), ("kiln (1 router), 32 connections", "kiln_w132"),
            (f"gunicorn sync x{w}, 32", "guni32"), (f"kiln ({w} routers), 1 connection", "kiln1"),
            ("kiln (1 router), 1 connection", "kiln_w11"), (f"gunicorn sync x{w}, 1", "guni1"),
            (f"kiln ({w} routers) static file, 32", "kiln_static"), ("kiln (1 router) static file, 32", "kiln_w1_static"),
            ("gunicorn same file, 32", "guni_static")]
    if proto is not None:
        rows += [("prototype (not kiln), 32", "proto32"), ("prototype (not kiln), 1", "proto1")]
    for label, key in rows:
        print(f"{label:34}{med(key, 'rps'):>10.0f}{med(key, 'p50'):>9.2f}{med(key, 'p99'):>9.2f}")
    print(f"kiln/gunicorn requests/s at 32: {ratio('kiln32', 'guni32', 'rps')}  (aim >= 1.2x)")
    print(f"kiln/gunicorn p99 at 32: {ratio('kiln32', 'guni32', 'p99')}  (aim <= 1.2x)")
    print(f"kiln (1 router)/gunicorn requests/s at 32: {ratio('kiln_w132', 'guni32', 'rps')}")
    added = [r["kiln1"]["p50"] - r["guni1"]["p50"] for r in rounds]
    print(f"kiln added p50 at 1 connection: {statistics.median(added):.2f} ms "
          f"(rounds: {' '.join(f'{a:.2f}' for a in added)})  (aim <= +0.4 ms)")
    print(f"static file kiln/gunicorn requests/s: {ratio('kiln_static', 'guni_static', 'rps')}  (aim >= 2.5x)")
    if proto is not None:
        print(f"prototype/gunicorn requests/s at 32: {ratio('proto32', 'guni32', 'rps')}; "
              f"kiln/prototype: {ratio('kiln32', 'proto32', 'rps')}")
    for name, label in (("kiln", f"kiln ({w} routers)"), ("kiln_w1", "kiln (1 router)"), ("proto", "prototype"),
                        ("guni", f"gunicorn sync x{w}")):
        if cpu[name]:
            parts = {proc: statistics.median(c[proc] for c in cpu[name]) for proc in cpu[name][0]}
            print(f"CPU us per request at 32 connections, {label}: "
                  + ", ".join(f"{proc} {value:.0f}" for proc, value in parts.items())
                  + f"; total {sum(parts.values()):.0f}")
    static = {name: statistics.median(values) for name, values in static_cpu.items()}
    efficiency = [g / k for g, k in zip(static_cpu["guni"], static_cpu["kiln"])]
    print(f"static file CPU us per request (serving processes): kiln ({w} routers) {static['kiln']:.0f}, "
          f"kiln (1 router) {static['kiln_w1']:.0f}, gunicorn {static['guni']:.0f}; gunicorn/kiln: "
          f"{statistics.median(efficiency):.2f}x (rounds: {' '.join(f'{e:.2f}' for e in efficiency)})  (the "
          f"requests/s a core buys each: the throughput ratio when both have the cores to themselves)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
