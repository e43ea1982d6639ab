"""Request logs' share of the hello path: CPU per request of the router, nats-server and logs_svc, and the
one-connection p50, for this tree and (``--baseline DIR``) another checkout of kiln, in the same run.

Each tree is started as ``kiln dev`` would start it (``deploy.dev.DevServer``, the ``bench/hello`` app, one
router process, one runtime instance) in its own process, with ``PYTHONPATH`` pointing at that tree, so the two
differ only in their code. gunicorn (sync, one worker) serves the same app as the yardstick of the added p50.
Rounds interleave the configurations (the order reversed every other round); for each, ``wrk`` at one connection
and then at ``--connections``, and the CPU of each kiln process from /proc (utime+stime before/after, divided by
the requests served). Figures are medians of rounds; the after/before ratios are per round, then their median.

Usage::

    git -C . archive BASE | tar -x -C /tmp/kiln-base      # the code to compare with
    .venv/bin/python bench/logs_bench.py --baseline /tmp/kiln-base [--seconds 5] [--rounds 3]

Needs ``wrk`` and ``gunicorn`` (``pip install -e .[bench]``).
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.http_bench import _cpu_seconds, wait_http, wrk  # noqa: E402
from kiln_platform.supervisor import free_port  # noqa: E402

APP = ROOT / "bench" / "hello"
PROCS = ("router", "runtime", "nats-server", "logs_svc")

# Run in a child process with PYTHONPATH=<tree>: starts that tree's kiln dev suite and prints its URL and pids.
_SERVE = """
import json, pathlib, sys
from deploy.dev import DevOptions, DevServer
server = DevServer(DevOptions(app_dir=pathlib.Path(sys.argv[1]), port=0, data_dir=pathlib.Path(sys.argv[2]),
                              router_workers=1))
server.start()
try:
    import time
    deadline = time.monotonic() + 60
    while not server.instances() and time.monotonic() < deadline:
        time.sleep(0.05)
    (instance,) = server.instances().values()
    children = {c.name: c.proc.pid for c in server.supervisor.children}
    print(json.dumps({"url": server.url, "pids": {"router": children["router"], "runtime": instance,
                      "nats-server": children["nats-server"], "logs_svc": children["logs_svc"]},
                      "code": __import__("router").__file__}), flush=True)
    sys.stdin.read()  # until the benchmark closes our stdin
finally:
    server.stop()
"""


class _Tree:
    """One checkout of kiln, served in a child process."""

    def __init__(self, tree: pathlib.Path, data: pathlib.Path) -> None:
        env = {**os.environ, "PYTHONPATH": str(tree)}
        self.proc = subprocess.Popen([sys.executable, "-c", _SERVE, str(APP), str(data)], cwd=tree, env=env,
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"kiln from {tree} did not start")
        info = json.loads(line)
        self.url: str = info["url"] + "/"
        self.pids: dict[str, int] = info["pids"]
        self.code: str = info["code"]

    def stop(self) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.close()
        self.proc.wait(timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baseline", type=pathlib.Path, help="another checkout of kiln to compare with")
    parser.add_argument("--seconds", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--connections", type=int, default=32)
    args = parser.parse_args()
    load = pathlib.Path("/proc/loadavg").read_text().split()[:3]
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="kiln-logs-bench-"))
    gunicorn = pathlib.Path(sys.executable).with_name("gunicorn")
    port = free_port()
    guni = subprocess.Popen([str(gunicorn), "-w", "1", "-k", "sync", "-b", f"127.0.0.1:{port}", "--chdir", str(APP),
                             "--log-level", "warning", "main:app"], stdout=subprocess.DEVNULL)
    trees: dict[str, _Tree] = {}
    results: list[dict[str, dict[str, float]]] = []
    try:
        trees["after"] = _Tree(ROOT, tmp / "after")
        if args.baseline is not None:
            trees["before"] = _Tree(args.baseline.resolve(), tmp / "before")
        urls = {name: t.url for name, t in trees.items()} | {"gunicorn": f"http://127.0.0.1:{port}/"}
        for name, url in urls.items():
            wait_http(url)
            wrk(url, args.connections, 2)  # warm up
        for number in range(args.rounds):
            order = list(urls) if number % 2 == 0 else list(reversed(urls))
            found: dict[str, dict[str, float]] = {}
            for conns in (1, args.connections):
                for name in order:
                    pids = trees[name].pids if name in trees else {}
                    before = {proc: _cpu_seconds(pid) for proc, pid in pids.items()}
                    got = wrk(urls[name], conns, args.seconds)
                    served = got["rps"] * args.seconds
                    got |= {proc: (_cpu_seconds(pids[proc]) - t) / served * 1e6 for proc, t in before.items()}
                    found[f"{name}/{conns}"] = got
            results.append(found)
            print(f"round {number + 1}: " + "  ".join(
                f"{key} {v['rps']:.0f}/s p50 {v['p50']:.2f}ms"
                + "".join(f" {p} {v[p]:.0f}" for p in PROCS if p in v) for key, v in found.items()), flush=True)
    finally:
        for tree in trees.values():
            tree.stop()
        guni.terminate()
        guni.wait()

    def med(key: str, field: str) -> float:
        return statistics.median(r[key][field] for r in results)

    print(f"request-log benchmark ({os.cpu_count()} CPUs, load average at start {' '.join(load)}, wrk "
          f"{args.seconds}s runs, median of {args.rounds} interleaved rounds; CPU in us per request)")
    for name, tree in trees.items():
        print(f"{name}: {tree.code}")
    print(f"{'':18}{'req/s':>8}{'p50 ms':>8}{'p99 ms':>8}" + "".join(f"{p:>12}" for p in PROCS))
    for key in results[0]:
        name = key.split("/")[0]
        print(f"{key:18}{med(key, 'rps'):>8.0f}{med(key, 'p50'):>8.2f}{med(key, 'p99'):>8.2f}"
              + "".join(f"{med(key, p):>12.0f}" for p in PROCS if name in trees))
    for name in trees:
        added = [r[f"{name}/1"]["p50"] - r["gunicorn/1"]["p50"] for r in results]
        print(f"{name}: added p50 at 1 connection over gunicorn {statistics.median(added):.2f} ms "
              f"(rounds: {' '.join(f'{a:.2f}' for a in added)})")
    if "before" in trees:
        for conns in (1, args.connections):
            for field in ("rps", "p50", *PROCS):
                values = [r[f"after/{conns}"][field] / r[f"before/{conns}"][field] for r in results]
                print(f"after/before {field} at {conns}: {statistics.median(values):.2f}x "
                      f"(rounds: {' '.join(f'{v:.2f}' for v in values)})")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
