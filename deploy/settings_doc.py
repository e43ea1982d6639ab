"""The settings reference (docs/SETTINGS.md), written from the parts' own configuration classes and parsers.

Every part's settings are declared once: a config class (:mod:`kiln_platform.config`: flag, environment variable,
default, whether it is required, help) or, for the runtime host and the instance manager, an argparse parser. This
module renders them all, so the reference cannot drift from the code; ``tests/unit/test_settings_doc.py`` fails
when docs/SETTINGS.md is stale and when the README names a setting no part has.

Usage::

    .venv/bin/python -m deploy.settings_doc           # rewrite docs/SETTINGS.md
    .venv/bin/python -m deploy.settings_doc --check   # exit 1 if it is stale
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import pathlib
import re
import socket
import sys
import typing
from collections.abc import Callable, Iterator
from typing import Any

from kiln_platform import config

ROOT = pathlib.Path(__file__).resolve().parents[1]
DOC = ROOT / "docs" / "SETTINGS.md"

# (command, module of its config class, the class): every part that reads kiln_platform.config settings.
CONFIG_PARTS: tuple[tuple[str, str, str], ...] = (
    ("python -m router", "router.config", "RouterConfig"),
    ("python -m runtime", "runtime.config", "RuntimeConfig"),
    ("python -m datastore_svc", "datastore_svc.config", "DatastoreConfig"),
    ("python -m memcache_svc", "memcache_svc.config", "MemcacheConfig"),
    ("python -m urlfetch_svc", "urlfetch_svc.config", "UrlFetchConfig"),
    ("python -m mail_svc", "mail_svc.config", "MailConfig"),
    ("python -m images_svc", "images_svc.config", "ImagesConfig"),
    ("python -m cron_svc", "cron_svc.config", "CronConfig"),
    ("python -m identity_svc", "identity_svc.config", "IdentityConfig"),
    ("python -m taskqueue_svc", "taskqueue_svc.config", "TaskQueueConfig"),
    ("python -m blobstore_svc", "blobstore_svc.config", "BlobstoreConfig"),
    ("python -m logs_svc", "logs_svc.config", "LogsConfig"),
    ("python -m natscallout", "natscallout.config", "CalloutConfig"),
    ("python -m deploy.control", "deploy.control.config", "ControlConfig"),
    ("python -m console", "console.config", "ConsoleConfig"),
)


def config_class(module: str, name: str) -> type[Any]:
    found: type[Any] = getattr(importlib.import_module(module), name)
    return found


def _parsers() -> tuple[tuple[str, Callable[[], argparse.ArgumentParser]], ...]:
    """(command, its parser) of the parts and tools whose command line is argparse's own."""
    from deploy.cli import build_parser
    from deploy.control.__main__ import mint_parser
    from kiln_platform.natsauth import parser as natsauth_parser
    from runtime.host import parser as host_parser
    from runtime.manager import parser as manager_parser
    return (("python -m runtime.host", host_parser),
            ("python -m runtime.manager", lambda: manager_parser({})),
            ("python -m deploy.control mint-token", mint_parser),
            ("python -m kiln_platform.natsauth", natsauth_parser),
            ("kiln", build_parser))


def _cell(text: str) -> str:
    """One table cell: one line, Markdown's code spans for reStructuredText's."""
    text = re.sub(r":(?:class|func|mod|meth):`~?([^`]+)`", r"`\1`", text).replace("``", "`")
    return " ".join(text.split()).replace("|", "\\|")


def _default(f: dataclasses.Field[Any]) -> str:
    if "shown_default" in f.metadata:
        return f"`{f.metadata['shown_default']}`"
    if f.default is dataclasses.MISSING:
        return "generated"
    value = f.default
    if isinstance(value, config.Secret):
        return "secret, none"
    if isinstance(value, tuple):
        return f"`{','.join(str(v) for v in value)}`" if value else "none"
    if isinstance(value, pathlib.Path):
        home = str(pathlib.Path.home())
        shown = str(value)
        return f"`~{shown[len(home):]}`" if shown.startswith(home) else f"`{shown}`"
    if value is None or value == "":
        return "none"
    return f"`{value}`"


def render_config(command: str, cls: type[Any]) -> list[str]:
    prefix = f"KILN_{config.env_prefix(cls)}_"
    summary = (cls.__doc__ or "").strip().split("\n\n")[0]
    lines = [f"## `{command}`", "", _cell(summary), "",
             f"Also `--config FILE` (YAML, keys are the setting names; `{prefix}CONFIG`).", "",
             "| flag | environment | default | what |", "| --- | --- | --- | --- |"]
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        flag = "--" + f.name.replace("_", "-")
        if hints[f.name] is bool:
            flag += " / --no-" + f.name.replace("_", "-")
        default = "**required**" if config.is_required(cls, f) else _default(f)
        lines.append(f"| `{flag}` | `{prefix}{f.name.upper()}` | {default} | {_cell(f.metadata.get('help', ''))} |")
    return [*lines, ""]


def actions(parser: argparse.ArgumentParser) -> Iterator[tuple[str, argparse.Action]]:
    """Every option of ``parser`` and its subcommands, as (the subcommand path, the action)."""
    def walk(p: argparse.ArgumentParser, path: str) -> Iterator[tuple[str, argparse.Action]]:
        for action in p._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    yield from walk(sub, f"{path} {name}".strip())
            elif action.option_strings and not isinstance(action, argparse._HelpAction):
                yield path, action
    yield from walk(parser, "")


def render_parser(command: str, parser: argparse.ArgumentParser) -> list[str]:
    lines = [f"## `{command}`", "", _cell(parser.description or ""), "",
             "| option | default | what |", "| --- | --- | --- |"]
    for path, action in actions(parser):
        flags = ", ".join(f"`{o}`" for o in action.option_strings)
        where = f"`{path}` " if path else ""
        default = action.default
        shown = ("**required**" if action.required else
                 "none" if default in (None, "", [], False, argparse.SUPPRESS) else f"`{default}`")
        text = (action.help or "").replace("%(default)s", str(default))
        lines.append(f"| {where}{flags} | {shown} | {_cell(text)} |")
    if parser.epilog:
        lines += ["", _cell(parser.epilog)]
    return [*lines, ""]


def render() -> str:
    out = ["# Settings of every kiln part", "",
           "Written by `python -m deploy.settings_doc` from the parts' configuration classes and command lines: "
           "do not edit by hand (a test fails when it is stale). Each setting of a part started as "
           "`python -m PART` can be given as a flag, as an environment variable, or in a YAML file named by "
           "`--config`; flags win over the environment, the environment over the file. Put secrets in the "
           "environment, never on command lines (other users can read a process's arguments). A part started "
           "without a required setting exits at once, naming it.", ""]
    for command, module, name in CONFIG_PARTS:
        out += render_config(command, config_class(module, name))
    for command, make in _parsers():
        out += render_parser(command, make())
    text = "\n".join(out).rstrip("\n") + "\n"
    # What depends on the machine that renders it: the same document everywhere.
    return text.replace(str(pathlib.Path.home()), "~").replace(f"`{socket.gethostname()}`", "this machine's name")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m deploy.settings_doc", description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="exit 1 if docs/SETTINGS.md is stale")
    args = parser.parse_args(argv)
    text = render()
    if args.check:
        if not DOC.exists() or DOC.read_text() != text:
            print(f"{DOC.relative_to(ROOT)} is stale: run python -m deploy.settings_doc", file=sys.stderr)
            return 1
        return 0
    DOC.write_text(text)
    print(f"wrote {DOC.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
