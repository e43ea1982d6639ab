"""``kiln.sdk.datastore_v3`` at the protocol level: what a request the SDK would never build gets.

Malformed or unsupported requests get datastore_v3's ``BAD_REQUEST`` naming what is wrong (or
``CallNotFoundError`` for a method kiln does not serve), nothing is half-written, and the service keeps
serving. The state kept between calls (queries waiting for ``Next``, open transactions) is bounded and freed.
"""

from __future__ import annotations

import pytest

from tests.integration.sdkds import become, gae_sdk, sdk_fixture, start_app  # noqa: F401 - fixtures

pytestmark = pytest.mark.nats


@pytest.fixture
def sdk(request, gae_sdk, monkeypatch):  # noqa: F811 - the fixture imported above
    return sdk_fixture(request, gae_sdk, monkeypatch)


@pytest.fixture
def v3(sdk):
    from google.appengine.datastore import datastore_v3_bytes_pb2, entity_bytes_pb2

    class Protos:
        d = datastore_v3_bytes_pb2
        e = entity_bytes_pb2

    return Protos


def call(sdk, method, request, response):
    from kiln.sdk.service import CallContext

    sdk.service.handle(method, request, response, CallContext(app_id=sdk.app_id))
    return response


def bad_request(sdk, method, request, response, match):
    from google.appengine.runtime import apiproxy_errors

    with pytest.raises(apiproxy_errors.ApplicationError, match=match) as raised:
        call(sdk, method, request, response)
    assert raised.value.application_error == 1
    return raised.value


def entity(sdk, v3, name, **props):
    e = v3.e.EntityProto()
    e.key.app = "s~" + sdk.app_id
    e.key.path.element.add(type="Thing", name=name)
    e.entity_group.SetInParent()
    for prop_name, value in props.items():
        p = e.property.add(name=prop_name, multiple=False)
        p.value.int64Value = value
    return e


def _incomplete_parent(e):
    e.key.path.ClearField("element")
    e.key.path.element.add(type="Parent")
    e.key.path.element.add(type="Thing", name="bad")


def get(sdk, v3, name):
    req = v3.d.GetRequest()
    req.key.add().CopyFrom(entity(sdk, v3, name).key)
    return call(sdk, "Get", req, v3.d.GetResponse()).entity[0]


def test_a_method_kiln_does_not_serve_is_call_not_found_naming_it(sdk, v3):
    from google.appengine.runtime import apiproxy_errors

    with pytest.raises(apiproxy_errors.CallNotFoundError, match="datastore_v3.CreateIndex"):
        call(sdk, "CreateIndex", v3.e.CompositeIndex(), v3.d.CommitResponse())


@pytest.mark.parametrize("mutate, match", [
    (lambda e: e.property.add(name="n", multiple=False).value.SetInParent(), "2 values but multiple is not set"),
    (lambda e: e.property.add(name="s", multiple=False, meaning=3).value.__setattr__("stringValue", b"x"),
     "meaning 3 is not supported"),
    (lambda e: e.raw_property.add(name="z", multiple=False, meaning=14, meaning_uri="GZIP").value.__setattr__(
        "stringValue", b"x"), "meaning_uri 'GZIP'"),
    (lambda e: e.property.add(name="d", multiple=False, meaning=8).value.__setattr__("int64Value", 1),
     "integer with meaning 8"),
    (lambda e: _incomplete_parent(e), "path element 0 \\(Parent\\) has neither id nor name"),
    (lambda e: setattr(e.key, "app", "s~another-app"), "another-app"),
    (lambda e: setattr(e.key, "database_id", "other-db"), "database_id"),
], ids=["duplicate-single", "atom-meaning", "gzip", "int-meaning", "incomplete-parent", "other-app", "database"])
def test_a_malformed_entity_is_bad_request_and_no_entity_of_the_batch_is_written(sdk, v3, mutate, match):
    good, bad = entity(sdk, v3, "good", n=1), entity(sdk, v3, "bad", n=2)
    mutate(bad)
    req = v3.d.PutRequest()
    req.entity.extend([good, bad])
    bad_request(sdk, "Put", req, v3.d.PutResponse(), match)
    assert not get(sdk, v3, "good").HasField("entity")
    req = v3.d.PutRequest()
    req.entity.append(entity(sdk, v3, "after", n=3))
    call(sdk, "Put", req, v3.d.PutResponse())
    assert get(sdk, v3, "after").entity.property[0].value.int64Value == 3


def test_a_get_of_an_incomplete_key_is_bad_request(sdk, v3):
    req = v3.d.GetRequest()
    ref = req.key.add(app="s~" + sdk.app_id)
    ref.path.element.add(type="Thing")
    bad_request(sdk, "Get", req, v3.d.GetResponse(), "neither id nor name")


def test_unsupported_filters_are_bad_request_naming_the_operator(sdk, v3):
    query = v3.d.Query(app="s~" + sdk.app_id, kind="Thing")
    f = query.filter.add(op=7)
    f.property.add(name="n", multiple=False).value.SetInParent()
    bad_request(sdk, "RunQuery", query, v3.d.QueryResult(), "EXISTS")


def test_a_cursor_not_made_by_kiln_is_bad_request(sdk, v3):
    query = v3.d.Query(app="s~" + sdk.app_id, kind="Thing")
    query.compiled_cursor.position.key.app = "s~" + sdk.app_id
    bad_request(sdk, "RunQuery", query, v3.d.QueryResult(), "not a cursor from kiln")
    query = v3.d.Query(app="s~" + sdk.app_id, kind="Thing")
    query.compiled_cursor.position.start_key = b"garbage"
    bad_request(sdk, "RunQuery", query, v3.d.QueryResult(), "cursor")


def test_next_with_an_unknown_cursor_is_bad_request(sdk, v3):
    req = v3.d.NextRequest()
    req.cursor.cursor = 987654321
    req.cursor.app = "s~" + sdk.app_id
    bad_request(sdk, "Next", req, v3.d.QueryResult(), "query cursor 987654321")


def test_a_query_read_to_its_end_frees_its_state_and_another_apps_cursor_is_refused(sdk, v3, gae_sdk,  # noqa: F811
                                                                                    monkeypatch):
    req = v3.d.PutRequest()
    req.entity.extend(entity(sdk, v3, f"e{i}", n=i) for i in range(5))
    call(sdk, "Put", req, v3.d.PutResponse())
    before = sdk.service.open_queries()
    query = v3.d.Query(app="s~" + sdk.app_id, kind="Thing", count=2)
    first = call(sdk, "RunQuery", query, v3.d.QueryResult())
    assert first.more_results and len(first.result) == 2
    assert sdk.service.open_queries() == before + 1
    other = start_app(gae_sdk, sdk.addr, sdk.memcache_addr, monkeypatch)
    nxt = v3.d.NextRequest(count=10)
    nxt.cursor.CopyFrom(first.cursor)
    bad_request(other, "Next", nxt, v3.d.QueryResult(), "is not the calling app")
    forged = v3.d.NextRequest(count=10)
    forged.cursor.CopyFrom(first.cursor)
    forged.cursor.app = "s~" + other.app_id
    bad_request(other, "Next", forged, v3.d.QueryResult(), "query cursor")
    become(sdk, monkeypatch)
    rest = call(sdk, "Next", nxt, v3.d.QueryResult())
    assert len(rest.result) == 3 and not rest.more_results
    assert sdk.service.open_queries() == before


def test_query_and_transaction_tables_are_bounded_oldest_first():
    from kiln.sdk.datastore_v3 import _Bounded

    class Item:
        app_id = "a"

    table = _Bounded(size=3, seconds=60, what="thing")
    handles = [table.add(Item()) for _ in range(5)]
    assert len(table) == 3
    from google.appengine.runtime import apiproxy_errors

    with pytest.raises(apiproxy_errors.ApplicationError, match="thing"):
        table.get(handles[0], "a")
    assert table.get(handles[4], "a") is not None
    with pytest.raises(apiproxy_errors.ApplicationError):
        table.get(handles[4], "b")


def test_query_and_transaction_tables_forget_what_outlived_its_lifetime():
    from kiln.sdk.datastore_v3 import _Bounded

    class Item:
        app_id = "a"

    now = [100.0]
    table = _Bounded(size=10, seconds=60, what="thing", clock=lambda: now[0])
    old = table.add(Item())
    now[0] += 30
    used = table.add(Item())
    now[0] += 20
    table.get(used, "a")  # a use renews the lifetime
    now[0] += 20
    assert len(table) == 1
    assert table.get(used, "a") is not None
    from google.appengine.runtime import apiproxy_errors

    with pytest.raises(apiproxy_errors.ApplicationError, match="expired"):
        table.get(old, "a")


def test_an_instance_without_the_datastores_address_gets_internal_error_naming_it(sdk, v3, monkeypatch):
    from google.appengine.api import datastore_errors
    from google.appengine.ext import ndb

    from kiln.api import _rpc

    monkeypatch.delenv("KILN_DATASTORE_ADDR")
    _rpc.reset()
    with pytest.raises(datastore_errors.InternalError, match="KILN_DATASTORE_ADDR"):
        ndb.Key("Thing", "x").get(use_cache=False, use_memcache=False)
