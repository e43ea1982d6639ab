"""Deployed versions end to end: ``kiln deploy`` to the control plane, a runtime host running every version,
a router serving them from the control plane — per-version URLs, the default switch by NATS event, deletion,
redeploys and promotions under load without a dropped request."""

from __future__ import annotations

import concurrent.futures
import http.client
import json
import pathlib
import threading
import time

import pytest

from deploy import cli
from kiln_platform.supervisor import free_port, python_module
from tests.integration.conftest import service_env
from tests.integration.test_control_plane import start_control, token, wait_for_host

pytestmark = pytest.mark.nats

APP = "shop"
DOMAIN = "example.test"
APP_YAML = ("runtime: python27\napi_version: 1\nthreadsafe: true\nhandlers:\n"
            "- url: /static\n  static_dir: static\n- url: /.*\n  script: main.app\n")


def main_py(marker: str) -> str:
    return ("import logging, os\n"
            "def app(environ, start_response):\n"
            "    if environ['PATH_INFO'].startswith('/warn'):\n"
            "        logging.warning('careful: %s', environ['PATH_INFO'])\n"
            "    start_response('200 OK', [('Content-Type', 'text/plain')])\n"
            f"    return [(os.environ['CURRENT_VERSION_ID'] + ' {marker}').encode()]\n")


@pytest.fixture(scope="module")
def cluster(supervisor, tmp_path_factory, nats_url, datastore_addr):
    # An operator gives the control plane the services' addresses; developers' commands reach them through it.
    cron_addr, logs_addr = f"127.0.0.1:{free_port()}", f"127.0.0.1:{free_port()}"
    control = start_control(supervisor, tmp_path_factory, nats_url, "control-serving", "--logs-addr", logs_addr,
                            "--cron-addr", cron_addr, "--datastore-addr", datastore_addr)
    run = supervisor.run_dir
    env = {**service_env(), "KILN_ROUTER_CONTROL_TOKEN": token("*", "read", "router"),
           "KILN_HOST_CONTROL_TOKEN": token("*", "read", "host"), "KILN_MANAGER_NATS_URL": nats_url}
    # resync-seconds 3600: only the NATS events can make the router notice a new default in these tests.
    # Two routers, as a cluster has: a default switch must reach every one of them.
    router, other_router = (supervisor.start(name, python_module(
        "router", "--listen", "127.0.0.1:0", "--nats-url", nats_url, "--domain", DOMAIN,
        "--control-plane", control, "--cache-dir", str(tmp_path_factory.mktemp(f"{name}-cache")),
        "--resync-seconds", "3600", "--ready-file", str(run / f"{name}.addr")),
        env=env, ready_file=run / f"{name}.addr") for name in ("router-deployed", "router-deployed-2"))
    supervisor.spawn("runtime-host", python_module(
        "runtime.host", "--control-plane", control, "--run-dir", str(tmp_path_factory.mktemp("host-run")),
        "--cache-dir", str(tmp_path_factory.mktemp("host-cache")), "--resync-seconds", "3600",
        "--manager-arg=--isolation=none", "--", "--listen", "127.0.0.1:0"), env=env)
    cron = supervisor.start("cron-deployed", python_module(
        "cron_svc", "--listen", cron_addr, "--nats-url", nats_url, "--control-plane", control,
        "--router-url", f"http://{router.address}", "--apps-domain", DOMAIN, "--resync-seconds", "3600",
        "--ready-file", str(run / "cron-deployed.addr")),
        env={**env, "KILN_CRON_CONTROL_TOKEN": token("*", "read", "cron")}, ready_file=run / "cron-deployed.addr")
    logs = supervisor.start("logs-deployed", python_module(
        "logs_svc", "--listen", logs_addr, "--nats-url", nats_url, "--data-dir",
        str(tmp_path_factory.mktemp("logs")), "--ready-file", str(run / "logs-deployed.addr")),
        env=env, ready_file=run / "logs-deployed.addr")
    wait_for_host(control, "python27")  # kiln deploy refuses a version no live host can run
    return {"control": control, "router": router.address, "other_router": other_router.address,
            "cron": cron.address, "logs": logs.address,
            "tmp": tmp_path_factory.mktemp("apps")}


def get(address: str, host: str, path: str = "/") -> tuple[int, str]:
    name, _, port = address.rpartition(":")
    conn = http.client.HTTPConnection(name, int(port), timeout=30)
    try:
        conn.request("GET", path, headers={"Host": host})
        resp = conn.getresponse()
        return resp.status, resp.read().decode()
    finally:
        conn.close()


def wait_for(address: str, host: str, expected: str, seconds: float = 90) -> None:
    deadline = time.monotonic() + seconds
    last = None
    while time.monotonic() < deadline:
        last = get(address, host)
        if last == (200, expected):
            return
        time.sleep(0.1)
    raise AssertionError(f"{host} never answered {expected!r}; last {last}")


def kiln(cluster, *args: str, capsys=None) -> tuple[int, str]:
    base = ["--control-plane", cluster["control"], "--token", token(APP, "admin", "dev")]
    status = cli.main([*args, *base])
    out = capsys.readouterr().out if capsys is not None else ""
    return status, out


def write_app(cluster, name: str, marker: str) -> pathlib.Path:
    root = cluster["tmp"] / name
    (root / "static").mkdir(parents=True, exist_ok=True)
    (root / "app.yaml").write_text(APP_YAML)
    (root / "main.py").write_text(main_py(marker))
    (root / "static" / "hello.txt").write_text(f"static {marker}")
    return root


class Load:
    """Requests to the app's domain in a loop on two threads, recording every answer."""

    def __init__(self, address: str) -> None:
        self.address = address
        self.answers: list[tuple[int, str]] = []
        self._stop = threading.Event()
        self._pool = concurrent.futures.ThreadPoolExecutor(2)

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.answers.append(get(self.address, f"{APP}.{DOMAIN}"))
            except OSError as exc:
                self.answers.append((0, repr(exc)))

    def __enter__(self) -> Load:
        self._futures = [self._pool.submit(self._loop) for _ in range(2)]
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        for f in self._futures:
            f.result()
        self._pool.shutdown()


def test_the_first_deploy_serves_the_app_with_its_version_id(cluster, capsys):
    status, out = kiln(cluster, "deploy", str(write_app(cluster, "one", "first")), "--app", APP, "--version", "v1",
                       "--json", capsys=capsys)
    assert status == 0
    assert json.loads(out)["default"] is True  # an app's first version becomes its default
    wait_for(cluster["router"], f"{APP}.{DOMAIN}", "v1.1 first")
    assert get(cluster["router"], f"{APP}.{DOMAIN}", "/static/hello.txt") == (200, "static first")


def test_each_version_has_its_own_url_and_the_default_switches_by_event(cluster, capsys):
    assert kiln(cluster, "deploy", str(write_app(cluster, "two", "second")), "--app", APP, "--version", "v2")[0] == 0
    wait_for(cluster["router"], f"v2-dot-{APP}.{DOMAIN}", "v2.1 second")
    assert get(cluster["router"], f"{APP}.{DOMAIN}") == (200, "v1.1 first")
    assert get(cluster["router"], f"v2-dot-{APP}.{DOMAIN}", "/static/hello.txt") == (200, "static second")
    wait_for(cluster["other_router"], f"{APP}.{DOMAIN}", "v1.1 first")
    assert kiln(cluster, "versions", "set-default", "v2", "--app", APP)[0] == 0
    for router in (cluster["router"], cluster["other_router"]):
        wait_for(router, f"{APP}.{DOMAIN}", "v2.1 second", seconds=10)
    capsys.readouterr()
    status, out = kiln(cluster, "versions", "list", "--app", APP, "--json", capsys=capsys)
    assert status == 0
    assert [(v["id"], v["default"], v["deployed_by"]) for v in json.loads(out)] == \
        [("v2.1", True, "dev"), ("v1.1", False, "dev")]


def test_the_default_cannot_be_deleted_and_a_deleted_version_stops_serving(cluster, capsys):
    status = kiln(cluster, "versions", "delete", "v2", "--app", APP)[0]
    assert status == 1
    assert "set-default" in capsys.readouterr().err
    assert kiln(cluster, "versions", "delete", "v1", "--app", APP)[0] == 0
    deadline = time.monotonic() + 30
    while get(cluster["router"], f"v1-dot-{APP}.{DOMAIN}")[0] != 404 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert get(cluster["router"], f"v1-dot-{APP}.{DOMAIN}")[0] == 404


def test_an_unknown_version_is_not_found(cluster):
    status, body = get(cluster["router"], f"nope-dot-{APP}.{DOMAIN}")
    assert status == 404 and "nope" in body


def test_redeploying_the_default_version_drops_no_request(cluster):
    app = write_app(cluster, "two", "second, again")
    with Load(cluster["router"]) as load:
        time.sleep(0.5)
        assert kiln(cluster, "deploy", str(app), "--app", APP, "--version", "v2")[0] == 0
        wait_for(cluster["router"], f"{APP}.{DOMAIN}", "v2.2 second, again")
        time.sleep(0.5)
    assert load.answers and all(status == 200 for status, _ in load.answers), \
        [a for a in load.answers if a[0] != 200][:5]
    assert {body for _, body in load.answers} <= {"v2.1 second", "v2.2 second, again"}


def test_promoting_a_new_version_drops_no_request(cluster):
    app = write_app(cluster, "three", "third")
    with Load(cluster["router"]) as load:
        time.sleep(0.5)
        assert kiln(cluster, "deploy", str(app), "--app", APP, "--version", "v3", "--promote")[0] == 0
        wait_for(cluster["router"], f"{APP}.{DOMAIN}", "v3.1 third")
        time.sleep(0.5)
    assert load.answers and all(status == 200 for status, _ in load.answers), \
        [a for a in load.answers if a[0] != 200][:5]
    assert {body for _, body in load.answers} <= {"v2.2 second, again", "v3.1 third"}


def test_cli_errors_are_one_line_with_the_fix(cluster, capsys):
    status = cli.main(["versions", "list", "--app", APP, "--control-plane", cluster["control"],
                       "--token", "kiln1.bogus"])
    err = capsys.readouterr().err
    assert status == 1 and err.count("\n") == 1 and "--token" in err
    status = cli.main(["versions", "list", "--app", APP, "--control-plane", cluster["control"]])
    assert status == 2 and "KILN_TOKEN" in capsys.readouterr().err


def cron_jobs(cluster, capsys) -> list[dict]:
    capsys.readouterr()
    status, out = kiln(cluster, "cron", "list", "--app", APP, "--json", capsys=capsys)
    assert status == 0
    return json.loads(out)


def test_cron_jobs_follow_the_default_versions_cron_yaml(cluster, capsys):
    app = write_app(cluster, "five", "fifth")
    (app / "cron.yaml").write_text("cron:\n- description: nightly report\n  url: /tasks/report\n"
                                   "  schedule: every day 03:00\n  timezone: Europe/Paris\n")
    assert kiln(cluster, "deploy", str(app), "--app", APP, "--version", "v5")[0] == 0
    assert cron_jobs(cluster, capsys) == []  # v3, the default, has no cron.yaml
    assert kiln(cluster, "versions", "set-default", "v5", "--app", APP)[0] == 0
    deadline = time.monotonic() + 10
    jobs = cron_jobs(cluster, capsys)
    while not jobs and time.monotonic() < deadline:
        time.sleep(0.1)
        jobs = cron_jobs(cluster, capsys)
    assert [(j["url"], j["schedule"], j["timezone"], j["description"]) for j in jobs] == \
        [("/tasks/report", "every day 03:00", "Europe/Paris", "nightly report")]
    assert jobs[0]["next_run"] is not None and jobs[0]["last_run"] is None


def download(cluster, path: pathlib.Path, *extra: str) -> int:
    return kiln(cluster, "logs", str(path), "--app", APP, *extra)[0]


def wait_logged(cluster, tmp_path: pathlib.Path, marker: str, count: int) -> None:
    """Until logs_svc has stored ``count`` requests whose path holds ``marker`` (they travel through JetStream)."""
    probe = tmp_path / "probe.log"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert download(cluster, probe) == 0
        if probe.read_text().count(marker) >= count:
            return
        time.sleep(0.2)
    raise AssertionError(f"logs_svc never had {count} requests with {marker!r}")


def ensure_serving(cluster) -> None:
    """The app serves (the tests above leave v5 the default; run alone, deploy it)."""
    if get(cluster["router"], f"{APP}.{DOMAIN}")[0] != 200:
        assert kiln(cluster, "deploy", str(write_app(cluster, "five", "fifth")), "--app", APP, "--version", "v5",
                    "--promote")[0] == 0
        wait_for(cluster["router"], f"{APP}.{DOMAIN}", "v5.1 fifth")


def requested(line: str) -> str:
    return line.split('"GET ')[1].split()[0]


def test_logs_download_appends_only_new_records(cluster, tmp_path):
    ensure_serving(cluster)
    for i in range(3):
        assert get(cluster["router"], f"{APP}.{DOMAIN}", f"/first-batch/{i}")[0] == 200
    wait_logged(cluster, tmp_path, "/first-batch/", 3)
    out = tmp_path / "requests.log"
    assert download(cluster, out, "--append") == 0
    before = out.read_text().splitlines()
    assert [requested(line) for line in before if "/first-batch/" in line] == \
        ["/first-batch/0", "/first-batch/1", "/first-batch/2"]  # oldest first
    for i in range(2):
        assert get(cluster["router"], f"{APP}.{DOMAIN}", f"/second-batch/{i}")[0] == 200
    wait_logged(cluster, tmp_path, "/second-batch/", 2)
    assert download(cluster, out, "--append") == 0
    after = out.read_text().splitlines()
    assert after[:len(before)] == before
    added = after[len(before):]
    assert [requested(line) for line in added] == ["/second-batch/0", "/second-batch/1"]
    assert len(set(after)) == len(after)  # no record twice


def test_logs_severity_keeps_requests_that_logged_at_that_level(cluster, tmp_path):
    ensure_serving(cluster)
    assert get(cluster["router"], f"{APP}.{DOMAIN}", "/warn/now")[0] == 200
    assert get(cluster["router"], f"{APP}.{DOMAIN}", "/quiet/now")[0] == 200
    wait_logged(cluster, tmp_path, "/quiet/now", 1)
    wait_logged(cluster, tmp_path, "/warn/now", 1)
    out = tmp_path / "warnings.log"
    assert download(cluster, out, "--severity", "warning") == 0
    text = out.read_text()
    assert "/warn/now" in text and "/quiet/now" not in text
    assert "\t2:" in text and "careful: /warn/now" in text  # the app's line, at appcfg's level 2 (warning)


def test_logs_json_format_and_version_filter(cluster, tmp_path):
    ensure_serving(cluster)
    assert get(cluster["router"], f"v5-dot-{APP}.{DOMAIN}", "/json-check")[0] == 200
    wait_logged(cluster, tmp_path, "/json-check", 1)
    out = tmp_path / "v5.jsonl"
    assert download(cluster, out, "--format", "json", "--version", "v5") == 0
    records = [json.loads(line) for line in out.read_text().splitlines()]
    assert records and {r["versionId"] for r in records} == {"v5"}
    assert any(r["resource"] == "/json-check" and r["status"] == 200 for r in records)


def json_records(path: pathlib.Path, prefix: str) -> list[dict]:
    return [r for r in map(json.loads, path.read_text().splitlines()) if r["resource"].startswith(prefix)]


def test_logs_by_request_id_and_time_range(cluster, tmp_path):
    ensure_serving(cluster)
    for name in ("early", "late"):
        assert get(cluster["router"], f"{APP}.{DOMAIN}", f"/range-{name}")[0] == 200
    wait_logged(cluster, tmp_path, "/range-late", 1)
    wait_logged(cluster, tmp_path, "/range-early", 1)
    every = tmp_path / "every.jsonl"
    assert download(cluster, every, "--format", "json") == 0
    early, late = sorted(json_records(every, "/range-"), key=lambda r: r["startTime"])
    assert (early["resource"], late["resource"]) == ("/range-early", "/range-late")

    def resources(*flags: str) -> list[str]:
        out = tmp_path / f"part{len(list(tmp_path.iterdir()))}.jsonl"
        assert download(cluster, out, "--format", "json", *flags) == 0
        return [r["resource"] for r in json_records(out, "/range-")]

    assert resources("--request-id", late["requestId"]) == ["/range-late"]
    assert resources("--start", late["startTime"]) == ["/range-late"]  # from it, inclusive
    assert resources("--end", late["startTime"]) == ["/range-early"]  # up to it, exclusive


INDEX_YAML = ("indexes:\n- kind: Order\n  properties:\n  - name: customer\n  - name: placed\n    direction: desc\n"
              "- kind: Order\n  ancestor: yes\n  properties:\n  - name: total\n")


def kiln_indexes(cluster, capsys, *args: str) -> tuple[int, str, str]:
    """``kiln indexes`` with only the control plane's address and a token for the one app (which names it)."""
    capsys.readouterr()
    status = cli.main(["indexes", *args, "--control-plane", cluster["control"], "--token",
                       token("idxapp", "admin", "dev"), "--json"])
    captured = capsys.readouterr()
    return status, captured.out, captured.err


def test_indexes_update_builds_and_vacuum_deletes_only_unlisted_after_confirmation(cluster, capsys, tmp_path):
    app = tmp_path / "idx"
    app.mkdir()
    (app / "app.yaml").write_text(APP_YAML)
    (app / "index.yaml").write_text(INDEX_YAML)
    status, out, _ = kiln_indexes(cluster, capsys, "update", str(app))
    assert status == 0
    assert sorted((i["kind"], i["ancestor"], [p["name"] for p in i["properties"]]) for i in json.loads(out)) == \
        [("Order", False, ["customer", "placed"]), ("Order", True, ["total"])]
    (app / "index.yaml").write_text(INDEX_YAML.split("- kind: Order\n  ancestor")[0])
    status, _, err = kiln_indexes(cluster, capsys, "vacuum", str(app))
    assert status == 2 and "--yes" in err  # no terminal to ask on: nothing deleted
    assert len(json.loads(kiln_indexes(cluster, capsys, "list")[1])) == 2
    status, out, _ = kiln_indexes(cluster, capsys, "vacuum", str(app), "--yes")
    assert status == 0
    assert [(i["kind"], i["ancestor"]) for i in json.loads(out)["deleted"]] == [("Order", True)]
    deadline = time.monotonic() + 30
    remaining = json.loads(kiln_indexes(cluster, capsys, "list")[1])
    while len(remaining) > 1 and time.monotonic() < deadline:  # the deleted index's rows go in the background
        assert remaining[-1]["state"] == "deleting" or remaining[0]["state"] == "deleting"
        time.sleep(0.2)
        remaining = json.loads(kiln_indexes(cluster, capsys, "list")[1])
    assert [[p["name"] for p in i["properties"]] for i in remaining] == [["customer", "placed"]]
