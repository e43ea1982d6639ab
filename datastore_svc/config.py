"""Settings of ``python -m datastore_svc``."""

from __future__ import annotations

import dataclasses
import pathlib

from kiln_platform.config import GrpcServiceConfig, field

ENGINES = ("embedded", "cassandra")


@dataclasses.dataclass(frozen=True, kw_only=True)
class DatastoreConfig(GrpcServiceConfig):
    """Datastore service settings (env prefix ``KILN_DATASTORE_``)."""

    listen: str = field("127.0.0.1:50051", "host:port to serve gRPC on")
    storage: str = field("embedded", "storage engine: embedded (SQLite files) or cassandra")
    data_dir: pathlib.Path = field(pathlib.Path("~/.local/share/kiln/datastore").expanduser(),
                                   "directory of the embedded engine's files")
    cassandra_hosts: str = field("127.0.0.1:9042", "Cassandra contact points, host:port[,host:port]")
    cassandra_keyspace: str = field("kiln_datastore", "keyspace for entities")
    cassandra_datacenter: str = field("datacenter1", "local Cassandra datacenter")
    cassandra_replication: int = field(1, "replication factor when creating the keyspace (3 in production)")
    cassandra_index_shards: int = field(4, "partitions each index is spread over (fixed when the keyspace "
                                            "is created)")
    index_cache_seconds: float = field(2.0, "how long a replica caches an app's index definitions; a new index "
                                            "is built this long after it is declared")
    auto_index_file: str = field("", "kiln dev only: add composite indexes that queries need instead of "
                                     "failing with NeedIndexError, and append them to this index.yaml")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.storage not in ENGINES:
            raise ValueError(f"storage: must be one of {', '.join(ENGINES)}, got {self.storage!r}")
        if not 0 <= self.index_cache_seconds <= 3600:
            raise ValueError("index_cache_seconds: must be between 0 and 3600")
        if not 1 <= self.cassandra_index_shards <= 256:
            raise ValueError("cassandra_index_shards: must be between 1 and 256")
        if self.cassandra_replication < 1:
            raise ValueError("cassandra_replication: must be at least 1")
