"""Exactly once towards the relay when nats-server dies around a delivery (kill -9, or frozen then killed), with
a real nats-server restarted on the same store, a real mail_svc and a real SMTP relay.

What the fault suite once caught (one mail sent twice after nats-server was killed under load): a worker whose
relay had answered ``250`` could not record the delivery while nats-server was down, gave up, and the message
went out again once its claim had gone stale. These tests hold the outage open on purpose, long past a worker's
patience and the claim's lifetime.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import pathlib
import signal
import time
import uuid

import nats
import pytest

from kiln_platform.supervisor import free_port, nats_server_binary
from mail_svc import queue as mail_queue
from tests.integration import smtpservers
from tests.integration.apps import wait_for
from tests.integration.test_mail_service import (RELAY_USER, MailService, ids_received, queue_drained,
                                                 queued_with_claim)

pytestmark = [pytest.mark.nats, pytest.mark.timeout(150)]

# mail_svc retries its NATS connection every 0.5 s: this many refused attempts keep nats-server down for about
# 8 s, longer than a NATS request's 5 s timeout plus the tests' ack_wait (2 s, after which a claim is stale).
REFUSED_RECONNECTS = 16


class Nats:
    """A nats-server on a fixed port and store, killed and started again where its clients look."""

    def __init__(self, supervisor, tmp_path):
        self.supervisor, self.port = supervisor, free_port()
        self.argv = [nats_server_binary(), "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd",
                     str(tmp_path / "nats-store")]
        self.url = f"nats://127.0.0.1:{self.port}"
        self.name = f"nats-{tmp_path.name}"
        self.starts = 0
        self.child = None

    def start(self):
        self.starts += 1
        self.child = self.supervisor.start(f"{self.name}-{self.starts}", self.argv, ready_port=self.port)
        return self

    def kill(self):
        self.child.proc.send_signal(signal.SIGKILL)
        self.child.proc.wait(10)

    def received_unread(self, client_pid: int) -> int:
        """Bytes the process ``client_pid`` sent to nats-server that nats-server has not read (it is frozen): the
        receive queue of the server's end of that process's connections, from /proc/net/tcp."""
        rows = []
        for table in ("/proc/net/tcp", "/proc/net/tcp6"):
            with contextlib.suppress(OSError):
                rows += [line.split() for line in pathlib.Path(table).read_text().splitlines()[1:]]
        inodes = set()
        for fd in pathlib.Path(f"/proc/{client_pid}/fd").iterdir():
            with contextlib.suppress(OSError):
                target = os.readlink(fd)
                if target.startswith("socket:["):
                    inodes.add(target[len("socket:["):-1])

        def port(address: str) -> int:
            return int(address.rsplit(":", 1)[1], 16)

        client_ports = {port(row[1]) for row in rows if row[9] in inodes and port(row[2]) == self.port}
        return sum(int(row[4].split(":")[1], 16) for row in rows
                   if port(row[1]) == self.port and port(row[2]) in client_ports)

    def stop(self):
        if self.child is not None and self.child.proc.poll() is None:
            self.child.proc.send_signal(signal.SIGCONT)
            self.child.proc.send_signal(signal.SIGTERM)
            self.child.proc.wait(20)


def refused_reconnects(svc) -> int:
    return svc.child.log_path.read_text(errors="replace").count("Connection refused")


@pytest.fixture
def stack(supervisor, tmp_path):
    server = Nats(supervisor, tmp_path).start()
    relay = smtpservers.Relay(tls_dir=tmp_path, credentials=RELAY_USER).start()
    services: list[MailService] = []

    def mail_service(*extra):
        svc = MailService(supervisor, server.url, relay, *extra).start()
        services.append(svc)
        return svc

    try:
        yield server, relay, mail_service
    finally:
        for svc in services:
            svc.stop()
        relay.stop()
        server.stop()


@pytest.mark.parametrize("death", ["killed while the relay holds the message",
                                   "frozen when the relay answers, then killed",
                                   "frozen when the relay answers, then killed, beside a second replica"])
def test_a_delivery_the_relay_accepted_during_a_long_nats_outage_is_recorded_and_not_sent_again(stack, death):
    """nats-server dies around the relay's 250 and stays down past the record request's timeout and past the
    claim's lifetime: the worker keeps the delivery until it can record it, and nobody sends it again."""
    server, relay, mail_service = stack
    # One worker in the frozen case, so that what reaches the frozen server is that worker's record request.
    svc = mail_service(*(["--workers", "1"] if death.startswith("frozen") else []))
    replicas = [svc]
    relay.gate.clear()
    message_id = svc.send(subject=f"outage {uuid.uuid4().hex}").message_id
    relay.wait_for(lambda msgs: relay.held >= 1)
    if death.endswith("second replica"):
        replicas.append(mail_service("--workers", "1"))  # idle until the outage: then it may be handed the message
    if death.startswith("killed"):
        server.kill()
        relay.gate.set()
        relay.wait_for(lambda msgs: [m.message_id for m in msgs] == [message_id])
    else:
        server.child.proc.send_signal(signal.SIGSTOP)
        unread = server.received_unread(svc.child.proc.pid)
        relay.gate.set()
        relay.wait_for(lambda msgs: [m.message_id for m in msgs] == [message_id])
        wait_for(lambda: server.received_unread(svc.child.proc.pid) > unread, 30)  # its record request
        server.kill()
    wait_for(lambda: refused_reconnects(svc) >= REFUSED_RECONNECTS, 60)  # the outage, as mail_svc meets it
    server.start()
    queue_drained(server.url)
    for replica in replicas:  # a stop lets each worker finish the message in hand: nothing can be sent later
        replica.stop()
    assert ids_received(relay) == [message_id]
    assert delivery_recorded(server.url, message_id)


def delivery_recorded(nats_url: str, message_id: str) -> bool:
    """Whether the bucket holds the record of the delivery of ``message_id`` to its one recipient."""

    async def look() -> bool:
        nc = await nats.connect(nats_url)
        try:
            bucket = await nc.jetstream().key_value(mail_queue.DELIVERED_BUCKET)
            entry = await bucket.get(mail_queue.delivery_key(message_id, ["someone@example.org"]))
            return mail_queue._claimed_at(entry.value or b"") is None
        finally:
            await nc.close()

    return asyncio.run(look())


def test_a_stale_claim_whose_holder_shows_itself_within_the_grace_is_not_sent(stack):
    """A claim that looks stale (its holder could not refresh it during a NATS outage) is taken over, but the
    holder is alive: it re-asserts its claim, then records its delivery. The message is not sent again."""
    server, relay, mail_service = stack
    _, key = queued_with_claim(server.url, "held through an outage", time.time() - 3600)
    mail_service()

    async def live_holder() -> None:
        nc = await nats.connect(server.url)
        try:
            bucket = await nc.jetstream().key_value(mail_queue.DELIVERED_BUCKET)
            deadline = time.monotonic() + 60
            while b"another worker" in ((await bucket.get(key)).value or b""):  # until mail_svc takes it over
                assert time.monotonic() < deadline, "mail_svc never took the stale claim over"
                await asyncio.sleep(0.02)
            await bucket.put(key, json.dumps({"claimed_by": "another worker", "at": time.time()}).encode())
            await bucket.put(key, mail_queue.Outcome().to_json())
        finally:
            await nc.close()

    asyncio.run(live_holder())
    queue_drained(server.url)
    assert ids_received(relay) == []


def test_records_jetstream_acknowledged_survive_a_kill_of_nats_server(stack):
    """nats-server writes each message to its file before it acknowledges it (its default, without fsync): a
    kill -9 right after a burst of records loses none of them. (Only a crash of the machine could.)"""
    server, _, _ = stack
    keys = [f"k{n}" for n in range(300)]

    async def put_all() -> None:
        nc = await nats.connect(server.url)
        try:
            bucket = await nc.jetstream().create_key_value(bucket="durability-check", storage="file")
            for key in keys:
                await bucket.put(key, key.encode())
            server.kill()  # at once, from the event loop, before anything else runs
        finally:
            with contextlib.suppress(Exception):
                await nc.close()

    async def read_all() -> dict[str, bytes]:
        nc = await nats.connect(server.url)
        try:
            bucket = await nc.jetstream().key_value("durability-check")
            return {key: (await bucket.get(key)).value or b"" for key in keys}
        finally:
            await nc.close()

    asyncio.run(put_all())
    server.start()
    assert asyncio.run(read_all()) == {key: key.encode() for key in keys}
