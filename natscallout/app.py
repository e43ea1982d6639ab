"""Wiring: connect to NATS as the platform, answer authorization requests, serve gRPC health until SIGTERM."""

from __future__ import annotations

import logging

from kiln_platform import bus, grpcserver
from kiln_platform.natsauth import issuer_public_key
from natscallout.callout import Callout
from natscallout.config import CalloutConfig

log = logging.getLogger("natscallout")


async def serve(cfg: CalloutConfig) -> None:
    """Answer authorization requests until SIGTERM."""
    callout = Callout(cfg.issuer_seed.get(), cfg.app_secret.get())
    nc = await bus.connect(cfg.nats_url, name="natscallout")
    await callout.subscribe(nc)
    log.info("answering NATS authorization requests as issuer %s", issuer_public_key(cfg.issuer_seed.get()))
    await grpcserver.serve(cfg, [], on_stop=lambda: bus.shutdown(nc))
