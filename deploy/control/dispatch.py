"""An app's dispatch rules on the control plane: checked and stored whole, and the version serving each service.

``SetDispatch`` parses the app's ``dispatch.yaml`` with :mod:`kiln_platform.dispatchyaml` and refuses a rule
naming a service no version of the app belongs to (as App Engine refuses to deploy rules for a service not
deployed yet), then replaces the stored rules as a whole. ``GetDispatch`` answers with the rules and, for every
service of the app, the version that serves it when a rule picks it: kiln has one default version per app, which
serves its own service; any other service is served by its most recently deployed version (what ``gcloud app
deploy`` promotes for that service). A version's service is read from its ``app.yaml`` as deployed (with its
includes), once per version and minor.
"""

from __future__ import annotations

import logging
from collections.abc import Awaitable, Callable

from deploy.control import manifest
from deploy.control.store import Store
from kiln.errors import BadRequestError, KilnError
from kiln.pb.deploy.v1 import deploy_pb2 as pb
from kiln_platform import dispatchyaml
from kiln_platform import modules as facts

log = logging.getLogger(__name__)

ReadYamls = Callable[[Store, pb.Version], Awaitable[dict[str, bytes]]]


class Dispatch:
    """See module docstring."""

    def __init__(self, store: Store, read_yamls: ReadYamls) -> None:
        self._store = store
        self._read_yamls = read_yamls
        self._known: dict[tuple[str, str, int], str] = {}

    async def services(self, app_id: str) -> dict[str, str]:
        """Each service of the app and the version serving it (see module docstring)."""
        versions = await self._store.list_versions(app_id)  # newest first
        out: dict[str, str] = {}
        for version in sorted(versions, key=lambda v: not v.is_default):  # the default first, then newest first
            name = await self._service(version)
            if name is not None:
                out.setdefault(name, version.version_id)
        live = {(app_id, v.version_id, v.minor) for v in versions}
        for key in [k for k in self._known if k[0] == app_id and k not in live]:
            del self._known[key]  # deleted versions and replaced minors
        return out

    async def _service(self, listed: pb.Version) -> str | None:
        key = (listed.app_id, listed.version_id, listed.minor)
        known = self._known.get(key)
        if known is not None:
            return known
        version = await self._store.get_version(listed.app_id, listed.version_id)  # with its files (includes)
        if version is None or version.minor != listed.minor:
            return None  # deleted or redeployed since it was listed
        try:
            name = facts.module_name(manifest.check_configs(version, await self._read_yamls(self._store, version)))
        except KilnError as exc:  # it parsed when deployed: a kiln upgrade may read it differently
            log.warning("app %s: version %s: app.yaml no longer parses (%s); taken to belong to service default",
                        listed.app_id, listed.version_id, exc)
            name = facts.DEFAULT_MODULE
        self._known[key] = name
        return name

    async def replace(self, app_id: str, text: str) -> tuple[int, int]:
        """Check and store ``text`` as the app's dispatch.yaml; returns (generation, number of rules).

        Raises:
            AppYamlError: the file is malformed (file, line and field named).
            BadRequestError: a rule names a service the app does not have.
        """
        rules = dispatchyaml.parse(text, filename="dispatch.yaml")
        if rules:
            known = await self.services(app_id)
            for i, rule in enumerate(rules):
                if rule.service not in known:
                    have = ", ".join(sorted(known)) or "none"
                    raise BadRequestError(
                        f"dispatch.yaml: dispatch[{i}].service: app {app_id!r} has no service {rule.service!r} "
                        f"(its services: {have}); deploy a version of it (app.yaml's service: {rule.service}) "
                        "before routing to it")
        generation = await self._store.set_dispatch(app_id, text if rules else "")
        return generation, len(rules)
