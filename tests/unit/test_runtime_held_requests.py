"""An instance bounds the requests it holds (runtime.app.MAX_HELD_REQUESTS, MAX_HELD_BYTES): its subscriptions hand
requests over where nats-py reads them (kiln_platform.natsinline), so nats-py's slow-consumer limits no longer
apply and the instance applies the same ones itself, answering 503 past them."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest

from kiln.pb.runtime.v1 import http_pb2
from kiln_platform import appyaml
from kiln_platform.config import Secret
from runtime import app as runtime_app
from runtime.config import RuntimeConfig

APP_YAML = "runtime: python27\napi_version: 1\nthreadsafe: true\nhandlers:\n- url: /.*\n  script: main.app\n"


@dataclasses.dataclass
class Msg:
    """What the instance reads of nats-py's Msg before it answers."""

    data: bytes
    reply: str


class Threads:
    """Stands in for the instance's request threads: records what it is handed."""

    def __init__(self) -> None:
        self.submitted: list[runtime_app._Request] = []

    def submit(self, state: runtime_app._Request) -> None:
        self.submitted.append(state)


@pytest.fixture
def instance(tmp_path):
    (tmp_path / "app.yaml").write_text(APP_YAML)
    cfg = RuntimeConfig(app_dir=tmp_path, app_id="held", version_id="v1", nats_url="nats://unused",
                        app_token=Secret("t" * 40), instance_id="i1")
    made = runtime_app.Instance(cfg, appyaml.load(tmp_path / "app.yaml"))
    made._threads = Threads()  # type: ignore[assignment]
    return made


def request(n: int, body: bytes = b"") -> Msg:
    req = http_pb2.HttpRequest(request_id=f"r{n}", app_id="held", version_id="v1", method="POST", path="/",
                               body=body)
    return Msg(req.SerializeToString(), f"_INBOX.x.{n}")


def answered(instance) -> dict[str, tuple[int, str]]:
    """The answers waiting in the instance's outbox, by reply subject: (status, the reason its log gets)."""
    answers = {}
    for msg, data in instance._outbox:
        resp = http_pb2.HttpResponse.FromString(data)
        answers[msg.reply] = (resp.status, resp.runtime_error)
    return answers


async def test_a_request_past_the_held_requests_limit_is_answered_503_and_never_reaches_a_request_thread(
        instance, monkeypatch):
    monkeypatch.setattr(runtime_app, "MAX_HELD_REQUESTS", 2)
    for n in range(3):
        instance.on_message(request(n))
    assert answered(instance) == {"_INBOX.x.2": (503, "the instance holds too many requests")}
    await instance_turn()
    assert [state.req.request_id for state in instance._threads.submitted] == ["r0", "r1"]


async def test_a_request_past_the_held_bytes_limit_is_answered_503(instance, monkeypatch):
    first = request(0, b"x" * 1000)
    monkeypatch.setattr(runtime_app, "MAX_HELD_BYTES", len(first.data) + 100)
    instance.on_message(first)
    instance.on_message(request(1, b"y" * 200))
    instance.on_message(request(2))  # small enough to fit beside the first
    assert answered(instance) == {"_INBOX.x.1": (503, "the instance holds too many requests")}
    await instance_turn()
    assert [state.req.request_id for state in instance._threads.submitted] == ["r0", "r2"]


async def test_answering_a_held_request_makes_room_for_the_next(instance, monkeypatch):
    monkeypatch.setattr(runtime_app, "MAX_HELD_REQUESTS", 1)
    first = request(0, b"x" * 500)
    monkeypatch.setattr(runtime_app, "MAX_HELD_BYTES", len(first.data))
    instance.on_message(first)
    await instance_turn()
    (state,) = instance._threads.submitted
    instance._answer(state, None, http_pb2.HttpResponse(status=200).SerializeToString(), True)
    instance.on_message(request(1, b"y" * 500))
    await instance_turn()
    assert [state.req.request_id for state in instance._threads.submitted] == ["r0", "r1"]
    assert [status for status, _ in answered(instance).values()] == [200]


async def instance_turn() -> None:
    """Let the loop run the turn's end, where the instance hands the requests it received to its threads."""
    await asyncio.sleep(0)
