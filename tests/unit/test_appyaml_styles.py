"""kiln_platform.appyaml: App Engine's two app.yaml styles (python27 and Python 3), each accepted as App Engine
accepts it and never mixed.

The reference is Google's own model of app.yaml (``google.appengine.api.appinfo``, ``AppInfoExternal``: its
``ATTRIBUTES`` and ``CheckInitialized``) and App Engine's documented rules for the Python 3 runtimes; each case
names the rule it follows.
"""

from __future__ import annotations

import textwrap

import pytest

from kiln_platform.appyaml import AppYamlError, parse
from kiln_platform.entrypoint import WsgiTarget

PY27 = "runtime: python27\napi_version: 1\nthreadsafe: true\n"
PY27_HANDLERS = "handlers:\n- url: /.*\n  script: main.app\n"


@pytest.mark.parametrize(("text", "rule"), [
    ("runtime: python311\n", "Python 3: handlers may be omitted; the entrypoint's app serves every path"),
    ("runtime: python312\n", "Python 3.12"),
    ("runtime: python313\n", "Python 3.13"),
    ("runtime: python314\n", "a newer python3NN: accepted here, refused later only if this host lacks its Python"),
    ("runtime: python312\napp_engine_apis: true\n", "APP_ENGINE_APIS: Optional(bool)"),
    ("runtime: python312\nentrypoint: gunicorn -b :$PORT -w 2 main:app\n", "ENTRYPOINT: a command"),
    ("runtime: python312\nhandlers:\n- url: /static\n  static_dir: static\n- url: /.*\n  script: auto\n"
     "  secure: always\n  login: required\n", "Python 3 handlers: static, or script: auto"),
    ("runtime: python312\ninstance_class: F4\nautomatic_scaling:\n  max_instances: 3\n  min_instances: 0\n"
     "  max_concurrent_requests: 20\n  target_cpu_utilization: 0.7\n", "INSTANCE_CLASS, AUTOMATIC_SCALING"),
    ("runtime: python312\nbasic_scaling:\n  max_instances: 2\n  idle_timeout: 5m\ninstance_class: B2\n",
     "BASIC_SCALING"),
    ("runtime: python312\nenv_variables:\n  MODE: prod\n  DEBUG: false\n", "ENV_VARIABLES"),
    ("runtime: python312\nservice: api\nservice_account: svc@example.iam.gserviceaccount.com\n",
     "SERVICE, SERVICEACCOUNT"),
    ("runtime: python312\nbuild_env_variables:\n  GOOGLE_PIP_EXTRA: x\nvpc_access_connector:\n"
     "  name: projects/p/locations/r/connectors/c\nruntime_config:\n  operating_system: ubuntu22\n",
     "BUILD_ENV_VARIABLES, VPC_ACCESS_CONNECTOR, RUNTIME_CONFIG"),
    ("runtime: python312\ninbound_services:\n- warmup\n- mail\nerror_handlers:\n- file: oops.html\n"
     "default_expiration: 1d\n", "INBOUND_SERVICES, ERROR_HANDLERS, DEFAULT_EXPIRATION"),
    (PY27 + PY27_HANDLERS, "python27: api_version, threadsafe, handlers naming a WSGI app"),
    (PY27 + "libraries:\n- name: jinja2\n  version: latest\n" + PY27_HANDLERS, "LIBRARIES (python27 only)"),
    ("runtime: python27\napi_version: 1\nthreadsafe: false\nhandlers:\n- url: /.*\n  script: main.py\n",
     "python27 CGI handlers with threadsafe: false"),
])
def test_app_engine_accepts_it_so_kiln_does(text, rule):
    assert parse(text).runtime, rule


def test_a_python3_app_serves_everything_no_handler_matches_with_the_entrypoints_app():
    cfg = parse("runtime: python312\nhandlers:\n- url: /static\n  static_dir: static\n- url: /api/.*\n  script: auto\n")
    assert [(h.url, h.script, h.static_dir) for h in cfg.handlers] == [
        ("/static", None, "static"), ("/api/.*", "auto", None), ("/.*", "auto", None)]


@pytest.mark.parametrize(("entrypoint", "target"), [
    (None, WsgiTarget(server="gunicorn", module="main", attribute="app")),
    ("gunicorn -b :$PORT 'web:create_app()'", WsgiTarget(server="gunicorn", module="web", attribute="create_app",
                                                         args=())),
    ("uwsgi --http-socket :$PORT --wsgi-file main.py --callable app",
     WsgiTarget(server="uwsgi", module="main", attribute="app", paths=(".",))),
])
def test_a_python3_app_is_the_wsgi_app_its_entrypoint_names(entrypoint, target):
    text = "runtime: python313\n" + (f"entrypoint: {entrypoint}\n" if entrypoint else "")
    assert parse(text).wsgi_target == target


def test_a_python27_app_has_no_entrypoint_app():
    assert parse(PY27 + PY27_HANDLERS).wsgi_target is None


@pytest.mark.parametrize(("runtime", "version"), [("python27", None), ("python311", (3, 11)),
                                                  ("python312", (3, 12)), ("python313", (3, 13))])
def test_the_runtime_names_its_python(runtime, version):
    text = (PY27 + PY27_HANDLERS) if runtime == "python27" else f"runtime: {runtime}\n"
    assert parse(text).python_version == version


@pytest.mark.parametrize(("text", "where", "says"), [
    # mixing the styles: python27's settings in a Python 3 app.yaml…
    ("runtime: python312\napi_version: 1\n", "app.yaml:2: api_version", "remove api_version"),
    ("runtime: python312\nthreadsafe: true\n", "app.yaml:2: threadsafe", "remove threadsafe"),
    ("runtime: python313\nlibraries:\n- name: jinja2\n  version: latest\n", "app.yaml:2: libraries",
     "requirements.txt"),  # appinfo: RuntimeDoesNotSupportLibraries
    ("runtime: python312\nhandlers:\n- url: /.*\n  script: main.app\n", "app.yaml:4: handlers[0].script",
     "script must be auto, got 'main.app'; name the app in entrypoint (e.g. entrypoint: gunicorn -b :$PORT "
     "main:app)"),
    ("runtime: python312\nhandlers:\n- url: /s\n  static_dir: s\n- url: /cgi\n  script: cgi.py\n",
     "app.yaml:6: handlers[1].script", "script must be auto, got 'cgi.py'"),
    # … and Python 3's in a python27 one
    (PY27 + "entrypoint: gunicorn -b :$PORT main:app\n" + PY27_HANDLERS, "app.yaml:4: entrypoint",
     "remove entrypoint"),
    (PY27 + "app_engine_apis: true\n" + PY27_HANDLERS, "app.yaml:4: app_engine_apis", "remove app_engine_apis"),
    (PY27 + "handlers:\n- url: /.*\n  script: auto\n", "app.yaml:6: handlers[0].script",
     "script: auto is for Python 3 runtimes"),
    # unknown runtimes, and ones kiln's runtime cannot run
    ("runtime: go122\n", "app.yaml:1: runtime", "kiln runs python27 and python311"),
    ("runtime: python3\n", "app.yaml:1: runtime", "got 'python3'"),
    ("runtime: python\n", "app.yaml:1: runtime", "got 'python'"),
    ("runtime: python310\n", "app.yaml:1: runtime", "App Engine has ended support"),
    ("runtime: python37\n", "app.yaml:1: runtime", "needs Python 3.11 or newer"),
    ("runtime: python3111\n", "app.yaml:1: runtime", "got 'python3111'"),
    # an entrypoint kiln cannot run
    ("runtime: python312\nentrypoint: flask run\n", "app.yaml:2: entrypoint", "kiln cannot run 'flask'"),
    ("runtime: python312\nentrypoint: gunicorn -k uvicorn.workers.UvicornWorker main:app\n",
     "app.yaml:2: entrypoint", "ASGI"),
    ("runtime: python312\nentrypoint: gunicorn\n", "app.yaml:2: entrypoint", "name exactly one app"),
    # Google's other rules hold for both styles
    ("runtime: python312\nautomatic_scaling:\n  max_instances: 2\nmanual_scaling:\n  instances: 1\n",
     "app.yaml:4: manual_scaling", "only one scaling type"),  # appinfo: TooManyScalingSettingsError
    (PY27 + "handlers:\n- url: /.*\n  script: main.py\n", "app.yaml:5: handlers[0].script",
     "not allowed with threadsafe: true"),  # appinfo: ThreadsafeWithCgiHandler
    ("runtime: python312\nservice_account: [a]\n", "app.yaml:2: service_account", "must be a string"),
])
def test_app_engine_refuses_it_so_kiln_does_with_file_line_and_fix(text, where, says):
    with pytest.raises(AppYamlError) as refused:
        parse(textwrap.dedent(text))
    assert str(refused.value).startswith(where + ": ") and says in str(refused.value), str(refused.value)
