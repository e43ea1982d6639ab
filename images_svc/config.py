"""Settings of ``python -m images_svc``."""

from __future__ import annotations

import dataclasses

from kiln.config import GrpcServiceConfig, field


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImagesConfig(GrpcServiceConfig):
    """images service settings (env prefix ``KILN_IMAGES_``)."""

    listen: str = field("127.0.0.1:50055", "host:port to serve gRPC on")
