"""Wiring of logs_svc: the JetStream consumer that stores request logs, and the gRPC query service.

Routers publish request log records on ``kiln.logs.request``, many to a message; the
``KILN_LOGS`` stream keeps them, and this service reads the stream with a
durable consumer, acknowledging a batch only after storing it — so a crash or
restart of the service loses no record (a redelivered one is stored once). A
batch the store refuses (Cassandra timing out) is handed back to the stream
and tried again a second later, by this replica or another.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable

import nats.errors
from nats.aio.msg import Msg
from nats.js import JetStreamContext

from kiln_platform import bus, grpcserver
from kiln.pb.logs.v1 import logs_pb2, logs_pb2_grpc
from logs_svc.config import LogsConfig
from logs_svc.service import LogsService
from logs_svc.store import LogStore, Store

log = logging.getLogger(__name__)

SERVICE_NAME = logs_pb2.DESCRIPTOR.services_by_name["LogsService"].full_name
CONSUMER = "logs-svc"
BATCH = 50  # messages a fetch; each holds up to a few hundred records (a router's batch)
GATHER_SECONDS = 0.25  # after the first message of a batch, how long to gather more before storing them
GATHER_MESSAGES = 200  # at most this many messages (each up to a few hundred records) stored together
STORE_RETRY_SECONDS = 1.0  # after the store failed, before the batch is tried again
# How long a pull that finds nothing waits (it returns at once with what the stream holds otherwise).
_AVAILABLE_SECONDS = 0.05


async def _available(sub: JetStreamContext.PullSubscription, most: int) -> list[Msg]:
    """Up to ``most`` messages the stream holds for the consumer now (none if it holds none)."""
    try:
        return await sub.fetch(most, timeout=_AVAILABLE_SECONDS)
    except (nats.errors.TimeoutError, TimeoutError):
        return []


async def consume(js: JetStreamContext, store: Store, stopping: asyncio.Event, *,
                  gather: Callable[[], Awaitable[None]] | None = None) -> None:
    """Move records from the stream into the store until ``stopping`` is set.

    ``gather`` is awaited between the first messages of a batch and the rest (by default a wait of
    ``GATHER_SECONDS``, cut short by ``stopping``).
    """
    async def gather_window() -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), GATHER_SECONDS)

    sub = await js.pull_subscribe(bus.REQUEST_LOG_SUBJECT, durable=CONSUMER, stream=bus.LOG_STREAM)
    # A stop flag rather than cancellation: nats-py's fetch turns a cancellation
    # into its own timeout error, which this loop would take for an empty batch.
    while not stopping.is_set():
        try:
            msgs = await sub.fetch(BATCH, timeout=1.0)  # waits for the first message, returns what is there
            # Each store commit is an fsync (SQLite, synchronous=FULL), and each pull a request nats-server answers
            # with what it holds *now*: pulling again and again while messages trickle in (one a request at one
            # connection) cost a pull, a status message and a wake-up of both processes per message. So wait
            # while messages gather in the stream, then take them all in as few pulls as the batch allows.
            await (gather or gather_window)()
            while (wanted := GATHER_MESSAGES - len(msgs)) > 0:
                more = await _available(sub, wanted)
                msgs += more
                if len(more) < wanted:  # the stream had no more
                    break
        except (nats.errors.TimeoutError, TimeoutError):
            continue
        except nats.errors.Error as exc:
            log.warning("reading the log stream: %s", exc)
            await asyncio.sleep(1)
            continue
        records = []
        for msg in msgs:
            try:
                raws = bus.request_logs_in(msg)
            except Exception:  # noqa: BLE001 - a malformed message is dropped, not retried forever
                log.warning("dropping a malformed request-log batch (%d bytes)", len(msg.data))
                continue
            for raw in raws:
                try:
                    records.append(logs_pb2.RequestLog.FromString(raw))
                except Exception:  # noqa: BLE001 - a malformed record is dropped, not retried forever
                    log.warning("dropping a malformed request-log record (%d bytes)", len(raw))
        try:
            await store.add(records)
        except Exception:  # noqa: BLE001 - storage trouble must not end the consumer; the batch comes back
            log.exception("storing %d request logs failed; they will be delivered again", len(records))
            for msg in msgs:
                with contextlib.suppress(nats.errors.Error):
                    await msg.nak(delay=STORE_RETRY_SECONDS)
            await asyncio.sleep(STORE_RETRY_SECONDS)
            continue
        for msg in msgs:
            await msg.ack()
    # Leave the pull subscription before the connection drains: nats-py's drain
    # otherwise waits its full timeout (30 s) on a pull consumer's inbox.
    await sub.unsubscribe()


async def expire(store: Store, retention_days: int) -> None:
    """Delete records past retention, hourly."""
    while True:
        removed = await store.expire(int((time.time() - retention_days * 86400) * 1_000_000))
        if removed:
            log.info("expired %d request logs", removed)
        await asyncio.sleep(3600)


def open_store(cfg: LogsConfig) -> Store:
    """The configured store; Cassandra's driver is imported only when used."""
    def on_cassandra() -> Store:
        from logs_svc.cassandra_store import CassandraLogStore
        return CassandraLogStore(cfg, cfg.retention_days)
    return cfg.pick({"embedded": lambda: LogStore(cfg.data_dir / "logs.sqlite3"), "cassandra": on_cassandra})


async def serve(cfg: LogsConfig) -> None:
    """Run the logs service until SIGTERM."""
    store = open_store(cfg)
    await store.open()
    nc = await bus.connect(cfg.nats_url, name="logs_svc")
    await bus.ensure_log_stream(nc)
    stopping = asyncio.Event()
    consumer = asyncio.create_task(consume(nc.jetstream(), store, stopping))
    expiry = asyncio.create_task(expire(store, cfg.retention_days))

    async def stop() -> None:
        stopping.set()
        expiry.cancel()
        done, _ = await asyncio.wait([consumer], timeout=5)
        if not done:
            consumer.cancel()
        await asyncio.gather(consumer, expiry, return_exceptions=True)
        await bus.shutdown(nc)
        await store.close()

    registration = grpcserver.Registration(SERVICE_NAME, logs_pb2_grpc.add_LogsServiceServicer_to_server,
                                           LogsService(store))
    await grpcserver.serve(cfg, [registration], on_stop=stop)
