"""``runtime.host --manager-metrics HOST:FIRST-LAST``: the range is parsed once, and a bad one is a one-line
error naming the option."""

from __future__ import annotations

import pytest

from kiln.errors import ConfigError
from runtime.host import PortRange, parser


def test_a_manager_metrics_range_is_parsed_into_host_and_ports():
    assert PortRange.parse("10.0.0.5:9300-9399") == PortRange("10.0.0.5", 9300, 9399)
    assert PortRange.parse("[::1]:9300-9300") == PortRange("::1", 9300, 9300)


@pytest.mark.parametrize("text", ["9300-9399", "host:9300", "host:9399-9300", "host:0-10", "host:9300-70000",
                                  "host:a-b"])
def test_a_bad_manager_metrics_range_names_the_option_and_the_form(text):
    with pytest.raises(ConfigError, match=r"--manager-metrics: expected HOST:FIRST-LAST"):
        parser().parse_args(["--control-plane", "c:1", "--run-dir", ".", "--manager-metrics", text])


def test_managers_serve_no_metrics_unless_asked():
    assert parser().parse_args(["--control-plane", "c:1", "--run-dir", "."]).manager_metrics is None
