"""Settings of ``python -m memcache_svc``."""

from __future__ import annotations

import dataclasses
import typing

from kiln_platform.config import GrpcServiceConfig, ListenAddress, field


@dataclasses.dataclass(frozen=True, kw_only=True)
class MemcacheConfig(GrpcServiceConfig):
    """memcache service settings (env prefix ``KILN_MEMCACHE_``)."""

    env_prefix: typing.ClassVar[str] = "MEMCACHE"  # its environment variables are KILN_MEMCACHE_<SETTING>

    listen: ListenAddress = field(ListenAddress("127.0.0.1", 50052), "host:port to serve gRPC on")
    max_bytes: int = field(256 * 1024 * 1024, "memory bound of the cache, in bytes (least recently used items go)")
    text_listen: ListenAddress | None = field(None, "host:port for the memcached text protocol (off when empty); it has no "
                                 "authentication, so it serves one app (text_app) and should listen only where "
                                 "that app's tools run")
    text_app: str = field("", "the app whose cache the text protocol serves (namespace '')")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.max_bytes < 1024 * 1024:
            raise ValueError("max_bytes: must be at least 1 MiB")
        if self.text_listen and not self.text_app:
            raise ValueError("text_app: required with text_listen (the text protocol has no app identity)")
