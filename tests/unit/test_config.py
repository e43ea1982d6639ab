"""kiln_platform.config: precedence, conversion and errors."""

import dataclasses
import pathlib

import pytest

from datastore_svc.config import DatastoreConfig
from kiln_platform.config import GrpcServiceConfig, ListenAddress, Secret, load
from kiln.errors import ConfigError

ENV = {"KILN_DATASTORE_SERVICE_SECRET": "s"}


def test_defaults_apply_when_nothing_is_given():
    cfg = load(DatastoreConfig, prefix="DATASTORE", env=ENV)
    assert cfg.listen == ListenAddress("127.0.0.1", 50051)
    assert cfg.storage == "embedded"


def test_env_overrides_yaml_and_flags_override_env(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("listen: 127.0.0.1:1111\nmax_message_bytes: 2048\n")
    env = {**ENV, "KILN_DATASTORE_LISTEN": "127.0.0.1:2222"}
    cfg = load(DatastoreConfig, prefix="DATASTORE", env=env,
               argv=["--config", str(yaml_file), "--storage", "cassandra"])
    assert str(cfg.listen) == "127.0.0.1:2222"
    assert cfg.max_message_bytes == 2048
    assert cfg.storage == "cassandra"


def test_unknown_yaml_key_is_an_error_naming_it(tmp_path):
    yaml_file = tmp_path / "c.yaml"
    yaml_file.write_text("lisen: x\n")
    with pytest.raises(ConfigError, match="unknown setting.*lisen"):
        load(DatastoreConfig, prefix="DATASTORE", env=ENV, argv=["--config", str(yaml_file)])


def test_bad_integer_names_the_key():
    with pytest.raises(ConfigError, match="max_message_bytes: expected an integer"):
        load(DatastoreConfig, prefix="DATASTORE", env={**ENV, "KILN_DATASTORE_MAX_MESSAGE_BYTES": "lots"})


def test_invalid_choice_is_rejected():
    with pytest.raises(ConfigError, match="storage: must be one of"):
        load(DatastoreConfig, prefix="DATASTORE", env={**ENV, "KILN_DATASTORE_STORAGE": "mysql"})


def test_missing_service_secret_is_rejected():
    with pytest.raises(ConfigError, match="service_secret: required"):
        load(DatastoreConfig, prefix="DATASTORE", env={})


def test_secret_never_shows_in_repr():
    cfg = load(GrpcServiceConfig, prefix="X", env={"KILN_X_SERVICE_SECRET": "hunter2"})
    assert "hunter2" not in repr(cfg)
    assert cfg.service_secret == Secret("hunter2")
    assert cfg.service_secret.get() == "hunter2"


def test_boolean_and_path_fields_convert():
    @dataclasses.dataclass(frozen=True, kw_only=True)
    class C:
        on: bool = False
        where: pathlib.Path = pathlib.Path(".")
    cfg = load(C, prefix="C", env={"KILN_C_ON": "yes", "KILN_C_WHERE": "/tmp/x"})
    assert cfg.on is True
    assert cfg.where == pathlib.Path("/tmp/x")


def test_bad_listen_address_is_rejected():
    with pytest.raises(ConfigError, match="listen: expected host:port"):
        load(DatastoreConfig, prefix="DATASTORE", env={**ENV, "KILN_DATASTORE_LISTEN": "nowhere"})
