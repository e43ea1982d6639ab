"""HTTP benchmark: a hello-world WSGI app through kiln against the same app under gunicorn.

In one run on one machine, with the same load generator (``wrk``) and the
same connections, it measures:

- kiln (router -> NATS -> runtime, started by ``kiln dev`` machinery) and
  gunicorn's sync workers (2 workers) on ``/`` at 32 connections: requests/s
  and p50/p99 latency, and their ratio;
- both at one connection: p50, and kiln's added p50;
- a static file served by kiln's router against the same file returned by the
  app under gunicorn (gunicorn has no static handler).

Rounds interleave kiln and gunicorn; figures are medians, ratios per round.

Usage::

    .venv/bin/python bench/http_bench.py [--seconds 10] [--rounds 3]

Needs ``wrk`` (Debian package ``wrk``) and ``gunicorn`` (``pip install gunicorn==27.0.1``).
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

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deploy.dev import DevOptions, DevServer  # noqa: E402
from kiln_platform.supervisor import free_port  # noqa: E402

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


def wrk_args(doc: str | None) -> argparse.Namespace | None:
    """``--seconds``/``--rounds`` of a wrk benchmark; None (after saying why) when wrk is missing."""
    parser = argparse.ArgumentParser(description=(doc or "").split("\n\n")[0])
    parser.add_argument("--seconds", type=int, default=10, help="duration of each wrk run")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds")
    args = parser.parse_args()
    if not shutil.which("wrk"):
        print("wrk is not installed: apt-get install wrk", file=sys.stderr)
        return None
    return args


def main() -> int:
    args = wrk_args(__doc__)
    if args is None:
        return 2
    gunicorn = pathlib.Path(sys.executable).with_name("gunicorn")
    if not gunicorn.exists():
        print("gunicorn is not installed: .venv/bin/pip install gunicorn==27.0.1", file=sys.stderr)
        return 2
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="kiln-http-bench-"))
    kiln = DevServer(DevOptions(app_dir=APP, port=0, data_dir=tmp / "data"))
    port = free_port()
    guni = subprocess.Popen([str(gunicorn), "-w", "2", "-k", "sync", "-b", f"127.0.0.1:{port}", "--chdir", str(APP),
                             "--log-level", "warning", "main:app"], stdout=subprocess.DEVNULL)
    try:
        kiln.start()
        kiln_url, guni_url = kiln.url, f"http://127.0.0.1:{port}/"
        wait_http(guni_url)
        for url in (kiln_url, guni_url):  # warm up
            wrk(url, 32, 2)
        rounds = []
        (instance_pid,) = kiln.instances().values()
        runtime_cpu: list[float] = []  # the instance's CPU seconds per request at 32 connections
        for _ in range(args.rounds):
            before = _cpu_seconds(instance_pid)
            kiln32 = wrk(kiln_url, 32, args.seconds)
            runtime_cpu.append((_cpu_seconds(instance_pid) - before) / (kiln32["rps"] * args.seconds))
            rounds.append({
                "kiln32": kiln32, "guni32": wrk(guni_url, 32, args.seconds),
                "kiln1": wrk(kiln_url, 1, args.seconds), "guni1": wrk(guni_url, 1, args.seconds),
                "kiln_static": wrk(kiln_url + "static/page.html", 32, args.seconds),
                "guni_static": wrk(guni_url + "static/page.html", 32, args.seconds),
            })
    finally:
        guni.terminate()
        guni.wait()
        kiln.stop()

    def med(key: str, field: str) -> float:
        return statistics.median(r[key][field] for r in rounds)

    def ratio(a: str, b: str, field: str) -> str:
        values = sorted(r[a][field] / r[b][field] for r in rounds)
        return f"{statistics.median(values):.2f}x ({values[0]:.2f}-{values[-1]:.2f})"

    print(f"HTTP benchmark ({os.cpu_count()} CPUs, wrk {args.seconds}s runs, median of {args.rounds} rounds)")
    print(f"{'':28}{'req/s':>10}{'p50 ms':>9}{'p99 ms':>9}")
    for label, key in (("kiln, 32 connections", "kiln32"), ("gunicorn sync x2, 32", "guni32"),
                       ("kiln, 1 connection", "kiln1"), ("gunicorn sync x2, 1", "guni1"),
                       ("kiln static file, 32", "kiln_static"), ("gunicorn same file, 32", "guni_static")):
        print(f"{label:28}{med(key, 'rps'):>10.0f}{med(key, 'p50'):>9.2f}{med(key, 'p99'):>9.2f}")
    print(f"kiln/gunicorn requests/s at 32: {ratio('kiln32', 'guni32', 'rps')}  (aim >= 1.2x)")
    print(f"kiln/gunicorn p99 at 32: {ratio('kiln32', 'guni32', 'p99')}  (aim <= 1.2x)")
    added = statistics.median(r["kiln1"]["p50"] - r["guni1"]["p50"] for r in rounds)
    print(f"kiln added p50 at 1 connection: {added:.2f} ms  (aim < 0.5 ms)")
    print(f"static file kiln/gunicorn requests/s: {ratio('kiln_static', 'guni_static', 'rps')}  (aim >= 2x)")
    print(f"runtime overhead per request at 32 connections (instance CPU outside the app's few us of code): "
          f"{statistics.median(runtime_cpu) * 1e6:.0f} us")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
