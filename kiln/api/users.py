"""The Users API, mirroring ``google.appengine.api.users``.

The router signs users in (a development sign-in page under ``kiln dev``) and
passes the signed-in user with each request; the runtime puts it in the
request's environment (``USER_EMAIL``, ``USER_ID``, ``USER_IS_ADMIN``), which
is what these functions read.
"""

from __future__ import annotations

import os
import urllib.parse

__all__ = ["Error", "NotAllowedError", "RedirectTooLongError", "User", "UserNotFoundError",
           "create_login_url", "create_logout_url", "get_current_user", "is_current_user_admin"]

LOGIN_PATH = "/_ah/login"
LOGOUT_PATH = "/_ah/logout"
MAX_REDIRECT_URL = 2000


class Error(Exception):
    """Base of the Users API's errors."""


class UserNotFoundError(Error):
    """No user was given and nobody is signed in."""


class RedirectTooLongError(Error):
    """The destination URL is too long."""


class NotAllowedError(Error):
    """The requested federated identity provider is not allowed."""


class User:
    """A user: email, auth domain and (when known) a stable user id."""

    def __init__(self, email: str | None = None, _auth_domain: str | None = None,
                 _user_id: str | None = None) -> None:
        if email is None:
            email = os.environ.get("USER_EMAIL", "")
            _user_id = _user_id or os.environ.get("USER_ID") or None
        if not email:
            raise UserNotFoundError("no email given and no signed-in user")
        self._email = email
        self._auth_domain = _auth_domain or os.environ.get("AUTH_DOMAIN", "gmail.com")
        self._user_id = _user_id

    def email(self) -> str:
        return self._email

    def nickname(self) -> str:
        """The part before @ for users of the auth domain, else the whole email (App Engine's rule)."""
        return self._email.split("@", 1)[0] if self._auth_domain and self._email.endswith(
            "@" + self._auth_domain) else self._email

    def user_id(self) -> str | None:
        return self._user_id

    def auth_domain(self) -> str:
        return self._auth_domain

    def __eq__(self, other: object) -> bool:
        return isinstance(other, User) and (self._email, self._auth_domain) == (other._email, other._auth_domain)

    def __hash__(self) -> int:
        return hash((self._email, self._auth_domain))

    def __str__(self) -> str:
        return self.nickname()

    def __repr__(self) -> str:
        return f"users.User(email={self._email!r})"


def get_current_user() -> User | None:
    """The signed-in user of the current request, or ``None``."""
    email = os.environ.get("USER_EMAIL", "")
    if not email:
        return None
    return User(email, _user_id=os.environ.get("USER_ID") or None)


def is_current_user_admin() -> bool:
    """Whether the signed-in user is an administrator of this app."""
    return os.environ.get("USER_IS_ADMIN", "0") == "1"


def _url(path: str, dest_url: str) -> str:
    if len(dest_url) > MAX_REDIRECT_URL:
        raise RedirectTooLongError(f"destination URL longer than {MAX_REDIRECT_URL} characters")
    return f"{path}?{urllib.parse.urlencode({'continue': dest_url})}"


def create_login_url(dest_url: str = "/", _auth_domain: str | None = None,
                     federated_identity: str | None = None) -> str:
    """The URL that signs a user in and then goes to ``dest_url``."""
    if federated_identity:
        raise NotAllowedError("federated identity providers are configured on the router, not per call")
    return _url(LOGIN_PATH, dest_url)


def create_logout_url(dest_url: str = "/", _auth_domain: str | None = None) -> str:
    """The URL that signs the user out and then goes to ``dest_url``."""
    return _url(LOGOUT_PATH, dest_url)
