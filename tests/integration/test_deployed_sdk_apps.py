"""App Engine apps written for Google's SDK run unmodified after ``kiln deploy`` (issue 15): the bundled guestbook
(python27: webapp2, Jinja2, ndb, users) and Google's own Flask mail sample (python312, ``appengine-python-standard``
1.1.4 from requirements.txt, ``wrap_wsgi_app``), deployed through the control plane to a runtime host, served by a
router from the control plane, calling kiln's services with the app's identity."""

from __future__ import annotations

import email
import email.policy
import http.client
import pathlib
import shutil
import urllib.parse

import grpc
import pytest

from deploy import cli
from kiln.pb.mail.v1 import mail_pb2 as mail_pb
from kiln.pb.mail.v1 import mail_pb2_grpc
from kiln_platform.supervisor import python_module
from tests.integration import apps
from tests.integration.conftest import ROOT, app_metadata, service_env
from tests.integration.test_control_plane import start_control, token, wait_for_host

pytestmark = pytest.mark.nats

DOMAIN = "example.test"
SAMPLE = ROOT / "tests" / "fixtures" / "google_samples" / "mail" / "flask"


@pytest.fixture(scope="module")
def cluster(supervisor, tmp_path_factory, nats_url, grpc_services):
    control = start_control(supervisor, tmp_path_factory, nats_url, "control-sdk", "--datastore-addr",
                            grpc_services["datastore"])
    run = supervisor.run_dir
    env = {**service_env(), "KILN_ROUTER_CONTROL_TOKEN": token("*", "read", "router"),
           "KILN_HOST_CONTROL_TOKEN": token("*", "read", "host"), "KILN_MANAGER_NATS_URL": nats_url}
    router = supervisor.start("router-sdk", python_module(
        "router", "--listen", "127.0.0.1:0", "--nats-url", nats_url, "--domain", DOMAIN,
        "--control-plane", control, "--cache-dir", str(tmp_path_factory.mktemp("router-sdk-cache")),
        "--ready-file", str(run / "router-sdk.addr")), env=env, ready_file=run / "router-sdk.addr")
    services = [f"--{name}-addr={grpc_services[name]}" for name in ("datastore", "memcache", "urlfetch", "mail",
                                                                    "images")]
    supervisor.spawn("runtime-host-sdk", python_module(
        "runtime.host", "--control-plane", control, "--run-dir", str(tmp_path_factory.mktemp("host-sdk-run")),
        "--cache-dir", str(pathlib.Path.home() / ".cache" / "kiln"), "--manager-arg=--isolation=none", "--",
        "--listen", "127.0.0.1:0", *services), env=env)
    wait_for_host(control, "python312")  # kiln deploy refuses a version no live host can run
    return {"control": control, "router": router.address, "mail": grpc_services["mail"],
            "datastore": grpc_services["datastore"],
            "tmp": tmp_path_factory.mktemp("sdk-apps")}


def deploy(cluster, app: str, source: pathlib.Path) -> None:
    app_dir = cluster["tmp"] / app
    shutil.copytree(source, app_dir)
    access = ["--control-plane", cluster["control"], "--token", token(app, "admin", "dev")]
    # index.yaml (the guestbook's composite index) is applied by the deploy itself: no `kiln indexes update`.
    assert cli.main(["deploy", str(app_dir), "--app", app, "--version", "v1", *access]) == 0


def call(cluster, app: str, path: str = "/", *, form: dict[str, str] | None = None) -> tuple[int, str]:
    name, _, port = cluster["router"].rpartition(":")
    conn = http.client.HTTPConnection(name, int(port), timeout=60)
    headers = {"Host": f"{app}.{DOMAIN}"}
    body = None
    if form is not None:
        body = urllib.parse.urlencode(form)
        headers["Content-Type"] = "application/x-www-form-urlencoded"
    try:
        conn.request("GET" if form is None else "POST", path, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read().decode("utf-8", "replace")
    finally:
        conn.close()


def wait_serving(cluster, app: str, path: str = "/", seconds: float = 240) -> None:
    """Until the app's first version answers 200 (the first deploy installs its libraries and Python)."""
    apps.wait_for(lambda: call(cluster, app, path)[0] == 200, seconds)


def test_the_deployed_guestbook_stores_and_lists_a_greeting_through_ndb(cluster):
    deploy(cluster, "guestbook", ROOT / "examples" / "guestbook")
    wait_serving(cluster, "guestbook", "/?guestbook_name=deployed")  # its index built
    status, _ = call(cluster, "guestbook", "/sign?guestbook_name=deployed", form={"content": "Hello, deployed"})
    assert status == 302
    status, page = call(cluster, "guestbook", "/?guestbook_name=deployed")
    assert status == 200
    assert "An anonymous person" in page and "<blockquote>Hello, deployed</blockquote>" in page


def test_googles_flask_mail_sample_sends_mail_after_kiln_deploy(cluster):
    deploy(cluster, "mailsample", SAMPLE)
    wait_serving(cluster, "mailsample")
    status, body = call(cluster, "mailsample", "/", form={"email": "friend@example.org", "body": "from a cluster"})
    assert (status, body) == (201, "Successfully sent mail to friend@example.org.")
    found: list[mail_pb.OutboxMessage] = []

    def kept() -> list[mail_pb.OutboxMessage]:
        with grpc.insecure_channel(cluster["mail"]) as channel:
            found[:] = [m for m in mail_pb2_grpc.MailServiceStub(channel).ListOutbox(
                mail_pb.ListOutboxRequest(), metadata=app_metadata("mailsample"), timeout=30).messages
                if m.subject == "App Engine Outgoing Email"]
        return found

    apps.wait_for(kept, 30)
    message = email.message_from_bytes(found[0].raw, policy=email.policy.default)
    assert message["From"].addresses[0].username == "demo-app"
    assert message.get_content().strip() == "from a cluster"
