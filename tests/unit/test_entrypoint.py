"""kiln_platform.entrypoint: a Python 3 app.yaml's entrypoint read as the WSGI app it names, and loaded."""

from __future__ import annotations

import sys
import textwrap

import pytest

from kiln_platform.entrypoint import DEFAULT_ENTRYPOINT, EntrypointError, WsgiTarget, load, parse


def test_the_default_entrypoint_is_app_engines_main_app():
    assert parse(DEFAULT_ENTRYPOINT) == WsgiTarget(server="gunicorn", module="main", attribute="app")


@pytest.mark.parametrize(("command", "expected"), [
    # gunicorn, as App Engine's documentation writes it, with any of its options (values or flags, both spellings)
    ("gunicorn -b :$PORT main:app", WsgiTarget(server="gunicorn", module="main", attribute="app")),
    ("gunicorn -b :$PORT -w 2 --threads 8 --timeout 0 --reload --preload main:app",
     WsgiTarget(server="gunicorn", module="main", attribute="app")),
    ("gunicorn --bind=:$PORT --worker-class=gthread --max-requests 100 myproject.wsgi",
     WsgiTarget(server="gunicorn", module="myproject.wsgi", attribute="application")),
    ("exec gunicorn -b :$PORT pkg.web:application",
     WsgiTarget(server="gunicorn", module="pkg.web", attribute="application")),
    ("/usr/local/bin/gunicorn main:app", WsgiTarget(server="gunicorn", module="main", attribute="app")),
    # factories, as gunicorn allows: a call of a name with literal arguments
    ("gunicorn 'main:create_app()'", WsgiTarget(server="gunicorn", module="main", attribute="create_app", args=())),
    ("""gunicorn -b :$PORT "main:create_app('prod', workers=2, debug=False)" """,
     WsgiTarget(server="gunicorn", module="main", attribute="create_app", args=("prod",),
                kwargs=(("workers", 2), ("debug", False)))),
    # what gunicorn sets up before loading: --pythonpath, --chdir, --env
    ("gunicorn --pythonpath src,lib --chdir app -e MODE=prod --env X=a=b web:app",
     WsgiTarget(server="gunicorn", module="web", attribute="app", paths=("src", "lib", "app"),
                env=(("MODE", "prod"), ("X", "a=b")))),
    ("python -m gunicorn -b :$PORT main:app", WsgiTarget(server="gunicorn", module="main", attribute="app")),
    ("python3.12 -m gunicorn main:app", WsgiTarget(server="gunicorn", module="main", attribute="app")),
    # uwsgi, by module or by file (App Engine's documentation shows the latter)
    ("uwsgi --http-socket :$PORT --wsgi-file main.py --callable app --master --processes 1 --threads 2",
     WsgiTarget(server="uwsgi", module="main", attribute="app", paths=(".",))),
    ("uwsgi --http :$PORT --wsgi-file src/site_app.py",
     WsgiTarget(server="uwsgi", module="site_app", attribute="application", paths=("src",))),
    ("uwsgi --module=pkg.wsgi:application --enable-threads --env A=1",
     WsgiTarget(server="uwsgi", module="pkg.wsgi", attribute="application", env=(("A", "1"),))),
    ("uwsgi -w main --callable app --chdir web", WsgiTarget(server="uwsgi", module="main", attribute="app",
                                                            paths=("web",))),
    # waitress, with waitress's own options; --call makes the object a factory
    ("waitress-serve --port=$PORT main:app", WsgiTarget(server="waitress", module="main", attribute="app")),
    ("waitress-serve --listen=*:8080 --threads=8 --no-ipv6 --call main:create_app",
     WsgiTarget(server="waitress", module="main", attribute="create_app", args=())),
    ("python -m waitress pkg.web.app", WsgiTarget(server="waitress", module="pkg.web.app", attribute=None)),
])
def test_an_entrypoint_naming_a_wsgi_app_is_read_as_that_app(command, expected):
    assert parse(command) == expected


@pytest.mark.parametrize(("command", "says"), [
    ("", "the command is empty"),
    ("flask run --port $PORT", "kiln cannot run 'flask'"),
    ("python main.py", "kiln cannot run 'python'"),
    ("uvicorn main:app --port $PORT", "kiln cannot run 'uvicorn'"),
    ("gunicorn -k uvicorn.workers.UvicornWorker main:app", "serves an ASGI app"),
    ("gunicorn main:app && echo started", "not a shell command"),
    ("gunicorn main:app | tee log", "not a shell command"),
    ("gunicorn --no-such-option main:app", "unrecognized arguments: --no-such-option"),
    ("gunicorn -c gunicorn.conf.py", "name exactly one app"),
    ("gunicorn main:app other:app", "name exactly one app"),
    ("gunicorn main:app.wsgi_app", "simple name or a call"),
    ("gunicorn 'main:create_app(CONFIG)'", "must be literals"),
    ("gunicorn main-app:app", "not a module name"),
    ("gunicorn --pythonpath /srv/code main:app", "a directory inside it"),
    ("gunicorn --chdir ../elsewhere main:app", "a directory inside it"),
    ("gunicorn -e NOVALUE main:app", "must be KEY=VALUE"),
    ("uwsgi --ini uwsgi.ini", "exactly one --module"),
    ("uwsgi --mount /=main:app", "one app per version"),
    ("uwsgi --wsgi-file main", "must be a Python file"),
    ("waitress-serve --bogus main:app", "waitress-serve: option --bogus not recognized"),
    ("waitress-serve", "name exactly one app"),
    ("gunicorn 'main:app", "cannot read the command"),
])
def test_an_entrypoint_kiln_cannot_run_is_refused_saying_why(command, says):
    with pytest.raises(EntrypointError) as refused:
        parse(command)
    assert says in str(refused.value)


def test_a_refusal_of_another_server_names_every_supported_form():
    with pytest.raises(EntrypointError) as refused:
        parse("hypercorn main:app")
    assert all(form in str(refused.value) for form in ("gunicorn", "python -m gunicorn", "uwsgi --module",
                                                       "--wsgi-file", "waitress-serve"))


@pytest.fixture
def app_module(tmp_path, monkeypatch):
    (tmp_path / "entry_app.py").write_text(textwrap.dedent('''
        def app(environ, start_response):
            return [b"plain"]

        def create_app(name, suffix="."):
            def made(environ, start_response):
                return [(name + suffix).encode()]
            return made

        class Holder:
            app = staticmethod(app)

        NOT_CALLABLE = 42
    '''))
    monkeypatch.syspath_prepend(str(tmp_path))
    yield
    sys.modules.pop("entry_app", None)


@pytest.mark.parametrize(("command", "answer"), [
    ("gunicorn entry_app:app", b"plain"),
    ("gunicorn 'entry_app:create_app(\"made\", suffix=\"!\")'", b"made!"),
    ("waitress-serve entry_app:Holder.app", b"plain"),
    ("waitress-serve entry_app.app", b"plain"),
    ("uwsgi --wsgi-file entry_app.py --callable app", b"plain"),
])
def test_load_returns_the_callable_the_entrypoint_names(app_module, command, answer):
    assert load(parse(command))({}, None) == [answer]


def test_load_refuses_an_object_that_is_not_callable(app_module):
    with pytest.raises(TypeError, match="entry_app:NOT_CALLABLE is int, not a WSGI callable"):
        load(parse("gunicorn entry_app:NOT_CALLABLE"))
