"""Settings of ``python -m memcache_svc``."""

from __future__ import annotations

import dataclasses

from kiln.config import GrpcServiceConfig, field


@dataclasses.dataclass(frozen=True, kw_only=True)
class MemcacheConfig(GrpcServiceConfig):
    """memcache service settings (env prefix ``KILN_MEMCACHE_``)."""

    listen: str = field("127.0.0.1:50052", "host:port to serve gRPC on")
