"""router.cookies: reading the router's cookies and keeping them away from apps."""

from __future__ import annotations

import pytest

from router import cookies


@pytest.mark.parametrize(("header", "expected"), [
    ("kiln_login=S", ""),
    ("a=1; kiln_login=S; b=2", "a=1; b=2"),
    ("kiln_login=S; a=1", "a=1"),
    ("a=1; kiln_login=S", "a=1"),
    ("kiln_login=S1; a=1; kiln_login=S2; kiln_login=S3", "a=1"),             # several copies
    ("a=1;kiln_login=S;b=2", "a=1;b=2"),                                      # no spaces
    ("a=1;   kiln_login  =  S ;\tb=2", "a=1;\tb=2"),                          # spaces around the name
    ('a=1; kiln_login="S"; b="x y"', 'a=1; b="x y"'),                         # quoted values
    ('a="x; kiln_login=S; b=y"', 'a="x; b=y"'),                               # a quote cannot hide it
    ("Kiln_Login=1; KILN_LOGIN=2; kiln_login=S; Kiln_Oidc=3", "Kiln_Login=1; KILN_LOGIN=2; Kiln_Oidc=3"),
    ("kiln_oidc=N; a=1", "a=1"),
    ("a=1; kiln_login; b=2", "a=1; b=2"),                                     # a bare name
    ("kiln_loginx=1; xkiln_login=2; kiln_login_=3", "kiln_loginx=1; xkiln_login=2; kiln_login_=3"),
    ("a=kiln_login=S; b=2", "a=kiln_login=S; b=2"),                           # a value that looks like it
    ("  a = 1 ;b=2  ", "a = 1 ;b=2"),
])
def test_router_cookies_are_removed_and_every_other_pair_keeps_its_text(header, expected):
    assert cookies.without_router_cookies(header) == expected


def test_values_finds_every_copy_in_every_header_in_order():
    headers = ["a=1; kiln_login=S1; kiln_login = S2 ", "KILN_LOGIN=X; kiln_login=S3"]
    assert cookies.values(headers, "kiln_login") == ["S1", "S2", "S3"]


def test_values_keeps_what_follows_the_first_equals_sign():
    assert cookies.values(["kiln_oidc=a=b"], "kiln_oidc") == ["a=b"]


def test_forwarded_headers_lose_the_router_cookies_and_emptied_cookie_headers():
    headers = [("Cookie", "kiln_login=S"), ("X-Other", "kiln_login=S"), ("cookie", "a=1; kiln_oidc=N"),
               ("COOKIE", " ; kiln_login=S ; "), ("Accept", "*/*")]
    assert cookies.forwardable(headers) == [("X-Other", "kiln_login=S"), ("cookie", "a=1"), ("Accept", "*/*")]


@pytest.mark.parametrize(("set_cookie", "router_owned"), [
    ("kiln_login=S; Path=/", True),
    ("kiln_login=S; Domain=example.test; Path=/", True),
    (" kiln_login =S", True),
    ("kiln_oidc=N; Path=/_ah/login/callback", True),
    ("kiln_login=; Max-Age=0", True),
    ("Kiln_Login=S", False),
    ("a=kiln_login; Path=/", False),
    ("session=1; Path=/kiln_login", False),
])
def test_set_cookie_of_a_router_cookie_is_recognised(set_cookie, router_owned):
    assert cookies.sets_router_cookie(set_cookie) is router_owned
