"""kiln_platform.config's typed settings: host:port (IPv6 too), lists of them, and the shared storage block."""

from __future__ import annotations

import dataclasses

import pytest

from datastore_svc.config import DatastoreConfig
from deploy.control.config import ControlConfig
from kiln.errors import ConfigError
from kiln_platform import cassandra
from kiln_platform.config import CassandraHost, HostPort, ListenAddress, StorageConfig, load
from logs_svc.config import LogsConfig
from mail_svc.config import MailConfig
from router.config import RouterConfig

SECRET = {"KILN_DATASTORE_SERVICE_SECRET": "s"}


@dataclasses.dataclass(frozen=True, kw_only=True)
class Addresses:
    target: HostPort | None = None
    targets: tuple[HostPort, ...] = ()
    listen: ListenAddress = ListenAddress("127.0.0.1", 0)


def addresses(**env: str) -> Addresses:
    return load(Addresses, prefix="T", env={f"KILN_T_{k.upper()}": v for k, v in env.items()})


@pytest.mark.parametrize(("text", "host", "port"), [
    ("127.0.0.1:80", "127.0.0.1", 80),
    ("db.example.com:9042", "db.example.com", 9042),
    ("  cassandra-0:9042 ", "cassandra-0", 9042),
    ("[::1]:4222", "::1", 4222),
    ("[2001:db8::7]:65535", "2001:db8::7", 65535),
])
def test_host_port_forms_parse_into_host_and_port(text, host, port):
    assert addresses(target=text).target == HostPort(host, port)


@pytest.mark.parametrize(("text", "why"), [
    ("", "empty"),
    ("db", "no port"),
    ("db:", "port must be a number"),
    (":9042", "no host"),
    ("db:http", "port must be a number"),
    ("db:0", "port must be a number from 1 to 65535"),
    ("db:65536", "port must be a number"),
    ("db:-1", "port must be a number"),
    ("db:９０４２", "port must be a number"),  # full-width digits are not a port
    ("db:１", "port must be a number"),
    ("::1:4222", "IPv6 address is written in brackets"),
    ("2001:db8::7", "IPv6 address is written in brackets"),
    ("[::1", "no ']'"),
    ("[::1]4222", "':port' must follow"),
    ("[db.example.com]:80", "in brackets is not an IPv6 address"),
    ("[127.0.0.1]:80", "in brackets is not an IPv6 address"),
    ("db server:80", "is not a host name or IP address"),
    ("user@db:80", "is not a host name or IP address"),
    ("db/x:80", "is not a host name or IP address"),
    ("１２７.０.０.１:80", "is not a host name or IP address"),  # full-width digits normalise to 127.0.0.1
    ("127。0。0。1:80", "is not a host name or IP address"),  # ideographic full stops
])
def test_a_bad_host_port_is_refused_naming_the_setting_and_the_fault(text, why):
    with pytest.raises(ConfigError) as caught:
        addresses(target=text) if text else HostPort.parse(text, "target")
    message = str(caught.value)
    assert message.startswith("target: expected host:port, got ")
    assert why in message


def test_an_empty_optional_address_means_none():
    assert addresses(target="").target is None


def test_a_listen_address_may_ask_for_port_zero_but_a_target_may_not():
    assert addresses(listen="[::]:0").listen == ListenAddress("::", 0)
    with pytest.raises(ConfigError, match="target: .*from 1 to 65535"):
        addresses(target="127.0.0.1:0")


def test_addresses_print_as_they_are_written_with_brackets_for_ipv6():
    assert str(HostPort("::1", 80)) == "[::1]:80"
    assert str(HostPort("db", 80)) == "db:80"
    assert str(HostPort.parse("[2001:db8::7]:9042", "x")) == "[2001:db8::7]:9042"


def test_a_list_of_addresses_parses_each_item():
    assert addresses(targets="a:1, [::1]:2,b:3,").targets == (HostPort("a", 1), HostPort("::1", 2), HostPort("b", 3))


@pytest.mark.parametrize(("text", "item"), [("a:1,b", "b"), ("a:1,,b:x", "b:x"), ("a:1;b:2", "a:1;b:2"),
                                            ("a:1, [::1]", "[::1]")])
def test_a_bad_item_in_a_list_is_refused_naming_the_setting_and_the_item(text, item):
    with pytest.raises(ConfigError, match=r"^targets: expected host:port, got ") as caught:
        addresses(targets=text)
    assert f"got {item!r}" in str(caught.value)


def test_yaml_lists_of_addresses_parse_too(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("targets: ['a:1', '[::1]:2']\n")
    assert load(Addresses, prefix="T", argv=["--config", str(path)]).targets == (HostPort("a", 1), HostPort("::1", 2))


def test_a_cassandra_host_without_a_port_uses_the_native_protocol_port():
    assert CassandraHost.parse_list("db1,db2:9142,[::1]", "cassandra_hosts") == (
        CassandraHost("db1", 9042), CassandraHost("db2", 9142), CassandraHost("::1", 9042))


@pytest.mark.parametrize(("cls", "prefix", "env"), [
    (DatastoreConfig, "DATASTORE", {}),
    (LogsConfig, "LOGS", {"KILN_LOGS_NATS_URL": "nats://n:4222"}),
    (ControlConfig, "CONTROL", {"KILN_CONTROL_ADMIN_SECRET": "a", "KILN_CONTROL_NATS_URL": "nats://n:4222"}),
])
def test_the_three_stores_read_the_same_storage_settings_under_their_own_env_names(cls, prefix, env):
    cfg = load(cls, prefix=prefix, env={
        f"KILN_{prefix}_SERVICE_SECRET": "s", **env, f"KILN_{prefix}_STORAGE": "cassandra",
        f"KILN_{prefix}_CASSANDRA_HOSTS": "db1:9042,[::1]:9043", f"KILN_{prefix}_CASSANDRA_REPLICATION": "3",
        f"KILN_{prefix}_CASSANDRA_DATACENTER": "us-east-1"}, argv=["--cassandra-keyspace", "ks_1"])
    assert isinstance(cfg, StorageConfig)
    assert cfg.storage == "cassandra"
    assert cfg.cassandra_hosts == (CassandraHost("db1", 9042), CassandraHost("::1", 9043))
    assert (cfg.cassandra_keyspace, cfg.cassandra_datacenter, cfg.cassandra_replication) == ("ks_1", "us-east-1", 3)


def test_each_store_keeps_its_own_keyspace_and_directory_by_default():
    datastore = load(DatastoreConfig, prefix="DATASTORE", env=SECRET)
    logs = load(LogsConfig, prefix="LOGS", env={"KILN_LOGS_SERVICE_SECRET": "s", "KILN_LOGS_NATS_URL": "nats://n"})
    control = load(ControlConfig, prefix="CONTROL", env={"KILN_CONTROL_SERVICE_SECRET": "s",
                                                         "KILN_CONTROL_ADMIN_SECRET": "a",
                                                         "KILN_CONTROL_NATS_URL": "nats://n"})
    assert [c.cassandra_keyspace for c in (datastore, logs, control)] == ["kiln_datastore", "kiln_logs", "kiln_control"]
    assert len({c.data_dir for c in (datastore, logs, control)}) == 3


@pytest.mark.parametrize(("key", "value", "message"), [
    ("STORAGE", "mysql", "storage: must be one of embedded, cassandra"),
    ("CASSANDRA_HOSTS", "db:x", "cassandra_hosts: expected host:port"),
    ("CASSANDRA_KEYSPACE", "kiln-logs", "cassandra_keyspace: 'kiln-logs' is not a valid keyspace name"),
    ("CASSANDRA_KEYSPACE", "x; DROP KEYSPACE y", "cassandra_keyspace: "),
    ("CASSANDRA_KEYSPACE", "ключ", "cassandra_keyspace: "),
    ("CASSANDRA_KEYSPACE", "k" * 49, "cassandra_keyspace: "),
    ("CASSANDRA_DATACENTER", "dc1', 'dc2': 3", "cassandra_datacenter: "),
    ("CASSANDRA_REPLICATION", "0", "cassandra_replication: must be at least 1"),
])
def test_bad_storage_settings_are_refused_naming_the_setting(key, value, message):
    with pytest.raises(ConfigError, match="^" + message.replace("(", r"\(")):
        load(LogsConfig, prefix="LOGS", env={"KILN_LOGS_SERVICE_SECRET": "s", "KILN_LOGS_NATS_URL": "nats://n",
                                             f"KILN_LOGS_{key}": value})


def test_cassandra_storage_needs_contact_points():
    with pytest.raises(ConfigError, match="cassandra_hosts: required with storage cassandra"):
        load(StorageConfig, prefix="T", argv=["--storage", "cassandra", "--cassandra-hosts", ""])


def test_the_engine_is_picked_by_its_name():
    cfg = load(StorageConfig, prefix="T", argv=["--storage", "cassandra"])
    assert cfg.pick({"embedded": lambda: "sqlite", "cassandra": lambda: "cassandra"}) == "cassandra"
    with pytest.raises(ConfigError, match="storage: must be one of embedded, got 'cassandra'"):
        cfg.pick({"embedded": lambda: "sqlite"})


@pytest.mark.parametrize(("cls", "prefix", "key", "env"), [
    (RouterConfig, "ROUTER", "LISTEN", {"KILN_ROUTER_SESSION_SECRET": "s", "KILN_ROUTER_NATS_URL": "nats://n"}),
    (RouterConfig, "ROUTER", "CONTROL_PLANE", {"KILN_ROUTER_SESSION_SECRET": "s", "KILN_ROUTER_CONTROL_TOKEN": "t",
                                               "KILN_ROUTER_NATS_URL": "nats://n"}),
    (MailConfig, "MAIL", "RELAY", {"KILN_MAIL_SERVICE_SECRET": "s", "KILN_MAIL_NATS_URL": "nats://n"}),
    (MailConfig, "MAIL", "INBOUND_LISTEN", {"KILN_MAIL_SERVICE_SECRET": "s", "KILN_MAIL_PLATFORM_SECRET": "p",
                                            "KILN_MAIL_NATS_URL": "nats://n"}),
    (DatastoreConfig, "DATASTORE", "LISTEN", SECRET),
])
def test_services_refuse_a_bad_address_naming_their_setting(cls, prefix, key, env):
    with pytest.raises(ConfigError, match=f"^{key.lower()}: expected host:port, got 'localhost:８０'"):
        load(cls, prefix=prefix, env={**env, f"KILN_{prefix}_{key}": "localhost:８０"})


@dataclasses.dataclass(frozen=True, kw_only=True)
class Lists:
    names: tuple[str, ...] = ()


def test_comma_lists_are_split_once_with_blank_items_dropped():
    assert load(Lists, prefix="L", env={"KILN_L_NAMES": " a , ,b,"}).names == ("a", "b")


def test_a_mapping_is_not_a_list(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("names: {a: 1}\n")
    with pytest.raises(ConfigError, match="^names: expected a comma-separated list"):
        load(Lists, prefix="L", argv=["--config", str(path)])


@pytest.mark.parametrize(("hosts", "keyspace", "message"), [
    ("db:x", "k", "^--cassandra-hosts: expected host:port, got 'db:x'"),
    ("db:9042,[::1", "k", "^--cassandra-hosts: expected host:port, got '\\[::1'"),
    ("db:9042", "k; DROP TABLE t", "^cassandra_keyspace: "),
])
def test_dropping_a_keyspace_refuses_bad_settings_before_connecting(hosts, keyspace, message):
    with pytest.raises(ConfigError, match=message):
        cassandra.drop_keyspace(hosts, keyspace, setting="--cassandra-hosts")
