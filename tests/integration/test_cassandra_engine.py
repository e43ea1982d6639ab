"""The Cassandra engine's crash recovery, driven in-process against a real node."""

from __future__ import annotations

import uuid

import pytest

from datastore_svc import index
from datastore_svc.engine import cassandra
from datastore_svc.engine.base import GroupCommit, Write
from datastore_svc.keys import PREFIX_END, encode_element, encode_path
from kiln.pb.datastore.v1 import datastore_pb2 as pb
from kiln_platform.config import StorageConfig, load

pytestmark = pytest.mark.cassandra


@pytest.fixture
async def engine(cassandra_hosts):
    settings = load(StorageConfig, prefix="TEST", argv=["--storage", "cassandra", "--cassandra-hosts", cassandra_hosts,
                                                        "--cassandra-keyspace", "kiln_engine_test"])
    eng = await cassandra.create(settings, index_shards=2)
    yield eng
    await eng.close()


class Crash(Exception):
    """Stands for the process dying between the group's commit and its index writes."""


async def test_sweeper_finishes_the_index_writes_of_a_commit_interrupted_after_its_batch(engine, monkeypatch):
    app = "sweep" + uuid.uuid4().hex[:8]
    entity = pb.Entity(key=pb.Key(path=[pb.PathElement(kind="K", name="a")]))
    entity.properties["v"].integer_value = 7
    indexer = index.Indexer()
    write = Write(encode_path(entity.key.path), "K", entity.SerializeToString(), frozenset(indexer.rows(entity)))
    commit = GroupCommit(encode_element(entity.key.path[0]), (write,))

    real = engine._apply_changes

    async def crash(*args, **kwargs):
        raise Crash()

    monkeypatch.setattr(engine, "_apply_changes", crash)
    with pytest.raises(Crash):
        await engine.commit(app, "", [commit], lambda blob: frozenset(), atomic=False)
    monkeypatch.setattr(engine, "_apply_changes", real)

    kind_idx = index.kind_idx("K")
    assert await engine.get(app, "", [cassandra.Ref(commit.group, write.path)]) == [write.entity]
    assert await engine.scan_index(app, "", kind_idx, b"", PREFIX_END, 10) == []
    assert await engine.sweep_once(older_than=0) >= 1
    assert await engine.scan_index(app, "", kind_idx, b"", PREFIX_END, 10) == [(write.path, write.path)]
    prop_rows = await engine.scan_index(app, "", index.prop_idx("K", "v", False), b"", PREFIX_END, 10)
    assert [path for _, path in prop_rows] == [write.path]


async def test_index_scan_merges_every_shard_in_order(engine):
    app = "shards" + uuid.uuid4().hex[:8]
    indexer = index.Indexer()
    commits = []
    for i in range(20):
        entity = pb.Entity(key=pb.Key(path=[pb.PathElement(kind="K", id=i + 1)]))
        commits.append(GroupCommit(encode_element(entity.key.path[0]), (
            Write(encode_path(entity.key.path), "K", entity.SerializeToString(), frozenset(indexer.rows(entity))),)))
    await engine.commit(app, "", commits, lambda blob: frozenset(), atomic=False)
    rows = await engine.scan_index(app, "", index.kind_idx("K"), b"", PREFIX_END, 100)
    assert [r for r, _ in rows] == sorted(c.writes[0].path for c in commits)
    assert len(await engine.scan_index(app, "", index.kind_idx("K"), b"", PREFIX_END, 7)) == 7
