"""With Google's SDK in the app's environment, the request timer raises ``google.appengine.runtime``'s
DeadlineExceededError, the same class ``kiln.runtime`` exposes; without it, kiln's own. Real ``kiln dev`` apps.

A ``runtime: python27`` app gets the SDK as App Engine bundled it; a Python 3 app whose requirements.txt does not
name ``appengine-python-standard`` has no SDK.
"""

from __future__ import annotations

import textwrap

import pytest

from tests.integration import apps
from tests.integration.apps import running

pytestmark = pytest.mark.nats

SDK_MAIN = textwrap.dedent('''
    import time
    import kiln.runtime
    from google.appengine.runtime import DeadlineExceededError

    def spin(seconds):
        end = time.monotonic() + seconds
        while time.monotonic() < end:
            pass

    def app(environ, start_response):
        path = environ["PATH_INFO"]
        if path == "/same":
            body = repr((kiln.runtime.DeadlineExceededError is DeadlineExceededError,
                         kiln.runtime.DeadlineExceededError.__module__))
        elif path == "/kiln-name":
            try:
                time.sleep(60)
            except kiln.runtime.DeadlineExceededError as exc:
                body = "caught as kiln.runtime's: " + type(exc).__module__
        else:
            try:
                spin(60) if path == "/spin" else time.sleep(60)
            except DeadlineExceededError as exc:
                start_response("503 Service Unavailable", [("Content-Type", "text/plain")])
                return [("caught as google.appengine.runtime's: " + str(exc)).encode()]
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [body.encode()]
''')

PLAIN_MAIN = textwrap.dedent('''
    import kiln.runtime

    def app(environ, start_response):
        try:
            import google.appengine.runtime
            sdk = "present"
        except ImportError:
            sdk = "absent"
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [f"{kiln.runtime.DeadlineExceededError.__module__} sdk {sdk}".encode()]
''')


@pytest.fixture(scope="module")
def sdk_app(tmp_path_factory):
    with running(tmp_path_factory.mktemp("sdkdeadline"), {"main.py": SDK_MAIN}, request_deadline=1.0) as srv:
        yield srv


def test_kiln_runtime_deadline_error_is_the_sdks_class_when_the_app_has_the_sdk(sdk_app):
    status, _, body = apps.fetch(sdk_app, "/same")
    assert (status, body) == (200, b"(True, 'google.appengine.runtime')")


@pytest.mark.parametrize("path", ["/sleep", "/spin"])
def test_the_sdks_deadline_error_catches_what_the_timer_raises(sdk_app, path):
    status, _, body = apps.fetch(sdk_app, path)
    assert status == 503
    assert body == b"caught as google.appengine.runtime's: The overall deadline for responding to the HTTP " \
                   b"request was exceeded."


def test_kiln_runtimes_name_catches_the_sdks_deadline_error(sdk_app):
    status, _, body = apps.fetch(sdk_app, "/kiln-name")
    assert (status, body) == (200, b"caught as kiln.runtime's: google.appengine.runtime")


def test_without_the_sdk_the_timer_raises_kilns_own_deadline_error(tmp_path):
    with running(tmp_path / "plain", {"main.py": PLAIN_MAIN}, app_yaml="runtime: python311\n") as srv:
        status, _, body = apps.fetch(srv, "/")
    assert (status, body) == (200, b"kiln.runtime sdk absent")
