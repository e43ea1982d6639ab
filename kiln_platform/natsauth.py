"""Who may do what on NATS: the platform's user, and one user per app with only its own subjects.

An app's instances hold a NATS connection in the app's own process, so app
code that got past the Python sandbox could use it. Each app's instances
therefore connect as the app's own NATS user, which may only:

- receive its own requests: ``kiln.http.APP.>`` and ``kiln.instance.APP.>``,
  and answer them (``allow_responses``);
- report its load: publish ``kiln.heartbeat.APP.>``;
- use its own reply inboxes (``_INBOX_APP.>``) and its own large-body bucket
  (``kiln-bodies-APP``: the JetStream API calls and ``$O`` subjects of that
  bucket alone).

It cannot read another app's requests or bodies, send requests to other apps
(they go through the router, over HTTP), publish request logs, or touch any
other stream. The platform's user (routers, services, instance managers) may
do everything. An app's password is derived from a secret only the platform
holds, so an instance manager can hand it to the app's instances without a
list of passwords. Either the NATS server has every app's user in its
configuration (:func:`server_config`; reload the server when an app is added),
or it asks the auth callout (:mod:`natscallout`), which knows every app.
"""

from __future__ import annotations

import argparse
import secrets
import urllib.parse
from collections.abc import Iterable
from typing import Any

import nkeys

from kiln_platform import bus, signing

PLATFORM_USER = "kiln"


def app_user(app_id: str) -> str:
    return f"app-{app_id}"


APP_PASSWORD_PURPOSE = "kiln-nats-app"


def app_password(secret: str, app_id: str) -> str:
    """The app's NATS password: derived from the platform's secret, so it needs no storage."""
    return signing.derive(secret, APP_PASSWORD_PURPOSE, app_id)


def app_permissions(app_id: str) -> dict[str, Any]:
    """The NATS permissions of an app's user (see the module docstring)."""
    stream = "OBJ_" + bus.body_bucket(app_id)
    inbox = bus.app_inbox_prefix(app_id)
    return {
        "publish": {"allow": [
            f"kiln.heartbeat.{app_id}.>",
            f"$O.{bus.body_bucket(app_id)}.>",
            f"$JS.API.STREAM.INFO.{stream}", f"$JS.API.STREAM.MSG.GET.{stream}", f"$JS.API.STREAM.PURGE.{stream}",
            f"$JS.API.DIRECT.GET.{stream}", f"$JS.API.DIRECT.GET.{stream}.>",
            f"$JS.API.CONSUMER.CREATE.{stream}", f"$JS.API.CONSUMER.CREATE.{stream}.>",
            f"$JS.API.CONSUMER.DELETE.{stream}.>", f"$JS.API.CONSUMER.INFO.{stream}.>",
            "$JS.API.STREAM.NAMES", f"$JS.FC.{stream}.>", f"$JS.ACK.{stream}.>",
        ]},
        "subscribe": {"allow": [f"kiln.http.{app_id}.>", f"kiln.instance.{app_id}.>", f"{inbox}.>"]},
        "allow_responses": True,
    }


def server_config(platform_password: str, app_secret: str, app_ids: Iterable[str]) -> dict[str, Any]:
    """The ``authorization`` block of nats-server's configuration (its config format accepts JSON)."""
    users: list[dict[str, Any]] = [{"user": PLATFORM_USER, "password": platform_password}]
    users += [{"user": app_user(a), "password": app_password(app_secret, a), "permissions": app_permissions(a)}
              for a in sorted(set(app_ids))]
    return {"authorization": {"users": users}}


def with_credentials(url: str, user: str | None, password: str | None) -> str:
    """``url`` (comma-separated servers) with each server's credentials replaced (or removed, given None)."""
    out = []
    for parts in bus.servers(url):
        host = parts.hostname or ""
        netloc = (f"[{host}]" if ":" in host else host) + (f":{parts.port}" if parts.port else "")
        if user is not None:
            netloc = f"{urllib.parse.quote(user, safe='')}:{urllib.parse.quote(password or '', safe='')}@{netloc}"
        out.append(urllib.parse.urlunsplit((parts.scheme, netloc, parts.path, "", "")))
    return ",".join(out)


# --- the auth callout's issuer (python -m natscallout answers for it) ---------------------------------------

def new_issuer_seed() -> str:
    """A fresh account nkey seed (``SA…``) for ``issuer_seed``."""
    seed: bytes = nkeys.encode_seed(secrets.token_bytes(32), nkeys.PREFIX_BYTE_ACCOUNT)
    return seed.decode()


def issuer_public_key(seed: str) -> str:
    """The account public key (``A…``) nats-server's ``auth_callout.issuer`` names, from its seed.

    Raises:
        ValueError: ``seed`` is not an account nkey seed.
    """
    try:
        key: str = nkeys.from_seed(seed.encode()).public_key.decode()
    except (nkeys.ErrInvalidSeed, nkeys.ErrInvalidPrefixByte, ValueError) as exc:
        raise ValueError(f"not an nkey seed: {type(exc).__name__}") from None
    if not key.startswith("A"):
        raise ValueError("the issuer must be an account nkey seed (SA…), e.g. from `python -m kiln_platform.natsauth "
                         "--new-callout-seed`")
    return key


def callout_server_config(platform_password: str, issuer_seed: str) -> dict[str, Any]:
    """nats-server's ``authorization`` block: the platform's user, and the callout for everyone else."""
    return {"authorization": {
        "users": [{"user": PLATFORM_USER, "password": platform_password}],
        "auth_callout": {"issuer": issuer_public_key(issuer_seed), "auth_users": [PLATFORM_USER]},
    }}


def parser() -> argparse.ArgumentParser:
    """``python -m kiln_platform.natsauth``'s command line (:func:`main` says what it does)."""
    parser = argparse.ArgumentParser(prog="python -m kiln_platform.natsauth",
                                     description=main.__doc__.split("\n\n")[0] if main.__doc__ else None)
    mode = parser.add_mutually_exclusive_group()
    mode.add_argument("--app", action="append", default=[], help="an app id (repeat for each app)")
    mode.add_argument("--callout", action="store_true",
                      help="the auth callout decides on apps' users (issuer seed in KILN_NATS_CALLOUT_SEED)")
    mode.add_argument("--new-callout-seed", action="store_true", help="print a new issuer seed for the callout")
    return parser


def main(argv: list[str] | None = None) -> int:
    """``python -m kiln_platform.natsauth``: print the ``authorization`` block for nats-server.

    ``--app APP...`` lists the apps' users in it (reload the servers when an app is added); ``--callout`` lists
    only the platform's user and sends everyone else to the auth callout (``python -m natscallout``,
    issuer from ``KILN_NATS_CALLOUT_SEED``), so a new app needs no reload; ``--new-callout-seed`` prints a
    fresh issuer seed. Reads the platform's password from ``KILN_NATS_PLATFORM_PASSWORD`` and the secret apps'
    passwords are derived from from ``KILN_NATS_APP_SECRET`` (the instance managers'
    ``KILN_MANAGER_NATS_APP_SECRET``).
    """
    import json
    import os
    import sys

    args = parser().parse_args(argv)
    if args.new_callout_seed:
        print(new_issuer_seed())
        return 0
    platform, secret = os.environ.get("KILN_NATS_PLATFORM_PASSWORD", ""), os.environ.get("KILN_NATS_APP_SECRET", "")
    if args.callout:
        try:
            config = callout_server_config(platform, os.environ.get("KILN_NATS_CALLOUT_SEED", ""))
        except ValueError as exc:
            print(f"python -m kiln_platform.natsauth: KILN_NATS_CALLOUT_SEED: {exc}", file=sys.stderr)
            return 2
        if not platform:
            print("python -m kiln_platform.natsauth: set KILN_NATS_PLATFORM_PASSWORD", file=sys.stderr)
            return 2
        print(json.dumps(config, indent=1))
        return 0
    if not platform or not secret:
        print("python -m kiln_platform.natsauth: set KILN_NATS_PLATFORM_PASSWORD and KILN_NATS_APP_SECRET", file=sys.stderr)
        return 2
    print(json.dumps(server_config(platform, secret, args.app), indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
