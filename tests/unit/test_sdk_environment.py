"""What the runtime gives apps written for App Engine: the SDK as a platform library (runtime.libraries), App
Engine's process variables (runtime.appengine) and the X-AppEngine-* variables only the runtime sets
(runtime.wsgi)."""

from __future__ import annotations

import pathlib

import pytest

from kiln.errors import ConfigError
from kiln.pb.runtime.v1 import http_pb2
from kiln_platform import appyaml
from runtime import appengine, libraries
from runtime.wsgi import InstanceInfo, build_environ

PY27 = "runtime: python27\napi_version: 1\nthreadsafe: true\nhandlers:\n- url: /.*\n  script: main.app\n"
PY3 = "runtime: python311\napp_engine_apis: true\nhandlers:\n- url: /.*\n  script: auto\n"


@pytest.fixture
def cache(tmp_path):
    """A library cache where the SDK is already installed (no pip: an empty stand-in directory)."""
    cache = tmp_path / "cache"
    libraries.sdk_target(libraries.GAE_SDK_BUNDLED, cache).mkdir(parents=True)
    libraries.sdk_target(libraries.GAE_SDK_BUNDLED, cache, bundled=True).mkdir(parents=True)
    return cache


def app(tmp_path: pathlib.Path, yaml: str, requirements: str | None = None) -> tuple[pathlib.Path, appyaml.AppConfig]:
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "app.yaml").write_text(yaml)
    if requirements is not None:
        (app_dir / "requirements.txt").write_text(requirements)
    return app_dir, appyaml.load(app_dir / "app.yaml")


def test_a_python27_app_gets_the_bundled_sdk_as_a_platform_library(tmp_path, cache):
    app_dir, config = app(tmp_path, PY27)
    env = libraries.prepare(app_dir, config, cache)
    assert env.library_dirs == (libraries.sdk_target("3.1.0", cache, bundled=True),)
    assert env.requirements_dir is None


@pytest.mark.parametrize("line", ["appengine-python-standard", "appengine-python-standard>=1.0",
                                  "appengine_python_standard==3.1.0", "Appengine.Python.Standard~=3.1"])
def test_a_python3_app_naming_the_sdk_gets_it_as_a_platform_library_not_from_pip(tmp_path, cache, line):
    app_dir, config = app(tmp_path, PY3, f"# the SDK\n{line}\n")
    env = libraries.prepare(app_dir, config, cache)
    assert env.library_dirs == (libraries.sdk_target("3.1.0", cache),)
    assert env.requirements_dir is None  # its only line was the SDK's


def test_the_sdks_line_is_taken_out_of_the_requirements_pip_installs(tmp_path):
    found, rest = libraries.sdk_requirement(tmp_path / "requirements.txt",
                                            ["flask==3.1.3", "appengine-python-standard>=3", "requests"])
    assert (found, rest) == ("3.1.0", ["flask==3.1.3", "requests"])


@pytest.mark.parametrize("line", ["appengine-python-standard==1.1.3", "appengine-python-standard<1.1",
                                  "appengine_python_standard>3.1.0", "appengine-python-standard==2.0.1"])
def test_an_sdk_version_kiln_does_not_pin_is_refused_with_file_line_and_versions(tmp_path, cache, line):
    app_dir, config = app(tmp_path, PY3, f"flask==3.1.3\n\n{line}\n")
    with pytest.raises(ConfigError, match=r"requirements.txt:3: kiln does not provide appengine-python-standard.*"
                                          r"supported versions: 1\.1\.4, 3\.1\.0"):
        libraries.prepare(app_dir, config, cache)


def test_a_python3_app_without_the_sdk_does_not_get_it(tmp_path, cache):
    app_dir, config = app(tmp_path, PY3)
    assert libraries.prepare(app_dir, config, cache).library_dirs == ()


def test_app_engines_process_variables_are_set_as_googles_runtime_sets_them(tmp_path):
    _, config = app(tmp_path, PY27.replace("threadsafe", "service: worker\nthreadsafe"))
    found = appengine.process_variables(app_id="guestbook", version_id="v3", minor_version=42, instance_id="i-1",
                                        memory_mb=256, config=config)
    assert found == {
        "GAE_APPLICATION": "guestbook", "GAE_SERVICE": "worker", "GAE_VERSION": "v3", "GAE_INSTANCE": "i-1",
        "GAE_ENV": "standard", "GAE_RUNTIME": "python27", "GAE_MEMORY_MB": "256", "GAE_DEPLOYMENT_ID": "42",
        "GOOGLE_CLOUD_PROJECT": "guestbook", "PORT": "8080", "APPLICATION_ID": "guestbook",
        "CURRENT_VERSION_ID": "v3.42", "CURRENT_MODULE_ID": "worker", "INSTANCE_ID": "i-1"}
    assert not any(name.startswith("DATASTORE_") for name in found)


def test_inherited_cloud_datastore_switches_are_dropped(monkeypatch):
    monkeypatch.setenv("DATASTORE_APP_ID", "x")
    monkeypatch.setenv("DATASTORE_PROJECT_ID", "x")
    appengine.drop_cloud_datastore_switches()
    import os

    assert "DATASTORE_APP_ID" not in os.environ and "DATASTORE_PROJECT_ID" not in os.environ


INFO = InstanceInfo(app_id="a", version_id="v1", minor_version=1, instance_id="i", auth_domain="example.com",
                    default_hostname="a.example.com", dev=False, env_variables={})


def request(email: str = "", admin: bool = False, forged: tuple[str, ...] = ()) -> http_pb2.HttpRequest:
    req = http_pb2.HttpRequest(request_id="log-1", method="GET", path="/", scheme="https", host="a.example.com",
                               remote_addr="203.0.113.9")
    req.user.email, req.user.user_id, req.user.is_admin = email, "42" if email else "", admin
    for name in forged:
        req.headers.add(name=name, value=b"forged")
    return req


def test_the_sdks_request_variables_come_from_what_the_router_established():
    environ = build_environ(request("ann@example.com", admin=True), INFO)
    assert {k: v for k, v in environ.items() if k.startswith("HTTP_X_APPENGINE_")} == {
        "HTTP_X_APPENGINE_AUTH_DOMAIN": "example.com", "HTTP_X_APPENGINE_DEFAULT_VERSION_HOSTNAME": "a.example.com",
        "HTTP_X_APPENGINE_REQUEST_LOG_ID": "log-1", "HTTP_X_APPENGINE_HTTPS": "on",
        "HTTP_X_APPENGINE_USER_IP": "203.0.113.9", "HTTP_X_APPENGINE_USER_IS_ADMIN": "1",
        "HTTP_X_APPENGINE_USER_EMAIL": "ann@example.com", "HTTP_X_APPENGINE_USER_ID": "42",
        "HTTP_X_APPENGINE_USER_NICKNAME": "ann"}


@pytest.mark.parametrize("name", ["X-AppEngine-User-Email", "X-AppEngine-User-Is-Admin", "X-AppEngine-Api-Ticket",
                                  "X-AppEngine-User-Ip", "x-appengine-user-id", "X-APPENGINE-HTTPS"])
def test_runtime_owned_variables_never_come_from_a_header_that_reached_the_runtime(name):
    environ = build_environ(request(forged=(name,)), INFO)
    assert "forged" not in {v for k, v in environ.items() if k.startswith("HTTP_X_APPENGINE_")}
    assert "HTTP_X_APPENGINE_USER_EMAIL" not in environ  # nobody is signed in
    assert environ["HTTP_X_APPENGINE_USER_IS_ADMIN"] == "0"


def test_runtime_owned_variables_never_come_from_the_apps_env_variables():
    info = InstanceInfo(app_id="a", version_id="v1", minor_version=1, instance_id="i", auth_domain="example.com",
                        default_hostname="a.example.com", dev=False,
                        env_variables={"HTTP_X_APPENGINE_USER_EMAIL": "forged", "HTTP_X_APPENGINE_API_TICKET": "forged",
                                       "HTTP_X_APPENGINE_USER_IS_ADMIN": "1", "MY_SETTING": "kept"})
    environ = build_environ(request(), info)
    assert "forged" not in environ.values()
    assert environ["HTTP_X_APPENGINE_USER_IS_ADMIN"] == "0" and environ["MY_SETTING"] == "kept"


@pytest.mark.parametrize(("line", "version"), [("appengine-python-standard==1.1.4", "1.1.4"),
                                               ("appengine-python-standard<2", "1.1.4"),
                                               ("appengine-python-standard>=0.2.3", "3.1.0")])
def test_the_newest_pinned_sdk_the_specifier_admits_is_chosen(tmp_path, line, version):
    found, rest = libraries.sdk_requirement(tmp_path / "requirements.txt", [line, "flask==3.1.3"])
    assert (found, rest) == (version, ["flask==3.1.3"])


def test_the_sdk_bundled_with_python27_apps_leaves_pillow_to_libraries_and_nothing_else():
    full, bundled = libraries.sdk_pins("3.1.0"), libraries.sdk_pins("3.1.0", bundled=True)
    assert set(full) - set(bundled) == {"pillow==13.0.0"}
