"""An app's dispatch rules on the control plane (both engines): stored and replaced whole, a rule for a service the
app does not have refused, the version serving each service, the announcement on NATS, and ``kiln deploy`` /
``kiln deploy dispatch.yaml`` / ``kiln dispatch list``."""

from __future__ import annotations

import asyncio
import json
import pathlib
import uuid

import grpc
import nats
import pytest

from deploy import cli, upload
from deploy.control import tokens
from kiln.pb.deploy.v1 import deploy_pb2 as pb
from kiln.pb.deploy.v1 import deploy_pb2_grpc, events_pb2
from tests.integration.test_control_plane import (
    APP_YAML, ENGINES, auth, cassandra_args, code_of, start_control, token, write_app)

pytestmark = pytest.mark.nats


@pytest.fixture(scope="module")
def control_embedded(supervisor, tmp_path_factory, nats_url):
    return start_control(supervisor, tmp_path_factory, nats_url, "control-dispatch-embedded")


@pytest.fixture(scope="module")
def control_cassandra(supervisor, tmp_path_factory, nats_url, cassandra_hosts):
    return start_control(supervisor, tmp_path_factory, nats_url, "control-dispatch-cassandra",
                         *cassandra_args(cassandra_hosts))


@pytest.fixture(params=ENGINES)
def channel(request):
    with grpc.insecure_channel(request.getfixturevalue(f"control_{request.param}")) as ch:
        yield ch


@pytest.fixture
def stub(channel):
    return deploy_pb2_grpc.DeployServiceStub(channel)


@pytest.fixture
def app_id():
    """A fresh app per test (the stores are shared by the module)."""
    return f"disp-{uuid.uuid4().hex[:12]}"

RULES = "dispatch:\n- url: '*/api/*'\n  service: api\n- url: '*/favicon.ico'\n  service: default\n"


def deploy_service(channel, app_id: str, root: pathlib.Path, version: str, service: str, promote: bool) -> None:
    write_app(root)
    if service != "default":
        (root / "app.yaml").write_text(f"service: {service}\n" + APP_YAML)
    upload.deploy(channel, token(app_id), root, app_id, version, promote=promote, host_check=False)


@pytest.fixture
def two_services(channel, app_id, tmp_path):
    """An app with v1 (service default, the default version), then api-1 and api-2 (service api)."""
    deploy_service(channel, app_id, tmp_path / "web", "v1", "default", True)
    deploy_service(channel, app_id, tmp_path / "api1", "api-1", "api", False)
    deploy_service(channel, app_id, tmp_path / "api2", "api-2", "api", False)
    return app_id


def test_rules_are_stored_with_the_version_serving_each_service(stub, two_services):
    app_id = two_services
    done = stub.SetDispatch(pb.SetDispatchRequest(app_id=app_id, dispatch_yaml=RULES), metadata=auth(token(app_id)))
    assert (done.generation, done.rules) == (1, 2)
    got = stub.GetDispatch(pb.GetDispatchRequest(app_id=app_id), metadata=auth(token(app_id, "read")))
    assert (got.dispatch_yaml, got.generation) == (RULES, 1)
    assert dict(got.services) == {"default": "v1", "api": "api-2"}  # the newest version of a non-default service


def test_new_rules_replace_the_old_as_a_whole(stub, two_services):
    app_id = two_services
    stub.SetDispatch(pb.SetDispatchRequest(app_id=app_id, dispatch_yaml=RULES), metadata=auth(token(app_id)))
    fewer = "dispatch:\n- url: 'api.example.com/*'\n  service: api\n"
    assert stub.SetDispatch(pb.SetDispatchRequest(app_id=app_id, dispatch_yaml=fewer),
                            metadata=auth(token(app_id))).generation == 2
    got = stub.GetDispatch(pb.GetDispatchRequest(app_id=app_id), metadata=auth(token(app_id)))
    assert (got.dispatch_yaml, got.generation) == (fewer, 2)
    platform = auth(token(tokens.ALL_APPS, "read"))
    listed = stub.ListApps(pb.ListAppsRequest(), metadata=platform).apps
    assert [a.dispatch_generation for a in listed if a.app_id == app_id] == [2]


def test_a_rule_for_a_service_the_app_does_not_have_is_refused_and_nothing_changes(stub, two_services):
    app_id = two_services
    stub.SetDispatch(pb.SetDispatchRequest(app_id=app_id, dispatch_yaml=RULES), metadata=auth(token(app_id)))
    bad = RULES + "- url: '*/mobile/*'\n  service: mobile\n"
    code, details = code_of(lambda: stub.SetDispatch(pb.SetDispatchRequest(app_id=app_id, dispatch_yaml=bad),
                                                     metadata=auth(token(app_id))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert f"dispatch[2].service: app {app_id!r} has no service 'mobile' (its services: api, default)" in details
    got = stub.GetDispatch(pb.GetDispatchRequest(app_id=app_id), metadata=auth(token(app_id)))
    assert (got.dispatch_yaml, got.generation) == (RULES, 1)


def test_a_malformed_file_is_refused_naming_the_line(stub, two_services):
    app_id = two_services
    code, details = code_of(lambda: stub.SetDispatch(
        pb.SetDispatchRequest(app_id=app_id, dispatch_yaml="dispatch:\n- url: '*/a*b'\n  service: api\n"),
        metadata=auth(token(app_id))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT
    assert "dispatch.yaml:2: dispatch[0].url: the path '/a*b' may hold '*' only as its last character" in details


def test_a_read_token_cannot_set_rules(stub, two_services):
    app_id = two_services
    code, _ = code_of(lambda: stub.SetDispatch(pb.SetDispatchRequest(app_id=app_id, dispatch_yaml=RULES),
                                               metadata=auth(token(app_id, "read"))))
    assert code == grpc.StatusCode.PERMISSION_DENIED


def test_new_rules_are_announced_on_nats(stub, two_services, nats_url):
    app_id = two_services

    async def watch() -> events_pb2.DispatchEvent:
        nc = await nats.connect(nats_url)
        got: asyncio.Queue[bytes] = asyncio.Queue()

        async def on(msg) -> None:
            event = events_pb2.DispatchEvent.FromString(msg.data)
            if event.app_id == app_id:
                got.put_nowait(msg.data)
        await nc.subscribe("kiln.deploy.dispatch", cb=on)
        await nc.flush()
        await asyncio.get_running_loop().run_in_executor(None, lambda: stub.SetDispatch(
            pb.SetDispatchRequest(app_id=app_id, dispatch_yaml=RULES), metadata=auth(token(app_id))))
        data = await asyncio.wait_for(got.get(), 10)
        await nc.close()
        return events_pb2.DispatchEvent.FromString(data)
    assert asyncio.run(watch()).generation == 1


def test_kiln_deploy_applies_the_dispatch_yaml_beside_app_yaml_after_the_version(control_embedded, app_id, tmp_path,
                                                                                capsys):
    root = write_app(tmp_path / "api")
    (root / "app.yaml").write_text("service: api\n" + APP_YAML)
    (root / "dispatch.yaml").write_text("dispatch:\n- url: '*/api/*'\n  service: api\n")
    common = ["--control-plane", control_embedded, "--token", token(app_id), "--app", app_id]
    assert cli.main(["deploy", str(root), "--version", "a1", "--no-host-check", *common]) == 0
    assert "dispatch rules of app" in capsys.readouterr().out
    assert cli.main(["dispatch", "list", "--json", *common]) == 0
    assert json.loads(capsys.readouterr().out) == [{"url": "*/api/*", "service": "api", "version": "a1"}]


def test_kiln_deploy_dispatch_yaml_alone_replaces_the_rules(control_embedded, app_id, tmp_path, capsys):
    root = write_app(tmp_path / "web")
    common = ["--control-plane", control_embedded, "--token", token(app_id), "--app", app_id]
    assert cli.main(["deploy", str(root), "--version", "w1", "--no-host-check", *common]) == 0
    rules = tmp_path / "conf" / "dispatch.yaml"
    rules.parent.mkdir()
    rules.write_text("dispatch:\n- url: 'www.example.com/*'\n  module: default\n")
    capsys.readouterr()
    assert cli.main(["deploy", str(rules), *common]) == 0
    assert "1 rule(s) serving" in capsys.readouterr().out
    assert cli.main(["dispatch", "list", "--json", *common]) == 0
    assert json.loads(capsys.readouterr().out) == [{"url": "www.example.com/*", "service": "default", "version": "w1"}]


def test_kiln_deploy_refuses_a_malformed_dispatch_yaml_before_uploading(control_embedded, app_id, tmp_path, capsys):
    root = write_app(tmp_path / "web")
    (root / "dispatch.yaml").write_text("dispatch:\n- url: 'www.example.com'\n  service: default\n")
    common = ["--control-plane", control_embedded, "--token", token(app_id), "--app", app_id]
    assert cli.main(["deploy", str(root), "--version", "w1", "--no-host-check", *common]) == 2
    assert "dispatch[0].url: expected HOST/PATH" in capsys.readouterr().err
    assert cli.main(["versions", "list", "--json", *common]) == 0
    assert json.loads(capsys.readouterr().out) == []
