"""Apps written for App Engine's Python 3 runtimes, served by ``kiln dev`` as written: each version on the Python its
``runtime:`` names, its ``entrypoint``'s WSGI app serving ``script: auto`` handlers (and whatever no handler
matches), ``requirements.txt`` installed for that Python (its environment markers evaluated for it). Refusals
(a missing interpreter, an app.yaml mixing the two styles) come before anything starts, naming file and line.

Through the router, NATS, the instance manager and real runtime instances; packages come from PyPI. kiln's runtime
environment for each interpreter is installed once per host (the instance manager's cache), so only the first run
on a machine pays for it.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import textwrap
from collections.abc import Iterator

import pytest

from deploy.dev import DevOptions, DevServer
from kiln_platform.appyaml import AppYamlError
from tests.integration.apps import fetch, running

pytestmark = pytest.mark.nats

# Installed for Python 3.12 and newer only: the marker is evaluated for the app's Python, as on App Engine.
REQUIREMENTS = 'Flask==3.1.3\nsix==1.17.0 ; python_version >= "3.12"\n'

FLASK_APP_YAML = """\
runtime: {runtime}
app_engine_apis: true
entrypoint: gunicorn -b :$PORT main:app
instance_class: F2
env_variables:
  GREETING: hello
automatic_scaling:
  max_instances: 2
handlers:
- url: /static
  static_dir: static
- url: /api/.*
  script: auto
"""

FLASK_MAIN = textwrap.dedent('''
    import json, os, sys
    from flask import Flask

    app = Flask(__name__)

    def _six():
        try:
            import six
        except ImportError as exc:
            return {"error": type(exc).__name__}
        return {"file": six.__file__}

    @app.route("/api/about")
    def about():
        return json.dumps({"version": list(sys.version_info[:2]), "six": _six(), "uid": os.getuid(),
                           "env": {k: os.environ.get(k) for k in ("GAE_RUNTIME", "PORT", "GREETING")}})

    @app.route("/<path:rest>")
    def anything(rest):
        return "flask caught /" + rest
''')

PLAIN_MAIN = textwrap.dedent('''
    import json, os, sys

    def app(environ, start_response):
        try:
            import six
            found = {"file": six.__file__}
        except ImportError as exc:
            found = {"error": type(exc).__name__}
        body = {"version": list(sys.version_info[:2]), "six": found,
                "env": {k: os.environ.get(k) for k in ("GAE_RUNTIME", "PORT")}, "path": environ["PATH_INFO"]}
        start_response("200 OK", [("Content-Type", "application/json")])
        return [json.dumps(body).encode()]
''')


@pytest.fixture(scope="module")
def flask_apps(tmp_path_factory) -> Iterator[dict[str, object]]:
    """The Flask app, served on python312 and on python313 (started on first use, once per module)."""
    with contextlib.ExitStack() as stack:
        servers: dict[str, object] = {}

        def serve(runtime: str):
            if runtime not in servers:
                app_dir = tmp_path_factory.mktemp(runtime)
                (app_dir / "static").mkdir()
                servers[runtime] = stack.enter_context(running(
                    app_dir, {"main.py": FLASK_MAIN, "requirements.txt": REQUIREMENTS, "static/site.css": "p {}"},
                    app_yaml=FLASK_APP_YAML.format(runtime=runtime)))
            return servers[runtime]

        yield {"serve": serve}


def about(server) -> dict:
    status, _, body = fetch(server, "/api/about")
    assert status == 200, body
    return json.loads(body)


@pytest.mark.parametrize(("runtime", "version"), [("python312", [3, 12]), ("python313", [3, 13])])
def test_each_version_runs_on_the_python_its_runtime_names(flask_apps, runtime, version):
    assert about(flask_apps["serve"](runtime))["version"] == version


def test_a_flask_app_behind_script_auto_serves_through_its_gunicorn_entrypoint(flask_apps):
    server = flask_apps["serve"]("python312")
    info = about(server)
    assert info["env"] == {"GAE_RUNTIME": "python312", "PORT": "8080", "GREETING": "hello"}


def test_a_request_no_handler_matches_goes_to_the_entrypoints_app(flask_apps):
    server = flask_apps["serve"]("python312")
    status, _, body = fetch(server, "/somewhere/else")
    assert (status, body) == (200, b"flask caught /somewhere/else")


def test_static_handlers_still_serve_before_the_app(flask_apps):
    server = flask_apps["serve"]("python312")
    status, _, body = fetch(server, "/static/site.css")
    assert (status, body) == (200, b"p {}")


def test_a_requirement_marked_for_newer_pythons_is_installed_for_a_python312_app(flask_apps):
    six = about(flask_apps["serve"]("python312"))["six"]
    assert "file" in six and "/requirements/" in six["file"], six


def test_a_requirement_marked_for_newer_pythons_is_not_installed_for_a_python311_app(tmp_path):
    with running(tmp_path / "app", {"main.py": PLAIN_MAIN, "requirements.txt": REQUIREMENTS},
                 app_yaml="runtime: python311\n") as server:
        status, _, body = fetch(server, "/")
        info = json.loads(body)
    assert status == 200 and info["version"] == [3, 11]
    assert info["six"] == {"error": "ModuleNotFoundError"}


def test_without_entrypoint_or_handlers_main_app_serves_every_path(tmp_path):
    with running(tmp_path / "app", {"main.py": PLAIN_MAIN}, app_yaml="runtime: python311\n") as server:
        answers = [fetch(server, path) for path in ("/", "/a/b?c=d")]
    assert [(status, json.loads(body)["path"]) for status, _, body in answers] == [(200, "/"), (200, "/a/b")]
    assert json.loads(answers[0][2])["env"] == {"GAE_RUNTIME": "python311", "PORT": "8080"}


FACTORY = textwrap.dedent('''
    def create_app(name, punctuation="."):
        def app(environ, start_response):
            start_response("200 OK", [("Content-Type", "text/plain")])
            return [(name + punctuation).encode()]
        return app

    def make():
        return create_app("made by waitress --call")
''')
WEB = textwrap.dedent('''
    def application(environ, start_response):
        start_response("200 OK", [("Content-Type", "text/plain")])
        return [b"web.application from src/"]
''')


@pytest.mark.parametrize(("entrypoint", "expected"), [
    ("""gunicorn -b :$PORT --workers 2 --threads 4 --timeout 0 'factory:create_app("factory", punctuation="!")'""",
     b"factory!"),
    ("uwsgi --http-socket :$PORT --wsgi-file src/web.py --callable application --master --processes 1 --threads 2",
     b"web.application from src/"),
    ("waitress-serve --listen=*:$PORT --call factory:make", b"made by waitress --call."),
    ("python3 -m gunicorn --pythonpath src --bind :$PORT web", b"web.application from src/"),
])
def test_an_entrypoint_naming_a_wsgi_app_serves_it(tmp_path, entrypoint, expected):
    app_dir = tmp_path / "app"
    (app_dir / "src").mkdir(parents=True)
    app_yaml = f"runtime: python311\nentrypoint: {entrypoint}\n"
    with running(app_dir, {"factory.py": FACTORY, "src/web.py": WEB}, app_yaml=app_yaml) as server:
        status, _, body = fetch(server, "/")
    assert (status, body) == (200, expected)


def test_user_isolation_runs_an_app_on_another_python_as_the_apps_user(tmp_path):
    app_dir = tmp_path / "app"
    (app_dir / "static").mkdir(parents=True)
    with running(app_dir, {"main.py": FLASK_MAIN, "requirements.txt": REQUIREMENTS, "static/site.css": "p {}"},
                 app_yaml=FLASK_APP_YAML.format(runtime="python313"), isolation="user") as server:
        info = about(server)
    assert info["version"] == [3, 13] and info["uid"] != 0


def test_a_runtime_whose_python_is_missing_is_refused_naming_it(tmp_path, monkeypatch):
    empty = tmp_path / "empty"
    empty.mkdir()
    monkeypatch.setenv("KILN_PYTHON_PATH", str(empty))
    monkeypatch.setenv("KILN_PYENV_ROOT", str(empty))
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "app.yaml").write_text("# a Python 3.13 app\nruntime: python313\n")
    with pytest.raises(AppYamlError) as refused:
        DevServer(DevOptions(app_dir=app_dir, port=0, data_dir=tmp_path / "data"))
    message = str(refused.value)
    assert message.startswith(f"{app_dir / 'app.yaml'}:2: runtime: python313 runs on Python 3.13")
    assert "python3.13" in message and "pyenv install 3.13" in message


@pytest.mark.parametrize(("app_yaml", "line", "field"), [
    ("runtime: python312\nthreadsafe: true\n", 2, "threadsafe"),
    ("runtime: python313\nhandlers:\n- url: /.*\n  script: main.app\n", 4, "handlers[0].script"),
    ("runtime: python27\napi_version: 1\nthreadsafe: true\nentrypoint: gunicorn main:app\n"
     "handlers:\n- url: /.*\n  script: main.app\n", 4, "entrypoint"),
    ("runtime: python27\napi_version: 1\nthreadsafe: true\nhandlers:\n- url: /.*\n  script: auto\n", 6,
     "handlers[0].script"),
])
def test_an_app_yaml_mixing_the_two_styles_is_refused_by_kiln_dev_with_file_and_line(tmp_path, app_yaml, line,
                                                                                     field):
    (tmp_path / "app.yaml").write_text(app_yaml)
    with pytest.raises(AppYamlError) as refused:
        DevServer(DevOptions(app_dir=tmp_path, port=0, data_dir=tmp_path / "data"))
    assert str(refused.value).startswith(f"{tmp_path / 'app.yaml'}:{line}: {field}: ")


def test_the_instance_manager_refuses_a_runtime_whose_python_is_missing(tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    app_dir = tmp_path / "app"
    app_dir.mkdir()
    (app_dir / "app.yaml").write_text("runtime: python313\n")
    env = {**os.environ, "KILN_PYTHON_PATH": str(empty), "KILN_PYENV_ROOT": str(empty),
           "KILN_MANAGER_SERVICE_SECRET": "manager-test-secret"}
    done = subprocess.run([sys.executable, "-m", "runtime.manager", "--app-dir", str(app_dir), "--app-id", "app",
                           "--version-id", "v1", "--nats-url", "nats://127.0.0.1:1", "--run-dir", str(tmp_path / "run"),
                           "--isolation", "none", "--cache-dir", str(tmp_path / "cache"), "--"],
                          capture_output=True, text=True, env=env, timeout=120, check=False)
    assert done.returncode == 2
    assert f"{app_dir / 'app.yaml'}:1: runtime: python313 runs on Python 3.13" in done.stderr
    assert not (tmp_path / "cache" / "runtimes").exists()
