"""How runtime instances take requests off NATS (runtime.app.subscribe_requests: handed over where nats-py reads
them, kiln_platform.natsinline): real runtime processes on a real nats-server, requests sent straight on the
subjects the router sends them on."""

from __future__ import annotations

import asyncio
import json
import signal
import textwrap
import uuid

import nats
import pytest

from kiln.pb.runtime.v1 import http_pb2
from kiln_platform import bus
from kiln_platform.supervisor import Supervisor, python_module
from tests.integration.conftest import runtime_env

pytestmark = pytest.mark.nats

APP_ID = "subs"

APP_YAML = "runtime: python27\napi_version: 1\nthreadsafe: {threadsafe}\nhandlers:\n- url: /.*\n  script: main.app\n"

# /count counts the requests this instance served; /total says how many; /hold is a request that takes 0.2 s.
MAIN = textwrap.dedent('''
    import json, os, threading, time

    LOCK = threading.Lock()
    COUNT = [0]

    def app(environ, start_response):
        path, query = environ["PATH_INFO"], environ["QUERY_STRING"]
        body = {"instance": os.environ["INSTANCE_ID"], "query": query}
        if path == "/count":
            with LOCK:
                COUNT[0] += 1
        elif path == "/total":
            body["total"] = COUNT[0]
        elif path == "/hold":
            time.sleep(0.2)  # the app's own work: the requests behind it wait in the instance meanwhile
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]
''')


def envelope(path: str, query: str = "") -> bytes:
    req = http_pb2.HttpRequest(request_id=uuid.uuid4().hex, app_id=APP_ID, version_id="v1", method="GET",
                               scheme="http", host="localhost", path=path, query_string=query, protocol="HTTP/1.1",
                               remote_addr="127.0.0.1")
    return req.SerializeToString()


def answer(data: bytes) -> tuple[int, dict[str, object]]:
    resp = http_pb2.HttpResponse.FromString(data)
    return resp.status, json.loads(resp.body)


def start_instances(tmp_path, nats_url, ids, *, threadsafe: bool) -> tuple[Supervisor, dict[str, object]]:
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "app.yaml").write_text(APP_YAML.format(threadsafe="true" if threadsafe else "false"))
    (app_dir / "main.py").write_text(MAIN)
    env = runtime_env(APP_ID)
    sup = Supervisor(tmp_path / "run")
    children = {}
    try:
        for instance_id in ids:
            ready = tmp_path / f"ready-{instance_id}"
            children[instance_id] = sup.start(f"runtime-{instance_id}", python_module(
                "runtime", "--app-dir", str(app_dir), "--app-id", APP_ID, "--instance-id", instance_id,
                "--nats-url", nats_url, "--listen", "127.0.0.1:0", "--ready-file", str(ready)), env=env,
                ready_file=ready)
    except BaseException:
        sup.stop_all()
        raise
    return sup, children


async def test_each_request_on_the_versions_subject_is_served_by_exactly_one_instance(tmp_path, nats_url):
    sup, _ = start_instances(tmp_path, nats_url, ["i1", "i2"], threadsafe=True)
    try:
        nc = await nats.connect(nats_url)
        try:
            sent = 64
            answers = await asyncio.gather(*(nc.request(bus.http_subject(APP_ID, "v1"), envelope("/count"),
                                                        timeout=20) for _ in range(sent)))
            assert all(answer(msg.data)[0] == 200 for msg in answers)
            totals = {}
            for instance_id in ("i1", "i2"):
                msg = await nc.request(bus.instance_subject(APP_ID, instance_id), envelope("/total"), timeout=20)
                status, body = answer(msg.data)
                assert status == 200 and body["instance"] == instance_id
                totals[instance_id] = body["total"]
        finally:
            await nc.close()
    finally:
        sup.stop_all()
    # Queue-group semantics: no request served twice or lost, and both instances are in the group.
    assert sum(totals.values()) == sent
    assert all(total > 0 for total in totals.values()), totals


async def test_requests_sent_before_the_instance_is_stopped_are_all_answered_as_it_drains(tmp_path, nats_url):
    sup, children = start_instances(tmp_path, nats_url, ["only"], threadsafe=False)
    try:
        nc = await nats.connect(nats_url)
        try:
            inbox = nc.new_inbox()
            replies = await nc.subscribe(inbox + ".*")
            await nc.flush()
            for n in range(5):  # one runs at a time (threadsafe: false), each 0.2 s: the others wait in the instance
                await nc.publish(bus.instance_subject(APP_ID, "only"), envelope("/hold", str(n)),
                                 reply=f"{inbox}.{n}")
            await nc.flush()  # nats-server has routed all five to the instance: it must answer each as it drains
            children["only"].proc.send_signal(signal.SIGTERM)
            answers = {}
            for _ in range(5):
                msg = await replies.next_msg(timeout=30)
                answers[msg.subject.rpartition(".")[2]] = answer(msg.data)
        finally:
            await nc.close()
        code = await asyncio.to_thread(children["only"].proc.wait, 30)
    finally:
        sup.stop_all()
    assert {n: status for n, (status, _) in answers.items()} == {str(n): 200 for n in range(5)}
    assert all(body["query"] == n for n, (_, body) in answers.items())
    assert code == 0
