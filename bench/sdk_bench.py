"""Google's SDK on kiln against ``kiln.api``, same app, same run (issue 15's benchmark).

Part 1 — API calls. A python27-style app under ``kiln dev`` (embedded datastore) times, inside one request and so
in one process, ``--calls`` calls each way, alternating in rounds of 100 so every way sees the same load:

- datastore get by key: ``kiln.api.datastore.Get`` against ndb's ``key.get(use_cache=False,
  use_memcache=False)`` (the datastore round trip, as kiln.api has no cache) and ndb's default ``key.get()``
  (ndb's in-process cache off, its memcache-backed global cache on: what most apps run);
- datastore put: ``kiln.api.datastore.Put`` against ndb's ``put(use_cache=False, use_memcache=False)``;
- memcache get: ``kiln.api.memcache.get`` against ``google.appengine.api.memcache.get``.

It prints p50/p90 in microseconds and each SDK path's p50 ratio to kiln.api's (the issue's aim: within 1.3x).

Part 2 — requests per second. wrk (``--connections``, ``--seconds``) against a webapp2 hello-world and a plain
WSGI hello-world, two handlers of the same python27 app on the same kiln dev, one after the other; prints both and
the ratio webapp2/plain.

Usage::

    .venv/bin/python bench/sdk_bench.py [--calls 3000] [--connections 32] [--seconds 10]
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

from bench.http_bench import wrk  # noqa: E402
from deploy.dev import DevOptions, DevServer  # noqa: E402

APP_YAML = """runtime: python27
api_version: 1
threadsafe: true
libraries:
- name: webapp2
  version: latest
handlers:
- url: /webapp2
  script: hello.app
- url: /plain
  script: plain.app
- url: /.*
  script: main.app
"""

MAIN = textwrap.dedent(r'''
    import json, statistics, time
    from google.appengine.api import memcache as sdk_memcache
    from google.appengine.ext import ndb
    from kiln.api import datastore as kiln_datastore
    from kiln.api import memcache as kiln_memcache

    class Thing(ndb.Model):
        name = ndb.StringProperty()
        count = ndb.IntegerProperty()

    ndb.get_context().set_cache_policy(False)  # no in-process cache: every get goes out

    def ways():
        kiln_entity = kiln_datastore.Entity("KilnThing", name="k1")
        kiln_entity.update(name="bench", count=1)
        kiln_key = kiln_datastore.Put(kiln_entity)
        ndb_key = Thing(id="n1", name="bench", count=1).put()
        kiln_memcache.set("bench", "value")
        assert sdk_memcache.get("bench") == "value"
        counter = iter(range(10**9))

        def kiln_put():
            entity = kiln_datastore.Entity("KilnThing")
            entity.update(name="bench", count=next(counter))
            kiln_datastore.Put(entity)

        def ndb_put():
            Thing(name="bench", count=next(counter)).put(use_cache=False, use_memcache=False)

        return {
            "get": {"kiln.api": lambda: kiln_datastore.Get(kiln_key),
                    "ndb": lambda: ndb_key.get(use_cache=False, use_memcache=False),
                    "ndb+memcache": lambda: ndb_key.get(use_cache=False)},
            "put": {"kiln.api": kiln_put, "ndb": ndb_put},
            "memcache get": {"kiln.api": lambda: kiln_memcache.get("bench"),
                             "sdk": lambda: sdk_memcache.get("bench")},
        }

    def app(environ, start_response):
        calls = int(environ["QUERY_STRING"] or "3000")
        out = {}
        for op, paths in ways().items():
            times = {name: [] for name in paths}
            for _ in range(max(1, calls // 100)):
                for name, call in paths.items():
                    for _ in range(100):
                        start = time.perf_counter()
                        call()
                        times[name].append(time.perf_counter() - start)
            out[op] = {name: {"p50_us": statistics.median(t) * 1e6,
                              "p90_us": statistics.quantiles(t, n=10)[-1] * 1e6} for name, t in times.items()}
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(out).encode()]
''')

HELLO = textwrap.dedent('''
    import webapp2

    class Hello(webapp2.RequestHandler):
        def get(self):
            self.response.headers["Content-Type"] = "text/plain"
            self.response.write("Hello, World!")

    app = webapp2.WSGIApplication([("/webapp2", Hello)])
''')

PLAIN = textwrap.dedent('''
    def app(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"Hello, World!"]
''')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--calls", type=int, default=3000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        app_dir = pathlib.Path(tmp) / "sdkbench"
        app_dir.mkdir()
        for name, text in {"app.yaml": APP_YAML, "main.py": MAIN, "hello.py": HELLO, "plain.py": PLAIN}.items():
            (app_dir / name).write_text(text)
        server = DevServer(DevOptions(app_dir=app_dir, port=0, data_dir=app_dir / "data", request_deadline=600))
        server.start()
        try:
            base = server.url.rstrip("/")
            with urllib.request.urlopen(f"{base}/?{args.calls}", timeout=600) as resp:
                found = json.loads(resp.read())
            for path in ("/webapp2", "/plain"):  # warm: the first request imports the handler's module
                urllib.request.urlopen(base + path, timeout=60).read()
            webapp2 = wrk(base + "/webapp2", args.connections, args.seconds)
            plain = wrk(base + "/plain", args.connections, args.seconds)
        finally:
            server.stop()
    print(f"API calls: {args.calls} each way, in one request of one instance (p50 / p90, microseconds)")
    for op, paths in found.items():
        base_p50 = paths["kiln.api"]["p50_us"]
        for name, stats in paths.items():
            ratio = "" if name == "kiln.api" else f"   {stats['p50_us'] / base_p50:.2f}x kiln.api"
            print(f"  {op:13s} {name:13s} {stats['p50_us']:8.1f} / {stats['p90_us']:8.1f}{ratio}")
    print(f"Requests/s, wrk {args.connections} connections {args.seconds} s, one instance:")
    print(f"  webapp2 hello {webapp2['rps']:8.0f} req/s  p50 {webapp2['p50']:.2f} ms  p99 {webapp2['p99']:.2f} ms")
    print(f"  plain WSGI    {plain['rps']:8.0f} req/s  p50 {plain['p50']:.2f} ms  p99 {plain['p99']:.2f} ms")
    print(f"  ratio webapp2/plain: {webapp2['rps'] / plain['rps']:.2f}")


if __name__ == "__main__":
    main()
