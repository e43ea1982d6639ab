"""The library catalog and requirements.txt validation (no installs: those are integration tests)."""

from __future__ import annotations

import pathlib
import re

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


@pytest.mark.parametrize("version", ["2.3", "2.5.1", "2.5.2", "latest"])
def test_every_app_engine_version_of_webapp2_is_its_python_3_release_with_webob(version):
    pins = libraries.resolve("webapp2", version)
    assert pins[0] == "webapp2==3.0.0b1"
    assert "WebOb==1.8.9" in pins and "six==1.17.0" in pins
    assert pins[0] in libraries.SOURCE_BUILDS


@pytest.mark.parametrize("name, version, newest", [
    ("jinja2", "2.6", "Jinja2==3.1.6"),
    ("jinja2", "latest", "Jinja2==3.1.6"),
    ("markupsafe", "0.23", "MarkupSafe==3.0.3"),
    ("webob", "1.1.1", "WebOb==1.8.9"),
    ("webob", "1.2.3", "WebOb==1.8.9"),
    ("yaml", "3.10", "PyYAML==6.0.3"),
    ("PIL", "1.1.7", "pillow==13.0.0"),
    ("numpy", "1.6.1", "numpy==2.3.5"),
    ("lxml", "2.3.5", "lxml==6.0.2"),
    ("django", "1.11", "Django==5.2.8"),
    ("setuptools", "36.6.0", "setuptools==84.2.1"),
    ("six", "1.9.0", "six==1.17.0"),
])
def test_app_engines_versions_resolve_to_the_newest_pinned_python_3_release(name, version, newest):
    assert libraries.resolve(name, version)[0] == newest


@pytest.mark.parametrize("name, version", [("ssl", "2.7.11"), ("ssl", "latest"), ("futures", "3.0.5"),
                                           ("enum", "0.9.23")])
def test_what_python_3s_standard_library_holds_installs_nothing(name, version):
    assert libraries.resolve(name, version) == ()


def test_a_version_app_engine_never_had_is_refused_listing_the_known_ones():
    with pytest.raises(ConfigError, match=r"webapp2 '2.4' is not provided; versions: 3.0, latest "
                                          r"\(App Engine's 2.3, 2.5.1, 2.5.2 mean 3.0\)"):
        libraries.resolve("webapp2", "2.4")
    with pytest.raises(ConfigError, match=r"ssl '3.0' is not one of App Engine's versions \(2.7, 2.7.11, 2.7.16, "
                                          r"latest\); Python 3's standard library has it"):
        libraries.resolve("ssl", "3.0")


@pytest.mark.parametrize("name", sorted(libraries.NOT_PROVIDED))
def test_a_library_kiln_cannot_provide_is_refused_naming_what_to_use_instead(name):
    with pytest.raises(ConfigError, match=f"libraries: kiln cannot provide '{name}': .+"):
        libraries.resolve(name, "latest")


def test_every_library_app_engine_offered_is_provided_or_refused_with_an_alternative():
    app_engine = set(libraries.APP_ENGINE_VERSIONS) | set(libraries.STANDARD_LIBRARY) | set(libraries.NOT_PROVIDED)
    assert set(libraries.APP_ENGINE_VERSIONS) <= set(libraries.CATALOG)
    assert not set(libraries.NOT_PROVIDED) & (set(libraries.CATALOG) | set(libraries.STANDARD_LIBRARY))
    assert {"webapp2", "webob", "jinja2", "markupsafe", "yaml", "PIL", "numpy", "lxml", "django", "ssl",
            "setuptools", "pycrypto", "MySQLdb", "pytz", "six", "werkzeug"} <= app_engine


def test_source_builds_are_pinned_to_an_exact_version_and_a_sha256():
    for pin, sha256 in libraries.SOURCE_BUILDS.items():
        assert re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9][0-9a-z.]*", pin)
        assert re.fullmatch(r"[0-9a-f]{64}", sha256)
    assert all(re.fullmatch(r"[A-Za-z0-9_.-]+==[0-9.]+", c) for c in libraries.BUILD_CONSTRAINTS)


def test_pips_failure_names_the_line_of_the_requirement_pip_names_not_one_whose_name_it_contains(tmp_path):
    from kiln_platform import interpreters

    req_file = tmp_path / "requirements.txt"
    req_file.write_text("six\n\nsixteen==1.0\n")
    message = libraries._where_pip_failed(req_file, ["six", "sixteen==1.0"],
                                          "requirements.txt: could not install six sixteen==1.0: ERROR: No matching "
                                          "distribution found for sixteen==1.0", interpreters.own())
    assert message.startswith("requirements.txt:3: pip could not install 'sixteen==1.0' for Python 3.")
    assert message.endswith("vendor a pure-Python copy in the app's directory)")


def test_pips_failure_naming_no_requirement_is_passed_on_as_it_is(tmp_path):
    from kiln_platform import interpreters

    req_file = tmp_path / "requirements.txt"
    req_file.write_text("six\n")
    message = "requirements.txt: could not install six: ERROR: network is unreachable"
    assert libraries._where_pip_failed(req_file, ["six"], message, interpreters.own()) == message
