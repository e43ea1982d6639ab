"""Bulk load mappings (YAML and Python) and the conversion of CSV cells to datastore values and back."""

from __future__ import annotations

import datetime
import pathlib

import pytest

from deploy import bulkload
from deploy.bulkload import RowError
from kiln.errors import ConfigError
from kiln.pb.datastore.v1 import datastore_pb2 as pb

YAML = """\
kind: Greeting
key: id
properties:
- column: author
- column: written
  property: date
  type: datetime
  required: true
- column: stars
  type: int
- column: score
  type: float
- column: public
  type: bool
- column: body
  type: text
- column: day
  type: date
- column: avatar
  type: bytes
"""


@pytest.fixture
def mapping(tmp_path: pathlib.Path) -> bulkload.Mapping:
    path = tmp_path / "map.yaml"
    path.write_text(YAML)
    return bulkload.load_mapping(path)


ROW = {"id": "g1", "author": "ann", "written": "2026-11-25T10:00:00", "stars": "5", "score": "4.5",
       "public": "yes", "body": "long text", "day": "2026-11-24", "avatar": "aGk="}


def test_a_row_becomes_an_entity_with_typed_properties(mapping):
    e = bulkload.to_entity(mapping, dict(ROW), "app", "ns")
    assert (e.key.partition_id.app_id, e.key.partition_id.namespace) == ("app", "ns")
    assert [(p.kind, p.name) for p in e.key.path] == [("Greeting", "g1")]
    assert e.properties["author"].string_value == "ann"
    assert e.properties["date"].timestamp_value.ToDatetime(datetime.timezone.utc) == \
        datetime.datetime(2026, 11, 25, 10, tzinfo=datetime.timezone.utc)
    assert e.properties["stars"].integer_value == 5
    assert e.properties["score"].double_value == 4.5
    assert e.properties["public"].boolean_value is True
    assert e.properties["body"].meaning == pb.MEANING_TEXT and e.properties["body"].exclude_from_indexes
    assert e.properties["day"].meaning == pb.MEANING_DATE
    assert e.properties["avatar"].blob_value == b"hi"


def test_an_empty_cell_is_none_unless_required(mapping):
    e = bulkload.to_entity(mapping, {**ROW, "stars": ""}, "app", "")
    assert e.properties["stars"].WhichOneof("value_type") == "null_value"
    with pytest.raises(RowError, match="written: required"):
        bulkload.to_entity(mapping, {**ROW, "written": ""}, "app", "")


@pytest.mark.parametrize("column, text, reason", [
    ("stars", "five", "not an integer"), ("score", "x", "not a number"), ("public", "maybe", "not a boolean"),
    ("written", "yesterday", "not an ISO 8601 datetime"), ("day", "2026-13-01", "not an ISO 8601 date"),
    ("avatar", "***", "not base64"), ("stars", str(2 ** 63), "64 bits"), ("id", "", "key column is empty"),
])
def test_a_bad_cell_rejects_the_row_naming_the_column(mapping, column, text, reason):
    with pytest.raises(RowError) as info:
        bulkload.to_entity(mapping, {**ROW, column: text}, "app", "")
    assert str(info.value).startswith(f"{column}:") and reason in str(info.value)


def test_a_row_with_too_many_or_too_few_cells_is_rejected(mapping):
    with pytest.raises(RowError, match="more cells"):
        bulkload.to_entity(mapping, {**ROW, None: ["extra"]}, "app", "")  # type: ignore[dict-item]
    with pytest.raises(RowError, match="fewer cells"):
        bulkload.to_entity(mapping, {**ROW, "avatar": None}, "app", "")


def test_an_entity_turns_back_into_the_same_cells(mapping):
    e = bulkload.to_entity(mapping, dict(ROW), "app", "")
    assert bulkload.to_row(mapping, e) == ["g1", "ann", "2026-11-25T10:00:00+00:00", "5", "4.5", "true",
                                           "long text", "2026-11-24", "aGk="]


def test_integer_keys_must_be_positive_ids(tmp_path):
    path = tmp_path / "m.yaml"
    path.write_text("kind: K\nkey: n\nkey_type: int\nproperties:\n- column: a\n")
    m = bulkload.load_mapping(path)
    assert bulkload.to_entity(m, {"n": "42", "a": "x"}, "app", "").key.path[0].id == 42
    with pytest.raises(RowError, match="positive"):
        bulkload.to_entity(m, {"n": "0", "a": "x"}, "app", "")


@pytest.mark.parametrize("text, message", [
    ("kind: K\nproperties:\n- column: a\n  type: decimal\n", "type 'decimal'"),
    ("kind: K\nproperties: []\n", "properties must be a list"),
    ("properties:\n- column: a\n", "no kind"),
    ("kind: K\nproperties:\n- column: a\n- column: b\n  property: a\n", "same property"),
    ("kind: K\ncolumns: []\nproperties:\n- column: a\n", "unknown field"),
])
def test_bad_mappings_are_refused_with_the_reason(tmp_path, text, message):
    path = tmp_path / "m.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=message):
        bulkload.load_mapping(path)


def test_a_python_mapping_uses_types_and_functions(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("import datetime\nkind = 'Sale'\nkey = 'sku'\n"
                    "properties = {'price': float, 'when': datetime.datetime, 'tags': lambda s: s.upper()}\n")
    m = bulkload.load_mapping(path)
    e = bulkload.to_entity(m, {"sku": "a1", "price": "9.5", "when": "2026-01-02T03:04:05", "tags": "red"}, "app", "")
    assert (e.key.path[0].name, e.properties["price"].double_value, e.properties["tags"].string_value) == \
        ("a1", 9.5, "RED")


def test_a_python_mapping_function_that_fails_rejects_the_row(tmp_path):
    path = tmp_path / "m.py"
    path.write_text("kind = 'K'\nproperties = {'n': lambda s: int(s) * 2}\n")
    with pytest.raises(RowError, match="^n: invalid literal"):
        bulkload.to_entity(bulkload.load_mapping(path), {"n": "x"}, "app", "")
