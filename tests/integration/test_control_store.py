"""The control plane's stores on both engines: collecting files no version uses, beside deploys in progress —
the grace period for fresh uploads, and no version ever created naming a file a collection deleted."""

from __future__ import annotations

import asyncio
import hashlib
import uuid

import pytest

from deploy.control.store import EmbeddedStore, Store
from kiln.errors import FailedPreconditionError, NotFoundError
from kiln.pb.deploy.v1 import deploy_pb2 as pb
from kiln_platform.config import StorageConfig, load


@pytest.fixture(params=["embedded", pytest.param("cassandra", marks=pytest.mark.cassandra)])
def open_store(request, tmp_path):
    """A function that opens the engine's store (inside the test's event loop)."""
    async def embedded() -> Store:
        return EmbeddedStore(tmp_path / "control")

    async def cassandra() -> Store:
        from deploy.control.cassandra_store import CassandraStore
        store = CassandraStore(load(StorageConfig, prefix="TEST", argv=[
            "--storage", "cassandra", "--cassandra-hosts", request.getfixturevalue("cassandra_hosts"),
            "--cassandra-keyspace", "kiln_control_store_test"]))
        await store.open()
        return store
    if request.param == "cassandra":
        request.getfixturevalue("cassandra_hosts")  # started outside the test's event loop
    return embedded if request.param == "embedded" else cassandra


def app() -> str:
    return f"gc{uuid.uuid4().hex[:10]}"


async def put(store: Store, app_id: str, data: bytes) -> str:
    sha = hashlib.sha256(data).hexdigest()
    await store.put_blob(app_id, sha, data)
    return sha


def version(app_id: str, version_id: str, **files: str) -> pb.Version:
    return pb.Version(app_id=app_id, version_id=version_id, app_yaml="runtime: python311\n",
                      files=[pb.FileEntry(path=path, sha256=sha, size=1) for path, sha in files.items()])


async def readable(store: Store, app_id: str, sha: str) -> bool:
    try:
        return bool(b"".join([c async for c in store.read_blob(app_id, sha)]) or True)
    except NotFoundError:
        return False


def test_collecting_deletes_only_files_no_version_names(open_store):
    async def run() -> None:
        store = await open_store()
        a = app()
        shared, old, new = (await put(store, a, b"shared"), await put(store, a, b"old only"),
                            await put(store, a, b"new only"))
        await store.create_version(version(a, "v1", **{"main.py": shared, "old.txt": old}))
        await store.create_version(version(a, "v2", **{"main.py": shared, "new.txt": new}))
        await store.set_default(a, "v2")
        await store.delete_version(a, "v1")
        assert await store.collect_garbage(a, grace_seconds=0) == 1
        assert [await readable(store, a, h) for h in (shared, old, new)] == [True, False, True]
        assert await store.missing_blobs(a, [old]) == [old]
        await store.close()
    asyncio.run(run())


def test_a_fresh_upload_no_version_names_yet_survives_the_grace_period(open_store):
    async def run() -> None:
        store = await open_store()
        a = app()
        await store.create_version(version(a, "v1", **{"main.py": await put(store, a, b"kept")}))
        pending = await put(store, a, b"uploaded for a deploy in progress")
        assert await store.collect_garbage(a, grace_seconds=3600) == 0
        assert await readable(store, a, pending)
        await store.close()
    asyncio.run(run())


def test_collecting_one_app_leaves_other_apps_files(open_store):
    async def run() -> None:
        store = await open_store()
        a, b = app(), app()
        await store.create_version(version(a, "v1", **{"main.py": await put(store, a, b"a's")}))
        theirs = await put(store, b, b"b's unused")
        await store.collect_garbage(a, grace_seconds=0)
        assert await readable(store, b, theirs)
        await store.close()
    asyncio.run(run())


def test_a_version_is_never_created_naming_a_file_a_collection_deleted(open_store):
    """Deploys race collections: each round, an unused file is (maybe) collected while a version naming it is
    created. Either the version is refused as not uploaded, or it exists and its file is whole."""
    async def run() -> None:
        store = await open_store()
        a = app()
        await store.create_version(version(a, "base", **{"main.py": await put(store, a, b"base")}))
        outcomes = set()
        for round_ in range(20):
            orphan = await put(store, a, f"orphan {round_}".encode())  # stored, named by no version
            created, _ = await asyncio.gather(
                store.create_version(version(a, f"v{round_}", **{"f.txt": orphan})),
                store.collect_garbage(a, grace_seconds=0), return_exceptions=True)
            if isinstance(created, FailedPreconditionError):
                outcomes.add("refused")
                assert "f.txt" in str(created)
                continue
            assert isinstance(created, pb.Version), created
            outcomes.add("created")
            assert await readable(store, a, orphan), f"round {round_}: version created naming a deleted file"
        assert outcomes  # at least one round finished either way
        await store.close()
    asyncio.run(run())


def test_an_upload_racing_a_collection_of_the_same_content_survives(open_store):
    async def run() -> None:
        store = await open_store()
        a = app()
        await store.create_version(version(a, "base", **{"main.py": await put(store, a, b"base")}))
        for round_ in range(10):
            data = f"re-uploaded {round_}".encode()
            sha = await put(store, a, data)
            # The upload is made again (a deploy that found it missing) while a collection deletes the old one;
            # the deploy then creates its version, which must find the file whole.
            await asyncio.gather(store.put_blob(a, sha, data), store.collect_garbage(a, grace_seconds=0))
            try:
                await store.create_version(version(a, f"v{round_}", **{"f.txt": sha}))
            except FailedPreconditionError:
                continue  # the collection ran after the upload finished: refused, not broken
            assert b"".join([c async for c in store.read_blob(a, sha)]) == data
        await store.close()
    asyncio.run(run())
