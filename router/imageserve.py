"""Image serving URLs on an app's host: ``GET``/``HEAD /_ah/img/<serving id>[=s<size>[-c]]``.

The router answers these itself, never the app: it asks images_svc's ``ServeImage`` *as the app the Host routes
to* (:mod:`router.appcalls`; the app id from the router's own routing, never from the client), so a host serves
only its own app's images, and only those whose URL ``images.get_serving_url`` made and ``delete_serving_url`` did
not stop (images_svc checks that on every request).

The answer carries ``Cache-Control: public, max-age=86400`` (a serving URL's image never changes while it exists,
as Google's image servers say) and a strong ``ETag``; a matching ``If-None-Match`` gets 304 without the image
being read. An unknown or deleted URL gets 404, a malformed option or a size outside 0..1600 gets 400, other
methods 405.
"""

from __future__ import annotations

import logging
import re

import grpc
from aiohttp import web

from kiln.api import _rpc
from kiln.pb.images.v1 import images_pb2 as pb
from kiln.pb.images.v1 import images_pb2_grpc
from router import responses
from router.appcalls import AppCredentials

log = logging.getLogger(__name__)

PREFIX = "/_ah/img/"
CACHE_CONTROL = "public, max-age=86400, no-transform"
TIMEOUT_SECONDS = 30.0
# App Engine's options as its SDK documents them: =s<size> and =s<size>-c (a size has at most 4 digits; 0..1600
# is images_svc's rule).
_OPTIONS = re.compile(r"s([0-9]{1,4})(-c)?")
_STATUS = {grpc.StatusCode.NOT_FOUND: 404, grpc.StatusCode.INVALID_ARGUMENT: 400,
           grpc.StatusCode.UNAVAILABLE: 503, grpc.StatusCode.DEADLINE_EXCEEDED: 503}


class BadImageUrlError(ValueError):
    """The path's options are not App Engine's."""


def parse(path: str) -> pb.ServeImageRequest:
    """The ServeImage request for a path under :data:`PREFIX`.

    Raises:
        BadImageUrlError: no serving id, or options other than ``s<size>`` and ``s<size>-c``.
    """
    serving_id, sep, options = path[len(PREFIX):].partition("=")
    if not serving_id or "/" in serving_id:
        raise BadImageUrlError("the URL names no image")
    request = pb.ServeImageRequest(serving_id=serving_id)
    if sep:
        found = _OPTIONS.fullmatch(options)
        if found is None:
            raise BadImageUrlError(f"unsupported image options {options[:50]!r} (use =s<size> or =s<size>-c)")
        request.size = int(found.group(1))
        request.crop = found.group(2) is not None
    return request


class ImageServer:
    """Serves ``/_ah/img/`` through images_svc at ``address`` (one channel per router process)."""

    def __init__(self, address: str, credentials: AppCredentials, *, max_message_bytes: int) -> None:
        self._channel = grpc.aio.insecure_channel(address, options=_rpc.channel_options(max_message_bytes))
        self._stub = images_pb2_grpc.ImagesServiceStub(self._channel)
        self._credentials = credentials

    async def close(self) -> None:
        await self._channel.close()

    async def serve(self, request: web.Request, path: str, app_id: str) -> web.StreamResponse:
        """Answer one request to a serving URL of ``app_id`` (the app the Host routed to)."""
        if request.method not in ("GET", "HEAD"):
            out = responses.plain(405, "Image URLs answer GET and HEAD only.")
            out.headers["Allow"] = "GET, HEAD"
            return out
        try:
            call = parse(path)
        except BadImageUrlError as exc:
            return responses.plain(400, f"Bad request: {exc}.")
        call.if_none_match = request.headers.get("If-None-Match", "")
        try:
            reply = await self._stub.ServeImage(call, metadata=self._credentials.metadata(app_id),
                                                timeout=TIMEOUT_SECONDS)
        except grpc.aio.AioRpcError as exc:
            status = _STATUS.get(exc.code(), 500)
            if status >= 500:
                log.error("app %s: serving image %s failed: %s %s", app_id, call.serving_id, exc.code().name,
                          exc.details())
                return responses.plain(status, "The image could not be served.")
            return responses.plain(status, "No such image." if status == 404 else f"Bad request: {exc.details()}")
        headers = {"Cache-Control": CACHE_CONTROL, "ETag": reply.etag}
        if reply.not_modified:
            return web.Response(status=304, headers=headers)
        return web.Response(body=reply.content, content_type=reply.content_type, headers=headers)
