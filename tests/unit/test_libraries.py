"""The library catalog and requirements.txt validation (no installs: those are integration tests)."""

from __future__ import annotations

import pathlib

import pytest

from kiln.errors import ConfigError
from runtime import libraries


def test_a_catalogued_version_resolves_to_exact_pins():
    pins = libraries.resolve("jinja2", "3.1")
    assert pins == ("Jinja2==3.1.6", "MarkupSafe==3.0.3")
    assert all("==" in pin for versions in libraries.CATALOG.values() for v in versions.values() for pin in v)


def test_latest_is_the_highest_version():
    libraries.CATALOG["_demo"] = {"1.9": ("demo==1.9",), "1.10": ("demo==1.10",)}
    try:
        assert libraries.resolve("_demo", "latest") == ("demo==1.10",)
    finally:
        del libraries.CATALOG["_demo"]


def test_unknown_version_lists_the_known_ones():
    with pytest.raises(ConfigError, match=r"yaml '5.1' is not provided; versions: 6.0, latest"):
        libraries.resolve("yaml", "5.1")


def write(tmp_path: pathlib.Path, text: str) -> pathlib.Path:
    path = tmp_path / "requirements.txt"
    path.write_text(text)
    return path


def test_requirements_keep_plain_requirements_and_drop_comments(tmp_path):
    path = write(tmp_path, "# deps\nrequests==2.32.3  # http\n\nsix>=1.16; python_version >= '3'\n")
    assert libraries.read_requirements(path) == ["requests==2.32.3", 'six>=1.16; python_version >= "3"']


@pytest.mark.parametrize("line, message", [
    ("--index-url https://evil.example/simple", r"requirements.txt:2: options are not allowed \(--index-url\)"),
    ("-r other.txt", r"requirements.txt:2: options are not allowed \(-r\)"),
    ("pkg @ file:///etc/passwd", r"requirements.txt:2: URLs and paths are not allowed"),
    ("pkg @ https://example.com/pkg.whl", r"requirements.txt:2: URLs and paths are not allowed"),
    ("not a requirement!", r"requirements.txt:2: not a valid requirement"),
])
def test_requirements_refuse_anything_but_plain_requirements(tmp_path, line, message):
    with pytest.raises(ConfigError, match=message):
        libraries.read_requirements(write(tmp_path, f"six\n{line}\n"))


def test_environment_gives_the_runtime_its_paths():
    env = libraries.Environment((pathlib.Path("/l/a"), pathlib.Path("/l/b")), pathlib.Path("/r"))
    assert env.runtime_args() == ["--library-path", "/l/a:/l/b", "--requirements-path", "/r"]
    assert libraries.Environment().runtime_args() == []
