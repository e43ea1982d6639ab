"""Fixtures for running Google's SDK (ndb, ext.db) in the pytest process against kiln's services.

The SDK (``runtime.libraries.GAE_SDK_BUNDLED``) is installed once per host into kiln's library cache and appended
to the END of ``sys.path`` (kiln's own packages win). kiln's API proxy (:mod:`kiln.sdk.proxy`) is installed once
per session, as the runtime installs it in an instance, with kiln's services for the SDK (``datastore_v3``,
``memcache``…), into a stub map of its own that is the SDK's ``apiproxy`` only while a test of these modules runs
(other tests of the session install their own). Each test runs as an app of its own, inside a "request": the app's
token for kiln's services, App Engine's environment, and a ticket for the proxy, as the runtime gives a request.
"""

from __future__ import annotations

import dataclasses
import os
import pathlib
import sys
import uuid
import warnings
from collections.abc import Callable
from typing import Any

import pytest

from kiln.api import _rpc
from kiln_platform import auth
from runtime import libraries
from tests.integration.conftest import SECRET

_tickets: list[str] = []


@dataclasses.dataclass
class SdkApp:
    """The app a test runs as, with the SDK loaded and kiln's proxy serving it."""

    app_id: str
    addr: str  # the datastore's
    memcache_addr: str
    proxy: Any
    ticket: str
    ndb: Any
    db: Any

    @property
    def service(self) -> Any:
        """kiln's datastore_v3 Service, as the proxy serves it."""
        return self.proxy.services["datastore_v3"]


@pytest.fixture(scope="session")
def gae_sdk():
    """Google's SDK importable in this process, with kiln's API proxy installed in its ``apiproxy``."""
    cache = pathlib.Path(os.environ.get("KILN_TEST_CACHE_DIR") or pathlib.Path.home() / ".cache" / "kiln")
    path = str(libraries.sdk_dir(libraries.GAE_SDK_BUNDLED, cache))
    if path not in sys.path:
        sys.path.append(path)
    with warnings.catch_warnings():
        # Importing the SDK warns about itself (its cgi import, its ruamel.yaml use); tests turn warnings into errors.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        from google.appengine.api import datastore, namespace_manager, users  # noqa: F401 - loaded here,
        from google.appengine.ext import blobstore, db, ndb  # noqa: F401 - under the filter
        from google.appengine.ext.db import metadata as db_metadata  # noqa: F401
        from google.appengine.ext.ndb import metadata  # noqa: F401

        from kiln.sdk import proxy
        from tests.integration import sdk_models  # noqa: F401 - the tests' models

    from google.appengine.api import apiproxy_stub_map

    stubmap = apiproxy_stub_map.APIProxyStubMap()
    installed = proxy.install("no-app-yet", stubmap=stubmap)
    installed.stubmap = stubmap
    yield installed
    from kiln.sdk import tickets

    for ticket in _tickets:
        tickets.close(ticket)


def start_app(proxy: Any, addr: str, memcache_addr: str, monkeypatch: pytest.MonkeyPatch, *,
              prefix: str = "s~") -> SdkApp:
    """Run as a fresh app (in a request of its own) on the datastore at ``addr``."""
    from google.appengine.ext import db, ndb

    from kiln.sdk import tickets

    app_id = "sdk-" + uuid.uuid4().hex[:12]
    ticket = tickets.open_ticket(app_id, {})
    _tickets.append(ticket)
    app = SdkApp(app_id, addr, memcache_addr, proxy, ticket, ndb, db)
    become(app, monkeypatch, prefix=prefix)
    return app


def become(app: SdkApp, monkeypatch: pytest.MonkeyPatch, *, prefix: str = "s~") -> None:
    """Make the calls that follow ``app``'s (after another app's)."""
    from google.appengine.api import apiproxy_stub_map

    from kiln.api import memcache

    monkeypatch.setattr(apiproxy_stub_map, "apiproxy", app.proxy.stubmap)

    monkeypatch.setenv("KILN_DATASTORE_ADDR", app.addr)
    monkeypatch.setenv("KILN_MEMCACHE_ADDR", app.memcache_addr)
    monkeypatch.setenv("KILN_APP_TOKEN", auth.mint_app_token(SECRET, app.app_id))
    monkeypatch.setenv("GAE_APPLICATION", prefix + app.app_id)
    monkeypatch.delenv("APPLICATION_ID", raising=False)
    monkeypatch.setenv("GAE_ENV", "standard")
    monkeypatch.setenv("HTTP_X_APPENGINE_API_TICKET", app.ticket)
    monkeypatch.setattr(app.proxy, "app_id", app.app_id)
    _rpc.reset()
    memcache.reset()


def sdk_fixture(request: pytest.FixtureRequest, proxy: Any, monkeypatch: pytest.MonkeyPatch) -> SdkApp:
    """The ``sdk`` fixture of the test modules: an app on the engine ``request.param`` names."""
    engine = getattr(request, "param", "embedded")
    addr = request.getfixturevalue("datastore_addr" if engine == "embedded" else "datastore_cassandra_addr")
    return start_app(proxy, addr, request.getfixturevalue("grpc_services")["memcache"], monkeypatch)


def on_google_stub(scenario: Callable[[], Any]) -> Any:
    """Run ``scenario()`` on Google's own datastore stub (the SDK's reference behaviour) instead of kiln's."""
    from google.appengine.api import apiproxy_stub_map, datastore_file_stub

    kiln_stub = apiproxy_stub_map.apiproxy.GetStub("datastore_v3")
    google = datastore_file_stub.DatastoreFileStub(os.environ["GAE_APPLICATION"], None)
    apiproxy_stub_map.apiproxy.ReplaceStub("datastore_v3", google)
    try:
        return scenario()
    finally:
        apiproxy_stub_map.apiproxy.ReplaceStub("datastore_v3", kiln_stub)
