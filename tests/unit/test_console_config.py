"""The console's two modes (console/config.py): development (one app, the services' secret) or cluster (sign-in,
the gateway); each refuses the other's settings and names what is missing. No sockets."""

from __future__ import annotations

import pytest

from console.config import ConsoleConfig
from kiln_platform.config import ConfigError, HostPort, Secret, load

CLUSTER = {"oidc_issuer": "https://id.example.com", "oidc_client_id": "console",
           "oidc_client_secret": Secret("s"), "public_url": "https://console.example.com",
           "admins": "shop=ann@example.com", "session_secret": Secret("k"),
           "gateway": HostPort("control", 7000), "gateway_token": Secret("t")}


def test_development_mode_needs_the_app_and_the_service_secret():
    with pytest.raises(ValueError, match="app_id"):
        ConsoleConfig(service_secret=Secret("x"))
    with pytest.raises(ValueError, match="service_secret: required in development mode"):
        ConsoleConfig(app_id="shop")
    assert not ConsoleConfig(app_id="shop", service_secret=Secret("x")).cluster


def test_cluster_mode_names_every_missing_setting():
    with pytest.raises(ValueError, match="session_secret, gateway, gateway_token: required with oidc_issuer"):
        ConsoleConfig(**{**CLUSTER, "session_secret": Secret(""), "gateway": None, "gateway_token": Secret("")})
    assert ConsoleConfig(**CLUSTER).cluster


def test_cluster_mode_refuses_development_settings():
    with pytest.raises(ValueError, match="app_id, service_secret: development mode only"):
        ConsoleConfig(**CLUSTER, app_id="shop", service_secret=Secret("x"))


@pytest.mark.parametrize("url", ["console.example.com", "ftp://console.example.com", "https://console.example.com/x",
                                 "https://10.0.0.1", "https://user@console.example.com"])
def test_cluster_mode_needs_a_public_url_of_a_dns_name(url):
    with pytest.raises(ValueError, match="public_url"):
        ConsoleConfig(**{**CLUSTER, "public_url": url})


def test_admins_must_name_app_ids():
    with pytest.raises(ValueError, match="admins: 'Shop!' is not an app id"):
        ConsoleConfig(**{**CLUSTER, "admins": "Shop!=ann@example.com"})


def test_kiln_dev_flags_still_load_as_development_mode():
    cfg = load(ConsoleConfig, prefix="CONSOLE", argv=["--app-id", "shop"], env={"KILN_CONSOLE_SERVICE_SECRET": "x"})
    assert cfg.app_id == "shop" and not cfg.cluster


def test_a_cluster_loads_from_the_environment():
    env = {"KILN_CONSOLE_OIDC_ISSUER": "https://id.example.com", "KILN_CONSOLE_OIDC_CLIENT_ID": "console",
           "KILN_CONSOLE_OIDC_CLIENT_SECRET": "s", "KILN_CONSOLE_PUBLIC_URL": "https://console.example.com",
           "KILN_CONSOLE_ADMINS": "shop=Ann@example.com", "KILN_CONSOLE_SESSION_SECRET": "k",
           "KILN_CONSOLE_GATEWAY": "control:7000", "KILN_CONSOLE_GATEWAY_TOKEN": "t"}
    cfg = load(ConsoleConfig, prefix="CONSOLE", argv=[], env=env)
    assert cfg.cluster and cfg.admin_map() == {"shop": frozenset({"ann@example.com"})}
    assert cfg.public_origin() == ("https", "console.example.com")


def test_a_missing_setting_is_a_config_error_not_a_crash():
    with pytest.raises(ConfigError, match="app_id"):
        load(ConsoleConfig, prefix="CONSOLE", argv=[], env={})
