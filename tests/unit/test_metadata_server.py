"""runtime.metadata: the metadata server's answers the runtime gives in the app's process, for what needs no
kiln service (who the app is; what it refuses). Tokens, which identity_svc issues, are tested end to end in
tests/integration/test_sdk_app_identity.py."""

from __future__ import annotations

import json

import pytest

from runtime import metadata

ROOT = "http://metadata.google.internal/computeMetadata/v1/"
GOOGLE = {"Metadata-Flavor": "Google"}


@pytest.fixture(autouse=True)
def app(monkeypatch):
    monkeypatch.setenv("GAE_APPLICATION", "meta-app")
    monkeypatch.setenv("DEFAULT_VERSION_HOSTNAME", "meta-app.apps.example.test")
    monkeypatch.delenv("GCE_METADATA_HOST", raising=False)


def text(found):
    status, headers, body = found
    assert ("Metadata-Flavor", "Google") in headers
    return status, body.decode()


@pytest.mark.parametrize("url", ["http://example.com/computeMetadata/v1/project/project-id",
                                 "https://metadata.google.internal/computeMetadata/v1/project/project-id",
                                 "http://metadata.google.internal.example.com/"])
def test_requests_for_other_hosts_are_not_the_metadata_servers(url):
    assert metadata.answer("GET", url, GOOGLE) is None


@pytest.mark.parametrize("host", ["metadata.google.internal", "METADATA.google.internal.", "metadata",
                                  "169.254.169.254", "169.254.169.254:80"])
def test_every_name_of_the_metadata_server_is_answered(host):
    assert text(metadata.answer("GET", f"http://{host}/computeMetadata/v1/project/project-id", GOOGLE)) == (
        200, "meta-app")


def test_the_host_gce_metadata_host_names_is_answered_too(monkeypatch):
    monkeypatch.setenv("GCE_METADATA_HOST", "metadata.kiln.test:8080")
    assert text(metadata.answer("GET", "http://metadata.kiln.test:8080/computeMetadata/v1/project/project-id",
                                GOOGLE)) == (200, "meta-app")


@pytest.mark.parametrize("account", ["default", "meta-app@apps.example.test"])
def test_the_service_accounts_email_is_the_apps(account):
    assert text(metadata.answer("GET", f"{ROOT}instance/service-accounts/{account}/email", GOOGLE)) == (
        200, "meta-app@apps.example.test")


def test_the_root_answers_as_google_auth_expects_to_find_a_metadata_server():
    assert metadata.answer("GET", "http://169.254.169.254/", GOOGLE)[0] == 200


@pytest.mark.parametrize("headers", [{}, {"Metadata-Flavor": "Amazon"}, {"X-Other": "Google"}])
def test_a_request_without_the_metadata_flavor_header_is_forbidden(headers):
    assert text(metadata.answer("GET", f"{ROOT}project/project-id", headers)) == (
        403, "Missing Metadata-Flavor:Google header.")


def test_the_header_name_is_case_insensitive():
    assert metadata.answer("GET", f"{ROOT}project/project-id", {"metadata-flavor": "Google"})[0] == 200


@pytest.mark.parametrize("method", ["POST", "PUT", "DELETE"])
def test_only_get_is_answered(method):
    assert metadata.answer(method, f"{ROOT}project/project-id", GOOGLE)[0] == 405


@pytest.mark.parametrize("account", ["other-app@apps.example.test", "someone@example.com"])
def test_another_service_account_is_not_there(account):
    status, body = text(metadata.answer("GET", f"{ROOT}instance/service-accounts/{account}/token", GOOGLE))
    assert status == 404 and "an app has only its own (meta-app@apps.example.test)" in body


@pytest.mark.parametrize("path", ["instance/attributes/", "instance/zone", "instance/service-accounts/default/identity",
                                  "project/numeric-project-id"])
def test_what_kiln_does_not_answer_is_a_404_naming_what_it_does(path):
    status, body = text(metadata.answer("GET", ROOT + path, GOOGLE))
    assert status == 404 and "kiln's metadata server answers only" in body


def test_the_service_accounts_directory_is_read_recursively_as_google_auth_does_before_a_token():
    status, headers, body = metadata.answer("GET", ROOT + "instance/service-accounts/default/?recursive=true", GOOGLE)
    assert (status, ("Content-Type", "application/json")) == (200, headers[1])
    assert json.loads(body) == {"aliases": ["default"], "email": "meta-app@apps.example.test",
                                "scopes": [metadata.DEFAULT_SCOPE]}


def test_the_service_accounts_directory_lists_its_entries_without_recursive():
    assert text(metadata.answer("GET", ROOT + "instance/service-accounts/default/", GOOGLE)) == (
        200, "aliases\nemail\nscopes\ntoken\n")


def test_the_service_accounts_scopes_are_the_default_scope():
    assert text(metadata.answer("GET", ROOT + "instance/service-accounts/default/scopes", GOOGLE)) == (
        200, metadata.DEFAULT_SCOPE + "\n")
