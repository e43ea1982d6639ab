"""``kiln.pb.deploy.v1.DeployService``: versions, their files and the default, behind deploy tokens.

Every call is checked against the caller's token (:mod:`deploy.control.tokens`):
changes need an admin token of the app; reads (versions, files, the app list)
also accept a platform read token. Uploads are verified before anything is
stored: the declared size, the 32 MB limit and the SHA-256 of what arrived —
a truncated or altered upload stores nothing. A version is created only when
its manifest passes App Engine's limits, its configuration files parse and
every file it names is stored, so no half-deployed version is ever visible,
and only when a live runtime host can run its runtime (:mod:`deploy.control.hosts`;
``CheckRuntime`` asks the same before anything is uploaded).
Each creation, deletion and switch of the default is announced on NATS
(:data:`kiln_platform.bus.DEPLOY_VERSION_SUBJECT`, :data:`kiln_platform.bus.DEPLOY_DEFAULT_SUBJECT`), and each
replacement of an app's dispatch rules (:mod:`deploy.control.dispatch`) on
:data:`kiln_platform.bus.DEPLOY_DISPATCH_SUBJECT`.
After a version is deleted or replaced by a new minor, the files no version
names any more are deleted in the background (:meth:`Store.collect_garbage`).
"""

from __future__ import annotations

import asyncio
import hashlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import grpc

from deploy.control import manifest, tokens
from deploy.control.dispatch import Dispatch
from deploy.control.hosts import Hosts
from deploy.control.indexes import IndexApplier
from deploy.control.instances import Instances
from deploy.control.store import Store, not_uploaded
from kiln_platform import auth, bus, grpcserver
from kiln.errors import BadRequestError, NotFoundError, PermissionDeniedError, TooLargeError
from kiln.pb.deploy.v1 import deploy_pb2 as pb
from kiln.pb.deploy.v1 import deploy_pb2_grpc
from kiln.pb.deploy.v1 import events_pb2

log = logging.getLogger(__name__)

MAX_HASHES_PER_CALL = manifest.MAX_FILES
# How long an app identity token handed out by AppToken lasts (a CLI command: a long bulk load resumes).
APP_TOKEN_SECONDS = 12 * 3600
# Uploads held in memory at once (each at most 32 MB) while their hash is checked.
CONCURRENT_UPLOADS = 8

Publish = Callable[[str, bytes], Awaitable[None]]
Context = grpc.aio.ServicerContext[Any, Any]


def check_app(app_id: str) -> None:
    if not auth.APP_ID_RE.match(app_id):
        raise BadRequestError(f"app {app_id[:80]!r}: expected an app id (lowercase letter, then lowercase letters, "
                              "digits, hyphens; at most 63)")


async def yaml_blobs(store: Store, version: pb.Version) -> dict[str, bytes]:
    """The YAML files app.yaml's includes may read, by path (:func:`manifest.include_paths`), from ``store``."""
    by_path = {f.path: f.sha256 for f in version.files}
    out = {}
    for path in manifest.include_paths(version):
        try:
            out[path] = b"".join([c async for c in store.read_blob(version.app_id, by_path[path])])
        except NotFoundError:
            raise not_uploaded(version, [by_path[path]]) from None
    return out


class DeployService(deploy_pb2_grpc.DeployServiceServicer):
    """Implements the contract (see module docstring)."""

    def __init__(self, store: Store, *, service_secret: str, publish: Publish, hosts: Hosts,
                 instances: Instances, blob_grace_seconds: float = 3600.0,
                 indexes: IndexApplier | None = None) -> None:
        self._store = store
        self._instances = instances
        self._indexes = indexes
        self._hosts = hosts
        self._service_secret = service_secret
        self._publish = publish
        self._uploads = asyncio.Semaphore(CONCURRENT_UPLOADS)
        self._grace = blob_grace_seconds
        self._collecting: dict[str, asyncio.Task[None]] = {}
        self._collect_again: set[str] = set()
        self._dispatch = Dispatch(store, yaml_blobs)

    def _grant(self, context: Context, app_id: str, scope: str) -> tokens.Grant:
        grant = grpcserver.caller(tokens.Grant)
        check_app(app_id)
        grant.require(app_id, scope)
        return grant

    async def MissingBlobs(self, request: pb.MissingBlobsRequest, context: Context) -> pb.MissingBlobsResponse:
        self._grant(context, request.app_id, "admin")
        if len(request.sha256) > MAX_HASHES_PER_CALL:
            raise TooLargeError(f"sha256: at most {MAX_HASHES_PER_CALL:,} hashes per call")
        for h in request.sha256:
            manifest.check_sha256(h)
        return pb.MissingBlobsResponse(sha256=await self._store.missing_blobs(request.app_id, request.sha256))

    async def UploadBlob(self, request_iterator: AsyncIterator[pb.UploadBlobRequest],
                         context: Context) -> pb.UploadBlobResponse:
        first = await anext(aiter(request_iterator), None)
        if first is None:
            raise BadRequestError("UploadBlob: empty stream; the first message names app_id, sha256 and size")
        app_id, expected, size = first.app_id, first.sha256, first.size
        self._grant(context, app_id, "admin")
        manifest.check_sha256(expected)
        if size < 0 or size > manifest.MAX_FILE_BYTES:
            raise TooLargeError(f"size {size:,}: a file may have 0 to {manifest.MAX_FILE_BYTES:,} bytes (32 MB)")
        async with self._uploads:
            parts, got = [first.chunk], len(first.chunk)
            async for msg in request_iterator:
                if msg.app_id or msg.sha256 or msg.size:
                    raise BadRequestError("UploadBlob: only the first message carries app_id, sha256 and size")
                got += len(msg.chunk)
                if got > size:
                    raise BadRequestError(f"blob {expected}: more than the declared {size:,} bytes arrived")
                parts.append(msg.chunk)
            if got < size:
                raise BadRequestError(f"blob {expected}: truncated upload, {got:,} of {size:,} bytes arrived; "
                                      "nothing was stored, upload it again")
            data = b"".join(parts)
            actual = hashlib.sha256(data).hexdigest()
            if actual != expected:
                raise BadRequestError(f"blob {expected}: the content's sha256 is {actual}; nothing was stored")
            await self._store.put_blob(app_id, expected, data)  # idempotent: the same hash is the same bytes
        return pb.UploadBlobResponse(sha256=expected)

    async def CreateVersion(self, request: pb.CreateVersionRequest, context: Context) -> pb.CreateVersionResponse:
        version = request.version
        grant = self._grant(context, version.app_id, "admin")
        manifest.check_version_id(version.version_id)
        manifest.check_files(version.files)
        config = manifest.check_configs(version, await yaml_blobs(self._store, version))
        manifest.check_files(version.files, skip=config)
        if not request.skip_host_check:
            self._hosts.check(config.runtime)
        version.deployed_by = grant.name
        version.is_default = False
        stored = await self._store.create_version(version)  # refused if a file is not uploaded
        log.info("app %s: version %s.%d created by %s (%d files)", stored.app_id, stored.version_id, stored.minor,
                 grant.name, len(stored.files))
        # Its indexes before anything serves it (deploy/control/indexes.py).
        report = pb.IndexReport()
        if version.index_yaml:
            report = (await self._indexes.apply(stored.app_id, version.index_yaml) if self._indexes is not None
                      else pb.IndexReport(not_applied="the control plane has no datastore address (its "
                                                      "--datastore-addr)"))
        await self._announce_version(stored, events_pb2.VersionEvent.KIND_CREATED)
        if stored.minor > 1:
            self.collect(stored.app_id)  # the previous minor's files may be unused now
        if request.promote:
            await self._promote(stored.app_id, stored.version_id)
            stored.is_default = True
        return pb.CreateVersionResponse(version=stored, indexes=report)

    async def CheckRuntime(self, request: pb.CheckRuntimeRequest, context: Context) -> pb.CheckRuntimeResponse:
        self._grant(context, request.app_id, "admin")
        return pb.CheckRuntimeResponse(hosts=self._hosts.check(request.runtime))

    async def GetVersion(self, request: pb.GetVersionRequest, context: Context) -> pb.GetVersionResponse:
        self._grant(context, request.app_id, "read")
        if request.version_id:
            manifest.check_version_id(request.version_id)
        found = await self._store.get_version(request.app_id, request.version_id)
        if found is None:
            raise NotFoundError(f"app {request.app_id!r} has no version {request.version_id!r}" if request.version_id
                                else f"app {request.app_id!r} has no default version yet")
        return pb.GetVersionResponse(version=found)

    async def ListVersions(self, request: pb.ListVersionsRequest, context: Context) -> pb.ListVersionsResponse:
        self._grant(context, request.app_id, "read")
        return pb.ListVersionsResponse(versions=await self._store.list_versions(request.app_id))

    async def SetDefaultVersion(self, request: pb.SetDefaultVersionRequest,
                                context: Context) -> pb.SetDefaultVersionResponse:
        self._grant(context, request.app_id, "admin")
        manifest.check_version_id(request.version_id)
        await self._promote(request.app_id, request.version_id)
        return pb.SetDefaultVersionResponse()

    async def DeleteVersion(self, request: pb.DeleteVersionRequest, context: Context) -> pb.DeleteVersionResponse:
        self._grant(context, request.app_id, "admin")
        manifest.check_version_id(request.version_id)
        await self._store.delete_version(request.app_id, request.version_id)
        log.info("app %s: version %s deleted", request.app_id, request.version_id)
        await self._announce_version(pb.Version(app_id=request.app_id, version_id=request.version_id),
                                     events_pb2.VersionEvent.KIND_DELETED)
        self.collect(request.app_id)
        return pb.DeleteVersionResponse()

    async def DownloadBlob(self, request: pb.DownloadBlobRequest,
                           context: Context) -> AsyncIterator[pb.DownloadBlobResponse]:
        self._grant(context, request.app_id, "read")
        manifest.check_sha256(request.sha256)
        async for chunk in self._store.read_blob(request.app_id, request.sha256):
            yield pb.DownloadBlobResponse(chunk=chunk)

    async def ListApps(self, request: pb.ListAppsRequest, context: Context) -> pb.ListAppsResponse:
        grant = grpcserver.caller(tokens.Grant)
        if grant.app != tokens.ALL_APPS:
            raise PermissionDeniedError("ListApps needs a platform token (for every app); an app's token lists "
                                        "its versions with ListVersions")
        return pb.ListAppsResponse(apps=await self._store.list_apps())

    async def AppToken(self, request: pb.AppTokenRequest, context: Context) -> pb.AppTokenResponse:
        self._grant(context, request.app_id, "admin")
        expires = int(time.time() + APP_TOKEN_SECONDS)
        return pb.AppTokenResponse(token=auth.mint_app_token(self._service_secret, request.app_id, expires_at=expires))

    async def SetDispatch(self, request: pb.SetDispatchRequest, context: Context) -> pb.SetDispatchResponse:
        self._grant(context, request.app_id, "admin")
        generation, rules = await self._dispatch.replace(request.app_id, request.dispatch_yaml)
        log.info("app %s: %d dispatch rules (generation %d)", request.app_id, rules, generation)
        event = events_pb2.DispatchEvent(app_id=request.app_id, generation=generation)
        event.time.GetCurrentTime()
        await self._publish(bus.DEPLOY_DISPATCH_SUBJECT, event.SerializeToString())
        return pb.SetDispatchResponse(generation=generation, rules=rules)

    async def GetDispatch(self, request: pb.GetDispatchRequest, context: Context) -> pb.GetDispatchResponse:
        self._grant(context, request.app_id, "read")
        text, generation = await self._store.get_dispatch(request.app_id)
        services = await self._dispatch.services(request.app_id) if text else {}
        return pb.GetDispatchResponse(dispatch_yaml=text, generation=generation, services=services)

    async def ListInstances(self, request: pb.ListInstancesRequest, context: Context) -> pb.ListInstancesResponse:
        self._grant(context, request.app_id, "admin")
        if request.version_id:
            manifest.check_version_id(request.version_id)
        return pb.ListInstancesResponse(instances=self._instances.list(request.app_id, request.version_id))

    async def StopInstance(self, request: pb.StopInstanceRequest, context: Context) -> pb.StopInstanceResponse:
        grant = self._grant(context, request.app_id, "admin")
        stopped = await self._instances.stop(request.app_id, request.instance_id)
        log.info("app %s: instance %s of version %s stopped by %s", request.app_id, request.instance_id,
                 stopped.version_id, grant.name)
        return pb.StopInstanceResponse()

    async def _promote(self, app_id: str, version_id: str) -> None:
        generation = await self._store.set_default(app_id, version_id)
        log.info("app %s: default version is now %s (generation %d)", app_id, version_id, generation)
        event = events_pb2.DefaultVersionEvent(app_id=app_id, version_id=version_id, generation=generation)
        event.time.GetCurrentTime()
        await self._publish(bus.DEPLOY_DEFAULT_SUBJECT, event.SerializeToString())

    async def _announce_version(self, version: pb.Version, kind: int) -> None:
        event = events_pb2.VersionEvent(kind=kind, app_id=version.app_id,  # type: ignore[arg-type]
                                        version_id=version.version_id, minor=version.minor)
        event.time.GetCurrentTime()
        await self._publish(bus.DEPLOY_VERSION_SUBJECT, event.SerializeToString())

    def collect(self, app_id: str) -> None:
        """Delete the app's unused files in the background (once more if asked again while running)."""
        if app_id in self._collecting:
            self._collect_again.add(app_id)
            return
        self._collecting[app_id] = asyncio.create_task(self._collect(app_id))

    async def _collect(self, app_id: str) -> None:
        try:
            while True:
                self._collect_again.discard(app_id)
                try:
                    deleted = await self._store.collect_garbage(app_id, self._grace)
                except Exception:  # noqa: BLE001 - the next deletion collects again
                    log.exception("app %s: could not delete unused files", app_id)
                    return
                if deleted:
                    log.info("app %s: deleted %d files no version uses", app_id, deleted)
                if app_id not in self._collect_again:
                    return
        finally:
            del self._collecting[app_id]

    async def close(self) -> None:
        """Wait for collections in progress."""
        if self._collecting:
            await asyncio.wait(list(self._collecting.values()), timeout=30)
        if self._indexes is not None:
            await self._indexes.close()
