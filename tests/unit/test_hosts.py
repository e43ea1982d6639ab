"""router.hosts: Host header to app and version."""

from router.hosts import Target, resolve

VERSIONS = {"guestbook": "v1"}


def test_app_domain_reaches_default_version():
    assert resolve("guestbook.example.com", domain="example.com", versions=VERSIONS, dev_app=None) == Target("guestbook", "v1")


def test_any_subdomain_reaches_the_app():
    assert resolve("www.guestbook.example.com", domain="example.com", versions=VERSIONS, dev_app=None) == Target("guestbook", "v1")


def test_version_dot_app_reaches_that_version():
    assert resolve("v2-dot-guestbook.example.com", domain="example.com", versions=VERSIONS,
                   dev_app=None) == Target("guestbook", "v2", explicit_version=True)


def test_sub_dot_version_dot_app_reaches_that_version():
    assert resolve("api-dot-v3-dot-guestbook.example.com", domain="example.com", versions=VERSIONS,
                   dev_app=None) == Target("guestbook", "v3", explicit_version=True)


def test_unknown_app_or_domain_is_none():
    assert resolve("nope.example.com", domain="example.com", versions=VERSIONS, dev_app=None) is None
    assert resolve("guestbook.other.org", domain="example.com", versions=VERSIONS, dev_app=None) is None


def test_dev_mode_routes_every_host_to_the_app():
    assert resolve("anything", domain="example.com", versions=VERSIONS, dev_app="guestbook") == Target("guestbook", "v1")


def test_instance_dot_version_dot_app_reaches_that_instance():
    instance = "0123456789abcdef0123456789abcdef"
    assert resolve(f"{instance}-dot-v1-dot-guestbook.example.com", domain="example.com", versions=VERSIONS,
                   dev_app=None) == Target("guestbook", "v1", explicit_version=True, instance_id=instance)
