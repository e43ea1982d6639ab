"""Queues of deployed apps: each app's default version's ``queue.yaml``, from the control plane.

At start and every ``resync_seconds`` every app's queues are re-read; a ``kiln.deploy.default`` event (a new
default) or a ``kiln.deploy.version`` event for the default version (a new minor of it) re-reads that app's at once.
A queue that stays the same keeps its delivery loop; a changed one restarts it; a removed one stops (its tasks stay
stored, and run again if the queue comes back).
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from nats.aio.client import Client

from kiln.errors import KilnError
from kiln_platform import queueyaml
from kiln_platform.deployclient import VersionSource, follow, parse_event

log = logging.getLogger(__name__)

Apply = Callable[[str, queueyaml.QueueYaml], Awaitable[None]]


class DeployedQueues:
    """Keeps the service's queues equal to the default versions' queue.yaml files."""

    def __init__(self, source: VersionSource, apply: Apply) -> None:
        self._source = source
        self._apply = apply
        self._defaults: dict[str, str] = {}

    async def refresh(self, app_id: str) -> None:
        version = await self._source.version(app_id, "")
        parsed = queueyaml.QueueYaml({queueyaml.DEFAULT_QUEUE: queueyaml.DEFAULT})
        if version is not None:
            self._defaults[app_id] = version.version_id
            if version.queue_yaml:
                try:
                    parsed = queueyaml.parse(version.queue_yaml,
                                             filename=f"{app_id}/{version.version_id}/queue.yaml")
                except KilnError as exc:  # the control plane checked it; keep the old queues if it is not valid now
                    log.error("taskqueue %s: %s", app_id, exc)
                    return
        await self._apply(app_id, parsed)

    async def resync(self) -> None:
        for app in await self._source.apps():
            await self.refresh(app.app_id)

    async def on_event(self, subject: str, data: bytes) -> None:
        event = parse_event(subject, data)
        if hasattr(event, "generation") or self._defaults.get(event.app_id) == event.version_id:
            await self.refresh(event.app_id)

    async def follow(self, nc: Client, resync_seconds: float) -> None:
        """Apply events and re-read periodically until cancelled."""
        await follow(nc, self.on_event, self.resync, resync_seconds, "queue.yaml files")
