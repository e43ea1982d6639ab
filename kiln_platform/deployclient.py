"""Reading deployed versions from the control plane: what routers and runtime hosts share.

:class:`VersionSource` asks the control plane (``DeployService``, with a
platform read token) for apps, default versions and version manifests, and
*materializes* a version: its files downloaded once per content hash into
``CACHE/blobs/APP/``, each checked against its SHA-256, then hard-linked (or
copied) into ``CACHE/versions/APP/VERSION.MINOR/``, a directory built under a
temporary name and renamed into place — a version directory exists whole or
not at all, and a new minor never reuses an old one's directory.

:func:`watch` follows the control plane's NATS events and calls back on each.
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import os
import pathlib
import shutil
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, Generic, TypeVar

import grpc
from nats.aio.client import Client

from kiln_platform import bus
from kiln.api import _rpc
from kiln.errors import KilnError, NotFoundError, UnavailableError
from kiln.pb.deploy.v1 import deploy_pb2 as pb
from kiln.pb.deploy.v1 import deploy_pb2_grpc, events_pb2

log = logging.getLogger(__name__)

PARALLEL_DOWNLOADS = 8
T = TypeVar("T")


def version_dir_name(version: pb.Version) -> str:
    return f"{version.version_id}.{version.minor}"


class VersionSource:
    """The control plane as seen by routers and runtime hosts (see module docstring)."""

    def __init__(self, address: str, token: str, cache_dir: pathlib.Path | None = None) -> None:
        self._channel = grpc.aio.insecure_channel(address, options=_rpc.channel_options(64 << 20))
        self._stub = deploy_pb2_grpc.DeployServiceStub(self._channel)
        self._meta = (("authorization", f"Bearer {token}"),)
        self._cache = cache_dir
        self._building: dict[tuple[str, str, int], asyncio.Future[pathlib.Path]] = {}

    async def close(self) -> None:
        await self._channel.close()

    async def apps(self) -> list[pb.AppInfo]:
        """Every app with its default version."""
        try:
            return list((await self._stub.ListApps(pb.ListAppsRequest(), metadata=self._meta)).apps)
        except grpc.aio.AioRpcError as exc:
            raise UnavailableError(f"control plane: {exc.details()}") from exc

    async def versions(self, app_id: str) -> list[pb.Version]:
        """The app's versions (without files)."""
        try:
            resp = await self._stub.ListVersions(pb.ListVersionsRequest(app_id=app_id), metadata=self._meta)
        except grpc.aio.AioRpcError as exc:
            raise UnavailableError(f"control plane: {exc.details()}") from exc
        return list(resp.versions)

    async def dispatch(self, app_id: str) -> pb.GetDispatchResponse:
        """The app's dispatch rules and the version serving each of its services."""
        try:
            return await self._stub.GetDispatch(pb.GetDispatchRequest(app_id=app_id),
                                                metadata=self._meta)
        except grpc.aio.AioRpcError as exc:
            raise UnavailableError(f"control plane: {exc.details()}") from exc

    async def version(self, app_id: str, version_id: str) -> pb.Version | None:
        """One version with its files, or None if the control plane has no such version."""
        try:
            resp = await self._stub.GetVersion(pb.GetVersionRequest(app_id=app_id, version_id=version_id),
                                               metadata=self._meta)
        except grpc.aio.AioRpcError as exc:
            if exc.code() in (grpc.StatusCode.NOT_FOUND, grpc.StatusCode.INVALID_ARGUMENT):
                return None
            raise UnavailableError(f"control plane: {exc.details()}") from exc
        return resp.version

    async def materialize(self, version: pb.Version) -> pathlib.Path:
        """The version's files in a local directory (built once per minor; concurrent callers share the work)."""
        if self._cache is None:
            raise ValueError("VersionSource: materialize needs a cache_dir")
        key = (version.app_id, version.version_id, version.minor)
        target = self._cache / "versions" / version.app_id / version_dir_name(version)
        if target.is_dir():
            return target
        pending = self._building.get(key)
        if pending is None:
            pending = self._building[key] = asyncio.ensure_future(self._build(version, target))
            pending.add_done_callback(lambda _: self._building.pop(key, None))
        return await asyncio.shield(pending)

    async def _build(self, version: pb.Version, target: pathlib.Path) -> pathlib.Path:
        blobs = target.parents[2] / "blobs" / version.app_id
        blobs.mkdir(parents=True, exist_ok=True)
        sem = asyncio.Semaphore(PARALLEL_DOWNLOADS)

        async def fetch(sha: str) -> None:
            if (blobs / sha).exists():
                return
            async with sem:
                await self._download(version.app_id, sha, blobs / sha)
        await asyncio.gather(*(fetch(h) for h in {f.sha256 for f in version.files}))
        await asyncio.to_thread(_link_tree, version, blobs, target)
        log.info("app %s: version %s.%d ready in %s (%d files)", version.app_id, version.version_id, version.minor,
                 target, len(version.files))
        return target

    async def _download(self, app_id: str, sha: str, dest: pathlib.Path) -> None:
        h = hashlib.sha256()
        tmp = dest.with_name(f".{sha}.{uuid.uuid4().hex}.tmp")
        try:
            with open(tmp, "wb") as f:
                async for part in self._stub.DownloadBlob(pb.DownloadBlobRequest(app_id=app_id, sha256=sha),
                                                          metadata=self._meta):
                    h.update(part.chunk)
                    f.write(part.chunk)
            if h.hexdigest() != sha:
                raise UnavailableError(f"control plane: file {sha} of app {app_id} arrived corrupted")
            os.chmod(tmp, 0o444)
            tmp.replace(dest)
        except grpc.aio.AioRpcError as exc:
            if exc.code() == grpc.StatusCode.NOT_FOUND:
                raise NotFoundError(f"control plane: app {app_id} lost file {sha}") from exc
            raise UnavailableError(f"control plane: {exc.details()}") from exc
        finally:
            tmp.unlink(missing_ok=True)


def _link_tree(version: pb.Version, blobs: pathlib.Path, target: pathlib.Path) -> None:
    building = target.with_name(f".{target.name}.{uuid.uuid4().hex}")
    try:
        for f in version.files:
            dest = building / f.path
            dest.parent.mkdir(parents=True, exist_ok=True)
            if f.mode & 0o111:  # an executable gets its own copy with its mode; the shared blob stays 0444
                shutil.copyfile(blobs / f.sha256, dest)
                os.chmod(dest, 0o555)
                continue
            try:
                os.link(blobs / f.sha256, dest)
            except OSError:
                shutil.copyfile(blobs / f.sha256, dest)
        building.rename(target)
    except FileExistsError:  # built meanwhile by another process sharing the cache
        pass
    except OSError:
        if not target.is_dir():
            raise
    finally:
        if building.exists():
            shutil.rmtree(building, ignore_errors=True)


Callback = Callable[[str, bytes], Awaitable[None]]


VERSION_SUBJECTS = (bus.DEPLOY_VERSION_SUBJECT, bus.DEPLOY_DEFAULT_SUBJECT)


async def watch(nc: Client, on_event: Callback, subjects: tuple[str, ...] = VERSION_SUBJECTS) -> list[Any]:
    """Subscribe to deployment events (by default versions and defaults, which :func:`parse_event` reads);
    ``on_event(subject, data)`` runs for each. Returns the subscriptions."""
    async def handler(msg: object) -> None:
        try:
            await on_event(msg.subject, msg.data)  # type: ignore[attr-defined]
        except Exception:  # noqa: BLE001 - one bad event must not stop the subscription
            log.exception("handling a deployment event")
    return [await nc.subscribe(subject, cb=handler)
            for subject in subjects]


async def follow(nc: Client, on_event: Callback, resync: Callable[[], Awaitable[None]], resync_seconds: float,
                 what: str, subjects: tuple[str, ...] = VERSION_SUBJECTS) -> None:
    """Apply deployment events as they come and call ``resync`` now and every ``resync_seconds``, until cancelled.

    ``resync`` re-reads the control plane, so an event missed while NATS was
    away delays a change by at most ``resync_seconds``.
    """
    subs = await watch(nc, on_event, subjects)
    try:
        while True:
            try:
                await resync()
            except Exception as exc:  # noqa: BLE001 - the control plane may be away for a while
                log.warning("reading %s from the control plane: %s", what, exc)
            await asyncio.sleep(resync_seconds)
    finally:
        for sub in subs:
            await sub.unsubscribe()


def parse_event(subject: str, data: bytes) -> events_pb2.VersionEvent | events_pb2.DefaultVersionEvent:
    if subject == bus.DEPLOY_DEFAULT_SUBJECT:
        return events_pb2.DefaultVersionEvent.FromString(data)
    return events_pb2.VersionEvent.FromString(data)


class DefaultVersionFile(Generic[T]):
    """Keeps a service's state equal to one file of each app's default version (``cron.yaml``, ``queue.yaml``…),
    read from the control plane.

    At start and every ``resync_seconds`` every app's file is re-read; a ``kiln.deploy.default`` event (a new
    default) or a ``kiln.deploy.version`` event for the default version (a new minor of it) re-reads that app's at
    once. ``read`` takes the file's text from a version ("" when it has none), ``parse(text, filename)`` makes the
    value (raising :class:`KilnError` when invalid), ``empty`` is the value of an app without the file or without a
    default version, and ``apply(app_id, value)`` hands it to the service. A file that is invalid now (the control
    plane checked it when it was deployed) is logged and the app keeps what it had.
    """

    def __init__(self, source: VersionSource, name: str, read: Callable[[pb.Version], str],
                 parse: Callable[[str, str], T], empty: Callable[[], T],
                 apply: Callable[[str, T], Awaitable[None]]) -> None:
        self._source = source
        self._name = name
        self._read, self._parse, self._empty, self._apply = read, parse, empty, apply
        self._defaults: dict[str, str] = {}

    async def refresh(self, app_id: str) -> None:
        version = await self._source.version(app_id, "")
        value = self._empty()
        if version is not None:
            self._defaults[app_id] = version.version_id
            text = self._read(version)
            if text:
                try:
                    value = self._parse(text, f"{app_id}/{version.version_id}/{self._name}")
                except KilnError as exc:
                    log.error("%s of %s: %s", self._name, app_id, exc)
                    return
        await self._apply(app_id, value)

    async def resync(self) -> None:
        for app in await self._source.apps():
            await self.refresh(app.app_id)

    async def on_event(self, subject: str, data: bytes) -> None:
        event = parse_event(subject, data)
        if hasattr(event, "generation") or self._defaults.get(event.app_id) == event.version_id:
            await self.refresh(event.app_id)

    async def follow(self, nc: Client, resync_seconds: float) -> None:
        """Apply events and re-read periodically until cancelled."""
        await follow(nc, self.on_event, self.resync, resync_seconds, f"{self._name} files")
