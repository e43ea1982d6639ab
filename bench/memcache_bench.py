"""Memcache benchmark: kiln's memcache (kiln.api.memcache → memcache_svc over gRPC) beside a real memcached.

Prints, in one run on one machine, for 100-byte values:

- get and set latency (p50/p99) and throughput, 1 in flight, through kiln's
  client and through pymemcache against memcached (Debian's package);
- get throughput with 32 in flight (32 threads) both ways;
- ``get_multi`` of 100 keys through kiln beside pymemcache's ``get_many`` of 100;
- the ratios the issue aims at: single-get p50 kiln/memcached (aim ≤ 5×),
  get_multi(100) kiln/memcached (aim ≤ 1.5×), and get_multi(100) against a
  single kiln get (aim ≤ 2×).

Usage::

    apt-get install memcached; .venv/bin/python bench/memcache_bench.py [--ops 3000]
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import pathlib
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from pymemcache.client.base import Client as TextClient  # noqa: E402

from kiln_platform import auth  # noqa: E402
from kiln.api import memcache  # noqa: E402
from kiln_platform.supervisor import Supervisor, free_port, python_module  # noqa: E402

SECRET = "bench-secret"
VALUE = b"v" * 100


def timed(n: int, op: Callable[[int], object]) -> list[float]:
    out = []
    for i in range(n):
        start = time.perf_counter()
        op(i)
        out.append(time.perf_counter() - start)
    return out


def rate(n: int, inflight: int, op: Callable[[int], object]) -> float:
    start = time.perf_counter()
    with concurrent.futures.ThreadPoolExecutor(inflight) as pool:
        list(pool.map(op, range(n)))
    return n / (time.perf_counter() - start)


def p(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=3000)
    args = parser.parse_args()
    binary = shutil.which("memcached")
    if binary is None:
        print("memcached is not installed: apt-get install memcached", file=sys.stderr)
        return 2
    sup = Supervisor(pathlib.Path(tempfile.mkdtemp(prefix="kiln-memcache-bench-")))
    port = free_port()
    daemon = subprocess.Popen([binary, "-l", "127.0.0.1", "-p", str(port), "-t", "2", "-m", "256", "-U", "0",
                               "-u", "root"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        ready = sup.run_dir / "memcache.addr"
        svc = sup.start("memcache_svc", python_module("memcache_svc", "--listen", "127.0.0.1:0", "--ready-file",
                                                      str(ready)),
                        env={**os.environ, "KILN_MEMCACHE_SERVICE_SECRET": SECRET}, ready_file=ready)
        os.environ.update(KILN_MEMCACHE_ADDR=svc.address, KILN_APP_TOKEN=auth.mint_app_token(SECRET, "bench"))
        memcache.reset()
        text = TextClient(("127.0.0.1", port), default_noreply=False)
        keys = [f"key{i}" for i in range(100)]
        memcache.set_multi({k: VALUE for k in keys})
        text.set_many({k: VALUE for k in keys})
        n = args.ops
        results: dict[str, list[float]] = {k: [] for k in ("kset", "mset", "kget", "mget", "kmulti", "mmulti")}
        for _ in range(3):  # interleaved rounds
            results["kset"] += timed(n // 3, lambda i: memcache.set(keys[i % 100], VALUE))
            results["mset"] += timed(n // 3, lambda i: text.set(keys[i % 100], VALUE))
            results["kget"] += timed(n // 3, lambda i: memcache.get(keys[i % 100]))
            results["mget"] += timed(n // 3, lambda i: text.get(keys[i % 100]))
            results["kmulti"] += timed(n // 30, lambda i: memcache.get_multi(keys))
            results["mmulti"] += timed(n // 30, lambda i: text.get_many(keys))
        local = threading.local()  # a pymemcache client per thread: they are not thread-safe

        def text_get(i: int) -> object:
            if not hasattr(local, "client"):
                local.client = TextClient(("127.0.0.1", port), default_noreply=False)
            return local.client.get(keys[i % 100])

        k32 = rate(n, 32, lambda i: memcache.get(keys[i % 100]))
        m32 = rate(n, 32, text_get)
    finally:
        daemon.terminate()
        daemon.wait()
        sup.stop_all()
    med = {k: statistics.median(v) * 1000 for k, v in results.items()}
    print(f"memcache benchmark ({os.cpu_count()} CPUs; 100-byte values; {n} ops per pattern, 3 interleaved rounds)")
    for label, kk, mk in (("set, 1 in flight", "kset", "mset"), ("get, 1 in flight", "kget", "mget"),
                          ("get_multi(100) / get_many(100)", "kmulti", "mmulti")):
        print(f"{label:32} kiln p50 {med[kk]:.3f} ms p99 {p(results[kk], 0.99):.3f} ms ({1000 / med[kk]:,.0f}/s)   "
              f"memcached p50 {med[mk]:.3f} ms p99 {p(results[mk], 0.99):.3f} ms ({1000 / med[mk]:,.0f}/s)   "
              f"{med[kk] / med[mk]:.1f}x")
    print(f"get, 32 in flight: kiln {k32:,.0f}/s, memcached {m32:,.0f}/s ({k32 / m32:.2f}x)")
    print(f"single-get p50 kiln/memcached: {med['kget'] / med['mget']:.1f}x (aim <= 5x)")
    print(f"get_multi(100) p50 kiln/memcached get_many(100): {med['kmulti'] / med['mmulti']:.2f}x (aim <= 1.5x)")
    print(f"get_multi(100) p50 / single kiln get p50: {med['kmulti'] / med['kget']:.2f}x (aim <= 2x)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
