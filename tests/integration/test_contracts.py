"""The contracts stand on their own: a Go client generated from proto/ alone
talks to the datastore, and grpcurl discovers every service by reflection."""

from __future__ import annotations

import json
import pathlib
import subprocess

import pytest

from kiln_platform import auth
from tests.integration.conftest import ROOT, SECRET

pytestmark = [pytest.mark.go, pytest.mark.nats]

FULL_NAMES = {
    "datastore": "kiln.pb.datastore.v1.DatastoreService",
    "memcache": "kiln.pb.memcache.v1.MemcacheService",
    "urlfetch": "kiln.pb.urlfetch.v1.UrlFetchService",
    "mail": "kiln.pb.mail.v1.MailService",
    "images": "kiln.pb.images.v1.ImagesService",
    "cron": "kiln.pb.cron.v1.CronService",
    "identity": "kiln.pb.identity.v1.IdentityService",
    "taskqueue": "kiln.pb.taskqueue.v1.TaskQueueService",
    "blobstore": "kiln.pb.blobstore.v1.BlobstoreService",
}


@pytest.fixture(scope="session")
def tools_bin() -> pathlib.Path:
    done = subprocess.run(["bash", str(ROOT / "deploy" / "tools.sh")], capture_output=True, text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    return pathlib.Path(done.stdout.strip().splitlines()[-1])


@pytest.fixture(scope="session")
def go_dsclient(tmp_path_factory, tools_bin) -> str:
    out = tmp_path_factory.mktemp("go")
    done = subprocess.run(["bash", str(ROOT / "tests" / "go" / "build.sh"), str(out)], capture_output=True,
                          text=True, timeout=900)
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


def _grpcurl(tools_bin: pathlib.Path, *args: str) -> str:
    done = subprocess.run([str(tools_bin / "grpcurl"), "-plaintext", *args], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


def test_go_client_generated_from_protos_puts_and_gets_an_entity(datastore_addr, go_dsclient):
    token = auth.mint_app_token(SECRET, "goapp")
    done = subprocess.run([go_dsclient, "-addr", datastore_addr, "-token", token], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    props = result["entity"]["properties"]
    assert int(result["id"]) > 0
    assert result["entity"]["key"]["partitionId"] == {"appId": "goapp", "namespace": "go-test"}
    assert props["content"] == {"stringValue": "hello from Go"}
    assert props["n"] == {"integerValue": "42"}
    assert props["ok"] == {"booleanValue": True}
    assert props["ratio"] == {"doubleValue": 0.25}
    assert props["when"] == {"timestampValue": "2023-11-14T22:13:20.000005Z"}
    assert props["tags"] == {"arrayValue": {"values": [{"stringValue": "a"}, {"stringValue": "b"}]}}


def test_grpcurl_lists_every_service_by_reflection(grpc_services, tools_bin):
    for name, address in grpc_services.items():
        listed = _grpcurl(tools_bin, address, "list").split()
        assert FULL_NAMES[name] in listed
        assert "grpc.health.v1.Health" in listed


def test_grpcurl_health_check_says_serving(grpc_services, tools_bin):
    for address in grpc_services.values():
        out = _grpcurl(tools_bin, "-d", '{"service": ""}', address, "grpc.health.v1.Health/Check")
        assert json.loads(out) == {"status": "SERVING"}


def test_grpcurl_describes_the_datastore_methods(datastore_addr, tools_bin):
    out = _grpcurl(tools_bin, datastore_addr, "describe", "kiln.pb.datastore.v1.DatastoreService")
    for method in ("Get", "Put", "Delete", "RunQuery", "AllocateIds", "BeginTransaction", "Commit", "Rollback"):
        assert f"rpc {method} (" in out
