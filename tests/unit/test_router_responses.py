"""router.responses: the caching rule for a response that sets a cookie, and build's response header checks."""

from __future__ import annotations

import email.utils
import time

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request

from kiln.pb.runtime.v1 import http_pb2
from router import responses


def _private(*cache_control: str, expires: str | None = None) -> web.Response:
    out = web.Response(body=b"x")
    out.headers.add("Set-Cookie", "a=1")
    for value in cache_control:
        out.headers.add("Cache-Control", value)
    if expires is not None:
        out.headers["Expires"] = expires
    responses.keep_private(out)
    return out


@pytest.mark.parametrize(("cache_control", "expected"), [
    ((), "private"),
    (("public",), "private"),
    (("public, max-age=60",), "max-age=60, private"),            # App Engine keeps max-age
    (("max-age=60, public",), "max-age=60, private"),
    (("PUBLIC, max-age=60",), "max-age=60, private"),            # directives are case-insensitive
    (("max-age=300",), "max-age=300, private"),
    (("public, s-maxage=600, max-age=60",), "s-maxage=600, max-age=60, private"),
    (("public", "max-age=60"), "max-age=60, private"),           # two Cache-Control fields become one
    (("must-revalidate, max-age=0",), "must-revalidate, max-age=0, private"),
])
def test_cookie_response_becomes_private_keeping_its_other_directives(cache_control, expected):
    assert _private(*cache_control).headers.getall("Cache-Control") == [expected]


@pytest.mark.parametrize("cache_control", ["private", "private, max-age=60", "no-cache", "no-store",
                                           "max-age=0, no-store", "No-Store"])
def test_cookie_response_already_as_strict_as_private_keeps_its_cache_control(cache_control):
    assert _private(cache_control).headers.getall("Cache-Control") == [cache_control]


def test_public_is_dropped_even_beside_a_stricter_directive():
    assert _private("public, no-cache").headers.getall("Cache-Control") == ["no-cache"]


@pytest.mark.parametrize("cache_control", ['no-cache="Set-Cookie"', 'private="Set-Cookie"'])
def test_directives_that_name_fields_do_not_count_as_private(cache_control):
    # They leave the rest of the response cacheable by shared caches, so private is still added.
    assert _private(cache_control).headers.getall("Cache-Control") == [f"{cache_control}, private"]


def test_cookie_response_expires_now_without_an_expires_of_its_own():
    expires = _private().headers["Expires"]
    assert abs(email.utils.mktime_tz(email.utils.parsedate_tz(expires)) - time.time()) < 5


def test_expires_in_the_past_is_kept():
    assert _private(expires="Fri, 01 Jan 1990 00:00:00 GMT").headers["Expires"] == "Fri, 01 Jan 1990 00:00:00 GMT"


@pytest.mark.parametrize("expires", ["Thu, 01 Jan 2099 00:00:00 GMT", "tomorrow", "0", ""])
def test_expires_in_the_future_or_unreadable_becomes_now(expires):
    found = _private(expires=expires).headers["Expires"]
    assert found != expires
    assert abs(email.utils.mktime_tz(email.utils.parsedate_tz(found)) - time.time()) < 5


def _app_response(*headers: tuple[str, bytes]) -> http_pb2.HttpResponse:
    out = http_pb2.HttpResponse(status=200, body=b"ok")
    for name, value in headers:
        out.headers.add(name=name, value=value)
    return out


def test_a_header_like_one_that_passed_is_still_checked():
    # build remembers headers that passed its check; a value or name that differs in any byte is checked anew.
    request = make_mocked_request("GET", "/")
    assert responses.build(_app_response(("X-Note", b"fine")), request, max_bytes=100).headers["X-Note"] == "fine"
    for header in [("X-Note", b"fine\r\nSet-Cookie: x=1"), ("X-Note", b"fine\x00"), ("X-Note ", b"fine"),
                   ("X-Note", b"fine\xff")]:
        with pytest.raises(responses.BadResponseHeaderError):
            responses.build(_app_response(header), request, max_bytes=100)


def test_a_remembered_header_is_dropped_or_kept_by_the_same_rules():
    request = make_mocked_request("GET", "/")
    for _ in range(2):  # the second time from what build remembered
        out = responses.build(_app_response(("Content-Type", b"text/plain"), ("Server", b"app"),
                                            ("Set-Cookie", b"kiln_login=forged")), request, max_bytes=100)
        assert out.headers.getall("Content-Type") == ["text/plain"] and out.headers.getall("Server") == ["kiln"]
        assert "Set-Cookie" not in out.headers
