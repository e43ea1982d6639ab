"""The pure rules of the datastore's outbox of transactional tasks (``datastore_svc/outbox.py``): at most five tasks,
each named so that adding it twice is harmless; the outbox and hint groups can never be an app's entity group, and
a stored record can never be taken for an entity."""

from __future__ import annotations

import pytest

from datastore_svc import outbox
from datastore_svc.keys import encode_element, encode_path
from kiln.errors import BadRequestError
from kiln.pb.datastore.v1 import datastore_pb2 as dpb
from kiln.pb.taskqueue.v1 import taskqueue_pb2 as tq


@pytest.mark.parametrize("count", [6, 7, 100])
def test_more_than_five_tasks_are_refused_with_app_engines_message(count):
    with pytest.raises(BadRequestError, match="Too many messages, maximum allowed 5"):
        outbox.check_tasks([tq.Task(url=f"/t/{i}") for i in range(count)])


@pytest.mark.parametrize("count", [0, 1, 5])
def test_up_to_five_tasks_are_kept_each_with_a_name(count):
    given = [tq.Task(url=f"/t/{i}", name="kept" if i == 0 else "") for i in range(count)]
    checked = outbox.check_tasks(given)
    assert [t.url for t in checked] == [t.url for t in given]
    assert all(t.name for t in checked) and len({t.name for t in checked}) == count
    if count:
        assert checked[0].name == "kept"
    assert [t.name for t in given[1:]] == [""] * (count - 1)  # the request's own tasks are not changed


ELEMENTS = [dpb.PathElement(kind="Thing", id=1), dpb.PathElement(kind="Thing", name="x"),
            dpb.PathElement(kind="ÿ", name="ÿÿ"), dpb.PathElement(kind="\x00", name="\x00\x01"),
            dpb.PathElement(kind="K", id=2**62), dpb.PathElement(kind="_AE_PendingCloudTask", id=2**63 - 1)]


@pytest.mark.parametrize("element", ELEMENTS, ids=lambda e: repr(e.kind))
def test_no_entity_group_of_a_real_key_is_an_outbox_or_hint_group(element):
    group = encode_element(element)
    assert group[:1] != b"\xff"
    for transaction in (b"\x00" * 16, b"\xff" * 16, bytes(range(16))):
        assert outbox.outbox_group(transaction)[:1] == b"\xff"
        assert outbox._hint_ref(transaction).group[:1] == b"\xff"


@pytest.mark.parametrize("element", ELEMENTS, ids=lambda e: repr(e.kind))
def test_a_stored_entity_is_never_taken_for_a_task_record(element):
    entity = dpb.Entity(key=dpb.Key(path=[element]))
    entity.properties["p"].string_value = "\xffkiln-tasks"
    assert not outbox.is_record(entity.SerializeToString(deterministic=True))
    assert not outbox.is_record(dpb.Entity().SerializeToString())


def test_a_task_record_is_one_write_of_a_new_group_with_no_index_rows():
    record = dpb.TransactionTasks(app_id="app", transaction=b"\x01" * 16, tasks=[tq.Task(name="a")])
    commit = outbox.record_commit(record)
    assert commit.expected_version == 0 and commit.group == outbox.outbox_group(record.transaction)
    [write] = commit.writes
    assert write.rows == frozenset() and write.entity is not None and outbox.is_record(write.entity)
    assert dpb.TransactionTasks.FromString(write.entity[len(outbox.RECORD_MARK):]) == record
    assert outbox.no_rows(write.entity) == frozenset()
    assert encode_path([dpb.PathElement(kind="app", name="x")]) < write.path  # sorts after every real key
