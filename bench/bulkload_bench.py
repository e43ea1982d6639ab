"""Bulk load benchmark: rows per second ``kiln bulkload upload`` puts into the datastore on Cassandra, beside a
direct cassandra-driver batch insert of the same rows into a plain table of the same node.

In one run on one machine:

- baseline: cassandra-driver, one prepared INSERT per row, grouped in UNLOGGED batches of ``--direct-batch``
  rows (kept under Cassandra's batch size limit), one batch in flight at a time — what a hand-written loader
  that knows the table would do, with no entity model, indexes or resumability;
- kiln: the CLI's loader (``deploy.bulkload_cli.upload``) with a YAML mapping: each row converted and checked,
  ids allocated and recorded, ``Put`` of ``--batch-size`` entities to datastore_svc on Cassandra (which writes
  each entity with its built-in indexes and commits its entity group), progress recorded after each batch;
- the ratio kiln/direct.

Usage::

    .venv/bin/python bench/bulkload_bench.py [--rows 20000] [--batch-size 500] [--cassandra host:port]
"""

from __future__ import annotations

import argparse
import csv
import datetime
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import grpc  # noqa: E402

from deploy import bulkload, bulkload_cli  # noqa: E402
from kiln_platform import auth  # noqa: E402
from kiln.pb.datastore.v1 import datastore_pb2_grpc  # noqa: E402
from kiln_platform.config import CassandraHost  # noqa: E402
from kiln_platform.supervisor import Supervisor, python_module  # noqa: E402

SECRET = "bench-secret"
APP = "bulkbench"
MAPPING = ("kind: Book\nproperties:\n- column: title\n- column: pages\n  type: int\n- column: published\n"
           "  type: date\n- column: summary\n  type: text\n")


def write_csv(path: pathlib.Path, rows: int) -> list[tuple[str, int, datetime.date, str]]:
    data = []
    with open(path, "w", newline="") as f:
        out = csv.writer(f)
        out.writerow(["title", "pages", "published", "summary"])
        for i in range(rows):
            row = (f"Book number {i}", 100 + i % 900, datetime.date(1900 + i % 120, 1 + i % 12, 1 + i % 28),
                   f"A summary of book {i}, " + "x" * 150)
            data.append(row)
            out.writerow([row[0], row[1], row[2].isoformat(), row[3]])
    return data


def direct(hosts: str, rows: list[tuple[str, int, datetime.date, str]], batch: int) -> float:
    from cassandra import ConsistencyLevel
    from cassandra.cluster import Cluster
    from cassandra.query import BatchStatement, BatchType

    cluster = Cluster([(h.host, h.port) for h in CassandraHost.parse_list(hosts, "--cassandra")], protocol_version=5)
    try:
        session = cluster.connect()
        session.execute("CREATE KEYSPACE IF NOT EXISTS bench_direct WITH replication = "
                        "{'class': 'NetworkTopologyStrategy', 'datacenter1': 1}")
        session.execute("DROP TABLE IF EXISTS bench_direct.books")
        session.execute("CREATE TABLE bench_direct.books (id bigint PRIMARY KEY, title text, pages int, "
                        "published date, summary text)")
        insert = session.prepare("INSERT INTO bench_direct.books (id, title, pages, published, summary) "
                                 "VALUES (?, ?, ?, ?, ?)")
        started = time.perf_counter()
        for start in range(0, len(rows), batch):
            stmt = BatchStatement(batch_type=BatchType.UNLOGGED, consistency_level=ConsistencyLevel.LOCAL_QUORUM)
            for i, row in enumerate(rows[start:start + batch], start=start):
                stmt.add(insert, (i + 1, *row))
            session.execute(stmt, timeout=60)
        return len(rows) / (time.perf_counter() - started)
    finally:
        cluster.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=20_000)
    parser.add_argument("--batch-size", type=int, default=500, help="entities per Put (kiln)")
    parser.add_argument("--direct-batch", type=int, default=100, help="rows per UNLOGGED batch (baseline)")
    parser.add_argument("--cassandra", default="", help="host:port of a running node (default: start one)")
    args = parser.parse_args()
    tmp = pathlib.Path(tempfile.mkdtemp(prefix="kiln-bulk-bench-"))
    sup = Supervisor(tmp / "run")
    hosts, started = args.cassandra, False
    try:
        if not hosts:
            done = subprocess.run(["bash", str(ROOT / "deploy" / "cassandra.sh"), "start", "--data-dir",
                                   str(tmp / "cassandra")], capture_output=True, text=True, check=True)
            hosts, started = done.stdout.strip().splitlines()[-1], True
        ready = tmp / "datastore.addr"
        datastore = sup.start("datastore_svc", python_module(
            "datastore_svc", "--listen", "127.0.0.1:0", "--ready-file", str(ready), "--log-level", "warning",
            "--storage", "cassandra", "--cassandra-hosts", hosts, "--cassandra-keyspace", "kiln_bulk_bench"),
            env={**os.environ, "KILN_DATASTORE_SERVICE_SECRET": SECRET}, ready_file=ready, timeout=180)
        data = tmp / "books.csv"
        rows = write_csv(data, args.rows)
        (tmp / "map.yaml").write_text(MAPPING)
        mapping = bulkload.load_mapping(tmp / "map.yaml")
        direct_rate = direct(hosts, rows, args.direct_batch)
        with grpc.insecure_channel(datastore.address) as channel:
            stub = datastore_pb2_grpc.DatastoreServiceStub(channel)
            meta = (("authorization", f"Bearer {auth.mint_app_token(SECRET, APP)}"),)
            result = bulkload_cli.upload(stub, meta, data, mapping, APP, batch_size=args.batch_size, restart=True)
        kiln_rate = result.rows / result.seconds
    finally:
        sup.stop_all()
        if started:
            subprocess.run(["bash", str(ROOT / "deploy" / "cassandra.sh"), "stop", "--data-dir",
                            str(tmp / "cassandra")], capture_output=True)
    print(f"bulk load of {args.rows:,} rows (4 columns, ~230 bytes) into Cassandra, one batch in flight")
    print(f"direct cassandra-driver, UNLOGGED batches of {args.direct_batch}: {direct_rate:9,.0f} rows/s")
    print(f"kiln bulkload, Put of {args.batch_size} entities:              {kiln_rate:9,.0f} rows/s "
          f"({result.state.loaded:,} loaded, {result.state.rejected} rejected)")
    if result.state.rejected:
        raise SystemExit("rows were rejected: the benchmark's CSV is wrong")
    print(f"kiln/direct: {kiln_rate / direct_rate:.0%}")


if __name__ == "__main__":
    main()
