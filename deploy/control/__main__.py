"""``python -m deploy.control``: run the control plane; ``python -m deploy.control mint-token``: make a deploy token.

    python -m deploy.control [--storage embedded|cassandra] [--listen HOST:PORT] ...
    python -m deploy.control mint-token --app APP|'*' [--scope admin|read] --name WHO

The admin secret comes from ``KILN_CONTROL_ADMIN_SECRET`` (or ``--admin-secret``).
"""

from __future__ import annotations

import argparse
import os
import sys

from deploy.control import tokens
from deploy.control.app import serve
from deploy.control.config import ControlConfig
from kiln_platform import service_main


def mint_parser() -> argparse.ArgumentParser:
    """``python -m deploy.control mint-token``'s command line."""
    parser = argparse.ArgumentParser(prog="python -m deploy.control mint-token",
                                     description="Print a deploy token signed with KILN_CONTROL_ADMIN_SECRET.")
    parser.add_argument("--app", required=True, help="the app the token is for, or '*' for every app (operators, "
                                                     "and read tokens of routers, runtime hosts and cron)")
    parser.add_argument("--scope", choices=tokens.SCOPES, default="admin",
                        help="admin: deploy and manage the app; read: versions and files only (default admin)")
    parser.add_argument("--name", required=True, help="who holds it (shown as deployed_by), e.g. alice or router")
    return parser


def mint_token(argv: list[str]) -> int:
    args = mint_parser().parse_args(argv)
    secret = os.environ.get("KILN_CONTROL_ADMIN_SECRET", "")
    if not secret:
        print("mint-token: set KILN_CONTROL_ADMIN_SECRET to the control plane's admin secret", file=sys.stderr)
        return 2
    try:
        print(tokens.mint(secret, args.app, args.scope, args.name))
    except ValueError as exc:
        print(f"mint-token: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    if sys.argv[1:2] == ["mint-token"]:
        raise SystemExit(mint_token(sys.argv[2:]))
    raise SystemExit(service_main.run("deploy.control", ControlConfig, serve))
