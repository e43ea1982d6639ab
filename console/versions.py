"""The Apps and versions page: the app's versions (their current minor, when and by whom deployed, which is the
default), each version's running instances (state, requests served, memory, average latency, start time), and the
actions — make a version the default, delete a version, stop an instance — each after a confirmation.

Everything comes from the control plane (``kiln.pb.deploy.v1.DeployService``: ListVersions, ListInstances,
SetDefaultVersion, DeleteVersion, StopInstance), called with the console's server-side deploy token. The rules stay
the control plane's: it refuses to delete the default version, and a version or instance that is gone (a stale
page) is NOT_FOUND; the page shows its message and the list as it is now.
"""

from __future__ import annotations

import dataclasses
import datetime

from aiohttp import web
from google.protobuf.timestamp_pb2 import Timestamp

from console import render
from console.backend import Services
from kiln.errors import BadRequestError
from kiln.pb.deploy.v1 import deploy_pb2 as pb


@dataclasses.dataclass(frozen=True)
class InstanceRow:
    """One instance as the page shows it."""

    instance: pb.Instance
    state: str
    memory: str
    latency: str
    started: str


@dataclasses.dataclass(frozen=True)
class VersionRow:
    """One version and its instances."""

    version: pb.Version
    deployed: str
    instances: list[InstanceRow]


def _when(ts: Timestamp) -> str:
    return ts.ToDatetime(datetime.UTC).strftime("%Y-%m-%d %H:%M:%S UTC") if ts.seconds or ts.nanos else "–"


def instance_row(instance: pb.Instance) -> InstanceRow:
    """``instance`` laid out for the page."""
    if instance.stopping:
        state = "stopping"
    elif instance.active_requests:
        state = f"busy ({instance.active_requests} in flight)"
    else:
        state = "idle"
    return InstanceRow(instance=instance, state=state, memory=f"{instance.memory_bytes / (1 << 20):.1f} MiB",
                       latency=f"{instance.average_latency_ms:.1f} ms" if instance.requests_served else "–",
                       started=_when(instance.started_at))


def rows(versions: list[pb.Version], instances: list[pb.Instance]) -> list[VersionRow]:
    """The versions (as listed: newest first), each with its instances; instances of a version the list does not
    have (deleted while they stop) are shown under a version of their own."""
    by_version: dict[str, list[InstanceRow]] = {}
    for instance in instances:
        by_version.setdefault(instance.version_id, []).append(instance_row(instance))
    out = [VersionRow(v, _when(v.created_at), by_version.pop(v.version_id, [])) for v in versions]
    out += [VersionRow(pb.Version(version_id=version_id), "deleted", found) for version_id, found in by_version.items()]
    return out


def _field(form: object, name: str) -> str:
    value = form.get(name, "")  # type: ignore[attr-defined]
    if not isinstance(value, str) or not value:
        raise BadRequestError(f"{name}: missing")
    return value


def routes(services: Services) -> list[web.RouteDef]:
    """The page's routes."""

    async def show_page(request: web.Request, *, message: str = "") -> web.Response:
        app_id = services.app_id
        versions = await services.call("deploy", "ListVersions", pb.ListVersionsRequest(app_id=app_id))
        instances = await services.call("deploy", "ListInstances", pb.ListInstancesRequest(app_id=app_id))
        return render.page(request, "versions.html", fragment="versions_main.html",
                           versions=rows(list(versions.versions), list(instances.instances)), message=message)

    async def versions_page(request: web.Request) -> web.StreamResponse:
        return await show_page(request)

    async def set_default(request: web.Request) -> web.StreamResponse:
        version_id = _field(await request.post(), "version")
        await services.call("deploy", "SetDefaultVersion",
                            pb.SetDefaultVersionRequest(app_id=services.app_id, version_id=version_id))
        return await show_page(request, message=f"Version {version_id} is now the default.")

    async def delete(request: web.Request) -> web.StreamResponse:
        version_id = _field(await request.post(), "version")
        await services.call("deploy", "DeleteVersion",
                            pb.DeleteVersionRequest(app_id=services.app_id, version_id=version_id))
        return await show_page(request, message=f"Version {version_id} was deleted.")

    async def stop_instance(request: web.Request) -> web.StreamResponse:
        instance_id = _field(await request.post(), "instance")
        await services.call("deploy", "StopInstance",
                            pb.StopInstanceRequest(app_id=services.app_id, instance_id=instance_id))
        return await show_page(request, message=f"Instance {instance_id} is stopping (it finishes the requests it "
                                                "holds; another starts if the version needs one).")

    return [web.get("/versions", versions_page), web.post("/versions/default", set_default),
            web.post("/versions/delete", delete), web.post("/versions/stop-instance", stop_instance)]
