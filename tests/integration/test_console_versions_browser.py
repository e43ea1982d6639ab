"""The console's Apps and versions page in a real browser (Debian's Chromium driven by Playwright) against a real
control plane, with versions deployed through it (``deploy.upload``, as ``kiln deploy``) and a real instance
manager running one of them: each test clicks an action and checks its effect in the control plane or the
manager."""

from __future__ import annotations

import json
import types
from collections.abc import Iterator

import grpc
import pytest
from playwright.sync_api import Page, expect

from deploy import upload
from deploy.dev import DevServer
from kiln.pb.deploy.v1 import deploy_pb2 as pb
from kiln.pb.deploy.v1 import deploy_pb2_grpc
from kiln_platform.supervisor import python_module
from tests.integration.apps import wait_for
from tests.integration.conftest import SECRET, service_env
from tests.integration.consolekit import browser, console_dev, console_request, page  # noqa: F401 - fixtures
from tests.integration.test_control_plane import auth, start_control, start_one_instance_manager, token, write_app

pytestmark = [pytest.mark.nats, pytest.mark.browser]

APP = "shown"


@pytest.fixture(scope="module")
def control(supervisor, tmp_path_factory, nats_url) -> str:
    return start_control(supervisor, tmp_path_factory, nats_url, "control-versions-page")


@pytest.fixture(scope="module")
def stub(control) -> Iterator[deploy_pb2_grpc.DeployServiceStub]:
    with grpc.insecure_channel(control) as channel:
        yield deploy_pb2_grpc.DeployServiceStub(channel)


@pytest.fixture(scope="module")
def dev(supervisor, control):
    """The console of app ``shown``, calling the control plane with its admin token (what the ``page`` fixture
    opens, and ``console_request``: only its ``console_url`` and ``addresses`` are used)."""
    ready = supervisor.run_dir / "console-versions.addr"
    console = supervisor.start("console-versions", python_module(
        "console", "--listen", "127.0.0.1:0", "--app-id", APP, "--control-addr", control,
        "--ready-file", str(ready)), env={**service_env(), "KILN_CONSOLE_SERVICE_SECRET": SECRET,
                                          "KILN_CONSOLE_DEPLOY_TOKEN": token(APP, name="console")},
        ready_file=ready)
    return types.SimpleNamespace(console_url=f"http://{console.address}/", addresses={"console": console.address})


@pytest.fixture(scope="module")
def manager_state(supervisor, tmp_path_factory, nats_url, control):
    """A manager keeping one instance of shown/v1; the file where it records its instances."""
    return start_one_instance_manager(supervisor, tmp_path_factory, nats_url, APP, "shown")


def deploy(control: str, tmp_path, version: str, *, promote: bool) -> None:
    with grpc.insecure_channel(control) as channel:
        upload.deploy(channel, token(APP), write_app(tmp_path / version), APP, version, promote=promote,
                      host_check=False)


def versions(stub) -> dict[str, bool]:
    listed = stub.ListVersions(pb.ListVersionsRequest(app_id=APP), metadata=auth(token(APP))).versions
    return {v.version_id: v.is_default for v in listed}


def running(state_file) -> set[str]:
    return {i["instance_id"] for i in json.loads(state_file.read_text()) if i["ready"]}


@pytest.fixture
def three_versions(control, stub, tmp_path) -> None:
    """v1 the default, v2 and v3 not (deployed again for each test: those a test deleted come back)."""
    for version in ("v1", "v2", "v3"):
        deploy(control, tmp_path, version, promote=version == "v1")
    stub.SetDefaultVersion(pb.SetDefaultVersionRequest(app_id=APP, version_id="v1"), metadata=auth(token(APP)))


def section(page: Page, version: str):
    return page.locator(f'section.version[data-version="{version}"]')


def test_the_page_lists_the_versions_newest_first_with_the_default_marked(page, three_versions):
    page.goto("/versions")
    expect(page.locator("section.version h2")).to_have_count(3)
    assert page.locator("section.version").evaluate_all("els => els.map(e => e.dataset.version)") == ["v3", "v2", "v1"]
    expect(section(page, "v1").locator(".badge.default")).to_have_text("default")
    expect(section(page, "v2").locator(".badge.default")).to_have_count(0)


def test_making_a_version_the_default_after_confirming_switches_it_in_the_control_plane(page, stub, three_versions):
    page.goto("/versions")
    messages: list[str] = []
    page.once("dialog", lambda dialog: (messages.append(dialog.message), dialog.accept()))
    section(page, "v2").get_by_role("button", name="Make default").click()
    expect(page.locator(".notice.ok")).to_have_text("Version v2 is now the default.")
    assert messages and messages[0].startswith("Make v2 the default version?")
    assert versions(stub) == {"v1": False, "v2": True, "v3": False}
    expect(section(page, "v2").locator(".badge.default")).to_have_text("default")


def test_dismissing_the_confirmation_changes_nothing(page, stub, three_versions):
    page.goto("/versions")
    page.once("dialog", lambda dialog: dialog.dismiss())
    section(page, "v3").get_by_role("button", name="Delete").click()
    expect(section(page, "v3")).to_have_count(1)
    assert "v3" in versions(stub)


def test_deleting_a_version_that_is_not_the_default_removes_it(page, stub, three_versions):
    page.goto("/versions")
    page.once("dialog", lambda dialog: dialog.accept())
    section(page, "v3").get_by_role("button", name="Delete").click()
    expect(page.locator(".notice.ok")).to_have_text("Version v3 was deleted.")
    expect(section(page, "v3")).to_have_count(0)
    assert set(versions(stub)) == {"v1", "v2"}


def test_deleting_the_default_version_is_refused_with_a_message_and_it_stays(page, stub, three_versions):
    page.goto("/versions")
    page.once("dialog", lambda dialog: dialog.accept())
    section(page, "v1").get_by_role("button", name="Delete").click()
    expect(page.locator("#messages .notice.error")).to_contain_text("version 'v1' serves app 'shown' by default; "
                                                                     "make another version the default first")
    assert versions(stub)["v1"] is True


def test_a_stale_page_deleting_a_version_already_deleted_says_so(page, stub, three_versions):
    page.goto("/versions")
    stub.DeleteVersion(pb.DeleteVersionRequest(app_id=APP, version_id="v2"), metadata=auth(token(APP)))
    page.once("dialog", lambda dialog: dialog.accept())
    section(page, "v2").get_by_role("button", name="Make default").click()
    expect(page.locator("#messages .notice.error")).to_contain_text("has no version 'v2'")
    assert versions(stub) == {"v1": True, "v3": False}


def test_instances_are_shown_and_stopping_one_stops_it_at_its_manager(page, three_versions, manager_state):
    wait_for(lambda: len(running(manager_state)) == 1, 60)
    [victim] = running(manager_state)
    row = section(page, "v1").locator(f'tr[data-instance="{victim}"]')

    def shown() -> bool:
        page.goto("/versions")
        return row.count() == 1
    wait_for(shown, 30)
    expect(row.locator(".state")).to_have_text("idle")
    memory = row.locator(".memory").inner_text()
    assert memory.endswith(" MiB") and float(memory.split()[0]) > 1
    page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Stop").click()
    expect(page.locator(".notice.ok")).to_contain_text(f"Instance {victim} is stopping")
    wait_for(lambda: running(manager_state) and victim not in running(manager_state), 60)


def test_a_stale_page_stopping_an_instance_that_is_gone_says_so(page, stub, three_versions):
    page.goto("/versions")
    page.evaluate("""() => {
        const form = document.createElement('form');
        form.method = 'post'; form.action = '/versions/stop-instance';
        for (const [k, v] of [['csrf_token', document.querySelector('input[name=csrf_token]').value],
                              ['instance', 'f'.repeat(32)]]) {
            const input = document.createElement('input'); input.type = 'hidden'; input.name = k; input.value = v;
            form.appendChild(input);
        }
        document.body.appendChild(form); form.submit();
    }""")
    expect(page.locator(".notice.error")).to_contain_text("no running instance")


def test_an_action_without_the_pages_security_token_is_refused_and_changes_nothing(dev, stub, three_versions):
    status, _, body = console_request(dev, "POST", "/versions/delete", body="version=v3",
                                      headers={"Content-Type": "application/x-www-form-urlencoded"})
    assert status == 403 and "security token" in body
    assert "v3" in versions(stub)


# --- under kiln dev ----------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def kiln_dev(tmp_path_factory) -> Iterator[DevServer]:
    with console_dev(tmp_path_factory.mktemp("versions-dev") / "app") as server:
        yield server


@pytest.fixture
def dev_page(browser, kiln_dev) -> Iterator[Page]:  # noqa: F811 - browser is consolekit's fixture
    context = browser.new_context(base_url=kiln_dev.console_url.rstrip("/"))
    yield context.new_page()
    context.close()


def test_kiln_dev_shows_its_version_as_the_default_and_stopping_its_instance_replaces_it(dev_page, kiln_dev):
    wait_for(lambda: len(kiln_dev.instances()) == 1, 60)
    [victim] = kiln_dev.instances()
    row = section(dev_page, kiln_dev.version_id).locator(f'tr[data-instance="{victim}"]')

    def shown() -> bool:
        dev_page.goto("/versions")
        return row.count() == 1
    wait_for(shown, 30)
    expect(section(dev_page, kiln_dev.version_id).locator(".badge.default")).to_have_text("default")
    dev_page.once("dialog", lambda dialog: dialog.accept())
    row.get_by_role("button", name="Stop").click()
    expect(dev_page.locator(".notice.ok")).to_contain_text(f"Instance {victim} is stopping")
    wait_for(lambda: kiln_dev.instances() and victim not in kiln_dev.instances(), 60)
