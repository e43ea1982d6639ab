"""Google's own ``deferred`` samples (Flask, plain WSGI, Django; ``tests/fixtures/google_samples/deferred/``, byte for
byte as Google publishes them) run unmodified under ``kiln dev``, checked as Google's own ``main_test.py`` checks
them: the counter starts at 0, ``/counter/increment`` defers three increments of 10 — now, after 60 s on the
default URL (``wrap_wsgi_app(use_deferred=True)``'s ``/_ah/queue/deferred``), after 120 s on the sample's own
``/custom/path`` — and the counter reads 10, then 20, then 30, and stays there. A client cannot run a pickle
through the deferred handler: without the task queue's signed request the SDK's handler answers 403."""

from __future__ import annotations

import contextlib
import pathlib
import pickle
import shutil
import time

import grpc
import pytest

from kiln.pb.datastore.v1 import datastore_pb2 as dpb
from kiln.pb.datastore.v1 import datastore_pb2_grpc
from kiln.pb.taskqueue.v1 import taskqueue_pb2 as pb
from kiln.pb.taskqueue.v1 import taskqueue_pb2_grpc
from kiln_platform import auth
from tests.integration import apps
from tests.integration.apps import running

pytestmark = pytest.mark.nats

SAMPLES = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "google_samples" / "deferred"
VARIANTS = ["flask", "wsgi", "django"]
LATE_SECONDS = 120  # how late after its countdown a deferred increment may run on a loaded machine


@pytest.fixture(scope="module")
def samples(tmp_path_factory):
    """The three samples, each under its own ``kiln dev``, all at once: their countdowns then run side by side."""
    with contextlib.ExitStack() as stack:
        servers = {}
        for variant in VARIANTS:
            app_dir = tmp_path_factory.mktemp(f"deferredsample{variant}")
            shutil.copytree(SAMPLES / variant, app_dir, dirs_exist_ok=True)
            servers[variant] = stack.enter_context(running(app_dir, {}, app_yaml=(app_dir / "app.yaml").read_text()))
        yield servers


def counter(server) -> str:
    status, _, body = apps.fetch(server, "/counter/get")
    assert status == 200, body
    return body.decode()


def stored_counts(server) -> list[int]:
    """The counts the datastore holds (every Counter entity), read past ndb and its memcache cache."""
    token = auth.mint_app_token(server._secret, server.app_id)
    with grpc.insecure_channel(server.addresses["datastore_svc"]) as channel:
        batch = datastore_pb2_grpc.DatastoreServiceStub(channel).RunQuery(
            dpb.RunQueryRequest(query=dpb.Query(kind="Counter")), metadata=(("authorization", f"Bearer {token}"),),
            timeout=30).batch
    return [r.entity.properties["count"].integer_value for r in batch.entity_results]


def waiting_tasks(server) -> int:
    token = auth.mint_app_token(server._secret, server.app_id)
    with grpc.insecure_channel(server.addresses["taskqueue_svc"]) as channel:
        stats = taskqueue_pb2_grpc.TaskQueueServiceStub(channel).QueueStats(
            pb.QueueStatsRequest(queues=["default"]), metadata=(("authorization", f"Bearer {token}"),), timeout=30)
    return stats.queues[0].tasks


@pytest.mark.parametrize("variant", VARIANTS)
def test_a_forged_deferred_request_is_refused_and_runs_nothing(samples, variant):
    sample = samples[variant]
    assert counter(sample) == "0"
    payload = pickle.dumps((print, ("forged",), {}))
    for path in ("/_ah/queue/deferred", "/custom/path"):
        for header in ("X-AppEngine-TaskName", "X_AppEngine_TaskName", "X-AppEngine-QueueName"):
            status, _, _ = apps.request(sample, path, method="POST", body=payload,
                                        headers={header: "forged", "Content-Type": "application/octet-stream"})
            assert status == 403, (path, header, status)
    assert counter(sample) == "0"


def test_each_samples_deferred_increments_run_now_and_after_their_countdowns(samples):
    before = {variant: int(counter(sample)) for variant, sample in samples.items()}
    deferred_at = time.monotonic()
    for variant, sample in samples.items():  # all three defer at once, so their countdowns run side by side
        status, _, body = apps.fetch(sample, "/counter/increment")
        assert (variant, status, body) == (variant, 200, b"Deferred counter increment.")
    # now; _countdown=60; _countdown=120 on /custom/path. Each deadline counts from the deferral, with two minutes
    # for a loaded machine (a countdown says "not before"; three kiln devs share CI's two cores).
    for step, due in ((10, 0), (20, 60), (30, 120)):
        for variant, sample in samples.items():
            try:
                apps.wait_for(lambda sample=sample: counter(sample) == str(before[variant] + step),
                              max(deferred_at + due + LATE_SECONDS - time.monotonic(), 1))
            except AssertionError as late:  # say where the increment is: not run, or run and not seen
                raise AssertionError(
                    f"{variant}: the counter reads {counter(sample)} after {time.monotonic() - deferred_at:.0f} s, "
                    f"not {before[variant] + step}; the datastore holds {stored_counts(sample)}, "
                    f"{waiting_tasks(sample)} tasks wait") from late
    for variant, sample in samples.items():
        apps.wait_for(lambda sample=sample: waiting_tasks(sample) == 0, 30)  # nothing more is coming
        assert (variant, counter(sample)) == (variant, str(before[variant] + 30))
