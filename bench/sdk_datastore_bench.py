"""Google's SDK on kiln's datastore: an ndb ``get`` by key and a ``put`` against the same operations through
``kiln.api.datastore``, same app, same process, same datastore_svc (embedded engine).

Prints the p50 and p95 latency of each (one call at a time), and the ratio SDK/kiln.api of the p50s (the
issue's aim: within 1.3×). The SDK path is ndb → the SDK's ``datastore_rpc`` and ``apiproxy_stub_map`` →
kiln's API proxy (:mod:`kiln.sdk.proxy`, installed as the runtime installs it, with a ticket as a request has) →
``kiln.sdk.datastore_v3`` → kiln's gRPC transport; ndb's caches are off (``use_cache``/``use_memcache``) so that
every get reaches the datastore, as kiln.api's does. ext.db's figures are printed beside ndb's.

Usage::

    .venv/bin/python bench/sdk_datastore_bench.py [--ops 2000] [--rounds 3] [--profile] [--ndb-debug-off]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pathlib
import pstats
import statistics
import sys
import tempfile
import time
import uuid
import warnings
from collections.abc import Callable
from typing import Any

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kiln_platform import auth  # noqa: E402
from kiln_platform.supervisor import Supervisor, python_module  # noqa: E402

SECRET = "bench-secret"
PAYLOAD = "x" * 900  # with the other properties, about 1 KB an entity


def latencies(n: int, op: Callable[[int], Any]) -> list[float]:
    out = []
    for i in range(n):
        start = time.perf_counter()
        op(i)
        out.append((time.perf_counter() - start) * 1000)
    return out


def summary(ms: list[float]) -> tuple[float, float]:
    ordered = sorted(ms)
    return statistics.median(ordered), ordered[int(len(ordered) * 0.95) - 1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=2000, help="operations per measurement")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of the SDK and kiln.api")
    parser.add_argument("--profile", action="store_true", help="profile ndb puts and print the top functions")
    parser.add_argument("--ndb-debug-off", action="store_true",
                        help="set ndb.utils.DEBUG = False (ndb records a stack for every future when it is on)")
    args = parser.parse_args()

    from runtime import libraries

    cache = pathlib.Path(os.environ.get("KILN_TEST_CACHE_DIR") or pathlib.Path.home() / ".cache" / "kiln")
    sys.path.append(str(libraries.sdk_dir(libraries.GAE_SDK_BUNDLED, cache)))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        from google.appengine.api import apiproxy_stub_map
        from google.appengine.ext import db, ndb

    if args.ndb_debug_off:
        from google.appengine.ext.ndb import utils

        utils.DEBUG = False
    from kiln.api import _rpc, datastore
    from kiln.sdk import proxy, tickets
    from kiln.sdk.datastore_v3 import DatastoreV3

    tmp = pathlib.Path(tempfile.mkdtemp(prefix="kiln-bench-"))
    sup = Supervisor(tmp / "run")
    try:
        ready = sup.run_dir / "datastore.addr"
        env = {**os.environ, "KILN_DATASTORE_SERVICE_SECRET": SECRET}
        addr = sup.start("datastore_svc", python_module(
            "datastore_svc", "--listen", "127.0.0.1:0", "--ready-file", str(ready), "--log-level", "warning",
            "--storage", "embedded", "--data-dir", str(tmp / "embedded")), env=env, ready_file=ready,
            timeout=180).address
        app_id = "bench" + uuid.uuid4().hex[:8]
        os.environ.update(KILN_DATASTORE_ADDR=addr, KILN_APP_TOKEN=auth.mint_app_token(SECRET, app_id),
                          GAE_APPLICATION="s~" + app_id)
        _rpc.reset()
        proxy.install(app_id, [DatastoreV3()], stubmap=apiproxy_stub_map.apiproxy)
        tickets.open_ticket(app_id, os.environ)  # one request for the whole run

        class Bench(ndb.Model):
            _use_cache = False
            _use_memcache = False
            n = ndb.IntegerProperty()
            owner = ndb.StringProperty()
            body = ndb.TextProperty()

        class DbBench(db.Model):
            n = db.IntegerProperty()
            owner = db.StringProperty()
            body = db.TextProperty()

        def kiln_entity(tag: str, i: int) -> datastore.Entity:
            e = datastore.Entity("KBench", name=f"{tag}-{i}", unindexed_properties=["body"])
            e.update({"n": i, "owner": f"user{i % 10}", "body": PAYLOAD})
            return e

        def run_round() -> dict[str, list[float]]:
            tag = uuid.uuid4().hex[:6]
            out = {}
            out["sdk put"] = latencies(args.ops, lambda i: Bench(id=f"{tag}-{i}", n=i, owner=f"user{i % 10}",
                                                                  body=PAYLOAD).put())
            out["kiln.api put"] = latencies(args.ops, lambda i: datastore.Put(kiln_entity(tag, i)))
            out["db put"] = latencies(args.ops, lambda i: DbBench(key_name=f"{tag}-{i}", n=i, owner=f"user{i % 10}",
                                                                 body=PAYLOAD).put())
            keys = [ndb.Key(Bench, f"{tag}-{i}") for i in range(args.ops)]
            out["sdk get"] = latencies(args.ops, lambda i: keys[i].get())
            kkeys = [datastore.Key.from_path("KBench", f"{tag}-{i}") for i in range(args.ops)]
            out["kiln.api get"] = latencies(args.ops, lambda i: datastore.Get(kkeys[i]))
            dkeys = [db.Key.from_path("DbBench", f"{tag}-{i}") for i in range(args.ops)]
            out["db get"] = latencies(args.ops, lambda i: db.get(dkeys[i]))
            return out

        run_round()  # warm up both paths (imports, channels, the engine's caches)
        rounds = [run_round() for _ in range(args.rounds)]
        for name in ("sdk put", "db put", "kiln.api put", "sdk get", "db get", "kiln.api get"):
            p50 = statistics.median(summary(r[name])[0] for r in rounds)
            p95 = statistics.median(summary(r[name])[1] for r in rounds)
            print(f"{name.replace('sdk', 'ndb'):13s} p50 {p50:6.2f} ms   p95 {p95:6.2f} ms")
        for op in ("put", "get"):
            for path in ("sdk", "db"):
                ratio = statistics.median(summary(r[f"{path} {op}"])[0] / summary(r[f"kiln.api {op}"])[0]
                                          for r in rounds)
                print(f"{op}: {'ndb' if path == 'sdk' else 'db'} p50 / kiln.api p50 = {ratio:.2f}x (aim: at most 1.3x)")
        if args.profile:
            profiler = cProfile.Profile()
            tag = uuid.uuid4().hex[:6]
            profiler.enable()
            for i in range(args.ops):
                Bench(id=f"{tag}-{i}", n=i, owner="p", body=PAYLOAD).put()
            profiler.disable()
            pstats.Stats(profiler).sort_stats(os.environ.get("KILN_BENCH_SORT", "cumulative")).print_stats(45)
    finally:
        sup.stop_all()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
