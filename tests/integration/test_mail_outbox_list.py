"""ListOutbox's additive fields against a real mail_svc (``python -m mail_svc``, development outbox, its own
nats-server): ``without_raw`` lists envelopes and subjects without the messages, ``message_id`` finds one message
however old; bad input gets a precise error."""

from __future__ import annotations

import grpc
import pytest

from kiln.pb.mail.v1 import mail_pb2 as pb
from kiln.pb.mail.v1 import mail_pb2_grpc
from kiln_platform.supervisor import python_module
from tests.integration.apps import wait_for
from tests.integration.conftest import app_metadata, service_env

pytestmark = pytest.mark.nats

APP = "outboxer"


@pytest.fixture(scope="module")
def stub(supervisor, tmp_path_factory):
    base = tmp_path_factory.mktemp("outboxlist")
    (base / "nats").mkdir()
    nats_url = f"nats://{supervisor.start_nats(base / 'nats', name='nats-outboxlist').address}"
    ready = supervisor.run_dir / "mail-outboxlist.addr"
    child = supervisor.start("mail-outboxlist", python_module(
        "mail_svc", "--listen", "127.0.0.1:0", "--ready-file", str(ready), "--nats-url", nats_url,
        "--outbox-dir", str(base / "outbox"), "--platform-secret", "outbox-list-platform-secret"),
        env=service_env(), ready_file=ready)
    channel = grpc.insecure_channel(child.address)
    stub = mail_pb2_grpc.MailServiceStub(channel)
    ids = []
    for n in range(5):
        message = pb.MailMessage(sender=f"robot@{APP}.appspotmail.com", to=[f"r{n}@example.org"],
                                 subject=f"message {n}", text_body=f"body {n}")
        ids.append(stub.Send(pb.SendRequest(message=message), metadata=app_metadata(APP), timeout=30).message_id)
        wait_for(lambda: len(listed(stub)) == n + 1, 30)  # kept one after the other: newest is the last sent
    yield stub, ids
    channel.close()


def listed(stub, **fields) -> list[pb.OutboxMessage]:
    return list(stub.ListOutbox(pb.ListOutboxRequest(**fields), metadata=app_metadata(APP), timeout=30).messages)


def test_without_raw_lists_envelopes_and_subjects_newest_first_without_the_messages(stub):
    stub, ids = stub
    found = listed(stub, without_raw=True, limit=3)
    assert [(m.message_id, m.subject, list(m.recipients), m.raw) for m in found] == [
        (ids[4], "message 4", ["r4@example.org"], b""), (ids[3], "message 3", ["r3@example.org"], b""),
        (ids[2], "message 2", ["r2@example.org"], b"")]
    assert all(m.envelope_from and m.HasField("queued_at") for m in found)


def test_the_raw_message_is_still_listed_by_default(stub):
    stub, ids = stub
    assert b"body 4" in listed(stub, limit=1)[0].raw


def test_message_id_finds_one_message_with_its_raw_message_past_the_limit(stub):
    stub, ids = stub
    found = listed(stub, message_id=ids[0], limit=1)  # the oldest: not among the newest 1
    assert [(m.message_id, m.subject) for m in found] == [(ids[0], "message 0")]
    assert b"body 0" in found[0].raw


def test_an_unknown_message_id_lists_nothing(stub):
    stub, _ = stub
    assert listed(stub, message_id="<nosuch@example>") == []


def test_another_apps_message_id_is_not_found(stub):
    stub, ids = stub
    answer = stub.ListOutbox(pb.ListOutboxRequest(message_id=ids[0]), metadata=app_metadata("someone-else"),
                             timeout=30)
    assert list(answer.messages) == []


def test_an_overlong_message_id_gets_a_precise_error(stub):
    stub, _ = stub
    with pytest.raises(grpc.RpcError) as caught:
        listed(stub, message_id="x" * 1001)
    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "message_id: at most 1000 characters" in caught.value.details()
    assert len(listed(stub)) == 5  # and it keeps serving
