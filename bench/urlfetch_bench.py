"""URL Fetch benchmark: what fetching through kiln's URL Fetch service adds to a request to a local HTTP server.

Prints, in one run on one machine, for a small GET (200-byte body) to an
aiohttp server on loopback:

- direct: ``http.client`` on a kept-alive connection, sequential: p50/p99 latency;
- kiln: ``kiln.api.urlfetch.fetch`` (gRPC to urlfetch_svc, which fetches with
  its pooled connections), sequential: p50/p99, and the added latency
  (kiln p50 - direct p50) and ratio;
- kiln with 32 fetches in flight (``make_fetch_call``): fetches per second.

Usage::

    .venv/bin/python bench/urlfetch_bench.py [--requests 2000]
"""

from __future__ import annotations

import argparse
import http.client
import os
import pathlib
import statistics
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kiln_platform import auth  # noqa: E402
from kiln.api import _rpc, urlfetch  # noqa: E402
from kiln_platform.supervisor import Supervisor, python_module  # noqa: E402

SECRET = "bench-secret"
SERVER = """
import sys
from aiohttp import web
async def hello(request):
    return web.Response(body=b"x" * 200, content_type="text/plain")
app = web.Application()
app.router.add_get("/", hello)
web.run_app(app, host="127.0.0.1", port=int(sys.argv[1]), print=None, access_log=None)
"""


def percentile(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def direct(port: int, n: int) -> list[float]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    out = []
    for _ in range(n):
        start = time.perf_counter()
        conn.request("GET", "/")
        resp = conn.getresponse()
        resp.read()
        out.append(time.perf_counter() - start)
    conn.close()
    return out


def through_kiln(url: str, n: int) -> list[float]:
    out = []
    for _ in range(n):
        start = time.perf_counter()
        result = urlfetch.fetch(url)
        assert result.status_code == 200 and len(result.content) == 200
        out.append(time.perf_counter() - start)
    return out


def concurrent(url: str, n: int, inflight: int) -> float:
    start = time.perf_counter()
    done = 0
    while done < n:
        batch = [urlfetch.create_rpc(deadline=10) for _ in range(min(inflight, n - done))]
        for rpc in batch:
            urlfetch.make_fetch_call(rpc, url)
        for rpc in batch:
            assert rpc.get_result().status_code == 200
        done += len(batch)
    return n / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=2000)
    args = parser.parse_args()
    sup = Supervisor(pathlib.Path(tempfile.mkdtemp(prefix="kiln-urlfetch-bench-")))
    try:
        from kiln_platform.supervisor import free_port
        port = free_port()
        sup.start("http-server", [sys.executable, "-c", SERVER, str(port)], ready_port=port)
        ready = sup.run_dir / "urlfetch.addr"
        env = {**os.environ, "KILN_URLFETCH_SERVICE_SECRET": SECRET}
        svc = sup.start("urlfetch_svc", python_module("urlfetch_svc", "--listen", "127.0.0.1:0", "--ready-file",
                                                      str(ready), "--allow-internal", "bench=127.0.0.1/32"),
                        env=env, ready_file=ready)
        os.environ["KILN_URLFETCH_ADDR"] = svc.address
        os.environ["KILN_APP_TOKEN"] = auth.mint_app_token(SECRET, "bench")
        _rpc.reset()
        url = f"http://127.0.0.1:{port}/"
        direct(port, 200)
        through_kiln(url, 200)  # warm both paths
        base, kiln = [], []
        for _ in range(3):  # interleaved rounds, so machine noise hits both alike
            base += direct(port, args.requests // 3)
            kiln += through_kiln(url, args.requests // 3)
        rate = concurrent(url, args.requests, 32)
    finally:
        sup.stop_all()
    b50, k50 = statistics.median(base), statistics.median(kiln)
    print(f"URL Fetch benchmark ({os.cpu_count()} CPUs; GET of 200 bytes from aiohttp on loopback; "
          f"{len(kiln)} fetches)")
    print(f"direct http.client (kept-alive): p50 {b50 * 1e3:.2f} ms, p99 {percentile(base, 0.99) * 1e3:.2f} ms")
    print(f"kiln urlfetch.fetch:             p50 {k50 * 1e3:.2f} ms, p99 {percentile(kiln, 0.99) * 1e3:.2f} ms")
    print(f"added latency per fetch: {(k50 - b50) * 1e3:.2f} ms at p50 ({k50 / b50:.1f}x direct)")
    print(f"kiln with 32 in flight: {rate:,.0f} fetches/s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
