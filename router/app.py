"""The HTTP front door: Host -> app version -> NATS request -> runtime -> response.

Each request gets an id, its headers are sanitised (hop-by-hop headers and any
client-supplied ``X-AppEngine-*`` removed, so a client can never forge
App Engine's trusted headers), and it travels as an
:class:`~kiln.pb.runtime.v1.http_pb2.HttpRequest` over NATS request-reply to
the version's queue group. The app's response has hop-by-hop headers removed
and a default ``Content-Type``; a request-log record is published on
``kiln.logs.request``.
"""

from __future__ import annotations

import asyncio
import datetime
import logging
import time
import uuid

import nats.errors
from aiohttp import web
from nats.aio.client import Client

from kiln import bus, grpcserver
from kiln.pb.logs.v1 import logs_pb2
from kiln.pb.runtime.v1 import http_pb2
from router import hosts
from router.config import RouterConfig

log = logging.getLogger(__name__)

HEALTH_PATH = "/_ah/kiln/healthz"
LOG_SUBJECT = "kiln.logs.request"

# App Engine removes these from requests before they reach the app.
REQUEST_DROP = frozenset({"accept-encoding", "connection", "keep-alive", "proxy-authorization", "te",
                          "trailer", "transfer-encoding", "host", "content-length"})
# ...and these from the app's responses.
RESPONSE_DROP = frozenset({"connection", "content-encoding", "content-length", "date", "keep-alive",
                           "proxy-authenticate", "server", "trailer", "transfer-encoding", "upgrade"})
# Envelope fields besides the body, so a body this close to max_payload still fits.
ENVELOPE_ALLOWANCE = 64 * 1024


class Router:
    """Serves HTTP for every app (see module docstring)."""

    def __init__(self, cfg: RouterConfig, nc: Client) -> None:
        self.cfg = cfg
        self.nc = nc
        self.versions = cfg.default_versions()
        self.dev_app = cfg.dev_app.partition("=")[0] or None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """aiohttp handler for every path."""
        if request.path == HEALTH_PATH:
            return web.Response(text="ok" if self.nc.is_connected else "nats disconnected",
                                status=200 if self.nc.is_connected else 503)
        started = time.time()
        request_id = uuid.uuid4().hex
        host = (request.host or "").rsplit(":", 1)[0] if not (request.host or "").startswith("[") else request.host
        target = hosts.resolve(host, domain=self.cfg.domain, versions=self.versions, dev_app=self.dev_app)
        if target is None:
            return _plain(404, f"No app is served at host {host!r}.")
        if request.content_length is not None and request.content_length > self.cfg.max_request_bytes:
            return _plain(413, "Request body too large.")
        try:
            body = await _read_limited(request, self.cfg.max_request_bytes)
        except _TooLarge:
            return _plain(413, "Request body too large.")
        if len(body) + ENVELOPE_ALLOWANCE > self.nc.max_payload:
            # Chunked/object-store transport for large bodies is not built yet: refuse
            # clearly rather than cut the body.
            return _plain(413, f"Request body larger than this deployment's NATS payload limit "
                               f"({self.nc.max_payload - ENVELOPE_ALLOWANCE} bytes).")
        envelope = self._envelope(request, target, request_id, host, body, started)
        try:
            msg = await self.nc.request(bus.http_subject(target.app_id, target.version_id),
                                        envelope.SerializeToString(), timeout=self.cfg.request_timeout_seconds)
        except nats.errors.NoRespondersError:
            if target.explicit_version:
                return _plain(404, f"Version {target.version_id!r} of app {target.app_id!r} is not serving.")
            return _plain(503, "No instance of this app is available.")
        except nats.errors.TimeoutError:
            return _plain(500, "The request did not finish in time.")
        resp = http_pb2.HttpResponse.FromString(msg.data)
        out = _response(resp)
        self._publish_log(envelope, resp, started, len(out.body or b""), request)
        return out

    def _envelope(self, request: web.Request, target: hosts.Target, request_id: str, host: str,
                  body: bytes, started: float) -> http_pb2.HttpRequest:
        env = http_pb2.HttpRequest(
            request_id=request_id, app_id=target.app_id, version_id=target.version_id,
            method=request.method, scheme=request.scheme, host=host,
            port=_port(request), path=request.raw_path.split("?", 1)[0], query_string=request.query_string,
            protocol=f"HTTP/{request.version.major}.{request.version.minor}",
            remote_addr=request.remote or "", body=body,
            deadline_ms=int(self.cfg.request_timeout_seconds * 1000))
        env.received_at.FromSeconds(int(started))
        for name, value in request.headers.items():
            lower = name.lower()
            if lower in REQUEST_DROP or lower.startswith("x-appengine-"):
                continue
            env.headers.add(name=name, value=value)
        env.headers.add(name="Host", value=request.host or host)
        env.headers.add(name="X-AppEngine-Request-Log-Id", value=request_id)
        return env

    def _publish_log(self, env: http_pb2.HttpRequest, resp: http_pb2.HttpResponse, started: float,
                     size: int, request: web.Request) -> None:
        record = logs_pb2.RequestLog(
            app_id=env.app_id, version_id=env.version_id, request_id=env.request_id, ip=env.remote_addr,
            method=env.method, resource=request.path_qs, http_version=env.protocol, status=resp.status,
            response_size=size, referrer=request.headers.get("Referer", ""),
            user_agent=request.headers.get("User-Agent", ""), host=env.host, instance_id=resp.instance_id,
            was_loading_request=resp.loading_request, finished=True)
        record.start_time.FromNanoseconds(int(started * 1e9))
        end = time.time()
        record.end_time.FromNanoseconds(int(end * 1e9))
        record.latency.FromNanoseconds(int((end - started) * 1e9))
        task = asyncio.create_task(self.nc.publish(LOG_SUBJECT, record.SerializeToString()))
        task.add_done_callback(lambda t: t.exception() and log.warning("request log not published: %s", t.exception()))


class _TooLarge(Exception):
    pass


async def _read_limited(request: web.Request, limit: int) -> bytes:
    chunks, total = [], 0
    async for chunk in request.content.iter_chunked(64 * 1024):
        total += len(chunk)
        if total > limit:
            raise _TooLarge
        chunks.append(chunk)
    return b"".join(chunks)


def _port(request: web.Request) -> int:
    host = request.host or ""
    if ":" in host.rsplit("]", 1)[-1]:
        tail = host.rsplit(":", 1)[1]
        if tail.isdigit():
            return int(tail)
    return 443 if request.scheme == "https" else 80


def _plain(status: int, text: str) -> web.Response:
    return web.Response(status=status, text=f"{text}\n", content_type="text/plain")


def _response(resp: http_pb2.HttpResponse) -> web.Response:
    out = web.Response(status=resp.status, body=resp.body)
    has_type = False
    for header in resp.headers:
        lower = header.name.lower()
        if lower in RESPONSE_DROP or not header.name.isascii() or not header.value.isascii():
            continue
        if lower == "content-type":
            has_type = True
            out.headers["Content-Type"] = header.value
            continue
        out.headers.add(header.name, header.value)
    if not has_type:
        out.headers["Content-Type"] = "text/html"
    out.headers["Server"] = "kiln"
    out.headers["Date"] = datetime.datetime.now(datetime.UTC).strftime("%a, %d %b %Y %H:%M:%S GMT")
    return out


async def serve(cfg: RouterConfig) -> None:
    """Serve HTTP until SIGTERM, then finish in-flight requests and drain NATS."""
    nc = await bus.connect(cfg.nats_url, name="router")
    router = Router(cfg, nc)
    app = web.Application(client_max_size=cfg.max_request_bytes + 1)
    app.router.add_route("*", "/{tail:.*}", router.handle)
    runner = web.AppRunner(app, access_log=None, handle_signals=False)
    await runner.setup()
    host, port = cfg.listen.rsplit(":", 1)
    site = web.TCPSite(runner, host.strip("[]"), int(port))
    await site.start()
    bound = runner.addresses[0]
    address = f"{bound[0]}:{bound[1]}"
    log.info("router serving HTTP on %s", address)
    if cfg.ready_file:
        grpcserver.write_ready_file(cfg.ready_file, address)
    await grpcserver.wait_for_signal()
    log.info("stopping")
    await runner.cleanup()
    await nc.drain()
    log.info("stopped")

