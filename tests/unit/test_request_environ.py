"""``os.environ`` inside a request (kiln_platform.requestscope._RequestEnviron): the request's variables over the
process's, read the same way by ``[]``, ``get`` and ``in``."""

from __future__ import annotations

import pytest

from kiln_platform import requestscope


@pytest.fixture
def environ():
    found = requestscope._RequestEnviron({"PATH": "/bin", "SHARED": "process"})
    yield found
    requestscope._local.__dict__.pop("environ", None)


def serving(values: dict[str, str]) -> None:
    requestscope._local.environ = values


def test_a_requests_variable_hides_the_processs_in_every_way_of_reading(environ):
    serving({"SHARED": "request", "USER_EMAIL": "a@example.com"})
    assert (environ["SHARED"], environ.get("SHARED"), "SHARED" in environ) == ("request", "request", True)
    assert environ.get("USER_EMAIL") == "a@example.com" and "USER_EMAIL" in environ


def test_the_processs_variables_show_through_where_the_request_has_none(environ):
    serving({})
    assert (environ["PATH"], environ.get("PATH"), "PATH" in environ) == ("/bin", "/bin", True)


def test_a_variable_set_nowhere_is_missing_in_every_way_of_reading(environ):
    serving({"X": "1"})
    assert environ.get("NOPE") is None and environ.get("NOPE", "dflt") == "dflt" and "NOPE" not in environ
    with pytest.raises(KeyError):
        environ["NOPE"]


def test_outside_a_request_only_the_processs_variables_are_read(environ):
    assert environ.get("SHARED") == "process" and "USER_EMAIL" not in environ
