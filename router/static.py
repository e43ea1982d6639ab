"""Static handlers (``static_dir``, ``static_files``), served by the router itself.

Files come from the version's directory; a path that would leave it, a file
``skip_files`` excludes, or one ``upload`` does not name is a 404. Responses
carry the handler's ``mime_type`` (else one guessed from the name), caching
headers from ``expiration`` / ``default_expiration`` (App Engine's default is
10 minutes), the handler's ``http_headers``, and an ETag; a conditional GET
whose ``If-None-Match`` matches gets 304.
"""

from __future__ import annotations

import asyncio
import email.utils
import hashlib
import mimetypes
import pathlib
import time
from collections import OrderedDict

from aiohttp import web

from kiln.appyaml import AppConfig, Handler

DEFAULT_EXPIRATION_SECONDS = 600
_CACHE_BYTES = 64 * 1024 * 1024


class FileCache:
    """Recently served files in memory, keyed by path, size and modification time."""

    def __init__(self, limit: int = _CACHE_BYTES) -> None:
        self._limit = limit
        self._size = 0
        self._items: OrderedDict[tuple[str, int, int], tuple[bytes, str]] = OrderedDict()

    async def read(self, path: pathlib.Path) -> tuple[bytes, str] | None:
        """The file's bytes and ETag, or ``None`` if it is not a regular file."""
        try:
            st = path.stat()
        except OSError:
            return None
        if not path.is_file():
            return None
        key = (str(path), st.st_size, st.st_mtime_ns)
        hit = self._items.get(key)
        if hit is not None:
            self._items.move_to_end(key)
            return hit
        data = await asyncio.get_running_loop().run_in_executor(None, path.read_bytes)
        entry = (data, '"' + hashlib.sha256(data).hexdigest()[:32] + '"')
        if len(data) <= self._limit // 4:
            self._items[key] = entry
            self._size += len(data)
            while self._size > self._limit:
                _, (old, _) = self._items.popitem(last=False)
                self._size -= len(old)
        return entry


def _caching(handler: Handler, config: AppConfig) -> dict[str, str]:
    seconds = handler.expiration_seconds
    if seconds is None:
        seconds = config.default_expiration_seconds
    if seconds is None:
        seconds = DEFAULT_EXPIRATION_SECONDS
    return {"Cache-Control": f"public, max-age={seconds}",
            "Expires": email.utils.formatdate(time.time() + seconds, usegmt=True)}


async def serve(request: web.Request, root: pathlib.Path, relative: str | None, handler: Handler,
                config: AppConfig, cache: FileCache) -> web.Response | None:
    """The static response, or ``None`` when there is no such file (the caller answers 404)."""
    if relative is None or config.skips(relative):
        return None
    path = (root / relative).resolve()
    if not path.is_relative_to(root.resolve()):
        return None
    found = await cache.read(path)
    if found is None:
        return None
    data, etag = found
    headers = _caching(handler, config)
    headers["ETag"] = etag
    headers.update(handler.http_headers)
    inm = request.headers.get("If-None-Match")
    if inm is not None and (inm.strip() == "*" or etag in [t.strip() for t in inm.split(",")]):
        return web.Response(status=304, headers=headers)
    content_type = handler.mime_type or mimetypes.guess_type(path.name)[0] or "application/octet-stream"
    body = b"" if request.method == "HEAD" else data
    response = web.Response(body=body, headers=headers, content_type=content_type.split(";")[0].strip())
    if request.method == "HEAD":
        response.headers["Content-Length"] = str(len(data))
    if ";" in content_type:
        response.headers["Content-Type"] = content_type
    return response
