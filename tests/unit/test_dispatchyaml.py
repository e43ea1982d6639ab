"""dispatch.yaml: the rules kiln reads, the precise error for each bad input, and which rule a request matches."""

from __future__ import annotations

import pytest

from kiln_platform import dispatchyaml
from kiln_platform.appyaml import AppYamlError

EXAMPLE = """\
dispatch:
- url: "*/favicon.ico"
  service: default
- url: "api.example.com/*"
  service: api
- url: "*/mobile/*"
  module: mobile-frontend
- url: "*.example.org/*"
  service: org
"""


def _error(text: str) -> str:
    with pytest.raises(AppYamlError) as caught:
        dispatchyaml.parse(text, filename="dispatch.yaml")
    return str(caught.value)


def test_rules_keep_their_order_and_services() -> None:
    rules = dispatchyaml.parse(EXAMPLE)
    assert [r.service for r in rules] == ["default", "api", "mobile-frontend", "org"]
    assert rules[1] == dispatchyaml.Rule(url="api.example.com/*", host="api.example.com", host_exact=True,
                                         path="/", path_exact=False, service="api")


def test_empty_file_has_no_rules() -> None:
    assert dispatchyaml.parse("") == []
    assert dispatchyaml.parse("dispatch:\n") == []


def test_more_than_twenty_rules_is_refused() -> None:
    text = "dispatch:\n" + "".join(f"- url: '*/r{i}/*'\n  service: api\n" for i in range(21))
    assert _error(text) == "dispatch.yaml:1: dispatch: at most 20 rules, got 21"


def test_star_inside_a_path_is_refused() -> None:
    message = _error("dispatch:\n- url: '*/a*b/*'\n  service: api\n")
    assert message == "dispatch.yaml:2: dispatch[0].url: the path '/a*b/*' may hold '*' only as its last character"


def test_star_inside_a_host_is_refused() -> None:
    message = _error("dispatch:\n- url: 'www.*.com/*'\n  service: api\n")
    assert message.startswith("dispatch.yaml:2: dispatch[0].url: the host 'www.*.com' is not a host name")


def test_url_without_a_path_is_refused() -> None:
    message = _error("dispatch:\n- url: 'www.example.com'\n  service: api\n")
    assert message.startswith("dispatch.yaml:2: dispatch[0].url: expected HOST/PATH")


def test_unknown_key_is_refused() -> None:
    message = _error("dispatch:\n- url: '*/a/*'\n  service: api\n  version: v1\n")
    assert message == "dispatch.yaml:4: dispatch[0].version: unknown field; allowed: module, service, url"


def test_missing_service_is_refused() -> None:
    assert _error("dispatch:\n- url: '*/a/*'\n") == "dispatch.yaml:2: dispatch[0].service: required field is missing"


def test_service_and_module_together_are_refused() -> None:
    message = _error("dispatch:\n- url: '*/a/*'\n  service: api\n  module: api\n")
    assert message == "dispatch.yaml:4: dispatch[0].module: give service or its older name module, not both"


def test_bad_service_name_is_refused() -> None:
    assert "must be a service name" in _error("dispatch:\n- url: '*/a/*'\n  service: Api_2\n")


def test_ipv4_host_is_refused() -> None:
    assert "may not be an IPv4 address" in _error("dispatch:\n- url: '10.0.0.1/*'\n  service: api\n")


def test_long_path_is_refused() -> None:
    assert "longer than 100" in _error(f"dispatch:\n- url: '*/{'p' * 100}'\n  service: api\n")


def test_first_matching_rule_wins() -> None:
    rules = dispatchyaml.parse("dispatch:\n- url: '*/api/v1/*'\n  service: old\n- url: '*/api/*'\n  service: api\n")
    assert dispatchyaml.match(rules, "app.example.com", "/api/v1/x") == "old"
    assert dispatchyaml.match(rules, "app.example.com", "/api/v2/x") == "api"


def test_exact_path_matches_only_itself() -> None:
    rules = dispatchyaml.parse(EXAMPLE)
    assert dispatchyaml.match(rules, "x.com", "/favicon.ico") == "default"
    assert dispatchyaml.match(rules, "x.com", "/favicon.ico2") is None


def test_host_rules_match_exact_host_or_suffix() -> None:
    rules = dispatchyaml.parse(EXAMPLE)
    assert dispatchyaml.match(rules, "api.example.com", "/anything") == "api"
    assert dispatchyaml.match(rules, "www.api.example.com", "/anything") is None
    assert dispatchyaml.match(rules, "shop.example.org", "/") == "org"
    assert dispatchyaml.match(rules, "example.org", "/") is None


def test_ah_paths_are_not_dispatched_but_deferred_and_api_are() -> None:
    rules = dispatchyaml.parse("dispatch:\n- url: '*/*'\n  service: api\n")
    assert dispatchyaml.match(rules, "x.com", "/_ah/warmup") is None
    assert dispatchyaml.match(rules, "x.com", "/_ah/queue/deferred") == "api"
    assert dispatchyaml.match(rules, "x.com", "/_ah/api/echo") == "api"
