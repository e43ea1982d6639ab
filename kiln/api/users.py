"""The Users API, mirroring ``google.appengine.api.users`` (the part the datastore needs now).

Sign-in pages, ``get_current_user`` from the router's identity and admin checks
come with the router's users work.
"""

from __future__ import annotations

import os


class UserNotFoundError(Exception):
    """No user was given and nobody is signed in."""


class User:
    """A user: email, auth domain and (when known) a stable user id."""

    def __init__(self, email: str | None = None, _auth_domain: str | None = None,
                 _user_id: str | None = None) -> None:
        email = email if email is not None else os.environ.get("USER_EMAIL", "")
        if not email:
            raise UserNotFoundError("no email given and no signed-in user")
        self._email = email
        self._auth_domain = _auth_domain or os.environ.get("AUTH_DOMAIN", "gmail.com")
        self._user_id = _user_id

    def email(self) -> str:
        return self._email

    def nickname(self) -> str:
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
