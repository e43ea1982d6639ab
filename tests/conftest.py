"""How the suite is split between pytest-xdist's workers (``-n 3 --dist loadgroup``, as ``.ci/run`` runs it).

Each test module runs whole on one worker, so its module-scoped fixtures (a ``kiln dev``, a Chromium) start once, as
without xdist. Every module that uses Cassandra runs on the same worker, one after another: they share the session's
node and some of its keyspaces (``kiln dev --storage cassandra`` clears its own with ``--clear-datastore``), which
modules running side by side would tread on. Everything else a module starts (nats-servers, services, ``kiln dev``,
Chromium) is on free ports and in its own temporary directories, so modules on different workers do not meet.
"""

from __future__ import annotations

import pytest
from _pytest.nodeid import NodeId  # pytest 9's node ids (see below)

CASSANDRA_GROUP = "cassandra"
_CASSANDRA_FIXTURES = frozenset({"cassandra_hosts", "datastore_cassandra_addr"})


def _uses_cassandra(item: pytest.Item) -> bool:
    return (item.get_closest_marker("cassandra") is not None
            or not _CASSANDRA_FIXTURES.isdisjoint(getattr(item, "fixturenames", ())))


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Each test's group, as ``--dist loadgroup`` reads it: the ``@group`` suffix of its node id."""
    if not getattr(config.option, "loadgroup", False):  # xdist sets it on its workers (the only ones collecting)
        return
    cassandra_modules = {item.nodeid.split("::", 1)[0] for item in items if _uses_cassandra(item)}
    for item in items:
        module = item.nodeid.split("::", 1)[0]
        # What pytest-xdist 3.8 does for an xdist_group mark, done here: it sets item._nodeid, which pytest 9 no
        # longer reads (a node's id is its NodeId, item._id), so its marks would leave every test a group of one.
        item._id = NodeId.parse(f"{item.nodeid}@{CASSANDRA_GROUP if module in cassandra_modules else module}")
