"""The router's request logs reach the ``KILN_LOGS`` stream (``router.logship``): records written to a server that
froze and was then killed with SIGKILL (so it never read them) are sent again once it is back, and each is stored
once; records shipped together travel in shared messages, in order, none larger than the batch limit."""

from __future__ import annotations

import asyncio
import os
import signal

import nats
import nats.errors
import pytest

from kiln_platform import bus
from router.logship import LogShipper
from tests.integration.test_mail_durability import Nats

pytestmark = [pytest.mark.nats, pytest.mark.timeout(120)]

RECORDS = 50


async def _wait(predicate, seconds: float) -> None:
    deadline = asyncio.get_running_loop().time() + seconds
    while not await predicate():
        assert asyncio.get_running_loop().time() < deadline, "not within the deadline"
        await asyncio.sleep(0.1)


async def _subscriptions_in_place(watcher, publisher) -> None:
    """Wait until nats-server has ``watcher``'s subscriptions made so far: a later one of its own receives a probe
    (the server reads a connection in order). ``flush()`` proves nothing here: nats-py writes its PING straight to
    the socket, possibly ahead of a SUB still queued for its flusher."""
    probes = await watcher.subscribe("logship-test.probe")
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while True:
        await publisher.publish("logship-test.probe", b"")
        try:
            await probes.next_msg(timeout=0.05)
            break
        except nats.errors.TimeoutError:
            assert loop.time() < deadline, "the watcher's subscriptions never reached nats-server"
    await probes.unsubscribe()


async def _stored(js) -> tuple[int, list[bytes], list[int]]:
    """The log stream's message count, every record in it in stream order, and each message's size."""
    messages = (await js.stream_info(bus.LOG_STREAM)).state.messages
    records, sizes = [], []
    sub = await js.pull_subscribe(bus.REQUEST_LOG_SUBJECT, stream=bus.LOG_STREAM)
    while len(sizes) < messages:
        for msg in await sub.fetch(messages - len(sizes), timeout=10):
            records += bus.request_logs_in(msg)
            sizes.append(len(msg.data))
            await msg.ack()
    await sub.unsubscribe()
    return messages, records, sizes


def test_logs_written_to_a_server_that_died_unread_are_stored_once_when_it_is_back(supervisor, tmp_path):
    server = Nats(supervisor, tmp_path).start()

    async def scenario() -> list[bytes]:
        nc = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        await bus.ensure_log_stream(nc)
        shipper = LogShipper(nc, bus.REQUEST_LOG_SUBJECT)
        server.child.proc.send_signal(signal.SIGSTOP)
        unread = server.received_unread(os.getpid())
        for n in range(RECORDS):
            shipper.ship(f"request-{n}", f"record {n}".encode())

        async def written() -> bool:  # in the frozen server's socket, unread
            return server.received_unread(os.getpid()) > unread
        await _wait(written, 30)
        await asyncio.to_thread(server.kill)
        await asyncio.to_thread(server.start)

        async def all_stored() -> bool:
            return shipper.pending == 0
        await _wait(all_stored, 60)
        _, records, _ = await _stored(nc.jetstream())
        await shipper.close()
        await nc.close()
        return records

    try:
        assert sorted(asyncio.run(scenario())) == sorted(f"record {n}".encode() for n in range(RECORDS))
    finally:
        server.stop()


async def _ship_all(url: str, records: list[bytes], **options) -> tuple[int, list[bytes], list[int]]:
    nc = await nats.connect(url)
    await bus.ensure_log_stream(nc)
    shipper = LogShipper(nc, bus.REQUEST_LOG_SUBJECT, **options)
    for n, record in enumerate(records):  # all in one turn of the event loop, as under load
        shipper.ship(f"request-{n}", record)

    async def all_stored() -> bool:
        return shipper.pending == 0
    await _wait(all_stored, 30)
    stored = await _stored(nc.jetstream())
    await shipper.close()
    await nc.close()
    return stored


@pytest.fixture
def own_nats(supervisor, tmp_path):
    """A nats-server of the test's own, so the log stream holds only its records."""
    server = Nats(supervisor, tmp_path).start()
    yield server.url
    server.stop()


def test_records_shipped_together_share_messages_and_keep_their_order(own_nats):
    records = [f"record {n}".encode() for n in range(500)]
    messages, stored, _ = asyncio.run(_ship_all(own_nats, records))
    assert stored == records
    assert messages == 1  # all shipped in one turn of the event loop


def test_no_batch_exceeds_the_size_limit(own_nats):
    records = [bytes([65 + n % 26]) * 900 for n in range(60)]
    messages, stored, sizes = asyncio.run(_ship_all(own_nats, records, max_batch_bytes=4000))
    assert stored == records
    assert max(sizes) <= 4000 and messages >= 60 * 900 // 4000


def test_a_record_larger_than_the_batch_limit_travels_alone(own_nats):
    records = [b"small", b"L" * 5000, b"tail"]
    _, stored, sizes = asyncio.run(_ship_all(own_nats, records, max_batch_bytes=1000))
    assert stored == records
    assert len(sizes) == 3


def test_a_record_is_written_to_nats_in_the_next_turn_even_while_earlier_batches_wait(supervisor, tmp_path):
    """A record never waits for an earlier batch's acknowledgement or a timer: with the server frozen (nothing is
    acknowledged), each record shipped is written to the connection within a turn of the event loop, so a router
    killed right after answering has already sent its requests' logs."""
    server = Nats(supervisor, tmp_path).start()

    async def scenario() -> list[int]:
        nc = await nats.connect(server.url, max_reconnect_attempts=-1, reconnect_time_wait=0.2)
        await bus.ensure_log_stream(nc)
        shipper = LogShipper(nc, bus.REQUEST_LOG_SUBJECT)
        server.child.proc.send_signal(signal.SIGSTOP)
        written = [server.received_unread(os.getpid())]
        for n in range(3):
            published = nc.stats["out_msgs"]
            shipper.ship(f"request-{n}", b"r" * 2000)
            for _ in range(5):  # a few turns of the loop, no time: a timer (a linger) would not have fired
                await asyncio.sleep(0)
            assert nc.stats["out_msgs"] == published + 1

            async def sent() -> bool:
                return server.received_unread(os.getpid()) >= written[-1] + 2000
            await _wait(sent, 10)  # no acknowledgement can come: the server is frozen
            written.append(server.received_unread(os.getpid()))
        server.child.proc.send_signal(signal.SIGCONT)

        async def all_stored() -> bool:
            return shipper.pending == 0
        await _wait(all_stored, 30)
        await shipper.close()
        await nc.close()
        return written

    try:
        written = asyncio.run(scenario())
        assert written == sorted(written) and len(set(written)) == 4
    finally:
        server.stop()


def test_records_shipped_before_the_stream_exists_are_stored_once_it_is_created(own_nats):
    """No stream answers (NATS's "no responders"): the batch is sent again, with a pause, until one does."""

    async def scenario() -> tuple[int, list[bytes], int]:
        nc = await nats.connect(own_nats)
        shipper = LogShipper(nc, bus.REQUEST_LOG_SUBJECT)
        refused = nc.stats["out_msgs"]
        shipper.ship("request-0", b"record 0")

        async def sent_again() -> bool:  # the first attempt was answered "no responders" and written again
            return nc.stats["out_msgs"] >= refused + 2
        await _wait(sent_again, 30)
        assert shipper.pending == 1
        await bus.ensure_log_stream(nc)

        async def stored() -> bool:
            return shipper.pending == 0
        await _wait(stored, 30)
        messages, records, _ = await _stored(nc.jetstream())
        await shipper.close()
        await nc.close()
        return messages, records, shipper.pending

    messages, records, pending = asyncio.run(scenario())
    assert records == [b"record 0"] and messages == 1 and pending == 0


def test_a_records_future_is_done_only_once_nats_server_has_the_record(supervisor, tmp_path):
    """The router answers a request only once its log has reached nats-server: ``ship`` hands back a future that
    is not done when it returns, and once it is done the server has the record (a subscriber gets it)."""
    server = Nats(supervisor, tmp_path).start()

    async def scenario() -> tuple[bool, bytes]:
        nc = await nats.connect(server.url)
        watcher = await nats.connect(server.url)
        try:
            await bus.ensure_log_stream(nc)
            sub = await watcher.subscribe(bus.REQUEST_LOG_SUBJECT)
            await _subscriptions_in_place(watcher, nc)
            shipper = LogShipper(nc, bus.REQUEST_LOG_SUBJECT)
            reached = shipper.ship("request-1", b"record 1")
            done_at_once = reached is None or reached.done()
            await asyncio.wait_for(asyncio.shield(reached), 10)
            msg = await sub.next_msg(timeout=10)
            await shipper.close()
            return done_at_once, bus.request_logs_in(msg)[0]
        finally:
            await watcher.close()
            await nc.close()

    done_at_once, record = asyncio.run(scenario())
    assert not done_at_once
    assert record == b"record 1"


class _RecordingProxy:
    """A TCP relay to nats-server that keeps every byte its client sent, in order (what the server reads)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.sent = bytearray()
        self.server: asyncio.Server | None = None
        self._relays: list[asyncio.Task] = []
        self._writers: list[asyncio.StreamWriter] = []

    async def start(self) -> str:
        self.server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        return f"nats://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def _accept(self, client_in: asyncio.StreamReader, client_out: asyncio.StreamWriter) -> None:
        server_in, server_out = await asyncio.open_connection("127.0.0.1", self.target_port)
        self._writers += [client_out, server_out]
        self._relays += [asyncio.create_task(self._pump(client_in, server_out, True)),
                         asyncio.create_task(self._pump(server_in, client_out, False))]

    async def _pump(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter, record: bool) -> None:
        while data := await source.read(65536):
            if record:
                self.sent += data
            sink.write(data)
            await sink.drain()

    async def close(self) -> None:
        assert self.server is not None
        self.server.close()
        await self.server.wait_closed()
        for writer in self._writers:
            writer.close()
        await asyncio.gather(*(w.wait_closed() for w in self._writers), *self._relays, return_exceptions=True)


def test_the_ping_that_completes_a_records_future_is_sent_after_the_record(supervisor, tmp_path):
    """The future of ``ship`` is done on the answer to a PING the shipper sends after the record's message, on the
    same connection: nats-server reads a connection in order, so its PONG says it has read the record (a PING
    written ahead of the record, as nats-py's ``flush`` writes it, would say nothing about the record)."""
    server = Nats(supervisor, tmp_path).start()

    async def scenario() -> bytes:
        proxy = _RecordingProxy(server.port)
        nc = await nats.connect(await proxy.start())
        try:
            await bus.ensure_log_stream(nc)
            shipper = LogShipper(nc, bus.REQUEST_LOG_SUBJECT)
            await nc.flush()
            start = len(proxy.sent)
            reached = shipper.ship("request-1", b"record 1")
            assert reached is not None
            await asyncio.wait_for(asyncio.shield(reached), 10)
            written = bytes(proxy.sent[start:])
            await shipper.close()
            return written
        finally:
            await nc.close()
            await proxy.close()

    written = asyncio.run(scenario())
    record_at = written.find(b"PUB " + bus.REQUEST_LOG_SUBJECT.encode())
    assert record_at >= 0
    assert b"PING\r\n" in written[record_at:]
