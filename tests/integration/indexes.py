"""Declaring an app's composite indexes in tests, as ``kiln deploy`` does with index.yaml, and waiting until they
serve (the one copy the datastore tests share)."""

from __future__ import annotations

import time
from collections.abc import Sequence

from kiln.pb.datastore.v1 import datastore_pb2 as pb
from kiln.pb.datastore.v1 import datastore_pb2_grpc

IndexDef = tuple[str, bool, Sequence[str]]  # kind, ancestor, properties ("-name" for descending)


def declare(stub: datastore_pb2_grpc.DatastoreServiceStub, metadata: tuple[tuple[str, str], ...],
            *defs: IndexDef, remove_unlisted: bool = False) -> None:
    """Send ``defs`` with UpdateIndexes; return once every listed index is SERVING (fail after 30 s)."""
    req = pb.UpdateIndexesRequest(remove_unlisted=remove_unlisted)
    for kind, ancestor, props in defs:
        index = req.indexes.add(kind=kind, ancestor=ancestor)
        for name in props:
            index.properties.add(property=pb.PropertyReference(name=name.lstrip("-")),
                                 direction=pb.PropertyOrder.DIRECTION_DESCENDING if name.startswith("-")
                                 else pb.PropertyOrder.DIRECTION_ASCENDING)
    stub.UpdateIndexes(req, metadata=metadata)
    deadline = time.monotonic() + 30
    states: list[int] = []
    while time.monotonic() < deadline:
        states = [i.state for i in stub.ListIndexes(pb.ListIndexesRequest(), metadata=metadata).indexes]
        if len(states) == len(defs) and all(s == pb.CompositeIndex.STATE_SERVING for s in states):
            return
        time.sleep(0.05)  # indexes are built in the background: their state is polled, with the deadline above
    raise AssertionError(f"indexes did not become SERVING: {states}")
