"""``kiln bulkload`` against a real datastore_svc and control plane: rows in with rejects and reasons, a kind
back out to CSV, and a load interrupted by the datastore dying that resumes with every row loaded exactly once."""

from __future__ import annotations

import csv
import json
import signal
import subprocess
import sys
import time

import grpc
import pytest

from deploy import cli
from kiln.pb.datastore.v1 import datastore_pb2 as pb
from kiln.pb.datastore.v1 import datastore_pb2_grpc
from kiln_platform.supervisor import free_port, python_module
from tests.integration.conftest import ROOT, app_metadata, service_env
from tests.integration.test_control_plane import start_control, token

pytestmark = pytest.mark.nats

MAPPING = ("kind: Book\nkey: isbn\nproperties:\n- column: title\n  required: true\n- column: pages\n  type: int\n"
           "- column: published\n  type: date\n")


@pytest.fixture(scope="module")
def stack(supervisor, tmp_path_factory, nats_url):
    port = free_port()
    control = start_control(supervisor, tmp_path_factory, nats_url, "control-bulkload", "--datastore-addr",
                            f"127.0.0.1:{port}")
    data = tmp_path_factory.mktemp("bulk-datastore")
    run = supervisor.run_dir

    def start_datastore(name: str):
        ready = run / f"{name}.addr"
        return supervisor.start(name, python_module(
            "datastore_svc", "--listen", f"127.0.0.1:{port}", "--data-dir", str(data), "--ready-file", str(ready)),
            env=service_env(), ready_file=ready)
    return {"control": control, "datastore": f"127.0.0.1:{port}", "start_datastore": start_datastore,
            "child": start_datastore("datastore-bulk")}


def args(stack, app: str, *extra: str) -> list[str]:
    return [*extra, "--app", app, "--control-plane", stack["control"],
            "--token", token(app, "admin", "loader"), "--json"]


def count(stack, app: str, kind: str) -> int:
    with grpc.insecure_channel(stack["datastore"]) as channel:
        stub = datastore_pb2_grpc.DatastoreServiceStub(channel)
        query, total = pb.Query(kind=kind, keys_only=True), 0
        while True:
            batch = stub.RunQuery(pb.RunQueryRequest(query=query, batch_size=1000), metadata=app_metadata(app)).batch
            total += len(batch.entity_results)
            if batch.more_results != pb.QueryResultBatch.MORE_RESULTS_TYPE_NOT_FINISHED:
                return total
            query.start_cursor = batch.end_cursor


def read_csv(path) -> list[list[str]]:
    with open(path, newline="") as f:
        return list(csv.reader(f))


def test_upload_loads_good_rows_and_rejects_bad_ones_with_reasons(stack, tmp_path, capsys):
    (tmp_path / "map.yaml").write_text(MAPPING)
    data = tmp_path / "books.csv"
    data.write_text("isbn,title,pages,published\n1,Dune,412,1965-08-01\n2,,100,2000-01-01\n3,Emma,many,1815-12-23\n"
                    "4,Ulysses,730,1922-02-02\n")
    assert cli.main(args(stack, "books", "bulkload", "upload", str(data), "--mapping", str(tmp_path / "map.yaml"))) == 0
    report = json.loads(capsys.readouterr().out)
    assert (report["loaded"], report["rejected"]) == (2, 2)
    rejects = read_csv(tmp_path / "books.csv.rejects-Book.csv")
    assert rejects[0] == ["row", "error", "isbn", "title", "pages", "published"]
    assert [(r[0], r[1].split(":")[0]) for r in rejects[1:]] == [("2", "title"), ("3", "pages")]
    assert "required" in rejects[1][1] and "not an integer" in rejects[2][1]
    assert count(stack, "books", "Book") == 2


def test_download_writes_the_kind_back_to_csv(stack, tmp_path, capsys):
    (tmp_path / "map.yaml").write_text(MAPPING)
    data = tmp_path / "in.csv"
    data.write_text("isbn,title,pages,published\na,Alpha,1,2020-01-01\nb,\"Beta, with comma\",2,2021-02-03\n")
    assert cli.main(args(stack, "library", "bulkload", "upload", str(data), "--mapping",
                         str(tmp_path / "map.yaml"))) == 0
    out = tmp_path / "out.csv"
    assert cli.main(args(stack, "library", "bulkload", "download", str(out), "--mapping",
                         str(tmp_path / "map.yaml"))) == 0
    assert read_csv(out) == [["isbn", "title", "pages", "published"], ["a", "Alpha", "1", "2020-01-01"],
                                           ["b", "Beta, with comma", "2", "2021-02-03"]]


def test_running_a_finished_load_again_loads_nothing_twice(stack, tmp_path, capsys):
    (tmp_path / "map.yaml").write_text("kind: Note\nproperties:\n- column: text\n")
    data = tmp_path / "notes.csv"
    data.write_text("text\n" + "".join(f"note {i}\n" for i in range(30)))
    for _ in range(2):
        assert cli.main(args(stack, "notes", "bulkload", "upload", str(data), "--mapping",
                             str(tmp_path / "map.yaml"), "--batch-size", "7")) == 0
    assert count(stack, "notes", "Note") == 30  # auto ids: a second load would have doubled them


def test_a_load_interrupted_by_the_datastore_dying_resumes_with_each_row_once(stack, tmp_path):
    (tmp_path / "map.yaml").write_text("kind: Event\nproperties:\n- column: n\n  type: int\n")
    data = tmp_path / "events.csv"
    rows = 20_000
    data.write_text("n\n" + "".join(f"{i}\n" for i in range(rows)))
    state = tmp_path / "events.csv.kiln-bulkload-Event"
    command = [sys.executable, "-m", "deploy.cli", *args(stack, "events", "bulkload", "upload", str(data),
                                                          "--mapping", str(tmp_path / "map.yaml"),
                                                          "--batch-size", "20")]
    first = subprocess.Popen(command, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:  # kill the datastore once a good part of the file is in
        if state.exists() and json.loads(state.read_text() or "{}").get("done_rows", 0) >= 1000:
            break
        time.sleep(0.01)
    stack["child"].proc.send_signal(signal.SIGKILL)
    stack["child"].proc.wait()
    out, err = first.communicate(timeout=120)
    assert first.returncode == 1, (out, err)
    assert "run the same command again to resume" in err
    done_before = json.loads(state.read_text())["done_rows"]
    assert 0 < done_before < rows
    stack["child"] = stack["start_datastore"]("datastore-bulk-restarted")
    second = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert second.returncode == 0, second.stderr
    report = json.loads(second.stdout)
    assert report["resumed_at_row"] == done_before and report["loaded"] == rows
    assert count(stack, "events", "Event") == rows
