"""The NATS connection every kiln process uses.

Connects with unlimited reconnects (a NATS restart or failover is survived),
logs connection state changes, and drains on shutdown so in-flight
request-replies and subscriptions finish instead of being cut.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import urllib.parse
from collections.abc import Awaitable, Callable

import nats
import nats.errors
import nats.js.errors
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js.api import KeyValueConfig, ObjectStoreConfig, RetentionPolicy
from nats.js.kv import KeyValue
from nats.js.object_store import ObjectStore

from kiln.pb.logs.v1 import logs_pb2

log = logging.getLogger(__name__)


def servers(url: str) -> list[urllib.parse.SplitResult]:
    """The servers of a NATS URL setting (comma-separated for a cluster), each with its scheme (``nats://`` when
    it has none): the one place the list is split."""
    return [urllib.parse.urlsplit(s if "://" in s else f"nats://{s}") for s in (u.strip() for u in url.split(","))
            if s]


def shown(url: str) -> str:
    """A NATS URL setting as it may be logged: each server's address, without credentials."""
    return ",".join(f"{p.scheme}://{p.hostname}:{p.port or 4222}" if ":" not in (p.hostname or "")
                    else f"{p.scheme}://[{p.hostname}]:{p.port or 4222}" for p in servers(url))


async def connect(url: str, *, name: str, inbox_prefix: str = "_INBOX") -> Client:
    """Connect to NATS at ``url`` (comma-separated for a cluster; credentials in the URLs) as ``name``.

    An app's instances use their own ``inbox_prefix`` (:func:`app_inbox_prefix`),
    the only inboxes their NATS user may subscribe to.
    """

    where = shown(url)
    refusals = Refusals(where, user=", ".join(sorted({p.username or "(none)" for p in servers(url)})))

    async def on_error(exc: Exception) -> None:
        # nats-py raises AuthorizationError once connected, a plain Error with the server's text while connecting.
        if isinstance(exc, nats.errors.AuthorizationError) or "authorization violation" in str(exc).lower():
            await refusals.refused()  # said plainly, now and then; the next attempt waits longer
            return
        log.warning("nats at %s: %s", where, exc or type(exc).__name__)

    async def on_disconnect() -> None:
        log.warning("nats disconnected from %s", where)

    async def on_reconnect() -> None:
        log.info("nats reconnected to %s", where)
        refusals.accepted()

    nc = await nats.connect(
        servers=[s.geturl() for s in servers(url)],
        name=name,
        max_reconnect_attempts=-1,
        reconnect_time_wait=0.5,
        connect_timeout=5,
        allow_reconnect=True,
        error_cb=on_error,
        disconnected_cb=on_disconnect,
        reconnected_cb=on_reconnect,
        inbox_prefix=inbox_prefix,
    )
    refusals.accepted()
    return nc


# A connection whose credentials NATS refuses tries again after 0.5 s, then 1 s, then every 2 s (nats-py retries
# every reconnect_time_wait; the pause is added in its error callback, which its connect loop awaits): the refusal
# is usually the auth callout being down or restarting, and the connection gets in within 2 s of its return.
_REFUSAL_PAUSES = (0.0, 0.5, 1.5)
REFUSAL_REPORT_SECONDS = 10.0


class Refusals:
    """Refused credentials of one connection: reported in one plain line at most every REFUSAL_REPORT_SECONDS, and
    backed off (module notes above)."""

    def __init__(self, where: str, *, user: str,
                 sleep: Callable[[float], Awaitable[None]] = asyncio.sleep) -> None:
        self.where, self.user = where, user
        self._sleep = sleep
        self.count = 0
        self._said = -REFUSAL_REPORT_SECONDS

    async def refused(self) -> None:
        self.count += 1
        now = time.monotonic()
        if now - self._said >= REFUSAL_REPORT_SECONDS:
            self._said = now
            log.error("NATS at %s refuses the credentials of user %s (%d time(s) so far); trying again every few "
                      "seconds. An app's instances are let in by the NATS auth callout: check that `python -m "
                      "natscallout` runs and reaches NATS, and that its app secret is the managers' "
                      "KILN_MANAGER_NATS_APP_SECRET", self.where, self.user, self.count)
        await self._sleep(_REFUSAL_PAUSES[min(self.count, len(_REFUSAL_PAUSES)) - 1])

    def accepted(self) -> None:
        if self.count:
            log.info("NATS at %s accepted user %s after %d refusal(s)", self.where, self.user, self.count)
        self.count = 0
        self._said = -REFUSAL_REPORT_SECONDS


async def shutdown(nc: Client) -> None:
    """Drain ``nc`` (in-flight request-replies and subscriptions finish), or, while NATS is unreachable and there
    is nothing to drain, close it: a process told to stop during a NATS outage stops cleanly."""
    try:
        await nc.drain()
    except (nats.errors.ConnectionReconnectingError, nats.errors.ConnectionClosedError):
        # nats-py (2.16) then writes what it buffered for the server to the dead connection and raises
        # RuntimeError: those messages cannot reach anyone anyway.
        with contextlib.suppress(RuntimeError, OSError):
            await nc.close()


def http_subject(app_id: str, version_id: str) -> str:
    """The subject runtime instances of one app version listen on."""
    return f"kiln.http.{app_id}.{version_id}"


def instance_subject(app_id: str, instance_id: str) -> str:
    """The subject that reaches one runtime instance (under its app, so apps' permissions can be told apart)."""
    return f"kiln.instance.{app_id}.{instance_id}"


def app_inbox_prefix(app_id: str) -> str:
    """Reply inboxes of an app's instances."""
    return f"_INBOX_{app_id}"


RUNTIME_QUEUE = "runtime"


def heartbeat_subject(app_id: str, version_id: str) -> str:
    """Where a version's instances report their load (InstanceHeartbeat) for the instance manager."""
    return f"kiln.heartbeat.{app_id}.{version_id}"


HEARTBEAT_SUBJECTS = "kiln.heartbeat.*.*"  # every version's (the control plane lists instances from them)


def heartbeat_of(subject: str) -> tuple[str, str] | None:
    """The (app, version) a heartbeat subject names, or None for another subject."""
    parts = subject.split(".")
    return (parts[2], parts[3]) if len(parts) == 4 and parts[:2] == ["kiln", "heartbeat"] else None


def manager_stop_subject(app_id: str, version_id: str) -> str:
    """Where the control plane asks a version's instance managers to stop one instance (its id is the payload);
    the manager running it answers, the others stay silent. Only the platform's NATS user may publish here."""
    return f"kiln.manager.stop.{app_id}.{version_id}"
ERROR_HEADER = "Kiln-Error-Code"


# Bodies too large for one NATS message travel through a JetStream object store
# bucket, one per app (an app's NATS user may use only its own); the envelope
# carries the object's name. Objects expire on their own if a process dies
# before deleting them.
BODY_BUCKET_PREFIX = "kiln-bodies-"
BODY_TTL_SECONDS = 600.0
# Envelope fields besides the body, so a body this close to max_payload still fits.
ENVELOPE_ALLOWANCE = 64 * 1024


def body_bucket(app_id: str) -> str:
    """The object store bucket of an app's large bodies."""
    return BODY_BUCKET_PREFIX + app_id


class BodyStore:
    """Large request and response bodies of one app, in its object store bucket.

    The platform (routers, instance managers) creates the bucket; an app's
    instances may only open it (``create=False``).
    """

    def __init__(self, nc: Client, app_id: str, *, create: bool = True) -> None:
        self._nc = nc
        self._name = body_bucket(app_id)
        self._create = create
        self._store: ObjectStore | None = None

    def fits_inline(self, size: int) -> bool:
        """Whether a body of ``size`` bytes fits in the envelope message."""
        return size + ENVELOPE_ALLOWANCE <= self._nc.max_payload

    async def _bucket(self) -> ObjectStore:
        if self._store is None:
            js = self._nc.jetstream()
            try:
                self._store = await js.object_store(self._name)
            except nats.js.errors.BucketNotFoundError:
                if not self._create:
                    raise
                self._store = await js.create_object_store(
                    self._name, config=ObjectStoreConfig(ttl=BODY_TTL_SECONDS))
        return self._store

    async def ensure(self) -> None:
        """Open (creating if allowed) the bucket now rather than at the first large body."""
        await self._bucket()

    async def put(self, name: str, body: bytes) -> str:
        """Store a body under ``name``; returns the name for the envelope."""
        await (await self._bucket()).put(name, body)
        return name

    async def size(self, name: str) -> int:
        """A stored body's size, without fetching it."""
        info = await (await self._bucket()).get_info(name)
        return int(info.size or 0)

    async def discard(self, name: str) -> None:
        """Delete a body that will not be read."""
        try:
            await (await self._bucket()).delete(name)
        except nats.errors.Error as exc:
            log.warning("body %s not deleted (it expires on its own): %s", name, exc)

    async def take(self, name: str) -> bytes:
        """Fetch a body and delete it (each body is read once)."""
        store = await self._bucket()
        result = await store.get(name)
        await self.discard(name)
        return bytes(result.data or b"")


# Request logs: published by the routers to a JetStream stream, many to a message (``RequestLogBatch``, marked by
# LOG_BATCH_HEADER), so the logs service loses none while it is down.
REQUEST_LOG_SUBJECT = "kiln.logs.request"
LOG_BATCH_HEADER = "Kiln-Log-Batch"
# The control plane announces deployments here (kiln.pb.deploy.v1 events, core NATS): routers, runtime hosts and
# cron act within a second, and re-read the control plane on reconnect and periodically for any event they missed.
DEPLOY_VERSION_SUBJECT = "kiln.deploy.version"
DEPLOY_DEFAULT_SUBJECT = "kiln.deploy.default"
DEPLOY_DISPATCH_SUBJECT = "kiln.deploy.dispatch"  # an app's dispatch rules were replaced (events_pb2.DispatchEvent)
# Runtime hosts' heartbeats (HostHeartbeat: the Pythons each can run), heard by every control plane replica, and
# the control plane's request, when it starts, that every host report at once.
DEPLOY_HOST_SUBJECT = "kiln.deploy.host"
DEPLOY_HOST_REPORT_SUBJECT = "kiln.deploy.host.report"
# Demand for a version no instance serves: a router whose request found no responder publishes one; runtime hosts
# take each from a work queue, one host each, only while they have room for an instance (runtime/host.py). One
# message per version per DEMAND_DEDUPE_SECONDS is stored (its message id names the version and that period).
DEMAND_STREAM = "KILN_DEMAND"
DEMAND_SUBJECTS = "kiln.demand.>"
DEMAND_CONSUMER = "runtime-hosts"
DEMAND_MAX_AGE_SECONDS = 60.0  # a request waits in the router's pending queue for less than this
DEMAND_DEDUPE_SECONDS = 5.0


def demand_subject(app_id: str, version_id: str) -> str:
    """Where a request for a version no instance serves asks for one."""
    return f"kiln.demand.{app_id}.{version_id}"


def demand_of(subject: str) -> tuple[str, str] | None:
    """The (app, version) a demand subject names, or None."""
    parts = subject.split(".")
    return (parts[2], parts[3]) if len(parts) == 4 and parts[:2] == ["kiln", "demand"] else None


def demand_message_id(app_id: str, version_id: str, now: float, answered: int = 0) -> str:
    """The id that makes the demand stream keep one message per version per period, whichever router sent it
    (``answered``: how many of the sending router's asks for it were answered, so that a new ask after an answer
    is not taken for a repeat)."""
    return f"{app_id}.{version_id}.{int(now // DEMAND_DEDUPE_SECONDS)}.{answered}"


def more_demand_subject(app_id: str, version_id: str) -> str:
    """Where a runtime host whose room a version's load outgrows asks another host to run the version too (the
    message's payload is the asking host's name)."""
    return f"kiln.demand.{app_id}.{version_id}.more"


def more_demand_of(subject: str) -> tuple[str, str] | None:
    """The (app, version) a :func:`more_demand_subject` names, or None."""
    parts = subject.split(".")
    return (parts[2], parts[3]) if len(parts) == 5 and parts[:2] == ["kiln", "demand"] and parts[4] == "more" else None


def more_demand_message_id(app_id: str, version_id: str, now: float) -> str:
    """As :func:`demand_message_id`, for asking for more hosts."""
    return f"{app_id}.{version_id}.more.{int(now // DEMAND_DEDUPE_SECONDS)}"


async def ensure_demand_stream(nc: Client) -> None:
    """Create the demand work queue if it does not exist yet (routers and runtime hosts call this)."""
    js = nc.jetstream()
    try:
        await js.stream_info(DEMAND_STREAM)
    except nats.js.errors.NotFoundError:
        try:
            await js.add_stream(name=DEMAND_STREAM, subjects=[DEMAND_SUBJECTS],
                                retention=RetentionPolicy.WORK_QUEUE, max_age=DEMAND_MAX_AGE_SECONDS,
                                duplicate_window=DEMAND_DEDUPE_SECONDS)
        except nats.js.errors.BadRequestError:
            await js.stream_info(DEMAND_STREAM)  # another process created it meanwhile


# Which runtime host runs a version started on demand: one key per version (APP.VERSION), its value the host's
# name, created by the host that takes the demand (so a stale demand never starts a second manager elsewhere),
# refreshed while the manager runs, deleted when it scales to zero; a dead host's keys expire after the TTL.
PLACEMENT_BUCKET = "KILN_PLACEMENT"
PLACEMENT_TTL_SECONDS = 30.0


async def placement_bucket(nc: Client) -> KeyValue:
    """The placement bucket (created if it does not exist yet)."""
    js = nc.jetstream()
    try:
        return await js.key_value(PLACEMENT_BUCKET)
    except nats.js.errors.BucketNotFoundError:
        try:
            return await js.create_key_value(KeyValueConfig(bucket=PLACEMENT_BUCKET, ttl=PLACEMENT_TTL_SECONDS))
        except nats.js.errors.BadRequestError:
            return await js.key_value(PLACEMENT_BUCKET)  # another host created it meanwhile


LOG_STREAM = "KILN_LOGS"
LOG_STREAM_MAX_AGE_SECONDS = 7 * 24 * 3600


async def ensure_log_stream(nc: Client) -> None:
    """Create the request-log stream if it does not exist yet (every publisher and reader calls this)."""
    js = nc.jetstream()
    try:
        await js.stream_info(LOG_STREAM)
    except nats.js.errors.NotFoundError:
        try:
            await js.add_stream(name=LOG_STREAM, subjects=[REQUEST_LOG_SUBJECT],
                                max_age=LOG_STREAM_MAX_AGE_SECONDS)
        except nats.js.errors.BadRequestError:
            await js.stream_info(LOG_STREAM)  # another process created it meanwhile


def request_logs_in(msg: Msg) -> list[bytes]:
    """The serialized ``RequestLog`` records one message of the log stream holds (a batch, or a single record)."""
    if msg.headers and msg.headers.get(LOG_BATCH_HEADER) == "1":
        return list(logs_pb2.RequestLogBatch.FromString(msg.data).records)
    return [msg.data]
