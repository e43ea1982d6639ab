"""``kiln deploy`` applies the version's index.yaml, as ``appcfg update`` did (issue 21): the control plane declares
it to the datastore before the version can serve, new indexes build (the deploy waits a few seconds for them and
says which serve), none is deleted, and a datastore the control plane cannot use does not fail the deploy: it says
why, naming the command that applies the file later."""

from __future__ import annotations

import json
import pathlib
import uuid

import grpc
import pytest

from deploy import cli
from kiln.pb.datastore.v1 import datastore_pb2 as dpb
from kiln.pb.datastore.v1 import datastore_pb2_grpc
from kiln_platform import indexyaml
from kiln_platform.supervisor import free_port
from tests.integration.conftest import app_metadata
from tests.integration.test_control_plane import start_control, token

pytestmark = pytest.mark.nats

INDEX_YAML = """indexes:
- kind: Greeting
  ancestor: yes
  properties:
  - name: date
    direction: desc
- kind: Book
  properties:
  - name: author
  - name: pages
    direction: desc
"""


@pytest.fixture(scope="module")
def control(supervisor, tmp_path_factory, nats_url, datastore_addr) -> str:
    """A control plane that declares index.yaml to the test session's datastore."""
    return start_control(supervisor, tmp_path_factory, nats_url, "control-indexes", "--datastore-addr",
                         datastore_addr)


def write_app(root: pathlib.Path, index_yaml: str | None) -> pathlib.Path:
    root.mkdir(parents=True)
    (root / "app.yaml").write_text("runtime: python311\nhandlers:\n- url: /.*\n  script: auto\n")
    (root / "main.py").write_text(f"# {uuid.uuid4().hex}\ndef app(environ, start_response):\n"
                                  "    start_response('200 OK', [])\n    return [b'ok']\n")
    if index_yaml is not None:
        (root / "index.yaml").write_text(index_yaml)
    return root


def deploy(control: str, app_dir: pathlib.Path, app: str, capsys, version: str = "v1") -> tuple[int, dict]:
    status = cli.main(["deploy", str(app_dir), "--app", app, "--version", version, "--control-plane", control,
                       "--token", token(app), "--no-host-check", "--json"])
    out = capsys.readouterr().out
    return status, json.loads(out) if status == 0 else {"error": out}


def indexes_at(datastore: str, app: str) -> dict[str, int]:
    with grpc.insecure_channel(datastore) as channel:
        found = datastore_pb2_grpc.DatastoreServiceStub(channel).ListIndexes(
            dpb.ListIndexesRequest(), metadata=app_metadata(app), timeout=30).indexes
    return {indexyaml.describe(i): i.state for i in found}


def new_app() -> str:
    return f"idx-{uuid.uuid4().hex[:10]}"


def test_a_deploy_declares_index_yaml_and_says_which_new_indexes_serve(control, datastore_addr, tmp_path, capsys):
    app = new_app()
    status, result = deploy(control, write_app(tmp_path / "app", INDEX_YAML), app, capsys)
    assert status == 0, result
    wanted = {"Greeting(date desc) ancestor", "Book(author, pages desc)"}
    assert result["indexes"]["applied"] is True and result["indexes"]["not_applied"] == ""
    assert set(result["indexes"]["serving"]) | set(result["indexes"]["building"]) == wanted
    assert indexes_at(datastore_addr, app).keys() == wanted


def test_a_redeploy_reports_no_new_index_and_deletes_none(control, datastore_addr, tmp_path, capsys):
    app = new_app()
    assert deploy(control, write_app(tmp_path / "one", INDEX_YAML), app, capsys)[0] == 0
    fewer = INDEX_YAML.split("- kind: Book")[0]  # the next version no longer lists Book's index
    status, result = deploy(control, write_app(tmp_path / "two", fewer), app, capsys, version="v2")
    assert status == 0, result
    assert result["indexes"] == {"applied": True, "serving": [], "building": [], "not_applied": ""}
    assert "Book(author, pages desc)" in indexes_at(datastore_addr, app)  # vacuum deletes, deploy never does


def test_the_text_output_names_each_new_index(control, tmp_path, capsys):
    app = new_app()
    status = cli.main(["deploy", str(write_app(tmp_path / "app", INDEX_YAML)), "--app", app, "--version", "v1",
                       "--control-plane", control, "--token", token(app), "--no-host-check"])
    out = capsys.readouterr().out
    assert status == 0
    assert "new index Greeting(date desc) ancestor:" in out and "new index Book(author, pages desc):" in out


def test_an_app_without_index_yaml_gets_no_index_report(control, tmp_path, capsys):
    status, result = deploy(control, write_app(tmp_path / "app", None), new_app(), capsys)
    assert status == 0
    assert result["indexes"] == {"applied": False, "serving": [], "building": [], "not_applied": ""}


def test_without_a_datastore_address_the_deploy_says_index_yaml_was_not_applied(supervisor, tmp_path_factory,
                                                                                 nats_url, tmp_path, capsys):
    control = start_control(supervisor, tmp_path_factory, nats_url, "control-no-datastore")
    status, result = deploy(control, write_app(tmp_path / "app", INDEX_YAML), new_app(), capsys)
    assert status == 0, result
    assert result["indexes"]["applied"] is False
    assert "no datastore address" in result["indexes"]["not_applied"]


def test_an_unreachable_datastore_does_not_fail_the_deploy(supervisor, tmp_path_factory, nats_url, tmp_path,
                                                           capsys):
    control = start_control(supervisor, tmp_path_factory, nats_url, "control-dead-datastore", "--datastore-addr",
                            f"127.0.0.1:{free_port()}")
    app = new_app()
    status, result = deploy(control, write_app(tmp_path / "app", INDEX_YAML), app, capsys)
    assert status == 0, result
    assert result["indexes"]["applied"] is False
    assert "UNAVAILABLE" in result["indexes"]["not_applied"]
    assert result["version"] == "v1"
