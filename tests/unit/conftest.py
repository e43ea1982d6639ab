"""Fixtures shared by the unit tests.

``gae_sdk``: Google's App Engine SDK (``google.appengine``) importable in the test process. The ``GAE_SDK`` pins are
installed once per host with :mod:`runtime.libraries` (the cache ``kiln dev`` uses, ``~/.cache/kiln``, or
``KILN_TEST_CACHE_DIR``) and that directory is appended to the end of ``sys.path``, so kiln's own packages win; the
SDK is never installed into kiln's environment.
"""

from __future__ import annotations

import importlib
import os
import pathlib
import sys
import warnings

import pytest

from runtime import libraries


@pytest.fixture(scope="session")
def gae_sdk() -> pathlib.Path:
    """The directory the SDK is installed in, on ``sys.path`` for the rest of the session."""
    cache = pathlib.Path(os.environ.get("KILN_TEST_CACHE_DIR") or pathlib.Path.home() / ".cache" / "kiln")
    found = libraries.sdk_dir(libraries.GAE_SDK_BUNDLED, cache)
    if str(found) not in sys.path:
        sys.path.append(str(found))
    # Imported once here, where the SDK's own deprecation warnings (cgi, ruamel.yaml) are not the test's failure.
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        warnings.simplefilter("ignore", PendingDeprecationWarning)
        for module in _SDK_MODULES:
            importlib.import_module(module)
    return found


_SDK_MODULES = (
    "google.appengine.api", "google.appengine.api.memcache", "google.appengine.api.users",
    "google.appengine.api.taskqueue", "google.appengine.api.modules", "google.appengine.api.capabilities",
    "google.appengine.api.background_thread", "google.appengine.api.runtime.runtime", "google.appengine.api.urlfetch",
    "google.appengine.api.mail", "google.appengine.api.images", "google.appengine.ext.ndb", "google.appengine.ext.db",
    "google.appengine.runtime.default_api_stub", "google.appengine.runtime.middlewares",
)
