"""Wiring of memcache_svc: the cache, its gRPC servicer, the optional memcached text protocol, expiry sweeps."""

from __future__ import annotations

import asyncio
import contextlib
import logging

from kiln_platform import grpcserver
from kiln.pb.memcache.v1 import memcache_pb2, memcache_pb2_grpc
from memcache_svc import textproto
from memcache_svc.config import MemcacheConfig
from memcache_svc.service import MemcacheService
from memcache_svc.store import Cache

log = logging.getLogger(__name__)

SERVICE_NAME = memcache_pb2.DESCRIPTOR.services_by_name["MemcacheService"].full_name


async def sweep(cache: Cache) -> None:
    """Drop expired items every second, a bounded number at a time."""
    while True:
        await asyncio.sleep(1)
        cache.sweep()


async def serve(cfg: MemcacheConfig) -> None:
    """Run the service until SIGTERM."""
    cache = Cache(cfg.max_bytes)
    sweeper = asyncio.create_task(sweep(cache))
    text_server = None
    if cfg.text_listen:
        text_server = await textproto.start(cache, cfg.text_app, cfg.text_listen.host, cfg.text_listen.port)
        log.info("memcached text protocol for app %s on %s", cfg.text_app, cfg.text_listen)

    async def stop() -> None:
        sweeper.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await sweeper
        if text_server is not None:
            text_server.close()
            await text_server.wait_closed()

    registration = grpcserver.Registration(SERVICE_NAME, memcache_pb2_grpc.add_MemcacheServiceServicer_to_server,
                                           MemcacheService(cache))
    await grpcserver.serve(cfg, [registration], on_stop=stop)
