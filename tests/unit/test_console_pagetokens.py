"""The console's signed page tokens (console/pagetokens.py) and the GQL page's next query (console/datastore.py):
a token opens only unchanged, for its own query, in the process that signed it; no sockets."""

from __future__ import annotations

import base64

import pytest

from console import datastore, pagetokens
from kiln.errors import BadRequestError
from kiln.pb.datastore.v1 import datastore_pb2 as ds

REFUSED = r"^cursor: not a page of this query \(it was changed, or the console restarted\); run the query again"


def test_a_token_opens_to_its_payload_for_its_context():
    tokens = pagetokens.PageTokens()
    assert tokens.open("ctx", tokens.sign("ctx", b"\x00payload")) == b"\x00payload"


def test_a_token_for_another_context_is_refused():
    tokens = pagetokens.PageTokens()
    with pytest.raises(BadRequestError, match=REFUSED):
        tokens.open("SELECT * FROM B", tokens.sign("SELECT * FROM A", b"p"))


def test_a_changed_payload_is_refused():
    tokens = pagetokens.PageTokens()
    text, mac = tokens.sign("ctx", b"payload").split(".")
    changed = base64.urlsafe_b64encode(b"paylOad").decode().rstrip("=")
    with pytest.raises(BadRequestError, match=REFUSED):
        tokens.open("ctx", f"{changed}.{mac}")


def test_a_changed_mac_is_refused():
    tokens = pagetokens.PageTokens()
    text, mac = tokens.sign("ctx", b"payload").split(".")
    with pytest.raises(BadRequestError, match=REFUSED):
        tokens.open("ctx", f"{text}.{mac[:-1]}{'0' if mac[-1] != '0' else '1'}")


def test_a_token_of_another_key_is_refused():
    with pytest.raises(BadRequestError, match=REFUSED):
        pagetokens.PageTokens().open("ctx", pagetokens.PageTokens().sign("ctx", b"p"))


@pytest.mark.parametrize("token", ["", "not base64!", "abc", "abc.def", "A" * 9000, "A" * 7000 + "." + "0" * 64])
def test_text_that_is_no_token_is_refused(token):
    with pytest.raises(BadRequestError, match=REFUSED):
        pagetokens.PageTokens().open("ctx", token)


def test_a_gql_page_token_carries_the_rest_of_the_query_and_the_first_result_number():
    tokens = pagetokens.PageTokens()
    rest = ds.Query(kind="Many", start_cursor=b"\x01pos", limit=10)
    token = datastore.gql_page_token(tokens, "ns", "SELECT * FROM Many", rest, 51)
    assert datastore.open_gql_page(tokens, "ns", "SELECT * FROM Many", token) == (rest, 51)
    with pytest.raises(BadRequestError, match=REFUSED):
        datastore.open_gql_page(tokens, "other", "SELECT * FROM Many", token)


def _answer(shown: int, *, more: int = ds.QueryResultBatch.MORE_RESULTS_TYPE_NOT_FINISHED, limit: int | None = None,
            offset: int = 0, skipped: int = 0) -> ds.RunQueryResponse:
    query = ds.Query(kind="Many", offset=offset)
    if limit is not None:
        query.limit = limit
    return ds.RunQueryResponse(query=query, batch=ds.QueryResultBatch(
        entity_results=[ds.EntityResult() for _ in range(shown)], end_cursor=b"\x01end", more_results=more,
        skipped_results=skipped))


def test_the_next_query_starts_at_the_end_cursor_with_what_is_left_of_limit_and_offset():
    rest = datastore.next_gql_query(_answer(50, limit=120, offset=5, skipped=5), 50)
    assert rest is not None
    assert (rest.start_cursor, rest.limit, rest.offset) == (b"\x01end", 70, 0)


def test_an_offset_the_service_did_not_finish_skipping_is_kept_for_the_next_query():
    rest = datastore.next_gql_query(_answer(50, offset=3000, skipped=1000), 50)
    assert rest is not None and rest.offset == 2000 and not rest.HasField("limit")


@pytest.mark.parametrize(("shown", "more", "limit"), [
    (50, ds.QueryResultBatch.MORE_RESULTS_TYPE_NO_MORE_RESULTS, None),
    (50, ds.QueryResultBatch.MORE_RESULTS_TYPE_MORE_RESULTS_AFTER_LIMIT, 50),
    (20, ds.QueryResultBatch.MORE_RESULTS_TYPE_NOT_FINISHED, None),
    (50, ds.QueryResultBatch.MORE_RESULTS_TYPE_NOT_FINISHED, 50)])
def test_there_is_no_next_query_after_the_last_result_or_the_limit(shown, more, limit):
    assert datastore.next_gql_query(_answer(shown, more=more, limit=limit), shown) is None
