"""Settings of ``python -m logs_svc``."""

from __future__ import annotations

import dataclasses
import pathlib
import typing

from kiln_platform.config import GrpcServiceConfig, ListenAddress, StorageConfig, field


@dataclasses.dataclass(frozen=True, kw_only=True)
class LogsConfig(StorageConfig, GrpcServiceConfig):
    """Logs service settings (env prefix ``KILN_LOGS_``); storage settings from :class:`StorageConfig`."""

    env_prefix: typing.ClassVar[str] = "LOGS"  # its environment variables are KILN_LOGS_<SETTING>

    listen: ListenAddress = field(ListenAddress("127.0.0.1", 50057), "host:port to serve gRPC on")
    nats_url: str = field("", "NATS server URL(s) whose KILN_LOGS stream holds the request logs", required=True)
    data_dir: pathlib.Path = field(pathlib.Path("~/.local/share/kiln/logs").expanduser(),
                                   "directory of the log store (SQLite)")
    cassandra_keyspace: str = field("kiln_logs", "keyspace for request logs")
    retention_days: int = field(90, "request logs older than this are deleted")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.retention_days < 1:
            raise ValueError("retention_days: must be at least 1")
