"""The Cassandra engine's crash recovery, driven in-process against a real node."""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid

import pytest

from datastore_svc import index
from datastore_svc.engine import cassandra
from datastore_svc.engine.base import GroupCommit, Write
from datastore_svc.keys import PREFIX_END, encode_element, encode_path
from kiln.pb.datastore.v1 import datastore_pb2 as pb
from kiln_platform.cassandra import drop_keyspace
from kiln_platform.config import StorageConfig, load

pytestmark = pytest.mark.cassandra


async def _engine(cassandra_hosts, keyspace="kiln_engine_test"):
    settings = load(StorageConfig, prefix="TEST", argv=["--storage", "cassandra", "--cassandra-hosts", cassandra_hosts,
                                                        "--cassandra-keyspace", keyspace])
    return await cassandra.create(settings, index_shards=2)


@pytest.fixture
async def engine(cassandra_hosts):
    eng = await _engine(cassandra_hosts)
    yield eng
    await eng.close()


def _bench_commit(name="a"):
    entity = pb.Entity(key=pb.Key(path=[pb.PathElement(kind="K", name=name)]))
    entity.properties["v"].integer_value = 7
    write = Write(encode_path(entity.key.path), "K", entity.SerializeToString(), frozenset(index.Indexer().rows(entity)))
    return GroupCommit(encode_element(entity.key.path[0]), (write,))


async def _commit_crashing_after_batch(engine, monkeypatch, app, commit):
    """Commit, with the process 'dying' after the group's conditional batch, before any index row."""
    async def crash(*args, **kwargs):
        raise Crash()

    with monkeypatch.context() as patch:
        patch.setattr(engine, "_apply_changes", crash)
        with pytest.raises(Crash):
            await engine.commit(app, "", [commit], lambda blob: frozenset(), atomic=False)


async def _hint_rows(engine, app):
    """The app's commit hints as (done,) in the buckets of the last minute."""
    ks = engine._keyspace
    now = int(time.time() // cassandra._HINT_BUCKET_SECONDS)
    rows = []
    for bucket in range(now - 6, now + 1):
        rows += [r for r in await ks.execute(engine._hint_read, (bucket,)) if r.app == app]
    return rows


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


async def test_a_restarted_process_finishes_a_crashed_commit_at_its_first_sweep(engine, monkeypatch, cassandra_hosts):
    app = "restart" + uuid.uuid4().hex[:8]
    commit = _bench_commit()
    await _commit_crashing_after_batch(engine, monkeypatch, app, commit)
    restarted = await _engine(cassandra_hosts)
    try:
        # The hint is younger than the sweeper's grace period, but older than the process: handled at once.
        assert await restarted.sweep_once() >= 1
        rows = await restarted.scan_index(app, "", index.kind_idx("K"), b"", PREFIX_END, 10)
        assert rows == [(commit.writes[0].path, commit.writes[0].path)]
        assert [r.done for r in await _hint_rows(restarted, app)] == [True]
    finally:
        await restarted.close()


async def test_a_finished_commit_marks_its_hint_done_instead_of_deleting_it(engine):
    app = "done" + uuid.uuid4().hex[:8]
    await engine.commit(app, "", [_bench_commit()], lambda blob: frozenset(), atomic=False)
    await engine.drain()
    assert [r.done for r in await _hint_rows(engine, app)] == [True]


async def test_the_sweeper_keeps_the_hint_of_a_commit_that_has_not_reached_its_batch(engine, monkeypatch):
    app = "early" + uuid.uuid4().hex[:8]
    commit = _bench_commit()

    async def batch_never_sent(statement, params=None):
        if hasattr(statement, "_statements_and_parameters"):
            raise Crash()
        return await real_exec(statement, params)

    real_exec = engine._exec
    with monkeypatch.context() as patch:
        patch.setattr(engine, "_exec", batch_never_sent)
        with pytest.raises(Crash):
            await engine.commit(app, "", [commit], lambda blob: frozenset(), atomic=False)
    await engine.sweep_once(older_than=0)
    # The group shows no commit since the hint: the commit may still be on its way, so the hint stays.
    hints = await _hint_rows(engine, app)
    assert [r.done for r in hints] == [None]
    assert engine._swept < int(cassandra._uuid1_seconds(hints[0].id) // cassandra._HINT_BUCKET_SECONDS)


async def test_the_sweeper_reads_each_closed_bucket_once_and_resumes_from_its_checkpoint(cassandra_hosts):
    keyspace = "kiln_sweep_" + uuid.uuid4().hex[:6]
    first = await _engine(cassandra_hosts, keyspace)
    try:
        await first.commit("sweep", "", [_bench_commit()], lambda blob: frozenset(), atomic=False)
        await first.drain()
        reads = []
        real = first._keyspace.execute

        async def counted(statement, params=None, **kwargs):
            if statement is first._hint_read:
                reads.append(params[0])
            return await real(statement, params, **kwargs)

        first._keyspace.execute = counted
        await first.sweep_once()
        horizon = cassandra._HINT_HORIZON_SECONDS // cassandra._HINT_BUCKET_SECONDS
        assert horizon <= len(reads) <= horizon + 2  # a new keyspace: the horizon, once
        swept = first._swept
        reads.clear()
        await first.sweep_once()
        # Only buckets after the checkpoint (the open ones, and any that closed meanwhile on a slow machine) are
        # read again: never the horizon.
        assert reads and min(reads) == swept + 1 and len(reads) < horizon // 2
        swept = first._swept  # the checkpoint this sweep stored
    finally:
        await first.close()
    restarted = await _engine(cassandra_hosts, keyspace)
    try:
        reads.clear()
        real2 = restarted._keyspace.execute

        async def counted2(statement, params=None, **kwargs):
            if statement is restarted._hint_read:
                reads.append(params[0])
            return await real2(statement, params, **kwargs)

        restarted._keyspace.execute = counted2
        await restarted.sweep_once()
        # A restarted process resumes from the stored checkpoint instead of the whole horizon.
        assert reads and min(reads) == swept + 1 and len(reads) < horizon // 2
    finally:
        await restarted.close()
        await asyncio.get_running_loop().run_in_executor(None, drop_keyspace, cassandra_hosts, keyspace)


async def test_an_index_scan_reads_on_in_the_shards_that_hold_most_of_the_first_rows(engine):
    app = "skew" + uuid.uuid4().hex[:8]
    idx = index.kind_idx("K")

    def path(i):
        return encode_path(pb.Key(path=[pb.PathElement(kind="K", id=i)]).path)

    def shard(p):
        return engine._shard(index.IndexRow(idx, p, p))

    # The 60 smallest paths all in shard 0, then 40 in shard 1: a 50-row scan cannot stop at each shard's share.
    ids = itertools.count(1)
    low = [p for p in (path(next(ids)) for _ in range(400)) if shard(p) == 0][:60]
    high = [p for p in (path(next(ids)) for _ in range(400)) if shard(p) == 1][:40]
    rows = [index.IndexRow(idx, p, p) for p in low + high]
    await engine.add_index_rows(app, "", rows)
    assert await engine.scan_index(app, "", idx, b"", PREFIX_END, 50) == [(p, p) for p in sorted(low)[:50]]
    every = sorted(low + high)
    assert await engine.scan_index(app, "", idx, b"", PREFIX_END, 100) == [(p, p) for p in every]
    assert await engine.scan_index(app, "", idx, every[30], PREFIX_END, 50) == [(p, p) for p in every[30:80]]
