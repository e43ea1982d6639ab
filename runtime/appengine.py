"""What an instance sets up for apps written for App Engine: its runtime's variables, and Google's SDK.

- :func:`process_variables`: the process environment Google's Python runtime sets and its SDK reads
  (``GAE_APPLICATION``, ``GAE_SERVICE``, ``GAE_VERSION``, ``GAE_INSTANCE``, ``GAE_ENV``, ``GAE_RUNTIME``,
  ``GAE_MEMORY_MB``, ``GAE_DEPLOYMENT_ID``, ``GOOGLE_CLOUD_PROJECT``, ``PORT`` and the first generation's
  ``APPLICATION_ID``, ``CURRENT_VERSION_ID``, ``CURRENT_MODULE_ID``, ``INSTANCE_ID``), for every app. The app id
  carries no partition (``s~``): kiln's services, and ``kiln.api``'s keys, name an app by its bare id.
  ``DATASTORE_APP_ID``/``DATASTORE_PROJECT_ID`` (and the other variables that switch ndb to Cloud Datastore) are
  never inherited: ndb would leave App Engine's datastore API for a client the instance does not have.
- :func:`load_sdk`: when the instance's environment has Google's SDK (``google.appengine``), import it before the
  app's code and register kiln's API proxy (:mod:`kiln.sdk.proxy`) in it. Its ``modules`` service asks the control
  plane, or, without one (``kiln dev``), describes the one version the instance runs (:func:`local_modules`).
"""

from __future__ import annotations

import importlib
import importlib.util
import logging
import os
from collections.abc import Mapping

from kiln.pb.modules.v1 import modules_pb2
from kiln.sdk import tickets
from kiln_platform import appyaml, modules, requestscope

log = logging.getLogger(__name__)

# Variables that make the SDK's ndb use Cloud Datastore (a client kiln's instances do not have).
_CLOUD_DATASTORE_SWITCHES = ("DATASTORE_APP_ID", "DATASTORE_PROJECT_ID", "DATASTORE_ADDITIONAL_APP_IDS",
                             "DATASTORE_USE_PROJECT_ID_AS_APP_ID")
# The port Google's runtime tells the app's server to listen on; kiln's runtime serves the app itself.
DEFAULT_PORT = "8080"


def process_variables(*, app_id: str, version_id: str, minor_version: int, instance_id: str, memory_mb: int,
                      config: appyaml.AppConfig) -> dict[str, str]:
    """The process environment of App Engine's Python runtime for this instance (module docstring)."""
    service = modules.module_name(config)
    return {
        "GAE_APPLICATION": app_id,
        "GAE_SERVICE": service,
        "GAE_VERSION": version_id,
        "GAE_INSTANCE": instance_id,
        "GAE_ENV": "standard",
        "GAE_RUNTIME": config.runtime,
        "GAE_MEMORY_MB": str(memory_mb),
        "GAE_DEPLOYMENT_ID": str(minor_version),
        "GOOGLE_CLOUD_PROJECT": app_id,
        "PORT": DEFAULT_PORT,
        "APPLICATION_ID": app_id,
        "CURRENT_VERSION_ID": f"{version_id}.{minor_version}",
        "CURRENT_MODULE_ID": service,
        "INSTANCE_ID": instance_id,
    }


def drop_cloud_datastore_switches() -> None:
    """Never inherit the variables that would send ndb to Cloud Datastore (module docstring)."""
    for name in _CLOUD_DATASTORE_SWITCHES:
        os.environ.pop(name, None)


def local_modules(version_id: str, config: appyaml.AppConfig) -> modules_pb2.ListModulesResponse:
    """The app as ``kiln dev`` runs it, for the Modules API: one service, one version, which is the default."""
    return modules_pb2.ListModulesResponse(
        modules=[modules_pb2.Module(name=modules.module_name(config),
                                    versions=[modules.module_version(config, version_id)])],
        default_version=version_id)


def load_sdk(app_id: str, *, local: modules_pb2.ListModulesResponse | None = None) -> bool:
    """Import Google's SDK and register kiln's API proxy in it, if the instance's environment has the SDK.

    ``local``: what the SDK's ``modules`` service answers from, when there is no control plane to ask.
    """
    try:
        found = importlib.util.find_spec("google.appengine")
    except ModuleNotFoundError:
        found = None
    if found is None:
        return False
    importlib.import_module("google.appengine.api.apiproxy_stub_map")
    proxy = importlib.import_module("kiln.sdk.proxy")
    services = proxy.default_services()
    if local is not None:
        services = [s for s in services if s.name != "modules"]
        services.append(importlib.import_module("kiln.sdk.modules").Modules(local=local))
    installed = proxy.install(app_id, services)
    # A request past its deadline: its SDK calls in flight fail at once (they wait in the SDK's code, which the
    # timer's exception reaches only when they return).
    requestscope.on_deadline(_cancel_calls)
    log.info("Google's App Engine SDK loaded; kiln serves %s", ", ".join(sorted(installed.services)))
    return True


def _cancel_calls(environ: Mapping[str, str]) -> None:
    ticket = environ.get(tickets.ENVIRON_KEY)
    if ticket:
        tickets.cancel(ticket)
