"""``kiln deploy`` refuses, before anything is uploaded, a version no runtime host could run (issue 15): a
``runtime:`` whose Python no live host has (the hosts report theirs to the control plane over NATS), an SDK version
kiln does not provide, a requirements.txt pip cannot resolve for the runtime's Python — each named with the file,
the line and the fix — and nothing of the refused version is stored or uploaded.

A real control plane and a real runtime host, on a NATS server of their own (so no other test's host is heard),
the host's search for Pythons restricted to 3.11 and 3.12 (``KILN_PYTHON_PATH``, ``KILN_PYENV_ROOT``): a host
without Python 3.13. pip resolves against a local ``--find-links`` directory the test makes, without the network.
"""

from __future__ import annotations

import hashlib
import os
import pathlib
import re
import uuid

import grpc
import pytest

from deploy import cli
from kiln.pb.deploy.v1 import deploy_pb2 as pb
from kiln.pb.deploy.v1 import deploy_pb2_grpc
from kiln_platform import interpreters
from kiln_platform.supervisor import python_module
from tests.integration.conftest import service_env
from tests.integration.test_control_plane import auth, start_control, token, wait_for_host
from tests.unit import wheels

pytestmark = pytest.mark.nats

HOST = "checks-host"
HOST_PYTHONS = ((3, 11), (3, 12))


def hidden_pythons(root: pathlib.Path) -> dict[str, str]:
    """The environment of a host that has only Python 3.11 and 3.12: its path for Pythons holds the directories of
    those two (their real ones, so the runtime environments kiln caches per interpreter are reused), and its pyenv
    root is empty."""
    dirs = []
    installed = interpreters.Search("", interpreters.Search.from_env().pyenv_root)  # not PATH: it has pyenv's shims
    for version in HOST_PYTHONS:
        if version == interpreters.own().version:
            continue  # kiln's own: every host has it
        found = interpreters.lookup(version, installed)
        assert found is not None, f"these tests need Python {version[0]}.{version[1]} installed by pyenv"
        dirs.append(str(found.executable.parent))
    (root / "pyenv").mkdir()
    return {"KILN_PYTHON_PATH": os.pathsep.join(dirs), "KILN_PYENV_ROOT": str(root / "pyenv")}


@pytest.fixture(scope="module")
def links(tmp_path_factory) -> pathlib.Path:
    return wheels.local_index(tmp_path_factory.mktemp("links"))


@pytest.fixture(scope="module")
def cluster(supervisor, tmp_path_factory, links) -> str:
    """A control plane with one runtime host that has Python 3.11 and 3.12, not 3.13; returns its address."""
    nats_url = f"nats://{supervisor.start_nats(tmp_path_factory.mktemp('nats-checks'), name='nats-checks').address}"
    control = start_control(supervisor, tmp_path_factory, nats_url, "control-checks")
    env = {**service_env(), **hidden_pythons(tmp_path_factory.mktemp("host-pythons")),
           "KILN_HOST_CONTROL_TOKEN": token("*", "read", "host"), "KILN_MANAGER_NATS_URL": nats_url,
           "PIP_FIND_LINKS": str(links)}
    supervisor.spawn("runtime-host-checks", python_module(
        "runtime.host", "--control-plane", control, "--name", HOST, "--heartbeat-seconds", "1",
        "--run-dir", str(tmp_path_factory.mktemp("host-checks-run")),
        "--cache-dir", str(tmp_path_factory.mktemp("host-checks-cache")), "--resync-seconds", "3600",
        "--manager-arg=--isolation=none", "--", "--listen", "127.0.0.1:0"), env=env)
    wait_for_host(control, "python312")
    return control


@pytest.fixture(scope="module")
def hostless(supervisor, tmp_path_factory) -> str:
    """A control plane no runtime host has reported to (a fresh cluster whose hosts start later)."""
    nats_url = f"nats://{supervisor.start_nats(tmp_path_factory.mktemp('nats-hostless'), name='nats-hostless').address}"
    return start_control(supervisor, tmp_path_factory, nats_url, "control-hostless")


@pytest.fixture
def pip_index(links, monkeypatch) -> pathlib.Path:
    """pip on this machine (kiln deploy's check) reads only the local index, as the hosts are configured to."""
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    return links


def write_app(root: pathlib.Path, runtime: str, requirements: str | None = None) -> pathlib.Path:
    root.mkdir(parents=True)
    (root / "app.yaml").write_text(f"runtime: {runtime}\nhandlers:\n- url: /.*\n  script: auto\n")
    (root / "main.py").write_text(f"# {uuid.uuid4().hex}\ndef app(environ, start_response):\n"
                                  "    start_response('200 OK', [])\n    return [b'ok']\n")
    if requirements is not None:
        (root / "requirements.txt").write_text(requirements)
    return root


def new_app() -> str:
    return f"chk-{uuid.uuid4().hex[:10]}"


def deploy(control: str, app_dir: pathlib.Path, app: str, capsys, *extra: str) -> tuple[int, str]:
    status = cli.main(["deploy", str(app_dir), "--app", app, "--version", "v1", "--control-plane", control,
                       "--token", token(app), *extra])
    return status, capsys.readouterr().err


def versions(control: str, app: str) -> list[str]:
    with grpc.insecure_channel(control) as channel:
        listed = deploy_pb2_grpc.DeployServiceStub(channel).ListVersions(pb.ListVersionsRequest(app_id=app),
                                                                         metadata=auth(token(app)))
    return [f"{v.version_id}.{v.minor}" for v in listed.versions]


def uploaded(control: str, app: str, app_dir: pathlib.Path) -> list[str]:
    """The app's files the control plane has stored (by MissingBlobs)."""
    files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in app_dir.iterdir()}
    with grpc.insecure_channel(control) as channel:
        missing = set(deploy_pb2_grpc.DeployServiceStub(channel).MissingBlobs(
            pb.MissingBlobsRequest(app_id=app, sha256=list(files.values())), metadata=auth(token(app))).sha256)
    return sorted(name for name, sha in files.items() if sha not in missing)


def refused_and_nothing_stored(control: str, app: str, app_dir: pathlib.Path, status: int, err: str,
                               expected_status: int) -> str:
    assert status == expected_status, err
    assert len(err.strip().splitlines()) == 1, err  # one line
    assert versions(control, app) == []
    assert uploaded(control, app, app_dir) == []
    return err


@pytest.mark.parametrize("runtime, interpreter", [("python313", "python3.13"), ("python314", "python3.14")])
def test_a_runtime_no_host_has_is_refused_at_deploy_naming_it_and_the_hosts(cluster, tmp_path, capsys, runtime,
                                                                              interpreter):
    app = new_app()
    app_dir = write_app(tmp_path / "app", runtime)
    status, err = deploy(cluster, app_dir, app, capsys)
    refused_and_nothing_stored(cluster, app, app_dir, status, err, 1)
    assert f"runtime {runtime} needs {interpreter}, which no runtime host has" in err
    assert f"{HOST} (python3.11, python3.12)" in err
    assert f"pyenv install {interpreter.removeprefix('python')}" in err


def test_a_runtime_no_host_has_is_refused_at_create_version_too(cluster, tmp_path):
    """A client that skips CheckRuntime (or a host that went away since) meets the same rule at CreateVersion."""
    app = new_app()
    text = write_app(tmp_path / "app", "python313").joinpath("app.yaml").read_text()
    sha = hashlib.sha256(text.encode()).hexdigest()
    with grpc.insecure_channel(cluster) as channel:
        stub = deploy_pb2_grpc.DeployServiceStub(channel)
        stub.UploadBlob(iter([pb.UploadBlobRequest(app_id=app, sha256=sha, size=len(text), chunk=text.encode())]),
                        metadata=auth(token(app)))
        version = pb.Version(app_id=app, version_id="v1", app_yaml=text,
                             files=[pb.FileEntry(path="app.yaml", sha256=sha, size=len(text))])
        with pytest.raises(grpc.RpcError) as refused:
            stub.CreateVersion(pb.CreateVersionRequest(version=version), metadata=auth(token(app)))
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "runtime python313 needs python3.13" in (refused.value.details() or "")
    assert versions(cluster, app) == []


@pytest.mark.parametrize("runtime", ["python311", "python312"])
def test_a_runtime_the_host_has_deploys(cluster, tmp_path, capsys, runtime):
    app = new_app()
    status, err = deploy(cluster, write_app(tmp_path / "app", runtime), app, capsys)
    assert status == 0, err
    assert versions(cluster, app) == ["v1.1"]


@pytest.mark.parametrize("line, shown", [
    ("appengine-python-standard==2.0.0", "appengine-python-standard==2.0.0"),
    ("appengine-python-standard>=4", "appengine-python-standard>=4"),
    ("appengine-python-standard<1.0", "appengine-python-standard<1.0"),
])
def test_an_sdk_version_kiln_does_not_provide_is_refused_with_file_and_line(cluster, tmp_path, capsys, line, shown):
    app = new_app()
    app_dir = write_app(tmp_path / "app", "python312", f"# the app's needs\nkilnpure\n{line}\n")
    status, err = deploy(cluster, app_dir, app, capsys)
    refused_and_nothing_stored(cluster, app, app_dir, status, err, 2)
    assert f"requirements.txt:3: kiln does not provide {shown}; supported versions: 1.1.4, 3.1.0" in err


@pytest.mark.parametrize("requirements, line, name", [
    ("kilnpure\nno-such-package-kiln==1.0\n", 2, "no-such-package-kiln==1.0"),  # not on the index
    ("kilnpure==9.9\n", 1, "kilnpure==9.9"),  # no such version
    ("kilnpure\n\nkilnnew\n", 3, "kilnnew"),  # wheels for Python 3.13 only
    ("kilnbroken\n", 1, "kilnbroken"),  # a dependency that is not on the index
], ids=["unknown-name", "unknown-version", "no-wheel-for-this-python", "missing-dependency"])
def test_requirements_pip_cannot_install_are_refused_with_file_line_and_fix(cluster, tmp_path, capsys, pip_index,
                                                                           requirements, line, name):
    app = new_app()
    app_dir = write_app(tmp_path / "app", "python312", requirements)
    status, err = deploy(cluster, app_dir, app, capsys)
    refused_and_nothing_stored(cluster, app, app_dir, status, err, 2)
    assert f"requirements.txt:{line}: pip could not install {name!r} for Python 3.12: " in err
    assert "pick a version with a wheel for this Python" in err


def test_environment_markers_are_those_of_the_runtimes_python(cluster, tmp_path, capsys, pip_index):
    """kilnpure needs kilnold (not on the index) only below Python 3.12, and kilnnew has wheels for 3.13 only: on
    python312 both resolve as the host will install them; on python311 (kiln's own Python) kilnpure does not."""
    requirements = 'kilnpure\nkilnnew; python_version >= "3.13"\n'
    app = new_app()
    status, err = deploy(cluster, write_app(tmp_path / "new", "python312", requirements), app, capsys)
    assert status == 0, err
    assert versions(cluster, app) == ["v1.1"]
    old = new_app()
    app_dir = write_app(tmp_path / "old", "python311", requirements)
    status, err = deploy(cluster, app_dir, old, capsys)
    refused_and_nothing_stored(cluster, old, app_dir, status, err, 2)
    assert re.search(r"requirements\.txt:1: pip could not install 'kilnpure' for Python 3\.11: .*kilnold", err), err


def test_with_no_live_host_deploy_is_refused_naming_the_fix(hostless, tmp_path, capsys):
    app = new_app()
    app_dir = write_app(tmp_path / "app", "python312")
    status, err = deploy(hostless, app_dir, app, capsys)
    refused_and_nothing_stored(hostless, app, app_dir, status, err, 1)
    assert "runtime python312: no runtime host is live" in err
    assert "python3.12" in err and "--no-host-check" in err


def test_no_host_check_deploys_for_hosts_that_start_later_still_checking_requirements(hostless, tmp_path, capsys,
                                                                                     pip_index):
    app = new_app()
    status, err = deploy(hostless, write_app(tmp_path / "ok", "python312", "kilnpure\n"), app, capsys,
                         "--no-host-check")
    assert status == 0, err
    assert versions(hostless, app) == ["v1.1"]
    broken = new_app()
    app_dir = write_app(tmp_path / "broken", "python312", "kilnbroken\n")
    status, err = deploy(hostless, app_dir, broken, capsys, "--no-host-check")
    refused_and_nothing_stored(hostless, broken, app_dir, status, err, 2)
    assert "requirements.txt:1: pip could not install 'kilnbroken' for Python 3.12" in err


def test_skip_requirements_check_leaves_resolution_to_the_hosts_but_not_the_sdk_rule(hostless, tmp_path, capsys,
                                                                                     pip_index):
    app = new_app()
    status, err = deploy(hostless, write_app(tmp_path / "ok", "python312", "kilnbroken\n"), app, capsys,
                         "--no-host-check", "--skip-requirements-check")
    assert status == 0, err
    sdk = new_app()
    app_dir = write_app(tmp_path / "sdk", "python312", "appengine-python-standard==0.9\n")
    status, err = deploy(hostless, app_dir, sdk, capsys, "--no-host-check", "--skip-requirements-check")
    refused_and_nothing_stored(hostless, sdk, app_dir, status, err, 2)
    assert "requirements.txt:1: kiln does not provide appengine-python-standard==0.9" in err


def test_the_host_reports_the_pythons_its_managers_would_find(cluster):
    """What the host reported is what CheckRuntime answers: 3.11 and 3.12 on this host, python27 on its own."""
    with grpc.insecure_channel(cluster) as channel:
        stub = deploy_pb2_grpc.DeployServiceStub(channel)
        answers = {runtime: [(h.host, h.python_version) for h in stub.CheckRuntime(
            pb.CheckRuntimeRequest(app_id="probe", runtime=runtime), metadata=auth(token("probe"))).hosts]
            for runtime in ("python27", "python311", "python312")}
    own = interpreters.own().version
    assert answers == {"python27": [(HOST, f"{own[0]}.{own[1]}")], "python311": [(HOST, "3.11")],
                       "python312": [(HOST, "3.12")]}
    assert os.environ.get("KILN_PYTHON_PATH") is None  # the restriction is the host's alone
