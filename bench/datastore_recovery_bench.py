"""Crash recovery benchmark: how long after a kill -9 of datastore_svc under load every stored entity is
visible to queries again, and what the recovery sweeper reads.

One run:

1. starts datastore_svc (Cassandra engine, a fresh keyspace) and puts new entities with 32 in flight,
   running a query now and then, for ``--load-seconds``;
2. kills the service with SIGKILL in the middle of that load: puts in flight may have passed their
   Paxos commit without writing their index rows;
3. restarts it at once and measures, from the kill: the restart, and the time until every entity that
   is stored (every acknowledged put, and every in-flight put whose commit happened: get by key finds
   it) is returned by a kind query, which reads the index rows the crashed commits left unwritten;
4. traces (Cassandra's query tracing) one read of every hint bucket the sweeper reads, and prints the
   live rows and tombstones it met.

Usage::

    .venv/bin/python bench/datastore_recovery_bench.py [--cassandra host:port] [--load-seconds 6] [--runs 3]
        [--source DIR]

``--source`` runs datastore_svc from another source tree (e.g. ``git archive`` of an earlier commit), to
measure the design before a change in the same way.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from typing import Any

import grpc

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from kiln_platform.config import CassandraHost  # noqa: E402
from kiln_platform.supervisor import Supervisor, python_module  # noqa: E402
from kiln_platform import auth  # noqa: E402
from kiln.pb.datastore.v1 import datastore_pb2 as pb  # noqa: E402
from kiln.pb.datastore.v1 import datastore_pb2_grpc  # noqa: E402

SECRET = "bench-secret"
INFLIGHT = 32
KIND = "Acct"


def key(i: int) -> pb.Key:
    return pb.Key(path=[pb.PathElement(kind=KIND, name=f"a{i}")])


def account(i: int) -> pb.Entity:
    e = pb.Entity(key=key(i))
    e.properties["balance"].integer_value = i
    e.properties["owner"].string_value = f"user{i % 10}"
    return e


def _tree(pid: int) -> list[int]:
    kids: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                ppid = int(pathlib.Path(f"/proc/{entry}/stat").read_text().rsplit(")", 1)[1].split()[1])
            except OSError:
                continue
            kids.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


class Service:
    """datastore_svc under a supervisor, restartable after a kill -9."""

    def __init__(self, sup: Supervisor, hosts: str, keyspace: str, source: str) -> None:
        self._sup, self._hosts, self._keyspace, self._source = sup, hosts, keyspace, source
        self.pid = 0
        self.address = ""

    def start(self) -> None:
        ready = self._sup.run_dir / "ds.addr"
        env = {**os.environ, "KILN_DATASTORE_SERVICE_SECRET": SECRET}
        cwd = None
        if self._source:
            env["PYTHONPATH"] = self._source
            cwd = pathlib.Path(self._source)  # ``python -m`` puts the working directory first on sys.path
        argv = python_module("datastore_svc", "--listen", "127.0.0.1:0", "--ready-file", str(ready), "--log-level",
                             "info", "--storage", "cassandra", "--cassandra-hosts", self._hosts,
                             "--cassandra-keyspace", self._keyspace)
        child = self._sup.wait_ready(self._sup.spawn("datastore_svc", argv, env=env, ready_file=ready, cwd=cwd),
                                     ready_file=ready, timeout=180)
        self.pid, self.address = child.proc.pid, child.address

    def kill9(self) -> None:
        for pid in reversed(_tree(self.pid)):
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        for child in self._sup.children:
            if child.proc.pid == self.pid:
                child.proc.wait()
                self._sup.children.remove(child)
                break


async def visible(stub: Any, md: Any) -> set[str]:
    """Names returned by a keys-only kind query (reads the kind index)."""
    names: set[str] = set()
    cursor = b""
    while True:
        q = pb.Query(kind=KIND, keys_only=True)
        if cursor:
            q.start_cursor = cursor
        resp = await stub.RunQuery(pb.RunQueryRequest(query=q, batch_size=1000), metadata=md, timeout=30)
        names.update(r.entity.key.path[-1].name for r in resp.batch.entity_results)
        if resp.batch.more_results == pb.QueryResultBatch.MORE_RESULTS_TYPE_NO_MORE_RESULTS or \
                not resp.batch.entity_results:
            return names
        cursor = resp.batch.end_cursor


async def one_run(service: Service, load_seconds: float) -> dict[str, Any]:
    app = "recov" + uuid.uuid4().hex[:8]
    md = (("authorization", f"Bearer {auth.mint_app_token(SECRET, app)}"),)
    acked: set[int] = set()
    inflight: set[int] = set()
    counter = itertools.count()
    stopping = False
    async with grpc.aio.insecure_channel(service.address) as channel:
        stub = datastore_pb2_grpc.DatastoreServiceStub(channel)

        async def worker(w: int) -> None:
            while not stopping:
                i = next(counter)
                inflight.add(i)
                try:
                    await stub.Put(pb.PutRequest(entities=[account(i)]), metadata=md, timeout=30)
                except grpc.aio.AioRpcError:
                    return  # the service died: this put's outcome is unknown
                inflight.discard(i)
                acked.add(i)
                if i % 20 == w:
                    q = pb.Query(kind=KIND, limit=10)
                    q.filter.property_filter.property.name = "owner"
                    q.filter.property_filter.op = pb.PropertyFilter.OPERATOR_EQUAL
                    q.filter.property_filter.value.string_value = f"user{i % 10}"
                    try:
                        await stub.RunQuery(pb.RunQueryRequest(query=q), metadata=md, timeout=30)
                    except grpc.aio.AioRpcError:
                        return

        workers = [asyncio.create_task(worker(w)) for w in range(INFLIGHT)]
        await asyncio.sleep(load_seconds)
        killed_at = time.monotonic()
        service.kill9()
        uncertain = set(inflight)
        stopping = True
        await asyncio.gather(*workers, return_exceptions=True)
    service.start()
    restarted = time.monotonic() - killed_at
    async with grpc.aio.insecure_channel(service.address) as channel:
        stub = datastore_pb2_grpc.DatastoreServiceStub(channel)
        resp = await stub.Get(pb.GetRequest(keys=[key(i) for i in sorted(uncertain)]), metadata=md, timeout=30)
        committed = {i for i, r in zip(sorted(uncertain), resp.results) if r.HasField("entity")}
        stored = {f"a{i}" for i in acked | committed}
        first_missing: int | None = None
        while True:
            missing = stored - await visible(stub, md)
            if first_missing is None:
                first_missing = len(missing)
            if not missing:
                break
            if time.monotonic() - killed_at > 300:
                raise SystemExit(f"{len(missing)} stored entities still not visible 300 s after the kill")
            await asyncio.sleep(0.1)
        recovered = time.monotonic() - killed_at
    return {"acked": len(acked), "in_flight": len(uncertain), "committed": len(committed),
            "missing_after_restart": first_missing, "restart_s": restarted, "recovered_s": recovered}


def trace_hint_reads(hosts: str, keyspace: str) -> tuple[int, int, int]:
    """(partitions read, live rows, tombstones) over one read of each hint bucket of the last hour."""
    from cassandra.cluster import Cluster

    host = CassandraHost.parse_list(hosts, "--cassandra")[0]
    cluster = Cluster([(host.host, host.port)], protocol_version=5)
    try:
        session = cluster.connect(keyspace)
        tables = {r.table_name for r in session.execute(
            "SELECT table_name FROM system_schema.tables WHERE keyspace_name = %s", (keyspace,))}
        table, bucket_seconds = ("commit_hints", 10) if "commit_hints" in tables else ("pending_hints", 60)
        now = time.time()
        live = tombstones = 0
        buckets = range(int((now - 3600) // bucket_seconds), int(now // bucket_seconds) + 1)
        for bucket in buckets:
            rs = session.execute(f"SELECT * FROM {table} WHERE bucket = %s", (bucket,), trace=True)
            for event in rs.get_query_trace(max_wait_sec=10).events:
                words = event.description.split()
                if event.description.startswith("Read ") and "tombstone" in event.description:
                    live += int(words[1])
                    tombstones += int(words[5])
        return len(buckets), live, tombstones
    finally:
        cluster.shutdown()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--cassandra", default="", help="host:port of a running node (default: start one)")
    parser.add_argument("--load-seconds", type=float, default=6.0, help="load before each kill")
    parser.add_argument("--runs", type=int, default=3, help="kills (each on a new app, one service)")
    parser.add_argument("--source", default="", help="run datastore_svc from this source tree instead")
    args = parser.parse_args()
    print(f"load average at start: {' '.join(f'{x:.2f}' for x in os.getloadavg())} ({os.cpu_count()} CPUs)")
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="kiln-recovery-"))
    sup = Supervisor(tmp / "run")
    hosts, started = args.cassandra, False
    keyspace = "kiln_recovery_" + uuid.uuid4().hex[:6]
    runs = []
    try:
        if not hosts:
            done = subprocess.run(["bash", str(ROOT / "deploy" / "cassandra.sh"), "start", "--data-dir",
                                   str(tmp / "cassandra")], capture_output=True, text=True, check=True)
            hosts, started = done.stdout.strip().splitlines()[-1], True
        service = Service(sup, hosts, keyspace, args.source)
        service.start()
        for _ in range(args.runs):
            runs.append(asyncio.run(one_run(service, args.load_seconds)))
            print("  run:", runs[-1], flush=True)
        # Let the sweeper pass over the run's buckets, then see what one read of them costs.
        time.sleep(12)
        partitions, live, tombstones = trace_hint_reads(hosts, keyspace)
    finally:
        sup.stop_all()
        if started:
            subprocess.run(["bash", str(ROOT / "deploy" / "cassandra.sh"), "stop", "--data-dir",
                            str(tmp / "cassandra")], capture_output=True, check=False)
        else:
            from kiln_platform.cassandra import drop_keyspace
            drop_keyspace(hosts, keyspace)
    print(f"recovery after kill -9 under load ({INFLIGHT} puts in flight, {args.load_seconds:.0f} s of load, "
          f"{len(runs)} runs{', source ' + args.source if args.source else ''}):")
    print(f"  puts in flight at the kill: {', '.join(str(r['in_flight']) for r in runs)}; committed of them: "
          f"{', '.join(str(r['committed']) for r in runs)}; stored but not visible after the restart: "
          f"{', '.join(str(r['missing_after_restart']) for r in runs)}")
    each = ", ".join(f"{r['recovered_s']:.1f}" for r in runs)
    print(f"  restart: median {statistics.median(r['restart_s'] for r in runs):.1f} s; every stored entity visible "
          f"again: median {statistics.median(r['recovered_s'] for r in runs):.1f} s after the kill "
          f"(runs: {each})")
    print(f"  one sweep over the hint buckets of the last hour: {partitions} partitions, {live} live rows, "
          f"{tombstones} tombstones")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
