"""kiln_platform.interpreters (which Python a runtime runs on), runtime.runtimeenv's pins and the per-Python cache
keys of runtime.libraries. Interpreters here are small scripts that answer the version probe as a Python would."""

from __future__ import annotations

import importlib.metadata
import pathlib
import sys

import pytest

from kiln_platform import appyaml, interpreters
from runtime import libraries, runtimeenv

OWN = (sys.version_info[0], sys.version_info[1])


def fake_python(path: pathlib.Path, answer: str, *, works: bool = True) -> pathlib.Path:
    """An executable that prints ``answer`` for the version probe (or fails, as a pyenv shim does)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    failing = "#!/bin/sh\necho 'pyenv: no such command' >&2\nexit 127\n"
    path.write_text(f"#!/bin/sh\necho {answer}\n" if works else failing)
    path.chmod(0o755)
    return path


def config(runtime: str) -> appyaml.AppConfig:
    if runtime == "python27":
        return appyaml.parse("runtime: python27\napi_version: 1\nthreadsafe: true\nhandlers:\n- url: /.*\n"
                             "  script: main.app\n")
    return appyaml.parse(f"# comment\nruntime: {runtime}\n")


@pytest.fixture
def empty(tmp_path) -> interpreters.Search:
    (tmp_path / "nothing").mkdir()
    return interpreters.Search(str(tmp_path / "nothing"), tmp_path / "nothing")


def test_python27_apps_run_on_kilns_own_python(empty):
    found = interpreters.find(config("python27"), search=empty)
    assert found.own and found.executable == pathlib.Path(sys.executable)


def test_a_runtime_naming_kilns_own_version_runs_on_kilns_own_python(empty):
    found = interpreters.find(config(f"python{OWN[0]}{OWN[1]}"), search=empty)
    assert found.own and found.version == OWN


def test_an_interpreter_on_the_search_path_is_found(tmp_path):
    exe = fake_python(tmp_path / "bin" / "python3.13", "3.13")
    found = interpreters.lookup((3, 13), interpreters.Search(str(tmp_path / "bin"), tmp_path / "no-pyenv"))
    assert found == interpreters.Interpreter((3, 13), exe)


def test_a_pyenv_shim_that_fails_is_passed_over_for_pyenvs_own_install(tmp_path):
    fake_python(tmp_path / "shims" / "python3.13", "3.13", works=False)
    installed = fake_python(tmp_path / "pyenv" / "versions" / "3.13.0" / "bin" / "python3.13", "3.13")
    found = interpreters.lookup((3, 13), interpreters.Search(str(tmp_path / "shims"), tmp_path / "pyenv"))
    assert found is not None and found.executable == installed


def test_an_executable_reporting_another_version_is_passed_over(tmp_path):
    fake_python(tmp_path / "bin" / "python3.12", "3.11")
    assert interpreters.lookup((3, 12), interpreters.Search(str(tmp_path / "bin"), tmp_path / "none")) is None


def test_the_newest_pyenv_patch_release_is_chosen(tmp_path):
    for patch in ("3.12.1", "3.12.10", "3.12.9", "3.13.2", "3.12.11rc1"):
        fake_python(tmp_path / "versions" / patch / "bin" / "python3.12", "3.12")
    found = interpreters.lookup((3, 12), interpreters.Search("", tmp_path))
    assert found is not None and found.executable.parts[-3] == "3.12.10"


def test_pyenv_root_and_search_path_come_from_kilns_settings_first():
    search = interpreters.Search.from_env({"PATH": "/usr/bin", "PYENV_ROOT": "/opt/pyenv",
                                           "KILN_PYTHON_PATH": "/x", "KILN_PYENV_ROOT": "/y"})
    assert search == interpreters.Search("/x", pathlib.Path("/y"))
    assert interpreters.Search.from_env({"PATH": "/usr/bin", "PYENV_ROOT": "/opt/pyenv"}) == \
        interpreters.Search("/usr/bin", pathlib.Path("/opt/pyenv"))


def test_a_missing_interpreter_is_refused_naming_it_where_kiln_looked_and_how_to_install_it(empty):
    with pytest.raises(appyaml.AppYamlError) as refused:
        interpreters.find(config("python313"), filename="/srv/app/app.yaml", search=empty)
    message = str(refused.value)
    assert message.startswith("/srv/app/app.yaml:2: runtime: python313 runs on Python 3.13")
    assert "python3.13" in message and f"{empty.pyenv_root}/versions/3.13.*" in message
    assert "pyenv install 3.13" in message


def test_the_runtime_environment_pins_kilns_own_versions_with_their_dependencies():
    pins = dict(p.split("==") for p in runtimeenv.pins())
    for name in ("grpcio", "protobuf", "nats-py", "pyseccomp", "pyyaml", "gunicorn", "waitress"):
        assert pins[name] == importlib.metadata.version(name), name
    assert "typing-extensions" in pins  # grpcio's own dependency, followed through its metadata


def test_installed_sets_are_cached_per_python():
    other = interpreters.Interpreter((3, 13), pathlib.Path("/opt/python3.13"))
    pins = ("six==1.17.0",)
    keys = {libraries._cache_key(python, pins) for python in (interpreters.own(), other)}
    assert len(keys) == 2 and libraries._cache_key(other, pins) == libraries._cache_key(other, pins)
