"""App Engine's Modules API through Google's SDK (``google.appengine.api.modules``) on kiln's ``modules`` service
(kiln/sdk/modules.py), answering from a given description of the app (as under ``kiln dev``; the control plane
gives the same description to deployed instances, tested end to end in tests/integration/test_modules_app.py).

Each test calls the SDK's own functions, so the errors are the SDK's classes as its module maps kiln's codes.
"""

from __future__ import annotations

import pytest

APP = "modapp"
HOST = "modapp.example.test"
TICKET = "HTTP_X_APPENGINE_API_TICKET"


def facts(default: str = "v2"):
    """The app: service default (v1 automatic, v2 manual ×3), service worker (w1 basic up to 4, w2 automatic)."""
    from kiln.pb.modules.v1 import modules_pb2 as pb

    return pb.ListModulesResponse(default_version=default, modules=[
        pb.Module(name="default", versions=[
            pb.ModuleVersion(version_id="v1", scaling=pb.SCALING_AUTOMATIC),
            pb.ModuleVersion(version_id="v2", scaling=pb.SCALING_MANUAL, instances=3)]),
        pb.Module(name="worker", versions=[
            pb.ModuleVersion(version_id="w1", scaling=pb.SCALING_BASIC, instances=4),
            pb.ModuleVersion(version_id="w2", scaling=pb.SCALING_AUTOMATIC)]),
    ])


@pytest.fixture(scope="module")
def service(gae_sdk):
    from kiln.sdk import proxy
    from kiln.sdk.modules import Modules

    modules = Modules(local=facts())
    proxy.install(APP, [modules])
    return modules


@pytest.fixture
def modules(service, monkeypatch):
    """The SDK's modules module, called from a request of version v2 of service default."""
    from google.appengine.api import modules as sdk_modules

    from kiln.sdk import tickets

    service.local = facts()
    monkeypatch.setenv("GAE_SERVICE", "default")
    monkeypatch.setenv("GAE_VERSION", "v2")
    monkeypatch.setenv("GAE_INSTANCE", "0f" * 16)
    minted = tickets.open_ticket(APP, {"DEFAULT_VERSION_HOSTNAME": HOST})
    monkeypatch.setenv(TICKET, minted)
    yield sdk_modules
    tickets.close(minted)


def test_get_modules_lists_every_service_of_the_app(modules):
    assert modules.get_modules() == ["default", "worker"]


def test_get_versions_lists_the_versions_of_the_named_or_own_service(modules):
    assert modules.get_versions() == ["v1", "v2"]
    assert modules.get_versions("default") == ["v1", "v2"]
    assert modules.get_versions("worker") == ["w1", "w2"]


@pytest.mark.parametrize("module", ["nope", "Default", "worker ", "otherapp-default"])
def test_get_versions_of_an_unknown_service_is_invalid_module(modules, module):
    with pytest.raises(modules.InvalidModuleError):
        modules.get_versions(module)


def test_the_instances_own_service_and_version_are_listed_even_when_the_app_no_longer_has_them(
        modules, service, monkeypatch):
    monkeypatch.setenv("GAE_SERVICE", "draining")
    monkeypatch.setenv("GAE_VERSION", "old")
    assert modules.get_modules() == ["default", "draining", "worker"]
    assert modules.get_versions() == ["old"]


def test_get_default_version_is_the_apps_default_for_its_service(modules):
    assert modules.get_default_version() == "v2"
    assert modules.get_default_version("default") == "v2"


def test_a_service_without_the_apps_default_version_has_no_default(modules):
    with pytest.raises(modules.InvalidVersionError):
        modules.get_default_version("worker")


def test_an_app_without_a_default_version_has_none_for_any_service(modules, service):
    service.local = facts(default="")
    with pytest.raises(modules.InvalidVersionError):
        modules.get_default_version()


def test_get_default_version_of_an_unknown_service_is_invalid_module(modules):
    with pytest.raises(modules.InvalidModuleError):
        modules.get_default_version("nope")


@pytest.mark.parametrize(("module", "version", "instances"), [
    (None, None, 3), ("default", "v2", 3), (None, "v2", 3), ("worker", "w1", 4)])
def test_get_num_instances_is_the_number_app_yaml_sets(modules, module, version, instances):
    assert modules.get_num_instances(module, version) == instances


def test_get_num_instances_of_another_service_without_a_version_uses_its_default_or_fails(modules):
    # worker has neither the instance's version (v2) nor the default: nothing to answer for.
    with pytest.raises(modules.InvalidVersionError):
        modules.get_num_instances("worker")


@pytest.mark.parametrize(("module", "version"), [
    ("default", "v1"), ("worker", "w2"), ("nope", None), ("default", "w1"), (None, "v9")])
def test_get_num_instances_of_an_automatic_or_unknown_version_is_invalid_version(modules, module, version):
    with pytest.raises(modules.InvalidVersionError):
        modules.get_num_instances(module, version)


@pytest.mark.parametrize("call", [
    lambda m: m.set_num_instances(5), lambda m: m.set_num_instances(2, "worker", "w1"),
    lambda m: m.start_version("default", "v1"), lambda m: m.stop_version(), lambda m: m.stop_version("worker", "w1")])
def test_writes_to_a_known_version_are_refused_saying_why(modules, call):
    from google.appengine.runtime import apiproxy_errors

    with pytest.raises(apiproxy_errors.FeatureNotEnabledError, match="deploy token"):
        call(modules)


@pytest.mark.parametrize("call", [
    lambda m: m.set_num_instances(5, "nope"), lambda m: m.set_num_instances(2, "worker", "v2"),
    lambda m: m.start_version("default", "v9"), lambda m: m.start_version("nope", "v1"),
    lambda m: m.stop_version("worker", "nope")])
def test_writes_to_an_unknown_service_or_version_are_invalid_version(modules, call):
    with pytest.raises(modules.InvalidVersionError):
        call(modules)


def test_get_hostname_names_the_version_on_kilns_hosts(modules):
    assert modules.get_hostname() == f"v2-dot-{HOST}"
    assert modules.get_hostname(version="v1") == f"v1-dot-{HOST}"
    assert modules.get_hostname("worker", "w2") == f"w2-dot-{HOST}"


def test_get_hostname_of_another_service_without_a_version_is_its_default_or_invalid_module(modules, service):
    with pytest.raises(modules.InvalidModuleError):
        modules.get_hostname("worker")  # worker has no default version
    service.local = facts(default="w1")
    assert modules.get_hostname("worker") == f"w1-dot-{HOST}"


@pytest.mark.parametrize(("module", "version"), [("nope", None), ("default", "w1"), (None, "v9")])
def test_get_hostname_of_an_unknown_service_or_version_is_invalid_module(modules, module, version):
    with pytest.raises(modules.InvalidModuleError):
        modules.get_hostname(module, version)


@pytest.mark.parametrize(("version", "instance"), [("v2", 0), ("v2", "1"), ("v2", "0f" * 16), (None, 2)])
def test_get_hostname_of_an_instance_of_a_fixed_version_names_the_instance(modules, version, instance):
    assert modules.get_hostname(version=version, instance=instance) == f"{instance}-dot-v2-dot-{HOST}"


def test_get_hostname_of_an_instance_of_a_basic_version_names_the_instance(modules):
    assert modules.get_hostname("worker", "w1", "3") == f"3-dot-w1-dot-{HOST}"


@pytest.mark.parametrize(("module", "version", "instance"), [
    ("default", "v1", "0"), ("worker", "w2", "1"),  # automatically scaled: instances are not addressable
    (None, "v2", "a.b"), (None, "v2", "x-dot-y"), (None, "v2", "UPPER"), (None, "v2", "-1"), (None, "v2", "a" * 64)])
def test_get_hostname_of_an_instance_that_cannot_be_addressed_is_invalid_instances(modules, module, version, instance):
    with pytest.raises(modules.InvalidInstancesError):
        modules.get_hostname(module, version, instance)


def test_the_current_service_version_and_instance_come_from_the_instance(modules):
    assert (modules.get_current_module_name(), modules.get_current_version_name(),
            modules.get_current_instance_id()) == ("default", "v2", "0f" * 16)


def test_a_method_the_modules_service_does_not_have_is_call_not_found(modules):
    from google.appengine.api import apiproxy_stub_map
    from google.appengine.api.modules import modules_service_pb2
    from google.appengine.runtime import apiproxy_errors

    with pytest.raises(apiproxy_errors.CallNotFoundError, match="Frobnicate"):
        apiproxy_stub_map.MakeSyncCall("modules", "Frobnicate", modules_service_pb2.GetModulesRequest(),
                                       modules_service_pb2.GetModulesResponse())
