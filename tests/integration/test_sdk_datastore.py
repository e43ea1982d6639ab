"""Google's SDK (ndb and ext.db, unmodified) on kiln's datastore, through ``kiln.sdk.datastore_v3``.

The datastore semantics kiln tests for ``kiln.api`` (tests/integration/test_datastore_*.py, test_db.py), here as an
App Engine app exercises them: entities and every value type, keys and app ids, queries with their filters,
orders, cursors, projections and offsets, namespaces, GQL, metadata, indexes and errors. Each test runs as an
app of its own, on the embedded engine and on a real Cassandra node.
"""

from __future__ import annotations

import datetime

import grpc
import pytest

from kiln.pb.datastore.v1 import datastore_pb2_grpc
from tests.integration import indexes
from tests.integration.conftest import app_metadata
from tests.integration.sdkds import gae_sdk, on_google_stub, sdk_fixture, start_app  # noqa: F401 - fixtures

pytestmark = pytest.mark.nats


@pytest.fixture(params=["embedded", pytest.param("cassandra", marks=pytest.mark.cassandra)])
def sdk(request, gae_sdk, monkeypatch):  # noqa: F811 - the fixture imported above
    return sdk_fixture(request, gae_sdk, monkeypatch)


@pytest.fixture
def m(sdk):
    """The test models (importable once the SDK is)."""
    from tests.integration import sdk_models

    return sdk_models


def declare_indexes(sdk, *defs: tuple[str, bool, list[str]]) -> None:
    """Declare composite indexes, as ``kiln deploy`` does with index.yaml, and wait until they serve."""
    with grpc.insecure_channel(sdk.addr) as channel:
        indexes.declare(datastore_pb2_grpc.DatastoreServiceStub(channel), app_metadata(sdk.app_id), *defs)


def items(m, **values_by_name):
    """Put Items named by their keyword (``a={'n': 1}``), return their keys by name."""
    from google.appengine.ext import ndb

    ents = [m.Item(id=name, name=name, **props) for name, props in values_by_name.items()]
    return dict(zip(values_by_name, ndb.put_multi(ents)))


def names(results):
    return [r.name if hasattr(r, "name") else r.id() for r in results]


# -- entities and values -------------------------------------------------------------------------------------------


def _ndb_every_values(m):
    from google.appengine.api import users
    from google.appengine.ext import blobstore, ndb

    return dict(
        i=-(2**63), f=1.5, b=False, s="héllo ☃", text="long " * 2000, ztext="squeezed " * 500,
        blob=bytes(range(256)) * 10, iblob=b"\xff\x00 indexed bytes", zblob=b"\x00\x01" * 3000,
        dt=datetime.datetime(2024, 2, 29, 13, 14, 15, 123456), d=datetime.date(1999, 12, 31),
        t=datetime.time(23, 59, 58, 7), geo=ndb.GeoPt(45.5, -122.6),
        user=users.User("alice@example.com", _auth_domain="gmail.com", _user_id="1234"),
        ref=ndb.Key("Other", 7, parent=ndb.Key("Root", "r")), bk=blobstore.BlobKey("blob-key-1"),
        js={"a": [1, 2, {"b": None}]}, zjs=["x"] * 100, pk={"set": {1, 2}, "tuple": (1, "a")},
        tags=["a", "b", "a"], one=[7], none=[], address=m.Address(street="1 Main", city="Springfield"),
        addresses=[m.Address(street="a", city="x"), m.Address(city="y")],
        local=m.Address(street="local st", city="z"), locals_=[m.Address(city="l1"), m.Address(street="s2")],
        generic=b"raw bytes",
    )


def test_ndb_every_property_type_round_trips_exactly(sdk, m):
    values = _ndb_every_values(m)
    key = m.Every(**values).put()
    got = key.get(use_cache=False, use_memcache=False)
    for name, value in values.items():
        assert getattr(got, name) == value, name
        assert type(getattr(got, name)) is type(value), name
    assert got.missing is None


def test_ndb_entities_read_back_as_from_googles_own_datastore(sdk, m):
    ndb = sdk.ndb

    def scenario():
        every = m.Every(id="every", **_ndb_every_values(m))
        dynamic = m.Expando(id="dynamic", n=3, words=["x", "é"], single=[1.5], nothing=None, raw=b"\x00",
                            when=datetime.datetime(2020, 1, 2, 3, 4, 5), ref=ndb.Key("K", 1), flag=True)
        ndb.put_multi([every, dynamic])
        got = ndb.get_multi([every.key, dynamic.key], use_cache=False, use_memcache=False)
        return [(e.key.urlsafe(), e.to_dict(), sorted((n, p._indexed, p._repeated) for n, p in e._properties.items()))
                for e in got]

    assert scenario() == on_google_stub(scenario)


def test_db_every_property_type_round_trips_exactly(sdk, m):
    db = sdk.db
    from google.appengine.api import users
    from google.appengine.ext import blobstore

    other = m.DbItem(name="target")
    other.put()
    values = dict(
        s="héllo", text=db.Text("t" * 3000), bs=db.ByteString(b"\x00\xffbytes"), blob=db.Blob(b"\x01" * 5000),
        b=True, i=2**62, f=-0.25, dt=datetime.datetime(2001, 9, 9, 1, 46, 40, 5), d=datetime.date(2000, 1, 1),
        t=datetime.time(12, 30), nums=[3, 1, 2], words=["w1", "w2"], empty=[],
        user=users.User("bob@example.com", _auth_domain="example.com"), geo=db.GeoPt(-33.9, 151.2),
        link=db.Link("http://example.com/x"), email=db.Email("c@example.com"), category=db.Category("cat"),
        phone=db.PhoneNumber("+1 555 0100"), address=db.PostalAddress("1 Infinite Loop"), rating=db.Rating(97),
        im=db.IM("xmpp", "me@example.com"), ref=other.key(), bk=blobstore.BlobKey("bk-1"),
    )
    ent = m.DbEvery(**values)
    ent.put()
    got = db.get(ent.key())
    for name, value in values.items():
        if name == "ref":
            assert got.ref.key() == other.key()
            continue
        if name == "bk":
            assert got.bk.key() == values["bk"]
            continue
        assert getattr(got, name) == value, name
        assert type(getattr(got, name)) is type(value), name


def test_db_entities_read_back_as_from_googles_own_datastore(sdk, m):
    from google.appengine.api import datastore, datastore_types

    # (Users are left out: Google's stub invents a user id for each email, as the dev server did.)
    def scenario():
        ent = datastore.Entity("Raw", name="r", unindexed_properties=["u"])
        ent.update({"u": "not indexed", "i": 5, "lst": [1, 2], "one": [datastore_types.ByteString(b"x")],
                    "empty": [], "none": None, "text": datastore_types.Text("t"), "blob": datastore_types.Blob(b"\x00"),
                    "link": datastore_types.Link("http://x.example/"), "rating": datastore_types.Rating(5),
                    "f": 2.5,
                    "when": datetime.datetime(1970, 1, 1, 0, 0, 0, 1), "s": "str"})
        datastore.Put(ent)
        got = datastore.Get(ent.key())
        return (str(got.key()), sorted(got.unindexed_properties()),
                sorted((name, type(value).__name__, repr(value)) for name, value in got.items()))

    kiln, google = scenario(), on_google_stub(scenario)
    assert kiln == google
    assert kiln[1] == ["blob", "text", "u"]


def test_bytes_that_are_not_utf8_are_refused_in_a_string_property_as_by_googles_datastore(sdk, m):
    from google.appengine.api import datastore_errors

    def scenario():
        with pytest.raises(datastore_errors.BadRequestError, match="not valid UTF-8") as raised:
            m.Expando(id="bad", good=1, bad=b"\xfe\xff").put()
        return m.Expando.get_by_id("bad"), str(raised.value).split(":")[-1].strip()

    assert scenario() == on_google_stub(scenario)


def test_incomplete_keys_get_new_ids_and_keys_come_back_in_request_order(sdk, m):
    ndb = sdk.ndb
    ents = [m.Item(name="a"), m.Item(id="named", name="b"), m.Item(name="c"), m.Item(id=42, name="d")]
    keys = ndb.put_multi(ents)
    assert [k.get(use_cache=False).name for k in keys] == ["a", "b", "c", "d"]
    assert keys[1].id() == "named" and keys[3].id() == 42
    assert isinstance(keys[0].id(), int) and isinstance(keys[2].id(), int) and keys[0].id() != keys[2].id()
    assert [e.key for e in ents] == keys
    more = m.Item(name="e").put()
    assert more.id() not in (keys[0].id(), keys[2].id())


def test_get_multi_answers_each_key_in_order_with_none_for_missing(sdk, m):
    ndb = sdk.ndb
    present = m.Item(id="here", name="here").put()
    missing = ndb.Key("Item", "absent")
    got = ndb.get_multi([missing, present, missing], use_cache=False, use_memcache=False)
    assert [g and g.name for g in got] == [None, "here", None]


def test_delete_removes_entities_and_deleting_a_missing_key_is_no_error(sdk, m):
    ndb = sdk.ndb
    keys = ndb.put_multi([m.Item(name="x"), m.Item(name="y")])
    ndb.delete_multi(keys + [ndb.Key("Item", "never")])
    assert ndb.get_multi(keys, use_cache=False, use_memcache=False) == [None, None]


def test_db_put_get_delete_by_key(sdk, m):
    db = sdk.db
    greeting = m.Greeting(content="hello")
    key = greeting.put()
    assert db.get(key).content == "hello"
    assert isinstance(db.get(key).date, datetime.datetime)
    db.delete(key)
    assert db.get(key) is None


@pytest.mark.parametrize("prefix", ["s~", "e~", ""])
def test_keys_carry_the_app_as_the_sdk_spells_it_and_urlsafe_keys_round_trip(gae_sdk, datastore_addr,  # noqa: F811
                                                                            grpc_services, monkeypatch, prefix):
    sdk = start_app(gae_sdk, datastore_addr, grpc_services["memcache"], monkeypatch, prefix=prefix)
    from google.appengine.ext import ndb

    from tests.integration import sdk_models as m

    parent = ndb.Key("Parent", "p")
    key = m.Item(parent=parent, name="child", n=1).put()
    assert key.app() == prefix + sdk.app_id
    again = ndb.Key(urlsafe=key.urlsafe())
    assert again == key
    got = again.get(use_cache=False)
    assert got.key.app() == prefix + sdk.app_id and got.name == "child"
    assert [e.key for e in m.Item.query(ancestor=parent)] == [key]


def test_another_apps_keys_are_refused_and_nothing_is_written(sdk, m):
    ndb = sdk.ndb
    from google.appengine.api import datastore_errors

    foreign = ndb.Key("Item", "x", app="s~someone-else")
    with pytest.raises(datastore_errors.BadRequestError, match="someone-else"):
        foreign.get(use_cache=False, use_memcache=False)
    mine = ndb.Key("Item", "mine")
    with pytest.raises(datastore_errors.BadRequestError, match="someone-else"):
        ndb.put_multi([m.Item(key=mine, name="a"), m.Item(key=foreign, name="b")])
    assert mine.get(use_cache=False) is None
    with pytest.raises(datastore_errors.BadRequestError, match="someone-else"):
        m.Every(ref=foreign).put()
    with pytest.raises(datastore_errors.BadRequestError, match="someone-else"):
        m.Item.query(ancestor=ndb.Key("Item", 1, app="s~someone-else")).fetch()


def test_entity_too_large_is_bad_request_and_the_service_keeps_serving(sdk, m):
    from google.appengine.api import datastore_errors

    with pytest.raises(datastore_errors.BadRequestError):
        m.Every(blob=b"x" * 1_100_000).put()
    assert m.Item(name="after").put().get(use_cache=False).name == "after"


# -- queries -------------------------------------------------------------------------------------------------------


def test_ancestor_query_returns_the_group_in_key_order(sdk, m):
    ndb = sdk.ndb
    root = ndb.Key("Root", "r")
    other = ndb.Key("Root", "other")
    ndb.put_multi([m.Item(parent=root, id=name, name=name) for name in ("c", "a", "b")] +
                  [m.Item(parent=other, id="z", name="z"), m.Item(parent=ndb.Key("Item", "b", parent=root), id="g",
                                                                    name="grandchild")])
    assert names(m.Item.query(ancestor=root)) == ["a", "b", "grandchild", "c"]


def test_equality_filters_on_strings_match_exactly(sdk, m):
    items(m, a={"color": "red", "n": 1}, b={"color": "blue", "n": 2}, c={"color": "red", "n": 3},
          d={"color": "réd", "n": 4})
    q = m.Item.query(m.Item.color == "red")
    assert sorted(names(q)) == ["a", "c"]
    assert names(m.Item.query(m.Item.color == "réd")) == ["d"]


def test_inequality_filters_and_orders(sdk, m):
    items(m, a={"n": 5}, b={"n": 1}, c={"n": 3}, d={"n": 3}, e={"size": 9})
    assert names(m.Item.query(m.Item.n > 1).order(m.Item.n)) == ["c", "d", "a"]
    assert names(m.Item.query(m.Item.n >= 3).order(-m.Item.n)) == ["a", "c", "d"]
    # e has n None: null is indexed and sorts before every number (last, descending), as on App Engine.
    assert names(m.Item.query().order(-m.Item.n)) == ["a", "c", "d", "b", "e"]
    assert names(m.Item.query(m.Item.n < 5, m.Item.n >= 3)) == ["c", "d"]


def test_datetime_filters_compare_as_datetimes(sdk, m):
    base = datetime.datetime(2030, 1, 1)
    items(m, **{f"t{i}": {"when": base + datetime.timedelta(days=i)} for i in range(4)})
    assert names(m.Item.query(m.Item.when > base + datetime.timedelta(days=1)).order(m.Item.when)) == ["t2", "t3"]
    assert names(m.Item.query(m.Item.when == base)) == ["t0"]


def test_in_and_not_equal_filters(sdk, m):
    items(m, a={"n": 1}, b={"n": 2}, c={"n": 3}, d={"n": 4})
    assert sorted(names(m.Item.query(m.Item.n.IN([1, 3, 9])))) == ["a", "c"]
    assert sorted(names(m.Item.query(m.Item.n != 2))) == ["a", "c", "d"]


def test_list_property_matches_when_any_value_matches(sdk, m):
    items(m, a={"tags": ["x", "y"]}, b={"tags": ["y"]}, c={"tags": []})
    assert sorted(names(m.Item.query(m.Item.tags == "y"))) == ["a", "b"]
    assert names(m.Item.query(m.Item.tags == "x")) == ["a"]


def test_key_filters_select_a_key_range(sdk, m):
    ndb = sdk.ndb
    items(m, a={}, b={}, c={}, d={})
    q = m.Item.query(m.Item.key > ndb.Key("Item", "a"), m.Item.key <= ndb.Key("Item", "c"))
    assert names(q) == ["b", "c"]


def test_keys_only_query_returns_keys(sdk, m):
    ndb = sdk.ndb
    keys = items(m, a={"n": 1}, b={"n": 2})
    assert m.Item.query().fetch(keys_only=True) == [keys["a"], keys["b"]]
    assert list(m.Item.query(m.Item.n == 2).iter(keys_only=True)) == [ndb.Key("Item", "b")]


def test_limit_offset_and_count(sdk, m):
    items(m, **{f"k{i:02d}": {"n": i} for i in range(25)})
    q = m.Item.query().order(m.Item.n)
    assert names(q.fetch(5, offset=10)) == [f"k{i:02d}" for i in range(10, 15)]
    assert names(q.fetch(offset=23)) == ["k23", "k24"]
    assert q.count() == 25
    assert q.count(limit=7) == 7
    assert m.Item.query(m.Item.n >= 20).count() == 5


def test_db_count_uses_offsets_and_limits(sdk, m):
    db = sdk.db
    db.put([m.DbItem(key_name=f"k{i}", n=i) for i in range(30)])
    assert m.DbItem.all().count() == 30
    assert m.DbItem.all().count(limit=12) == 12
    assert m.DbItem.all().filter("n >=", 25).count() == 5
    assert m.DbItem.all().count(limit=None) == 30


def test_fetch_page_walks_every_result_exactly_once_with_cursors(sdk, m):
    ndb = sdk.ndb
    from google.appengine.datastore.datastore_query import Cursor

    items(m, **{f"k{i:02d}": {"n": i % 7} for i in range(23)})
    q = m.Item.query().order(m.Item.n)
    seen, cursor, pages = [], None, 0
    while True:
        page, cursor, more = q.fetch_page(5, start_cursor=cursor)
        seen += [e.name for e in page]
        pages += 1
        if not more:
            break
        cursor = Cursor(urlsafe=cursor.urlsafe())  # as a web app hands it to the next request
    assert pages == 5
    assert sorted(seen) == [f"k{i:02d}" for i in range(23)]
    assert [m.Item.get_by_id(s, use_cache=False).n for s in seen] == sorted(i % 7 for i in range(23))
    assert ndb is sdk.ndb


def test_iterator_cursors_resume_after_each_result_and_end_cursors_stop(sdk, m):
    items(m, **{f"k{i}": {"n": i} for i in range(6)})
    q = m.Item.query().order(m.Item.n)
    it = q.iter(produce_cursors=True)
    for _ in range(2):
        next(it)
    after_two = it.cursor_after()
    next(it)
    after_three = it.cursor_after()
    assert names(q.fetch(start_cursor=after_two)) == ["k2", "k3", "k4", "k5"]
    assert names(q.fetch(start_cursor=after_two, end_cursor=after_three)) == ["k2"]
    assert names(q.fetch(end_cursor=after_two)) == ["k0", "k1"]


def test_db_query_cursor_resumes_the_query(sdk, m):
    db = sdk.db
    db.put([m.DbItem(key_name=f"k{i}", n=i) for i in range(7)])
    q = m.DbItem.all().order("n")
    first = q.fetch(3)
    cursor = q.cursor()
    rest = m.DbItem.all().order("n").with_cursor(cursor).fetch(10)
    assert [e.n for e in first] == [0, 1, 2] and [e.n for e in rest] == [3, 4, 5, 6]


def test_projection_returns_only_projected_values_one_result_per_list_value(sdk, m):
    items(m, a={"n": 1, "color": "red", "tags": ["x", "y"]}, b={"n": 2, "color": "blue", "tags": ["z"]})
    got = m.Item.query(projection=[m.Item.tags]).fetch()
    assert sorted(e.tags[0] for e in got) == ["x", "y", "z"]
    declare_indexes(sdk, ("Item", False, ["n", "color"]))
    proj = m.Item.query(projection=["n", "color"]).order(m.Item.n).fetch()
    assert [(e.n, e.color) for e in proj] == [(1, "red"), (2, "blue")]
    with pytest.raises(Exception, match="projection"):
        proj[0].name  # noqa: B018 - ndb refuses a property the projection left out


def test_distinct_projection_returns_each_combination_once(sdk, m):
    items(m, a={"color": "red", "size": 1}, b={"color": "red", "size": 1}, c={"color": "red", "size": 2},
          d={"color": "blue", "size": 1})
    declare_indexes(sdk, ("Item", False, ["color", "size"]))
    got = m.Item.query(projection=["color", "size"], distinct=True).order(m.Item.color, m.Item.size).fetch()
    assert [(e.color, e.size) for e in got] == [("blue", 1), ("red", 1), ("red", 2)]


def test_db_projection_and_distinct(sdk, m):
    db = sdk.db
    db.put([m.DbItem(key_name=k, color=c) for k, c in (("a", "red"), ("b", "red"), ("c", "blue"))])
    got = db.Query(m.DbItem, projection=("color",), distinct=True).order("color").fetch(10)
    assert [e.color for e in got] == ["blue", "red"]


def test_datetime_projection_comes_back_as_a_datetime(sdk, m):
    when = datetime.datetime(2022, 5, 6, 7, 8, 9, 10)
    items(m, a={"when": when})
    assert [e.when for e in m.Item.query(projection=["when"])] == [when]


def test_namespaces_keep_entities_and_queries_apart(sdk, m):
    ndb = sdk.ndb
    from google.appengine.api import namespace_manager

    a = m.Item(id="x", name="default").put()
    b = m.Item(id="x", name="team", namespace="team").put()
    assert a != b and b.namespace() == "team"
    assert b.get(use_cache=False).name == "team" and a.get(use_cache=False).name == "default"
    assert names(m.Item.query()) == ["default"]
    assert names(m.Item.query(namespace="team")) == ["team"]
    namespace_manager.set_namespace("team")
    try:
        assert names(m.Item.query()) == ["team"]
        assert ndb.Key("Item", "x").get(use_cache=False).name == "team"
    finally:
        namespace_manager.set_namespace("")


def test_gql_through_db_and_ndb(sdk, m):
    db, ndb = sdk.db, sdk.ndb
    db.put([m.DbItem(key_name=f"k{i}", n=i, color="red" if i % 2 else "blue") for i in range(6)])
    declare_indexes(sdk, ("DbItem", False, ["color", "-n"]), ("DbItem", False, ["color", "n"]))
    q = db.GqlQuery("SELECT * FROM DbItem WHERE n > :1 AND color = :c ORDER BY n DESC", 1, c="red")
    assert [e.n for e in q] == [5, 3]
    assert [e.n for e in db.GqlQuery("SELECT * FROM DbItem ORDER BY n LIMIT 2 OFFSET 1")] == [1, 2]
    keys = db.GqlQuery("SELECT __key__ FROM DbItem WHERE color = 'blue' ORDER BY n").fetch(10)
    assert [k.name() for k in keys] == ["k0", "k2", "k4"]
    items(m, a={"n": 1}, b={"n": 2}, c={"n": 3})
    assert names(ndb.gql("SELECT * FROM Item WHERE n >= :1 ORDER BY n", 2)) == ["b", "c"]


def test_guestbook_ancestor_query_with_users_and_order(sdk, m):
    db = sdk.db
    from google.appengine.api import users

    book = db.Key.from_path("Guestbook", "default_guestbook")
    for i, text in enumerate(["first", "second", "third"]):
        m.Greeting(parent=book, author=users.User(f"u{i}@example.com", _auth_domain="gmail.com"), content=text,
                   date=datetime.datetime(2024, 1, 1, 0, 0, i)).put()
    declare_indexes(sdk, ("Greeting", True, ["-date"]))
    got = db.GqlQuery("SELECT * FROM Greeting WHERE ANCESTOR IS :1 ORDER BY date DESC LIMIT 10", book)
    assert [(g.content, g.author.email()) for g in got] == [
        ("third", "u2@example.com"), ("second", "u1@example.com"), ("first", "u0@example.com")]


def test_query_needing_a_composite_index_raises_need_index_error(sdk, m):
    from google.appengine.api import datastore_errors

    items(m, a={"color": "red", "n": 1})
    with pytest.raises(datastore_errors.NeedIndexError, match="Item"):
        m.Item.query(m.Item.color == "red").order(-m.Item.n).fetch()
    with pytest.raises(datastore_errors.NeedIndexError):
        sdk.db.GqlQuery("SELECT * FROM DbItem WHERE color = 'red' ORDER BY n DESC").fetch(5)


def test_declared_index_serves_the_query_and_get_indices_lists_it(sdk, m):
    db = sdk.db
    items(m, a={"color": "red", "n": 1}, b={"color": "red", "n": 2}, c={"color": "blue", "n": 3})
    declare_indexes(sdk, ("Item", False, ["color", "-n"]))
    assert names(m.Item.query(m.Item.color == "red").order(-m.Item.n)) == ["b", "a"]
    (index, state), = db.get_indexes()
    assert (index.kind(), index.has_ancestor(), index.properties()) == ("Item", False, [("color", 1), ("n", 2)])
    assert state == db.Index.SERVING


def test_metadata_queries_list_namespaces_kinds_and_properties(sdk, m):
    ndb = sdk.ndb
    from google.appengine.ext.ndb import metadata

    items(m, a={"n": 1, "color": "red"})
    m.Counter(id="c").put()
    m.Item(id="t", name="t", namespace="team").put()
    assert metadata.get_kinds() == ["Counter", "Item"]
    assert set(metadata.get_namespaces()) == {"", "team"}
    assert {"n", "color", "name"} <= set(metadata.get_properties_of_kind("Item"))
    assert metadata.get_representations_of_kind("Item")["n"] == ["INT64"]
    assert ndb is sdk.ndb


def test_db_metadata_kinds(sdk, m):
    from google.appengine.ext.db import metadata

    m.DbItem(key_name="x", n=1).put()
    assert [k.kind_name for k in metadata.Kind.all()] == ["DbItem"]


# -- ids ----------------------------------------------------------------------------------------------------------


def test_allocate_ids_reserves_ids_that_puts_never_reuse(sdk, m):
    ndb = sdk.ndb
    first, last = m.Item.allocate_ids(size=5)
    assert last - first == 4
    keys = ndb.put_multi([m.Item(name=str(i)) for i in range(5)])
    assert not {k.id() for k in keys} & set(range(first, last + 1))
    _, upto = m.Item.allocate_ids(max=last + 100)
    assert upto >= last + 100
    assert m.Item(name="later").put().id() > last + 100


def test_db_allocate_ids_and_reserved_ranges(sdk, m):
    db = sdk.db
    start, end = db.allocate_ids(db.Key.from_path("DbItem", 1), 10)
    assert end - start == 9
    key = m.DbItem(n=1).put()
    assert not start <= key.id() <= end
    db.allocate_id_range(db.Key.from_path("DbItem", 1), key.id() + 1000, key.id() + 1010)
    assert m.DbItem(n=2).put().id() > key.id() + 1010


# -- found by the differential against Google's stub (test_sdk_datastore_differential.py), shrunk ----------------


def test_an_equality_filter_on_key_drops_the_sort_orders_and_needs_no_index_as_on_googles_stub(sdk, m):
    ndb = sdk.ndb
    root = ndb.Key("Root", "r")

    def scenario():
        items(m, a={"color": "red", "n": 1})
        m.Item(parent=root, id="c", name="c", color="red", n=2).put()
        q = m.Item.query(m.Item.color == "red", m.Item.key == ndb.Key("Item", "a"))
        child = m.Item.query(m.Item.color == "red", m.Item.key == ndb.Key("Item", "c", parent=root), ancestor=root)
        return (names(q.order(-m.Item.n)), names(child.order(m.Item.n)),
                names(m.Item.query(m.Item.key == ndb.Key("Item", "a")).order(-m.Item.key, m.Item.n)))

    assert scenario() == on_google_stub(scenario) == (["a"], ["c"], ["a"])


def test_a_key_filter_with_an_inequality_or_a_projection_needs_the_stubs_index_and_is_served_with_it(sdk, m):
    from google.appengine.api import datastore_errors

    ndb = sdk.ndb
    items(m, a={"color": "red", "n": 1}, b={"color": "blue", "n": 2}, c={"color": "green", "n": 3})
    key_a, key_c = ndb.Key("Item", "a"), ndb.Key("Item", "c")
    with pytest.raises(datastore_errors.NeedIndexError, match="__key__"):
        m.Item.query(m.Item.key == key_a, m.Item.n > 0).fetch()
    with pytest.raises(datastore_errors.NeedIndexError, match="__key__"):
        m.Item.query(m.Item.key < key_c).fetch(projection=["color"])
    declare_indexes(sdk, ("Item", False, ["__key__", "n"]), ("Item", False, ["__key__", "color"]))

    def scenario():
        items(m, a={"color": "red", "n": 1}, b={"color": "blue", "n": 2}, c={"color": "green", "n": 3})
        return (names(m.Item.query(m.Item.key == key_a, m.Item.n > 0)),
                names(m.Item.query(m.Item.key == key_a, m.Item.n > 5)),
                [e.color for e in m.Item.query(m.Item.key < key_c).fetch(projection=["color"])],
                [e.color for e in m.Item.query(m.Item.key == key_c).fetch(projection=["color"])])

    assert scenario() == on_google_stub(scenario) == (["a"], [], ["red", "blue"], ["green"])


def test_several_equality_filters_on_one_property_with_a_sort_ask_for_the_stubs_index_and_are_served_with_it(sdk, m):
    from google.appengine.api import datastore_errors

    data = dict(a={"tags": ["x", "y"], "n": 3}, b={"tags": ["x"], "n": 4}, c={"tags": ["y", "x", "z"], "n": 1},
                d={"tags": ["y"], "n": 2}, e={"tags": ["z", "y", "x"], "n": 5})
    both = (m.Item.tags == "x", m.Item.tags == "y")
    items(m, **data)
    with pytest.raises(datastore_errors.NeedIndexError, match="- name: tags\n  - name: 'n'\n    direction: desc"):
        m.Item.query(*both).order(-m.Item.n).fetch()
    declare_indexes(sdk, ("Item", False, ["tags", "-n"]), ("Item", False, ["tags", "n"]))

    def scenario():
        items(m, **data)
        q = m.Item.query(*both)
        pages, cursor, more = [], None, True
        while more:
            page, cursor, more = q.order(-m.Item.n).fetch_page(2, start_cursor=cursor)
            pages.append(names(page))
        return (names(q.order(-m.Item.n)), names(q.filter(m.Item.n > 1)),
                names(q.filter(m.Item.n < 5).order(-m.Item.n)), pages,
                [e.n for e in q.order(m.Item.n).fetch(projection=["n"])])

    assert scenario() == on_google_stub(scenario) == (
        ["e", "a", "c"], ["a", "e"], ["a", "c"], [["e", "a"], ["c"]], [1, 3, 5])


def test_several_equality_filters_on_one_property_sorted_by_a_list_return_each_entity_at_its_first_position(sdk, m):
    ndb = sdk.ndb
    tags, nums = ndb.GenericProperty("tags"), ndb.GenericProperty("nums")
    declare_indexes(sdk, ("Expando", False, ["tags", "nums"]), ("Expando", False, ["tags", "-nums"]))

    def scenario():
        ndb.put_multi([m.Expando(id="p", tags=["x", "y"], nums=[5, 1]), m.Expando(id="q", tags=["y", "x"], nums=[3]),
                       m.Expando(id="r", tags=["x", "y", "z"], nums=[2, 7]), m.Expando(id="s", tags=["x"], nums=[0])])
        q = m.Expando.query(tags == "x", tags == "y")
        return ([e.key.id() for e in q.order(nums)], [e.key.id() for e in q.filter(nums > 2)],
                [e.key.id() for e in q.order(-nums)],
                [e.nums for e in q.order(nums).fetch(projection=["nums"])],
                [e.nums for e in m.Expando.query(tags == "x", tags == "y", projection=["nums"], distinct=True)
                 .order(-nums)])

    assert scenario() == on_google_stub(scenario) == (
        ["p", "r", "q"], ["q", "p", "r"], ["r", "p", "q"], [1, 2, 3, 5, 7], [7, 5, 3, 2, 1])
