"""Settings of ``python -m datastore_svc``."""

from __future__ import annotations

import dataclasses
import pathlib
import typing

from kiln_platform.config import GrpcServiceConfig, HostPort, ListenAddress, StorageConfig, field


@dataclasses.dataclass(frozen=True, kw_only=True)
class DatastoreConfig(StorageConfig, GrpcServiceConfig):
    """Datastore service settings (env prefix ``KILN_DATASTORE_``); storage settings from :class:`StorageConfig`."""

    env_prefix: typing.ClassVar[str] = "DATASTORE"  # its environment variables are KILN_DATASTORE_<SETTING>

    listen: ListenAddress = field(ListenAddress("127.0.0.1", 50051), "host:port to serve gRPC on")
    data_dir: pathlib.Path = field(pathlib.Path("~/.local/share/kiln/datastore").expanduser(),
                                   "directory of the embedded engine's files")
    cassandra_keyspace: str = field("kiln_datastore", "keyspace for entities")
    cassandra_index_shards: int = field(4, "partitions each index is spread over (fixed when the keyspace "
                                            "is created)")
    index_cache_seconds: float = field(2.0, "how long a replica caches an app's index definitions; a new index "
                                            "is built this long after it is declared")
    taskqueue: HostPort | None = field(None, "taskqueue_svc's gRPC address: tasks added in a transaction are "
                                             "added there once it commits (without it such a commit is refused)")
    tasks_sweep_seconds: float = field(5.0, "how often the datastore looks for committed transactions whose tasks "
                                            "are not in the task queue yet (a crash or an outage between commit "
                                            "and adding them)")
    tasks_sweep_after_seconds: float = field(30.0, "a commit's tasks are left to its own replica this long before "
                                                   "the sweep adds them")
    consistency: float = field(1.0, "embedded engine (kiln dev): the probability that a commit is applied to "
                                    "non-ancestor queries at each such query; below 1 gives App Engine's eventual "
                                    "consistency (gets, ancestor queries and transactions always see every "
                                    "commit), 1 applies every commit at once")
    auto_index_file: str = field("", "kiln dev only: add composite indexes that queries need instead of "
                                     "failing with NeedIndexError, and append them to this index.yaml")

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 <= self.index_cache_seconds <= 3600:
            raise ValueError("index_cache_seconds: must be between 0 and 3600")
        if self.tasks_sweep_seconds <= 0 or self.tasks_sweep_after_seconds < 0:
            raise ValueError("tasks_sweep_seconds, tasks_sweep_after_seconds: must be positive")
        if not 0 <= self.consistency <= 1:
            raise ValueError("consistency: must be between 0 and 1")
        if self.consistency < 1 and self.storage != "embedded":
            raise ValueError("consistency: below 1 only with the embedded engine (Cassandra's queries are strongly "
                             "consistent)")
        if not 1 <= self.cassandra_index_shards <= 256:
            raise ValueError("cassandra_index_shards: must be between 1 and 256")
