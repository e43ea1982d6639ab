"""dispatch.yaml through a real router: a control plane, a runtime host running two services of one app (``web``
in service default, the default version; ``api-1`` in service api), and routers following the control plane's
events. Host and path rules, ``*`` hosts, the first matching rule winning, default routing when none matches,
hosts naming a version bypassing the rules, custom domains, rules reaching a running router without a restart,
and a router started later applying them from its first request."""

from __future__ import annotations

import http.client
import time

import pytest

from deploy import cli
from kiln_platform.supervisor import python_module
from tests.integration.conftest import service_env
from tests.integration.test_control_plane import start_control, token, wait_for_host

pytestmark = pytest.mark.nats

APP = "disp"
DOMAIN = "example.test"
CUSTOM = "www.shop.test"


def app_yaml(service: str) -> str:
    return (f"service: {service}\nruntime: python27\napi_version: 1\nthreadsafe: true\n"
            "handlers:\n- url: /.*\n  script: main.app\n")


MAIN = ("import os\n"
        "def app(environ, start_response):\n"
        "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
        "    return [os.environ['CURRENT_VERSION_ID'].split('.')[0].encode()]\n")


def start_router(supervisor, tmp_path_factory, nats_url: str, control: str, name: str, cache=None) -> str:
    run = supervisor.run_dir
    env = {**service_env(), "KILN_ROUTER_CONTROL_TOKEN": token("*", "read", "router")}
    # resync-seconds 3600: only the NATS events can bring new rules to a running router in these tests.
    return supervisor.start(name, python_module(
        "router", "--listen", "127.0.0.1:0", "--nats-url", nats_url, "--domain", DOMAIN,
        "--custom-domains", f"{CUSTOM}={APP}", "--control-plane", control,
        "--cache-dir", str(cache or tmp_path_factory.mktemp(f"{name}-cache")), "--resync-seconds", "3600",
        "--ready-file", str(run / f"{name}.addr")), env=env, ready_file=run / f"{name}.addr").address


@pytest.fixture(scope="module")
def cluster(supervisor, tmp_path_factory, nats_url):
    control = start_control(supervisor, tmp_path_factory, nats_url, "control-dispatch")
    env = {**service_env(), "KILN_HOST_CONTROL_TOKEN": token("*", "read", "host"), "KILN_MANAGER_NATS_URL": nats_url}
    router = start_router(supervisor, tmp_path_factory, nats_url, control, "router-dispatch")
    supervisor.spawn("runtime-host-dispatch", python_module(
        "runtime.host", "--control-plane", control, "--run-dir", str(tmp_path_factory.mktemp("host-run")),
        "--cache-dir", str(tmp_path_factory.mktemp("host-cache")), "--resync-seconds", "3600",
        "--manager-arg=--isolation=none", "--", "--listen", "127.0.0.1:0"), env=env)
    wait_for_host(control, "python27")
    tmp = tmp_path_factory.mktemp("dispatch-apps")
    for version, service in (("web", "default"), ("api-1", "api")):
        root = tmp / version
        root.mkdir()
        (root / "app.yaml").write_text(app_yaml(service))
        (root / "main.py").write_text(MAIN)
        assert kiln(control, "deploy", str(root), "--app", APP, "--version", version) == 0
    cluster = {"control": control, "router": router, "tmp": tmp}
    wait_answer(router, f"{APP}.{DOMAIN}", "/", "web")
    wait_answer(router, f"api-1-dot-{APP}.{DOMAIN}", "/", "api-1")
    return cluster


def kiln(control: str, *args: str) -> int:
    return cli.main([*args, "--control-plane", control, "--token", token(APP, "admin", "dev")])


def get(address: str, host: str, path: str) -> tuple[int, str]:
    name, _, port = address.rpartition(":")
    conn = http.client.HTTPConnection(name, int(port), timeout=60)
    try:
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def wait_answer(address: str, host: str, path: str, expected: str, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    last = None
    while time.monotonic() < deadline:
        last = get(address, host, path)
        if last == (200, expected):
            return
        time.sleep(0.1)
    raise AssertionError(f"{host}{path} never answered {expected!r}; last {last}")


def set_rules(cluster, text: str, marker_host: str, marker_path: str, marker_answer: str) -> None:
    """Deploy ``text`` as the app's dispatch.yaml, and wait until the router answers the marker request as said."""
    path = cluster["tmp"] / "dispatch.yaml"
    path.write_text(text)
    assert kiln(cluster["control"], "deploy", str(path), "--app", APP) == 0
    wait_answer(cluster["router"], marker_host, marker_path, marker_answer)


RULES = f"""\
dispatch:
- url: "*/api/v1/*"
  service: default
- url: "*/api/*"
  service: api
- url: "api.{APP}.{DOMAIN}/*"
  service: api
- url: "{CUSTOM}/shop/*"
  service: api
- url: "*/_ah/*"
  service: api
"""


@pytest.fixture(scope="module")
def rules(cluster):
    # Before the rules, the app's domain serves the default version whatever the path.
    assert get(cluster["router"], f"{APP}.{DOMAIN}", "/api/x") == (200, "web")
    set_rules(cluster, RULES, f"{APP}.{DOMAIN}", "/api/x", "api-1")  # arrives at the running router by event
    return cluster


def test_a_path_rule_sends_the_request_to_its_service(rules):
    assert get(rules["router"], f"{APP}.{DOMAIN}", "/api/users") == (200, "api-1")


def test_the_first_matching_rule_wins(rules):
    assert get(rules["router"], f"{APP}.{DOMAIN}", "/api/v1/users") == (200, "web")


def test_a_request_no_rule_matches_takes_the_default_routing(rules):
    assert get(rules["router"], f"{APP}.{DOMAIN}", "/about") == (200, "web")


def test_a_host_rule_matches_only_its_host(rules):
    assert get(rules["router"], f"api.{APP}.{DOMAIN}", "/anything") == (200, "api-1")
    assert get(rules["router"], f"www.{APP}.{DOMAIN}", "/anything") == (200, "web")


def test_rules_apply_to_custom_domains(rules):
    assert get(rules["router"], CUSTOM, "/shop/cart") == (200, "api-1")
    assert get(rules["router"], CUSTOM, "/api/x") == (200, "api-1")  # '*' host
    assert get(rules["router"], CUSTOM, "/") == (200, "web")


def test_a_host_naming_a_version_bypasses_the_rules(rules):
    assert get(rules["router"], f"web-dot-{APP}.{DOMAIN}", "/api/x") == (200, "web")
    assert get(rules["router"], f"api-1-dot-{APP}.{DOMAIN}", "/about") == (200, "api-1")


def test_ah_paths_are_not_dispatched_but_deferred_tasks_are(rules):
    # /_ah/ paths stay with the version the host picks (App Engine's rule), but for /_ah/queue/deferred and
    # /_ah/api; the app answers any path here.
    assert get(rules["router"], f"{APP}.{DOMAIN}", "/_ah/other") == (200, "web")
    assert get(rules["router"], f"{APP}.{DOMAIN}", "/_ah/queue/deferred") == (200, "api-1")


def test_a_router_started_later_applies_the_rules_from_its_first_request(rules, supervisor, tmp_path_factory,
                                                                         nats_url):
    late = start_router(supervisor, tmp_path_factory, nats_url, rules["control"], "router-dispatch-late")
    assert get(late, f"{APP}.{DOMAIN}", "/api/x") == (200, "api-1")


def test_new_rules_replace_the_old_at_a_running_router(rules):
    try:
        set_rules(rules, "dispatch:\n- url: '*/about'\n  service: api\n", f"{APP}.{DOMAIN}", "/about", "api-1")
        assert get(rules["router"], f"{APP}.{DOMAIN}", "/api/x") == (200, "web")  # the old rules are gone
    finally:
        set_rules(rules, RULES, f"{APP}.{DOMAIN}", "/api/x", "api-1")


def test_a_new_version_of_a_service_serves_its_rules_at_once(rules):
    root = rules["tmp"] / "api-2"
    root.mkdir()
    (root / "app.yaml").write_text(app_yaml("api"))
    (root / "main.py").write_text(MAIN)
    assert kiln(rules["control"], "deploy", str(root), "--app", APP, "--version", "api-2") == 0
    wait_answer(rules["router"], f"{APP}.{DOMAIN}", "/api/x", "api-2")
