"""The settings reference (docs/SETTINGS.md) is written from the parts' configuration, and the README names only
settings that exist: neither can drift from the code. Every required setting is refused by name when missing, and
every secret's help names its environment variable."""

from __future__ import annotations

import dataclasses
import pathlib
import re

import pytest

from deploy import settings_doc
from kiln.errors import ConfigError
from kiln_platform import config

ROOT = pathlib.Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()
PARTS = [(command, settings_doc.config_class(module, name)) for command, module, name in settings_doc.CONFIG_PARTS]


def _section(title: str) -> str:
    start = README.index(f"## {title}")
    end = README.find("\n## ", start + 1)
    return README[start:end if end != -1 else None]


def _fields(cls) -> list[dataclasses.Field]:
    return [f for f in dataclasses.fields(cls) if f.init]


def _all_options() -> set[str]:
    options = {"--config", "--help"}
    for _, cls in PARTS:
        for f in _fields(cls):
            flag = "--" + f.name.replace("_", "-")
            options |= {flag, "--no-" + flag[2:]}
    for _, make in settings_doc._parsers():
        options |= {o for _, action in settings_doc.actions(make()) for o in action.option_strings}
    return options


def test_the_settings_reference_is_what_the_code_declares():
    assert settings_doc.DOC.read_text() == settings_doc.render(), "run: python -m deploy.settings_doc"


def test_every_part_setting_the_readme_names_is_a_setting_of_that_part():
    prefixes = {f"KILN_{config.env_prefix(cls)}_": cls for _, cls in PARTS}
    sources = "\n".join(p.read_text() for pattern in ("**/*.py", "**/*.sh") for p in ROOT.glob(pattern)
                        if not {".venv", "tests", "bench"} & set(p.relative_to(ROOT).parts))
    unknown = []
    for name in sorted(set(re.findall(r"\bKILN_[A-Z0-9_]*[A-Z0-9]\b", README))):
        prefix = next((p for p in prefixes if name.startswith(p)), None)
        if prefix is not None and name[len(prefix):].lower() in {"config", *(f.name for f in _fields(prefixes[prefix]))}:
            continue  # a part's setting
        # Otherwise something reads it by name (the CLI's KILN_CONTROL_PLANE, an app's KILN_MEMCACHE_ADDR, ...).
        if not any(quoted in sources for quoted in (f'"{name}"', f"'{name}'", f"{name}=")):
            unknown.append(name)
    assert unknown == []


# Options of other programs the section names.
NOT_OURS = {"--cluster"}  # nats-server's


def test_every_option_the_readme_deploy_section_names_exists():
    named = set(re.findall(r"(?<![\w-])--[a-z][a-z0-9-]*", _section("Deploying on several machines")))
    assert named - _all_options() - NOT_OURS == set()


@pytest.mark.parametrize("command,cls", PARTS, ids=[c for c, _ in PARTS])
def test_each_secret_help_names_its_environment_variable(command, cls):
    text = " ".join(config.parser(cls, prefix=config.env_prefix(cls)).format_help().split())
    for f in _fields(cls):
        if isinstance(f.default, config.Secret):
            assert f"KILN_{config.env_prefix(cls)}_{f.name.upper()}" in text


REQUIRED = [(command, cls, f.name) for command, cls in PARTS for f in _fields(cls) if config.is_required(cls, f)]


@pytest.mark.parametrize("command,cls,missing", REQUIRED, ids=[f"{c} {m}" for c, _, m in REQUIRED])
def test_a_missing_required_setting_is_refused_by_name_and_environment_variable(command, cls, missing):
    prefix = config.env_prefix(cls)
    others = {f"KILN_{prefix}_{name.upper()}": "set" for c, k, name in REQUIRED if k is cls and name != missing}
    with pytest.raises(ConfigError) as err:
        config.load(cls, prefix=prefix, env=others)
    flag = "--" + missing.replace("_", "-")
    assert str(err.value) == f"{missing}: required (set KILN_{prefix}_{missing.upper()} or {flag})"


@pytest.mark.parametrize("blank", ["", "   "])
def test_a_blank_required_setting_counts_as_missing(blank):
    from router.config import RouterConfig
    env = {"KILN_ROUTER_NATS_URL": blank, "KILN_ROUTER_SESSION_SECRET": "s"}
    with pytest.raises(ConfigError, match="^nats_url: required"):
        config.load(RouterConfig, prefix="ROUTER", env=env)


def test_every_part_that_uses_nats_requires_its_url():
    users = {command for command, cls in PARTS if "nats_url" in {f.name for f in _fields(cls)}}
    assert users == {command for command, cls, name in REQUIRED if name == "nats_url"}
    assert {"python -m router", "python -m mail_svc", "python -m deploy.control", "python -m logs_svc"} <= users
