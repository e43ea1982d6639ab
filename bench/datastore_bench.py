"""Datastore benchmark: kiln's datastore service against cassandra-driver on the same Cassandra.

Prints, in one run on one machine:

- put and get-by-key throughput through kiln's datastore API (gRPC, as every
  app's SDK calls it) with 1 and 32 requests in flight, on the Cassandra engine;
- the same operations done directly with cassandra-driver against the same
  Cassandra node (a plain key/value table, same payload), and the ratio
  kiln/direct;
- the latency of a query returning 100 entities (a property filter and sort);
- the embedded (SQLite) engine's figures for the same operations.

Usage::

    .venv/bin/python bench/datastore_bench.py [--ops 4000] [--cassandra host:port]

Without ``--cassandra`` it starts a node with ``deploy/cassandra.sh`` (cached
jars) in a temporary directory and stops it afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import statistics
import subprocess
import sys
import tempfile
import time
import uuid

import grpc

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kiln_platform.config import CassandraHost  # noqa: E402
from kiln_platform.supervisor import Supervisor, python_module  # noqa: E402
from kiln_platform import auth  # noqa: E402
from kiln.pb.datastore.v1 import datastore_pb2 as pb  # noqa: E402
from kiln.pb.datastore.v1 import datastore_pb2_grpc  # noqa: E402

SECRET = "bench-secret"
PAYLOAD = "x" * 900  # with the other properties, about 1 KB an entity


def entity(app_key: str, i: int) -> pb.Entity:
    e = pb.Entity(key=pb.Key(path=[pb.PathElement(kind="Bench", name=f"{app_key}-{i}")]))
    e.properties["n"].integer_value = i
    e.properties["owner"].string_value = f"user{i % 10}"
    e.properties["body"].string_value = PAYLOAD
    e.properties["body"].exclude_from_indexes = True
    return e


async def run_concurrent(total: int, inflight: int, op) -> float:  # type: ignore[no-untyped-def]
    """Run ``op(i)`` for i in range(total) with ``inflight`` at a time; return operations per second."""
    counter = iter(range(total))

    async def worker() -> None:
        for i in counter:
            await op(i)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(inflight)))
    return total / (time.perf_counter() - start)


async def bench_kiln(address: str, ops: int) -> dict[str, float]:
    app = "bench" + uuid.uuid4().hex[:8]
    md = (("authorization", f"Bearer {auth.mint_app_token(SECRET, app)}"),)
    out: dict[str, float] = {}
    async with grpc.aio.insecure_channel(address) as channel:
        stub = datastore_pb2_grpc.DatastoreServiceStub(channel)
        for inflight in (1, 32):
            n = ops // 8 if inflight == 1 else ops
            tag = uuid.uuid4().hex[:6]

            async def put(i: int) -> None:
                await stub.Put(pb.PutRequest(entities=[entity(tag, i)]), metadata=md)

            async def get(i: int) -> None:
                resp = await stub.Get(pb.GetRequest(keys=[entity(tag, i).key]), metadata=md)
                assert resp.results[0].HasField("entity")

            out[f"put@{inflight}"] = await run_concurrent(n, inflight, put)
            out[f"get@{inflight}"] = await run_concurrent(n, inflight, get)
        # A 100-entity query: owner = X ORDER BY n, on data written above (ops/10 per owner).
        query = pb.Query(kind="Bench", limit=100)
        query.filter.property_filter.property.name = "n"
        query.filter.property_filter.op = pb.PropertyFilter.OPERATOR_GREATER_THAN_OR_EQUAL
        query.filter.property_filter.value.integer_value = 0
        query.order.add(property=pb.PropertyReference(name="n"), direction=pb.PropertyOrder.DIRECTION_ASCENDING)
        latencies = []
        for _ in range(30):
            start = time.perf_counter()
            resp = await stub.RunQuery(pb.RunQueryRequest(query=query, batch_size=100), metadata=md)
            latencies.append((time.perf_counter() - start) * 1000)
            assert len(resp.batch.entity_results) == 100
        out["query100_p50_ms"] = statistics.median(latencies)
        out["query100_p95_ms"] = sorted(latencies)[int(len(latencies) * 0.95) - 1]
    return out


async def bench_direct(hosts: str, ops: int) -> dict[str, float]:
    """The same puts and gets straight to Cassandra: the baseline."""
    from cassandra import ConsistencyLevel
    from cassandra.cluster import Cluster

    cluster = Cluster([(h.host, h.port) for h in CassandraHost.parse_list(hosts, "--cassandra")], protocol_version=5)
    session = cluster.connect()
    session.execute("CREATE KEYSPACE IF NOT EXISTS bench_direct WITH replication = "
                    "{'class': 'NetworkTopologyStrategy', 'datacenter1': 1}")
    session.execute("CREATE TABLE IF NOT EXISTS bench_direct.kv (k text PRIMARY KEY, v blob)")
    ins = session.prepare("INSERT INTO bench_direct.kv (k, v) VALUES (?, ?)")
    sel = session.prepare("SELECT v FROM bench_direct.kv WHERE k = ?")
    ins.consistency_level = sel.consistency_level = ConsistencyLevel.LOCAL_QUORUM
    loop = asyncio.get_running_loop()

    async def execute(stmt, params):  # type: ignore[no-untyped-def]
        fut = loop.create_future()
        rf = session.execute_async(stmt, params)
        rf.add_callbacks(lambda rows: loop.call_soon_threadsafe(fut.set_result, rows),
                         lambda exc: loop.call_soon_threadsafe(fut.set_exception, exc))
        return await fut

    blob = entity("direct", 0).SerializeToString()
    out: dict[str, float] = {}
    try:
        for inflight in (1, 32):
            n = ops // 8 if inflight == 1 else ops
            tag = uuid.uuid4().hex[:6]

            async def put(i: int) -> None:
                await execute(ins, (f"{tag}-{i}", blob))

            async def get(i: int) -> None:
                rows = await execute(sel, (f"{tag}-{i}",))
                assert rows

            out[f"put@{inflight}"] = await run_concurrent(n, inflight, put)
            out[f"get@{inflight}"] = await run_concurrent(n, inflight, get)
    finally:
        cluster.shutdown()
    return out


def start_service(sup: Supervisor, name: str, *args: str) -> str:
    ready = sup.run_dir / f"{name}.addr"
    env = {**os.environ, "KILN_DATASTORE_SERVICE_SECRET": SECRET}
    return sup.start(name, python_module("datastore_svc", "--listen", "127.0.0.1:0", "--ready-file", str(ready),
                                         "--log-level", "warning", *args), env=env, ready_file=ready,
                     timeout=180).address


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=4000, help="operations per measurement at 32 in flight")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of kiln and the baseline")
    parser.add_argument("--cassandra", default="", help="host:port of a running node (default: start one)")
    args = parser.parse_args()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="kiln-bench-"))
    sup = Supervisor(tmp / "run")
    hosts = args.cassandra
    started = False
    try:
        if not hosts:
            done = subprocess.run(["bash", str(ROOT / "deploy" / "cassandra.sh"), "start", "--data-dir",
                                   str(tmp / "cassandra")], capture_output=True, text=True, check=True)
            hosts, started = done.stdout.strip().splitlines()[-1], True
        cass_addr = start_service(sup, "datastore_svc-cassandra", "--storage", "cassandra", "--cassandra-hosts",
                                  hosts, "--cassandra-keyspace", "kiln_bench")
        emb_addr = start_service(sup, "datastore_svc-embedded", "--storage", "embedded", "--data-dir",
                                 str(tmp / "embedded"))
        # Rounds interleave kiln and the baseline so that the machine's noise hits both alike;
        # the figures are medians and each ratio is taken within its round.
        rounds = []
        for _ in range(args.rounds):
            direct = asyncio.run(bench_direct(hosts, args.ops))
            kiln_cass = asyncio.run(bench_kiln(cass_addr, args.ops))
            rounds.append((direct, kiln_cass))
        kiln_emb = asyncio.run(bench_kiln(emb_addr, args.ops))
    finally:
        sup.stop_all()
        if started:
            subprocess.run(["bash", str(ROOT / "deploy" / "cassandra.sh"), "stop", "--data-dir",
                            str(tmp / "cassandra")], capture_output=True)
    print(f"datastore benchmark ({os.cpu_count()} CPUs, {args.ops} ops at 32 in flight, {args.ops // 8} at 1, "
          f"median of {args.rounds} interleaved rounds)")
    print(f"{'operation':<12}{'kiln/cassandra':>16}{'direct driver':>16}{'kiln/direct':>24}{'kiln/embedded':>16}")
    for op in ("put@1", "get@1", "put@32", "get@32"):
        ratios = sorted(k[op] / d[op] for d, k in rounds)
        kiln = statistics.median(k[op] for _, k in rounds)
        direct = statistics.median(d[op] for d, _ in rounds)
        spread = f"{statistics.median(ratios):.0%} ({ratios[0]:.0%}-{ratios[-1]:.0%})"
        print(f"{op:<12}{kiln:>12.0f} op/s{direct:>12.0f} op/s{spread:>24}{kiln_emb[op]:>12.0f} op/s")
    p50 = statistics.median(k["query100_p50_ms"] for _, k in rounds)
    p95 = statistics.median(k["query100_p95_ms"] for _, k in rounds)
    print(f"100-entity query on cassandra: p50 {p50:.1f} ms, p95 {p95:.1f} ms")
    print(f"100-entity query on embedded: p50 {kiln_emb['query100_p50_ms']:.1f} ms, "
          f"p95 {kiln_emb['query100_p95_ms']:.1f} ms")
    get32 = statistics.median(k["get@32"] / d["get@32"] for d, k in rounds)
    print(f"aim: get@32 at least 60% of direct: {get32:.0%}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
