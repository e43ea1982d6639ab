"""A real SMTP server (aiosmtpd) on loopback for tests: the relay mail_svc delivers to.

It runs its own event loop in a thread, can require STARTTLS and AUTH, answers chosen recipients or messages
with chosen SMTP replies, and can hold messages at DATA (a gate) so a test can kill mail_svc mid-delivery. It
counts a message as received only when it answers ``250`` for it on a live connection — what "the relay
acknowledged the delivery" means.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import email
import email.message
import email.policy
import pathlib
import ssl
import threading
import time
from collections.abc import Callable, Iterator
from typing import Any

from aiosmtpd.smtp import SMTP, AuthResult, Envelope, LoginPassword, Session

from tests.integration.webservers import self_signed


@dataclasses.dataclass
class Received:
    """One message the relay accepted."""

    mail_from: str
    rcpt_tos: list[str]
    data: bytes
    tls: bool
    login: str | None

    @property
    def message(self) -> email.message.EmailMessage:
        parsed = email.message_from_bytes(self.data, policy=email.policy.default)
        assert isinstance(parsed, email.message.EmailMessage)
        return parsed

    @property
    def message_id(self) -> str:
        return str(self.message["Message-ID"]).strip()


class Relay:
    """See the module docstring. ``replies`` maps a recipient to the RCPT reply it gets (e.g. ``"550 no"``);
    ``data_replies`` is a list of replies the next DATA commands get before the relay accepts again."""

    def __init__(self, *, tls_dir: pathlib.Path | None = None, credentials: tuple[str, str] | None = None,
                 port: int = 0) -> None:
        self.credentials = credentials
        self.cert_path: pathlib.Path | None = None
        self.key_path: pathlib.Path | None = None
        if tls_dir is not None:
            self.cert_path, self.key_path = self_signed(tls_dir, "127.0.0.1")
        self.port = port
        self.received: list[Received] = []
        self.replies: dict[str, str] = {}
        self.data_replies: list[str] = []
        self.gate = threading.Event()
        self.gate.set()
        self.held = 0
        self.accept_before_holding: int | None = None
        self.connections = 0
        self._protocols: list[SMTP] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)

    # aiosmtpd handler hooks ------------------------------------------------------------------------------------
    async def handle_RCPT(self, server: SMTP, session: Session, envelope: Envelope, address: str,
                          rcpt_options: list[str]) -> str:
        reply = self.replies.get(address)
        if reply:
            return reply
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        with self._lock:
            if self.data_replies:
                return self.data_replies.pop(0)
            if self.accept_before_holding is not None and len(self.received) >= self.accept_before_holding:
                self.gate.clear()
                self.accept_before_holding = None
        if not self.gate.is_set():
            with self._lock:
                self.held += 1
            try:
                while not self.gate.is_set():
                    await asyncio.sleep(0.02)
            finally:
                with self._lock:
                    self.held -= 1
        if server.transport is None or server.transport.is_closing():
            return "451 the client went away"
        login = session.auth_data.login.decode() if isinstance(session.auth_data, LoginPassword) else None
        with self._lock:
            self.received.append(Received(str(envelope.mail_from), list(envelope.rcpt_tos),
                                          bytes(envelope.original_content or b""), session.ssl is not None, login))
        return "250 OK queued"

    def _authenticate(self, server: SMTP, session: Session, envelope: Envelope, mechanism: str,
                      auth_data: Any) -> AuthResult:
        ok = isinstance(auth_data, LoginPassword) and self.credentials is not None and \
            (auth_data.login.decode(), auth_data.password.decode()) == self.credentials
        return AuthResult(success=ok, handled=False, auth_data=auth_data if ok else None)

    # lifecycle -------------------------------------------------------------------------------------------------
    def start(self) -> Relay:
        context = None
        if self.cert_path is not None:
            context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            context.load_cert_chain(self.cert_path, self.key_path)

        def factory() -> SMTP:
            kwargs: dict[str, Any] = {}
            if self.credentials is not None:
                kwargs = {"authenticator": self._authenticate, "auth_required": True}
            protocol = SMTP(self, tls_context=context, require_starttls=context is not None, hostname="relay.test",
                            **kwargs)
            with self._lock:
                self.connections += 1
                self._protocols.append(protocol)
            return protocol

        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            self._loop.create_server(factory, "127.0.0.1", self.port), self._loop).result(10)
        self.port = self._server.sockets[0].getsockname()[1]
        return self

    def stop(self) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for protocol in self._protocols:
                if protocol.transport is not None:
                    protocol.transport.close()
            await asyncio.sleep(0.05)
            others = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in others:
                task.cancel()
            await asyncio.gather(*others, return_exceptions=True)
            await self._server.wait_closed()

        with contextlib.suppress(Exception):
            asyncio.run_coroutine_threadsafe(close(), self._loop).result(10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
        self._loop.close()

    @property
    def address(self) -> str:
        return f"127.0.0.1:{self.port}"

    def wait_for(self, predicate: Callable[[list[Received]], bool], timeout: float = 30.0) -> list[Received]:
        """Wait until ``predicate(received)`` holds; returns the received messages."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            with self._lock:
                snapshot = list(self.received)
            if predicate(snapshot):
                return snapshot
            time.sleep(0.05)
        raise AssertionError(f"relay: condition not met within {timeout}s; received "
                             f"{[(m.message_id, m.rcpt_tos) for m in self.received]}")


@contextlib.contextmanager
def relay(**kwargs: Any) -> Iterator[Relay]:
    """A started :class:`Relay`, stopped afterwards."""
    server = Relay(**kwargs).start()
    try:
        yield server
    finally:
        server.stop()
