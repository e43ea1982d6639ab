"""router.app: the request envelope sent as its fields' bytes followed by each header's, and request ids."""

import re

from kiln.pb.runtime.v1 import http_pb2
from router.app import _LOG_ID_FIELD, RequestIds, _encoded_client_header, _encoded_header


def _fields() -> http_pb2.HttpRequest:
    return http_pb2.HttpRequest(request_id="0123456789abcdef0123456789abcdef", app_id="app", version_id="v1",
                                method="GET", path="/", body=b"payload", deadline_ms=70_000)


def test_envelope_bytes_followed_by_encoded_headers_read_as_the_envelope_with_those_headers_in_order() -> None:
    headers = [("Accept", b"*/*"), ("User-Agent", b"curl"), ("Host", b"app.localhost:8080"), ("Accept", b"x/y")]
    built = _fields()
    for name, value in headers:
        built.headers.add(name=name, value=value)
    sent = _fields().SerializeToString() + b"".join(_encoded_header(name, value) for name, value in headers)
    assert http_pb2.HttpRequest.FromString(sent) == built


def test_the_log_id_field_followed_by_a_request_id_is_the_request_log_id_header() -> None:
    request_id = RequestIds().next()
    got = http_pb2.HttpRequest.FromString(_LOG_ID_FIELD + request_id.encode())
    assert [(h.name, h.value) for h in got.headers] == [("X-AppEngine-Request-Log-Id", request_id.encode())]


def test_a_client_header_value_is_sent_as_its_iso_8859_1_bytes() -> None:
    got = http_pb2.HttpRequest.FromString(_encoded_client_header("X-Name", "caf\xe9 \xff"))
    assert [(h.name, h.value) for h in got.headers] == [("X-Name", b"caf\xe9 \xff")]


def test_a_long_client_header_value_is_sent_whole() -> None:
    value = "a=" + "\xe9" * 5000
    got = http_pb2.HttpRequest.FromString(_encoded_client_header("Cookie", value))
    assert [(h.name, h.value) for h in got.headers] == [("Cookie", value.encode("latin-1"))]


def test_request_ids_are_32_hex_digits_and_never_repeat_across_batches() -> None:
    ids = RequestIds()
    made = [ids.next() for _ in range(3 * RequestIds._BATCH + 7)]
    assert all(re.fullmatch(r"[0-9a-f]{32}", i) for i in made)
    assert len(set(made)) == len(made)
