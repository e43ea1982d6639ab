"""The rules of router/blobserve.py that need no sockets: the response that names a blob, ranges, conditional
requests."""

from __future__ import annotations

import pytest
from aiohttp.test_utils import make_mocked_request

from kiln.pb.runtime.v1 import http_pb2
from router import blobserve, responses


def response(*headers: tuple[str, bytes]) -> http_pb2.HttpResponse:
    return http_pb2.HttpResponse(status=200, headers=[http_pb2.Header(name=n, value=v) for n, v in headers])


def test_a_response_naming_a_blob_in_any_spelling_is_handed_to_blobserve():
    with pytest.raises(responses.NamesBlobError) as raised:
        responses.build(response(("Content-Type", b"a/b"), ("x-appengine-BLOBKEY", b"k1")),
                        make_mocked_request("GET", "/"), max_bytes=100)
    assert raised.value.key == "k1"


def test_a_response_with_only_a_blob_range_is_an_ordinary_response():
    out = responses.build(response(("X-AppEngine-BlobRange", b"bytes=0-1")), make_mocked_request("GET", "/"),
                          max_bytes=100)
    assert out.status == 200


@pytest.mark.parametrize(("value", "spec"), [
    ("bytes=0-9", (0, 9)), ("bytes=5-", (5, None)), ("bytes=-3", (None, 3)), ("bytes= 1-2", (1, 2)),
    ("bytes=7-7", (7, 7)),
])
def test_single_byte_ranges_are_read(value, spec):
    assert blobserve.range_spec(value) == spec


@pytest.mark.parametrize("value", ["bytes=0-1,3-4", "bytes=5-2", "bytes=-0", "bytes=-", "items=0-1", "bytes=+1-2",
                                   "bytes=a-b", "0-1", "bytes=1_0-20"])
def test_other_ranges_are_unsatisfiable(value):
    with pytest.raises(blobserve.Unsatisfiable):
        blobserve.range_spec(value)


@pytest.mark.parametrize(("spec", "size", "span"), [
    ((0, 9), 100, (0, 10)), ((90, 200), 100, (90, 100)), ((None, 10), 100, (90, 100)), ((None, 500), 100, (0, 100)),
    ((99, None), 100, (99, 100)),
])
def test_ranges_are_cut_at_the_blobs_end(spec, size, span):
    assert blobserve.resolve(spec, size) == span


@pytest.mark.parametrize(("spec", "size"), [((100, None), 100), ((150, 200), 100), ((None, 1), 0), ((0, 0), 0)])
def test_a_range_starting_at_or_past_the_end_is_unsatisfiable(spec, size):
    with pytest.raises(blobserve.Unsatisfiable):
        blobserve.resolve(spec, size)


def conditional(headers: dict[str, str], method: str = "GET") -> bool:
    return blobserve.not_modified(make_mocked_request(method, "/", headers=headers), '"abc"', 1_700_000_000)


def test_if_none_match_compares_weakly_and_accepts_a_list_or_star():
    assert conditional({"If-None-Match": 'W/"abc"'})
    assert conditional({"If-None-Match": '"x", "abc"'})
    assert conditional({"If-None-Match": "*"})
    assert not conditional({"If-None-Match": '"abcd"'})


def test_if_none_match_decides_over_if_modified_since():
    assert not conditional({"If-None-Match": '"other"', "If-Modified-Since": "Fri, 01 Jan 2100 00:00:00 GMT"})


def test_if_modified_since_compares_with_the_creation_time():
    assert conditional({"If-Modified-Since": "Tue, 14 Nov 2023 22:13:20 GMT"})  # exactly the creation second
    assert not conditional({"If-Modified-Since": "Tue, 14 Nov 2023 22:13:19 GMT"})
    assert not conditional({"If-Modified-Since": "not a date"})


def test_conditions_apply_to_get_and_head_only():
    assert conditional({"If-None-Match": '"abc"'}, method="HEAD")
    assert not conditional({"If-None-Match": '"abc"'}, method="POST")


def test_if_range_needs_a_strong_match_or_the_exact_date():
    def applies(value: str) -> bool:
        request = make_mocked_request("GET", "/", headers={"If-Range": value})
        return blobserve.range_applies(request, '"abc"', "Tue, 14 Nov 2023 22:13:20 GMT")
    assert applies('"abc"') and applies("Tue, 14 Nov 2023 22:13:20 GMT")
    assert not applies('W/"abc"') and not applies('"old"') and not applies("Tue, 14 Nov 2023 22:13:21 GMT")
