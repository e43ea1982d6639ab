"""Settings of ``python -m cron_svc``."""

from __future__ import annotations

import dataclasses

from kiln.config import GrpcServiceConfig, field


@dataclasses.dataclass(frozen=True, kw_only=True)
class CronConfig(GrpcServiceConfig):
    """cron service settings (env prefix ``KILN_CRON_``)."""

    listen: str = field("127.0.0.1:50056", "host:port to serve gRPC on")
