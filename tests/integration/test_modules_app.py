"""App Engine's Modules API (``google.appengine.api.modules``) in apps on Google's SDK, end to end.

Deployed: ``kiln deploy`` to the control plane, a runtime host running every version, a router serving them; the
app's instances ask the control plane's ``ModulesService`` with the app's own token (kiln/sdk/modules.py). Under
``kiln dev``: the instance describes the one version it runs. The answers' rules are tested one by one in
tests/unit/test_sdk_modules.py; here they come from real deployments.
"""

from __future__ import annotations

import http.client
import json
import os
import pathlib
import shutil
import tempfile
import textwrap
import urllib.parse

import grpc
import pytest

from deploy import cli
from kiln.pb.deploy.v1 import deploy_pb2, deploy_pb2_grpc
from kiln.pb.modules.v1 import modules_pb2, modules_pb2_grpc
from kiln_platform import auth
from kiln_platform.supervisor import python_module
from runtime import isolation
from tests.integration import apps
from tests.integration.conftest import app_metadata, service_env
from tests.integration.test_control_plane import start_control, token, wait_for_host

pytestmark = pytest.mark.nats

APP = "modapps"
OTHER = "modother"
DOMAIN = "example.test"
ISOLATION_PARENT = pathlib.Path("/var/lib/kiln-tests")  # reachable by app users, outside each instance's own /tmp

MAIN = textwrap.dedent(r'''
    import json, urllib.parse
    from google.appengine.api import modules
    from google.appengine.runtime import apiproxy_errors

    CALLS = {
        "modules": lambda q: list(modules.get_modules()),
        "versions": lambda q: list(modules.get_versions(q.get("module"))),
        "default": lambda q: modules.get_default_version(q.get("module")),
        "instances": lambda q: modules.get_num_instances(q.get("module"), q.get("version")),
        "hostname": lambda q: modules.get_hostname(q.get("module"), q.get("version"), q.get("instance")),
        "set": lambda q: modules.set_num_instances(2, q.get("module"), q.get("version")),
        "start": lambda q: modules.start_version(q.get("module"), q.get("version")),
        "stop": lambda q: modules.stop_version(q.get("module"), q.get("version")),
        "current": lambda q: [modules.get_current_module_name(), modules.get_current_version_name()],
    }

    def app(environ, start_response):
        query = dict(urllib.parse.parse_qsl(environ["QUERY_STRING"]))
        try:
            body = {"result": CALLS[query.pop("call")](query)}
        except (modules.Error, apiproxy_errors.Error) as exc:
            body = {"error": type(exc).__name__, "message": str(exc)}
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]
''')
HEAD = "runtime: python27\napi_version: 1\nthreadsafe: true\n"
HANDLERS = "handlers:\n- url: /.*\n  script: main.app\n"
# modapps: service default (v1 manual ×1, v2 automatic) and service worker (w1 basic, up to 2); modother: hidden.
VERSIONS = {
    (APP, "v1"): HEAD + "manual_scaling:\n  instances: 1\n" + HANDLERS,
    (APP, "v2"): HEAD + HANDLERS,
    (APP, "w1"): HEAD + "service: worker\nbasic_scaling:\n  max_instances: 2\n" + HANDLERS,
    (OTHER, "h1"): HEAD + "service: hidden\n" + HANDLERS,
}


def start_cluster(supervisor, tmp_path_factory, nats_url, name: str, versions, *manager_args: str) -> dict:
    """A control plane, a runtime host and a router, with ``versions`` deployed and serving."""
    control = start_control(supervisor, tmp_path_factory, nats_url, f"control-{name}")
    run = supervisor.run_dir
    env = {**service_env(), "KILN_ROUTER_CONTROL_TOKEN": token("*", "read", "router"),
           "KILN_HOST_CONTROL_TOKEN": token("*", "read", "host"), "KILN_MANAGER_NATS_URL": nats_url}
    router = supervisor.start(f"router-{name}", python_module(
        "router", "--listen", "127.0.0.1:0", "--nats-url", nats_url, "--domain", DOMAIN,
        "--control-plane", control, "--cache-dir", str(tmp_path_factory.mktemp(f"router-{name}-cache")),
        "--ready-file", str(run / f"router-{name}.addr")), env=env, ready_file=run / f"router-{name}.addr")
    supervisor.spawn(f"runtime-host-{name}", python_module(
        "runtime.host", "--control-plane", control, "--run-dir", str(tmp_path_factory.mktemp(f"host-{name}-run")),
        "--cache-dir", str(tmp_path_factory.mktemp(f"host-{name}-cache")), "--apps-domain", DOMAIN,
        *[f"--manager-arg={arg}" for arg in manager_args], "--", "--listen", "127.0.0.1:0"), env=env)
    wait_for_host(control, "python27")  # kiln deploy refuses a version no live host can run
    found = {"control": control, "router": router.address}
    tmp = tmp_path_factory.mktemp(f"{name}-apps")
    for (app, version), app_yaml in versions.items():  # each app's first version becomes its default
        app_dir = tmp / f"{app}-{version}"
        app_dir.mkdir()
        (app_dir / "app.yaml").write_text(app_yaml)
        (app_dir / "main.py").write_text(MAIN)
        assert kiln(found, app, "deploy", str(app_dir), "--app", app, "--version", version) == 0
    for app, version in versions:
        host = f"{version}-dot-{app}.{DOMAIN}"
        apps.wait_for(lambda host=host: get(found, host, "current")[0] == 200, 240)
    return found


@pytest.fixture(scope="module")
def cluster(supervisor, tmp_path_factory, nats_url):
    return start_cluster(supervisor, tmp_path_factory, nats_url, "modules", VERSIONS, "--isolation=none")


@pytest.fixture(scope="module")
def isolated_cluster(supervisor, tmp_path_factory, nats_url):
    """Instances as their app's own user in a network of their own: the control plane only through a Unix socket."""
    if os.geteuid() != 0 or isolation.platform_blocked() or isolation.network_blocked():
        pytest.fail("per-app users and network namespaces need root and a Python other users can run: "
                    "python -m runtime.isolation prepare (as root) says what it changes")
    ISOLATION_PARENT.mkdir(parents=True, exist_ok=True)
    ISOLATION_PARENT.chmod(0o711)
    root = pathlib.Path(tempfile.mkdtemp(prefix="kiln-modules-", dir=ISOLATION_PARENT))
    yield start_cluster(supervisor, tmp_path_factory, nats_url, "modules-isolated",
                        {("modisolated", "v1"): VERSIONS[(APP, "v1")], ("modisolated", "v2"): VERSIONS[(APP, "v2")]},
                        "--isolation=user", "--network-isolation=on", f"--isolation-root={root}")
    for child in [c for c in supervisor.children if c.name == "runtime-host-modules-isolated"]:
        child.proc.terminate()  # its managers stop their instances before the staged files go
        child.proc.wait(timeout=60)
        supervisor.children.remove(child)
    shutil.rmtree(root, ignore_errors=True)


def kiln(cluster, app: str, *args: str) -> int:
    return cli.main([*args, "--control-plane", cluster["control"], "--token", token(app, "admin", "dev")])


def get(cluster, host: str, call: str, **query: str) -> tuple[int, dict]:
    """Run one modules call in a request of the app at ``host``: its result, or the SDK's error."""
    name, _, port = cluster["router"].rpartition(":")
    conn = http.client.HTTPConnection(name, int(port), timeout=60)
    try:
        conn.request("GET", "/?" + urllib.parse.urlencode({"call": call, **query}), headers={"Host": host})
        resp = conn.getresponse()
        body = resp.read()
        return resp.status, json.loads(body) if resp.status == 200 else {"body": body.decode("utf-8", "replace")}
    finally:
        conn.close()


def ask(cluster, at: str, call: str, of: str = APP, **query: str) -> dict:
    """``call`` in a request of version ``at`` of app ``of``."""
    status, body = get(cluster, f"{at}-dot-{of}.{DOMAIN}", call, **query)
    assert status == 200, body
    return body


def test_a_deployed_app_lists_its_services_from_every_version(cluster):
    for version in ("v1", "v2", "w1"):
        assert ask(cluster, version, "modules") == {"result": ["default", "worker"]}


def test_a_deployed_app_lists_the_versions_of_each_service(cluster):
    assert ask(cluster, "v2", "versions") == {"result": ["v1", "v2"]}
    assert ask(cluster, "v2", "versions", module="worker") == {"result": ["w1"]}
    assert ask(cluster, "w1", "versions") == {"result": ["w1"]}
    assert ask(cluster, "w1", "current") == {"result": ["worker", "w1"]}


def test_the_default_version_follows_kiln_versions_set_default(cluster):
    assert ask(cluster, "w1", "default", module="default") == {"result": "v1"}
    assert kiln(cluster, APP, "versions", "set-default", "v2", "--app", APP) == 0
    try:
        assert ask(cluster, "w1", "default", module="default") == {"result": "v2"}
        assert ask(cluster, "v1", "default") == {"result": "v2"}
    finally:
        assert kiln(cluster, APP, "versions", "set-default", "v1", "--app", APP) == 0
    assert ask(cluster, "v2", "default") == {"result": "v1"}


def test_a_service_other_than_the_default_versions_has_no_default(cluster):
    assert ask(cluster, "w1", "default")["error"] == "InvalidVersionError"


def test_instance_counts_are_those_app_yaml_sets(cluster):
    assert ask(cluster, "v1", "instances") == {"result": 1}
    assert ask(cluster, "v2", "instances", version="v1") == {"result": 1}
    assert ask(cluster, "v2", "instances", module="worker", version="w1") == {"result": 2}
    assert ask(cluster, "v2", "instances")["error"] == "InvalidVersionError"  # automatic scaling sets none


def test_the_hostname_of_a_version_reaches_that_version(cluster):
    hostname = ask(cluster, "v1", "hostname", module="worker", version="w1")["result"]
    assert hostname == f"w1-dot-{APP}.{DOMAIN}"
    assert get(cluster, hostname, "current") == (200, {"result": ["worker", "w1"]})
    assert ask(cluster, "v2", "hostname") == {"result": f"v2-dot-{APP}.{DOMAIN}"}
    assert ask(cluster, "v2", "hostname", version="v1", instance="0") == {"result": f"0-dot-v1-dot-{APP}.{DOMAIN}"}


@pytest.mark.parametrize("call", ["set", "start", "stop"])
def test_changing_versions_from_the_app_is_refused_saying_why(cluster, call):
    found = ask(cluster, "v2", call, module="default", version="v1")
    assert found["error"] == "FeatureNotEnabledError"
    assert "deploy token" in found["message"]
    assert ask(cluster, "v1", "instances") == {"result": 1}


@pytest.mark.parametrize("call", ["set", "start", "stop"])
def test_changing_an_unknown_version_is_invalid_version(cluster, call):
    assert ask(cluster, "v2", call, module="default", version="nope")["error"] == "InvalidVersionError"


@pytest.mark.parametrize(("call", "query", "error"), [
    ("versions", {"module": "hidden"}, "InvalidModuleError"),
    ("default", {"module": "hidden"}, "InvalidModuleError"),
    ("hostname", {"module": "hidden"}, "InvalidModuleError"),
    ("hostname", {"module": "default", "version": "h1"}, "InvalidModuleError"),
    ("instances", {"module": "hidden", "version": "h1"}, "InvalidVersionError"),
    ("stop", {"module": "hidden", "version": "h1"}, "InvalidVersionError"),
])
def test_another_apps_service_is_unknown_to_an_app(cluster, call, query, error):
    assert ask(cluster, "v2", call, **query)["error"] == error


def test_each_app_lists_only_its_own_services(cluster):
    assert "hidden" not in ask(cluster, "v2", "modules")["result"]
    assert ask(cluster, "h1", "modules", of=OTHER) == {"result": ["hidden"]}
    assert ask(cluster, "h1", "versions", of=OTHER, module="default")["error"] == "InvalidModuleError"


def list_modules(cluster, metadata) -> modules_pb2.ListModulesResponse:
    with grpc.insecure_channel(cluster["control"]) as channel:
        return modules_pb2_grpc.ModulesServiceStub(channel).ListModules(
            modules_pb2.ListModulesRequest(), metadata=metadata, timeout=30)


def test_the_control_plane_answers_an_app_token_with_that_apps_own_services(cluster):
    for app, names in ((APP, ["default", "worker"]), (OTHER, ["hidden"])):
        found = list_modules(cluster, app_metadata(app))
        assert [m.name for m in found.modules] == names
    assert list_modules(cluster, app_metadata("neverdeployed")) == modules_pb2.ListModulesResponse()


@pytest.mark.parametrize("metadata", [
    (), (("authorization", "Bearer "),), (("authorization", "Bearer not-a-token"),),
    (("authorization", f"Bearer {auth.mint_app_token('another-deployments-secret', APP)}"),),
    (("authorization", f"Bearer {auth.mint_app_token('integration-test-secret', APP)}x"),),
    (("authorization", f"Bearer {token(APP, 'admin', 'dev')}"),),  # a deploy token is not an app's identity
    (("authorization", f"Bearer {token('*', 'read', 'router')}"),),
], ids=["absent", "empty", "garbage", "forged", "altered", "deploy-admin", "platform-read"])
def test_the_control_plane_refuses_to_describe_an_app_without_its_app_token(cluster, metadata):
    with pytest.raises(grpc.RpcError) as caught:
        list_modules(cluster, metadata)
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED


@pytest.mark.parametrize("call", [
    lambda stub: stub.ListVersions(deploy_pb2.ListVersionsRequest(app_id=APP), metadata=app_metadata(APP), timeout=30),
    lambda stub: stub.SetDefaultVersion(deploy_pb2.SetDefaultVersionRequest(app_id=APP, version_id="v2"),
                                        metadata=app_metadata(APP), timeout=30),
    lambda stub: stub.ListApps(deploy_pb2.ListAppsRequest(), metadata=app_metadata(APP), timeout=30),
], ids=["list-versions", "set-default", "list-apps"])
def test_an_app_token_opens_none_of_the_control_planes_deploy_methods(cluster, call):
    with grpc.insecure_channel(cluster["control"]) as channel, pytest.raises(grpc.RpcError) as caught:
        call(deploy_pb2_grpc.DeployServiceStub(channel))
    assert caught.value.code() == grpc.StatusCode.UNAUTHENTICATED
    assert ask(cluster, "v2", "default") == {"result": "v1"}


def test_an_instance_without_a_network_asks_the_control_plane_through_its_forwarded_socket(isolated_cluster):
    assert ask(isolated_cluster, "v2", "versions", of="modisolated") == {"result": ["v1", "v2"]}
    assert ask(isolated_cluster, "v2", "instances", of="modisolated", version="v1") == {"result": 1}


def test_under_kiln_dev_the_modules_api_describes_the_version_it_runs(tmp_path: pathlib.Path):
    app_yaml = HEAD + "version: dev3\nservice: web\nmanual_scaling:\n  instances: 1\n" + HANDLERS
    with apps.running(tmp_path / "devmodules", {"main.py": MAIN}, app_yaml=app_yaml) as server:
        def call(name: str, **query: str) -> dict:
            status, _, body = apps.fetch(server, "/?" + urllib.parse.urlencode({"call": name, **query}))
            assert status == 200, body
            return json.loads(body)

        port = server.url.rstrip("/").rpartition(":")[2]
        assert call("modules") == {"result": ["web"]}
        assert call("versions") == {"result": ["dev3"]}
        assert call("default") == {"result": "dev3"}
        assert call("instances") == {"result": 1}
        assert call("current") == {"result": ["web", "dev3"]}
        assert call("hostname") == {"result": f"dev3-dot-localhost:{port}"}
        assert call("versions", module="default")["error"] == "InvalidModuleError"
        assert call("instances", version="v1")["error"] == "InvalidVersionError"
        assert call("stop")["error"] == "FeatureNotEnabledError"
