"""The model layer (``kiln.ext.db``) and ``kiln.api.datastore`` against the real datastore service.

The examples follow App Engine's documentation (the guestbook's ``Greeting``,
the ``Employee`` and ``Contact`` models) with only the import changed. Each
test runs as an app of its own, once on the embedded engine and once on a
real Cassandra node.
"""

from __future__ import annotations

import datetime
import threading
import time
import uuid

import grpc
import pytest

from kiln_platform import auth
from kiln.api import _rpc, datastore, datastore_errors, users
from kiln.ext import db
from kiln.pb.datastore.v1 import datastore_pb2_grpc
from tests.integration import indexes
from tests.integration.conftest import SECRET, app_metadata

pytestmark = pytest.mark.nats


class App:
    """The app a test runs as: its id and a raw stub for what apps cannot do (declaring indexes)."""

    def __init__(self, app_id: str, addr: str) -> None:
        self.app_id = app_id
        self.addr = addr

    def declare_indexes(self, *defs: tuple[str, bool, list[str]]) -> None:
        """Declare composite indexes, as ``kiln deploy`` does with index.yaml, and wait until they serve."""
        with grpc.insecure_channel(self.addr) as channel:
            indexes.declare(datastore_pb2_grpc.DatastoreServiceStub(channel), app_metadata(self.app_id), *defs)


@pytest.fixture(params=["embedded", pytest.param("cassandra", marks=pytest.mark.cassandra)])
def app(request, monkeypatch):
    """Point the SDK at a real datastore service as a fresh app (once per engine)."""
    addr = request.getfixturevalue("datastore_addr" if request.param == "embedded" else "datastore_cassandra_addr")
    app_id = "db-" + uuid.uuid4().hex[:12]
    monkeypatch.setenv("KILN_DATASTORE_ADDR", addr)
    monkeypatch.setenv("KILN_APP_TOKEN", auth.mint_app_token(SECRET, app_id))
    monkeypatch.setenv("APPLICATION_ID", app_id)
    monkeypatch.delenv("USER_EMAIL", raising=False)
    _rpc.reset()
    yield App(app_id, addr)
    _rpc.reset()


# -- the documentation's models --------------------------------------------------------------------


class Greeting(db.Model):
    """The guestbook tutorial's model."""

    author = db.UserProperty()
    content = db.StringProperty(multiline=True)
    date = db.DateTimeProperty(auto_now_add=True)


def guestbook_key(guestbook_name: str = "default_guestbook") -> db.Key:
    return db.Key.from_path("Guestbook", guestbook_name)


class Employee(db.Model):
    first_name = db.StringProperty()
    last_name = db.StringProperty()
    hire_date = db.DateProperty()
    attended_hr_training = db.BooleanProperty()
    age = db.IntegerProperty()
    skills = db.StringListProperty()
    manager = db.SelfReferenceProperty(collection_name="reports")


class Contact(db.Model):
    name = db.StringProperty(required=True)
    email = db.EmailProperty()


class ContactPhone(db.Model):
    contact = db.ReferenceProperty(Contact, collection_name="phone_numbers")
    phone_type = db.StringProperty(choices=("home", "work", "fax", "mobile", "other"))
    number = db.PhoneNumberProperty()


class Everything(db.Model):
    s = db.StringProperty()
    text = db.TextProperty()
    bs = db.ByteStringProperty()
    blob = db.BlobProperty()
    b = db.BooleanProperty()
    i = db.IntegerProperty()
    f = db.FloatProperty()
    dt = db.DateTimeProperty()
    d = db.DateProperty()
    t = db.TimeProperty()
    nums = db.ListProperty(int)
    words = db.StringListProperty()
    user = db.UserProperty()
    geo = db.GeoPtProperty()
    link = db.LinkProperty()
    email = db.EmailProperty()
    category = db.CategoryProperty()
    phone = db.PhoneNumberProperty()
    address = db.PostalAddressProperty()
    rating = db.RatingProperty()
    im = db.IMProperty()
    ref = db.ReferenceProperty()


class Counter(db.Model):
    count = db.IntegerProperty(default=0)


class Song(db.Expando):
    title = db.StringProperty()


def staff() -> dict[str, Employee]:
    """Five employees (one the manager of two others)."""
    boss = Employee(key_name="boss", first_name="Ada", last_name="Lovelace", age=45,
                    hire_date=datetime.date(2001, 1, 1), attended_hr_training=True, skills=["math", "poetry"])
    boss.put()
    people = {"boss": boss}
    for name, first, last, age, hired, trained, skills in [
        ("joe", "Joe", "Smith", 28, datetime.date(2010, 5, 1), True, ["python"]),
        ("ann", "Ann", "Smith", 35, datetime.date(2008, 3, 2), False, ["go", "python"]),
        ("bob", "Bob", "Jones", 52, datetime.date(1999, 7, 3), True, []),
        ("eve", "Eve", "Brown", 35, datetime.date(2015, 9, 4), False, ["rust"]),
    ]:
        people[name] = Employee(key_name=name, first_name=first, last_name=last, age=age, hire_date=hired,
                                attended_hr_training=trained, skills=skills,
                                manager=boss if name in ("joe", "ann") else None)
    db.put([people[n] for n in ("joe", "ann", "bob", "eve")])
    return people


def key_names(results) -> list[str]:
    return [(r if isinstance(r, db.Key) else r.key()).name() for r in results]


# -- put, get, delete -------------------------------------------------------------------------------


def test_every_property_type_round_trips(app):
    target = Counter(key_name="target")
    target.put()
    e = Everything(
        s="short", text="long " * 1000, bs=b"\x00\x01", blob=bytes(range(256)) * 20, b=False, i=-(2**63),
        f=2.5, dt=datetime.datetime(2024, 2, 29, 12, 30, 15, 123456), d=datetime.date(2020, 1, 31),
        t=datetime.time(23, 59, 58, 7), nums=[3, 1, 2], words=["a", "b"], user=users.User("ada@example.com"),
        geo=db.GeoPt(51.5, -0.12), link="https://example.com/x?y=1", email="ada@example.com",
        category="books", phone="+44 20 7946 0000", address="1 Main St", rating=97, im="xmpp ada@example.com",
        ref=target)
    key = e.put()
    assert key.id() is not None and e.is_saved()
    got = Everything.get(key)
    assert got is not e
    for name in Everything.properties():
        if name != "ref":
            assert getattr(got, name) == getattr(e, name), name
    assert isinstance(got.text, db.Text) and isinstance(got.blob, db.Blob) and isinstance(got.bs, db.ByteString)
    assert isinstance(got.rating, db.Rating) and isinstance(got.link, db.Link) and isinstance(got.im, db.IM)
    assert type(got.d) is datetime.date and type(got.t) is datetime.time
    assert got.ref.key() == target.key()


def test_get_by_id_key_name_and_batch_get_give_none_for_missing(app):
    first, second = Contact(name="Ann"), Contact(name="Bob", key_name="bob")
    db.put([first, second])
    assert Contact.get_by_id(first.key().id()).name == "Ann"
    assert Contact.get_by_key_name("bob").name == "Bob"
    assert Contact.get_by_key_name("nobody") is None
    assert [c and c.name for c in Contact.get_by_id([first.key().id(), 999999999])] == ["Ann", None]
    found = db.get([second.key(), str(first.key()), db.Key.from_path("Contact", "missing")])
    assert [c and c.name for c in found] == ["Bob", "Ann", None]
    with pytest.raises(db.KindError):
        Counter.get(first.key())


def test_entities_with_a_parent_belong_to_its_group(app):
    book = guestbook_key("family")
    greeting = Greeting(parent=book, key_name="first", content="Hi\nthere")
    greeting.put()
    assert greeting.parent_key() == book
    assert greeting.key().parent() == book
    assert Greeting.get_by_key_name("first", parent=book).content == "Hi\nthere"
    assert Greeting.get_by_key_name("first") is None  # a different key without the parent


def test_delete_removes_the_entity(app):
    contact = Contact(name="Gone")
    key = contact.put()
    contact.delete()
    assert not contact.is_saved()
    assert Contact.get(key) is None
    other = Contact(name="Also gone")
    other.put()
    db.delete([other.key()])
    assert db.get(other.key()) is None


def test_auto_now_add_is_kept_and_auto_now_moves_on_put(app):
    class Stamped(db.Model):
        created = db.DateTimeProperty(auto_now_add=True)
        updated = db.DateTimeProperty(auto_now=True)

    stamp = Stamped()
    stamp.put()
    created, updated = stamp.created, stamp.updated
    time.sleep(0.01)
    stamp.put()
    again = Stamped.get(stamp.key())
    assert again.created == created
    assert again.updated > updated


def test_allocate_ids_reserves_a_range_that_puts_never_reuse(app):
    start, end = db.allocate_ids(Contact, 10)
    assert end - start == 9
    key = Contact(name="After").put()
    assert not start <= key.id() <= end


def test_expando_stores_dynamic_properties(app):
    song = Song(title="Yesterday", artist="The Beatles", year=1965, tags=["pop", "classic"])
    song.rating = 4.5
    song.put()
    got = Song.get(song.key())
    assert got.title == "Yesterday" and got.artist == "The Beatles" and got.year == 1965
    assert got.tags == ["pop", "classic"] and got.rating == 4.5
    assert sorted(got.dynamic_properties()) == ["artist", "rating", "tags", "year"]
    del got.rating
    got.put()
    assert "rating" not in Song.get(song.key()).dynamic_properties()


def test_get_or_insert_creates_once(app):
    first = Contact.get_or_insert("ada", name="Ada")
    second = Contact.get_or_insert("ada", name="Someone else")
    assert second.key() == first.key()
    assert second.name == "Ada"


# -- references ------------------------------------------------------------------------------------


def test_reference_property_dereferences_lazily_and_back_reference_queries(app):
    scott = Contact(name="Scott", email="scott@example.com")
    scott.put()
    ContactPhone(contact=scott, phone_type="home", number="(650) 555 - 2200").put()
    ContactPhone(contact=scott, phone_type="mobile", number="(650) 555 - 2201").put()
    other = Contact(name="Other")
    other.put()
    ContactPhone(contact=other, phone_type="work", number="1").put()

    phone = ContactPhone.all().filter("phone_type =", "home").get()
    assert ContactPhone.contact.get_value_for_datastore(phone) == scott.key()  # no fetch needed for the key
    assert phone.contact.name == "Scott"
    assert sorted(p.number for p in scott.phone_numbers) == ["(650) 555 - 2200", "(650) 555 - 2201"]
    assert scott.phone_numbers.count() == 2
    assert [p.phone_type for p in scott.phone_numbers.filter("phone_type =", "mobile")] == ["mobile"]


def test_self_reference_and_its_collection(app):
    people = staff()
    assert sorted(e.first_name for e in people["boss"].reports) == ["Ann", "Joe"]
    assert people["bob"].reports.count() == 0
    assert Employee.get_by_key_name("joe").manager.first_name == "Ada"


def test_reference_to_a_deleted_entity_fails_to_resolve(app):
    target = Contact(name="Temp")
    target.put()
    phone = ContactPhone(contact=target, number="5")
    phone.put()
    target.delete()
    loaded = ContactPhone.get(phone.key())
    with pytest.raises(db.ReferencePropertyResolveError):
        loaded.contact  # noqa: B018 - the read is the test


# -- queries ---------------------------------------------------------------------------------------


def test_ancestor_query_returns_the_group_in_key_order_with_keys_only(app):
    book = guestbook_key()
    for name in ("c", "a", "b"):
        Greeting(parent=book, key_name=name, content=name).put()
    Greeting(key_name="elsewhere", content="x").put()
    assert key_names(Greeting.all().ancestor(book).fetch(10)) == ["a", "b", "c"]
    keys = Greeting.all(keys_only=True).ancestor(book).fetch(10)
    assert all(isinstance(k, db.Key) for k in keys) and key_names(keys) == ["a", "b", "c"]
    assert Greeting.all().ancestor(book).count() == 3


def test_guestbook_query_needs_its_index_yaml_entry(app):
    book = guestbook_key()
    Greeting(parent=book, content="hello").put()
    with pytest.raises(db.NeedIndexError) as err:
        Greeting.all().ancestor(book).order("-date").fetch(10)
    message = str(err.value)
    for line in ("- kind: Greeting", "ancestor: yes", "- name: date", "direction: desc"):
        assert line in message


def test_guestbook_newest_greetings_first_with_the_declared_index(app):
    app.declare_indexes(("Greeting", True, ["-date"]))
    book = guestbook_key()
    for i in range(12):
        Greeting(parent=book, content=f"greeting {i}",
                 date=datetime.datetime(2024, 1, 1) + datetime.timedelta(minutes=i)).put()
    Greeting(parent=guestbook_key("other"), content="elsewhere").put()
    greetings = Greeting.all().ancestor(book).order("-date").fetch(10)
    assert [g.content for g in greetings] == [f"greeting {i}" for i in range(11, 1, -1)]
    gql = db.GqlQuery("SELECT * FROM Greeting WHERE ANCESTOR IS :1 ORDER BY date DESC LIMIT 10", book)
    assert [g.content for g in gql] == [g.content for g in greetings]


def test_filters_orders_limit_and_offset(app):
    staff()
    assert key_names(Employee.all().filter("age >=", 35).order("age").fetch(10)) == ["ann", "eve", "boss", "bob"]
    assert key_names(Employee.all().filter("age >=", 35).order("-age").fetch(2, offset=1)) == ["boss", "ann"]
    assert key_names(Employee.all().filter("last_name =", "Smith").fetch(10)) == ["ann", "joe"]
    assert key_names(Employee.all().filter("last_name =", "Smith").filter("attended_hr_training =", True)) \
        == ["joe"]
    assert key_names(Employee.all().filter("last_name IN", ["Jones", "Brown"])) == ["bob", "eve"]
    assert key_names(Employee.all().filter("age !=", 35)) == ["joe", "boss", "bob"]
    assert key_names(Employee.all().filter("skills =", "python")) == ["ann", "joe"]
    assert key_names(Employee.all().filter("hire_date <", datetime.date(2005, 1, 1))) == ["bob", "boss"]
    assert key_names(Employee.all().filter("__key__ >", db.Key.from_path("Employee", "bob"))
                     .filter("__key__ <", db.Key.from_path("Employee", "joe"))) == ["boss", "eve"]
    assert Employee.all().filter("age >", 30).count() == 4
    assert Employee.all().filter("age >", 30).count(limit=2) == 2
    assert Employee.all().order("age").get().first_name == "Joe"
    assert Employee.all().filter("age >", 100).get() is None
    assert [e.first_name for e in Employee.all().order("age")[1:3]] == ["Ann", "Eve"]


def test_low_level_query_with_dict_filters(app):
    staff()
    query = datastore.Query("Employee", {"age >": 30})
    query["age <"] = 50
    query.Order(("age", datastore.Query.DESCENDING))
    # Ties (Ann and Eve are both 35) are broken by key, ascending.
    assert [e["first_name"] for e in query.Run()] == ["Ada", "Ann", "Eve"]
    assert [k.name() for k in datastore.Query("Employee", {"last_name =": "Smith"}, keys_only=True).Get(10)] \
        == ["ann", "joe"]
    assert datastore.Query("Employee").Count() == 5


def test_kindless_query_returns_instances_of_each_kind(app):
    staff()
    Contact(key_name="zed", name="Zed").put()
    found = db.Query().filter("__key__ >", db.Key.from_path("Contact", "a")).fetch(10)
    assert [type(m).__name__ for m in found] == ["Contact"] + ["Employee"] * 5
    assert [m.key().name() for m in found] == ["zed", "ann", "bob", "boss", "eve", "joe"]


def test_namespaces_keep_entities_and_queries_apart(app):
    for namespace in ("", "tenant-a"):
        entity = datastore.Entity("Note", name="n", namespace=namespace)
        entity["owner"] = namespace or "default"
        datastore.Put(entity)
    assert datastore.Get(db.Key.from_path("Note", "n", namespace="tenant-a"))["owner"] == "tenant-a"
    assert [e["owner"] for e in datastore.Query("Note", namespace="tenant-a").Get(10)] == ["tenant-a"]
    assert [e["owner"] for e in datastore.Query("Note").Get(10)] == ["default"]


def test_keys_only_and_projection_queries(app):
    staff()
    keys = Employee.all(keys_only=True).filter("age >", 40).fetch(10)
    assert all(isinstance(k, db.Key) for k in keys)
    assert key_names(keys) == ["boss", "bob"]
    ages = Employee.all(projection=("age",)).order("age").fetch(10)
    assert [e.age for e in ages] == [28, 35, 35, 45, 52]
    assert all(e.first_name is None for e in ages)  # not projected
    with pytest.raises(db.BadRequestError):
        ages[0].put()  # a partial entity
    names = Employee.all(projection=["last_name"], distinct=True).order("last_name").fetch(10)
    assert [e.last_name for e in names] == ["Brown", "Jones", "Lovelace", "Smith"]
    gql = db.GqlQuery("SELECT __key__ FROM Employee WHERE age > :1", 40)
    assert key_names(gql.fetch(10)) == ["boss", "bob"]


def test_query_needing_a_composite_index_raises_need_index_error(app):
    staff()
    query = Employee.all().filter("last_name =", "Smith").order("-hire_date")
    with pytest.raises(db.NeedIndexError) as err:
        query.fetch(5)
    for line in ("- kind: Employee", "- name: last_name", "- name: hire_date", "direction: desc"):
        assert line in str(err.value)
    app.declare_indexes(("Employee", False, ["last_name", "-hire_date"]))
    assert key_names(query.fetch(5)) == ["joe", "ann"]


# -- GQL -------------------------------------------------------------------------------------------

# Parsed once, as App Engine's documentation recommends; each test binds its arguments.
BY_LAST_NAME = db.GqlQuery("SELECT * FROM Employee WHERE last_name = :1 AND attended_hr_training = :trained")


def test_gql_positional_and_named_bindings_can_be_rebound(app):
    staff()
    BY_LAST_NAME.bind("Smith", trained=True)
    assert key_names(BY_LAST_NAME.fetch(10)) == ["joe"]
    BY_LAST_NAME.bind("Smith", trained=False)
    assert key_names(BY_LAST_NAME.fetch(10)) == ["ann"]
    BY_LAST_NAME.bind("Jones", trained=True)
    assert [e.first_name for e in BY_LAST_NAME] == ["Bob"]
    by_age = Employee.gql("WHERE age >= :min_age ORDER BY age DESC", min_age=35)
    assert key_names(by_age.fetch(10)) == ["bob", "boss", "ann", "eve"]
    assert by_age.count() == 4
    with pytest.raises(db.BadArgumentError):
        BY_LAST_NAME.bind("Smith").fetch(1)  # :trained is missing


def test_gql_limit_offset_and_fetch_overrides(app):
    staff()
    query = db.GqlQuery("SELECT * FROM Employee ORDER BY age LIMIT 3 OFFSET 1")
    assert key_names(query) == ["ann", "eve", "boss"]
    assert key_names(query.fetch(2)) == ["ann", "eve"]  # fetch's limit replaces LIMIT
    assert key_names(query.fetch(2, offset=3)) == ["boss", "bob"]  # and its offset replaces OFFSET
    plain = db.GqlQuery("SELECT * FROM Employee WHERE age > :1 ORDER BY age", 30)
    assert key_names(plain.fetch(2, offset=1)) == ["eve", "boss"]
    assert plain.get().first_name == "Ann"
    assert db.GqlQuery("SELECT * FROM Employee WHERE skills IN :1", ["rust", "math"]).count() == 2
    assert key_names(db.GqlQuery("SELECT * FROM Employee WHERE manager = :1", Employee.get_by_key_name("boss"))) \
        == ["ann", "joe"]


def test_bad_gql_names_the_token_and_position():
    with pytest.raises(db.BadQueryError) as err:
        db.GqlQuery("SELECT * FROM Employee ORDERR BY age")
    assert "ORDERR" in str(err.value) and "position 23" in str(err.value)


# -- cursors ---------------------------------------------------------------------------------------


def _pages(make_query, page_size):
    """Every page, each fetched by a new query that resumes from the previous page's cursor."""
    pages, cursor = [], None
    while True:
        query = make_query()
        if cursor is not None:
            query.with_cursor(cursor)
        page = query.fetch(page_size)
        if not page:
            return pages
        pages.append(key_names(page))
        cursor = query.cursor()
        assert isinstance(cursor, str)


def test_cursors_page_through_an_ancestor_query(app):
    book = guestbook_key()
    names = [f"g{i:02}" for i in range(23)]
    db.put([Greeting(parent=book, key_name=n, content=n) for n in names])
    pages = _pages(lambda: Greeting.all().ancestor(book), 10)
    assert [len(p) for p in pages] == [10, 10, 3]
    assert sum(pages, []) == names


def test_cursors_page_through_a_sorted_query_and_a_gql_query(app):
    staff()
    order = ["joe", "ann", "eve", "boss", "bob"]
    assert sum(_pages(lambda: Employee.all().order("age"), 2), []) == order
    assert sum(_pages(lambda: db.GqlQuery("SELECT * FROM Employee ORDER BY age"), 2), []) == order
    low_level = datastore.Query("Employee").Order("age")
    low_level.Get(2)
    resumed = datastore.Query("Employee", cursor=datastore.Cursor(urlsafe=low_level.GetCursor().urlsafe()))
    assert [e.key().name() for e in resumed.Order("age").Get(10)] == order[2:]


def test_an_end_cursor_stops_right_after_the_result_it_was_taken_at(app):
    # A cursor marks the position right after the last result fetched, so the
    # same cursor ends one page and starts the next, and a page can be fetched
    # again between its start and end cursors.
    staff()
    order = ["joe", "ann", "eve", "boss", "bob"]
    query = Employee.all().order("age")
    assert key_names(query.fetch(3)) == order[:3]
    end = query.cursor()
    assert key_names(Employee.all().order("age").with_cursor(end_cursor=end).fetch(10)) == order[:3]
    assert key_names(Employee.all().order("age").with_cursor(start_cursor=end).fetch(10)) == order[3:]
    first_two = Employee.all().order("age")
    first_two.fetch(1)
    start = first_two.cursor()
    assert key_names(Employee.all().order("age").with_cursor(start, end).fetch(10)) == order[1:3]


def test_batches_are_followed_past_the_batch_size(app):
    book = guestbook_key()
    db.put([Greeting(parent=book, key_name=f"n{i:03}", content="x") for i in range(25)])
    assert len(list(Greeting.all().ancestor(book).run(batch_size=4))) == 25
    assert len(Greeting.all().ancestor(book).fetch(13, offset=5)) == 13
    assert key_names(Greeting.all().ancestor(book).run(limit=3, offset=20, batch_size=2)) == ["n020", "n021", "n022"]


# -- transactions ----------------------------------------------------------------------------------


def increment_counter(key: db.Key, amount: int = 1) -> int:
    counter = db.get(key)
    counter.count += amount
    counter.put()
    return counter.count


def test_concurrent_transactions_increment_a_counter_exactly(app):
    key = Counter(key_name="hits").put()
    failures: list[BaseException] = []

    def worker() -> None:
        try:
            for _ in range(3):
                db.run_in_transaction_custom_retries(50, increment_counter, key)
        except BaseException as exc:  # noqa: BLE001 - reported by the assertion below
            failures.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert failures == []
    assert Counter.get(key).count == 30


def test_default_retries_fail_loudly_rather_than_lose_an_update(app):
    key = Counter(key_name="hits").put()
    outcomes: list[str] = []
    lock = threading.Lock()
    barrier = threading.Barrier(10)

    def worker() -> None:
        barrier.wait()
        try:
            db.run_in_transaction(increment_counter, key)
            result = "ok"
        except db.TransactionFailedError:
            result = "failed"
        with lock:
            outcomes.append(result)

    threads = [threading.Thread(target=worker) for _ in range(10)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert len(outcomes) == 10 and outcomes.count("ok") >= 1
    assert Counter.get(key).count == outcomes.count("ok")


def test_transaction_returns_the_function_result_and_final_keys(app):
    book = guestbook_key()

    def sign() -> tuple[db.Key, object]:
        greeting = Greeting(parent=book, content="in a transaction")
        key = greeting.put()
        assert key.id() is not None  # complete before the commit
        # A transaction does not see its own writes.
        return key, db.get(key)

    key, seen_inside = db.run_in_transaction(sign)
    assert seen_inside is None
    assert Greeting.get(key).content == "in a transaction"


def test_rollback_discards_the_writes_and_returns_none(app):
    book = guestbook_key()

    def sign_then_change_mind() -> str:
        Greeting(parent=book, key_name="r", content="never").put()
        raise db.Rollback()

    assert db.run_in_transaction(sign_then_change_mind) is None
    assert Greeting.get_by_key_name("r", parent=book) is None


def test_an_exception_rolls_back_and_propagates(app):
    key = Counter(key_name="c", count=1).put()

    def fail() -> None:
        increment_counter(key, 10)
        raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        db.run_in_transaction(fail)
    assert Counter.get(key).count == 1


def test_transactions_are_limited_to_one_group_unless_xg(app):
    first, second = Counter(key_name="a").put(), Counter(key_name="b").put()

    def both() -> None:
        increment_counter(first)
        increment_counter(second)

    with pytest.raises(db.BadRequestError, match="cross-group"):
        db.run_in_transaction(both)
    db.run_in_transaction_options(db.create_transaction_options(xg=True), both)
    assert [c.count for c in db.get([first, second])] == [1, 1]


def test_ancestor_queries_run_inside_transactions_and_others_are_refused(app):
    book = guestbook_key()
    Greeting(parent=book, key_name="x", content="x").put()

    def count_then_sign() -> int:
        found = Greeting.all().ancestor(book).count()
        Greeting(parent=book, content="another").put()
        return found

    assert db.run_in_transaction(count_then_sign) == 1
    assert Greeting.all().ancestor(book).count() == 2
    with pytest.raises(db.BadRequestError, match="ancestor"):
        db.run_in_transaction(lambda: Greeting.all().fetch(1))


def test_nested_transactions_are_refused(app):
    def outer() -> None:
        assert db.is_in_transaction()
        db.run_in_transaction(lambda: None)

    with pytest.raises(db.BadRequestError, match="nested"):
        db.run_in_transaction(outer)
    assert not db.is_in_transaction()


def test_low_level_run_in_transaction(app):
    entity = datastore.Entity("Account", name="acct")
    entity["balance"] = 10
    key = datastore.Put(entity)

    def withdraw(amount: int) -> int:
        account = datastore.Get(key)
        account["balance"] -= amount
        datastore.Put(account)
        return account["balance"]

    assert datastore.RunInTransaction(withdraw, 3) == 7
    assert datastore.Get(key)["balance"] == 7


# -- limits ----------------------------------------------------------------------------------------


class Tagged(db.Model):
    tags = db.ListProperty(int)


def test_a_model_with_more_indexed_values_than_the_limit_raises_app_engines_error(app):
    with pytest.raises(datastore_errors.BadRequestError, match="^Too many indexed properties for entity Tagged"):
        Tagged(key_name="big", tags=list(range(120_000))).put()
    assert Tagged.get_by_key_name("big") is None
    assert Tagged(key_name="fine", tags=list(range(100))).put().name() == "fine"  # the service keeps serving
