"""Google's own ``deferred`` samples (Flask, plain WSGI, Django; ``tests/fixtures/google_samples/deferred/``, byte for
byte as Google publishes them) run unmodified under ``kiln dev``, checked as Google's own ``main_test.py`` checks
them: the counter starts at 0, ``/counter/increment`` defers three increments of 10 — now, after 60 s on the
default URL (``wrap_wsgi_app(use_deferred=True)``'s ``/_ah/queue/deferred``), after 120 s on the sample's own
``/custom/path`` — and the counter reads 10, then 20, then 30, and stays there. A client cannot run a pickle
through the deferred handler: without the task queue's signed request the SDK's handler answers 403."""

from __future__ import annotations

import pathlib
import pickle
import shutil

import grpc
import pytest

from kiln.pb.taskqueue.v1 import taskqueue_pb2 as pb
from kiln.pb.taskqueue.v1 import taskqueue_pb2_grpc
from kiln_platform import auth
from tests.integration import apps
from tests.integration.apps import running

pytestmark = pytest.mark.nats

SAMPLES = pathlib.Path(__file__).resolve().parents[1] / "fixtures" / "google_samples" / "deferred"
VARIANTS = ["flask", "wsgi", "django"]


@pytest.fixture(scope="module", params=VARIANTS)
def sample(request, tmp_path_factory):
    app_dir = tmp_path_factory.mktemp(f"deferredsample{request.param}")
    shutil.copytree(SAMPLES / request.param, app_dir, dirs_exist_ok=True)
    with running(app_dir, {}, app_yaml=(app_dir / "app.yaml").read_text()) as srv:
        yield srv


def counter(server) -> str:
    status, _, body = apps.fetch(server, "/counter/get")
    assert status == 200, body
    return body.decode()


def waiting_tasks(server) -> int:
    token = auth.mint_app_token(server._secret, server.app_id)
    with grpc.insecure_channel(server.addresses["taskqueue_svc"]) as channel:
        stats = taskqueue_pb2_grpc.TaskQueueServiceStub(channel).QueueStats(
            pb.QueueStatsRequest(queues=["default"]), metadata=(("authorization", f"Bearer {token}"),), timeout=30)
    return stats.queues[0].tasks


def test_a_forged_deferred_request_is_refused_and_runs_nothing(sample):
    assert counter(sample) == "0"
    payload = pickle.dumps((print, ("forged",), {}))
    for path in ("/_ah/queue/deferred", "/custom/path"):
        for header in ("X-AppEngine-TaskName", "X_AppEngine_TaskName", "X-AppEngine-QueueName"):
            status, _, _ = apps.request(sample, path, method="POST", body=payload,
                                        headers={header: "forged", "Content-Type": "application/octet-stream"})
            assert status == 403, (path, header, status)
    assert counter(sample) == "0"


def test_the_samples_deferred_increments_run_now_and_after_their_countdowns(sample):
    before = int(counter(sample))
    status, _, body = apps.fetch(sample, "/counter/increment")
    assert (status, body) == (200, b"Deferred counter increment.")
    apps.wait_for(lambda: counter(sample) == str(before + 10), 30)
    apps.wait_for(lambda: counter(sample) == str(before + 20), 90)   # _countdown=60
    apps.wait_for(lambda: counter(sample) == str(before + 30), 90)   # _countdown=120, on /custom/path
    apps.wait_for(lambda: waiting_tasks(sample) == 0, 30)            # nothing more is coming
    assert counter(sample) == str(before + 30)
