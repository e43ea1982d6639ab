"""The index value encodings: order, descending complement, decoding."""

from __future__ import annotations

import random

import pytest

from datastore_svc import index, values
from datastore_svc.keys import encode_path
from kiln.pb.datastore.v1 import datastore_pb2 as pb


def ts(micros):
    v = pb.Value()
    v.timestamp_value.seconds, rest = divmod(micros, 1_000_000)
    v.timestamp_value.nanos = rest * 1000
    return v


def key(*path):
    out = pb.Key()
    for kind, ident in zip(path[::2], path[1::2]):
        elem = out.path.add(kind=kind)
        if isinstance(ident, int):
            elem.id = ident
        else:
            elem.name = ident
    return pb.Value(key_value=out)


# App Engine's order of mixed values, and the order within each class.
ORDERED = [
    pb.Value(null_value=pb.NULL_VALUE_UNSPECIFIED),
    pb.Value(integer_value=-(2**63)), pb.Value(integer_value=-1), pb.Value(integer_value=0), ts(0),
    pb.Value(integer_value=1), pb.Value(integer_value=2**63 - 1),
    pb.Value(boolean_value=False), pb.Value(boolean_value=True),
    pb.Value(string_value=""), pb.Value(string_value="a"), pb.Value(string_value="a\x00"),
    pb.Value(string_value="a\x01"), pb.Value(string_value="ab"), pb.Value(string_value="b"),
    pb.Value(string_value="é"),
    pb.Value(double_value=float("-inf")), pb.Value(double_value=-2.5), pb.Value(double_value=-0.0),
    pb.Value(double_value=0.5), pb.Value(double_value=1e300), pb.Value(double_value=float("inf")),
    pb.Value(geo_point_value=pb.GeoPoint(latitude=-10, longitude=5)),
    pb.Value(geo_point_value=pb.GeoPoint(latitude=-10, longitude=6)),
    pb.Value(geo_point_value=pb.GeoPoint(latitude=3, longitude=-100)),
    pb.Value(user_value=pb.User(email="a@x.com")), pb.Value(user_value=pb.User(email="b@x.com")),
    key("A", 1), key("A", 1, "B", "x"), key("A", 2), key("A", "name"), key("B", 1),
]


def test_encodings_sort_in_app_engine_value_order():
    shuffled = ORDERED[:]
    random.Random(7).shuffle(shuffled)
    assert sorted(shuffled, key=values.encode) == ORDERED


def test_complement_reverses_the_order():
    encoded = [values.encode(v) for v in ORDERED]
    assert sorted(encoded, key=values.complement) == encoded[::-1]


def test_concatenated_fields_sort_field_by_field():
    pairs = [(a, b) for a in ORDERED[::5] for b in ORDERED[::7]]
    rows = [values.encode(a) + values.complement(values.encode(b)) for a, b in pairs]
    expected = sorted(range(len(pairs)), key=lambda i: (ORDERED.index(pairs[i][0]), -ORDERED.index(pairs[i][1])))
    assert sorted(range(len(rows)), key=lambda i: rows[i]) == expected


@pytest.mark.parametrize("value", ORDERED, ids=lambda v: v.WhichOneof("value_type"))
def test_decode_inverts_encode(value):
    decoded, end = values.decode(values.encode(value))
    assert end == len(values.encode(value))
    assert values.encode(decoded) == values.encode(value)


def test_datetime_and_integer_with_equal_numbers_are_adjacent_but_not_equal():
    assert values.encode(ts(5)) != values.encode(pb.Value(integer_value=5))
    assert values.value_class(values.encode(ts(5))) == values.INT


def test_text_and_excluded_values_are_not_indexed():
    entity = pb.Entity(key=key("K", 1).key_value)
    entity.properties["t"].string_value = "long"
    entity.properties["t"].meaning = pb.MEANING_TEXT
    entity.properties["x"].integer_value = 1
    entity.properties["x"].exclude_from_indexes = True
    entity.properties["ok"].integer_value = 2
    assert set(index.indexed_values(entity)) == {"ok"}


def test_list_values_index_each_distinct_element_once():
    entity = pb.Entity(key=key("K", 1).key_value)
    entity.properties["l"].array_value.values.add(integer_value=3)
    entity.properties["l"].array_value.values.add(integer_value=1)
    entity.properties["l"].array_value.values.add(integer_value=3)
    assert index.indexed_values(entity)["l"] == [values.encode(pb.Value(integer_value=n)) for n in (1, 3)]


def test_an_empty_list_is_indexed_as_one_null_as_app_engine_stores_it():
    entity = pb.Entity(key=key("K", 1).key_value)
    entity.properties["l"].array_value.SetInParent()
    assert index.indexed_values(entity) == {"l": [values.NULL]}
    assert index.indexed_value_count(entity.properties) == 1


def test_an_unindexed_empty_list_is_not_indexed():
    entity = pb.Entity(key=key("K", 1).key_value)
    entity.properties["l"].array_value.SetInParent()
    entity.properties["l"].exclude_from_indexes = True
    assert index.indexed_values(entity) == {}
    assert index.indexed_value_count(entity.properties) == 0


def test_embedded_entity_properties_index_under_dotted_names():
    entity = pb.Entity(key=key("K", 1).key_value)
    entity.properties["address"].entity_value.properties["city"].string_value = "Oslo"
    assert list(index.indexed_values(entity)) == ["address.city"]


def test_exploding_composite_index_is_refused_past_the_entry_limit():
    entity = pb.Entity(key=key("K", 1).key_value)
    for name in ("a", "b"):
        for i in range(150):
            entity.properties[name].array_value.values.add(integer_value=i)
    indexer = index.Indexer([index.IndexDef("K", False, (("a", False), ("b", False)))])
    with pytest.raises(index.BadRequestError, match="20000 index entries"):
        indexer.rows(entity)


def _listed(count, name="l", **flags):
    entity = pb.Entity(key=key("K", 1).key_value)
    for i in range(count):
        entity.properties[name].array_value.values.add(integer_value=i, **flags)
    return entity


def _many_properties(count):
    entity = pb.Entity(key=key("K", 1).key_value)
    for i in range(count):
        entity.properties[f"p{i}"].integer_value = i
    return entity


def _embedded(count):
    entity = pb.Entity(key=key("K", 1).key_value)
    for i in range(count):
        entity.properties["e"].array_value.values.add().entity_value.properties["x"].integer_value = i
    return entity


def _duplicates(count):
    entity = pb.Entity(key=key("K", 1).key_value)
    for _ in range(count):
        entity.properties["l"].array_value.values.add(string_value="same")
    return entity


OVER_BUILT_IN = {"a list of 120000 values": lambda: _listed(120_000), "20001 values": lambda: _listed(20_001),
                 "20001 properties": lambda: _many_properties(20_001),
                 "20001 embedded entities": lambda: _embedded(20_001),
                 "20001 equal values": lambda: _duplicates(20_001)}


@pytest.mark.parametrize("make", OVER_BUILT_IN.values(), ids=OVER_BUILT_IN.keys())
def test_built_in_index_entries_past_the_limit_are_refused_as_app_engine_did(make):
    with pytest.raises(index.BadRequestError, match=r"^Too many indexed properties for entity K\(1\): 1?2000"):
        index.Indexer().rows(make(), check_limit=True)


def test_the_limit_itself_is_allowed():
    assert len(index.Indexer().rows(_listed(20_000), check_limit=True)) == 1 + 2 * 20_000


def test_values_excluded_from_indexes_do_not_count():
    rows = index.Indexer().rows(_listed(120_000, exclude_from_indexes=True), check_limit=True)
    assert len(rows) == 1  # the kind row


def test_built_in_and_composite_entries_count_together():
    entity = _listed(19_000, name="a")
    for i in range(2):
        entity.properties["b"].array_value.values.add(integer_value=i)
    indexer = index.Indexer([index.IndexDef("K", False, (("a", False), ("b", False)))])
    with pytest.raises(index.BadRequestError, match="19002 indexed values and 38000 composite index entries"):
        indexer.rows(entity, check_limit=True)


def test_stored_entities_past_the_limit_still_give_their_rows():
    # An entity stored before the limit applied must stay deletable and overwritable.
    assert len(index.Indexer().rows(_listed(20_001))) == 1 + 2 * 20_001


def test_composite_rows_end_with_the_entity_path():
    entity = pb.Entity(key=key("P", 1, "K", 2).key_value)
    entity.properties["a"].integer_value = 1
    defn = index.IndexDef("K", True, (("a", True),))
    rows = [r for r in index.Indexer([defn]).rows(entity) if r.idx.startswith(b"C")]
    path = encode_path(entity.key.path)
    assert len(rows) == 2  # one per ancestor, the entity included
    assert all(r.row.endswith(path) and r.path == path for r in rows)
