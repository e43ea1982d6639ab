"""kiln.ext.db without a server: properties, models, entity conversion, queries and GQL requests."""

from __future__ import annotations

import datetime

import pytest

from kiln import gql
from kiln.api import datastore, users
from kiln.ext import db
from kiln.pb.datastore.v1 import datastore_pb2 as pb
from tests.unit.fake_datastore import (  # noqa: F401 - fake is a fixture
    NOT_FINISHED, batch, fake, result_entity,
)


def _model(**props):
    """A fresh model class (unique kind) with the given properties."""
    _model.count = getattr(_model, "count", 0) + 1
    return type(f"TestModel{_model.count}", (db.Model,), dict(props))


def _bad(model_class, match, **values):
    with pytest.raises(db.BadValueError, match=match):
        model_class(**values)


# -- property validation -----------------------------------------------------------------------------


def test_string_property_rules():
    M = _model(s=db.StringProperty(), m=db.StringProperty(multiline=True))
    _bad(M, "Property s must be a str, not a int", s=5)
    _bad(M, "Property s is not multi-line", s="a\nb")
    assert M(m="a\nb").m == "a\nb"
    assert M(s="é" * 750).s == "é" * 750  # 1500 bytes
    _bad(M, "Property s is 1502 bytes long; it must be 1500 or less", s="é" * 751)
    instance = M()
    with pytest.raises(db.BadValueError, match="Property s"):
        instance.s = b"bytes"
    assert instance.s is None


def test_required_default_choices_and_validator():
    seen = []

    def no_x(value):
        seen.append(value)
        if value == "x":
            raise db.BadValueError("no x please")

    M = _model(req=db.StringProperty(required=True, default="d"),
               pick=db.StringProperty(choices=("a", "b")),
               checked=db.StringProperty(validator=no_x))
    assert M().req == "d"
    _bad(M, "Property req is required", req=None)
    _bad(M, "Property req is required", req="")
    _bad(M, r"Property pick is 'c'; must be one of \['a', 'b'\]", pick="c")
    assert M(pick="b").pick == "b" and M(pick=None).pick is None
    _bad(M, "no x please", checked="x")
    assert "x" in seen


def test_numbers_and_booleans():
    M = _model(i=db.IntegerProperty(required=True), f=db.FloatProperty(), b=db.BooleanProperty(required=True))
    assert M(i=0, b=False).i == 0  # 0 and False are values, not "empty"
    _bad(M, "Property i must be an int, not a bool", i=True, b=True)
    _bad(M, "Property i must fit in 64 bits", i=2**63, b=True)
    assert M(i=-(2**63), b=True).i == -(2**63)
    _bad(M, "Property f must be a float, not a int", i=1, b=True, f=1)
    _bad(M, "Property b must be a bool", i=1, b=1)


def test_dates_and_times():
    M = _model(dt=db.DateTimeProperty(), d=db.DateProperty(), t=db.TimeProperty())
    _bad(M, "Property dt must be a datetime", dt=datetime.date(2020, 1, 1))
    _bad(M, "Property d must be a date, not a datetime", d=datetime.datetime(2020, 1, 1))
    _bad(M, "Property t must be a time", t="12:00")
    m = M(dt=datetime.datetime(2020, 1, 1, 5), d=datetime.date(2020, 1, 2), t=datetime.time(3, 4))
    entity = m._to_entity()
    assert (entity["dt"], entity["d"], entity["t"]) == (m.dt, m.d, m.t)
    assert M.d.make_value_from_datastore(datetime.datetime(2020, 1, 2)) == datetime.date(2020, 1, 2)
    assert M.t.make_value_from_datastore(datetime.datetime(1970, 1, 1, 3, 4)) == datetime.time(3, 4)


def test_auto_now_add_sets_once_and_auto_now_on_every_put(monkeypatch):
    M = _model(created=db.DateTimeProperty(auto_now_add=True), updated=db.DateTimeProperty(auto_now=True),
               day=db.DateProperty(auto_now_add=True))
    before = datetime.datetime.now(datetime.UTC).replace(tzinfo=None)
    m = M()
    assert m.created >= before and m.created.tzinfo is None
    assert m.day in (before.date(), datetime.datetime.now(datetime.UTC).date())
    created, updated = m.created, m.updated
    later = created + datetime.timedelta(hours=1)
    monkeypatch.setattr(db.DateTimeProperty, "now", staticmethod(lambda: later))
    m._to_entity()
    assert m.created == created and m.updated == later != updated
    assert db.to_dict(m)["updated"] == later


def test_text_blob_and_byte_string():
    M = _model(t=db.TextProperty(), blob=db.BlobProperty(), bs=db.ByteStringProperty())
    m = M(t="x" * 5000, blob=b"\x00" * 5000, bs=b"\x01" * 1500)
    assert type(m.t) is db.Text and type(m.blob) is db.Blob and type(m.bs) is db.ByteString
    assert not M.t.indexed and not M.blob.indexed and M.bs.indexed
    assert m._to_entity().unindexed_properties() == frozenset({"t", "blob"})
    _bad(M, "Property bs is 1501 bytes long", bs=b"x" * 1501)
    _bad(M, "Property t must be a str or Text", t=b"bytes")
    _bad(M, "Property blob must be bytes or Blob", blob="text")


def test_list_properties():
    M = _model(nums=db.ListProperty(int), words=db.StringListProperty(), notes=db.ListProperty(db.Text),
               kept=db.ListProperty(str, write_empty_list=True))
    a, b = M(), M()
    a.nums.append(1)
    assert b.nums == [] and M.nums.default_value() == []  # defaults are not shared
    _bad(M, "Items in the nums list must all be int instances, not str", nums=[1, "2"])
    _bad(M, "Items in the nums list must all be int instances, not bool", nums=[True])
    _bad(M, "Property words must be a list", words="abc")
    _bad(M, "Property words is required", words=None)
    assert M(notes=["long"]).notes == [db.Text("long")] and not M.notes.indexed
    entity = M(nums=(3, 1))._to_entity()
    assert entity["nums"] == [3, 1] and "words" not in entity and entity["kept"] == []
    assert M.nums.make_value_from_datastore(7) == [7]  # a projected list value
    with pytest.raises(ValueError, match="not a supported type"):
        db.ListProperty(dict)
    with pytest.raises(db.ConfigurationError):
        db.ListProperty(int, required=False)


def test_typed_string_properties_coerce_and_check():
    M = _model(email=db.EmailProperty(), link=db.LinkProperty(), cat=db.CategoryProperty(),
               phone=db.PhoneNumberProperty(), addr=db.PostalAddressProperty(), im=db.IMProperty(),
               geo=db.GeoPtProperty(), rating=db.RatingProperty(required=True))
    m = M(email="a@b.c", link="http://x.org/y", cat="c", phone="1", addr="a", im="xmpp a@b.c", geo="1.5,-2",
          rating=0)
    assert (type(m.email), type(m.link), type(m.cat), type(m.phone), type(m.addr), type(m.im)) == (
        db.Email, db.Link, db.Category, db.PhoneNumber, db.PostalAddress, db.IM)
    assert m.geo == db.GeoPt(1.5, -2) and m.rating == 0 and type(m.rating) is db.Rating
    _bad(M, "Property email: a Email must not be empty", email="", rating=1)
    _bad(M, "Property link must be a full URL", link="/relative", rating=1)
    _bad(M, "Property im must be 'protocol address'", im="nospace", rating=1)
    _bad(M, "Property geo: 'north' is not a GeoPt", geo="north", rating=1)
    _bad(M, "Property geo must be a GeoPt", geo=5, rating=1)
    _bad(M, "Property rating must be between 0 and 100", rating=101)
    _bad(M, "Property rating must be an int", rating="5")


def test_user_property_uses_the_signed_in_user(monkeypatch):
    M = _model(author=db.UserProperty(auto_current_user_add=True), editor=db.UserProperty(auto_current_user=True),
               plain=db.UserProperty())
    monkeypatch.delenv("USER_EMAIL", raising=False)
    assert M().author is None  # nobody is signed in
    monkeypatch.setenv("USER_EMAIL", "ada@example.com")
    m = M()
    assert m.author == users.User("ada@example.com") and m.plain is None
    monkeypatch.setenv("USER_EMAIL", "bob@example.com")
    m._to_entity()
    assert m.editor == users.User("bob@example.com") and m.author == users.User("ada@example.com")
    _bad(M, "Property plain must be a User", plain="ada@example.com")


# -- model classes -----------------------------------------------------------------------------------


def test_kind_registry_and_kind_override():
    class Registered(db.Model):
        name = db.StringProperty()

    class Renamed(db.Model):
        @classmethod
        def kind(cls):
            return "OtherKind"

    assert Registered.kind() == "Registered" and db.class_for_kind("Registered") is Registered
    assert db.class_for_kind("OtherKind") is Renamed
    with pytest.raises(db.KindError, match="No implementation for kind 'Nope'"):
        db.class_for_kind("Nope")


def test_properties_are_collected_and_inherited():
    class Base(db.Model):
        a = db.StringProperty()

    class Child(Base):
        b = db.IntegerProperty()

    assert list(Child.properties()) == ["a", "b"] and list(Base.properties()) == ["a"]
    assert Child.properties()["a"] is Base.a


def test_reserved_and_duplicate_property_names_are_refused():
    with pytest.raises(db.ReservedWordError, match="key"):
        _model(key=db.StringProperty())
    with pytest.raises(db.ReservedWordError):
        _model(put=db.StringProperty())
    with pytest.raises(db.DuplicatePropertyError, match="Duplicate property: x"):
        _model(a=db.StringProperty(name="x"), b=db.StringProperty(name="x"))


def test_keys_names_ids_and_parents(fake):
    M = _model(v=db.IntegerProperty())
    with pytest.raises(db.NotSavedError):
        M().key()
    parent = M(key_name="p")
    child = M(parent=parent, key_name="c")
    assert child.key().to_path() == [M.kind(), "p", M.kind(), "c"] and child.parent_key() == parent.key()
    assert M(id=7).key().id() == 7
    assert M(key=child.key()).key() == child.key()
    assert M(parent=parent).parent_key() == parent.key()
    with pytest.raises(db.BadValueError, match="must have a complete key"):
        M(parent=M())
    with pytest.raises(db.BadArgumentError):
        M(key=child.key(), key_name="x")
    with pytest.raises(db.BadArgumentError, match="Expected Key kind"):
        M(key=db.Key.from_path("Other", 1))
    with pytest.raises(db.BadValueError):
        M(key_name="")
    with pytest.raises(db.BadValueError):
        M(id=0)


def test_model_entity_round_trip_with_datastore_names():
    M = _model(title=db.StringProperty(name="t"), n=db.IntegerProperty(indexed=False), tags=db.StringListProperty())
    m = M(key_name="k", title="Hello", n=3, tags=["a"])
    entity = m._to_entity()
    assert dict(entity) == {"t": "Hello", "n": 3, "tags": ["a"]}
    assert entity.unindexed_properties() == frozenset({"n"}) and entity.key() == m.key()
    back = M.from_entity(datastore.Entity.from_pb(entity.to_pb()))
    assert (back.title, back.n, back.tags, back.key()) == ("Hello", 3, ["a"], m.key())
    assert back.is_saved() and not m.is_saved()
    assert db.to_dict(m) == {"t": "Hello", "n": 3, "tags": ["a"]}
    with pytest.raises(db.KindError):
        _model().from_entity(entity)


def test_from_entity_with_a_projection_leaves_other_properties_unset():
    M = _model(a=db.StringProperty(required=True), b=db.IntegerProperty(), l=db.StringListProperty())
    entity = datastore.Entity(M.kind(), name="x")
    entity["b"] = 5
    entity["l"] = "one"
    partial = M.from_entity(entity, _projection=["b", "l"])
    assert partial.b == 5 and partial.a is None and partial.l == ["one"]
    with pytest.raises(db.BadRequestError, match="partial"):
        partial._to_entity()


def test_expando_dynamic_properties():
    class Thing(db.Expando):
        name = db.StringProperty()

    t = Thing(name="n", color="red", sizes=[1, 2])
    t.weight = 2.5
    t._private = "not stored"
    assert sorted(t.dynamic_properties()) == ["color", "sizes", "weight"]
    entity = t._to_entity()
    assert dict(entity) == {"name": "n", "color": "red", "sizes": [1, 2], "weight": 2.5}
    back = Thing.from_entity(entity)
    assert back.color == "red" and back.sizes == [1, 2] and back.weight == 2.5
    del back.color
    assert "color" not in back.dynamic_properties()
    with pytest.raises(AttributeError):
        back.color  # noqa: B018
    with pytest.raises(db.BadValueError, match="Property bad"):
        t.bad = object()
    with pytest.raises(db.BadValueError):
        t.name = 5  # declared properties are still validated


# -- references --------------------------------------------------------------------------------------


def test_reference_property_validation_and_back_reference():
    class Author(db.Model):
        name = db.StringProperty()

    class Book(db.Model):
        author = db.ReferenceProperty(Author)
        sequel_of = db.SelfReferenceProperty(collection_name="sequels")

    assert hasattr(Author, "book_set") and hasattr(Book, "sequels")
    with pytest.raises(db.BadValueError, match="complete key"):
        Book(author=Author())
    with pytest.raises(db.KindError, match="must be an instance of Author"):
        Book(author=Book(key_name="b"))
    author = Author(key_name="a")
    book = Book(author=author)
    assert book.author is author and Book.author.get_value_for_datastore(book) == author.key()
    assert book._to_entity()["author"] == author.key()
    query = author.book_set
    assert isinstance(query, db.Query) and query._filters == [("author", "=", author.key())]
    with pytest.raises(db.BadValueError, match="read-only"):
        author.book_set = []
    with pytest.raises(db.DuplicatePropertyError, match="already has property book_set"):
        type("Book2", (db.Model,), {"author": db.ReferenceProperty(Author, collection_name="book_set")})


def test_references_are_fetched_once_and_missing_ones_fail(fake):
    class Target(db.Model):
        name = db.StringProperty()

    class Pointer(db.Model):
        target = db.ReferenceProperty(Target)

    key = Target(key_name="t", name="T").put()
    pointer = Pointer.from_entity(Pointer(key_name="p", target=key)._to_entity())
    assert pointer.target.name == "T" and pointer.target.name == "T"
    assert len(fake.requests("Get")) == 1
    missing = Pointer(target=db.Key.from_path("Target", "gone"))
    with pytest.raises(db.ReferencePropertyResolveError):
        missing.target  # noqa: B018


# -- datastore functions with the fake ----------------------------------------------------------------


def test_put_get_delete_and_batch_calls(fake):
    M = _model(v=db.IntegerProperty())
    one, two = M(v=1), M(key_name="two", v=2)
    keys = db.put([one, two])
    assert len(fake.requests("Put")) == 1 and one.is_saved() and keys[0] == one.key()
    assert [m.v for m in db.get(keys)] == [1, 2]
    assert M.get_by_key_name("two").v == 2 and M.get_by_id(one.key().id()).v == 1
    assert M.get_by_key_name(["two", "three"])[1] is None and db.get(str(keys[1])).v == 2
    db.delete(one)
    assert not one.is_saved() and M.get(keys[0]) is None
    with pytest.raises(db.BadArgumentError):
        M.get_by_id("7")


def test_get_or_insert_runs_in_a_transaction(fake):
    M = _model(v=db.IntegerProperty())
    first = M.get_or_insert("k", v=1)
    second = M.get_or_insert("k", v=2)
    assert first.v == 1 and second.v == 1 and second.key() == first.key()
    assert len(fake.requests("Commit")) == 2 and "Put" not in fake.methods()
    assert fake.requests("Commit")[0].mutations[0].upsert.properties["v"].integer_value == 1


def test_run_in_transaction_retries_a_conflicting_counter(fake):
    Counter = _model(count=db.IntegerProperty(default=0))
    key = Counter(key_name="c").put()
    fake.failing_commits = 2

    def increment():
        counter = db.get(key)
        counter.count += 1
        counter.put()

    db.run_in_transaction(increment)
    assert Counter.get(key).count == 1
    assert len(fake.requests("Commit")) == 3


# -- queries -----------------------------------------------------------------------------------------


def test_query_builds_filters_orders_and_options(fake):
    Person = _model(name=db.StringProperty(name="n"), age=db.IntegerProperty(), bio=db.TextProperty())
    fake.query_responses = [batch()]
    anc = db.Key.from_path("Family", "f")
    ref = Person(key_name="r")
    (Person.all().filter("name =", "x").filter("age =", 3).filter("__key__ >", ref).order("__key__")
     .order("-name").ancestor(anc).fetch(5, offset=2))
    (request,) = fake.requests("RunQuery")
    query = request.query
    assert query.kind == Person.kind() and query.limit == 5 and query.offset == 2
    filters = [f.property_filter for f in query.filter.composite_filter.filters]
    assert [(f.property.name, f.op) for f in filters] == [
        ("n", pb.PropertyFilter.OPERATOR_EQUAL), ("age", pb.PropertyFilter.OPERATOR_EQUAL),
        ("__key__", pb.PropertyFilter.OPERATOR_GREATER_THAN)]
    assert filters[2].value.key_value.path[-1].name == "r"  # a model stands for its key
    assert [(o.property.name, o.direction) for o in query.order] == [
        ("__key__", pb.PropertyOrder.DIRECTION_ASCENDING), ("n", pb.PropertyOrder.DIRECTION_DESCENDING)]
    assert query.ancestor.path[0].name == "f"
    with pytest.raises(db.PropertyError, match="not indexed"):
        Person.all().filter("bio =", "x")
    with pytest.raises(db.PropertyError, match="Invalid property name"):
        Person.all().order("nope")
    with pytest.raises(db.BadQueryError, match="kindless"):
        db.Query().filter("name =", "x")
    with pytest.raises(db.BadFilterError, match="one property"):
        Person.all().filter("age >", 1).filter("name <", "x")
    with pytest.raises(db.BadArgumentError, match="first sort order"):
        Person.all().filter("age >", 1).order("name")
    with pytest.raises(db.NotSavedError):
        Person.all().ancestor(Person())


def test_query_results_become_model_instances_and_cursor_strings(fake):
    Person = _model(name=db.StringProperty())
    fake.query_responses = [
        batch(result_entity(Person.kind(), "a", name="A"), more=NOT_FINISHED, end_cursor=b"e1"),
        batch(result_entity(Person.kind(), "b", name="B"), end_cursor=b"e2"),
        batch(result_entity(Person.kind(), "c", name="C")),
    ]
    query = Person.all()
    people = query.fetch(10)
    assert [p.name for p in people] == ["A", "B"] and all(isinstance(p, Person) for p in people)
    assert datastore.Cursor(urlsafe=query.cursor()).to_bytes() == b"@b"
    assert query.with_cursor(query.cursor()) is query
    query.fetch(1)
    assert fake.requests("RunQuery")[-1].query.start_cursor == b"@b"
    with pytest.raises(db.BadQueryError):
        Person.all().cursor()


def test_keys_only_projection_and_count(fake):
    Person = _model(name=db.StringProperty(), age=db.IntegerProperty())
    fake.query_responses = [batch(result_entity(Person.kind(), "a")), batch(result_entity(Person.kind(), "a", age=3)),
                            batch(result_entity(Person.kind(), "a"), result_entity(Person.kind(), "b"))]
    (key,) = Person.all(keys_only=True).fetch(1)
    assert isinstance(key, db.Key)
    (partial,) = Person.all(projection=["age"], distinct=True).fetch(1)
    assert partial.age == 3 and partial.name is None
    assert list(fake.requests("RunQuery")[1].query.distinct_on) == ["age"]
    assert Person.all().filter("age >", 1).count() == 2
    assert fake.requests("RunQuery")[2].query.keys_only
    with pytest.raises(db.BadQueryError):
        Person.all(keys_only=True, projection=["age"])


# -- GQL ---------------------------------------------------------------------------------------------


def test_gql_is_parsed_once_and_rebound(fake, monkeypatch):
    Person = _model(name=db.StringProperty(), age=db.IntegerProperty())
    calls = []
    real_parse = gql.parse
    monkeypatch.setattr(gql, "parse", lambda text: calls.append(text) or real_parse(text))
    query = db.GqlQuery(f"SELECT * FROM {Person.kind()} WHERE name = :1 AND age > :age", "x", age=3)
    fake.query_responses = [batch(result_entity(Person.kind(), "a", name="x", age=4)), batch()]
    assert [p.age for p in query.fetch(None)] == [4]
    query.bind("y", age=Person(key_name="k"))
    query.fetch(None)
    assert len(calls) == 1
    first, second = (r.gql_query for r in fake.requests("RunQuery"))
    assert first.query_string.startswith("SELECT * FROM") and first.positional_bindings[0].string_value == "x"
    assert first.named_bindings["age"].integer_value == 3
    assert second.positional_bindings[0].string_value == "y"
    assert second.named_bindings["age"].key_value.path[0].name == "k"


def test_gql_fetch_limit_and_offset_are_appended_or_run_structured(fake):
    Person = _model(age=db.IntegerProperty())
    kind = Person.kind()
    fake.query_responses = [batch()]
    db.GqlQuery(f"SELECT * FROM {kind} ORDER BY age").fetch(5, offset=2)
    assert fake.requests("RunQuery")[-1].gql_query.query_string.endswith("ORDER BY age LIMIT 5 OFFSET 2")
    # The query states a LIMIT: run its structured form with the new one.
    structured = pb.Query(kind=kind, limit=10)
    fake.query_responses = [batch(query=structured), batch()]
    db.GqlQuery(f"SELECT * FROM {kind} LIMIT 10").fetch(3)
    probe, run = fake.requests("RunQuery")[-2:]
    assert probe.gql_query.query_string.endswith("LIMIT 10") and run.query.limit == 3 and run.query.kind == kind


def test_gql_with_a_cursor_runs_the_structured_query_once_compiled(fake):
    Person = _model(age=db.IntegerProperty())
    structured = pb.Query(kind=Person.kind())
    fake.query_responses = [batch(query=structured), batch(), batch()]
    query = db.GqlQuery(f"SELECT * FROM {Person.kind()} WHERE age > :1", 3)
    query.with_cursor(datastore.Cursor.from_bytes(b"pos").urlsafe())
    query.fetch(2)
    query.fetch(2)  # same bindings: the compiled form is reused
    kinds = [r.WhichOneof("query_type") for r in fake.requests("RunQuery")]
    assert kinds == ["gql_query", "query", "query"]
    assert fake.requests("RunQuery")[1].query.start_cursor == b"pos"


def test_gql_errors():
    with pytest.raises(db.BadQueryError, match="position") as err:
        db.GqlQuery("SELECT * FROM Person WHERE")
    assert isinstance(err.value.__cause__, gql.GqlError)
    with pytest.raises(db.KindError):
        db.GqlQuery("SELECT * FROM NoSuchKindAnywhere")
    assert db.GqlQuery("SELECT __key__ FROM NoSuchKindAnywhere").is_keys_only()
    Person = _model(age=db.IntegerProperty())
    with pytest.raises(db.BadArgumentError, match="missing argument :1"):
        db.GqlQuery(f"SELECT * FROM {Person.kind()} WHERE age = :1").fetch(1)
    with pytest.raises(db.BadArgumentError, match="unused argument :2"):
        db.GqlQuery(f"SELECT * FROM {Person.kind()} WHERE age = :1", 1, 2).fetch(1)
    assert Person.gql("WHERE age = :1", 1)._query_string == f"SELECT * FROM {Person.kind()} WHERE age = :1"


# -- exports -----------------------------------------------------------------------------------------


def test_db_exports_app_engine_names():
    expected = {
        "Model", "Expando", "Property", "StringProperty", "TextProperty", "ByteStringProperty", "BlobProperty",
        "BooleanProperty", "IntegerProperty", "FloatProperty", "DateTimeProperty", "DateProperty", "TimeProperty",
        "ListProperty", "StringListProperty", "ReferenceProperty", "SelfReferenceProperty", "UserProperty",
        "GeoPtProperty", "LinkProperty", "EmailProperty", "CategoryProperty", "PhoneNumberProperty",
        "PostalAddressProperty", "RatingProperty", "IMProperty", "Query", "GqlQuery", "Key", "get", "put", "delete",
        "allocate_ids", "run_in_transaction", "run_in_transaction_options", "run_in_transaction_custom_retries",
        "create_transaction_options", "is_in_transaction", "to_dict", "class_for_kind", "Rollback",
        "TransactionFailedError", "NeedIndexError", "BadValueError", "BadRequestError", "BadQueryError",
        "BadArgumentError", "BadFilterError", "BadKeyError", "BadPropertyError", "KindError", "PropertyError",
        "NotSavedError", "ReferencePropertyResolveError", "Timeout", "InternalError", "Error", "Text", "Blob",
        "ByteString", "GeoPt", "Link", "Email", "Category", "PhoneNumber", "PostalAddress", "IM", "Rating",
    }
    assert expected <= set(db.__all__)
    assert all(hasattr(db, name) for name in db.__all__)
    assert db.Key is datastore.Key and db.NeedIndexError is datastore.datastore_errors.NeedIndexError
