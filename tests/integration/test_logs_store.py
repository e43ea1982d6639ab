"""The request-log stores answer App Engine's log queries the same way: SQLite (one replica) and Cassandra (many
replicas sharing it), against a real Cassandra node; and two logs_svc replicas on Cassandra share one log."""

from __future__ import annotations

import asyncio
import time
import uuid

import grpc
import pytest

from kiln_platform import bus
from kiln_platform.config import StorageConfig, load
from kiln.pb.logs.v1 import logs_pb2, logs_pb2_grpc
from kiln_platform.supervisor import python_module
from logs_svc.cassandra_store import DAY_US, CassandraLogStore
from logs_svc.store import LogStore
from tests.integration.conftest import app_metadata, service_env

pytestmark = pytest.mark.nats

NOW_US = int(time.time() * 1_000_000)


def record(app: str, request_id: str, start_us: int, version: str = "v1", level: int | None = None):
    r = logs_pb2.RequestLog(app_id=app, version_id=version, request_id=request_id, method="GET", status=200)
    r.start_time.FromMicroseconds(start_us)
    if level is not None:
        r.app_logs.add(level=level, message="line")
    return r


@pytest.fixture(params=["embedded", pytest.param("cassandra", marks=pytest.mark.cassandra)])
async def store(request, tmp_path):
    if request.param == "cassandra":
        hosts = request.getfixturevalue("cassandra_hosts")
        settings = load(StorageConfig, prefix="TEST", argv=["--storage", "cassandra", "--cassandra-hosts", hosts,
                                                            "--cassandra-keyspace", "kiln_logs_test"])
        found = CassandraLogStore(settings, retention_days=30)
    else:
        found = LogStore(tmp_path / "logs.sqlite3")
    await found.open()
    yield found
    await found.close()


def app_id() -> str:
    return "a" + uuid.uuid4().hex[:12]


async def query(store, app, **kw):
    args = dict(versions=[], start_us=None, end_us=None, min_level=None, request_ids=[], after=None, limit=100)
    args.update(kw)
    return [r.request_id for r in await store.query(app, **args)]


async def test_records_come_newest_first_across_days(store):
    app = app_id()
    await store.add([record(app, "old", NOW_US - 2 * DAY_US), record(app, "new", NOW_US),
                     record(app, "mid", NOW_US - DAY_US)])
    assert await query(store, app) == ["new", "mid", "old"]


async def test_pages_resume_after_the_last_record_even_across_days(store):
    app = app_id()
    await store.add([record(app, f"r{i}", NOW_US - i * DAY_US // 3) for i in range(7)])
    first = await store.query(app, versions=[], start_us=None, end_us=None, min_level=None, request_ids=[],
                              after=None, limit=3)
    after = (first[-1].start_time.ToMicroseconds(), first[-1].request_id)
    assert [r.request_id for r in first] == ["r0", "r1", "r2"]
    assert await query(store, app, after=after, limit=3) == ["r3", "r4", "r5"]


async def test_filters_by_version_time_range_and_minimum_level(store):
    app = app_id()
    await store.add([record(app, "a", NOW_US - 3000, "v1", logs_pb2.LOG_LEVEL_ERROR),
                     record(app, "b", NOW_US - 2000, "v2", logs_pb2.LOG_LEVEL_INFO),
                     record(app, "c", NOW_US - 1000, "v1")])
    assert await query(store, app, versions=["v1"]) == ["c", "a"]
    assert await query(store, app, start_us=NOW_US - 2500, end_us=NOW_US - 500) == ["c", "b"]
    assert await query(store, app, min_level=logs_pb2.LOG_LEVEL_WARNING) == ["a"]


async def test_request_ids_find_their_records_and_nothing_of_other_apps(store):
    app, other = app_id(), app_id()
    await store.add([record(app, "x", NOW_US - 10), record(app, "y", NOW_US), record(other, "z", NOW_US)])
    assert await query(store, app, request_ids=["x", "z", "missing"]) == ["x"]


async def test_a_redelivered_record_is_stored_once(store):
    app = app_id()
    await store.add([record(app, "same", NOW_US)])
    await store.add([record(app, "same", NOW_US)])
    assert await query(store, app) == ["same"]


@pytest.mark.cassandra
async def test_two_replicas_on_cassandra_share_the_log(supervisor, cassandra_hosts, tmp_path):
    # A nats-server of its own: the session's has other logs_svc instances on the same durable consumer, which
    # would take some of these records into their own stores.
    (tmp_path / "nats").mkdir()
    nats_url = f"nats://{supervisor.start_nats(tmp_path / 'nats', name=f'nats-{tmp_path.name}').address}"
    addresses = []
    for n in (1, 2):
        ready = supervisor.run_dir / f"logs-cass-{n}.addr"
        child = supervisor.start(f"logs-cass-{n}", python_module(
            "logs_svc", "--listen", "127.0.0.1:0", "--ready-file", str(ready), "--nats-url", nats_url,
            "--storage", "cassandra", "--cassandra-hosts", cassandra_hosts, "--cassandra-keyspace",
            "kiln_logs_replicas"), env=service_env(), ready_file=ready, timeout=120)
        addresses.append(child.address)
    app = app_id()
    nc = await bus.connect(nats_url, name="test-logs-publisher")
    await bus.ensure_log_stream(nc)
    for i in range(6):
        await nc.publish(bus.REQUEST_LOG_SUBJECT, record(app, f"req{i}", NOW_US + i).SerializeToString())
    await nc.drain()

    async def ids(address):
        async with grpc.aio.insecure_channel(address) as channel:
            resp = await logs_pb2_grpc.LogsServiceStub(channel).Query(
                logs_pb2.QueryRequest(page_size=100), metadata=app_metadata(app), timeout=10)
            return [r.request_id for r in resp.logs]

    expected = [f"req{i}" for i in reversed(range(6))]
    for _ in range(100):
        if await ids(addresses[0]) == expected:
            break
        await asyncio.sleep(0.2)
    assert await ids(addresses[0]) == expected and await ids(addresses[1]) == expected


class FailingOnceStore:
    """Stands in for Cassandra timing out on the first batch (a unit of ours, so a stand-in is fair)."""

    def __init__(self) -> None:
        self.calls = 0
        self.stored: list[str] = []

    async def add(self, records) -> None:
        self.calls += 1
        if self.calls == 1:
            raise RuntimeError("write timeout")
        self.stored.extend(r.request_id for r in records)


async def test_the_consumer_outlives_a_failing_store_and_stores_the_batch_again(supervisor, tmp_path):
    from logs_svc.app import consume
    (tmp_path / "nats").mkdir()
    nats_url = f"nats://{supervisor.start_nats(tmp_path / 'nats', name=f'nats-{tmp_path.name}').address}"
    nc = await bus.connect(nats_url, name="test-logs-failing-store")
    await bus.ensure_log_stream(nc)
    app = app_id()
    for i in range(3):
        await nc.publish(bus.REQUEST_LOG_SUBJECT, record(app, f"r{i}", NOW_US + i).SerializeToString())
    await nc.flush()
    store, stopping = FailingOnceStore(), asyncio.Event()
    consumer = asyncio.create_task(consume(nc.jetstream(), store, stopping))
    deadline = time.monotonic() + 30
    while sorted(set(store.stored)) != ["r0", "r1", "r2"] and time.monotonic() < deadline:
        assert not consumer.done(), consumer  # the failure must not end the consumer
        await asyncio.sleep(0.1)
    stopping.set()
    await consumer
    assert store.calls >= 2 and sorted(set(store.stored)) == ["r0", "r1", "r2"]
    await nc.drain()


class RecordingStore:
    """Keeps what the consumer stores (a unit of ours)."""

    def __init__(self) -> None:
        self.stored: list[str] = []

    async def add(self, records) -> None:
        self.stored.extend(r.request_id for r in records)


async def test_the_consumer_stores_each_record_of_batched_and_single_messages(supervisor, tmp_path):
    from logs_svc.app import consume
    (tmp_path / "nats").mkdir()
    nats_url = f"nats://{supervisor.start_nats(tmp_path / 'nats', name=f'nats-{tmp_path.name}').address}"
    nc = await bus.connect(nats_url, name="test-logs-batches")
    await bus.ensure_log_stream(nc)
    app = app_id()
    batch = logs_pb2.RequestLogBatch(records=[record(app, f"b{i}", NOW_US + i).SerializeToString() for i in range(5)])
    await nc.publish(bus.REQUEST_LOG_SUBJECT, batch.SerializeToString(), headers={bus.LOG_BATCH_HEADER: "1"})
    await nc.publish(bus.REQUEST_LOG_SUBJECT, record(app, "single", NOW_US).SerializeToString())
    # A batch with one record that is not a RequestLog: that record is dropped, its neighbours stored.
    mixed = logs_pb2.RequestLogBatch(records=[record(app, "m0", NOW_US).SerializeToString(), b"\xff\xff\xff",
                                              record(app, "m2", NOW_US).SerializeToString()])
    await nc.publish(bus.REQUEST_LOG_SUBJECT, mixed.SerializeToString(), headers={bus.LOG_BATCH_HEADER: "1"})
    await nc.flush()
    store, stopping = RecordingStore(), asyncio.Event()
    consumer = asyncio.create_task(consume(nc.jetstream(), store, stopping))
    expected = sorted([f"b{i}" for i in range(5)] + ["single", "m0", "m2"])
    deadline = time.monotonic() + 30
    while sorted(store.stored) != expected and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
    stopping.set()
    await consumer
    assert sorted(store.stored) == expected
    await nc.drain()


class StoppingStore:
    """Keeps the request ids of each ``add`` call, and stops the consumer after the first (a unit of ours)."""

    def __init__(self, stopping: asyncio.Event) -> None:
        self.adds: list[list[str]] = []
        self._stopping = stopping

    async def add(self, records) -> None:
        self.adds.append([r.request_id for r in records])
        self._stopping.set()


async def test_the_consumer_takes_what_arrived_while_it_gathered_in_one_pull(supervisor, tmp_path):
    """Messages that arrive one at a time (a router at one connection sends one a request) are not pulled one at a
    time: after the first, the consumer waits out its gather window and takes the rest in one pull."""
    from logs_svc.app import CONSUMER, consume
    (tmp_path / "nats").mkdir()
    nats_url = f"nats://{supervisor.start_nats(tmp_path / 'nats', name=f'nats-{tmp_path.name}').address}"
    nc = await bus.connect(nats_url, name="test-logs-gather")
    watcher = await bus.connect(nats_url, name="test-logs-pulls")
    await bus.ensure_log_stream(nc)
    pulls: list[bytes] = []

    async def on_pull(msg) -> None:
        pulls.append(msg.data)
    await watcher.subscribe(f"$JS.API.CONSUMER.MSG.NEXT.{bus.LOG_STREAM}.{CONSUMER}", cb=on_pull)
    await watcher.flush()
    app = app_id()
    js = nc.jetstream()  # acknowledged publishes: the stream holds each before the test goes on
    await js.publish(bus.REQUEST_LOG_SUBJECT, record(app, "r0", NOW_US).SerializeToString())
    stopping, gathering, released = asyncio.Event(), asyncio.Event(), asyncio.Event()

    async def gather() -> None:
        gathering.set()
        await released.wait()
    store = StoppingStore(stopping)
    consumer = asyncio.create_task(consume(js, store, stopping, gather=gather))
    await asyncio.wait_for(gathering.wait(), 30)
    await watcher.flush()  # the first pull, answered already, has reached the watcher
    pulls_before = len(pulls)
    for i in range(1, 31):  # one at a time, each sent before the next
        await js.publish(bus.REQUEST_LOG_SUBJECT, record(app, f"r{i}", NOW_US + i).SerializeToString())
    released.set()
    await asyncio.wait_for(consumer, 30)
    await watcher.flush()
    assert [sorted(ids) for ids in store.adds] == [sorted(f"r{i}" for i in range(31))]
    assert len(pulls) - pulls_before == 1
    await watcher.drain()
    await nc.drain()


async def test_a_batch_of_records_is_one_sqlite_transaction(tmp_path):
    """The gathered batch is one commit (one WAL sync), not one per record."""
    store = LogStore(tmp_path / "logs.sqlite3")
    await store.open()
    statements: list[str] = []
    store._db.set_trace_callback(statements.append)
    app = app_id()
    await store.add([record(app, f"r{i}", NOW_US + i) for i in range(50)])
    store._db.set_trace_callback(None)
    assert [s for s in statements if s in ("BEGIN", "COMMIT")] == ["BEGIN", "COMMIT"]
    assert statements[0] == "BEGIN" and statements[-1] == "COMMIT"
    assert len(await query(store, app)) == 50
    await store.close()
