"""App Engine's ``modules`` service for Google's SDK: the app's services and versions, as kiln's control plane knows
them.

**Where the facts come from.** A deployed instance asks the control plane's ``ModulesService``
(``kiln.pb.modules.v1``, at ``KILN_MODULES_ADDR``) with the app's own token, once per call: the app's services, each
with its versions and their scaling, and the app's default version. The control plane answers for the caller's app
only (the request names no app), so another app's services are never seen: asking for one is ``INVALID_MODULE``.
Under ``kiln dev`` there is no control plane: the runtime hands :class:`Modules` the one version it runs (the
default). A version belongs to the service its ``app.yaml`` names (``service:``, else ``default``). kiln has one
default version per app (the one serving ``APP.DOMAIN``); it is the default of its own service, and another service
has none (``get_default_version`` of it is ``InvalidVersionError``, as the SDK documents for "no default version").

**Answers**, as App Engine's (and the SDK's own stub's) rules resolve a call's module and version: an omitted module
is the instance's own (``GAE_SERVICE``); an omitted version is the instance's own if the module has it, else the
module's default. The instance's own service and version are always listed, even if the control plane no longer has
them (a version deleted while its instances drain):

- ``GetModules``: the app's services; ``GetVersions``: a service's versions (``INVALID_MODULE`` if unknown);
- ``GetDefaultVersion``: ``INVALID_MODULE`` for an unknown service, ``INVALID_VERSION`` for one without a default;
- ``GetNumInstances``: the instances set in ``app.yaml`` (``manual_scaling.instances``, or
  ``basic_scaling.max_instances``); an automatically scaled version has no set number: ``INVALID_VERSION``, as on
  App Engine (so is an unknown service or version);
- ``GetHostname``: kiln's host names, ``VERSION-dot-APP.DOMAIN`` and, for one instance of a manually or basically
  scaled version, ``INSTANCE-dot-VERSION-dot-APP.DOMAIN`` (``INVALID_INSTANCES`` for an automatically scaled one or
  an instance id that is not a host label); an unknown service or version is ``INVALID_MODULE``.

**Writes are refused.** ``SetNumInstances``, ``StartModule`` and ``StopModule`` first check the service and version
as App Engine did (``INVALID_VERSION``), then fail with the SDK's ``FeatureNotEnabledError`` saying why: in kiln a
version's instances are set by its ``app.yaml`` and it runs from ``kiln deploy`` until ``kiln versions delete``, all
under a deploy token of the app. There is no stopped state to switch, and an app's token (which every request
handler, and any code the app runs, holds) is not a deploy credential: letting it stop or resize versions would give
app code the operator's power over the app.

Errors the control plane returns: ``UNAVAILABLE`` (and a deadline passed) are ``TRANSIENT_ERROR`` (the SDK's
``TransientError`` where it maps it); anything else is the proxy's ``RPCFailedError``.
"""

from __future__ import annotations

import os
import re
from typing import Any

import grpc
from google.appengine.api.modules import modules_service_pb2 as gae
from google.appengine.runtime import apiproxy_errors

from kiln.api import _rpc
from kiln.pb.modules.v1 import modules_pb2 as pb
from kiln.pb.modules.v1 import modules_pb2_grpc
from kiln.sdk import _errors
from kiln.sdk.service import CallContext

__all__ = ["App", "Modules", "answer"]

_ERR = gae.ModulesServiceError
_ERRORS = _errors.table({}, {grpc.StatusCode.UNAVAILABLE: _ERR.TRANSIENT_ERROR,
                             grpc.StatusCode.DEADLINE_EXCEEDED: _ERR.TRANSIENT_ERROR})
_WRITES = {
    "SetNumInstances": "set the number of instances",
    "StartModule": "start versions",
    "StopModule": "stop versions",
}
_READS = ("GetModules", "GetVersions", "GetDefaultVersion", "GetNumInstances", "GetHostname")
# An instance as the router reads it in INSTANCE-dot-VERSION-dot-APP.DOMAIN: one host label.
_INSTANCE_RE = re.compile(r"^[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?$")
_FIXED = (pb.SCALING_MANUAL, pb.SCALING_BASIC)


class Modules:
    """The ``modules`` service (module docstring).

    Args:
        local: the app as the instance itself runs it (``kiln dev``); ``None`` asks the control plane.
    """

    name = "modules"

    def __init__(self, local: pb.ListModulesResponse | None = None) -> None:
        self.local = local

    def handle(self, method: str, request: Any, response: Any, ctx: CallContext) -> None:
        if method not in _READS and method not in _WRITES:
            raise apiproxy_errors.CallNotFoundError(
                f"modules.{method}() is not a method of App Engine's modules service")
        app = self.local if self.local is not None else _ask(ctx)
        answer(method, request, response, App(app, os.environ.get("GAE_SERVICE") or "default",
                                               os.environ.get("GAE_VERSION", ""),
                                               str(ctx.environ.get("DEFAULT_VERSION_HOSTNAME")
                                                   or os.environ.get("DEFAULT_VERSION_HOSTNAME", ""))))


def _ask(ctx: CallContext) -> pb.ListModulesResponse:
    stub = _rpc.stub("MODULES", modules_pb2_grpc.ModulesServiceStub)
    timeout = ctx.deadline if ctx.deadline is not None else _rpc.DEFAULT_TIMEOUT
    return _rpc.call(stub.ListModules, pb.ListModulesRequest(), timeout=timeout, table=_ERRORS)


class App:
    """One app's services and versions as the calling instance sees them (its own always included).

    Attributes:
        module: the instance's own service; version: its own version; hostname: the app's ``APP.DOMAIN``.
        versions: service → version id → the version; default: the app's default version ("" if none).
    """

    def __init__(self, facts: pb.ListModulesResponse, module: str, version: str, hostname: str) -> None:
        self.module, self.version, self.hostname = module, version, hostname
        self.default = facts.default_version
        self.versions: dict[str, dict[str, pb.ModuleVersion]] = {
            m.name: {v.version_id: v for v in m.versions} for m in facts.modules}
        own = self.versions.setdefault(module, {})
        if version and version not in own:
            own[version] = pb.ModuleVersion(version_id=version, scaling=pb.SCALING_UNSPECIFIED)

    def module_of(self, asked: str, code: int) -> dict[str, pb.ModuleVersion]:
        """The versions of service ``asked`` (the instance's own if empty), or ``code`` for an unknown one."""
        found = self.versions.get(asked or self.module)
        if found is None:
            raise apiproxy_errors.ApplicationError(code, f"app has no service {asked!r}; its services are "
                                                         f"{', '.join(sorted(self.versions))}")
        return found

    def default_of(self, module: str) -> str | None:
        """The default version of ``module``, if it has one."""
        return self.default if self.default in self.versions.get(module, {}) else None

    def resolve(self, asked_module: str, asked_version: str, code: int) -> pb.ModuleVersion:
        """The version a call means (module docstring), or ``code`` if the service or version is unknown."""
        module = asked_module or self.module
        versions = self.module_of(module, code)
        if asked_version:
            found = versions.get(asked_version)
            if found is None:
                raise apiproxy_errors.ApplicationError(code, f"service {module!r} has no version {asked_version!r}")
            return found
        if self.version in versions:
            return versions[self.version]
        default = self.default_of(module)
        if default is None:
            raise apiproxy_errors.ApplicationError(
                code, f"service {module!r} has no default version and no version was named")
        return versions[default]


def answer(method: str, request: Any, response: Any, app: App) -> None:
    """Fill ``response`` for ``method`` from ``app``, or raise the SDK's error (module docstring)."""
    if method == "GetModules":
        response.module.extend(sorted(app.versions))
    elif method == "GetVersions":
        response.version.extend(sorted(app.module_of(request.module, _ERR.INVALID_MODULE)))
    elif method == "GetDefaultVersion":
        module = request.module or app.module
        app.module_of(module, _ERR.INVALID_MODULE)
        default = app.default_of(module)
        if default is None:
            raise apiproxy_errors.ApplicationError(_ERR.INVALID_VERSION, _no_default(app, module))
        response.version = default
    elif method == "GetNumInstances":
        version = app.resolve(request.module, request.version, _ERR.INVALID_VERSION)
        if version.scaling not in _FIXED:
            raise apiproxy_errors.ApplicationError(
                _ERR.INVALID_VERSION, f"version {version.version_id!r} has no set number of instances: it is scaled "
                                      "automatically (manual_scaling or basic_scaling in app.yaml sets one)")
        response.instances = version.instances
    elif method == "GetHostname":
        response.hostname = _hostname(request, app)
    else:
        version = app.resolve(request.module, request.version, _ERR.INVALID_VERSION)
        raise apiproxy_errors.FeatureNotEnabledError(
            f"modules.{method}(): kiln does not let apps {_WRITES[method]} (version {version.version_id!r}): a "
            "version's instances are set by app.yaml (manual_scaling, basic_scaling) and it runs from kiln deploy "
            "until kiln versions delete, under a deploy token of the app; the app's own token is not one")


def _no_default(app: App, module: str) -> str:
    if not app.default:
        return "the app has no default version yet (kiln versions set-default makes one)"
    owner = next((m for m, versions in app.versions.items() if app.default in versions), "?")
    return (f"service {module!r} has no default version: kiln has one default version per app, "
            f"{app.default!r}, of service {owner!r}")


def _hostname(request: Any, app: App) -> str:
    version = app.resolve(request.module, request.version, _ERR.INVALID_MODULE)
    host = f"{version.version_id}-dot-{app.hostname}"
    if not request.HasField("instance"):
        return host
    if version.scaling not in _FIXED:
        raise apiproxy_errors.ApplicationError(
            _ERR.INVALID_INSTANCES, f"version {version.version_id!r} is scaled automatically: its instances cannot be "
                                    "addressed (only manually or basically scaled ones)")
    if not _INSTANCE_RE.match(request.instance) or "-dot-" in request.instance:
        raise apiproxy_errors.ApplicationError(
            _ERR.INVALID_INSTANCES, f"instance {request.instance[:80]!r} is not an instance id (a host label: "
                                    "lowercase letters, digits, hyphens)")
    return f"{request.instance}-dot-{host}"
