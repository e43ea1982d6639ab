"""Helpers of the OS sandbox layer that need no root: staging rules, app user numbering, memory by instance class."""

from __future__ import annotations

import os
import pathlib

import pytest

from kiln_platform import appyaml
from runtime import isolation


def config(extra: str = "") -> appyaml.AppConfig:
    return appyaml.parse("runtime: python27\napi_version: 1\nthreadsafe: true\n" + extra +
                         "handlers:\n- url: /.*\n  script: main.app\n", filename="app.yaml")


def test_memory_follows_the_instance_class():
    assert isolation.instance_memory_mb(config()) == 384
    assert isolation.instance_memory_mb(config("instance_class: F4\n")) == 1536
    assert isolation.instance_memory_mb(config("basic_scaling:\n  max_instances: 1\n")) == 768


def test_app_users_are_numbered_once_and_never_shared(tmp_path):
    first = isolation.app_user(tmp_path, "alpha", first_uid=300000)
    second = isolation.app_user(tmp_path, "beta", first_uid=300000)
    assert (first, second) == (300000, 300001)
    assert isolation.app_user(tmp_path, "alpha", first_uid=300000) == first
    assert oct((tmp_path / "app-users.json").stat().st_mode & 0o777) == oct(0o600)


@pytest.mark.skipif(os.geteuid() != 0, reason="staging sets owners, which needs root")
def test_staging_copies_the_app_less_skip_files_and_links_that_leave_it(tmp_path):
    src = tmp_path / "app"
    (src / "pkg").mkdir(parents=True)
    (src / "main.py").write_text("x")
    (src / "pkg" / "mod.py").write_text("y")
    (src / "main.pyc").write_text("skipped by default")
    (src / ".hidden").write_text("skipped by default")
    (src / "data").mkdir()
    (src / "data" / "db").write_text("excluded")
    (src / "escape").symlink_to("/etc/hostname")
    (src / "inside").symlink_to(src / "main.py")
    dest = tmp_path / "staged"
    isolation.stage(src, dest, config(), gid=12345, exclude=[src / "data"])
    found = sorted(p.relative_to(dest).as_posix() for p in dest.rglob("*"))
    assert found == ["inside", "main.py", "pkg", "pkg/mod.py"]
    assert (dest / "inside").read_text() == "x" and not (dest / "inside").is_symlink()
    st = (dest / "main.py").stat()
    assert (st.st_uid, st.st_gid, st.st_mode & 0o777) == (0, 12345, 0o640)
    assert (dest / "pkg").stat().st_mode & 0o777 == 0o750
