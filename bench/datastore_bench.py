"""Datastore benchmark: kiln's datastore service against cassandra-driver on the same Cassandra node.

Prints, measured in one run with kiln and its baseline interleaved round by round:

- get by key, 32 in flight: kiln's Get (gRPC, as every app's SDK calls it) against a driver ``SELECT`` of
  the same payload from a plain key/value table;
- the floor of kiln's architecture for each: a bare gRPC service of the kind kiln's services are
  (:mod:`bench.grpcfloor`, called the same way) whose Get does one prepared SELECT of the same row of kiln's
  ``entities`` table (its keyspace, partition, clustering key and consistency) and whose Put does one
  ``INSERT … IF NOT EXISTS`` of a new row there (one Paxos round); printed per round as floor ÷ driver (what the
  gRPC hop costs) and kiln ÷ floor (what kiln's own work costs), with the floor's get also run reading the
  static ``lock_txid`` column beside the entity, as kiln's get does (for information);
- put, 32 in flight: kiln's Put (a new entity: one Paxos round, the entity group's optimistic check)
  against a driver ``INSERT … IF NOT EXISTS`` (one Paxos round) on a plain table; a driver plain
  ``INSERT`` is shown for information;
- for information, kiln's Put of a new entity with an incomplete key (the Put allocates its id), against the
  driver's ``INSERT … IF NOT EXISTS``;
- a query returning 100 entities (a property filter and sort), p50 and p95;

each with the median of the rounds, the ratio kiln/baseline in every round and the median of those
ratios, and the CPU microseconds per operation of datastore_svc, this benchmark client and Cassandra
(utime + stime from /proc before and after each measurement, divided by operations). With ``--also``, the
trees take turns running first in a round. The load average
at the start is printed first: four other engineers share this 2-core machine.

Usage::

    .venv/bin/python bench/datastore_bench.py [--ops 3000] [--rounds 3] [--cassandra host:port] [--embedded]

Without ``--cassandra`` it starts a node with ``deploy/cassandra.sh`` (cached jars) in a temporary
directory and stops it afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import pathlib
import resource
import struct
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import grpc

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from bench import grpcfloor  # noqa: E402
from datastore_svc.keys import encode_element, encode_path  # noqa: E402
from kiln.api._rpc import CHANNEL_OPTIONS, DEFAULT_TIMEOUT  # noqa: E402
from kiln_platform.config import CassandraHost  # noqa: E402
from kiln_platform.supervisor import Supervisor, python_module  # noqa: E402
from kiln_platform import auth  # noqa: E402
from kiln.pb.datastore.v1 import datastore_pb2 as pb  # noqa: E402
from kiln.pb.datastore.v1 import datastore_pb2_grpc  # noqa: E402

SECRET = "bench-secret"
PAYLOAD = "x" * 900  # with the other properties, about 1 KB an entity
INFLIGHT = 32
TICKS = os.sysconf("SC_CLK_TCK")


def entity(app_key: str, i: int) -> pb.Entity:
    e = pb.Entity(key=pb.Key(path=[pb.PathElement(kind="Bench", name=f"{app_key}-{i}")]))
    e.properties["n"].integer_value = i
    e.properties["owner"].string_value = f"user{i % 10}"
    e.properties["body"].string_value = PAYLOAD
    e.properties["body"].exclude_from_indexes = True
    return e


# ---------------------------------------------------------------- CPU accounting


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                stat = pathlib.Path(f"/proc/{entry}/stat").read_text()
            except OSError:
                continue
            ppid = int(stat.rsplit(")", 1)[1].split()[1])
            kids.setdefault(ppid, []).append(int(entry))
    return kids


def tree_cpu(pid: int) -> float:
    """CPU seconds (utime + stime) of ``pid`` and its descendants (the supervisor's wrapper execs or forks)."""
    kids = _children()
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        todo += kids.get(p, [])
        try:
            fields = pathlib.Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / TICKS
    return total


def self_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def listener_pid(port: int) -> int | None:
    """The process listening on a local TCP port (Cassandra, when the benchmark did not start it)."""
    out = subprocess.run(["ss", "-ltnpH", f"sport = :{port}"], capture_output=True, text=True, check=False).stdout
    marker = "pid="
    if marker not in out:
        return None
    return int(out.split(marker, 1)[1].split(",", 1)[0])


class Meter:
    """CPU of the service, this client and Cassandra over one measurement."""

    def __init__(self, service_pid: int | None, cassandra_pid: int | None) -> None:
        self._pids = {"svc": service_pid, "cassandra": cassandra_pid}

    def read(self) -> dict[str, float]:
        out = {name: tree_cpu(pid) for name, pid in self._pids.items() if pid is not None}
        out["client"] = self_cpu()
        return out

    @staticmethod
    def per_op(before: dict[str, float], after: dict[str, float], ops: int) -> dict[str, float]:
        return {name: (after[name] - before[name]) / ops * 1e6 for name in before}


async def run_concurrent(total: int, inflight: int, op: Callable[[int], Awaitable[None]]) -> float:
    """Run ``op(i)`` for i in range(total) with ``inflight`` at a time; return operations per second."""
    counter = iter(range(total))

    async def worker() -> None:
        for i in counter:
            await op(i)

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(inflight)))
    return total / (time.perf_counter() - start)


async def measured(meter: Meter, total: int, op: Callable[[int], Awaitable[None]]) -> dict[str, Any]:
    before = meter.read()
    rate = await run_concurrent(total, INFLIGHT, op)
    return {"rate": rate, "cpu": Meter.per_op(before, meter.read(), total)}


async def alternating(meter: Meter, total: int, ops: dict[str, Callable[[int], Awaitable[None]]],
                      slices: int = 6) -> dict[str, dict[str, Any]]:
    """Like :func:`measured` for each of ``ops``, their calls made in ``slices`` slices taking turns, so that
    Cassandra's background work (flushes, compactions) and the machine's noise fall on all of them alike."""
    per = max(1, total // slices)
    spent = {name: 0.0 for name in ops}
    cpu: dict[str, dict[str, float]] = {name: {} for name in ops}
    for k in range(slices):
        for name, op in ops.items():
            before = meter.read()
            start = time.perf_counter()
            await run_concurrent(per, INFLIGHT, lambda i, op=op, base=k * per: op(base + i))  # type: ignore[misc]
            spent[name] += time.perf_counter() - start
            for who, used in Meter.per_op(before, meter.read(), 1).items():
                cpu[name][who] = cpu[name].get(who, 0.0) + used
    done = per * slices
    return {name: {"rate": done / spent[name], "cpu": {who: used / done for who, used in cpu[name].items()}}
            for name in ops}


# ---------------------------------------------------------------- kiln


def app_metadata(app: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {auth.mint_app_token(SECRET, app)}"),)


async def bench_kiln(address: str, ops: int, meter: Meter, app: str) -> dict[str, Any]:
    """kiln's Put, Get and a query, called as apps' clients call it (their channel options, a deadline, the app's
    token); ``out["written"]`` holds the entities written (the floor reads the same rows)."""
    md = app_metadata(app)
    out: dict[str, Any] = {}
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        stub = datastore_pb2_grpc.DatastoreServiceStub(channel)
        tag = uuid.uuid4().hex[:6]
        puts = [pb.PutRequest(entities=[entity(tag, i)]) for i in range(ops)]
        gets = [pb.GetRequest(keys=[puts[i].entities[0].key]) for i in range(ops)]
        out["written"] = [p.entities[0] for p in puts]

        async def put(i: int) -> None:
            await stub.Put(puts[i], metadata=md, timeout=DEFAULT_TIMEOUT)

        async def get(i: int) -> None:
            resp = await stub.Get(gets[i], metadata=md, timeout=DEFAULT_TIMEOUT)
            assert resp.results[0].HasField("entity")

        auto = [pb.PutRequest(entities=[entity(tag + "a", i)]) for i in range(ops)]
        for request in auto:
            request.entities[0].key.path[0].ClearField("name")  # incomplete: the Put allocates the id

        failed: list[str] = []

        async def put_auto(i: int) -> None:
            try:
                await stub.Put(auto[i], metadata=md, timeout=DEFAULT_TIMEOUT)
            except grpc.aio.AioRpcError as exc:  # counted and printed: an earlier tree gives up under contention
                failed.append(f"{exc.code().name}: {exc.details()}")

        out["put"] = await measured(meter, ops, put)
        out["put_auto"] = await measured(meter, ops, put_auto)
        out["put_auto"]["failed"] = failed
        out["get"] = await measured(meter, ops, get)
        # A 100-entity query: n >= 0 ORDER BY n, on the entities written above.
        query = pb.Query(kind="Bench", limit=100)
        query.filter.property_filter.property.name = "n"
        query.filter.property_filter.op = pb.PropertyFilter.OPERATOR_GREATER_THAN_OR_EQUAL
        query.filter.property_filter.value.integer_value = 0
        query.order.add(property=pb.PropertyReference(name="n"), direction=pb.PropertyOrder.DIRECTION_ASCENDING)
        latencies = []
        before = meter.read()
        for _ in range(30):
            start = time.perf_counter()
            resp = await stub.RunQuery(pb.RunQueryRequest(query=query, batch_size=100), metadata=md,
                                       timeout=DEFAULT_TIMEOUT)
            latencies.append((time.perf_counter() - start) * 1000)
            assert len(resp.batch.entity_results) == 100
        out["query"] = {"p50": statistics.median(latencies), "p95": sorted(latencies)[int(len(latencies) * 0.95) - 1],
                        "cpu": Meter.per_op(before, meter.read(), len(latencies))}
    return out


# ---------------------------------------------------------------- the floor: a bare gRPC service over the driver

FLOOR_SERVICE = "kiln.bench.DatastoreFloor"


def _pack(*fields: bytes) -> bytes:
    return b"".join(struct.pack(">I", len(f)) + f for f in fields)


def _unpack(raw: bytes) -> list[bytes]:
    out, pos = [], 0
    while pos < len(raw):
        (size,) = struct.unpack_from(">I", raw, pos)
        out.append(raw[pos + 4:pos + 4 + size])
        pos += 4 + size
    return out


async def _floor_server(ready: pathlib.Path, hosts: str, keyspace: str) -> None:
    """The floor service: Get does one prepared SELECT of a row of kiln's ``entities`` table (the statement,
    consistency and row kiln's get reads, without the static ``lock_txid``) and returns the entity's bytes; Put
    does one ``INSERT … IF NOT EXISTS`` of a row (one Paxos round). The driver is set up as kiln's engine sets it
    up (protocol 5, token-aware over DC-aware round robin, the request timeout), rows as plain tuples; requests are
    ``app, group, path[, kind, entity]`` length-prefixed, the namespace empty."""
    from cassandra import ConsistencyLevel
    from cassandra.cluster import EXEC_PROFILE_DEFAULT, Cluster, ExecutionProfile
    from cassandra.policies import DCAwareRoundRobinPolicy, TokenAwarePolicy
    from cassandra.query import tuple_factory

    from kiln_platform.cassandra import REQUEST_TIMEOUT_SECONDS

    profile = ExecutionProfile(load_balancing_policy=TokenAwarePolicy(DCAwareRoundRobinPolicy(local_dc="datacenter1")),
                               request_timeout=REQUEST_TIMEOUT_SECONDS, row_factory=tuple_factory)
    cluster = Cluster([(h.host, h.port) for h in CassandraHost.parse_list(hosts, "--cassandra")],
                      protocol_version=5, execution_profiles={EXEC_PROFILE_DEFAULT: profile})
    session = cluster.connect()
    where = "WHERE app=? AND ns='' AND grp=? AND path=?"
    select = session.prepare(f"SELECT entity FROM {keyspace}.entities {where}")
    # For information: the same read with the static column kiln's get also reads (a cross-group lock).
    select_static = session.prepare(f"SELECT entity, lock_txid FROM {keyspace}.entities {where}")
    insert = session.prepare(f"INSERT INTO {keyspace}.entities (app, ns, grp, path, kind, entity, version) "
                             "VALUES (?, '', ?, ?, ?, ?, 1) IF NOT EXISTS")
    for stmt in (select, select_static, insert):
        stmt.consistency_level = ConsistencyLevel.LOCAL_QUORUM
    insert.serial_consistency_level = ConsistencyLevel.SERIAL
    loop = asyncio.get_running_loop()

    async def execute(stmt: Any, params: Any) -> Any:
        fut = loop.create_future()
        session.execute_async(stmt, params).add_callbacks(
            lambda rows: loop.call_soon_threadsafe(fut.set_result, rows),
            lambda exc: loop.call_soon_threadsafe(fut.set_exception, exc))
        return await fut

    async def get(request: bytes, context: Any) -> bytes:
        app, group, path = _unpack(request)
        rows = await execute(select, (app.decode(), group, path))
        return bytes(rows[0][0])

    async def get_static(request: bytes, context: Any) -> bytes:
        app, group, path = _unpack(request)
        rows = await execute(select_static, (app.decode(), group, path))
        return bytes(rows[0][0])

    async def put(request: bytes, context: Any) -> bytes:
        app, group, path, kind, blob = _unpack(request)
        rows = await execute(insert, (app.decode(), group, path, kind.decode(), blob))
        return b"\x01" if rows[0][0] else b"\x00"

    await grpcfloor.serve(ready, FLOOR_SERVICE, {"Get": get, "GetStatic": get_static, "Put": put})


async def bench_floor(address: str, ops: int, meter: Meter, app: str, written: list[pb.Entity]) -> dict[str, Any]:
    """The floor called as :func:`bench_kiln` calls kiln: gets of the rows kiln wrote this round, puts of new
    entities (a new group each, as kiln's)."""
    md = app_metadata(app)
    tag = uuid.uuid4().hex[:6]
    puts = [_pack(app.encode(), encode_element(e.key.path[0]), encode_path(e.key.path), b"Bench",
                  e.SerializeToString()) for e in (entity(tag, i) for i in range(ops))]
    gets = [_pack(app.encode(), encode_element(e.key.path[0]), encode_path(e.key.path)) for e in written]
    out: dict[str, Any] = {}
    async with grpc.aio.insecure_channel(address, options=CHANNEL_OPTIONS) as channel:
        put_call: Any = channel.unary_unary(f"/{FLOOR_SERVICE}/Put")

        def getter(method: str) -> Callable[[int], Awaitable[None]]:
            call: Any = channel.unary_unary(f"/{FLOOR_SERVICE}/{method}")

            async def get(i: int) -> None:
                assert await call(gets[i % len(gets)], metadata=md, timeout=DEFAULT_TIMEOUT)
            return get

        async def put(i: int) -> None:
            assert await put_call(puts[i], metadata=md, timeout=DEFAULT_TIMEOUT) == b"\x01"

        out["put"] = await measured(meter, ops, put)
        out.update(await alternating(meter, ops, {"get": getter("Get"), "get_static": getter("GetStatic")}))
    return out


# ---------------------------------------------------------------- the driver alone


class Direct:
    """cassandra-driver on a plain table: the baseline."""

    def __init__(self, hosts: str) -> None:
        from cassandra import ConsistencyLevel
        from cassandra.cluster import Cluster

        self.cluster = Cluster([(h.host, h.port) for h in CassandraHost.parse_list(hosts, "--cassandra")],
                               protocol_version=5)
        self.session = session = self.cluster.connect()
        session.execute("CREATE KEYSPACE IF NOT EXISTS bench_direct WITH replication = "
                        "{'class': 'NetworkTopologyStrategy', 'datacenter1': 1}")
        session.execute("CREATE TABLE IF NOT EXISTS bench_direct.kv (k text PRIMARY KEY, v blob)")
        self.ins = session.prepare("INSERT INTO bench_direct.kv (k, v) VALUES (?, ?)")
        self.lwt = session.prepare("INSERT INTO bench_direct.kv (k, v) VALUES (?, ?) IF NOT EXISTS")
        self.sel = session.prepare("SELECT v FROM bench_direct.kv WHERE k = ?")
        # The query's floor: what a hand-written app would do, an index slice and one read of the 100 rows.
        session.execute("CREATE TABLE IF NOT EXISTS bench_direct.idx (p text, n int, k text, PRIMARY KEY (p, n, k))")
        self.idx_ins = session.prepare("INSERT INTO bench_direct.idx (p, n, k) VALUES (?, ?, ?)")
        self.idx_scan = session.prepare("SELECT k FROM bench_direct.idx WHERE p = ? AND n >= ? LIMIT 100")
        self.sel_in = session.prepare("SELECT k, v FROM bench_direct.kv WHERE k IN ?")
        for stmt in (self.ins, self.lwt, self.sel, self.idx_ins, self.idx_scan, self.sel_in):
            stmt.consistency_level = ConsistencyLevel.LOCAL_QUORUM
        self.lwt.serial_consistency_level = ConsistencyLevel.SERIAL
        self.blob = entity("direct", 0).SerializeToString()

    async def execute(self, stmt: Any, params: Any) -> Any:
        loop = asyncio.get_running_loop()
        fut = loop.create_future()
        rf = self.session.execute_async(stmt, params)
        rf.add_callbacks(lambda rows: loop.call_soon_threadsafe(fut.set_result, rows),
                         lambda exc: loop.call_soon_threadsafe(fut.set_exception, exc))
        return await fut

    async def bench(self, ops: int, meter: Meter) -> dict[str, Any]:
        tag = uuid.uuid4().hex[:6]
        out: dict[str, Any] = {}

        async def lwt(i: int) -> None:
            rows = await self.execute(self.lwt, (f"{tag}-{i}", self.blob))
            assert rows[0][0]

        async def put(i: int) -> None:
            await self.execute(self.ins, (f"{tag}-p{i}", self.blob))

        async def get(i: int) -> None:
            assert await self.execute(self.sel, (f"{tag}-{i}",))

        out["put"] = await measured(meter, ops, lwt)
        out["plain"] = await measured(meter, ops, put)
        out["get"] = await measured(meter, ops, get)
        await asyncio.gather(*(self.execute(self.idx_ins, (tag, i, f"{tag}-{i}")) for i in range(min(ops, 1000))))
        latencies = []
        before = meter.read()
        for _ in range(30):
            start = time.perf_counter()
            keys = [r[0] for r in await self.execute(self.idx_scan, (tag, 0))]
            rows = await self.execute(self.sel_in, (keys,))
            latencies.append((time.perf_counter() - start) * 1000)
            assert len(rows) == 100
        out["query"] = {"p50": statistics.median(latencies), "p95": sorted(latencies)[int(len(latencies) * 0.95) - 1],
                        "cpu": Meter.per_op(before, meter.read(), len(latencies))}
        return out


def start_service(sup: Supervisor, name: str, *args: str, extra_env: dict[str, str] | None = None,
                  cwd: pathlib.Path | None = None) -> tuple[str, int]:
    ready = sup.run_dir / f"{name}.addr"
    env = {**os.environ, "KILN_DATASTORE_SERVICE_SECRET": SECRET, **(extra_env or {})}
    argv = python_module("datastore_svc", "--listen", "127.0.0.1:0", "--ready-file", str(ready), "--log-level",
                         "warning", *args)
    child = sup.wait_ready(sup.spawn(name, argv, env=env, ready_file=ready, cwd=cwd), ready_file=ready,
                           timeout=180)
    return child.address, child.proc.pid


def _cpu(cpus: list[dict[str, float]]) -> str:
    return "  ".join(f"{name} {statistics.median(c[name] for c in cpus):.0f}" for name in ("svc", "client", "cassandra")
                     if all(name in c for c in cpus))


def report(rounds: list[dict[str, dict[str, Any]]], variants: list[str]) -> None:
    print(f"{'path':<30}{'kiln':>12}{'baseline':>12}{'ratio per round':>20}{'median':>8}   "
          "CPU µs/op: kiln | baseline")
    rows = [("get by key, 32 in flight", "get", "driver SELECT"),
            ("put, 32 in flight", "put", "driver INSERT IF NOT EXISTS")]
    for title, op, what in rows:
        base = statistics.median(r["driver"][op]["rate"] for r in rounds)
        for variant in variants:
            kiln = statistics.median(r[variant][op]["rate"] for r in rounds)
            ratios = [r[variant][op]["rate"] / r["driver"][op]["rate"] for r in rounds]
            name = title if variant == "kiln" else f"  {variant}"
            print(f"{name:<30}{kiln:>8.0f} op/s{base:>8.0f} op/s{' '.join(f'{x:.0%}' for x in ratios):>20}"
                  f"{statistics.median(ratios):>8.0%}   {_cpu([r[variant][op]['cpu'] for r in rounds])} | "
                  f"{_cpu([r['driver'][op]['cpu'] for r in rounds])} ({what})")
        floors = [("get", "floor: bare gRPC + SELECT"), ("get_static", "  (info) + static lock_txid")] \
            if op == "get" else [("put", "floor: bare gRPC + LWT")]
        for key, label in floors:
            rate = statistics.median(r["floor"][key]["rate"] for r in rounds)
            ratios = [r["floor"][key]["rate"] / r["driver"][op]["rate"] for r in rounds]
            print(f"{'  ' + label:<30}{rate:>8.0f} op/s{base:>8.0f} op/s{' '.join(f'{x:.0%}' for x in ratios):>20}"
                  f"{statistics.median(ratios):>8.0%}   {_cpu([r['floor'][key]['cpu'] for r in rounds])} | "
                  f"{_cpu([r['driver'][op]['cpu'] for r in rounds])} (floor ÷ driver)")
        for variant in variants:
            ratios = [r[variant][op]["rate"] / r["floor"][op]["rate"] for r in rounds]
            print(f"{'  ' + variant + ' ÷ floor':<30}{'':>24}{' '.join(f'{x:.0%}' for x in ratios):>20}"
                  f"{statistics.median(ratios):>8.0%}")
    for variant in variants:
        rate = statistics.median(r[variant]["put_auto"]["rate"] for r in rounds)
        ratios = [r[variant]["put_auto"]["rate"] / r["driver"]["put"]["rate"] for r in rounds]
        print(f"{'  (info) ' + variant + ' put, new id':<30}{rate:>8.0f} op/s{'':>12}"
              f"{' '.join(f'{x:.0%}' for x in ratios):>20}{statistics.median(ratios):>8.0%}   "
              f"{_cpu([r[variant]['put_auto']['cpu'] for r in rounds])} (an incomplete key: the Put allocates its id)")
        failed = [f for r in rounds for f in r[variant]["put_auto"]["failed"]]
        if failed:
            print(f"{'':<30}{len(failed)} of these puts failed over the rounds: {sorted(set(failed))}")
    plain = statistics.median(r["driver"]["plain"]["rate"] for r in rounds)
    print(f"{'  (info) driver plain INSERT':<30}{'':>12}{plain:>8.0f} op/s{'':>28}   "
          f"{_cpu([r['driver']['plain']['cpu'] for r in rounds])}")
    for variant in [*variants, "driver"]:
        p50s = [r[variant]["query"]["p50"] for r in rounds]
        ratios = [r[variant]["query"]["p50"] / r["driver"]["query"]["p50"] for r in rounds]
        name = {"kiln": "100-entity query", "driver": "  (floor) driver slice + IN"}.get(variant, f"  {variant}")
        print(f"{name:<30} p50 {statistics.median(p50s):.1f} ms (rounds: {', '.join(f'{p:.1f}' for p in p50s)}), "
              f"p95 {statistics.median(r[variant]['query']['p95'] for r in rounds):.1f} ms, "
              f"x floor {' '.join(f'{x:.1f}' for x in ratios)} (median {statistics.median(ratios):.1f})   "
              f"{_cpu([r[variant]['query']['cpu'] for r in rounds])}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--ops", type=int, default=3000, help="operations per measurement (32 in flight)")
    parser.add_argument("--rounds", type=int, default=3, help="interleaved rounds of kiln and the baseline")
    parser.add_argument("--cassandra", default="", help="host:port of a running node (default: start one)")
    parser.add_argument("--floor-server", type=pathlib.Path, help=argparse.SUPPRESS)  # the floor child's mode
    parser.add_argument("--floor-keyspace", default="kiln_bench", help=argparse.SUPPRESS)
    parser.add_argument("--embedded", action="store_true", help="also measure the embedded (SQLite) engine")
    parser.add_argument("--also", default="", metavar="DIR",
                        help="also measure, in every round, a datastore_svc run from another source tree (e.g. "
                             "`git archive` of an earlier commit): before/after figures from the same run")
    args = parser.parse_args()
    if args.floor_server:
        grpcfloor.run(_floor_server(args.floor_server, args.cassandra, args.floor_keyspace))
        return 0
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="kiln-bench-"))
    sup = Supervisor(tmp / "run")
    hosts = args.cassandra
    started = False
    try:
        if not hosts:
            done = subprocess.run(["bash", str(ROOT / "deploy" / "cassandra.sh"), "start", "--data-dir",
                                   str(tmp / "cassandra")], capture_output=True, text=True, check=True)
            hosts, started = done.stdout.strip().splitlines()[-1], True
        cass_pid = listener_pid(CassandraHost.parse_list(hosts, "--cassandra")[0].port)
        cass_addr, svc_pid = start_service(sup, "datastore_svc-cassandra", "--storage", "cassandra",
                                           "--cassandra-hosts", hosts, "--cassandra-keyspace", "kiln_bench")
        services = {"kiln": (cass_addr, Meter(svc_pid, cass_pid))}
        if args.also:
            # ``python -m`` puts the working directory first on sys.path: run the other tree from itself.
            also_addr, also_pid = start_service(sup, "datastore_svc-also", "--storage", "cassandra",
                                                "--cassandra-hosts", hosts, "--cassandra-keyspace", "kiln_bench_also",
                                                extra_env={"PYTHONPATH": args.also}, cwd=pathlib.Path(args.also))
            services[f"kiln from {pathlib.Path(args.also).name}"] = (also_addr, Meter(also_pid, cass_pid))
        floor_ready = sup.run_dir / "floor.addr"
        floor = sup.start("datastore-floor", [sys.executable, str(pathlib.Path(__file__).resolve()), "--floor-server",
                                              str(floor_ready), "--cassandra", hosts], ready_file=floor_ready)
        floor_meter = Meter(floor.proc.pid, cass_pid)
        direct = Direct(hosts)
        direct_meter = Meter(None, cass_pid)
        # Rounds interleave kiln and the baseline so that the machine's noise hits both alike;
        # the figures are medians and each ratio is taken within its round.
        rounds: list[dict[str, dict[str, Any]]] = []
        try:
            warm = max(args.ops // 10, 100)
            asyncio.run(direct.bench(warm, direct_meter))
            for name, (addr, meter) in services.items():
                app = "bench" + uuid.uuid4().hex[:8]
                written = asyncio.run(bench_kiln(addr, warm, meter, app))["written"]
                if name == "kiln":
                    asyncio.run(bench_floor(floor.address, warm, floor_meter, app, written))
            for number in range(args.rounds):
                results = {"driver": asyncio.run(direct.bench(args.ops, direct_meter))}
                # Each round starts with another tree, so no tree always runs first after the driver's writes.
                order = list(services.items())
                order = order[number % len(order):] + order[:number % len(order)]
                for name, (addr, meter) in order:
                    app = "bench" + uuid.uuid4().hex[:8]
                    results[name] = asyncio.run(bench_kiln(addr, args.ops, meter, app))
                    if name == "kiln":  # the floor reads the rows kiln wrote, in kiln's keyspace
                        results["floor"] = asyncio.run(bench_floor(floor.address, args.ops, floor_meter, app,
                                                                   results[name].pop("written")))
                    results[name].pop("written", None)
                rounds.append(results)
        finally:
            direct.cluster.shutdown()
        emb = None
        if args.embedded:
            emb_addr, emb_pid = start_service(sup, "datastore_svc-embedded", "--storage", "embedded", "--data-dir",
                                              str(tmp / "embedded"))
            emb = asyncio.run(bench_kiln(emb_addr, args.ops, Meter(emb_pid, None), "bench" + uuid.uuid4().hex[:8]))
    finally:
        sup.stop_all()
        if started:
            subprocess.run(["bash", str(ROOT / "deploy" / "cassandra.sh"), "stop", "--data-dir",
                            str(tmp / "cassandra")], capture_output=True, check=False)
    print(f"datastore on Cassandra: {args.ops} ops per measurement at {INFLIGHT} in flight, "
          f"{args.rounds} interleaved rounds (medians)")
    report(rounds, list(services))
    if emb is not None:
        print(f"embedded engine: get {emb['get']['rate']:.0f} op/s, put {emb['put']['rate']:.0f} op/s, "
              f"100-entity query p50 {emb['query']['p50']:.1f} ms")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
