"""Where the router finds a version's ``app.yaml`` and static files, and each app's default version.

Two sources:

- :class:`ControlVersions`: deployed versions, from the control plane
  (``--control-plane``). A version's files are materialized locally on first
  use (and as soon as it is created, so a switch to it is instant); the
  default version of every app follows the control plane's NATS events within
  a second, and a periodic re-read catches any missed event.
- :class:`LocalVersions`: local directories, ``--app-dirs app/version=/path,…``
  (``kiln dev`` passes its one app, so edits show at once).

Each version's ``app.yaml`` is parsed once per minor version.
"""

from __future__ import annotations

import asyncio
import dataclasses
import logging
import pathlib
import time

from nats.aio.client import Client

from kiln_platform import appyaml
from kiln_platform.deployclient import VersionSource, follow, parse_event
from kiln_platform.handlers import Matcher
from kiln.pb.deploy.v1 import events_pb2

log = logging.getLogger(__name__)


@dataclasses.dataclass(frozen=True)
class Version:
    """One servable version: its files, parsed app.yaml and handler matcher."""

    app_id: str
    version_id: str
    root: pathlib.Path
    config: appyaml.AppConfig
    matcher: Matcher
    minor: int = 1


def parse_app_dirs(spec: str) -> dict[tuple[str, str], pathlib.Path]:
    """``app/version=/path,…`` as a mapping; raises ValueError naming a bad item."""
    out: dict[tuple[str, str], pathlib.Path] = {}
    for item in filter(None, (i.strip() for i in spec.split(","))):
        target, sep, path = item.partition("=")
        app, slash, version = target.partition("/")
        if not sep or not slash or not app or not version or not path:
            raise ValueError(f"app_dirs: expected app/version=/path, got {item!r}")
        out[(app, version)] = pathlib.Path(path)
    return out


class LocalVersions:
    """Versions from local directories."""

    def __init__(self, dirs: dict[tuple[str, str], pathlib.Path]) -> None:
        self._dirs = dirs
        self._loaded: dict[tuple[str, str], Version] = {}

    async def get(self, app_id: str, version_id: str) -> Version | None:
        """The version, or ``None`` when this router has no files for it."""
        key = (app_id, version_id)
        found = self._loaded.get(key)
        if found is None and key in self._dirs:
            root = self._dirs[key].resolve()
            config = appyaml.load(root / "app.yaml")
            found = self._loaded[key] = Version(app_id, version_id, root, config, Matcher(config))
        return found


# How long the router remembers that a version does not exist (a flood of unknown hosts must not flood the
# control plane); a creation event clears it at once.
MISSING_SECONDS = 2.0


class ControlVersions:
    """Deployed versions from the control plane (see module docstring).

    ``defaults`` is the router's app -> default version map; this class keeps
    it current.
    """

    def __init__(self, source: VersionSource, defaults: dict[str, str]) -> None:
        self._source = source
        self.defaults = defaults
        self._generations: dict[str, int] = {}
        self._loaded: dict[tuple[str, str], Version] = {}
        self._missing: dict[tuple[str, str], float] = {}
        self._epochs: dict[tuple[str, str], int] = {}
        self._prefetching: set[asyncio.Future[Version | None]] = set()

    async def get(self, app_id: str, version_id: str) -> Version | None:
        """The version, or ``None`` if the control plane has no such version."""
        key = (app_id, version_id)
        found = self._loaded.get(key)
        if found is not None:
            return found
        if self._missing.get(key, 0.0) > time.monotonic():
            return None
        epoch = self._epochs.get(key, 0)
        manifest = await self._source.version(app_id, version_id)
        if manifest is None:
            self._missing[key] = time.monotonic() + MISSING_SECONDS
            return None
        root = await self._source.materialize(manifest)
        config = await asyncio.to_thread(appyaml.load, root / "app.yaml")
        found = Version(app_id, version_id, root, config, Matcher(config), manifest.minor)
        if self._epochs.get(key, 0) == epoch:  # not replaced or deleted while it was being fetched
            self._loaded[key] = found
        return found

    async def resync(self) -> None:
        """Re-read every app's default version (at start, and periodically for missed events)."""
        for app in await self._source.apps():
            self._set_default(app.app_id, app.default_version, app.generation)

    def _set_default(self, app_id: str, version_id: str, generation: int) -> None:
        if generation < self._generations.get(app_id, -1):
            return  # stale
        self._generations[app_id] = generation
        if version_id and self.defaults.get(app_id) != version_id:
            log.info("app %s: default version is now %s (generation %d)", app_id, version_id, generation)
        if version_id:
            self.defaults[app_id] = version_id
        else:
            self.defaults.pop(app_id, None)

    async def on_event(self, subject: str, data: bytes) -> None:
        """A deployment event: switch a default, or forget a version replaced or deleted."""
        event = parse_event(subject, data)
        if isinstance(event, events_pb2.DefaultVersionEvent):
            self._set_default(event.app_id, event.version_id, event.generation)
            return
        key = (event.app_id, event.version_id)
        self._epochs[key] = self._epochs.get(key, 0) + 1
        self._loaded.pop(key, None)
        self._missing.pop(key, None)
        if event.kind == events_pb2.VersionEvent.KIND_CREATED:
            # Fetch it now, so requests find it ready when it becomes the default.
            task = asyncio.ensure_future(self.get(*key))
            self._prefetching.add(task)
            task.add_done_callback(self._prefetching.discard)
            task.add_done_callback(_log_failure)

    async def follow(self, nc: Client, resync_seconds: float) -> None:
        """Apply events as they come, and re-read the defaults every ``resync_seconds``, until cancelled."""
        await follow(nc, self.on_event, self.resync, resync_seconds, "default versions")

def _log_failure(task: asyncio.Future[Version | None]) -> None:
    if not task.cancelled() and task.exception() is not None:
        log.warning("fetching a new version: %s", task.exception())
