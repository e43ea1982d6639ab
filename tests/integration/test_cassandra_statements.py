"""The CQL statements and round trips each datastore operation costs on the Cassandra engine.

A counting wrapper around the engine's keyspace (kiln's own code) records every statement an operation
sends and its depth: one more than the deepest statement that had finished before it started, so the
largest depth is the number of sequential round trips. These counts are facts of the code, not timings.
"""

from __future__ import annotations

import asyncio
import collections
import dataclasses
import re
import uuid
from collections.abc import Iterator
from typing import Any

import pytest

from datastore_svc import execute, index, query
from datastore_svc.engine import cassandra
from datastore_svc.engine.base import GroupCommit, Write
from datastore_svc.keys import encode_element, encode_path
from datastore_svc.service import DatastoreService
from kiln.pb.datastore.v1 import datastore_pb2 as pb
from kiln_platform import grpcserver
from kiln_platform.config import StorageConfig, load

pytestmark = pytest.mark.cassandra

INDEXER = index.Indexer()


def _label(cql: str) -> str:
    """``SELECT entities``, ``UPDATE entities IF``, ``INSERT index_rows``…: verb, table, conditional."""
    verb = cql.split()[0].upper()
    table = re.search(r"(?:FROM|INTO|UPDATE)\s+\w+\.(\w+)", cql, re.IGNORECASE)
    conditional = " IF" if re.search(r"\bIF\s+(?!NOT EXISTS\b)\w+\s*=|\bIF NOT EXISTS\b", cql) else ""
    return f"{verb} {table.group(1) if table else '?'}{conditional}"


class Recorder:
    """Wraps ``engine``'s keyspace: the statements sent, each with its round-trip depth."""

    def __init__(self, engine: cassandra.CassandraEngine) -> None:
        self.sent: list[tuple[str, int]] = []
        self._finished_depth = 0
        keyspace = engine._keyspace
        # Batches carry their statements' ids only: map them back to the engine's prepared statements.
        self._prepared = {stmt.query_id: stmt.query_string for stmt in vars(engine).values()
                          if hasattr(stmt, "query_id")}
        real_execute = keyspace.execute

        async def counted(statement: Any, params: Any = None, **kwargs: Any) -> list[Any]:
            depth = self._finished_depth + 1
            self.sent.append((self._describe(statement), depth))
            try:
                return await real_execute(statement, params, **kwargs)
            finally:
                self._finished_depth = max(self._finished_depth, depth)

        keyspace.execute = counted  # type: ignore[method-assign]

    def _describe(self, statement: Any) -> str:
        if hasattr(statement, "_statements_and_parameters"):
            inner = sorted(_label(self._prepared[query_id]) for _, query_id, _ in statement._statements_and_parameters)
            return "BATCH[" + ", ".join(inner) + "]"
        return _label(statement.query_string)

    def start(self) -> None:
        self.sent.clear()
        self._finished_depth = 0

    @property
    def statements(self) -> collections.Counter[str]:
        return collections.Counter(label for label, _ in self.sent)

    @property
    def round_trips(self) -> int:
        """Sequential round trips of the statements that have finished (work left running is not counted)."""
        return self._finished_depth


@pytest.fixture
async def engine(cassandra_hosts: str) -> Any:
    settings = load(StorageConfig, prefix="TEST", argv=["--storage", "cassandra", "--cassandra-hosts", cassandra_hosts,
                                                        "--cassandra-keyspace", "kiln_count_test"])
    eng = await cassandra.create(settings, index_shards=2)
    yield eng
    await eng.close()


@pytest.fixture
def recorder(engine: cassandra.CassandraEngine) -> Iterator[Recorder]:
    yield Recorder(engine)


def _entity(name: str, n: int) -> pb.Entity:
    e = pb.Entity(key=pb.Key(path=[pb.PathElement(kind="Bench", name=name)]))
    e.properties["n"].integer_value = n
    e.properties["owner"].string_value = f"user{n % 10}"
    e.properties["body"].string_value = "x" * 900
    e.properties["body"].exclude_from_indexes = True
    return e


def _commit(entity: pb.Entity) -> GroupCommit:
    write = Write(encode_path(entity.key.path), entity.key.path[-1].kind, entity.SerializeToString(),
                  frozenset(INDEXER.rows(entity)))
    return GroupCommit(encode_element(entity.key.path[0]), (write,))


def _rows_of(blob: bytes) -> frozenset[index.IndexRow]:
    return frozenset(INDEXER.rows(pb.Entity.FromString(blob)))


async def _put(engine: cassandra.CassandraEngine, app: str, entity: pb.Entity) -> None:
    await engine.commit(app, "", [_commit(entity)], _rows_of, atomic=False)


async def _settled(engine: cassandra.CassandraEngine) -> None:
    """Let work the engine left off the response path finish, so it is not counted in the next operation."""
    await engine.drain()


# Index rows of one Bench entity: the kind index and two directions of each of ``n`` and ``owner``.
BENCH_INDEX_ROWS = 5


async def test_a_get_by_key_is_one_read(engine: cassandra.CassandraEngine, recorder: Recorder) -> None:
    app = "count" + uuid.uuid4().hex[:8]
    entity = _entity("a", 1)
    await _put(engine, app, entity)
    await _settled(engine)
    recorder.start()
    commit = _commit(entity)
    assert await engine.get(app, "", [cassandra.Ref(commit.group, commit.writes[0].path)]) == [
        commit.writes[0].entity]
    assert recorder.statements == {"SELECT entities": 1}
    assert recorder.round_trips == 1


async def test_a_put_of_a_new_entity_reads_the_group_state_only(engine: cassandra.CassandraEngine,
                                                                 recorder: Recorder) -> None:
    app = "count" + uuid.uuid4().hex[:8]
    await _put(engine, app, _entity("first", 1))  # the app's namespace and properties are noted once
    await _settled(engine)
    recorder.start()
    await _put(engine, app, _entity("new", 1))
    # The group state read and the recovery hint go together; then the Paxos batch; then the index rows in
    # one unlogged batch. No read of a previous version: the group was never written.
    assert recorder.round_trips == 3
    await _settled(engine)
    # Off the response path, the hint is marked done (a TTL'd cell, no tombstone).
    assert recorder.statements == {
        "SELECT entities": 1,
        "INSERT commit_hints": 1,
        "BATCH[INSERT entities, UPDATE entities IF]": 1,
        "BATCH[" + ", ".join(["INSERT index_rows"] * BENCH_INDEX_ROWS) + "]": 1,
        "UPDATE commit_hints": 1,
    }


async def test_a_put_of_an_entity_whose_id_it_allocated_reads_no_group_state(engine: cassandra.CassandraEngine,
                                                                             recorder: Recorder) -> None:
    app = "count" + uuid.uuid4().hex[:8]
    service = DatastoreService(engine)
    token = grpcserver._caller.set(app)
    try:
        first, new = _entity("ignored", 1), _entity("ignored", 1)
        for e in (first, new):
            e.key.path[0].ClearField("name")  # incomplete: the Put allocates its id
        await service.Put(pb.PutRequest(entities=[first]), None)  # type: ignore[arg-type]  # the app's counter
        await _settled(engine)
        recorder.start()
        resp = await service.Put(pb.PutRequest(entities=[new]), None)  # type: ignore[arg-type]
        await _settled(engine)
    finally:
        grpcserver._caller.reset(token)
        await service.close()
    # The id is allocated by one conditional update of the app's counter (its value is known here from the first
    # Put); the new group is known to have no commit, so no state is read: the hint, the Paxos batch, the index
    # rows.
    assert recorder.statements == {
        "UPDATE id_counters IF": 1,
        "INSERT commit_hints": 1,
        "BATCH[INSERT entities, UPDATE entities IF]": 1,
        "BATCH[" + ", ".join(["INSERT index_rows"] * BENCH_INDEX_ROWS) + "]": 1,
        "UPDATE commit_hints": 1,
    }
    key = resp.keys[0]
    stored = await engine.get(app, "", [cassandra.Ref(encode_element(key.path[0]), encode_path(key.path))])
    assert stored[0] is not None and pb.Entity.FromString(stored[0]).properties["n"].integer_value == 1


async def test_ids_allocated_by_two_processes_in_turn_never_overlap_and_need_no_read_of_the_counter(
        engine: cassandra.CassandraEngine, cassandra_hosts: str) -> None:
    app = "count" + uuid.uuid4().hex[:8]
    other = await _other_engine(cassandra_hosts)
    try:
        ranges = []
        for turn in range(6):
            allocator = engine if turn % 2 == 0 else other
            recorder = Recorder(allocator)
            start = await allocator.allocate_ids(app, 10)
            ranges.append(range(start, start + 10))
            if turn >= 2:
                # Each process remembers the counter as it left it; the other moved it since, so the first
                # conditional update is refused and returns the current value, which the second one uses.
                assert recorder.statements == {"UPDATE id_counters IF": 2}
        ids = [i for r in ranges for i in r]
        assert len(set(ids)) == len(ids) == 60
        assert await engine.allocate_ids(app, 1) == 61
    finally:
        await other.close()


async def test_concurrent_id_allocations_of_one_app_take_turns_instead_of_refusing_each_other(
        engine: cassandra.CassandraEngine, recorder: Recorder) -> None:
    app = "count" + uuid.uuid4().hex[:8]
    await engine.allocate_ids(app, 1)  # the app's counter exists and its value is known here
    recorder.start()
    starts = await asyncio.gather(*(engine.allocate_ids(app, 5) for _ in range(32)))
    ids = [i for start in starts for i in range(start, start + 5)]
    assert sorted(ids) == list(range(2, 2 + 32 * 5))
    # One conditional update each, none refused: 32 at once on one counter would refuse each other's Paxos rounds.
    assert recorder.statements == {"UPDATE id_counters IF": 32}


async def test_a_fresh_groups_commit_to_a_group_already_written_retries_with_a_read_and_replaces_its_index_rows(
        engine: cassandra.CassandraEngine, recorder: Recorder) -> None:
    app = "count" + uuid.uuid4().hex[:8]
    await _put(engine, app, _entity("taken", 1))
    await _settled(engine)
    recorder.start()
    wrong = dataclasses.replace(_commit(_entity("taken", 2)), fresh=True)  # a wrong guess: the group has a commit
    await engine.commit(app, "", [wrong], _rows_of, atomic=False)
    await _settled(engine)
    # The guessed batch (IF gv = null) is not applied; the retry reads the group and commits on its version,
    # replacing the first commit's index rows of n and owner.
    assert recorder.statements["BATCH[INSERT entities, UPDATE entities IF]"] == 2
    assert recorder.statements["BATCH[" + ", ".join(["DELETE index_rows"] * 4 + ["INSERT index_rows"] * 4) + "]"] == 1
    assert await engine.group_versions(app, "", [wrong.group]) == [2]
    assert await engine.get(app, "", [cassandra.Ref(wrong.group, wrong.writes[0].path)]) == [wrong.writes[0].entity]


async def test_a_put_of_an_existing_entity_reads_its_group_and_old_version_in_one_statement(
        engine: cassandra.CassandraEngine, recorder: Recorder) -> None:
    app = "count" + uuid.uuid4().hex[:8]
    await _put(engine, app, _entity("old", 1))
    await _settled(engine)
    recorder.start()
    await _put(engine, app, _entity("old", 2))
    assert recorder.round_trips == 3
    await _settled(engine)
    # n and owner change: two rows out and two in for each. The previous commit's index changes were
    # written by this process, so they are not redone.
    assert recorder.statements == {
        "SELECT entities": 1,
        "INSERT commit_hints": 1,
        "BATCH[INSERT entities, UPDATE entities IF]": 1,
        "BATCH[" + ", ".join(["DELETE index_rows"] * 4 + ["INSERT index_rows"] * 4) + "]": 1,
        "UPDATE commit_hints": 1,
    }


async def test_a_put_redoes_the_last_commits_index_changes_written_by_another_process(
        engine: cassandra.CassandraEngine, cassandra_hosts: str) -> None:
    app = "count" + uuid.uuid4().hex[:8]
    await _put(engine, app, _entity("shared", 1))
    await _settled(engine)
    other = await _other_engine(cassandra_hosts)
    try:
        recorder = Recorder(other)
        await _put(other, app, _entity("shared", 2))
        await other.drain()
        # The group's last commit is not known to have finished here: its 5 rows are written again first.
        assert recorder.statements["BATCH[" + ", ".join(["INSERT index_rows"] * BENCH_INDEX_ROWS) + "]"] == 1
    finally:
        await other.close()


async def _other_engine(cassandra_hosts: str) -> cassandra.CassandraEngine:
    settings = load(StorageConfig, prefix="TEST", argv=["--storage", "cassandra", "--cassandra-hosts", cassandra_hosts,
                                                        "--cassandra-keyspace", "kiln_count_test"])
    return await cassandra.create(settings, index_shards=2)


async def test_a_100_entity_query_reads_the_index_then_the_entities_in_one_round_trip(
        engine: cassandra.CassandraEngine, recorder: Recorder) -> None:
    app = "count" + uuid.uuid4().hex[:8]
    await asyncio.gather(*(_put(engine, app, _entity(f"q{i}", i)) for i in range(120)))
    await _settled(engine)
    q = pb.Query(kind="Bench", limit=100)
    q.filter.property_filter.property.name = "n"
    q.filter.property_filter.op = pb.PropertyFilter.OPERATOR_GREATER_THAN_OR_EQUAL
    q.filter.property_filter.value.integer_value = 0
    q.order.add(property=pb.PropertyReference(name="n"), direction=pb.PropertyOrder.DIRECTION_ASCENDING)
    norm = query.normalize(q, "", app)
    plans = [query.choose(s, engine, app, "", [], []) for s in norm.subs]
    recorder.start()
    batch = await execute.run(engine, app, "", norm, plans, start=None, end=None, offset=0, want=100)
    assert [e.properties["n"].integer_value for e, _ in batch.results] == list(range(100))
    # One slice per index shard (2), then the 100 entities in IN reads of at most cassandra.GET_IN_SIZE keys.
    assert recorder.statements == {"SELECT index_rows": 2,
                                   "SELECT entities": -(-100 // cassandra.GET_IN_SIZE)}
    assert recorder.round_trips == 2

