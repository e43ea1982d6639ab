"""router.headers and runtime.wsgi: which client headers become the app's HTTP_* variables."""

import pytest

from kiln.pb.runtime.v1 import http_pb2
from router.headers import from_client
from runtime.wsgi import InstanceInfo, build_environ

TRUSTED = ["X-AppEngine-Cron", "X-AppEngine-User-Email", "X-AppEngine-User-Id", "X-AppEngine-User-Nickname",
           "X-AppEngine-User-Is-Admin", "X-AppEngine-User-Organization", "X-AppEngine-Inbound-AppId",
           "X-AppEngine-QueueName", "X-AppEngine-TaskName", "X-AppEngine-TaskRetryCount",
           "X-AppEngine-TaskExecutionCount", "X-AppEngine-TaskETA", "X-AppEngine-TaskPreviousResponse",
           "X-AppEngine-Country", "X-AppEngine-Region", "X-AppEngine-City", "X-AppEngine-CityLatLong",
           "X-AppEngine-Request-Log-Id", "X-AppEngine-Default-Version-Hostname", "X-AppEngine-Https",
           "X-Kiln-Platform", "X-Kiln-Platform-Signature", "X-Kiln-Inbound-Signature"]


def _spellings(name: str) -> list[str]:
    return [name, name.upper(), name.lower(), name.replace("-", "_"), name.replace("-", "_").lower(),
            name.replace("-", "_", 1), "_".join(name.rsplit("-", 1))]


@pytest.mark.parametrize("name", TRUSTED)
def test_every_spelling_of_a_trusted_header_is_dropped(name):
    assert from_client([(spelling, "forged") for spelling in _spellings(name)]) == []


@pytest.mark.parametrize("name", ["Foo_Bar", "X.Custom", "X Custom", "X-Custom\u0131"])
def test_names_other_than_letters_digits_and_hyphens_are_dropped(name):
    assert from_client([(name, "v")]) == []


def test_hop_by_hop_proxy_and_consumed_headers_are_dropped():
    kept = from_client([("Connection", "x"), ("Proxy", "http://evil"), ("X_Forwarded_For", "1.2.3.4"),
                        ("X-Forwarded-For", "1.2.3.4"), ("Content-Length", "3"), ("X-Ok", "1")],
                       consumed=("x-forwarded-for",))
    assert kept == [("X-Ok", "1")]


def _environ(*headers: tuple[str, str]) -> dict[str, object]:
    req = http_pb2.HttpRequest(method="GET", path="/", host="a.test")
    for name, value in headers:
        req.headers.add(name=name, value=value)
    info = InstanceInfo(app_id="a", version_id="v", minor_version=1, instance_id="i", auth_domain="gmail.com",
                        default_hostname="a.test", dev=False, env_variables={})
    return build_environ(req, info)


def test_the_runtime_never_lets_an_underscore_name_share_a_variable():
    environ = _environ(("Foo-Bar", "dash"), ("Foo_Bar", "underscore"), ("X_AppEngine_Cron", "true"))
    assert environ["HTTP_FOO_BAR"] == "dash"
    assert "HTTP_X_APPENGINE_CRON" not in environ


def test_the_runtime_joins_repeats_of_one_header():
    assert _environ(("X-A", "1"), ("x-a", "2"))["HTTP_X_A"] == "1,2"
