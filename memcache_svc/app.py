"""Wiring of memcache_svc.

The contract (``kiln.pb.memcache.v1.MemcacheService``) is served and discoverable by
reflection and health checks; its methods answer UNIMPLEMENTED until issue #6
builds them.
"""

from __future__ import annotations

from memcache_svc.config import MemcacheConfig
from kiln import grpcserver
from kiln.pb.memcache.v1 import memcache_pb2

SERVICE = memcache_pb2.DESCRIPTOR.services_by_name["MemcacheService"]


async def serve(cfg: MemcacheConfig) -> None:
    """Run the service until SIGTERM."""
    await grpcserver.serve(cfg, [], [(SERVICE.full_name, grpcserver.unimplemented(SERVICE, issue="issue #6"))])
