"""Helpers of the OS sandbox layer that need no root: staging rules, app user numbering, memory by instance class."""

from __future__ import annotations

import os
import pathlib
import sys

import pytest

from kiln_platform import appyaml
from kiln_platform.supervisor import Confinement
import runtime
from runtime import cgroups, isolation


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


def proc_files(tmp_path: pathlib.Path, mountinfo: list[str], cgroup: list[str]) -> pathlib.Path:
    proc = tmp_path / "proc"
    proc.mkdir()
    (proc / "mountinfo").write_text("".join(line + "\n" for line in mountinfo))
    (proc / "cgroup").write_text("".join(line + "\n" for line in cgroup))
    return proc


def test_the_instance_cgroups_nest_under_the_managers_own_v1_memory_cgroup(tmp_path):
    own = tmp_path / "memory" / "jobs" / "a"
    own.mkdir(parents=True)
    proc = proc_files(tmp_path, [f"35 31 0:32 / {tmp_path / 'memory'} rw - cgroup cgroup rw,memory",
                                 f"41 31 0:38 / {tmp_path / 'unified'} rw - cgroup2 cgroup2 rw"],
                      ["4:memory:/jobs/a", "0::/"])
    parent, why = cgroups.find("kiln-manager-x-1", proc)
    assert why == "" and parent == cgroups.Parent(own / "kiln-manager-x-1", v2=False)


def test_cgroup_v2_needs_the_memory_controller_for_the_managers_cgroup(tmp_path):
    own = tmp_path / "unified" / "svc"
    own.mkdir(parents=True)
    (own / "cgroup.controllers").write_text("cpu io\n")
    proc = proc_files(tmp_path, [f"41 31 0:38 / {tmp_path / 'unified'} rw - cgroup2 cgroup2 rw"], ["0::/svc"])
    parent, why = cgroups.find("kiln-manager-x-1", proc)
    assert parent is None and "memory controller is not available" in why
    (own / "cgroup.controllers").write_text("cpu io memory\n")
    (own / "cgroup.subtree_control").write_text("memory\n")
    parent, why = cgroups.find("kiln-manager-x-1", proc)
    assert parent is not None and parent.v2 and parent.path == own / "kiln-manager-x-1"


def test_no_memory_controller_at_all_is_said(tmp_path):
    proc = proc_files(tmp_path, ["27 1 254:0 / / rw - ext4 /dev/vda rw"], [])
    assert cgroups.find("kiln-manager-x-1", proc) == (None, "no memory cgroup controller is mounted")


def test_the_wrapper_is_told_each_confinement_setting():
    args = Confinement(uid=7, gid=7, cgroups=(pathlib.Path("/cg/i"),), private_tmp_mb=384,
                       keep=(pathlib.Path("/tmp/app"),), pid_namespace=True).wrapper_args()
    assert args == ["--uid", "7", "--cgroup", "/cg/i", "--private-tmp", "384", "--keep", "/tmp/app",
                    "--pid-namespace", "--gid", "7", "--no-new-privs"]


def test_kilns_own_installation_stays_visible_to_instances_under_a_private_tmp():
    import grpc

    import kiln_platform

    kept = [str(p) for p in isolation.platform_paths()]
    for needed in (sys.executable, kiln_platform.__file__, runtime.__file__, grpc.__file__):
        assert any(needed == k or needed.startswith(k + "/") for k in kept), (needed, kept)
