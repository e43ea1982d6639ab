"""``kiln dev --datastore-consistency``: dev_appserver's policy names or a probability (no sockets)."""

from __future__ import annotations

import argparse

import pytest

from deploy import cli


@pytest.mark.parametrize(("text", "probability"), [("consistent", 1.0), ("random", 0.5), ("0", 0.0), ("0.25", 0.25),
                                                   ("1", 1.0)])
def test_consistency_is_a_policy_name_or_a_probability(text, probability):
    assert cli.datastore_consistency(text) == probability


@pytest.mark.parametrize("text", ["time", "1.5", "-0.1", "nan", ""])
def test_anything_else_is_refused_naming_the_choices(text):
    with pytest.raises(argparse.ArgumentTypeError, match="consistent, random or a probability"):
        cli.datastore_consistency(text)


def test_kiln_dev_is_fully_consistent_by_default():
    assert cli.build_parser().parse_args(["dev", "app"]).datastore_consistency == 1.0


def test_the_datastore_is_fully_consistent_by_default_and_refuses_eventual_consistency_on_cassandra():
    from datastore_svc.config import DatastoreConfig
    from kiln.errors import ConfigError
    from kiln_platform.config import load

    env = {"KILN_DATASTORE_SERVICE_SECRET": "s"}
    assert load(DatastoreConfig, prefix="DATASTORE", env=env).consistency == 1.0
    assert load(DatastoreConfig, prefix="DATASTORE", env=env, argv=["--consistency", "0"]).consistency == 0.0
    with pytest.raises((ConfigError, ValueError), match="embedded engine"):
        load(DatastoreConfig, prefix="DATASTORE", env=env, argv=["--consistency", "0.5", "--storage", "cassandra"])
    with pytest.raises((ConfigError, ValueError), match="between 0 and 1"):
        load(DatastoreConfig, prefix="DATASTORE", env=env, argv=["--consistency", "2"])
