"""Memcache ``get`` through Google's SDK (kiln's API proxy) against ``kiln.api.memcache``, in one app's request.

A python27-style app under ``kiln dev`` times, inside one request and so in one process, ``--calls`` gets of the
same small value each way, alternating in rounds so both see the same load:

- ``kiln.api``: ``kiln.api.memcache.get`` (one blocking gRPC call on the request's thread);
- ``sdk``: ``google.appengine.api.memcache.get`` (the SDK's client, its UserRPC, kiln's stub run on the caller's
  thread, the translation, the same gRPC call);
- ``sdk-pool``: the SDK's asynchronous get waited on through its future, so a worker of the proxy runs it (the
  thread hop a synchronous call avoids).

It prints each path's p50 and p90 in microseconds and the ratio sdk/kiln.api (the issue's aim: within 1.3x).

Usage::

    .venv/bin/python bench/sdk_memcache_bench.py [--calls 3000]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import tempfile
import textwrap
import urllib.request

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from deploy.dev import DevOptions, DevServer  # noqa: E402

APP = textwrap.dedent(r'''
    import concurrent.futures, json, statistics, time
    from google.appengine.api import memcache as sdk_memcache
    from kiln.api import memcache as kiln_memcache

    def sdk_pool_get(key):
        rpc = sdk_memcache.Client().get_multi_async([key])
        concurrent.futures.wait([rpc.future])  # a worker runs it
        return rpc.get_result().get(key)

    WAYS = {"kiln.api": kiln_memcache.get, "sdk": sdk_memcache.get, "sdk-pool": sdk_pool_get}

    def app(environ, start_response):
        calls = int(environ["QUERY_STRING"] or "3000")
        kiln_memcache.set("bench", "value")
        assert sdk_memcache.get("bench") == "value"
        times = {name: [] for name in WAYS}
        for _ in range(calls // 100):
            for name, get in WAYS.items():
                for _ in range(100):
                    start = time.perf_counter()
                    get("bench")
                    times[name].append(time.perf_counter() - start)
        out = {name: {"p50_us": statistics.median(t) * 1e6,
                      "p90_us": statistics.quantiles(t, n=10)[-1] * 1e6} for name, t in times.items()}
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(out).encode()]
''')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=3000)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        app_dir = pathlib.Path(tmp) / "sdkbench"
        app_dir.mkdir()
        (app_dir / "app.yaml").write_text("runtime: python27\napi_version: 1\nthreadsafe: true\n"
                                          "handlers:\n- url: /.*\n  script: main.app\n")
        (app_dir / "main.py").write_text(APP)
        server = DevServer(DevOptions(app_dir=app_dir, port=0, data_dir=app_dir / "data", request_deadline=600))
        server.start()
        try:
            with urllib.request.urlopen(f"{server.url.rstrip('/')}/?{args.calls}", timeout=600) as resp:
                found = json.loads(resp.read())
        finally:
            server.stop()
    for name, stats in found.items():
        print(f"{name:10s} p50 {stats['p50_us']:8.1f} us   p90 {stats['p90_us']:8.1f} us")
    print(f"ratio sdk/kiln.api p50: {found['sdk']['p50_us'] / found['kiln.api']['p50_us']:.2f}")
    print(f"ratio sdk-pool/kiln.api p50: {found['sdk-pool']['p50_us'] / found['kiln.api']['p50_us']:.2f}")


if __name__ == "__main__":
    main()
