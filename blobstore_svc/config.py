"""Settings of ``python -m blobstore_svc``."""

from __future__ import annotations

import dataclasses
import pathlib
import typing

from kiln_platform.config import GrpcServiceConfig, ListenAddress, StorageConfig, field

DEFAULT_MAX_BLOB_BYTES = 2 * 1024 * 1024 * 1024
DEFAULT_UPLOAD_URL_SECONDS = 600  # App Engine's: an upload URL is good for 10 minutes


@dataclasses.dataclass(frozen=True, kw_only=True)
class BlobstoreConfig(StorageConfig, GrpcServiceConfig):
    """Blobstore service settings (env prefix ``KILN_BLOBSTORE_``); storage settings from :class:`StorageConfig`."""

    env_prefix: typing.ClassVar[str] = "BLOBSTORE"  # its environment variables are KILN_BLOBSTORE_<SETTING>

    listen: ListenAddress = field(ListenAddress("127.0.0.1", 50062), "host:port to serve gRPC on")
    data_dir: pathlib.Path = field(pathlib.Path("~/.local/share/kiln/blobstore").expanduser(),
                                   "directory of the embedded blob store (SQLite and one file per blob)")
    cassandra_keyspace: str = field("kiln_blobstore", "keyspace for blobs")
    max_blob_bytes: int = field(DEFAULT_MAX_BLOB_BYTES, "largest blob stored, in bytes")
    upload_url_seconds: int = field(DEFAULT_UPLOAD_URL_SECONDS, "how long an upload URL is accepted")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_blob_bytes < 1:
            raise ValueError(f"max_blob_bytes: must be at least 1, got {self.max_blob_bytes}")
        if self.upload_url_seconds < 1:
            raise ValueError(f"upload_url_seconds: must be at least 1, got {self.upload_url_seconds}")
