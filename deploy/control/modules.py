"""``kiln.pb.modules.v1.ModulesService``: App Engine's Modules API facts, for the calling app only.

The caller is the app whose identity token the call carries (:class:`kiln_platform.grpcserver.AppTokens`, this
service's own authenticator: a deploy token is not accepted here, nor an app token by ``DeployService``). The
request names no app, so an app can only ever learn about itself.

Each version belongs to the service its ``app.yaml`` names (``service:``, else ``default``) and scales as it says
(:mod:`kiln_platform.modules`); both are read from the stored ``app.yaml`` exactly as at deploy time (with its
includes) once per version and minor, and kept while the version exists. The default version is the app's one
default (the version serving ``APP.DOMAIN``). Nothing here changes anything: kiln does not let an app start or stop
versions or set instance counts (``kiln/sdk/modules.py`` says why).
"""

from __future__ import annotations

import logging
from typing import Any

import grpc

from deploy.control import manifest
from deploy.control.service import yaml_blobs
from deploy.control.store import Store
from kiln.errors import KilnError
from kiln.pb.deploy.v1 import deploy_pb2
from kiln.pb.modules.v1 import modules_pb2 as pb
from kiln.pb.modules.v1 import modules_pb2_grpc
from kiln_platform import grpcserver
from kiln_platform import modules as facts

log = logging.getLogger(__name__)

Context = grpc.aio.ServicerContext[Any, Any]
_Key = tuple[str, str, int]  # app, version, minor


class ModulesService(modules_pb2_grpc.ModulesServiceServicer):
    """Implements the contract (see module docstring)."""

    def __init__(self, store: Store) -> None:
        self._store = store
        self._known: dict[_Key, tuple[str, pb.ModuleVersion]] = {}

    async def ListModules(self, request: pb.ListModulesRequest, context: Context) -> pb.ListModulesResponse:
        app_id = grpcserver.caller_app()
        versions = await self._store.list_versions(app_id)
        by_module: dict[str, list[pb.ModuleVersion]] = {}
        for version in versions:
            found = await self._describe(version)
            if found is not None:
                by_module.setdefault(found[0], []).append(found[1])
        live = {(app_id, v.version_id, v.minor) for v in versions}
        for key in [k for k in self._known if k[0] == app_id and k not in live]:
            del self._known[key]  # deleted versions and replaced minors
        return pb.ListModulesResponse(
            modules=[pb.Module(name=name, versions=sorted(found, key=lambda v: v.version_id))
                     for name, found in sorted(by_module.items())],
            default_version=next((v.version_id for v in versions if v.is_default), ""))

    async def _describe(self, listed: deploy_pb2.Version) -> tuple[str, pb.ModuleVersion] | None:
        """The version's service and scaling, from its app.yaml as deployed; None if it was deleted meanwhile."""
        key = (listed.app_id, listed.version_id, listed.minor)
        known = self._known.get(key)
        if known is not None:
            return known
        version = await self._store.get_version(listed.app_id, listed.version_id)  # with its files (includes)
        if version is None or version.minor != listed.minor:
            return None  # deleted or redeployed since it was listed: the next call sees the new state
        try:
            config = manifest.check_configs(version, await yaml_blobs(self._store, version))
        except KilnError as exc:  # it parsed when deployed: a kiln upgrade may read it differently
            log.warning("app %s: version %s: app.yaml no longer parses (%s); described as an automatic version of "
                        "service default", listed.app_id, listed.version_id, exc)
            known = (facts.DEFAULT_MODULE, pb.ModuleVersion(version_id=listed.version_id,
                                                            scaling=pb.SCALING_AUTOMATIC))
        else:
            known = (facts.module_name(config), facts.module_version(config, listed.version_id))
        self._known[key] = known
        return known
