"""Image serving URLs (``images.get_serving_url``): what an ``/_ah/img/<id>=s<size>[-c]`` request makes of a blob,
its ETag, and the bounded cache of results.

The serving id is the blob key itself (as dev_appserver's): the router asks for it *as the app whose host the
request came to*, and blobstore_svc finds only that app's blobs, so one app's host never serves another's blob
whatever id it is given. A URL serves only while blobstore_svc holds the blob's serving mark
(``PutServingUrl``, made by ``get_serving_url``, removed by ``delete_serving_url`` or by deleting the blob); that
mark is checked on every request, cached results included.

What is served (App Engine's rules, as dev_appserver's ``blob_image``):

- no option: the image, made at most :data:`DEFAULT_SERVING_SIZE` pixels on its longest side (never enlarged);
- ``=s0``: the original size; ``=s<N>`` (N up to :data:`MAX_SERVING_SIZE`): N pixels on the longest side;
- ``-c``: N x N, cut around the centre (``=s0-c``: the centred square at the original scale);
- PNG for PNG and GIF sources, JPEG for the rest; an image served at its original size, uncut, is the blob's own
  bytes.
"""

from __future__ import annotations

import collections
import dataclasses
import hashlib
import re
import threading

from images_svc import imaging, ops
from images_svc.errors import BadTransformDataError

DEFAULT_SERVING_SIZE = 512  # App Engine's size when the URL has no option
MAX_SERVING_SIZE = 1600  # App Engine's IMG_SERVING_SIZES_LIMIT
SERVING_PATH = "/_ah/img/"
# blobstore_svc's key characters (no "=": it starts a URL's options).
KEY_PATTERN = re.compile(r"[A-Za-z0-9_-]{1,200}")
# Part of every ETag: change it when what a URL serves changes for the same blob and options.
RECIPE = "1"
_MIME = {"JPEG": "image/jpeg", "PNG": "image/png", "WEBP": "image/webp", "GIF": "image/gif", "BMP": "image/bmp",
         "TIFF": "image/tiff", "ICO": "image/x-icon"}


@dataclasses.dataclass(frozen=True)
class Options:
    """A serving URL's options: ``size`` None for none given."""

    size: int | None
    crop: bool

    def __post_init__(self) -> None:
        if self.size is not None and not 0 <= self.size <= MAX_SERVING_SIZE:
            raise BadTransformDataError(f"a serving URL's size must be 0 to {MAX_SERVING_SIZE}, got {self.size}")
        if self.crop and self.size is None:
            raise BadTransformDataError("a serving URL's crop (-c) needs a size (=s<size>-c)")


@dataclasses.dataclass(frozen=True)
class Served:
    """An answer to a serving URL."""

    content: bytes
    content_type: str


def etag(md5_hash: str, options: Options) -> str:
    """A strong ETag: the blob's content (its MD5; blobs never change) and the options, quoted."""
    text = f"{RECIPE}:{md5_hash}:{options.size}:{int(options.crop)}"
    return '"' + hashlib.sha256(text.encode()).hexdigest()[:32] + '"'


def matches(if_none_match: str, tag: str) -> bool:
    """Whether an If-None-Match value names ``tag`` (``*`` names any; weak tags compare by their value)."""
    for candidate in if_none_match.split(","):
        candidate = candidate.strip()
        if candidate == "*" or candidate.removeprefix("W/") == tag:
            return True
    return False


def steps_for(width: int, height: int, options: Options) -> list[ops.Op]:
    """The transforms that make the served image from a ``width`` x ``height`` source."""
    size = options.size
    if options.crop and size:
        return [ops.Resize(size, size, crop_to_fit=True)]  # exactly size x size, cut around the centre
    if options.crop:  # =s0-c: the centred square at the original scale
        side = min(width, height)
        return [] if width == height else [ops.Crop((width - side) / 2 / width, (height - side) / 2 / height,
                                                    (width + side) / 2 / width, (height + side) / 2 / height)]
    if size is None:
        if max(width, height) <= DEFAULT_SERVING_SIZE:
            return []
        size = DEFAULT_SERVING_SIZE
    return [ops.Resize(size, size)] if size else []


def render(data: bytes, options: Options, *, max_pixels: int, draft: bool) -> Served:
    """The served image of ``data`` (runs Pillow: call it on a worker thread)."""
    found = imaging.info(data, max_pixels)
    steps = steps_for(found.width, found.height, options)
    if not steps:
        return Served(data, _MIME.get(found.format, "application/octet-stream"))
    output = "PNG" if found.format in ("PNG", "GIF") else "JPEG"
    result = imaging.transform(data, steps, ops.Output(output), correct_orientation=False, parse_metadata=False,
                               max_pixels=max_pixels, draft=draft)
    return Served(result.data, _MIME[output])


class ResultCache:
    """Served images by (app, blob key, options), least recently used first out, at most ``max_bytes`` of content
    in all; an image over an eighth of that is never kept (it would push out many)."""

    def __init__(self, max_bytes: int) -> None:
        self._max = max_bytes
        self._held = 0
        self._items: collections.OrderedDict[tuple[str, str, Options], Served] = collections.OrderedDict()
        self._lock = threading.Lock()

    @property
    def held_bytes(self) -> int:
        """Bytes of content held now."""
        return self._held

    def get(self, key: tuple[str, str, Options]) -> Served | None:
        with self._lock:
            found = self._items.get(key)
            if found is not None:
                self._items.move_to_end(key)
            return found

    def put(self, key: tuple[str, str, Options], served: Served) -> None:
        size = len(served.content)
        if size > self._max // 8:
            return
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._held -= len(old.content)
            self._items[key] = served
            self._held += size
            while self._held > self._max:
                _, dropped = self._items.popitem(last=False)
                self._held -= len(dropped.content)
