"""Settings of ``python -m logs_svc``."""

from __future__ import annotations

import dataclasses
import pathlib

from kiln.bus import DEFAULT_URL
from kiln.config import GrpcServiceConfig, field


@dataclasses.dataclass(frozen=True, kw_only=True)
class LogsConfig(GrpcServiceConfig):
    """Logs service settings (env prefix ``KILN_LOGS_``)."""

    listen: str = field("127.0.0.1:50057", "host:port to serve gRPC on")
    nats_url: str = field(DEFAULT_URL, "NATS server URL(s) whose KILN_LOGS stream holds the request logs")
    data_dir: pathlib.Path = field(pathlib.Path("~/.local/share/kiln/logs").expanduser(),
                                   "directory of the log store (SQLite)")
    retention_days: int = field(90, "request logs older than this are deleted")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.retention_days < 1:
            raise ValueError("retention_days: must be at least 1")
