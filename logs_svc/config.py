"""Settings of ``python -m logs_svc``."""

from __future__ import annotations

import dataclasses
import pathlib

from kiln_platform.bus import DEFAULT_URL
from kiln_platform.config import GrpcServiceConfig, field


@dataclasses.dataclass(frozen=True, kw_only=True)
class LogsConfig(GrpcServiceConfig):
    """Logs service settings (env prefix ``KILN_LOGS_``)."""

    listen: str = field("127.0.0.1:50057", "host:port to serve gRPC on")
    nats_url: str = field(DEFAULT_URL, "NATS server URL(s) whose KILN_LOGS stream holds the request logs")
    storage: str = field("embedded", "where logs are kept: embedded (SQLite under data_dir; one replica) or "
                                     "cassandra (any number of replicas)")
    data_dir: pathlib.Path = field(pathlib.Path("~/.local/share/kiln/logs").expanduser(),
                                   "directory of the log store (SQLite)")
    cassandra_hosts: str = field("127.0.0.1:9042", "Cassandra contact points, host:port[,host:port]")
    cassandra_keyspace: str = field("kiln_logs", "keyspace for request logs")
    cassandra_datacenter: str = field("datacenter1", "local Cassandra datacenter")
    cassandra_replication: int = field(1, "replication factor when creating the keyspace (3 in production)")
    retention_days: int = field(90, "request logs older than this are deleted")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.retention_days < 1:
            raise ValueError("retention_days: must be at least 1")
        if self.storage not in ("embedded", "cassandra"):
            raise ValueError(f"storage: must be embedded or cassandra, got {self.storage!r}")
        if self.cassandra_replication < 1:
            raise ValueError("cassandra_replication: must be at least 1")
