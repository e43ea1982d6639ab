"""How the instance manager points an instance without a network at its Unix sockets (runtime.manager), and how the
runtime finds NATS through its loopback (runtime.app). The namespace itself is tested in test_isolation."""

from __future__ import annotations

import pathlib

import pytest

from kiln.errors import ConfigError
from runtime import manager
from runtime.app import loopback_nats_url


def test_service_addresses_come_from_flags_then_environment_then_defaults():
    found = manager.service_addresses(["--listen", "x", "--datastore-addr", "ds:1", "--mail-addr=mx:2"],
                                      {"KILN_RUNTIME_MAIL_ADDR": "env:3", "KILN_RUNTIME_IMAGES_ADDR": "img:4"})
    assert found == {"datastore": "ds:1", "mail": "mx:2", "images": "img:4", "memcache": "127.0.0.1:50052",
                     "urlfetch": "127.0.0.1:50053", "identity": "127.0.0.1:50058",
                     "taskqueue": "127.0.0.1:50059", "blobstore": "127.0.0.1:50062", "modules": ""}


def test_every_destination_gets_a_socket_and_the_runtime_flags_point_at_them(tmp_path):
    services = {"datastore": "ds:1", "memcache": "m1:11,m2:12", "urlfetch": "uf:3", "mail": "mx:4", "images": "im:5"}
    flags, relays = manager.forwarded(tmp_path, 1234, "nats://u:p@n1:4222,nats://n2", services)
    given = dict(zip(flags[::2], flags[1::2]))
    assert given["--nats-socket"] == str(tmp_path / "nats.sock")
    assert given["--datastore-addr"] == f"unix:{tmp_path / 'datastore.sock'}"
    # Memcache shards keep their names, so the hash ring is the one every other client has.
    assert given["--memcache-addr"] == f"m1:11=unix:{tmp_path / 'memcache-0.sock'},m2:12=unix:{tmp_path / 'memcache-1.sock'}"
    targets = {r.path.name: r.targets for r in relays}
    assert targets["nats.sock"] == [("n1", 4222), ("n2", 4222)]
    assert targets["memcache-1.sock"] == [("m2", 12)] and targets["images.sock"] == [("im", 5)]


def test_the_control_plane_for_the_modules_api_is_forwarded_when_the_instance_is_given_one(tmp_path):
    flags, relays = manager.forwarded(tmp_path, 1, "nats://n:4222", {"datastore": "ds:1", "modules": "control:60"})
    assert dict(zip(flags[::2], flags[1::2]))["--modules-addr"] == f"unix:{tmp_path / 'modules.sock'}"
    assert {r.path.name: r.targets for r in relays}["modules.sock"] == [("control", 60)]


def test_no_socket_is_made_for_a_service_the_instance_is_not_given(tmp_path):
    flags, relays = manager.forwarded(tmp_path, 1, "nats://n:4222", {"datastore": "ds:1", "modules": ""})
    assert "--modules-addr" not in flags
    assert sorted(r.path.name for r in relays) == ["datastore.sock", "nats.sock"]


def test_an_address_that_cannot_be_forwarded_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="datastore"):
        manager.forwarded(tmp_path, 1, "nats://n:4222", {"datastore": "dns:///ds.internal"})


def test_nats_over_tls_is_not_forwarded():
    assert manager._unforwardable_nats("nats://a:4222,tls://b:4222")
    assert manager._unforwardable_nats("nats://a:4222,b:4222") is None


def test_network_isolation_on_needs_user_isolation():
    with pytest.raises(ConfigError, match="--isolation user"):
        manager._private_network("on", "none", "nats://a:4222")
    assert manager._private_network("auto", "none", "nats://a:4222") is False
    assert manager._private_network("off", "user", "nats://a:4222") is False


@pytest.mark.parametrize("url, expected", [
    ("nats://app-a:pw@n1:4222,nats://app-a:pw@n2:4222", "nats://app-a:pw@127.0.0.1:5000"),
    ("n1:4222", "nats://127.0.0.1:5000"),
])
def test_the_runtime_dials_nats_on_its_loopback_with_the_same_credentials(url, expected):
    assert loopback_nats_url(url, 5000) == expected


def test_the_socket_directory_is_the_apps_group_only(tmp_path, monkeypatch):
    assert manager.os.geteuid() == 0, "run the tests as root (.ci/run does): the directory is given to an app's group"
    directory = manager.isolation.socket_dir(4242)
    try:
        info = directory.stat()
        assert (info.st_uid, info.st_gid, info.st_mode & 0o777) == (0, 4242, 0o750)
        assert len(str(directory / "memcache-10.sock")) < 100  # Unix socket paths are limited to 107 bytes
    finally:
        pathlib.Path(directory).rmdir()
