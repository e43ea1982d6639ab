"""``kiln dev --datastore-consistency``: App Engine's eventual consistency for non-ancestor queries, in the embedded
engine (``datastore_svc --consistency``), as Google's stub models it (PseudoRandomHRConsistencyPolicy)."""

from __future__ import annotations

import pytest

from kiln_platform.supervisor import python_module
from tests.integration.conftest import service_env
from tests.integration.sdkds import gae_sdk, start_app  # noqa: F401 - fixtures

pytestmark = pytest.mark.nats


@pytest.fixture(scope="module")
def eventual_datastore_addr(supervisor, tmp_path_factory):
    """A datastore whose commits never reach non-ancestor queries by themselves (consistency 0)."""
    ready = supervisor.run_dir / "datastore_eventual.addr"
    child = supervisor.start("datastore_svc-eventual", python_module(
        "datastore_svc", "--listen", "127.0.0.1:0", "--ready-file", str(ready),
        "--data-dir", str(tmp_path_factory.mktemp("eventual")), "--consistency", "0"),
        env=service_env(), ready_file=ready)
    return child.address


@pytest.fixture
def sdk(gae_sdk, eventual_datastore_addr, grpc_services, monkeypatch):  # noqa: F811
    return start_app(gae_sdk, eventual_datastore_addr, grpc_services["memcache"], monkeypatch)


def test_with_consistency_0_a_global_query_misses_a_fresh_put_that_an_ancestor_query_and_a_get_see(sdk):
    from tests.integration import sdk_models as m

    ndb = sdk.ndb
    parent = ndb.Key("Root", "r")
    key = m.Item(parent=parent, id="fresh", name="fresh", n=1).put()
    assert m.Item.query(m.Item.n == 1).fetch() == []
    assert m.Item.query().fetch(keys_only=True) == []
    assert [e.key for e in m.Item.query(ancestor=parent)] == [key]
    assert key.get(use_cache=False, use_memcache=False).name == "fresh"


def test_a_get_applies_the_groups_writes_to_later_global_queries(sdk):
    from tests.integration import sdk_models as m

    key = m.Item(id="seen", name="seen", n=2).put()
    assert m.Item.query(m.Item.n == 2).fetch(keys_only=True) == []
    assert key.get(use_cache=False, use_memcache=False) is not None
    assert m.Item.query(m.Item.n == 2).fetch(keys_only=True) == [key]


def test_a_global_query_sees_the_applied_version_until_the_group_is_read(sdk):
    from tests.integration import sdk_models as m

    key = m.Item(id="v", name="old", n=3).put()
    key.get(use_cache=False, use_memcache=False)  # applied
    m.Item(id="v", name="new", n=4).put()  # queued
    assert [e.name for e in m.Item.query(m.Item.n == 3)] == ["old"]
    assert m.Item.query(m.Item.n == 4).fetch() == []
    assert key.get(use_cache=False, use_memcache=False).name == "new"
    assert [e.name for e in m.Item.query(m.Item.n == 4)] == ["new"]
    assert m.Item.query(m.Item.n == 3).fetch() == []
