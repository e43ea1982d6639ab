"""Cron benchmark: firing skew (actual arrival minus scheduled time) of many jobs fired by ``cron_svc``
replicas, beside a plain single-process timer firing the same requests.

In one run on one machine, with a real nats-server and an aiohttp server on loopback standing in for the
router (it records when each request arrives):

- ``--jobs`` jobs ``every 1 minutes synchronized`` (scheduled exactly on minute boundaries), for
  ``--minutes`` minutes;
- baseline: one asyncio loop that sleeps until each minute boundary and sends every job's GET at once over
  one aiohttp session — no claims, no replicas, no durability;
- kiln: ``--replicas`` cron_svc processes sharing the NATS KV buckets: each firing is claimed
  (create-if-absent), recorded, signed and sent through the "router";
- skew percentiles (p50, p95, max) for both, the ratio of the p95s, and whether each job fired exactly once
  per minute.

Usage::

    .venv/bin/python bench/cron_bench.py [--jobs 100] [--minutes 3] [--replicas 3]
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import os
import pathlib
import statistics
import sys
import tempfile
import threading
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import aiohttp  # noqa: E402
from aiohttp import web  # noqa: E402

from kiln_platform.supervisor import Supervisor, python_module  # noqa: E402


class Recorder:
    """An HTTP server in its own thread that notes (path, arrival time) of every request."""

    def __init__(self) -> None:
        self.arrivals: list[tuple[str, float]] = []
        self.loop = asyncio.new_event_loop()
        self.port = 0
        ready = threading.Event()
        threading.Thread(target=self._run, args=(ready,), daemon=True).start()
        ready.wait()

    def _run(self, ready: threading.Event) -> None:
        asyncio.set_event_loop(self.loop)

        async def handle(request: web.Request) -> web.Response:
            self.arrivals.append((request.path, time.time()))
            return web.Response(text="ok")

        async def start() -> None:
            app = web.Application()
            app.router.add_get("/{tail:.*}", handle)
            runner = web.AppRunner(app, access_log=None)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            self.port = runner.addresses[0][1]
        self.loop.run_until_complete(start())
        ready.set()
        self.loop.run_forever()

    def take(self) -> list[tuple[str, float]]:
        out, self.arrivals = self.arrivals, []
        return out


def skews(arrivals: list[tuple[str, float]]) -> list[float]:
    """Seconds after the minute boundary each request arrived (synchronized schedules fire on the minute)."""
    return [t - (t // 60) * 60 for _, t in arrivals]


def summary(values: list[float]) -> str:
    ordered = sorted(values)
    p95 = ordered[max(0, int(len(ordered) * 0.95) - 1)]
    return (f"p50 {statistics.median(ordered) * 1000:7.1f} ms  p95 {p95 * 1000:7.1f} ms  "
            f"max {ordered[-1] * 1000:7.1f} ms")


def in_minutes(arrivals: list[tuple[str, float]], first: int, count: int) -> list[tuple[str, float]]:
    """The arrivals whose minute (their scheduled time: skews are far below a minute) is one of those measured."""
    return [(p, t) for p, t in arrivals if first <= int(t // 60) < first + count]


def once_per_minute(arrivals: list[tuple[str, float]], jobs: int, first: int, count: int) -> bool:
    per_minute = collections.Counter((path, int(t // 60)) for path, t in arrivals)
    return all(per_minute[(f"/job/{j}", m)] == 1 for j in range(jobs) for m in range(first, first + count))


async def baseline(port: int, jobs: int, minutes: int) -> None:
    async with aiohttp.ClientSession() as http:
        for _ in range(minutes):
            await asyncio.sleep(60 - time.time() % 60)
            await asyncio.gather(*(_get(http, f"http://127.0.0.1:{port}/job/{j}") for j in range(jobs)))


async def _get(http: aiohttp.ClientSession, url: str) -> None:
    async with http.get(url) as resp:
        await resp.read()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--jobs", type=int, default=100)
    parser.add_argument("--minutes", type=int, default=3)
    parser.add_argument("--replicas", type=int, default=3)
    args = parser.parse_args()
    recorder = Recorder()
    with tempfile.TemporaryDirectory(prefix="kiln-cron-bench-") as tmp:
        base = pathlib.Path(tmp)
        base_first = int(time.time() // 60) + 1
        asyncio.run(baseline(recorder.port, args.jobs, args.minutes))
        time.sleep(5)
        base_arrivals = in_minutes(recorder.take(), base_first, args.minutes)
        cron_yaml = base / "cron.yaml"
        cron_yaml.write_text("cron:\n" + "".join(f"- url: /job/{j}\n  schedule: every 1 minutes synchronized\n"
                                                 for j in range(args.jobs)))
        sup = Supervisor(base / "run")
        try:
            nats = sup.start_nats(base / "nats")
            env = {**os.environ, "KILN_CRON_SERVICE_SECRET": "bench", "KILN_CRON_PLATFORM_SECRET": "bench"}
            for r in range(args.replicas):
                ready = base / f"cron{r}.addr"
                sup.start(f"cron{r}", python_module(
                    "cron_svc", "--listen", "127.0.0.1:0", "--ready-file", str(ready), "--nats-url",
                    f"nats://{nats.address}", "--cron-yaml", f"bench={cron_yaml}", "--router-url",
                    f"http://127.0.0.1:{recorder.port}", "--replica-id", f"replica-{r}", "--log-level", "warning"),
                    env=env, ready_file=ready)
            # Measure the minutes after the next boundary (the first one belongs to the start-up).
            kiln_first = int(time.time() // 60) + 2
            time.sleep(kiln_first * 60 + 60 * args.minutes + 5 - time.time())
            kiln_arrivals = in_minutes(recorder.take(), kiln_first, args.minutes)
        finally:
            sup.stop_all()
    print(f"cron firing skew: {args.jobs} jobs every minute for {args.minutes} minutes "
          f"({len(base_arrivals)} baseline firings, {len(kiln_arrivals)} kiln firings)")
    print(f"baseline (one asyncio timer):    {summary(skews(base_arrivals))}")
    print(f"kiln ({args.replicas} cron_svc replicas):    {summary(skews(kiln_arrivals))}")
    kiln_p95 = sorted(skews(kiln_arrivals))[max(0, int(len(kiln_arrivals) * 0.95) - 1)]
    base_p95 = sorted(skews(base_arrivals))[max(0, int(len(base_arrivals) * 0.95) - 1)]
    print(f"p95 kiln/baseline: {kiln_p95 / base_p95:.1f}x; every job once per minute: "
          f"baseline {once_per_minute(base_arrivals, args.jobs, base_first, args.minutes)}, "
          f"kiln {once_per_minute(kiln_arrivals, args.jobs, kiln_first, args.minutes)}")


if __name__ == "__main__":
    main()
