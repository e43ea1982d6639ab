"""Each app's NATS user reaches only its own subjects and body bucket (kiln_platform.natsauth), on a real nats-server:
what app code that got past the Python sandbox could do with its instance's connection."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import socket

import nats
import nats.errors
import pytest

from kiln_platform import bus, natsauth
from natscallout import callout as natscallout
from kiln_platform.supervisor import python_module

pytestmark = pytest.mark.nats

PLATFORM_PASSWORD = "platform-password"
APP_SECRET = "app-secret"


@pytest.fixture(scope="module", params=["static", "callout"])
def server(request, supervisor, tmp_path_factory):
    """A nats-server with the apps' users either in its configuration (only alpha and beta) or decided by the auth
    callout (``python -m natscallout``; the configuration names no app)."""
    name = f"nats-auth-{request.param}"
    if request.param == "static":
        config = natsauth.server_config(PLATFORM_PASSWORD, APP_SECRET, ["alpha", "beta"])
        return f"nats://{supervisor.start_nats(tmp_path_factory.mktemp(name), name=name, config=config).address}"
    seed = natsauth.new_issuer_seed()
    config = natsauth.callout_server_config(PLATFORM_PASSWORD, seed)
    url = f"nats://{supervisor.start_nats(tmp_path_factory.mktemp(name), name=name, config=config).address}"
    env = {**os.environ, "KILN_NATSCALLOUT_ISSUER_SEED": seed, "KILN_NATSCALLOUT_APP_SECRET": APP_SECRET,
           "KILN_NATSCALLOUT_NATS_URL": natsauth.with_credentials(url, natsauth.PLATFORM_USER, PLATFORM_PASSWORD)}
    ready = supervisor.run_dir / "natscallout.addr"
    supervisor.start("natscallout", python_module("natscallout", "--listen", "127.0.0.1:0", "--ready-file",
                                                  str(ready)), env=env, ready_file=ready)
    return url


class Conn:
    """A connection that records the permission violations the server reports."""

    def __init__(self) -> None:
        self.errors: list[str] = []
        self.nc: nats.aio.client.Client | None = None

    async def open(self, url: str, user: str, password: str, inbox: str = "_INBOX") -> Conn:
        async def on_error(exc: Exception) -> None:
            self.errors.append(str(exc))
        self.nc = await nats.connect(natsauth.with_credentials(url, user, password), error_cb=on_error,
                                     inbox_prefix=inbox, allow_reconnect=False)
        return self


async def as_app(url: str, app: str) -> Conn:
    return await Conn().open(url, natsauth.app_user(app), natsauth.app_password(APP_SECRET, app),
                             inbox=bus.app_inbox_prefix(app))


async def as_platform(url: str) -> Conn:
    return await Conn().open(url, natsauth.PLATFORM_USER, PLATFORM_PASSWORD)


async def test_an_app_receives_and_answers_its_own_requests(server):
    platform, alpha = await as_platform(server), await as_app(server, "alpha")

    async def answer(msg):
        await msg.respond(b"pong:" + msg.data)

    await alpha.nc.subscribe(bus.http_subject("alpha", "v1"), queue=bus.RUNTIME_QUEUE, cb=answer)
    await alpha.nc.flush()
    reply = await first_answer(platform, bus.http_subject("alpha", "v1"), b"ping")
    assert reply.data == b"pong:ping" and alpha.errors == []
    await alpha.nc.close()
    await platform.nc.close()


async def first_answer(sender: Conn, subject: str, payload: bytes) -> nats.aio.msg.Msg:
    """The reply to a request sent right after another connection subscribed: for a moment after that
    subscription's flush, nats-server may still answer "no responders" (seen about 1% of the time, more on a
    loaded machine), so a "no responders" is retried for up to 10 s."""
    deadline = asyncio.get_running_loop().time() + 10
    while True:
        try:
            return await sender.nc.request(subject, payload, timeout=5)
        except nats.errors.NoRespondersError:
            if asyncio.get_running_loop().time() > deadline:
                raise
            await asyncio.sleep(0.05)


async def delivered(subject: str, allowed: str, *, listeners: tuple[Conn, Conn], senders: tuple[Conn, Conn]) -> list[str]:
    """Subjects received when ``listeners[0]`` listens on ``subject`` and ``senders[0]`` publishes there, while
    ``listeners[1]``/``senders[1]`` do the same on ``allowed``.

    The forbidden side and the allowed side use separate connections: nats-py
    closes a connection when the server reports a permissions violation. The
    message on ``allowed`` shows delivery works; waiting a little longer gives
    the forbidden one time to arrive, were it let through.
    """
    seen: list[str] = []

    async def record(msg):
        seen.append(msg.subject)

    try:
        for conn, name in zip(listeners, (subject, allowed)):
            await conn.nc.subscribe(name, cb=record)
            with contextlib.suppress(nats.errors.Error):
                await conn.nc.flush(timeout=2)
        for conn, name in zip(senders, (subject, allowed)):
            with contextlib.suppress(nats.errors.Error):
                await conn.nc.publish(name, b"x")
                await conn.nc.flush(timeout=2)
        for _ in range(500):  # up to 10 s on a busy machine; usually a few ms
            if allowed in seen:
                break
            await asyncio.sleep(0.02)
        await asyncio.sleep(0.3)
    finally:
        for conn in {*listeners, *senders}:
            await conn.nc.close()
    return seen


@pytest.mark.parametrize("subject", ["kiln.http.beta.v1", "kiln.instance.beta.abc", "_INBOX.x", "_INBOX_beta.x",
                                     "kiln.heartbeat.beta.v1", "kiln.logs.request"])
async def test_an_app_cannot_listen_to_another_apps_traffic(server, subject):
    intruder, alpha, platform = await as_app(server, "alpha"), await as_app(server, "alpha"), await as_platform(server)
    seen = await delivered(subject, "kiln.http.alpha.v1", listeners=(intruder, alpha), senders=(platform, platform))
    assert seen == ["kiln.http.alpha.v1"]


@pytest.mark.parametrize("subject", ["kiln.http.beta.v1", "kiln.heartbeat.beta.v1", "kiln.logs.request",
                                     "$JS.API.STREAM.INFO.OBJ_kiln-bodies-beta", "$O.kiln-bodies-beta.M.x",
                                     "$JS.API.STREAM.CREATE.EVIL"])
async def test_an_app_cannot_publish_outside_its_own_subjects(server, subject):
    intruder, alpha, platform = await as_app(server, "alpha"), await as_app(server, "alpha"), await as_platform(server)
    seen = await delivered(subject, "kiln.heartbeat.alpha.v1", listeners=(platform, platform),
                           senders=(intruder, alpha))
    assert seen == ["kiln.heartbeat.alpha.v1"]


async def test_an_app_uses_its_own_body_bucket_but_cannot_create_or_open_another(server):
    platform, alpha = await as_platform(server), await as_app(server, "alpha")
    await bus.BodyStore(platform.nc, "alpha").ensure()
    await bus.BodyStore(platform.nc, "beta").ensure()
    own = bus.BodyStore(alpha.nc, "alpha", create=False)
    await own.put("resp-1", b"y" * 3_000_000)
    assert await bus.BodyStore(platform.nc, "alpha").take("resp-1") == b"y" * 3_000_000
    await bus.BodyStore(platform.nc, "alpha").put("req-1", b"z" * 100)
    assert await own.take("req-1") == b"z" * 100
    with pytest.raises(Exception):  # noqa: B017 - the server refuses the API call; the client times out
        await asyncio.wait_for(bus.BodyStore(alpha.nc, "beta", create=False).put("x", b"1"), 3)
    await alpha.nc.close()
    await platform.nc.close()


def refused(server: str, user: str, password: str) -> bool:
    """Whether nats-server answers a CONNECT with these credentials with an authorization violation."""
    host, _, port = server.removeprefix("nats://").rpartition(":")
    with socket.create_connection((host, int(port)), timeout=10) as sock, sock.makefile("rb") as reader:
        assert reader.readline().startswith(b"INFO ")
        login = {"user": user, "pass": password, "verbose": False, "pedantic": False}
        sock.sendall(b"CONNECT " + json.dumps(login).encode() + b"\r\nPING\r\n")
        answer = reader.readline()
        assert answer in (b"PONG\r\n",) or b"Authorization Violation" in answer, answer
        return b"Authorization Violation" in answer


@pytest.mark.parametrize("user, password", [
    (natsauth.app_user("alpha"), "guess"),
    (natsauth.app_user("alpha"), natsauth.app_password(APP_SECRET, "beta")),  # another app's password
    (natsauth.app_user("al.pha"), natsauth.app_password(APP_SECRET, "al.pha")),  # not an app id: subjects
    (natsauth.PLATFORM_USER, natsauth.app_password(APP_SECRET, "alpha")),
    ("", ""),
])
def test_wrong_credentials_cannot_connect(server, user, password):
    assert refused(server, user, password)


def test_an_app_with_its_password_connects(server):
    assert not refused(server, natsauth.app_user("alpha"), natsauth.app_password(APP_SECRET, "alpha"))


async def test_an_app_the_server_was_never_told_of_connects_only_through_the_callout(server, request):
    if request.node.callspec.params["server"] == "static":  # only the configuration's apps exist
        assert refused(server, natsauth.app_user("gamma"), natsauth.app_password(APP_SECRET, "gamma"))
        return
    platform, gamma = await as_platform(server), await as_app(server, "gamma")

    async def answer(msg):
        await msg.respond(b"gamma:" + msg.data)

    await gamma.nc.subscribe(bus.http_subject("gamma", "v1"), queue=bus.RUNTIME_QUEUE, cb=answer)
    await gamma.nc.flush()
    assert (await first_answer(platform, bus.http_subject("gamma", "v1"), b"hi")).data == b"gamma:hi"
    await gamma.nc.close()
    await platform.nc.close()
    intruder, own, platform = await as_app(server, "gamma"), await as_app(server, "gamma"), await as_platform(server)
    seen = await delivered("kiln.http.alpha.v1", "kiln.http.gamma.v1", listeners=(intruder, own),
                           senders=(platform, platform))
    assert seen == ["kiln.http.gamma.v1"]
