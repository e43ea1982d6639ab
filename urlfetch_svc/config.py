"""Settings of ``python -m urlfetch_svc``."""

from __future__ import annotations

import dataclasses

from kiln.config import GrpcServiceConfig, field


@dataclasses.dataclass(frozen=True, kw_only=True)
class UrlFetchConfig(GrpcServiceConfig):
    """URL fetch service settings (env prefix ``KILN_URLFETCH_``)."""

    listen: str = field("127.0.0.1:50053", "host:port to serve gRPC on")
