"""``kiln dev`` and dispatch.yaml: it runs one service, so it checks the file and says its rules are not applied."""

from __future__ import annotations

import logging
import pathlib

import pytest

from deploy.dev import DevOptions, DevServer
from kiln_platform.appyaml import AppYamlError

APP_YAML = "runtime: python311\nhandlers:\n- url: /.*\n  script: auto\n"


def app_dir(root: pathlib.Path, dispatch: str) -> pathlib.Path:
    root.mkdir()
    (root / "app.yaml").write_text(APP_YAML)
    (root / "dispatch.yaml").write_text(dispatch)
    return root


def test_a_malformed_dispatch_yaml_stops_kiln_dev_naming_the_line(tmp_path):
    root = app_dir(tmp_path / "app", "dispatch:\n- url: '*/a/*'\n  servce: api\n")
    with pytest.raises(AppYamlError, match=r"dispatch.yaml:3: dispatch\[0\].servce: unknown field"):
        DevServer(DevOptions(app_dir=root, port=0, data_dir=tmp_path / "data"))


def test_kiln_dev_says_its_one_service_serves_every_request(tmp_path, caplog):
    root = app_dir(tmp_path / "app", "dispatch:\n- url: '*/api/*'\n  service: api\n")
    with caplog.at_level(logging.WARNING, logger="deploy.dev"):
        server = DevServer(DevOptions(app_dir=root, port=0, data_dir=tmp_path / "data"))
    assert [r.service for r in server.dispatch_rules] == ["api"]
    assert "dispatch.yaml: 1 rule(s) not applied: kiln dev runs one service (default)" in caplog.text
