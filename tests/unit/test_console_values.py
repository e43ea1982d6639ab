"""How the console lays out datastore values and keys (console/values.py): pure functions, no sockets."""

from __future__ import annotations

import datetime

import pytest

from console import values
from kiln.errors import BadRequestError
from kiln.pb.datastore.v1 import datastore_pb2 as pb


def _key(*path: tuple[str, int | str], namespace: str = "") -> pb.Key:
    elements = [pb.PathElement(kind=k, id=i) if isinstance(i, int) else pb.PathElement(kind=k, name=i)
                for k, i in path]
    return pb.Key(partition_id=pb.PartitionId(app_id="ignored", namespace=namespace), path=elements)


def _timestamp(when: datetime.datetime, meaning: int = 0) -> pb.Value:
    value = pb.Value(meaning=meaning)
    value.timestamp_value.FromDatetime(when)
    return value


def test_an_encoded_key_decodes_to_its_namespace_and_path_without_the_app():
    key = _key(("Parent", 7), ("Child", "c/1?&"), namespace="shop")
    decoded = values.decode_key(values.encode_key(key))
    assert decoded.partition_id.namespace == "shop"
    assert decoded.partition_id.app_id == ""  # the console's own app is the service's to fill in
    assert list(decoded.path) == list(key.path)


@pytest.mark.parametrize("text", ["", "not base64!", "AAAA", values.encode_key(pb.Key(path=[pb.PathElement(kind="K")]))])
def test_text_that_is_not_a_complete_key_is_refused_by_name(text):
    with pytest.raises(BadRequestError, match="key"):
        values.decode_key(text)


def test_a_key_path_is_written_kind_and_id_or_quoted_name():
    assert values.key_path(_key(("Parent", 7), ("Child", "it's"))) == "Parent:7 > Child:\"it's\""


@pytest.mark.parametrize(("value", "type_name", "text"), [
    (pb.Value(null_value=pb.NULL_VALUE_UNSPECIFIED), "Null", "null"),
    (pb.Value(boolean_value=False), "Boolean", "false"),
    (pb.Value(integer_value=-3), "Integer", "-3"),
    (pb.Value(double_value=0.1), "Float", "0.1"),
    (pb.Value(string_value="hi", meaning=pb.MEANING_EMAIL), "Email", "hi"),
    (pb.Value(integer_value=70, meaning=pb.MEANING_RATING), "Rating", "70"),
    (_timestamp(datetime.datetime(2026, 1, 2, 3, 4, 5, 600, tzinfo=datetime.UTC)), "DateTime",
     "2026-01-02T03:04:05.000600Z"),
    (_timestamp(datetime.datetime(2026, 1, 2, tzinfo=datetime.UTC), pb.MEANING_DATE), "Date", "2026-01-02"),
    (_timestamp(datetime.datetime(1970, 1, 1, 13, 14, tzinfo=datetime.UTC), pb.MEANING_TIME), "Time", "13:14:00"),
    (pb.Value(geo_point_value=pb.GeoPoint(latitude=1.5, longitude=2.0)), "GeoPt", "1.5, 2.0"),
    (pb.Value(user_value=pb.User(email="a@b.c")), "User", "a@b.c"),
    (pb.Value(blob_value=b"\x00\xff", meaning=pb.MEANING_BYTESTRING), "ByteString", "2 bytes: 00 ff"),
])
def test_each_value_type_is_named_and_written(value, type_name, text):
    shown = values.show(value)
    assert (shown.type, shown.text) == (type_name, text)


def test_a_long_string_is_cut_in_a_table_and_whole_on_the_entity_page():
    value = pb.Value(string_value="é" * 200, meaning=pb.MEANING_TEXT)
    assert values.show(value).text == "é" * values.SHORT_CHARS + "…"
    assert values.show(value).cut
    assert values.show(value, full=True).text == "é" * 200


def test_a_long_blob_shows_its_size_and_first_bytes():
    shown = values.show(pb.Value(blob_value=bytes(100), meaning=pb.MEANING_BLOB))
    assert shown.text == "100 bytes: " + " ".join(["00"] * values.SHORT_BYTES) + " …"


def test_a_key_value_links_to_its_entity():
    key = _key(("Maker", "acme"))
    shown = values.show(pb.Value(key_value=key))
    assert shown.text == "Maker:'acme'"
    assert values.decode_key(shown.key).path[0].name == "acme"


def test_lists_and_embedded_entities_are_shown_as_their_parts():
    listed = values.show(pb.Value(array_value=pb.ArrayValue(values=[pb.Value(integer_value=1),
                                                                     pb.Value(string_value="two")])))
    assert [(i.type, i.text) for i in listed.items] == [("Integer", "1"), ("String", "two")]
    embedded = values.show(pb.Value(entity_value=pb.Entity(properties={"b": pb.Value(integer_value=2),
                                                                       "a": pb.Value(boolean_value=True)})))
    assert [(name, v.text) for name, v in embedded.properties] == [("a", "true"), ("b", "2")]


def test_an_unindexed_value_says_so():
    assert not values.show(pb.Value(string_value="x", exclude_from_indexes=True)).indexed
