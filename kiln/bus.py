"""The NATS connection every kiln process uses.

Connects with unlimited reconnects (a NATS restart or failover is survived),
logs connection state changes, and drains on shutdown so in-flight
request-replies and subscriptions finish instead of being cut.
"""

from __future__ import annotations

import logging

import nats
from nats.aio.client import Client

log = logging.getLogger(__name__)

DEFAULT_URL = "nats://127.0.0.1:4222"


async def connect(url: str, *, name: str) -> Client:
    """Connect to NATS at ``url`` (comma-separated for a cluster) as ``name``."""

    async def on_error(exc: Exception) -> None:
        log.warning("nats error: %s", exc)

    async def on_disconnect() -> None:
        log.warning("nats disconnected")

    async def on_reconnect() -> None:
        log.info("nats reconnected")

    return await nats.connect(
        servers=[u.strip() for u in url.split(",") if u.strip()],
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        allow_reconnect=True,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
    )


def http_subject(app_id: str, version_id: str) -> str:
    """The subject runtime instances of one app version listen on."""
    return f"kiln.http.{app_id}.{version_id}"


def instance_subject(instance_id: str) -> str:
    """The subject that reaches one runtime instance."""
    return f"kiln.instance.{instance_id}"


RUNTIME_QUEUE = "runtime"
ERROR_HEADER = "Kiln-Error-Code"
