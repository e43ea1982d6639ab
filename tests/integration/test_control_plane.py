"""The control plane (``python -m deploy.control``) on both engines: content-addressed uploads, versions with
minors, the default switch and deletion rules, App Engine's limits and names, tokens, and deployment events on a
real nats-server."""

from __future__ import annotations

import asyncio
import concurrent.futures
import hashlib
import io
import os
import pathlib
import sys
import textwrap
import time
import uuid

import grpc
import nats
import pytest

from deploy import cli, upload
from deploy.control import tokens
from kiln.pb.deploy.v1 import deploy_pb2 as pb
from kiln.pb.deploy.v1 import deploy_pb2_grpc, events_pb2
from kiln_platform.supervisor import python_module
from tests.integration.conftest import service_env

pytestmark = pytest.mark.nats

ADMIN_SECRET = "integration-admin-secret"  # conftest.service_env's
APP_YAML = textwrap.dedent("""\
    runtime: python311
    handlers:
    - url: /static
      static_dir: static
    - url: /.*
      script: auto
    """)


def token(app: str, scope: str = "admin", name: str = "tester") -> str:
    return tokens.mint(ADMIN_SECRET, app, scope, name)


def auth(tok: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {tok}"),)


def start_one_instance_manager(supervisor, tmp_path_factory, nats_url: str, app_id: str, name: str) -> pathlib.Path:
    """A manager keeping one instance of a hello-world app_id/v1; the file where it records its instances."""
    app_dir = tmp_path_factory.mktemp(name)
    (app_dir / "app.yaml").write_text("runtime: python27\napi_version: 1\nthreadsafe: true\n"
                                      "handlers:\n- url: /.*\n  script: main.app\n")
    (app_dir / "main.py").write_text("def app(environ, start_response):\n"
                                     "    start_response('200 OK', [])\n    return [b'ok']\n")
    run = supervisor.run_dir / f"{name}-instances"
    ready = supervisor.run_dir / f"manager-{name}.ready"
    supervisor.start(f"manager-{name}", python_module(
        "runtime.manager", "--app-dir", str(app_dir), "--app-id", app_id, "--version-id", "v1", "--nats-url", nats_url,
        "--run-dir", str(run), "--min-instances", "1", "--max-instances", "1", "--ready-file", str(ready),
        "--", "--listen", "127.0.0.1:0"), env=service_env(), ready_file=ready)
    return run / "instances.json"


def start_control(supervisor, tmp_path_factory, nats_url: str, name: str, *extra: str) -> str:
    ready = supervisor.run_dir / f"{name}.addr"
    child = supervisor.start(name, python_module(
        "deploy.control", "--listen", "127.0.0.1:0", "--ready-file", str(ready), "--nats-url", nats_url,
        "--data-dir", str(tmp_path_factory.mktemp(name)), *extra), env=service_env(), ready_file=ready, timeout=120)
    return child.address


def host_can_run(control: str, runtime: str) -> bool:
    """Whether a live runtime host of the control plane at ``control`` can run ``runtime`` (CheckRuntime)."""
    with grpc.insecure_channel(control) as chan:
        try:
            deploy_pb2_grpc.DeployServiceStub(chan).CheckRuntime(
                pb.CheckRuntimeRequest(app_id="probe", runtime=runtime), metadata=auth(token("probe")), timeout=30)
        except grpc.RpcError as exc:
            if exc.code() != grpc.StatusCode.FAILED_PRECONDITION:
                raise
            return False
    return True


def wait_for_host(control: str, runtime: str, seconds: float = 120) -> None:
    """Until a runtime host started beside the control plane has reported that it can run ``runtime``."""
    from tests.integration import apps
    apps.wait_for(lambda: host_can_run(control, runtime), seconds)


@pytest.fixture(scope="session")
def control_embedded(supervisor, tmp_path_factory, nats_url):
    return start_control(supervisor, tmp_path_factory, nats_url, "control-embedded")


@pytest.fixture(scope="session")
def control_cassandra(supervisor, tmp_path_factory, nats_url, cassandra_hosts):
    return start_control(supervisor, tmp_path_factory, nats_url, "control-cassandra", *cassandra_args(cassandra_hosts))


# Grace 0: unused files are deleted as soon as their version goes (tests of the grace are in test_control_store).
# Only the collection tests use these: with grace 0 a collection still running from one deploy may delete a file
# the next deploy has just uploaded (it names no version yet), which the deploy then uploads again.
@pytest.fixture(scope="session")
def collecting_embedded(supervisor, tmp_path_factory, nats_url):
    return start_control(supervisor, tmp_path_factory, nats_url, "collecting-embedded", "--blob-grace-seconds", "0")


@pytest.fixture(scope="session")
def collecting_cassandra(supervisor, tmp_path_factory, nats_url, cassandra_hosts):
    return start_control(supervisor, tmp_path_factory, nats_url, "collecting-cassandra",
                         *cassandra_args(cassandra_hosts), "--blob-grace-seconds", "0")


def cassandra_args(hosts: str) -> tuple[str, ...]:
    return "--storage", "cassandra", "--cassandra-hosts", hosts, "--cassandra-keyspace", "kiln_control_test"


ENGINES = ["embedded", pytest.param("cassandra", marks=pytest.mark.cassandra)]


@pytest.fixture(params=ENGINES)
def channel(request):
    addr = request.getfixturevalue(f"control_{request.param}")
    with grpc.insecure_channel(addr) as ch:
        yield ch


@pytest.fixture
def stub(channel):
    return deploy_pb2_grpc.DeployServiceStub(channel)


@pytest.fixture(params=ENGINES)
def collecting(request):
    """A channel to a control plane that deletes unused files at once."""
    addr = request.getfixturevalue(f"collecting_{request.param}")
    with grpc.insecure_channel(addr) as ch:
        yield ch


_counter = iter(range(10**6))


@pytest.fixture
def app_id():
    """A fresh app per test (the stores are shared by the session)."""
    return f"app{next(_counter)}-{uuid.uuid4().hex[:8]}"


def write_app(root: pathlib.Path, files: dict[str, bytes | str] | None = None) -> pathlib.Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "app.yaml").write_text(APP_YAML)
    for path, content in {"main.py": "def app(e, s):\n    return []\n", "static/a.txt": "hello",
                          **(files or {})}.items():
        target = root / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(content.encode() if isinstance(content, str) else content)
    return root


def code_of(call) -> grpc.StatusCode:
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def put(stub, app_id: str, data: bytes, tok: str | None = None) -> str:
    sha = hashlib.sha256(data).hexdigest()
    stub.UploadBlob(iter([pb.UploadBlobRequest(app_id=app_id, sha256=sha, size=len(data), chunk=data)]),
                    metadata=auth(tok or token(app_id)))
    return sha


def test_deploy_creates_a_version_with_its_files(channel, stub, app_id, tmp_path):
    result = upload.deploy(channel, token(app_id), write_app(tmp_path / "app"), app_id, "v1", promote=True,
                           host_check=False)
    assert (result.version.version_id, result.version.minor, result.version.is_default) == ("v1", 1, True)
    assert result.version.deployed_by == "tester"
    got = stub.GetVersion(pb.GetVersionRequest(app_id=app_id), metadata=auth(token(app_id))).version
    assert sorted(f.path for f in got.files) == ["app.yaml", "main.py", "static/a.txt"]
    entry = next(f for f in got.files if f.path == "static/a.txt")
    data = b"".join(c.chunk for c in stub.DownloadBlob(pb.DownloadBlobRequest(app_id=app_id, sha256=entry.sha256),
                                                       metadata=auth(token(app_id))))
    assert data == b"hello"


def test_redeploying_a_version_makes_a_new_minor_and_uploads_only_changed_files(channel, app_id, tmp_path):
    app = write_app(tmp_path / "app")
    first = upload.deploy(channel, token(app_id), app, app_id, "v1", promote=False, host_check=False)
    same = upload.deploy(channel, token(app_id), app, app_id, "v1", promote=False, host_check=False)
    (app / "main.py").write_text("def app(e, s):\n    return [b'2']\n")
    changed = upload.deploy(channel, token(app_id), app, app_id, "v1", promote=False, host_check=False)
    assert [first.version.minor, same.version.minor, changed.version.minor] == [1, 2, 3]
    assert (first.uploaded_files, same.uploaded_files, changed.uploaded_files) == (3, 0, 1)


def test_deploy_reports_upload_progress_in_bytes(channel, app_id, tmp_path):
    app = write_app(tmp_path / "app", {f"data/{i}.bin": os.urandom(300_000) for i in range(12)})
    seen: list[tuple[int, int]] = []
    upload.deploy(channel, token(app_id), app, app_id, "v1", promote=False, progress=lambda d, t: seen.append((d, t)),
                  host_check=False)
    total = sum(f.stat().st_size for f in app.rglob("*") if f.is_file())
    assert seen[0] == (0, total) and seen[-1] == (total, total)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen) and len(seen) > 12


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_kiln_deploy_draws_a_progress_bar_only_on_a_terminal(control_embedded, app_id, tmp_path, monkeypatch):
    def deploy(version: str, stderr: io.StringIO) -> str:
        app = write_app(tmp_path / version, {"data.bin": os.urandom(2_000_000)})
        monkeypatch.setattr(sys, "stderr", stderr)
        assert cli.main(["deploy", str(app), "--app", app_id, "--version", version, "--control-plane",
                         control_embedded, "--token", token(app_id), "--no-host-check"]) == 0
        return stderr.getvalue()
    drawn = deploy("v1", Terminal())
    assert "uploading" in drawn and "%|" in drawn
    assert "uploading" not in deploy("v2", io.StringIO())


def stored(stub, app_id: str, content: str) -> bool:
    sha = hashlib.sha256(content.encode()).hexdigest()
    try:
        b"".join(r.chunk for r in stub.DownloadBlob(pb.DownloadBlobRequest(app_id=app_id, sha256=sha),
                                                   metadata=auth(token(app_id))))
        return True
    except grpc.RpcError as exc:
        assert exc.code() == grpc.StatusCode.NOT_FOUND, exc
        return False


def wait_deleted(stub, app_id: str, content: str, seconds: float = 30) -> None:
    """Unused files are deleted in the background after the call that made them unused returns."""
    deadline = time.monotonic() + seconds
    while stored(stub, app_id, content):
        assert time.monotonic() < deadline, f"{content!r} was never deleted"
        time.sleep(0.1)


def test_deleting_a_version_deletes_the_files_no_other_version_uses(collecting, app_id, tmp_path):
    stub = deploy_pb2_grpc.DeployServiceStub(collecting)
    upload.deploy(collecting, token(app_id), write_app(tmp_path / "one", {"one.txt": "v1 only"}), app_id, "v1",
                  promote=True, host_check=False)
    upload.deploy(collecting, token(app_id), write_app(tmp_path / "two", {"two.txt": "v2 only"}), app_id, "v2",
                  promote=True, host_check=False)
    stub.DeleteVersion(pb.DeleteVersionRequest(app_id=app_id, version_id="v1"), metadata=auth(token(app_id)))
    wait_deleted(stub, app_id, "v1 only")
    assert stored(stub, app_id, "v2 only") and stored(stub, app_id, "hello")  # static/a.txt: both had it


def test_a_new_minor_deletes_the_files_only_the_previous_minor_used(collecting, app_id, tmp_path):
    stub = deploy_pb2_grpc.DeployServiceStub(collecting)
    app = write_app(tmp_path / "app", {"main.py": "old code"})
    upload.deploy(collecting, token(app_id), app, app_id, "v1", promote=True, host_check=False)
    (app / "main.py").write_text("new code")
    upload.deploy(collecting, token(app_id), app, app_id, "v1", promote=False, host_check=False)
    wait_deleted(stub, app_id, "old code")
    assert stored(stub, app_id, "new code") and stored(stub, app_id, "hello")


def test_a_deleted_versions_files_are_uploaded_again_when_it_is_redeployed(collecting, app_id, tmp_path):
    stub = deploy_pb2_grpc.DeployServiceStub(collecting)
    upload.deploy(collecting, token(app_id), write_app(tmp_path / "one"), app_id, "v1", promote=True, host_check=False)
    two = write_app(tmp_path / "two", {"two.txt": "back again"})
    upload.deploy(collecting, token(app_id), two, app_id, "v2", promote=False, host_check=False)
    stub.DeleteVersion(pb.DeleteVersionRequest(app_id=app_id, version_id="v2"), metadata=auth(token(app_id)))
    wait_deleted(stub, app_id, "back again")
    again = upload.deploy(collecting, token(app_id), two, app_id, "v2", promote=False, host_check=False)
    assert again.uploaded_files == 1
    assert stored(stub, app_id, "back again")


def test_skip_files_are_not_deployed(channel, stub, app_id, tmp_path):
    app = write_app(tmp_path / "app", {".git/config": "secret", "main.pyc": b"\0", "notes.txt~": "x"})
    upload.deploy(channel, token(app_id), app, app_id, "v1", promote=True, host_check=False)
    got = stub.GetVersion(pb.GetVersionRequest(app_id=app_id, version_id="v1"), metadata=auth(token(app_id))).version
    assert sorted(f.path for f in got.files) == ["app.yaml", "main.py", "static/a.txt"]


def test_a_manifest_with_a_skipped_file_is_refused_naming_it(stub, app_id):
    sha = put(stub, app_id, APP_YAML.encode())
    dot = put(stub, app_id, b"secret")
    version = pb.Version(app_id=app_id, version_id="v1", app_yaml=APP_YAML,
                         files=[pb.FileEntry(path="app.yaml", sha256=sha, size=len(APP_YAML)),
                                pb.FileEntry(path=".env", sha256=dot, size=6)])
    code, details = code_of(lambda: stub.CreateVersion(pb.CreateVersionRequest(version=version),
                                                       metadata=auth(token(app_id))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "'.env'" in details and "skip_files" in details


def test_versions_list_newest_first_with_the_default_marked(channel, stub, app_id, tmp_path):
    app = write_app(tmp_path / "app")
    upload.deploy(channel, token(app_id), app, app_id, "v1", promote=True, host_check=False)
    upload.deploy(channel, token(app_id), app, app_id, "v2", promote=False, host_check=False)
    listed = stub.ListVersions(pb.ListVersionsRequest(app_id=app_id), metadata=auth(token(app_id))).versions
    assert [(v.version_id, v.is_default, len(v.files)) for v in listed] == [("v2", False, 0), ("v1", True, 0)]


def test_set_default_switches_and_the_default_cannot_be_deleted(channel, stub, app_id, tmp_path):
    app = write_app(tmp_path / "app")
    upload.deploy(channel, token(app_id), app, app_id, "v1", promote=True, host_check=False)
    upload.deploy(channel, token(app_id), app, app_id, "v2", promote=False, host_check=False)
    meta = auth(token(app_id))
    code, details = code_of(lambda: stub.DeleteVersion(pb.DeleteVersionRequest(app_id=app_id, version_id="v1"),
                                                       metadata=meta))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "set-default" in details
    stub.SetDefaultVersion(pb.SetDefaultVersionRequest(app_id=app_id, version_id="v2"), metadata=meta)
    stub.DeleteVersion(pb.DeleteVersionRequest(app_id=app_id, version_id="v1"), metadata=meta)
    listed = stub.ListVersions(pb.ListVersionsRequest(app_id=app_id), metadata=meta).versions
    assert [(v.version_id, v.is_default) for v in listed] == [("v2", True)]


def test_unknown_versions_are_not_found(stub, app_id):
    meta = auth(token(app_id))
    for call in (lambda: stub.SetDefaultVersion(pb.SetDefaultVersionRequest(app_id=app_id, version_id="nope"),
                                                metadata=meta),
                 lambda: stub.DeleteVersion(pb.DeleteVersionRequest(app_id=app_id, version_id="nope"), metadata=meta),
                 lambda: stub.GetVersion(pb.GetVersionRequest(app_id=app_id, version_id="nope"), metadata=meta)):
        assert code_of(call)[0] == grpc.StatusCode.NOT_FOUND


@pytest.mark.parametrize("name", ["Default", "default", "latest", "ah-builtin", "-v1", "v1-", "a-dot-b", "v_1",
                                  "x" * 64, ""])
def test_version_names_app_engine_refuses_are_refused(stub, app_id, name):
    sha = put(stub, app_id, APP_YAML.encode())
    version = pb.Version(app_id=app_id, version_id=name, app_yaml=APP_YAML,
                         files=[pb.FileEntry(path="app.yaml", sha256=sha, size=len(APP_YAML))])
    code, details = code_of(lambda: stub.CreateVersion(pb.CreateVersionRequest(version=version),
                                                       metadata=auth(token(app_id))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "version" in details


def manifest_with(files: list[pb.FileEntry], app_id: str, sha: str) -> pb.Version:
    return pb.Version(app_id=app_id, version_id="v1", app_yaml=APP_YAML,
                      files=[pb.FileEntry(path="app.yaml", sha256=sha, size=len(APP_YAML)), *files])


@pytest.mark.parametrize("files, needle", [
    ([pb.FileEntry(path=f"many/f{i}", sha256="a" * 64, size=1) for i in range(1001)], "directory 'many'"),
    ([pb.FileEntry(path=f"d{i // 900}/f{i}", sha256="a" * 64, size=1) for i in range(10_000)], "10,000 files"),
    ([pb.FileEntry(path="big.bin", sha256="a" * 64, size=32 * 1024 * 1024 + 1)], "'big.bin'"),
    ([pb.FileEntry(path="../etc/passwd", sha256="a" * 64, size=1)], "'..'"),
    ([pb.FileEntry(path="/abs", sha256="a" * 64, size=1)], "relative"),
    ([pb.FileEntry(path="main.py", sha256="A" * 64, size=1)], "sha256"),
], ids=["per-directory", "per-version", "per-file", "dotdot", "absolute", "bad-hash"])
def test_app_engine_limits_are_enforced_naming_the_offender(stub, app_id, files, needle):
    sha = put(stub, app_id, APP_YAML.encode())
    code, details = code_of(lambda: stub.CreateVersion(
        pb.CreateVersionRequest(version=manifest_with(files, app_id, sha)), metadata=auth(token(app_id))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and needle in details
    assert not stub.ListVersions(pb.ListVersionsRequest(app_id=app_id), metadata=auth(token(app_id))).versions


def test_a_version_whose_files_are_not_all_uploaded_is_not_created(stub, app_id):
    sha = put(stub, app_id, APP_YAML.encode())
    files = [pb.FileEntry(path="main.py", sha256="b" * 64, size=10)]
    code, details = code_of(lambda: stub.CreateVersion(
        pb.CreateVersionRequest(version=manifest_with(files, app_id, sha), skip_host_check=True),
        metadata=auth(token(app_id))))
    assert code == grpc.StatusCode.FAILED_PRECONDITION and "'main.py'" in details
    assert not stub.ListVersions(pb.ListVersionsRequest(app_id=app_id), metadata=auth(token(app_id))).versions


def test_a_truncated_upload_stores_nothing(stub, app_id):
    data = b"z" * 5000
    sha = hashlib.sha256(data).hexdigest()
    code, details = code_of(lambda: stub.UploadBlob(
        iter([pb.UploadBlobRequest(app_id=app_id, sha256=sha, size=len(data), chunk=data[:3000])]),
        metadata=auth(token(app_id))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "truncated" in details
    assert stub.MissingBlobs(pb.MissingBlobsRequest(app_id=app_id, sha256=[sha]),
                             metadata=auth(token(app_id))).sha256 == [sha]


def test_an_upload_whose_content_does_not_match_its_hash_stores_nothing(stub, app_id):
    claimed = hashlib.sha256(b"good").hexdigest()
    code, details = code_of(lambda: stub.UploadBlob(
        iter([pb.UploadBlobRequest(app_id=app_id, sha256=claimed, size=4, chunk=b"evil")]),
        metadata=auth(token(app_id))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "sha256" in details
    assert stub.MissingBlobs(pb.MissingBlobsRequest(app_id=app_id, sha256=[claimed]),
                             metadata=auth(token(app_id))).sha256 == [claimed]


def test_an_upload_over_32_megabytes_is_refused_before_it_is_sent(stub, app_id):
    code, details = code_of(lambda: stub.UploadBlob(
        iter([pb.UploadBlobRequest(app_id=app_id, sha256="c" * 64, size=32 * 1024 * 1024 + 1)]),
        metadata=auth(token(app_id))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "32 MB" in details


def test_invalid_app_yaml_is_refused_naming_the_line(stub, app_id):
    bad = "runtime: python311\nhandlers:\n- url: /\n  scirpt: main.app\n"
    sha = put(stub, app_id, bad.encode())
    version = pb.Version(app_id=app_id, version_id="v1", app_yaml=bad,
                         files=[pb.FileEntry(path="app.yaml", sha256=sha, size=len(bad))])
    code, details = code_of(lambda: stub.CreateVersion(pb.CreateVersionRequest(version=version),
                                                       metadata=auth(token(app_id))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "app.yaml:4" in details and "scirpt" in details


def test_an_invalid_cron_schedule_is_refused_pointing_at_the_word(channel, app_id, tmp_path):
    app = write_app(tmp_path / "app", {"cron.yaml": "cron:\n- url: /tick\n  schedule: every 5 minuets\n"})
    with pytest.raises(grpc.RpcError) as info:
        upload.deploy(channel, token(app_id), app, app_id, "v1", promote=True, host_check=False)
    assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "cron.yaml:3" in info.value.details() and "minuets" in info.value.details()


def test_config_text_must_match_the_uploaded_file(stub, app_id):
    sha = put(stub, app_id, APP_YAML.encode())
    version = pb.Version(app_id=app_id, version_id="v1", app_yaml=APP_YAML + "# changed\n",
                         files=[pb.FileEntry(path="app.yaml", sha256=sha, size=len(APP_YAML))])
    code, details = code_of(lambda: stub.CreateVersion(pb.CreateVersionRequest(version=version),
                                                       metadata=auth(token(app_id))))
    assert code == grpc.StatusCode.INVALID_ARGUMENT and "differs" in details


def test_calls_without_a_valid_token_are_unauthenticated(stub, app_id):
    forged = tokens.mint("another-secret", app_id, "admin", "mallory")
    for metadata in ((), auth(forged), auth("kiln1.x"), (("authorization", "Basic abc"),)):
        code, _ = code_of(lambda: stub.ListVersions(pb.ListVersionsRequest(app_id=app_id), metadata=metadata))
        assert code == grpc.StatusCode.UNAUTHENTICATED


def test_another_apps_token_is_denied(stub, app_id):
    code, details = code_of(lambda: stub.ListVersions(pb.ListVersionsRequest(app_id=app_id),
                                                      metadata=auth(token("someone-else"))))
    assert code == grpc.StatusCode.PERMISSION_DENIED and app_id in details


def test_a_read_token_reads_but_cannot_change(channel, stub, app_id, tmp_path):
    upload.deploy(channel, token(app_id), write_app(tmp_path / "app"), app_id, "v1", promote=True, host_check=False)
    reader = auth(token("*", "read", "router"))
    assert stub.GetVersion(pb.GetVersionRequest(app_id=app_id), metadata=reader).version.version_id == "v1"
    assert app_id in [a.app_id for a in stub.ListApps(pb.ListAppsRequest(), metadata=reader).apps]
    for call in (lambda: stub.SetDefaultVersion(pb.SetDefaultVersionRequest(app_id=app_id, version_id="v1"),
                                                metadata=reader),
                 lambda: stub.MissingBlobs(pb.MissingBlobsRequest(app_id=app_id), metadata=reader),
                 lambda: stub.AppToken(pb.AppTokenRequest(app_id=app_id), metadata=reader)):
        assert code_of(call)[0] == grpc.StatusCode.PERMISSION_DENIED


def test_an_apps_admin_token_cannot_list_every_app(stub, app_id):
    assert code_of(lambda: stub.ListApps(pb.ListAppsRequest(), metadata=auth(token(app_id))))[0] == \
        grpc.StatusCode.PERMISSION_DENIED


def test_files_are_private_to_their_app(stub, app_id):
    sha = put(stub, app_id, b"private bytes")
    other = f"{app_id}-other"
    assert stub.MissingBlobs(pb.MissingBlobsRequest(app_id=other, sha256=[sha]),
                             metadata=auth(token(other))).sha256 == [sha]
    code, _ = code_of(lambda: list(stub.DownloadBlob(pb.DownloadBlobRequest(app_id=other, sha256=sha),
                                                     metadata=auth(token(other)))))
    assert code == grpc.StatusCode.NOT_FOUND


def test_app_token_gives_the_apps_identity_token(stub, app_id):
    from kiln_platform import auth as app_auth
    got = stub.AppToken(pb.AppTokenRequest(app_id=app_id), metadata=auth(token(app_id))).token
    assert app_auth.verify_app_token("integration-test-secret", got) == app_id
    # It expires (hours, not forever): a person's copy stops working even if the secret is never rotated.
    with pytest.raises(app_auth.UnauthenticatedError, match="expired"):
        app_auth.verify_app_token("integration-test-secret", got, now=time.time() + 13 * 3600)


def test_concurrent_deploys_of_one_version_get_distinct_minors(channel, stub, app_id, tmp_path):
    app = write_app(tmp_path / "app")
    upload.deploy(channel, token(app_id), app, app_id, "v1", promote=False, host_check=False)
    with concurrent.futures.ThreadPoolExecutor(4) as pool:
        results = list(pool.map(lambda _: upload.deploy(channel, token(app_id), app, app_id, "v1", promote=False,
                                                        host_check=False),
                                range(4)))
    assert sorted(r.version.minor for r in results) == [2, 3, 4, 5]


def test_deployments_are_announced_on_nats(channel, app_id, tmp_path, nats_url):
    async def watch() -> list[tuple[str, bytes]]:
        nc = await nats.connect(nats_url)
        got: list[tuple[str, bytes]] = []
        done = asyncio.Event()

        async def on(msg) -> None:
            got.append((msg.subject, msg.data))
            if msg.subject == "kiln.deploy.default":
                done.set()
        await nc.subscribe("kiln.deploy.>", cb=on)
        await nc.flush()
        loop = asyncio.get_running_loop()
        await loop.run_in_executor(None, lambda: upload.deploy(channel, token(app_id), write_app(tmp_path / "app"),
                                                               app_id, "v7", promote=True, host_check=False))
        await asyncio.wait_for(done.wait(), 5)
        await nc.close()
        return got
    events = [(s, d) for s, d in asyncio.run(watch())]
    created = [events_pb2.VersionEvent.FromString(d) for s, d in events if s == "kiln.deploy.version"]
    defaults = [events_pb2.DefaultVersionEvent.FromString(d) for s, d in events if s == "kiln.deploy.default"]
    assert [(e.app_id, e.version_id, e.minor, e.kind) for e in created if e.app_id == app_id] == \
        [(app_id, "v7", 1, events_pb2.VersionEvent.KIND_CREATED)]
    assert [(e.app_id, e.version_id, e.generation) for e in defaults if e.app_id == app_id] == [(app_id, "v7", 1)]
