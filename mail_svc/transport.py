"""Where queued mail goes: an SMTP relay (STARTTLS or TLS, optional AUTH) or, under ``kiln dev``, an outbox.

A transport raises :class:`TemporaryFailure` when trying again later may work (the relay is down, slow, answers
4xx, or refuses the credentials while someone fixes them) and :class:`PermanentFailure` when it will not (5xx
for the message or every recipient). When the relay accepts the message for some recipients only, the
:class:`Outcome` names the others.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import logging
import os
import pathlib
import ssl
from typing import Protocol

import aiosmtplib

from kiln.pb.mail.v1 import mail_pb2 as pb
from mail_svc.message import delivery_key

log = logging.getLogger(__name__)


class TemporaryFailure(Exception):
    """Delivery failed; a later attempt may succeed."""


class PermanentFailure(Exception):
    """Delivery failed and will fail again."""


@dataclasses.dataclass
class Outcome:
    """A delivery the relay accepted, and the recipients it refused."""

    refused_permanently: dict[str, str] = dataclasses.field(default_factory=dict)
    deferred: dict[str, str] = dataclasses.field(default_factory=dict)

    def to_json(self) -> bytes:
        return json.dumps({"refused": self.refused_permanently, "deferred": self.deferred}).encode()

    @classmethod
    def from_json(cls, data: bytes) -> Outcome:
        try:
            found = json.loads(data)
            return cls(dict(found.get("refused", {})), dict(found.get("deferred", {})))
        except (ValueError, AttributeError):
            return cls()


class Transport(Protocol):
    """Delivers one message; see the module docstring for how it fails."""

    async def deliver(self, queued: pb.QueuedMail, raw: bytes) -> Outcome: ...

    async def close(self) -> None: ...


@dataclasses.dataclass(frozen=True)
class RelaySettings:
    """How to reach the relay."""

    host: str
    port: int
    security: str = "starttls"  # starttls | tls | none
    username: str = ""
    password: str = ""
    ca_file: str = ""
    timeout: float = 60.0
    local_hostname: str | None = None


class SmtpRelay:
    """One connection to the relay, opened when needed and kept for the next message."""

    def __init__(self, settings: RelaySettings) -> None:
        self._s = settings
        self._client: aiosmtplib.SMTP | None = None

    def _new_client(self) -> aiosmtplib.SMTP:
        s = self._s
        context = None
        if s.security != "none":
            context = ssl.create_default_context(cafile=s.ca_file or None)
        return aiosmtplib.SMTP(
            hostname=s.host, port=s.port, timeout=s.timeout, local_hostname=s.local_hostname,
            use_tls=s.security == "tls", start_tls=True if s.security == "starttls" else False,
            tls_context=context, username=s.username or None, password=s.password or None)

    async def close(self) -> None:
        client, self._client = self._client, None
        if client is not None and client.is_connected:
            try:
                await asyncio.wait_for(client.quit(), 5)
            except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError):
                client.close()

    async def _connected(self) -> tuple[aiosmtplib.SMTP, bool]:
        """The open connection, and whether it was opened just now."""
        if self._client is not None and self._client.is_connected:
            return self._client, False
        self._client = self._new_client()
        await self._client.connect()
        return self._client, True

    async def deliver(self, queued: pb.QueuedMail, raw: bytes) -> Outcome:
        for _ in range(2):
            try:
                client, fresh = await self._connected()
            except aiosmtplib.SMTPResponseException as exc:
                await self._drop()
                raise _failure(exc.code, f"relay refused the connection: {exc.code} {exc.message}") from None
            except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as exc:
                await self._drop()
                raise TemporaryFailure(f"cannot reach the relay {self._s.host}:{self._s.port}: {exc}") from None
            try:
                refused, _ = await client.sendmail(queued.envelope_from, list(queued.recipients), raw)
            except aiosmtplib.SMTPRecipientsRefused as exc:
                await self._reset(client)
                codes = [r.code for r in exc.recipients]
                reason = "; ".join(f"{r.recipient}: {r.code} {r.message}" for r in exc.recipients)
                raise (PermanentFailure if all(c >= 500 for c in codes) else TemporaryFailure)(
                    f"relay refused every recipient: {reason}") from None
            except aiosmtplib.SMTPServerDisconnected as exc:
                await self._drop()
                if not fresh:
                    continue  # the relay closed an idle connection: once more on a new one
                raise TemporaryFailure(f"relay disconnected: {exc}") from None
            except aiosmtplib.SMTPResponseException as exc:
                if exc.code == 421 and not fresh:
                    await self._drop()
                    continue  # the relay is closing this connection (e.g. too many messages on it)
                await self._reset(client)
                raise _failure(exc.code, f"relay answered {exc.code} {exc.message}") from None
            except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError) as exc:
                await self._drop()
                raise TemporaryFailure(f"sending to the relay failed: {exc}") from None
            outcome = Outcome()
            for recipient, (code, message) in refused.items():
                target = outcome.refused_permanently if code >= 500 else outcome.deferred
                target[recipient] = f"{code} {message}"
            return outcome
        raise TemporaryFailure("relay kept closing the connection")

    async def _reset(self, client: aiosmtplib.SMTP) -> None:
        try:
            await client.rset()
        except (aiosmtplib.SMTPException, OSError, asyncio.TimeoutError):
            await self._drop()

    async def _drop(self) -> None:
        client, self._client = self._client, None
        if client is not None:
            client.close()


def _failure(code: int, text: str) -> Exception:
    return PermanentFailure(text) if code >= 500 else TemporaryFailure(text)


class Outbox:
    """The development outbox: each message becomes ``<dir>/<app>/<time>-<id>.eml`` with a ``.json`` beside it,
    and a log line, instead of leaving the machine."""

    def __init__(self, root: pathlib.Path) -> None:
        self.root = root

    async def close(self) -> None:
        return None

    async def deliver(self, queued: pb.QueuedMail, raw: bytes) -> Outcome:
        try:
            await asyncio.to_thread(self._write, queued, raw)
        except OSError as exc:
            raise TemporaryFailure(f"cannot write to the outbox {self.root}: {exc}") from None
        log.info("mail (dev outbox) from %s to %s: %s [%s]", queued.envelope_from, ", ".join(queued.recipients),
                 queued.subject, queued.message_id)
        return Outcome()

    def _write(self, queued: pb.QueuedMail, raw: bytes) -> None:
        folder = self.root / queued.app_id
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
        self.root.chmod(0o700)  # every app's outgoing mail
        stem = f"{queued.queued_at.ToNanoseconds():020d}-{delivery_key(queued.message_id, list(queued.recipients))[:16]}"
        meta = {"message_id": queued.message_id, "envelope_from": queued.envelope_from,
                "recipients": list(queued.recipients), "subject": queued.subject,
                "queued_at_ns": queued.queued_at.ToNanoseconds()}
        for suffix, data in ((".eml", raw), (".json", json.dumps(meta).encode())):
            tmp = folder / f".{stem}{suffix}.tmp"
            tmp.write_bytes(data)
            os.replace(tmp, folder / f"{stem}{suffix}")

    def list(self, app_id: str, limit: int, *, with_raw: bool = True,
             message_id: str = "") -> list[pb.OutboxMessage]:
        """The app's newest ``limit`` messages, newest first: without their raw message unless ``with_raw``; only
        those whose Message-ID is ``message_id`` when that is given (their bodies are the only ones read)."""
        folder = self.root / app_id
        if not folder.is_dir():
            return []
        out: list[pb.OutboxMessage] = []
        for meta_path in sorted(folder.glob("*.json"), reverse=True):
            if len(out) >= limit:
                break
            try:
                meta = json.loads(meta_path.read_text())
                if message_id and meta["message_id"] != message_id:
                    continue
                raw = meta_path.with_suffix(".eml").read_bytes() if with_raw else b""
            except (OSError, ValueError):
                continue
            item = pb.OutboxMessage(message_id=meta["message_id"], envelope_from=meta["envelope_from"],
                                    recipients=meta["recipients"], subject=meta["subject"], raw=raw)
            item.queued_at.FromNanoseconds(int(meta["queued_at_ns"]))
            out.append(item)
        return out
