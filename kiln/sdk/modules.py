"""App Engine's ``modules`` service for Google's SDK, from what the instance knows of itself.

An instance knows its own service (module), version, instance id and the app's default hostname (the runtime's
``GAE_SERVICE``, ``GAE_VERSION``, ``GAE_INSTANCE`` and the request's ``DEFAULT_VERSION_HOSTNAME``): ``GetModules``,
``GetVersions`` and ``GetHostname`` answer from those, with kiln's host names (``VERSION-dot-APP.DOMAIN``,
``INSTANCE-dot-VERSION-dot-APP.DOMAIN``). Another service is ``INVALID_MODULE``. What needs the control plane —
which version is the default, instance counts, starting and stopping versions — fails with
``FeatureNotEnabledError`` saying so.
"""

from __future__ import annotations

import os
from typing import Any

from google.appengine.api.modules import modules_service_pb2 as gae
from google.appengine.runtime import apiproxy_errors

from kiln.sdk.service import CallContext

__all__ = ["Modules"]

_ERR = gae.ModulesServiceError
_CONTROL_PLANE = {
    "GetDefaultVersion": "which version serves by default is the control plane's (kiln versions)",
    "GetNumInstances": "instance counts are the instance manager's",
    "SetNumInstances": "instance counts are set in app.yaml and by kiln deploy",
    "StartModule": "versions are started by kiln deploy / kiln versions",
    "StopModule": "versions are stopped by kiln versions",
}


class Modules:
    """The ``modules`` service (module docstring)."""

    name = "modules"

    def handle(self, method: str, request: Any, response: Any, ctx: CallContext) -> None:
        module = os.environ.get("GAE_SERVICE", "default")
        version = os.environ.get("GAE_VERSION", "")
        if method == "GetModules":
            response.module.append(module)
        elif method == "GetVersions":
            _own(request.module or module, module)
            response.version.append(version)
        elif method == "GetHostname":
            _own(request.module or module, module)
            host = str(ctx.environ.get("DEFAULT_VERSION_HOSTNAME") or os.environ.get("DEFAULT_VERSION_HOSTNAME", ""))
            if request.instance:
                host = f"{request.instance}-dot-{request.version or version}-dot-{host}"
            elif request.version:
                host = f"{request.version}-dot-{host}"
            response.hostname = host
        elif method in _CONTROL_PLANE:
            raise apiproxy_errors.FeatureNotEnabledError(
                f"modules.{method}(): kiln's instances cannot answer it: {_CONTROL_PLANE[method]}")
        else:
            raise apiproxy_errors.CallNotFoundError(f"modules.{method}() is not a method of App Engine's modules service")


def _own(asked: str, module: str) -> None:
    if asked != module:
        raise apiproxy_errors.ApplicationError(
            _ERR.INVALID_MODULE, f"kiln: this instance knows only its own service {module!r}, not {asked!r}")
