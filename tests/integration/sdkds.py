"""Fixtures for running Google's SDK (ndb, ext.db) in the pytest process against kiln's datastore.

The SDK (``runtime.libraries.GAE_SDK``) is installed once per host into kiln's library cache and appended to the
END of ``sys.path`` (kiln's own packages win). Until kiln's API proxy (``kiln.sdk.proxy``) lands, a small adapter
stands in for it: it is what the SDK's ``apiproxy_stub_map`` calls for ``datastore_v3``, and hands each call to
:class:`kiln.sdk.datastore_v3.DatastoreV3` with the test app's identity.
"""

from __future__ import annotations

import dataclasses
import hashlib
import pathlib
import sys
import uuid
import warnings
from typing import Any

import pytest

from kiln.api import _rpc
from kiln_platform import auth
from runtime import libraries
from tests.integration.conftest import SECRET

SDK_VERSION = "3.1.0"


def install_sdk() -> pathlib.Path:
    """The SDK's pinned distribution set, installed once per host (as the runtime installs libraries)."""
    pins = libraries.GAE_SDK[SDK_VERSION]
    key = hashlib.sha256("\n".join(pins).encode()).hexdigest()[:16]
    target = pathlib.Path.home() / ".cache" / "kiln" / "libraries" / f"gae-sdk-{key}"
    return libraries._install(target, pins, deps=False, what=f"appengine-python-standard {SDK_VERSION}")


class Adapter:
    """The SDK's view of one service: ``MakeSyncCall`` serves a call through a kiln Service (tests only)."""

    # The SDK's RPC then runs each call on its thread pool as soon as it is made (as App Engine's API stub does),
    # so a call the SDK never waits for (ndb's rollback after an exception) still happens.
    THREADSAFE = True

    def __init__(self, service: Any) -> None:
        from google.appengine.api import apiproxy_rpc

        self._rpc = apiproxy_rpc
        self.service = service
        self.app_id = ""
        self.calls: list[str] = []

    def MakeSyncCall(self, service: str, call: str, request: Any, response: Any) -> None:  # noqa: N802 - SDK name
        from kiln.sdk.service import CallContext

        self.calls.append(call)
        self.service.handle(call, request, response, CallContext(app_id=self.app_id))

    def CreateRPC(self) -> Any:  # noqa: N802 - SDK name
        return self._rpc.RPC(stub=self)


@dataclasses.dataclass
class SdkApp:
    """The app a test runs as, with the SDK loaded."""

    app_id: str
    addr: str
    adapter: Adapter
    ndb: Any
    db: Any

    @property
    def service(self) -> Any:
        return self.adapter.service


@pytest.fixture(scope="session")
def gae_sdk():
    """Google's SDK importable in this process, with kiln's datastore_v3 Service registered in its API proxy."""
    path = str(install_sdk())
    if path not in sys.path:
        sys.path.append(path)
    with warnings.catch_warnings():
        # Importing the SDK warns about itself (its cgi import, its ruamel.yaml use); tests turn warnings into errors.
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        from google.appengine.api import apiproxy_stub_map, datastore, namespace_manager, users  # noqa: F401 - loaded here,
        from google.appengine.ext import blobstore, db, ndb  # noqa: F401 - under the filter
        from google.appengine.ext.db import metadata as db_metadata  # noqa: F401
        from google.appengine.ext.ndb import metadata  # noqa: F401

        from kiln.sdk.datastore_v3 import DatastoreV3
        from tests.integration import sdk_models  # noqa: F401 - the tests' models

    adapter = Adapter(DatastoreV3())
    apiproxy_stub_map.apiproxy.ReplaceStub("datastore_v3", adapter)
    return adapter


def start_app(adapter: Adapter, addr: str, monkeypatch: pytest.MonkeyPatch, *, prefix: str = "s~") -> SdkApp:
    """Run as a fresh app on the datastore at ``addr``: kiln's token and App Engine's environment."""
    from google.appengine.ext import db, ndb

    app = SdkApp("sdk-" + uuid.uuid4().hex[:12], addr, adapter, ndb, db)
    become(app, monkeypatch, prefix=prefix)
    return app


def become(app: SdkApp, monkeypatch: pytest.MonkeyPatch, *, prefix: str = "s~") -> None:
    """Make the calls that follow ``app``'s (after another app's)."""
    monkeypatch.setenv("KILN_DATASTORE_ADDR", app.addr)
    monkeypatch.setenv("KILN_APP_TOKEN", auth.mint_app_token(SECRET, app.app_id))
    monkeypatch.setenv("GAE_APPLICATION", prefix + app.app_id)
    monkeypatch.delenv("APPLICATION_ID", raising=False)
    monkeypatch.setenv("GAE_ENV", "standard")
    _rpc.reset()
    app.adapter.app_id = app.app_id


def on_google_stub(scenario: Any) -> Any:
    """Run ``scenario()`` on Google's own datastore stub (the SDK's reference behaviour) instead of kiln's."""
    import os

    from google.appengine.api import apiproxy_stub_map, datastore_file_stub

    kiln_stub = apiproxy_stub_map.apiproxy.GetStub("datastore_v3")
    google = datastore_file_stub.DatastoreFileStub(os.environ["GAE_APPLICATION"], None)
    apiproxy_stub_map.apiproxy.ReplaceStub("datastore_v3", google)
    try:
        return scenario()
    finally:
        apiproxy_stub_map.apiproxy.ReplaceStub("datastore_v3", kiln_stub)
