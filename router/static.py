"""Static handlers (``static_dir``, ``static_files``), served by the router itself.

Files come from the version's directory; a path that would leave it, a file
``skip_files`` excludes, or one ``upload`` does not name is a 404. Responses
carry the handler's ``mime_type`` (else one guessed from the name), caching
headers from ``expiration`` / ``default_expiration`` (App Engine's default is
10 minutes), the handler's ``http_headers``, and an ETag; a conditional GET
whose ``If-None-Match`` matches gets 304. A missing file is App Engine's bare
404: an empty body, no type (:func:`not_found`).
"""

from __future__ import annotations

import asyncio
import functools
import hashlib
import mimetypes
import pathlib
import stat
import time
from collections import OrderedDict

from aiohttp import web

from kiln_platform.appyaml import AppConfig, Handler
from router.responses import empty, http_date

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
        if not stat.S_ISREG(st.st_mode):  # what path.is_file() says, without a second stat call
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


def _expiration(handler: Handler, config: AppConfig) -> int:
    seconds = handler.expiration_seconds
    if seconds is None:
        seconds = config.default_expiration_seconds
    return DEFAULT_EXPIRATION_SECONDS if seconds is None else seconds


class StaticFiles:
    """Static responses of one version, prepared once per file and rechecked at most once a second."""

    def __init__(self, root: pathlib.Path, config: AppConfig, cache: FileCache) -> None:
        self._root = root.resolve()
        self._config = config
        self._cache = cache
        self._known: dict[tuple[str, int], tuple[float, pathlib.Path | None]] = {}

    def _locate(self, relative: str, handler_index: int) -> pathlib.Path | None:
        key = (relative, handler_index)
        hit = self._known.get(key)
        now = time.monotonic()
        if hit is not None and now - hit[0] < 1.0:
            return hit[1]
        path: pathlib.Path | None = None
        if not self._config.skips(relative):
            candidate = (self._root / relative).resolve()
            if candidate.is_relative_to(self._root) and candidate.is_file():
                path = candidate
        if len(self._known) > 10_000:
            self._known.clear()
        self._known[key] = (now, path)
        return path

    async def serve(self, request: web.Request, relative: str | None, handler: Handler,
                    handler_index: int) -> web.Response:
        """The static response, or :func:`not_found` when there is no such file."""
        if relative is None:
            return not_found()
        path = self._locate(relative, handler_index)
        if path is None:
            return not_found()
        found = await self._cache.read(path)
        if found is None:
            return not_found()
        data, etag = found
        seconds = _expiration(handler, self._config)
        headers = {"Cache-Control": f"public, max-age={seconds}", "Expires": http_date(seconds), "ETag": etag,
                   **handler.http_headers}
        inm = request.headers.get("If-None-Match")
        if inm is not None and (inm.strip() == "*" or etag in [t.strip() for t in inm.split(",")]):
            return web.Response(status=304, headers=headers)
        content_type = handler.mime_type or guess_type(path.name)
        body = b"" if request.method == "HEAD" else data
        response = web.Response(body=body, headers=headers, content_type=content_type.split(";")[0].strip())
        if request.method == "HEAD":
            response.headers["Content-Length"] = str(len(data))
        if ";" in content_type:
            response.headers["Content-Type"] = content_type
        return response


def not_found() -> web.Response:
    """App Engine's answer for a static file that does not exist: 404 with an empty body and no Content-Type."""
    return empty(404)


@functools.lru_cache(maxsize=1024)
def guess_type(name: str) -> str:
    """The content type for a file name (cached: the router asks per request)."""
    return mimetypes.guess_type(name)[0] or "application/octet-stream"
