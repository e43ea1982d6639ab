"""The apps' running instances, as their heartbeats describe them, and stopping one through its manager.

Every instance publishes an :class:`~kiln.pb.runtime.v1.events_pb2.InstanceHeartbeat` every second on
``kiln.heartbeat.APP.VERSION`` (``runtime/app.py``); every control plane replica hears them all, so each knows the
same instances without a shared table (as :mod:`deploy.control.hosts` knows the runtime hosts). A heartbeat is
sent by the app's own process, which app code could forge, so only what the subject says is trusted for the app
and version: NATS lets an app's user publish only under its own app (:mod:`kiln_platform.natsauth`), so an app can
at worst describe instances of its own that do not exist, and at most :data:`MAX_INSTANCES_PER_APP` of them are
kept. An instance silent for :data:`TTL_SECONDS` is forgotten.

Stopping an instance is a NATS request to the instance managers of its version
(:func:`kiln_platform.bus.manager_stop_subject`): the manager running it stops it gracefully (it finishes what it
holds; scaling starts another if the version needs one, as App Engine's "delete instance"), and answers; the others
stay silent. Only the platform's NATS user may publish there, so an app cannot stop another app's instances.
"""

from __future__ import annotations

import dataclasses
import re
import time
from collections.abc import Awaitable, Callable

from nats.aio.client import Client
from nats.errors import NoRespondersError, TimeoutError as NatsTimeoutError

from kiln.errors import BadRequestError, NotFoundError
from kiln.pb.deploy.v1 import deploy_pb2 as pb
from kiln.pb.runtime.v1 import events_pb2
from kiln_platform import bus

TTL_SECONDS = 10.0  # ten heartbeat periods of the runtime's default (heartbeat_seconds 1.0)
MAX_INSTANCES_PER_APP = 1000  # heartbeats naming more new instances of one app are ignored
STOP_TIMEOUT_SECONDS = 3.0  # the managers that do not run the instance stay silent: this long for "none does"
INSTANCE_ID_RE = re.compile(r"^[0-9a-f]{1,64}$")

# Asks the managers of (app, version) to stop the instance; True once one of them has begun stopping it.
Stop = Callable[[str, str, str], Awaitable[bool]]


@dataclasses.dataclass
class _Seen:
    instance: pb.Instance
    expires: float


class Instances:
    """The live instances of every app (see module docstring); ``clock`` is monotonic seconds."""

    def __init__(self, stop: Stop, *, ttl_seconds: float = TTL_SECONDS, limit: int = MAX_INSTANCES_PER_APP,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._stop = stop
        self._ttl = ttl_seconds
        self._limit = limit
        self._clock = clock
        self._apps: dict[str, dict[str, _Seen]] = {}

    def observe(self, app_id: str, version_id: str, beat: events_pb2.InstanceHeartbeat) -> None:
        """Record a heartbeat heard on ``kiln.heartbeat.APP.VERSION`` (the subject's app and version are trusted,
        the payload's are not)."""
        if not INSTANCE_ID_RE.match(beat.instance_id):
            return
        known = self._apps.setdefault(app_id, {})
        before = known.get(beat.instance_id)
        if before is None and len(self._prune(app_id)) >= self._limit:
            return
        instance = pb.Instance(
            instance_id=beat.instance_id, version_id=version_id, deployment_id=beat.deployment_id[:128],
            active_requests=max(0, beat.active_requests), requests_served=max(0, beat.requests_served),
            memory_bytes=max(0, beat.memory_bytes), average_latency_ms=max(0.0, beat.average_latency_ms),
            started_at=beat.started_at, last_heartbeat=beat.sent_at,
            stopping=before is not None and before.instance.stopping)
        known[beat.instance_id] = _Seen(instance, self._clock() + self._ttl)

    def _prune(self, app_id: str) -> dict[str, _Seen]:
        """The app's instances heard from within the ttl (the others are forgotten)."""
        now = self._clock()
        known = self._apps.get(app_id, {})
        for instance_id in [i for i, seen in known.items() if seen.expires <= now]:
            del known[instance_id]
        return known

    def list(self, app_id: str, version_id: str = "") -> list[pb.Instance]:
        """The app's live instances (of ``version_id`` only, if given), by version, then start time."""
        found = [_copy(seen.instance) for seen in self._prune(app_id).values()
                 if not version_id or seen.instance.version_id == version_id]
        return sorted(found, key=lambda i: (i.version_id, i.started_at.ToNanoseconds(), i.instance_id))

    async def stop(self, app_id: str, instance_id: str) -> pb.Instance:
        """Have the manager running ``instance_id`` stop it; the instance as last seen, marked stopping.

        Raises:
            BadRequestError: not an instance id.
            NotFoundError: the app has no such live instance, or no manager runs it any more.
        """
        if not INSTANCE_ID_RE.match(instance_id):
            raise BadRequestError(f"instance_id {instance_id[:80]!r}: expected an instance id (lowercase hex)")
        seen = self._prune(app_id).get(instance_id)
        gone = NotFoundError(f"app {app_id!r} has no running instance {instance_id} (it has stopped already, or "
                             "never ran); reload the list of instances")
        if seen is None:
            raise gone
        if not await self._stop(app_id, seen.instance.version_id, instance_id):
            self._apps.get(app_id, {}).pop(instance_id, None)
            raise gone
        seen.instance.stopping = True
        return _copy(seen.instance)


def _copy(instance: pb.Instance) -> pb.Instance:
    out = pb.Instance()
    out.CopyFrom(instance)
    return out


def stopper(nc: Client, *, timeout: float = STOP_TIMEOUT_SECONDS) -> Stop:
    """The :data:`Stop` that asks over ``nc`` (see module docstring)."""
    async def stop(app_id: str, version_id: str, instance_id: str) -> bool:
        try:
            await nc.request(bus.manager_stop_subject(app_id, version_id), instance_id.encode(), timeout=timeout)
        except (NoRespondersError, NatsTimeoutError):
            return False
        return True
    return stop
