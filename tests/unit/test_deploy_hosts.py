"""What the control plane knows of runtime hosts (deploy/control/hosts.py), what a host reports (runtime/host.py),
and requirements.txt's check before a deploy without a local Python of the runtime's version
(runtime.libraries.check_requirements). No sockets: pip reads a local find-links directory only."""

from __future__ import annotations

import pathlib

import pytest

from deploy.control.hosts import MAX_TTL_SECONDS, Hosts, python_version
from kiln.errors import BadRequestError, ConfigError, FailedPreconditionError
from kiln.pb.deploy.v1 import events_pb2
from kiln_platform import interpreters
from runtime import host, libraries
from tests.unit import wheels
from tests.unit.test_interpreters import fake_python


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def beat(name: str, *versions: str, own: str = "3.11", ttl: float = 15.0) -> events_pb2.HostHeartbeat:
    return events_pb2.HostHeartbeat(host=name, python_versions=list(versions), own_python_version=own,
                                    ttl_seconds=ttl)


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def hosts(clock) -> Hosts:
    return Hosts(clock=clock)


@pytest.mark.parametrize("runtime, version", [("python27", None), ("python311", (3, 11)), ("python313", (3, 13)),
                                              ("python314", (3, 14))])
def test_a_runtime_names_its_python_as_app_yaml_reads_it(runtime, version):
    assert python_version(runtime) == version


@pytest.mark.parametrize("runtime", ["python310", "python3", "python", "go121", "python27 ", ""])
def test_a_runtime_kiln_does_not_run_is_a_bad_request(hosts, runtime):
    hosts.observe(beat("h1", "3.11"))
    with pytest.raises(BadRequestError, match="kiln runs python27 and python3NN"):
        hosts.check(runtime)


def test_hosts_that_have_the_python_can_run_the_runtime(hosts):
    hosts.observe(beat("b", "3.11", "3.12"))
    hosts.observe(beat("a", "3.11", "3.12", "3.13"))
    hosts.observe(beat("c", "3.11"))
    assert [(h.host, h.python_version) for h in hosts.check("python312")] == [("a", "3.12"), ("b", "3.12")]


def test_python27_runs_on_every_hosts_own_python(hosts):
    hosts.observe(beat("a", "3.11", "3.12", own="3.11"))
    hosts.observe(beat("b", "3.12", own="3.12"))
    assert [(h.host, h.python_version) for h in hosts.check("python27")] == [("a", "3.11"), ("b", "3.12")]


@pytest.mark.parametrize("runtime, needs", [("python313", "python3.13"), ("python314", "python3.14")])
def test_a_runtime_no_host_has_is_refused_naming_it_and_the_hosts(hosts, runtime, needs):
    hosts.observe(beat("h2", "3.12", "3.11"))
    hosts.observe(beat("h1", "3.11"))
    with pytest.raises(FailedPreconditionError) as refused:
        hosts.check(runtime)
    assert str(refused.value) == (
        f"runtime {runtime} needs {needs}, which no runtime host has: the hosts are h1 (python3.11), "
        f"h2 (python3.11, python3.12). Install it on a host (pyenv install {needs.removeprefix('python')}; the host "
        "reports it within a minute), or use a runtime the hosts have")


def test_a_refusal_names_at_most_ten_hosts_and_counts_the_rest(hosts):
    for n in range(13):
        hosts.observe(beat(f"h{n:02d}", "3.11"))
    with pytest.raises(FailedPreconditionError, match=r"h09 \(python3\.11\) and 3 more\."):
        hosts.check("python313")


@pytest.mark.parametrize("runtime", ["python27", "python311", "python313"])
def test_with_no_live_host_every_runtime_is_refused_with_the_fix(hosts, runtime):
    with pytest.raises(FailedPreconditionError, match=rf"runtime {runtime}: no runtime host is live .*--no-host-check"):
        hosts.check(runtime)


def test_a_host_is_forgotten_once_its_heartbeat_expires(hosts, clock):
    hosts.observe(beat("h1", "3.11", "3.13", ttl=15))
    clock.now += 14.9
    assert [h.name for h in hosts.live()] == ["h1"]
    clock.now += 0.1
    assert hosts.live() == []
    with pytest.raises(FailedPreconditionError, match="no runtime host is live"):
        hosts.check("python313")


def test_a_hosts_newest_heartbeat_replaces_what_it_said(hosts, clock):
    hosts.observe(beat("h1", "3.11", "3.13"))
    assert hosts.check("python313")
    hosts.observe(beat("h1", "3.11"))  # Python 3.13 removed from the host
    with pytest.raises(FailedPreconditionError, match="h1 \\(python3.11\\)"):
        hosts.check("python313")


@pytest.mark.parametrize("ttl, live_after", [(-5.0, 0.0), (1e12, MAX_TTL_SECONDS)])
def test_a_heartbeats_ttl_is_held_within_bounds(hosts, clock, ttl, live_after):
    hosts.observe(beat("h1", "3.11", ttl=ttl))
    clock.now += live_after
    assert hosts.live() == []


def test_a_heartbeat_without_a_host_name_is_ignored(hosts):
    hosts.observe(beat("", "3.13"))
    assert hosts.live() == []


def test_a_host_reports_the_pythons_its_managers_would_find(tmp_path):
    """The same lookup as the managers' (interpreters.find), with the environment they get; kiln's own first."""
    own = interpreters.own().version
    others = [v for v in interpreters.PYTHON3_VERSIONS if v != own]
    fake_python(tmp_path / "bin" / f"python{others[0][0]}.{others[0][1]}", f"{others[0][0]}.{others[0][1]}")
    fake_python(tmp_path / "bin" / f"python{others[1][0]}.{others[1][1]}", "3.0")  # answers another version
    found = host.python_versions({"KILN_PYTHON_PATH": str(tmp_path / "bin"), "KILN_PYENV_ROOT": str(tmp_path / "no")})
    assert found == [f"{own[0]}.{own[1]}", f"{others[0][0]}.{others[0][1]}"]


def test_a_hosts_heartbeat_says_its_own_python_and_lives_three_periods():
    sent = host.heartbeat("h1", ["3.11", "3.12"], 5.0)
    own = interpreters.own().version
    assert (sent.host, list(sent.python_versions), sent.own_python_version, sent.ttl_seconds) == \
        ("h1", ["3.11", "3.12"], f"{own[0]}.{own[1]}", 15.0)
    assert sent.HasField("sent_at")


@pytest.fixture
def index(tmp_path, monkeypatch) -> pathlib.Path:
    links = wheels.local_index(tmp_path / "links")
    monkeypatch.setenv("PIP_NO_INDEX", "1")
    monkeypatch.setenv("PIP_FIND_LINKS", str(links))
    return links


def nowhere(tmp_path: pathlib.Path) -> interpreters.Search:
    """A machine with no other Python than kiln's."""
    return interpreters.Search(str(tmp_path / "none"), tmp_path / "none")


def other_version() -> tuple[int, int]:
    return (3, 13) if interpreters.own().version != (3, 13) else (3, 12)


def requirements(tmp_path: pathlib.Path, text: str) -> pathlib.Path:
    path = tmp_path / "requirements.txt"
    path.write_text(text)
    return path


def test_without_a_local_python_wheels_are_those_of_the_runtimes_python(tmp_path, index):
    """kilnnew has wheels for CPython 3.13 only: resolvable for 3.13 with kiln's own pip (--python-version)."""
    if interpreters.own().version == (3, 13):
        pytest.fail("this test needs kiln's own Python not to be 3.13")
    libraries.check_requirements(requirements(tmp_path, "kilnnew\n"), (3, 13), search=nowhere(tmp_path))
    with pytest.raises(ConfigError, match=r"requirements\.txt:1: pip could not install 'kilnnew' for Python 3\.12"):
        libraries.check_requirements(requirements(tmp_path, "kilnnew\n"), (3, 12), search=nowhere(tmp_path))


@pytest.mark.parametrize("line", ['kilnold; python_version < "3.12"', "kilnold; python_version == '3.11'",
                                  'kilnold ; python_full_version < "3.12.0"'])
def test_without_a_local_python_the_files_markers_are_evaluated_for_the_runtimes_python(tmp_path, index, line):
    """kilnold is not on the index: a line for older Pythons is left out for Python 3.13, as the hosts do."""
    if interpreters.own().version == (3, 13):
        pytest.fail("this test needs kiln's own Python not to be 3.13")
    libraries.check_requirements(requirements(tmp_path, f"kilnnew\n{line}\n"), (3, 13), search=nowhere(tmp_path))


def test_a_refusal_without_a_local_python_says_how_it_was_checked(tmp_path, index):
    version = other_version()
    name = f"python{version[0]}.{version[1]}"
    with pytest.raises(ConfigError) as refused:
        libraries.check_requirements(requirements(tmp_path, "# deps\nkilnbroken\n"), version, search=nowhere(tmp_path))
    message = str(refused.value)
    assert message.startswith(f"requirements.txt:2: pip could not install 'kilnbroken' for Python "
                              f"{version[0]}.{version[1]}: No matching distribution found for kilnmissing>=1")
    assert f"there is no {name} on this machine" in message and "--skip-requirements-check" in message


@pytest.mark.parametrize("text, refusal", [
    ("appengine-python-standard==9.9\n", r"requirements\.txt:1: kiln does not provide appengine-python-standard==9\.9"),
    ("flask\n--index-url https://example.com\n", r"requirements\.txt:2: options are not allowed"),
    ("pkg @ https://example.com/pkg.whl\n", r"requirements\.txt:1: URLs and paths are not allowed"),
])
def test_lines_kiln_refuses_are_refused_before_pip_runs(tmp_path, index, text, refusal):
    with pytest.raises(ConfigError, match=refusal):
        libraries.check_requirements(requirements(tmp_path, text), interpreters.own().version,
                                     search=nowhere(tmp_path))


def test_the_sdk_line_is_left_to_kilns_pins_and_nothing_else_needs_pip(tmp_path, index):
    libraries.check_requirements(requirements(tmp_path, "appengine-python-standard==1.1.4\n"), (3, 12),
                                 search=nowhere(tmp_path))
