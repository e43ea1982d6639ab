"""A cluster brought up as the README's "Deploying on several machines" describes it, then used as a developer would
with nothing but the control plane's address and a deploy token.

Every part is its own process on loopback: a nats-server whose apps' users are decided by the auth callout (two
``natscallout`` replicas), Cassandra for the datastore, the logs and the control plane, the services, the control
plane with the services' addresses, two runtime hosts (``--name`` each, ``--apps-domain``) and a router with two
workers. The two "machines" share one kernel here, so the hosts run instances without per-app Unix users
(``--isolation=none``); the sandbox's user isolation is tested on its own (``test_isolation.py``).
"""

from __future__ import annotations

import http.client
import json
import os
import pathlib
import shutil
import textwrap

import pytest

from deploy import cli
from kiln_platform import natsauth
from kiln_platform.supervisor import free_port, python_module
from tests.integration import apps
from tests.integration.conftest import SECRET, service_env
from tests.integration.test_control_plane import token, wait_for_host

pytestmark = [pytest.mark.nats, pytest.mark.cassandra]

ROOT = pathlib.Path(__file__).resolve().parents[2]
DOMAIN = "example.test"
PLATFORM_PASSWORD = "readme-platform-password"
APP_SECRET = "readme-app-secret"
KEYSPACE = "kiln_readme"


@pytest.fixture(scope="module")
def cluster(supervisor, tmp_path_factory, cassandra_hosts):
    run = supervisor.run_dir
    # 1. NATS, its apps' users decided by the auth callout.
    seed = natsauth.new_issuer_seed()
    nats_url = "nats://" + supervisor.start_nats(tmp_path_factory.mktemp("nats-readme"), name="nats-readme",
                                                 config=natsauth.callout_server_config(PLATFORM_PASSWORD, seed)).address
    platform_url = natsauth.with_credentials(nats_url, natsauth.PLATFORM_USER, PLATFORM_PASSWORD)
    for n in (1, 2):
        ready = run / f"natscallout-readme-{n}.addr"
        supervisor.start(f"natscallout-readme-{n}", python_module(
            "natscallout", "--listen", "127.0.0.1:0", "--ready-file", str(ready)),
            env={**os.environ, "KILN_NATSCALLOUT_ISSUER_SEED": seed, "KILN_NATSCALLOUT_APP_SECRET": APP_SECRET,
                 "KILN_NATSCALLOUT_NATS_URL": platform_url}, ready_file=ready)
    # 2. The same secrets everywhere; every NATS user in the environment, with its credentials.
    env = {**service_env(), **{f"KILN_{part}_NATS_URL": platform_url
                               for part in ("ROUTER", "LOGS", "CRON", "TASKQUEUE", "CONTROL", "MANAGER")},
           "KILN_MANAGER_NATS_APP_SECRET": APP_SECRET, "KILN_TASKQUEUE_SERVICE_SECRET": SECRET,
           "KILN_TASKQUEUE_PLATFORM_SECRET": "readme-platform-secret",
           "KILN_ROUTER_CONTROL_TOKEN": token("*", "read", "router"),
           "KILN_HOST_CONTROL_TOKEN": token("*", "read", "host"),
           "KILN_CRON_CONTROL_TOKEN": token("*", "read", "cron"),
           "KILN_TASKQUEUE_CONTROL_TOKEN": token("*", "read", "taskqueue")}
    addr = {name: f"127.0.0.1:{free_port()}" for name in ("datastore", "memcache", "logs", "cron", "taskqueue",
                                                           "control", "router")}
    cassandra = ("--storage", "cassandra", "--cassandra-hosts", cassandra_hosts)

    def start(name: str, module: str, *args: str) -> None:
        ready = run / f"{name}.addr"
        supervisor.start(name, python_module(module, "--listen", addr[name.removesuffix("-readme")], "--ready-file",
                                             str(ready), *args), env=env, ready_file=ready, timeout=180)

    # 3. The services.
    start("datastore-readme", "datastore_svc", *cassandra, "--cassandra-keyspace", KEYSPACE,
          "--taskqueue", addr["taskqueue"])
    start("memcache-readme", "memcache_svc")
    start("logs-readme", "logs_svc", *cassandra, "--cassandra-keyspace", f"{KEYSPACE}_logs")
    # 4. The control plane, with the services' addresses (index.yaml at deploy; developers' commands).
    start("control-readme", "deploy.control", *cassandra, "--cassandra-keyspace", f"{KEYSPACE}_control",
          "--datastore-addr", addr["datastore"], "--logs-addr", addr["logs"], "--cron-addr", addr["cron"],
          "--taskqueue-addr", addr["taskqueue"])
    for name, module in (("cron-readme", "cron_svc"), ("taskqueue-readme", "taskqueue_svc")):
        start(name, module, "--control-plane", addr["control"], "--router-url", f"http://{addr['router']}",
              "--apps-domain", DOMAIN)
    # 5. Two runtime hosts.
    services = [f"--{name}-addr={addr[name]}" for name in ("datastore", "memcache", "taskqueue")]
    for n in (1, 2):
        supervisor.spawn(f"runtime-host-readme-{n}", python_module(
            "runtime.host", "--control-plane", addr["control"], "--apps-domain", DOMAIN, "--name", f"machine-{n}",
            "--run-dir", str(tmp_path_factory.mktemp(f"host-readme-{n}")),
            "--cache-dir", str(pathlib.Path.home() / ".cache" / "kiln"), "--manager-arg=--isolation=none", "--",
            "--listen", "127.0.0.1:0", *services), env=env)
    # 6. A router with two workers.
    ready = run / "router-readme.addr"
    supervisor.start("router-readme", python_module(
        "router", "--listen", addr["router"], "--workers", "2", "--domain", DOMAIN, "--control-plane",
        addr["control"], "--cache-dir", str(tmp_path_factory.mktemp("router-readme-cache")), "--ready-file",
        str(ready)), env=env, ready_file=ready)
    wait_for_host(addr["control"], "python27")
    return {**addr, "tmp": tmp_path_factory.mktemp("readme-apps")}


def developer(cluster, app: str, *args: str) -> int:
    """A ``kiln`` command as a developer runs it: only the control plane's address and the app's deploy token, in
    the environment (no --app: the token names it)."""
    saved = {k: os.environ.get(k) for k in ("KILN_CONTROL_PLANE", "KILN_TOKEN", "KILN_APP")}
    os.environ.update(KILN_CONTROL_PLANE=cluster["control"], KILN_TOKEN=token(app, "admin", "dev"))
    os.environ.pop("KILN_APP", None)
    try:
        return cli.main(list(args))
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def call(cluster, app: str, path: str = "/", body: str | None = None) -> tuple[int, str]:
    name, _, port = cluster["router"].rpartition(":")
    conn = http.client.HTTPConnection(name, int(port), timeout=60)
    headers = {"Host": f"{app}.{DOMAIN}"}
    if body is not None:
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    try:
        conn.request("GET" if body is None else "POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


def first_answer(cluster, app: str, path: str) -> tuple[int, str]:
    """The app's first answer after a deploy: the router says 404 until it has heard of the app's new default
    version (on NATS, a moment after the deploy returns), and 502-504 only while no instance has started yet (the
    first start on a host installs the version's libraries). These apps answer none of those themselves."""
    answers: list[tuple[int, str]] = []

    def answered() -> bool:
        answers.append(call(cluster, app, path))
        return answers[-1][0] not in (404, 502, 503, 504)
    apps.wait_for(answered, 300)
    return answers[-1]


@pytest.fixture(scope="module")
def guestbook(cluster):
    app_dir = cluster["tmp"] / "guestbook"
    shutil.copytree(ROOT / "examples" / "guestbook", app_dir)
    assert developer(cluster, "guestbook", "deploy", str(app_dir), "--version", "v1") == 0
    return "guestbook"


def test_the_readme_example_serves_200_at_once_after_kiln_deploy(cluster, guestbook):
    status, page = first_answer(cluster, guestbook, "/?guestbook_name=readme")  # its query needs index.yaml's index
    assert status == 200, page[-2000:]
    assert call(cluster, guestbook, "/sign?guestbook_name=readme", "content=Hello%2C+cluster")[0] == 302
    status, page = call(cluster, guestbook, "/?guestbook_name=readme")
    assert status == 200 and "<blockquote>Hello, cluster</blockquote>" in page


def test_every_developer_command_needs_only_the_control_plane_and_a_token(cluster, guestbook, tmp_path, capsys):
    assert first_answer(cluster, guestbook, "/?guestbook_name=commands")[0] == 200
    capsys.readouterr()
    assert developer(cluster, guestbook, "versions", "list", "--json") == 0
    assert [(v["version"], v["default"]) for v in json.loads(capsys.readouterr().out)] == [("v1", True)]
    assert developer(cluster, guestbook, "indexes", "list", "--json") == 0
    assert [(i["kind"], i["state"]) for i in json.loads(capsys.readouterr().out)] == [("Greeting", "serving")]
    assert developer(cluster, guestbook, "cron", "list", "--json") == 0
    assert json.loads(capsys.readouterr().out) == []  # the guestbook has no cron.yaml
    assert developer(cluster, guestbook, "taskqueue", "list", "--json") == 0
    assert [q["queue"] for q in json.loads(capsys.readouterr().out)] == ["default"]
    mapping = tmp_path / "notes.yaml"
    mapping.write_text("kind: Note\nkey: id\nkey_type: int\nproperties:\n- column: text\n")
    (tmp_path / "in.csv").write_text("id,text\n1,first\n2,second\n")
    assert developer(cluster, guestbook, "bulkload", "upload", str(tmp_path / "in.csv"), "--mapping",
                     str(mapping)) == 0
    assert developer(cluster, guestbook, "bulkload", "download", str(tmp_path / "out.csv"), "--mapping",
                     str(mapping)) == 0
    assert (tmp_path / "out.csv").read_text().splitlines() == ["id,text", "1,first", "2,second"]
    logs = tmp_path / "requests.log"
    apps.wait_for(lambda: developer(cluster, guestbook, "logs", str(logs)) == 0
                  and "guestbook_name=commands" in logs.read_text(), 60)


def test_apps_see_their_own_host_name_as_default_version_hostname(cluster):
    app_dir = cluster["tmp"] / "hostname"
    app_dir.mkdir()
    (app_dir / "app.yaml").write_text("runtime: python27\napi_version: 1\nthreadsafe: true\nhandlers:\n"
                                      "- url: /.*\n  script: main.app\n")
    (app_dir / "main.py").write_text(textwrap.dedent("""\
        import os
        def app(environ, start_response):
            start_response('200 OK', [('Content-Type', 'text/plain')])
            return [os.environ['DEFAULT_VERSION_HOSTNAME'].encode()]
        """))
    assert developer(cluster, "hostname", "deploy", str(app_dir), "--version", "v1") == 0
    assert first_answer(cluster, "hostname", "/") == (200, f"hostname.{DOMAIN}")
