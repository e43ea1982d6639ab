"""The README says what the code does: its ``kiln dev`` options are the parser's (no sockets)."""

from __future__ import annotations

import argparse
import pathlib
import re

import pytest

from deploy import cli

README = pathlib.Path(__file__).resolve().parents[2] / "README.md"
BLOCK = re.compile(r"<!-- kiln dev --help -->\n```text\n(.*?)```\n", re.DOTALL)


def _dev_help(monkeypatch: pytest.MonkeyPatch) -> str:
    monkeypatch.setenv("COLUMNS", "100")  # argparse wraps to the terminal's width
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    return str(sub.choices["dev"].format_help())


def test_the_readmes_kiln_dev_options_are_the_parsers(monkeypatch):
    found = BLOCK.search(README.read_text())
    assert found, "README.md: no <!-- kiln dev --help --> block"
    assert found.group(1) == _dev_help(monkeypatch), (
        "README.md's kiln dev options differ from the parser's; paste the output of "
        "`COLUMNS=100 .venv/bin/kiln dev --help` into its <!-- kiln dev --help --> block")


def test_every_kiln_dev_option_is_in_the_readme(monkeypatch):
    sub = next(a for a in cli.build_parser()._actions if isinstance(a, argparse._SubParsersAction))
    options = [o for a in sub.choices["dev"]._actions for o in a.option_strings if o.startswith("--")]
    text = README.read_text()
    assert [o for o in options if o not in text] == []
