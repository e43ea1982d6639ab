"""Settings of ``python -m images_svc``."""

from __future__ import annotations

import dataclasses
import typing

from images_svc import ops
from kiln_platform.config import GrpcServiceConfig, HostPort, ListenAddress, field


@dataclasses.dataclass(frozen=True, kw_only=True)
class ImagesConfig(GrpcServiceConfig):
    """images service settings (env prefix ``KILN_IMAGES_``)."""

    env_prefix: typing.ClassVar[str] = "IMAGES"  # its environment variables are KILN_IMAGES_<SETTING>

    listen: ListenAddress = field(ListenAddress("127.0.0.1", 50055), "host:port to serve gRPC on")
    # A 32 MB image (App Engine's request limit) plus its envelope must fit in one message, both ways.
    max_message_bytes: int = field(40 * 1024 * 1024, "largest gRPC message accepted or sent, in bytes")
    workers: int = field(0, "images decoded and transformed at once, each on its own thread (0: one per CPU); "
                            "decoded pixels take up to workers x max-megapixels x 8 MB (an RGBA image and its result)")
    max_megapixels: float = field(ops.DEFAULT_MAX_PIXELS / 1e6, "largest image accepted, in megapixels "
                                                                "(decompression bombs are refused from the header)")
    jpeg_draft: bool = field(True, "decode a JPEG at 1/2, 1/4 or 1/8 scale (libjpeg's own) when its first resize "
                                   "still gets at least 2 decoded pixels per output pixel (as Image.thumbnail does): "
                                   "the same picture, decoded faster")
    max_waiting: int = field(64, "calls waiting for a worker before more are refused as busy (each holds its "
                                 "request, up to 32 MB)")
    blobstore_addr: HostPort | None = field(None, "blobstore_svc's gRPC address (host:port), read as the calling app: "
                                                  "images named by blob key and serving URLs (get_serving_url); "
                                                  "unset: blob keys name no image")
    serving_cache_mb: float = field(64.0, "served images (serving URLs' results) kept in memory, in MB, least "
                                          "recently used out first; one over an eighth of it is not kept")

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.serving_cache_mb < 0:
            raise ValueError(f"serving_cache_mb: must be 0 or more, got {self.serving_cache_mb}")
        if self.workers < 0:
            raise ValueError(f"workers: must be 0 (one per CPU) or more, got {self.workers}")
        if not 0 < self.max_megapixels <= 1000:
            raise ValueError(f"max_megapixels: must be above 0 and at most 1000, got {self.max_megapixels}")
        if self.max_waiting < 0:
            raise ValueError(f"max_waiting: must be 0 or more, got {self.max_waiting}")

    @property
    def max_pixels(self) -> int:
        """The pixel limit as a count."""
        return int(self.max_megapixels * 1_000_000)
