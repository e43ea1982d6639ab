"""The CLI's output conventions: colours only on a terminal (never with NO_COLOR), JSON when asked, one-line
errors on stderr."""

from __future__ import annotations

import argparse
import io
import json

import pytest

from deploy import cli
from deploy.cliutil import EXIT_USAGE, Output, fail


class Terminal(io.StringIO):
    def isatty(self) -> bool:
        return True


def test_text_is_plain_when_not_on_a_terminal(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    out = Output(as_json=False, stream=io.StringIO())
    assert out.bold("x") == "x" and out.green("ok") == "ok"


def test_text_is_coloured_on_a_terminal(monkeypatch):
    monkeypatch.delenv("NO_COLOR", raising=False)
    monkeypatch.setenv("TERM", "xterm")
    out = Output(as_json=False, stream=Terminal())
    assert out.green("ok") == "\033[32mok\033[0m"


def test_no_color_turns_colours_off_even_on_a_terminal(monkeypatch):
    monkeypatch.setenv("NO_COLOR", "1")
    assert Output(as_json=False, stream=Terminal()).green("ok") == "ok"


def test_json_output_is_parseable(monkeypatch):
    stream = io.StringIO()
    Output(as_json=True, stream=stream).json({"b": 1, "a": [1, 2]})
    assert json.loads(stream.getvalue()) == {"a": [1, 2], "b": 1}


def test_errors_are_one_line_naming_the_command(capsys):
    assert fail("deploy", "first line\nsecond   line", EXIT_USAGE) == EXIT_USAGE
    assert capsys.readouterr().err == "kiln deploy: first line second line\n"


def _command_paths(parser: argparse.ArgumentParser, prefix: tuple[str, ...] = ()) -> list[tuple[str, ...]]:
    """Every command and subcommand of the parser, as argv prefixes."""
    paths = [prefix]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                paths += _command_paths(sub, (*prefix, name))
    return paths


COMMANDS = _command_paths(cli.build_parser())


def test_every_command_is_reached_by_the_help_walk():
    names = {path[0] for path in COMMANDS if path}
    assert {"dev", "deploy", "versions", "logs", "indexes", "cron", "bulkload"} <= names


@pytest.mark.parametrize("path", COMMANDS, ids=lambda p: " ".join(p) or "kiln")
def test_help_works_for_every_command_and_exits_zero(path, capsys):
    with pytest.raises(SystemExit) as done:
        cli.main([*path, "--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.startswith(f"usage: kiln {' '.join(path)}".rstrip())
