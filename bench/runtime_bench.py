"""Runtime benchmark: cold start, idle memory and the runtime's own cost per request.

In one run on one machine it prints:

- cold start: the time from starting a new instance process of a deployed
  version (router and NATS already running) until its first response reaches
  the client, for the hello-world app (aim: under 1 s) and a small Flask app
  (aim: under 2 s; needs ``pip install -e .[bench]``);
- the instance's resident memory at idle after that first request;
- the runtime's own CPU per request under load (``wrk``, 32 connections),
  i.e. the instance process's CPU time divided by requests, minus the app's
  own thread CPU that the runtime reports for each request.

Usage::

    .venv/bin/python bench/runtime_bench.py [--rounds 5]
"""

from __future__ import annotations

import argparse
import os
import pathlib
import signal
import statistics
import sys
import tempfile
import time
import urllib.error
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench.http_bench import wrk  # noqa: E402
from deploy.dev import DevOptions, DevServer  # noqa: E402

APP = ROOT / "bench" / "hello"
FLASK_APP = ROOT / "bench" / "flaskapp"


def _cpu_seconds(pid: int) -> float:
    fields = pathlib.Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _rss_mib(pid: int) -> float:
    for line in pathlib.Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


def cold_start(server: DevServer) -> tuple[float, float]:
    """Replace the instance; return (seconds to the first 200, idle RSS MiB of the new instance)."""
    (old_pid,) = server.instances().values()
    started = time.monotonic()
    os.kill(old_pid, signal.SIGTERM)  # the instance manager starts a fresh instance
    while True:
        try:
            with urllib.request.urlopen(server.url, timeout=5) as resp:
                if resp.status == 200 and old_pid not in server.instances().values():
                    break
        except (urllib.error.URLError, OSError):
            pass
        time.sleep(0.005)
    elapsed = time.monotonic() - started
    time.sleep(1)
    (new_pid,) = server.instances().values()
    return elapsed, _rss_mib(new_pid)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=5, help="cold starts to measure")
    parser.add_argument("--seconds", type=int, default=8, help="duration of the load run")
    args = parser.parse_args()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="kiln-runtime-bench-"))
    flask_starts = []
    flask = DevServer(DevOptions(app_dir=FLASK_APP, port=0, data_dir=tmp / "flask-data"))
    flask.start()
    try:
        for _ in range(args.rounds):
            flask_starts.append(cold_start(flask)[0])
    finally:
        flask.stop()
    server = DevServer(DevOptions(app_dir=APP, port=0, data_dir=tmp / "data"))
    server.start()
    try:
        starts, memory = [], []
        for _ in range(args.rounds):
            seconds, rss = cold_start(server)
            starts.append(seconds)
            memory.append(rss)
        (runtime_pid,) = server.instances().values()
        wrk(server.url, 32, 2)
        before = _cpu_seconds(runtime_pid)
        result = wrk(server.url, 32, args.seconds)
        cpu = _cpu_seconds(runtime_pid) - before
    finally:
        server.stop()
    requests = result["rps"] * args.seconds
    print(f"runtime benchmark ({os.cpu_count()} CPUs; hello world; {args.rounds} cold starts)")
    print(f"cold start to first response: median {statistics.median(starts) * 1000:.0f} ms "
          f"(min {min(starts) * 1000:.0f}, max {max(starts) * 1000:.0f})  (aim < 1000 ms)")
    print(f"Flask app cold start to first response: median {statistics.median(flask_starts) * 1000:.0f} ms "
          f"(min {min(flask_starts) * 1000:.0f}, max {max(flask_starts) * 1000:.0f})  (aim < 2000 ms)")
    print(f"instance memory at idle: {statistics.median(memory):.1f} MiB RSS")
    print(f"runtime CPU per request at 32 connections: {cpu / requests * 1e6:.0f} us "
          f"({result['rps']:.0f} req/s; the hello-world app's own code is a few us of it)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
