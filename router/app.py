"""The HTTP front door: Host -> app version -> handler -> static file or NATS request -> response.

For each request the router resolves the app and version from the Host
header, finds the ``app.yaml`` handler for the path (:mod:`kiln_platform.handlers`),
enforces its ``secure`` and ``login`` settings with the signed-in user from the
session cookie (:mod:`router.users`), serves static handlers itself
(:mod:`router.static`), and sends everything else as an
:class:`~kiln.pb.runtime.v1.http_pb2.HttpRequest` over NATS request-reply to
the version's queue group. The request target and Host are read once
(:mod:`router.paths`, :mod:`router.hosts`; malformed ones get 400) and every
later step uses the normalised path and host. Request headers are sanitised
(:mod:`router.headers`: hop-by-hop headers and any client-supplied
``X-AppEngine-*``/``X-Kiln-*`` in any spelling removed, so a client can never
forge App Engine's trusted headers) and App Engine's are added (request log
id, location from GeoIP). The app's response is post-processed
(:mod:`router.responses`) and a request-log record is published on
``kiln.logs.request``.
"""

from __future__ import annotations

import asyncio
import functools
import ipaddress
import logging
import os
import time
from collections.abc import Awaitable, Callable
from typing import Any

import aiohttp
import grpc
import nats.errors
from aiohttp import web
from nats.aio.client import Client
from nats.aio.msg import Msg

from kiln_platform import auth, bus, grpcserver, httpfields, metrics, tracing
from kiln_platform.deployclient import VersionSource
from kiln.api._rpc import CHANNEL_OPTIONS
from kiln.pb.blobstore.v1 import blobstore_pb2_grpc
from kiln.pb.logs.v1 import logs_pb2
from kiln.pb.runtime.v1 import http_pb2
from router import (blobupload, connections, cookies, headers, hosts, imageserve, oidc, paths, replies, responses,
                    static, users, workers)
from router import dispatch
from router import blobserve
from router.appcalls import AppCredentials
from router.config import RouterConfig
from router.demand import Demand
from router.geo import GeoIP
from router.logship import LogShipper
from router.versions import ControlVersions, LocalVersions, Version, parse_app_dirs

log = logging.getLogger(__name__)

HEALTH_PATH = "/_ah/kiln/healthz"
LOG_SUBJECT = bus.REQUEST_LOG_SUBJECT
WORKER_HEADER = "X-Kiln-Router-Worker"  # on health answers of a router with workers: the worker's number


class Router:
    """Serves HTTP for every app (see module docstring)."""

    def __init__(self, cfg: RouterConfig, nc: Client) -> None:
        self.cfg = cfg
        self.nc = nc
        self.logs = LogShipper(nc, LOG_SUBJECT)
        self.replies = replies.Requester(nc)
        self.versions = cfg.default_versions()
        self.custom_domains = cfg.custom_domain_map()
        self.dev_app = cfg.dev_app.partition("=")[0] or None
        self.source: VersionSource | None = None
        self.deployed: ControlVersions | None = None
        self.local: LocalVersions | ControlVersions = LocalVersions(parse_app_dirs(cfg.app_dirs))
        self.demand: Demand | None = None  # deployed versions scale to zero: a request may have to ask for one
        self.dispatch_tables: dict[str, dispatch.Table] = {}  # apps with dispatch.yaml rules (router/dispatch.py)
        self.dispatch: dispatch.Dispatch | None = None
        if cfg.control_plane:
            self.source = VersionSource(str(cfg.control_plane), cfg.control_token.get(), cfg.cache_dir.expanduser())
            self.local = self.deployed = ControlVersions(self.source, self.versions)
            self.demand = Demand(nc)
            self.dispatch = dispatch.Dispatch(self.source, cfg.cache_dir.expanduser(), self.dispatch_tables)
        self.sessions = users.Sessions(cfg.session_secret.get(), auth_domain=cfg.auth_domain)
        self.admins = cfg.admin_map()
        self.oidc = oidc.OidcClient(issuer=cfg.oidc_issuer, client_id=cfg.oidc_client_id,
                                    client_secret=cfg.oidc_client_secret.get(),
                                    state_key=cfg.session_secret.get()) if cfg.oidc_issuer else None
        self.geo = GeoIP(cfg.geoip_db)
        # Without a database every request gets the same location headers: encoded once, here.
        self._fixed_geo = [(n, v.encode()) for n, v in self.geo.headers("").items()] if self.geo.fixed else None
        self.trusted = [ipaddress.ip_network(n) for n in cfg.trusted_proxies]
        self.files = static.FileCache()
        # The router acts toward services as the app whose request it handles (kiln_platform/appcalls.py).
        credentials = AppCredentials(cfg.service_secret.get()) if cfg.service_secret else None
        self.images = (imageserve.ImageServer(str(cfg.images_addr), credentials,
                                              max_message_bytes=cfg.max_response_bytes + 1024 * 1024)
                       if cfg.images_addr and credentials else None)  # image serving URLs (router/imageserve.py)
        self._bodies: dict[str, bus.BodyStore] = {}
        self._statics: dict[tuple[str, str, int], static.StaticFiles] = {}
        self._ids = RequestIds()
        self.metrics = metrics.RouterMetrics() if cfg.metrics_listen is not None else None  # kiln_platform/metrics.py
        self.tracing = tracing.start(cfg.otlp_endpoint, "kiln-router")  # kiln_platform/tracing.py; None: off
        # Blobstore uploads (router/blobupload.py) and X-AppEngine-BlobKey (router/blobserve.py), on one channel.
        self.blob_channel = (grpc.aio.insecure_channel(str(cfg.blobstore_addr), options=list(CHANNEL_OPTIONS))
                             if cfg.blobstore_addr and credentials else None)
        self.uploads: blobupload.Uploads | None = None
        self.blobs: blobserve.BlobServer | None = None
        if self.blob_channel is not None and credentials is not None:
            blob_stub = blobstore_pb2_grpc.BlobstoreServiceStub(self.blob_channel)
            self.uploads = blobupload.Uploads(blob_stub, credentials, max_field_bytes=cfg.max_request_bytes)
            self.blobs = blobserve.BlobServer(blob_stub, credentials)
        # The router's own headers that are the same on every request, encoded once (see _encoded_header).
        self._fixed_geo_encoded = (b"".join(_encoded_header(n, v) for n, v in self._fixed_geo)
                                   if self._fixed_geo is not None else None)

    async def _request(self, subject: str, data: bytes, started: float, patient: bool, timeout: float,
                       version: tuple[str, str] | None = None) -> Msg:
        """NATS request-reply to an instance; when ``patient``, retry "no responders" until the pending timeout,
        asking runtime hosts for an instance of ``version`` (app, version) meanwhile."""
        delay = 0.02
        asked = False
        waiting = None  # (app, version) counted as waiting for an instance (kiln_platform/metrics.py)
        try:
            while True:
                try:
                    msg = await self.replies.request(subject, data, timeout=timeout)
                    if asked and self.demand is not None and version is not None:
                        self.demand.answered(*version)  # it serves again: when it scales to zero, ask again at once
                    return msg
                except nats.errors.NoRespondersError:
                    if not patient or time.time() + delay - started > self.cfg.pending_timeout_seconds:
                        raise
                    if version is not None and self.demand is not None:
                        self.demand.ask(*version)
                        asked = True
                    if waiting is None and self.metrics is not None:
                        waiting = version or metrics.NO_VERSION
                        self.metrics.waiting(*waiting, 1)
                if asked and self.demand is not None and version is not None:
                    await self.demand.started(*version, delay)  # back as soon as its first instance serves
                else:
                    await asyncio.sleep(delay)
                delay = min(delay * 2, 0.5)
        finally:
            if waiting is not None and self.metrics is not None:
                self.metrics.waiting(*waiting, -1)

    def bodies(self, app_id: str) -> bus.BodyStore:
        """Where large bodies to and from ``app_id``'s instances travel (its own bucket)."""
        found = self._bodies.get(app_id)
        if found is None:
            found = self._bodies[app_id] = bus.BodyStore(self.nc, app_id)
        return found

    async def handle(self, request: web.Request) -> web.StreamResponse:
        """aiohttp handler for every path."""
        try:
            url = paths.parse_target(request.raw_path)
            if url.path == HEALTH_PATH:
                return self._health()
            host = hosts.request_host(request.headers.getall("Host", []), url.authority)
        except (paths.BadPathError, hosts.BadHostError) as exc:
            return responses.plain(400, f"Bad request: {exc}.")
        fields = headers.received(request.raw_headers)  # the bytes as sent, as ISO-8859-1 text
        repeated = headers.repeated_single(fields)
        if repeated is not None:
            return responses.plain(400, f"Bad request: the {repeated} header may appear only once.")
        started = time.time()
        request_id = self._ids.next()
        custom = self.custom_domains.get(host.name)
        if custom is not None:
            target = hosts.Target(custom, self.versions[custom]) if custom in self.versions else None
        else:
            target = hosts.resolve(host.name, domain=self.cfg.domain, versions=self.versions, dev_app=self.dev_app)
        if target is None:
            return responses.plain(404, f"No app is served at host {host.name!r}.")
        rules = self.dispatch_tables.get(target.app_id)
        if rules is not None and not target.explicit_version:  # the app's own host names (router/dispatch.py)
            target = rules.route(target, host.name, url.path)
        upload: blobupload.Forward | None = None  # a Blobstore upload, stored, goes on to its success path
        if url.path.startswith(blobupload.PREFIX) and self.uploads is not None:
            taken = await self.uploads.receive(request, url, target.app_id, fields)
            if not isinstance(taken, blobupload.Forward):
                return taken
            upload, url, fields = taken, taken.url, taken.fields
        client_ip, scheme = self._client(request)
        if url.path == users.LOGIN_PATH:
            if self.oidc is not None and self.dev_app is None:
                return await oidc.login(request, self.oidc, scheme, target.app_id)
            return await users.login(request, self.sessions, app=target.app_id, dev=self.dev_app is not None)
        if url.path == oidc.CALLBACK_PATH and self.oidc is not None:
            return await oidc.callback(request, self.oidc, self.sessions, scheme, target.app_id)
        if url.path == users.LOGOUT_PATH:
            return await users.logout(request)
        user = self.sessions.user(request, app=target.app_id, secure=scheme == "https")
        if user is not None and user.email.lower() in self.admins.get(target.app_id, frozenset()):
            user.is_admin = True
        platform = self._platform_caller(request, host)
        version = await self.local.get(target.app_id, target.version_id)
        if self.metrics is not None and version is not None:  # the version's labels (metrics.router_handler)
            request[metrics.VERSION_KEY] = (version.app_id, version.version_id)
        if version is None and self.deployed is not None:
            return responses.plain(404, f"Version {target.version_id!r} of app {target.app_id!r} does not exist.")
        if url.path.startswith(imageserve.PREFIX) and self.images is not None:
            return await self.images.serve(request, url.path, target.app_id)
        if url.path.startswith(INBOUND_MAIL_PREFIX):
            refused = _refuse_inbound_mail(platform, version)
            if refused is not None:
                return refused
        if version is not None:
            early = await self._apply_handler(request, url, host, version, scheme, user, platform)
            if early is not None:
                return early
        if upload is None and (request.content_length or 0) > self.cfg.max_request_bytes:
            return responses.plain(413, "Request body too large.")
        try:
            # A request without a body (aiohttp's empty payload: most GETs) has nothing to read.
            body = (upload.body if upload is not None
                    else await _read_limited(request, self.cfg.max_request_bytes) if request.body_exists else b"")
        except _TooLarge:
            return responses.plain(413, "Request body too large.")
        envelope, encoded = self._envelope(request, fields, url, target, request_id, host, body, started, client_ip,
                                           scheme, user)
        if platform == "cron":
            encoded.append(_encoded_header("X-AppEngine-Cron", b"true"))  # only cron_svc's requests carry it
        timeout = self.cfg.request_timeout_seconds
        if platform == "taskqueue":  # only taskqueue_svc's requests carry the task's headers (signed with it)
            for name, value in zip(auth.TASK_HEADERS, auth.task_header_values(request.headers)):
                if value:
                    encoded.append(_encoded_header(name, httpfields.wire(value)))
            # App Engine's 10 minutes for a task, plus the margin the router gives every request over its deadline.
            envelope.deadline_ms = int(auth.TASK_REQUEST_DEADLINE_SECONDS * 1000)
            timeout = max(timeout, auth.TASK_REQUEST_DEADLINE_SECONDS + 10)
        bodies = self.bodies(target.app_id)
        if not bodies.fits_inline(len(body)):
            envelope.body_object = await bodies.put(f"req-{request_id}", body)
            envelope.ClearField("body")
        subject = (bus.instance_subject(target.app_id, target.instance_id) if target.instance_id
                   else bus.http_subject(target.app_id, target.version_id))
        # The version exists; while none of its instances listens (one is starting, being replaced, or the version
        # scaled to zero and a host is asked for one), the request waits in a pending queue, as on App Engine.
        patient = not target.instance_id
        try:
            # One message: the envelope's fields, then its headers (protobuf appends a repeated field's entries
            # from concatenated messages, in order).
            if self.tracing is not None:  # the router's span continues in the runtime (kiln_platform/tracing.py)
                envelope.traceparent = tracing.envelope_traceparent(request, target.app_id, target.version_id)
            encoded[0] = envelope.SerializeToString()
            msg = await self._request(subject, b"".join(encoded), started, patient, timeout,
                                      None if target.instance_id else (target.app_id, target.version_id))
        except nats.errors.NoRespondersError:
            if target.instance_id:
                return responses.plain(404, f"Instance {target.instance_id!r} is not serving.")
            if target.explicit_version:
                return responses.plain(404, f"Version {target.version_id!r} of app {target.app_id!r} is not serving.")
            return await self._error_page(version, None, 503, "No instance of this app is available.")
        except nats.errors.TimeoutError:
            return await self._error_page(version, "timeout", 500, "The request did not finish in time.")
        resp = http_pb2.HttpResponse.FromString(msg.data)
        if resp.deadline_exceeded:
            return await self._error_page(version, "timeout", 500, "The request did not finish in time.")
        if resp.body_object:
            if await bodies.size(resp.body_object) > self.cfg.max_response_bytes:
                await bodies.discard(resp.body_object)
                resp.body = b"x" * (self.cfg.max_response_bytes + 1)  # becomes the empty 500 below
            else:
                resp.body = await bodies.take(resp.body_object)
        out: web.StreamResponse
        blob = False
        try:
            out = responses.build(resp, request, max_bytes=self.cfg.max_response_bytes)
        except responses.NamesBlobError as named:
            blob = True
            out = await self._blob(request, resp, named.key, target, version, request_id)
        except responses.BadResponseHeaderError as exc:
            out = await self._bad_response(resp, exc, target, version, request_id)
        if user is not None and user.is_admin:
            out.headers.update(responses.usage_headers(time.time() - started, resp.cpu_micros,
                                                       self.cfg.instance_hour_usd))
        size = blobserve.sent_bytes(out) if blob else out.content_length or 0
        reached = self._publish_log(envelope, resp, started, size, url, fields)
        if reached is not None:  # the response goes out only once its log is at nats-server (router/logship.py)
            await asyncio.shield(reached)
        return out

    async def _blob(self, request: web.Request, resp: http_pb2.HttpResponse, key: str, target: hosts.Target,
                    version: Version | None, request_id: str) -> web.StreamResponse:
        """The response naming blob ``key``, served as the app the request was routed to (:mod:`router.blobserve`)."""
        if self.blobs is None:
            log.error("app %s: a response names a blob, but this router has no blobstore_addr; answering 500",
                      target.app_id)
            resp.status = 500
            return responses.empty(500)
        try:
            return await self.blobs.respond(request, resp, key, target.app_id, max_bytes=self.cfg.max_response_bytes)
        except responses.BadResponseHeaderError as exc:
            return await self._bad_response(resp, exc, target, version, request_id)

    async def _bad_response(self, resp: http_pb2.HttpResponse, exc: responses.BadResponseHeaderError,
                            target: hosts.Target, version: Version | None, request_id: str) -> web.Response:
        log.error("app %s version %s (instance %s, request %s): %s; answering 500", target.app_id,
                  target.version_id, resp.instance_id, request_id, exc)
        resp.status = 500
        return await self._error_page(version, None, 500, "The app's response could not be sent.")

    def _health(self) -> web.Response:
        """The router's health: NATS connected or not; with workers, which one answered (a number, no pid)."""
        out = web.Response(text="ok" if self.nc.is_connected else "nats disconnected",
                           status=200 if self.nc.is_connected else 503)
        if self.cfg.worker:
            out.headers[WORKER_HEADER] = str(self.cfg.worker)
        return out

    async def _apply_handler(self, request: web.Request, url: paths.Target, host: hosts.Host, version: Version,
                             scheme: str, user: http_pb2.SignedInUser | None,
                             platform: str | None) -> web.StreamResponse | None:
        """secure, login and static handling; ``None`` to go on to the app.

        Requests from kiln's own services (``platform``: inbound mail, cron, push tasks) pass ``login``, as App
        Engine's own requests pass ``login: admin``.
        """
        found = version.matcher.match(url.path)
        if found is None:
            return responses.plain(404, "Not Found")
        handler = found.handler
        if handler.secure == "always" and scheme != "https":
            return _switch_scheme(host, url, "https", handler.redirect_http_response_code)
        if handler.secure == "never" and scheme == "https":
            return _switch_scheme(host, url, "http", handler.redirect_http_response_code)
        if handler.login != "optional" and platform is None:
            if user is None:
                if handler.auth_fail_action == "unauthorized":
                    return responses.plain(401, "Login required.")
                return users.login_redirect(request)
            if handler.login == "admin" and not user.is_admin:
                return responses.plain(403, "Only administrators of this app may see this page.")
        if handler.is_static:
            if request.method not in ("GET", "HEAD"):
                return responses.plain(405, "Static files answer only GET and HEAD.")
            return await self._static_files(version).serve(request, found.static_path, handler, found.index)
        return None

    def _static_files(self, version: Version) -> static.StaticFiles:
        key = (version.app_id, version.version_id, version.minor)
        found = self._statics.get(key)
        if found is None:
            found = self._statics[key] = static.StaticFiles(version.root, version.config, self.files)
        return found

    async def _error_page(self, version: Version | None, code: str | None, status: int,
                          text: str) -> web.Response:
        """The app's ``error_handlers`` page for an error the router produced, else plain text."""
        if version is not None:
            pages = {h.error_code: h.file for h in version.config.error_handlers}
            name = pages.get(code) or pages.get(None)
            if name:
                path = (version.root / name).resolve()
                found = await self.files.read(path) if path.is_relative_to(version.root) else None
                if found is not None:
                    out = web.Response(status=status, body=found[0], content_type=static.guess_type(path.name))
                    out.headers["Server"] = "kiln"
                    return out
        return responses.plain(status, text)

    def _client(self, request: web.Request) -> tuple[str, str]:
        """The client's address and scheme; forwarded values are believed only from trusted proxies."""
        peer = request.remote or ""
        scheme = request.scheme
        if not self._is_trusted(peer):
            return peer, scheme
        forwarded = [a.strip() for a in request.headers.get("X-Forwarded-For", "").split(",") if a.strip()]
        client = peer
        for address in reversed(forwarded):
            if not _is_address(address):
                break  # not an address: the chain is broken here, the last hop we could read is the client
            client = address
            if not self._is_trusted(address):
                break
        proto = request.headers.get("X-Forwarded-Proto", "").strip().lower()
        return client, proto if proto in ("http", "https") else scheme

    def _is_trusted(self, address: str) -> bool:
        if not self.trusted:
            return False
        try:
            ip = ipaddress.ip_address(address)
        except ValueError:
            return False
        return any(ip in net for net in self.trusted)

    def _platform_caller(self, request: web.Request, host: hosts.Host) -> str | None:
        """The kiln service (mail, cron, taskqueue) that signed this request, or ``None``. The task queue's
        signature also covers the task's App Engine headers (:data:`kiln_platform.auth.TASK_HEADERS`)."""
        tasks = request.headers.get(auth.PLATFORM_HEADER) == "taskqueue"
        verify = (functools.partial(auth.verify_platform, bound=auth.task_header_values(request.headers)) if tasks
                  else _VERIFY_PLATFORM_UNBOUND)
        return _signed_caller(request, host, self.cfg.platform_secret.get(), auth.PLATFORM_HEADER,
                              auth.PLATFORM_SIGNATURE_HEADER, verify)

    def _inbound_app(self, request: web.Request, host: hosts.Host) -> str | None:
        """The calling app's id, when URL Fetch signed this request for it (App Engine's Inbound-AppId)."""
        return _signed_caller(request, host, self.cfg.inbound_secret.get(), auth.INBOUND_APP_HEADER,
                              auth.INBOUND_SIGNATURE_HEADER, auth.verify_inbound)

    def _envelope(self, request: web.Request, fields: list[tuple[str, str]], url: paths.Target,
                  target: hosts.Target, request_id: str, host: hosts.Host, body: bytes, started: float,
                  client_ip: str, scheme: str, user: http_pb2.SignedInUser | None,
                  ) -> tuple[http_pb2.HttpRequest, list[bytes]]:
        """The request's envelope without its headers, and its headers serialized (:func:`_encoded_header`),
        after a first item left for the envelope's own bytes."""
        # The app sees the path the router matched (normalised, see router.paths) and the query as sent.
        env = http_pb2.HttpRequest(
            request_id=request_id, app_id=target.app_id, version_id=target.version_id,
            method=request.method, scheme=scheme, host=host.name,
            port=host.port_for(scheme), path=url.wire_path, query_string=url.query,
            protocol=_PROTOCOLS.get(request.version) or f"HTTP/{request.version.major}.{request.version.minor}",
            remote_addr=client_ip, body=body,
            deadline_ms=int(self.cfg.request_timeout_seconds * 1000))
        if user is not None:
            env.user.CopyFrom(user)
            secret = self.cfg.platform_secret.get()
            if secret:
                # Vouches for the user to services (mail's sender rule) until the request's deadline.
                env.user.proof = auth.sign_user(secret, target.app_id, user.email,
                                                started + self.cfg.request_timeout_seconds)
        env.received_at.seconds = int(started)
        encoded = [b""]
        # A trusted proxy's forwarding headers were consumed by _client(); the app sees the result.
        consumed = ("x-forwarded-for", "x-forwarded-proto") if self._is_trusted(request.remote or "") else ()
        # The app never sees the router's cookies (the session) nor any header it could take for the router's.
        for name, value in headers.from_client(cookies.forwardable(fields), consumed=consumed):
            encoded.append(_encoded_client_header(name, value))
        # Only the router's own headers from here on (they pass no filter: the router vouches for them).
        caller = self._inbound_app(request, host)
        if caller:
            encoded.append(_encoded_header(auth.INBOUND_APP_HEADER, caller.encode()))
        encoded.append(_encoded_client_header("Host", host.raw))
        encoded.append(_LOG_ID_FIELD + request_id.encode())
        if self._fixed_geo_encoded is not None:
            encoded.append(self._fixed_geo_encoded)
        else:
            encoded.extend(_encoded_header(n, v.encode()) for n, v in self.geo.headers(client_ip).items())
        return env, encoded

    def _publish_log(self, env: http_pb2.HttpRequest, resp: http_pb2.HttpResponse, started: float,
                     size: int, url: paths.Target, fields: list[tuple[str, str]]) -> asyncio.Future[None] | None:
        # Client text as the app saw it (ISO-8859-1 from the bytes sent): always valid in a proto string. Both are
        # one-value fields (a repeated one was refused with 400), so the first found is the one.
        referrer = user_agent = ""
        for name, value in fields:
            lowered = name.lower()
            if lowered == "referer" and not referrer:
                referrer = value
            elif lowered == "user-agent" and not user_agent:
                user_agent = value
        start_ns = int(started * 1e9)
        end_ns = time.time_ns()
        email = env.user.email if env.HasField("user") else ""
        record = logs_pb2.RequestLog(
            app_id=env.app_id, version_id=env.version_id, request_id=env.request_id, ip=env.remote_addr,
            method=env.method, resource=url.wire_path + (f"?{url.query}" if url.query else ""),
            http_version=env.protocol, status=resp.status, response_size=size, referrer=referrer,
            user_agent=user_agent, host=env.host, instance_id=resp.instance_id,
            was_loading_request=resp.loading_request, finished=True,
            nickname=email.split("@")[0] if email else "")
        app_logs = resp.app_logs
        if app_logs:
            record.app_logs.extend(app_logs)
        # Set in place: a Timestamp given to the constructor is merged on a slow path (about 12 k instructions
        # each, most of them formatting an AttributeError it then ignores), and FromNanoseconds is Python.
        start, end, latency = record.start_time, record.end_time, record.latency
        start.seconds, start.nanos = divmod(start_ns, 1_000_000_000)
        end.seconds, end.nanos = divmod(end_ns, 1_000_000_000)
        latency.seconds, latency.nanos = divmod(max(0, end_ns - start_ns), 1_000_000_000)
        # In the background, until acknowledged; done once the record has reached nats-server.
        return self.logs.ship(env.request_id, record.SerializeToString())


INBOUND_MAIL_PREFIX = "/_ah/mail/"
_VERIFY_PLATFORM_UNBOUND = functools.partial(auth.verify_platform, bound=())
_PROTOCOLS = {aiohttp.HttpVersion11: "HTTP/1.1", aiohttp.HttpVersion10: "HTTP/1.0"}
_CACHED_VALUE_CHARS = 256  # longer client header values (cookies, tokens) are rarely sent twice: not cached


def _encoded_header(name: str, value: bytes) -> bytes:
    """The serialized bytes of an envelope holding only the header ``name: value``.

    An envelope is sent as its other fields serialized, followed by these for each header: protobuf reads
    concatenated messages as one, appending a repeated field's entries in order, so this is the message
    ``SerializeToString`` would write with the headers added, without building a ``Header`` message for each.
    """
    return http_pb2.HttpRequest(headers=[http_pb2.Header(name=name, value=value)]).SerializeToString()


@functools.lru_cache(maxsize=2048)
def _encoded_short_header(name: str, value: str) -> bytes:
    return _encoded_header(name, httpfields.wire(value))


def _encoded_client_header(name: str, value: str) -> bytes:
    """:func:`_encoded_header` of a header held as ISO-8859-1 text; the same few (``Accept``, ``User-Agent``,
    ``Host``…) come on most requests, so short ones are remembered."""
    if len(value) <= _CACHED_VALUE_CHARS:
        return _encoded_short_header(name, value)
    return _encoded_header(name, httpfields.wire(value))


_LOG_ID_HEADER = "X-AppEngine-Request-Log-Id"
_REQUEST_ID_BYTES = 16
# Request ids have one length (32 hex digits), so their header's encoding is these bytes followed by the id.
_LOG_ID_FIELD = _encoded_header(_LOG_ID_HEADER, b"0" * 2 * _REQUEST_ID_BYTES)[:-2 * _REQUEST_ID_BYTES]


class RequestIds:
    """Request (and request log) ids: 128 random bits from the OS's CSPRNG as 32 hex digits, as ``uuid4().hex``
    gave, but read from ``os.urandom`` for many ids at once instead of one system call per request."""

    _BATCH = 256

    def __init__(self) -> None:
        self._pool = b""
        self._at = 0

    def next(self) -> str:
        """A new id."""
        if self._at >= len(self._pool):
            self._pool = os.urandom(_REQUEST_ID_BYTES * self._BATCH)
            self._at = 0
        start = self._at
        self._at = start + _REQUEST_ID_BYTES
        return self._pool[start:self._at].hex()


def _signed_caller(request: web.Request, host: hosts.Host, secret: str, caller_header: str, signature_header: str,
                   verify: Callable[[str, str, str, str, str, str, float], bool]) -> str | None:
    """The caller named in ``caller_header`` if ``signature_header`` signs this request for it with ``secret``.

    Signatures and caller names are ASCII; anything else is a bad signature (the HMAC comparison would raise on
    it, and Unicode digits would pass ``isdigit``), never an error.
    """
    caller = request.headers.get(caller_header, "")
    signature = request.headers.get(signature_header, "")
    if not (secret and caller and signature) or not (caller.isascii() and signature.isascii()):
        return None
    return caller if verify(secret, signature, caller, request.method, host.name, request.raw_path,
                            time.time()) else None


def _refuse_inbound_mail(platform: str | None, version: Version | None) -> web.Response | None:
    """``/_ah/mail/`` is for mail_svc only, and only for versions that declared ``inbound_services: mail``."""
    if platform != "mail":
        return responses.plain(403, "/_ah/mail/ receives mail from kiln's mail service only.")
    if version is not None and "mail" not in version.config.inbound_services:
        return responses.plain(403, "This app does not receive mail (add 'inbound_services: [mail]' to app.yaml).")
    return None


def _is_address(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def _switch_scheme(host: hosts.Host, url: paths.Target, scheme: str, code: int | None) -> web.Response:
    authority = host.name if scheme == "https" and host.port == 80 else host.raw
    query = f"?{url.query}" if url.query else ""
    return users.redirect(f"{scheme}://{authority}{url.wire_path}{query}", code or 302)


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


def front_door(handle: connections.Handler) -> Callable[[web.BaseRequest], Awaitable[web.StreamResponse]]:
    """``handle`` with what every request gets around it: ``Expect: 100-continue`` answered, the connection told
    when the headers are complete and the handler done (:func:`router.connections.track`), ``Server: kiln``, and
    the session's renewed cookie (:func:`router.users.renew_cookie`)."""

    async def entry(request: web.BaseRequest) -> web.StreamResponse:
        assert isinstance(request, web.Request)  # serve's request factory makes them
        try:
            if request.headers.get("Expect"):
                await _expect(request)
            response = await connections.track(request, handle)
        except web.HTTPException as exc:  # aiohttp's own refusals (e.g. a form over the size limit)
            response = web.Response(status=exc.status, reason=exc.reason, body=exc.body, headers=exc.headers)
        response.headers["Server"] = connections.SERVER
        users.renew_cookie(request, response)
        return response

    return entry


async def _expect(request: web.Request) -> None:
    """``Expect: 100-continue``: tell the client to send the body (an Application's routes did this)."""
    if request.version != aiohttp.HttpVersion11:
        return
    if request.headers["Expect"].lower() != "100-continue":
        raise web.HTTPExpectationFailed(text=f"Unknown Expect: {request.headers['Expect']}")
    await request.writer.write(b"HTTP/1.1 100 Continue\r\n\r\n")
    request.writer.output_size = 0  # the response proper has not started


async def serve(cfg: RouterConfig) -> None:
    """Serve HTTP until SIGTERM, then finish in-flight requests and drain NATS (``workers`` > 1: see
    :mod:`router.workers`)."""
    if cfg.workers > 1:
        await workers.supervise(cfg)
        return
    nc = await bus.connect(cfg.nats_url, name="router")
    await bus.ensure_log_stream(nc)
    if cfg.control_plane:
        await bus.ensure_demand_stream(nc)
    router = Router(cfg, nc)
    await router.replies.start()
    follower = dispatch_follower = None
    if router.deployed is not None:
        try:
            await router.deployed.resync()
        except Exception as exc:  # noqa: BLE001 - serve anyway; the follower keeps trying
            log.warning("control plane at %s not reachable yet: %s", cfg.control_plane, exc)
        follower = asyncio.ensure_future(router.deployed.follow(nc, cfg.resync_seconds))
    if router.dispatch is not None:
        router.dispatch.load_cache()  # the rules last seen, if the control plane does not answer now
        try:
            await router.dispatch.resync()
        except Exception as exc:  # noqa: BLE001 - serve anyway; the follower keeps trying
            log.warning("dispatch rules: control plane at %s not reachable yet: %s", cfg.control_plane, exc)
        dispatch_follower = asyncio.ensure_future(router.dispatch.follow(nc, cfg.resync_seconds))
    # aiohttp's low-level server: every path, including ones with an (encoded) newline, reaches Router.handle,
    # which decides about it, so the Application's URL dispatcher, middleware chain and signals would only add
    # per-request work (front_door does what they did: Expect, connection tracking, Server, session renewal).
    loop = asyncio.get_running_loop()

    def make_request(message: Any, payload: Any, protocol: Any, writer: Any, task: Any) -> web.Request:
        return web.Request(message, payload, protocol, writer, task, loop, client_max_size=cfg.max_request_bytes + 1)

    metrics_server = metrics.serve(metrics.worker_address(cfg.metrics_listen, cfg.worker))
    handle = (metrics.router_handler(router.handle, router.metrics) if router.metrics is not None
              else router.handle)
    if router.tracing is not None:
        handle = tracing.router_handler(handle, router.tracing, trust_client=cfg.trust_traceparent)
    runner = web.ServerRunner(web.Server(front_door(handle), request_factory=make_request),
                              handle_signals=False)
    await runner.setup()
    # keepalive_timeout closes connections with no complete request for that long; the header deadline closes
    # slow-header (slowloris) clients sooner, the body rate slow-body ones (router.connections).
    body_rate = connections.BodyRate(grace_seconds=cfg.body_grace_seconds,
                                     min_bytes_per_second=cfg.body_min_bytes_per_second)
    listener = await connections.listen(runner, cfg.listen.host, cfg.listen.port,
                                        header_timeout=cfg.header_timeout_seconds, body_rate=body_rate,
                                        access_log=None, keepalive_timeout=cfg.idle_timeout_seconds,
                                        reuse_port=cfg.worker > 0)
    bound = listener.sockets[0].getsockname()
    address = f"{bound[0]}:{bound[1]}"
    log.info("router serving HTTP on %s", address)
    if cfg.ready_file:
        grpcserver.write_ready_file(cfg.ready_file, address)
    await grpcserver.wait_for_signal()
    log.info("stopping")
    listener.close()
    await runner.cleanup()
    await listener.wait_closed()
    for task in (follower, dispatch_follower):
        if task is not None:
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
    if router.source is not None:
        await router.source.close()
    if router.oidc is not None:
        await router.oidc.close()
    if router.images is not None:
        await router.images.close()
    if router.blob_channel is not None:
        await router.blob_channel.close()
    await router.logs.close()
    await bus.shutdown(nc)
    if metrics_server is not None:
        metrics_server.close()
    if router.tracing is not None:
        router.tracing.close()
    log.info("stopped")

