"""What kiln logs of a NATS URL setting (``kiln_platform.bus.shown``): every server's address, never credentials."""

from __future__ import annotations

import pytest

from kiln_platform import bus


@pytest.mark.parametrize("setting,logged", [
    ("nats://127.0.0.1:4222", "nats://127.0.0.1:4222"),
    ("nats://platform:s3cret@10.0.0.5:4222", "nats://10.0.0.5:4222"),
    ("tls://user:pw@nats-a.example.com:4443, nats://b:pw@nats-b:4222", "tls://nats-a.example.com:4443,nats://nats-b:4222"),
    ("nats://u:p@[::1]:5000", "nats://[::1]:5000"),
    ("host-without-scheme", "nats://host-without-scheme:4222"),
])
def test_a_nats_setting_is_logged_as_its_servers_without_credentials(setting, logged):
    assert bus.shown(setting) == logged


def test_no_password_survives_in_what_is_logged():
    assert "s3cret" not in bus.shown("nats://platform:s3cret@a:1,nats://app:s3cret@b:2")
