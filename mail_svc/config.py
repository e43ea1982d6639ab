"""Settings of ``python -m mail_svc``."""

from __future__ import annotations

import dataclasses

from kiln.config import GrpcServiceConfig, field


@dataclasses.dataclass(frozen=True, kw_only=True)
class MailConfig(GrpcServiceConfig):
    """mail service settings (env prefix ``KILN_MAIL_``)."""

    listen: str = field("127.0.0.1:50054", "host:port to serve gRPC on")
