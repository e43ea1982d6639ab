"""Applying each app's ``dispatch.yaml`` rules to its requests, as App Engine does.

A request for one of an app's own host names — ``APP.DOMAIN``, ``SUB.APP.DOMAIN``, a custom domain — whose
path is dispatched (not under ``/_ah/``, but for :data:`kiln_platform.dispatchyaml.DISPATCHED_AH_PREFIXES`) goes
to the service of the first rule matching its host and path, served by the version the control plane names for
that service (the app's default version serves its own service; another service, its newest version). A host that
names a version or an instance (``V-dot-APP.DOMAIN``, ``I-dot-V-dot-APP.DOMAIN``) is routed as it says, as in
devappserver2; a request no rule matches, or whose rule's service has no version left, takes the default routing.

Rules come from the control plane (``GetDispatch``): at start (after the copy kept in the router's cache directory,
so a router restarted while the control plane is away still applies them), on a ``kiln.deploy.dispatch`` event,
on any version or default event of an app that has rules (the version serving a service may have changed), and at
every resync. An app without rules costs a request one dict lookup (:meth:`Router.handle`).
"""

from __future__ import annotations

import asyncio
import logging
import os
import pathlib

from nats.aio.client import Client

from kiln.errors import KilnError
from kiln.pb.deploy.v1 import deploy_pb2 as pb
from kiln.pb.deploy.v1 import events_pb2
from kiln_platform import bus, dispatchyaml
from kiln_platform.deployclient import VERSION_SUBJECTS, VersionSource, follow, parse_event
from router.hosts import Target

log = logging.getLogger(__name__)

SUBJECTS = (*VERSION_SUBJECTS, bus.DEPLOY_DISPATCH_SUBJECT)


class Table:
    """One app's rules and the version serving each service they name."""

    def __init__(self, app_id: str, rules: list[dispatchyaml.Rule], services: dict[str, str], generation: int) -> None:
        self.app_id = app_id
        self.rules = tuple(rules)
        self.services = services
        self.generation = generation

    def route(self, target: Target, host: str, path: str) -> Target:
        """Where a request for one of the app's host names goes (``target`` when no rule changes it)."""
        service = dispatchyaml.match(self.rules, host, path)
        if service is None:
            return target
        version = self.services.get(service)
        if version is None or version == target.version_id:
            return target  # no version of the service is left (default routing), or the one already picked
        return Target(self.app_id, version)


class Dispatch:
    """Every app's :class:`Table`, kept current from the control plane (see module docstring).

    ``tables`` is the router's app -> table map; it holds only apps with rules.
    """

    def __init__(self, source: VersionSource, cache_dir: pathlib.Path, tables: dict[str, Table]) -> None:
        self._source = source
        self._dir = cache_dir / "dispatch"
        self.tables = tables
        self._locks: dict[str, asyncio.Lock] = {}

    def load_cache(self) -> None:
        """The rules the router last saw, until the control plane answers."""
        if not self._dir.is_dir():
            return
        for path in sorted(self._dir.glob("*.pb")):
            try:
                self.apply(path.stem, pb.GetDispatchResponse.FromString(path.read_bytes()), save=False)
            except Exception as exc:  # noqa: BLE001 - a damaged copy is replaced at the first resync
                log.warning("ignoring cached dispatch rules %s: %s", path, exc)

    async def refresh(self, app_id: str) -> None:
        """Re-read one app's rules and serving versions."""
        lock = self._locks.setdefault(app_id, asyncio.Lock())
        async with lock:  # one read at a time per app, so an older answer never replaces a newer one
            got = await self._source.dispatch(app_id)
            self.apply(app_id, got, save=True)

    def apply(self, app_id: str, got: pb.GetDispatchResponse, *, save: bool) -> None:
        """Take ``got`` as the app's rules (none when its text is empty); ``save`` keeps a copy in the cache."""
        if not got.dispatch_yaml:
            if self.tables.pop(app_id, None) is not None:
                log.info("app %s: no dispatch rules (generation %d)", app_id, got.generation)
            if save:
                (self._dir / f"{app_id}.pb").unlink(missing_ok=True)
            return
        try:
            rules = dispatchyaml.parse(got.dispatch_yaml, filename=f"{app_id}/dispatch.yaml")
        except KilnError as exc:  # checked when deployed: a kiln upgrade may read it differently
            log.error("app %s: dispatch rules no longer parse (%s); keeping the previous ones", app_id, exc)
            return
        old = self.tables.get(app_id)
        if old is None or old.generation != got.generation:
            log.info("app %s: %d dispatch rules (generation %d)", app_id, len(rules), got.generation)
        self.tables[app_id] = Table(app_id, rules, dict(got.services), got.generation)
        if save:
            self._dir.mkdir(parents=True, exist_ok=True)
            tmp = self._dir / f".{app_id}.{os.getpid()}.tmp"
            tmp.write_bytes(got.SerializeToString())
            tmp.replace(self._dir / f"{app_id}.pb")

    async def resync(self) -> None:
        """Re-read every app that has rules (or had them), and forget apps that have none."""
        apps = await self._source.apps()
        with_rules = {a.app_id for a in apps if a.dispatch_generation}
        for app_id in with_rules | set(self.tables):
            await self.refresh(app_id)

    async def on_event(self, subject: str, data: bytes) -> None:
        """New rules, or a version or default change of an app with rules."""
        if subject == bus.DEPLOY_DISPATCH_SUBJECT:
            event = events_pb2.DispatchEvent.FromString(data)
            table = self.tables.get(event.app_id)
            if table is None or table.generation < event.generation:
                await self.refresh(event.app_id)
            return
        app_id = parse_event(subject, data).app_id
        if app_id in self.tables:
            await self.refresh(app_id)

    async def follow(self, nc: Client, resync_seconds: float) -> None:
        """Apply events as they come, and re-read every ``resync_seconds``, until cancelled."""
        await follow(nc, self.on_event, self.resync, resync_seconds, "dispatch rules", SUBJECTS)
