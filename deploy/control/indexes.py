"""A deployed version's ``index.yaml``, declared to the datastore as ``appcfg update`` did.

When a version is created, the control plane declares the indexes its ``index.yaml`` lists to ``datastore_svc``
(``UpdateIndexes`` as the app, with an app token it mints with the service secret): new indexes are built in the
background for the existing entities, none is deleted (``kiln indexes vacuum`` does that, on purpose). It waits a
few seconds for the new ones to serve, so that a version promoted in the same deploy finds them ready when the app
has little data, and reports which serve and which still build. A datastore that refuses or cannot be reached does
not fail the deploy: the report says why, and ``kiln indexes update`` applies the file later.
"""

from __future__ import annotations

import asyncio
import logging
import time

import grpc

from kiln.api import _rpc
from kiln.errors import KilnError
from kiln.pb.datastore.v1 import datastore_pb2 as dpb
from kiln.pb.datastore.v1 import datastore_pb2_grpc
from kiln.pb.deploy.v1 import deploy_pb2 as pb
from kiln_platform import auth, indexyaml

log = logging.getLogger(__name__)

SERVE_WAIT_SECONDS = 10.0  # how long a deploy waits for new indexes to serve
CALL_TIMEOUT_SECONDS = 30.0
_TOKEN_SECONDS = 300


class IndexApplier:
    """Declares versions' ``index.yaml`` to the datastore at ``address`` (module docstring)."""

    def __init__(self, address: str, service_secret: str, *, serve_wait: float = SERVE_WAIT_SECONDS) -> None:
        self._address = address
        self._secret = service_secret
        self._serve_wait = serve_wait
        self._channel: grpc.aio.Channel | None = None

    def _stub(self) -> datastore_pb2_grpc.DatastoreServiceAsyncStub:
        if self._channel is None:  # made in the running loop, on first use
            self._channel = grpc.aio.insecure_channel(self._address, options=list(_rpc.CHANNEL_OPTIONS))
        stub: datastore_pb2_grpc.DatastoreServiceAsyncStub = datastore_pb2_grpc.DatastoreServiceStub(self._channel)
        return stub

    async def apply(self, app_id: str, index_yaml: str) -> pb.IndexReport:
        """Declare ``index_yaml`` (already checked when the version was created) for ``app_id``."""
        try:
            declared = indexyaml.parse(index_yaml)
        except KilnError as exc:  # checked at CreateVersion; kept for a file that changed meaning since
            return pb.IndexReport(not_applied=str(exc))
        token = auth.mint_app_token(self._secret, app_id, expires_at=int(time.time() + _TOKEN_SECONDS))
        meta = ((auth.METADATA_KEY, f"Bearer {token}"),)
        stub = self._stub()
        try:
            before = {indexyaml.key(i) for i in (await stub.ListIndexes(
                dpb.ListIndexesRequest(), metadata=meta, timeout=CALL_TIMEOUT_SECONDS)).indexes}
            after = list((await stub.UpdateIndexes(dpb.UpdateIndexesRequest(indexes=declared), metadata=meta,
                                                   timeout=CALL_TIMEOUT_SECONDS)).indexes)
            new = {indexyaml.key(i) for i in after} - before
            deadline = time.monotonic() + self._serve_wait
            while any(indexyaml.key(i) in new and i.state == dpb.CompositeIndex.STATE_BUILDING for i in after) \
                    and time.monotonic() < deadline:
                await asyncio.sleep(0.1)
                after = list((await stub.ListIndexes(dpb.ListIndexesRequest(), metadata=meta,
                                                     timeout=CALL_TIMEOUT_SECONDS)).indexes)
        except grpc.aio.AioRpcError as exc:
            log.warning("app %s: index.yaml not applied at the datastore %s: %s", app_id, self._address,
                        exc.details())
            return pb.IndexReport(not_applied=f"the datastore at {self._address} answered "
                                              f"{exc.code().name}: {exc.details()}")
        added = [i for i in after if indexyaml.key(i) in new]
        report = pb.IndexReport(
            applied=True,
            serving=[indexyaml.describe(i) for i in added if i.state == dpb.CompositeIndex.STATE_SERVING],
            building=[indexyaml.describe(i) for i in added if i.state == dpb.CompositeIndex.STATE_BUILDING])
        failed = [f"{indexyaml.describe(i)}: {i.error}" for i in added if i.state == dpb.CompositeIndex.STATE_ERROR]
        if failed:
            report.not_applied = "building failed: " + "; ".join(failed)
        return report

    async def close(self) -> None:
        if self._channel is not None:
            await self._channel.close()
