"""kiln_platform.appyaml: parsing and validating app.yaml."""

import pathlib
import textwrap

import pytest

from kiln_platform.appyaml import DEFAULT_SKIP_FILES, AppYamlError, load, parse, parse_duration

BASE = """\
runtime: python27
api_version: 1
threadsafe: true
handlers:
- url: /.*
  script: main.app
"""


def _parse(text: str, **kw):
    return parse(textwrap.dedent(text), **kw)


def test_full_file_parses_every_documented_field():
    cfg = _parse("""\
        application: myapp
        version: v2
        runtime: python27
        api_version: 1
        threadsafe: true
        instance_class: F2
        default_expiration: "4d 5h"
        automatic_scaling:
          min_idle_instances: automatic
          max_idle_instances: 3
          min_pending_latency: 30ms
          max_pending_latency: 1.5s
          max_concurrent_requests: 20
          target_cpu_utilization: 0.6
        env_variables:
          MODE: prod
          DEBUG: false
        libraries:
        - name: jinja2
          version: latest
        inbound_services:
        - mail
        - warmup
        builtins:
        - deferred: on
        - appstats: off
        skip_files:
        - ^(.*/)?\\.git/.*$
        error_handlers:
        - file: default_error.html
        - file: over_quota.html
          error_code: over_quota
        handlers:
        - url: /static
          static_dir: static
          expiration: 1d
          http_headers:
            X-Foo: bar
        - url: /(.*\\.(png|gif))$
          static_files: img/\\1
          upload: img/.*\\.(png|gif)$
          mime_type: image/png
        - url: /admin/.*
          script: admin.app
          login: admin
          secure: always
          auth_fail_action: unauthorized
        - url: /.*
          script: main.app
        """)
    assert cfg.application == "myapp" and cfg.version == "v2"
    assert cfg.default_expiration_seconds == 4 * 86400 + 5 * 3600
    assert cfg.automatic_scaling.max_concurrent_requests == 20
    assert cfg.automatic_scaling.min_pending_latency_seconds == 0.03
    assert cfg.automatic_scaling.min_idle_instances is None
    assert cfg.env_variables == {"MODE": "prod", "DEBUG": "false"}
    assert cfg.libraries[0].name == "jinja2"
    assert cfg.inbound_services == ("mail", "warmup")
    assert cfg.builtins == {"deferred": True, "appstats": False}
    assert cfg.error_handlers[1].error_code == "over_quota"
    builtin, *handlers = cfg.handlers  # builtins: deferred: on maps App Engine's deferred URL first
    assert (builtin.url, builtin.script, builtin.login) == ("/_ah/queue/deferred", "kiln.api.deferred.application",
                                                            "admin")
    assert handlers[0].static_dir == "static" and handlers[0].expiration_seconds == 86400
    assert handlers[1].upload == "img/.*\\.(png|gif)$"
    assert handlers[2].login == "admin" and handlers[2].auth_fail_action == "unauthorized"
    assert not handlers[3].is_cgi and not handlers[3].is_static


def test_bad_login_value_names_file_line_and_field():
    with pytest.raises(AppYamlError) as err:
        parse(BASE + "  login: root\n")
    assert str(err.value) == "app.yaml:7: handlers[0].login: must be one of optional, required, admin, got 'root'"
    assert (err.value.line, err.value.field) == (7, "handlers[0].login")


def test_unknown_top_level_field_is_an_error_with_its_line():
    with pytest.raises(AppYamlError, match=r"app.yaml:7: colour: unknown field"):
        parse(BASE + "colour: blue\n")


def test_unknown_handler_field_names_line_and_field():
    with pytest.raises(AppYamlError, match=r"app.yaml:7: handlers\[0\].scirpt: unknown field"):
        parse(BASE + "  scirpt: x.app\n")


def test_yaml_syntax_error_reports_the_line():
    with pytest.raises(AppYamlError, match=r"app.yaml:2: invalid YAML: mapping values are not allowed"):
        parse("runtime: python27\nversion: a: b\n")


def test_empty_file_is_a_clear_error():
    with pytest.raises(AppYamlError, match="empty"):
        parse("")


def test_missing_runtime_is_reported():
    with pytest.raises(AppYamlError, match="runtime: required field is missing"):
        parse("handlers: []\n")


def test_unsupported_runtime_is_rejected():
    with pytest.raises(AppYamlError, match=r"app.yaml:1: runtime: kiln runs python27 and python311.*'go111'"):
        parse(BASE.replace("python27", "go111"))


def test_python27_requires_threadsafe():
    with pytest.raises(AppYamlError, match="threadsafe: required"):
        parse(BASE.replace("threadsafe: true\n", ""))


def test_python3_without_handlers_serves_the_entrypoints_app():
    cfg = parse("runtime: python311\n")
    assert [(h.url, h.script) for h in cfg.handlers] == [("/.*", "auto")]


def test_handler_needs_exactly_one_of_script_static_dir_static_files():
    with pytest.raises(AppYamlError, match="exactly one of script, static_dir, static_files"):
        parse(BASE + "  static_dir: s\n")


def test_static_files_requires_upload():
    text = BASE.replace("  script: main.app\n", "  static_files: a/\\1\n")
    with pytest.raises(AppYamlError, match="static_files needs upload"):
        parse(text)


def test_invalid_url_regex_is_reported():
    with pytest.raises(AppYamlError, match=r"handlers\[0\].url: invalid regular expression"):
        parse(BASE.replace("url: /.*", "url: /(unclosed"))


def test_static_dir_url_must_not_be_a_regex():
    with pytest.raises(AppYamlError, match="plain prefix"):
        parse(BASE.replace("  script: main.app\n", "  static_dir: s\n").replace("/.*", "/s(.*)"))


def test_cgi_script_with_threadsafe_is_rejected():
    with pytest.raises(AppYamlError, match="not allowed with threadsafe: true"):
        parse(BASE.replace("main.app", "main.py"))


def test_cgi_script_without_threadsafe_is_recognised():
    cfg = parse(BASE.replace("main.app", "main.py").replace("threadsafe: true", "threadsafe: false"))
    assert cfg.handlers[0].is_cgi


def test_more_than_100_handlers_is_rejected():
    text = "runtime: python27\napi_version: 1\nthreadsafe: true\nhandlers:\n" + "- url: /x\n  script: m.app\n" * 101
    with pytest.raises(AppYamlError, match="at most 100 handlers"):
        parse(text)


def test_bad_expiration_is_reported():
    with pytest.raises(AppYamlError, match="default_expiration: expected a duration"):
        parse(BASE + "default_expiration: soon\n")


def test_max_concurrent_requests_out_of_range_is_rejected():
    with pytest.raises(AppYamlError, match="max_concurrent_requests: must be an integer from 1 to 80"):
        parse(BASE + "automatic_scaling:\n  max_concurrent_requests: 500\n")


def test_two_scaling_types_are_rejected():
    with pytest.raises(AppYamlError, match="only one scaling type"):
        parse(BASE + "basic_scaling:\n  max_instances: 2\nmanual_scaling:\n  instances: 1\n")


def test_instance_class_must_fit_the_scaling_type():
    with pytest.raises(AppYamlError, match="instance_class: must be one of B1"):
        parse(BASE + "instance_class: F1\nmanual_scaling:\n  instances: 1\n")


def test_unknown_inbound_service_is_rejected():
    with pytest.raises(AppYamlError, match=r"inbound_services\[0\]: must be one of"):
        parse(BASE + "inbound_services:\n- carrier_pigeon\n")


def test_unknown_error_code_is_rejected():
    with pytest.raises(AppYamlError, match="error_code: must be one of"):
        parse(BASE + "error_handlers:\n- file: e.html\n  error_code: teapot\n")


def test_default_skip_files_apply_when_absent():
    cfg = parse(BASE)
    assert cfg.skip_files == DEFAULT_SKIP_FILES
    assert cfg.skips("main.pyc") and cfg.skips(".git/config") and not cfg.skips("main.py")


def test_duplicate_key_is_an_error():
    with pytest.raises(AppYamlError, match="app.yaml:2: runtime: duplicate key"):
        parse("runtime: python27\nruntime: python27\n")


def test_includes_append_handlers_and_the_including_file_wins(tmp_path: pathlib.Path):
    (tmp_path / "extra.yaml").write_text("version: from-include\nhandlers:\n- url: /extra\n  script: extra.app\n"
                                         "env_variables:\n  A: included\n  B: included\n")
    (tmp_path / "app.yaml").write_text(BASE + "version: main\nincludes:\n- extra.yaml\nenv_variables:\n  A: main\n")
    cfg = load(tmp_path / "app.yaml")
    assert [h.url for h in cfg.handlers] == ["/.*", "/extra"]
    assert cfg.version == "main"
    assert cfg.env_variables == {"A": "main", "B": "included"}


def test_include_cycle_is_detected(tmp_path: pathlib.Path):
    (tmp_path / "a.yaml").write_text("includes:\n- b.yaml\n")
    (tmp_path / "b.yaml").write_text("includes:\n- a.yaml\n")
    (tmp_path / "app.yaml").write_text(BASE + "includes:\n- a.yaml\n")
    with pytest.raises(AppYamlError, match="include cycle"):
        load(tmp_path / "app.yaml")


def test_errors_in_an_included_file_name_that_file(tmp_path: pathlib.Path):
    (tmp_path / "bad.yaml").write_text("nonsense: 1\n")
    (tmp_path / "app.yaml").write_text(BASE + "includes:\n- bad.yaml\n")
    with pytest.raises(AppYamlError, match=r"bad.yaml:1: nonsense: unknown field"):
        load(tmp_path / "app.yaml")


def test_durations_parse_app_engine_format():
    assert parse_duration("1d 2h 3m 4s") == 86400 + 7200 + 180 + 4
    with pytest.raises(ValueError):
        parse_duration("10 minutes")
