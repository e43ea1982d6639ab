"""The console's entity form (console/forms.py): values as typed fields and back, type-checked; no sockets."""

from __future__ import annotations

import base64
import datetime

import pytest

from console import datastore, forms
from kiln.pb.datastore.v1 import datastore_pb2 as pb


def _timestamp(when: datetime.datetime) -> pb.Value:
    value = pb.Value()
    value.timestamp_value.FromDatetime(when)
    return value


def _entity(**props: pb.Value) -> pb.Entity:
    key = pb.Key(partition_id=pb.PartitionId(namespace="shop"), path=[pb.PathElement(kind="Gadget", name="g")])
    return pb.Entity(key=key, properties=props)


def _row(name: str, type_: str, text: str, *, indexed: bool = True, remove: bool = False,
         new: bool = False) -> forms.Submitted:
    return forms.Submitted(name=name, type=type_, text=text, indexed=indexed, remove=remove, new=new)


def _rows_as_shown(entity: pb.Entity) -> list[forms.Submitted]:
    return [_row(f.name, f.type, f.text, indexed=f.indexed) for f in forms.to_fields(entity)]


EVERY_TYPE = {
    "s": pb.Value(string_value="Sprocket <b>"),
    "t": pb.Value(string_value="long", meaning=pb.MEANING_TEXT, exclude_from_indexes=True),
    "i": pb.Value(integer_value=-42),
    "f": pb.Value(double_value=9.5),
    "b": pb.Value(boolean_value=True),
    "d": _timestamp(datetime.datetime(2026, 5, 17, 8, 30, 15, 123456, tzinfo=datetime.UTC)),
    "k": pb.Value(key_value=pb.Key(partition_id=pb.PartitionId(namespace="shop"),
                                   path=[pb.PathElement(kind="P", id=7), pb.PathElement(kind="C", name="it's")])),
    "y": pb.Value(blob_value=b"\x00\xff", meaning=pb.MEANING_BLOB, exclude_from_indexes=True),
    "g": pb.Value(geo_point_value=pb.GeoPoint(latitude=51.5, longitude=-0.12)),
    "u": pb.Value(user_value=pb.User(email="ada@example.com", auth_domain="gmail.com")),
    "n": pb.Value(null_value=pb.NULL_VALUE_UNSPECIFIED),
    "l": pb.Value(array_value=pb.ArrayValue(values=[pb.Value(integer_value=1), pb.Value(integer_value=2)])),
}


@pytest.mark.parametrize("name", sorted(EVERY_TYPE))
def test_each_type_parsed_from_its_field_is_the_stored_value(name):
    field = forms.to_field(name, EVERY_TYPE[name], "shop")
    assert forms.parse_value(field.type, field.text, field.indexed, "shop") == EVERY_TYPE[name]


def test_a_form_sent_back_unchanged_keeps_every_value_with_its_meaning():
    entity = _entity(**EVERY_TYPE, email=pb.Value(string_value="a@b.c", meaning=pb.MEANING_EMAIL),
                     part=pb.Value(entity_value=pb.Entity(properties={"x": pb.Value(integer_value=1)})))
    saved, fields = forms.apply(entity, _rows_as_shown(entity), "shop")
    assert saved == entity
    assert not forms.has_errors(fields)


def test_values_the_form_cannot_write_are_shown_as_kept():
    entity = _entity(email=pb.Value(string_value="a@b.c", meaning=pb.MEANING_EMAIL),
                     mixed=pb.Value(array_value=pb.ArrayValue(values=[pb.Value(integer_value=1),
                                                                      pb.Value(string_value="x")])))
    assert [(f.name, f.type, f.shown is not None) for f in forms.to_fields(entity)] == [
        ("email", "", True), ("mixed", "", True)]


def test_an_edited_field_changes_only_its_property():
    entity = _entity(**EVERY_TYPE)
    rows = [_row("i", "integer", "43") if r.name == "i" else r for r in _rows_as_shown(entity)]
    saved, _ = forms.apply(entity, rows, "shop")
    assert saved.properties["i"] == pb.Value(integer_value=43)
    assert {n: v for n, v in saved.properties.items() if n != "i"} == {n: v for n, v in EVERY_TYPE.items() if n != "i"}


def test_properties_the_form_does_not_name_are_preserved():
    entity = _entity(a=pb.Value(integer_value=1), b=pb.Value(string_value="x"))
    saved, _ = forms.apply(entity, [_row("a", "string", "one")], "shop")
    assert saved.properties["a"] == pb.Value(string_value="one")
    assert saved.properties["b"] == pb.Value(string_value="x")


def test_a_wrong_value_gives_an_error_by_its_field():
    entity = _entity(count=pb.Value(integer_value=1))
    _, fields = forms.apply(entity, [_row("count", "integer", "forty-two")], "shop")
    assert forms.has_errors(fields)
    assert fields[0].error == "expected an integer, got 'forty-two'"
    assert fields[0].text == "forty-two"  # the text is shown again to be corrected


@pytest.mark.parametrize(("type_", "text", "message"), [
    ("integer", "9223372036854775808", "an integer must fit in 64 bits"),
    ("float", "x", "expected a number"),
    ("boolean", "yes", "expected true or false"),
    ("datetime", "17 May", "expected a date and time"),
    ("key", "Kind", "expected a key such as"),
    ("key", "Kind:0", "a key id must be a positive 64-bit integer"),
    ("bytes", "%%", "expected base64"),
    ("geopt", "91, 0", "expected latitude, longitude"),
    ("user", "nobody", "expected an email address"),
    ("null", "x", "a null has no value"),
    ("list:integer", "[1, \"two\"]", "item 2: expected an integer"),
    ("list:string", "{\"a\": 1}", "expected a JSON list"),
    ("list:string", "[[1]]", "item 1: expected a String"),
    ("secret", "x", "unknown type"),
])
def test_each_type_refuses_text_that_is_not_one_of_its_values(type_, text, message):
    with pytest.raises(forms.FieldError, match="^" + message.replace("(", r"\(")):
        forms.parse_value(type_, text, True, "")


def test_text_and_blobs_are_never_indexed_and_indexed_bytes_are_a_bytestring():
    assert forms.parse_value("text", "x", True, "").exclude_from_indexes
    indexed = forms.parse_value("bytes", base64.b64encode(b"ab").decode(), True, "")
    assert (indexed.meaning, indexed.exclude_from_indexes) == (pb.MEANING_BYTESTRING, False)


def test_a_naive_datetime_is_utc():
    value = forms.parse_value("datetime", "2026-01-02T03:04:05", True, "")
    assert value.timestamp_value.ToDatetime(datetime.UTC) == datetime.datetime(2026, 1, 2, 3, 4, 5,
                                                                              tzinfo=datetime.UTC)


def test_a_key_is_parsed_in_the_entitys_namespace():
    key = forms.parse_key("Parent:7 > Child:'a > b'", "shop")
    assert key.partition_id.namespace == "shop"
    assert [(e.kind, e.WhichOneof("id_type"), e.id or e.name) for e in key.path] == [
        ("Parent", "id", 7), ("Child", "name", "a > b")]


def test_a_removed_property_is_gone_and_its_mark_is_shown_again():
    entity = _entity(a=pb.Value(integer_value=1), b=pb.Value(integer_value=2))
    saved, fields = forms.apply(entity, [_row("a", "integer", "1", remove=True), _row("b", "integer", "x")], "shop")
    assert "a" not in saved.properties
    assert [(f.name, f.remove, bool(f.error)) for f in fields] == [("a", True, False), ("b", False, True)]


def test_a_new_property_is_added_and_a_blank_row_is_ignored():
    entity = _entity(a=pb.Value(integer_value=1))
    saved, fields = forms.apply(entity, [_row("c", "list:string", '["red", "blue"]', new=True),
                                         _row("", "string", "", new=True)], "shop")
    assert [v.string_value for v in saved.properties["c"].array_value.values] == ["red", "blue"]
    assert [f.name for f in fields] == ["c"]


@pytest.mark.parametrize(("name", "message"), [
    ("a", "a is already a property of this entity"),
    ("", "a property needs a name"),
    ("__key__", "names like __this__ are reserved by the datastore"),
])
def test_a_new_property_needs_a_fresh_valid_name(name, message):
    entity = _entity(a=pb.Value(integer_value=1))
    _, fields = forms.apply(entity, [_row(name, "string", "x", new=True)], "shop")
    assert fields[0].error == message


def test_the_fingerprint_changes_when_the_stored_entity_changes():
    entity = _entity(a=pb.Value(integer_value=1))
    changed = _entity(a=pb.Value(integer_value=2))
    assert forms.fingerprint(entity) == forms.fingerprint(_entity(a=pb.Value(integer_value=1)))
    assert forms.fingerprint(entity) != forms.fingerprint(changed)


def test_a_row_count_beyond_the_form_is_refused():
    with pytest.raises(forms.FieldError, match="rows: at most"):
        forms.read_rows({"rows": str(forms.MAX_ROWS + 1)})


def test_each_type_menu_lists_every_type_and_selects_its_own():
    for chosen, _ in forms.type_options():
        menu = str(datastore._TYPE_MENUS[chosen])
        assert menu.count("<option ") == len(forms.type_options())
        assert menu.count(" selected") == 1 and f'<option value="{chosen}" selected>' in menu
