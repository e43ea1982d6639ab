"""Every part started without a setting it needs exits at once, with one line naming the setting."""

from __future__ import annotations

import os
import re
import subprocess
import sys

import pytest

from deploy import settings_doc

MODULES = [command.split()[-1] for command, _, _ in settings_doc.CONFIG_PARTS] + ["runtime.host", "runtime.manager"]


def _bare_env() -> dict[str, str]:
    """The environment without any kiln setting (and no secret handed over)."""
    return {k: v for k, v in os.environ.items() if not k.startswith("KILN_")}


@pytest.mark.parametrize("module", MODULES)
def test_a_part_without_its_settings_exits_at_once_with_one_line_naming_one(module, tmp_path):
    extra = ["--"] if module == "runtime.manager" else []
    done = subprocess.run([sys.executable, "-m", module, *extra], env=_bare_env(), cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    lines = done.stderr.strip().splitlines()
    assert done.returncode == 2
    assert len(lines) == 1, done.stderr
    assert lines[0].startswith(f"{module}: ")
    # It names what is missing: a setting (its environment variable or flag) or an option.
    assert re.search(r"required", lines[0]) and re.search(r"KILN_[A-Z_]+|--[a-z-]+", lines[0])
