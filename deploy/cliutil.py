"""What every ``kiln`` command shares: connection options, output (text or ``--json``, colours only on a
terminal), and errors on one line with the fix.

Exit status: 0 done; 1 the control plane or a service refused or could not be
reached; 2 bad usage or a local file is invalid.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TextIO, cast

import grpc

from kiln.errors import ERROR_CODE_KEY, KilnError

DEFAULT_CONTROL_PLANE = "127.0.0.1:50060"
EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2

# What to do about each refusal, after the server's own message.
_FIXES = {
    grpc.StatusCode.UNAUTHENTICATED: "pass a deploy token with --token or KILN_TOKEN (your operator mints it)",
    grpc.StatusCode.UNAVAILABLE: "is it running there? check --control-plane (KILN_CONTROL_PLANE) or the service address",
    grpc.StatusCode.DEADLINE_EXCEEDED: "the control plane is slow or unreachable; try again",
}


def add_connection(parser: argparse.ArgumentParser, *, app: bool = True) -> None:
    """``--control-plane``, ``--token``, ``--app`` and ``--json``."""
    parser.add_argument("--control-plane", default=os.environ.get("KILN_CONTROL_PLANE", DEFAULT_CONTROL_PLANE),
                        metavar="HOST:PORT", help="the control plane (default: KILN_CONTROL_PLANE, else %(default)s)")
    parser.add_argument("--token", default=os.environ.get("KILN_TOKEN", ""),
                        help="your deploy token for the app (default: KILN_TOKEN)")
    if app:
        parser.add_argument("--app", default=os.environ.get("KILN_APP", ""),
                            help="the app id (default: KILN_APP)")
    parser.add_argument("--json", action="store_true", help="print machine-readable JSON instead of text")


class Output:
    """Prints results: text (coloured only on a terminal, and never with NO_COLOR) or JSON."""

    def __init__(self, *, as_json: bool, stream: TextIO | None = None) -> None:
        self.stream = stream or sys.stdout
        self.as_json = as_json
        self.color = self.stream.isatty() and not os.environ.get("NO_COLOR") and os.environ.get("TERM") != "dumb"

    def paint(self, text: str, code: str) -> str:
        return f"\033[{code}m{text}\033[0m" if self.color else text

    def bold(self, text: str) -> str:
        return self.paint(text, "1")

    def green(self, text: str) -> str:
        return self.paint(text, "32")

    def yellow(self, text: str) -> str:
        return self.paint(text, "33")

    def json(self, value: Any) -> None:
        json.dump(value, self.stream, indent=2, sort_keys=True)
        self.stream.write("\n")

    def line(self, text: str) -> None:
        print(text, file=self.stream, flush=True)

    def table(self, headers: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        widths = [max(len(str(c)) for c in col) for col in zip(headers, *rows)]
        self.line(self.bold("  ".join(h.ljust(w) for h, w in zip(headers, widths)).rstrip()))
        for row in rows:
            self.line("  ".join(str(c).ljust(w) for c, w in zip(row, widths)).rstrip())


def fail(command: str, message: str, status: int = EXIT_FAILED) -> int:
    """Print ``kiln COMMAND: message`` on one line to stderr; return ``status``."""
    one_line = " ".join(message.split())
    print(f"kiln {command}: {one_line}", file=sys.stderr, flush=True)
    return status


def rpc_failure(command: str, exc: grpc.RpcError, where: str) -> int:
    """A refused call as one line: the server's message, then what to do."""
    code = exc.code() if hasattr(exc, "code") else grpc.StatusCode.UNKNOWN
    details = (exc.details() if hasattr(exc, "details") else "") or code.name
    fix = _FIXES.get(code)
    if code == grpc.StatusCode.UNAVAILABLE and not _from_kiln(exc):
        details = f"cannot reach {where}"
    return fail(command, f"{details}" + (f" — {fix}" if fix else ""))


def _from_kiln(exc: grpc.RpcError) -> bool:
    """A status a kiln server sent (with kiln's error code, e.g. the gateway naming a service it cannot reach)."""
    trailing = exc.trailing_metadata() if hasattr(exc, "trailing_metadata") else None
    return any(item[0] == ERROR_CODE_KEY for item in cast("Sequence[tuple[str, Any]]", trailing or ()))


def guarded(command: str, where: Callable[[], str], body: Callable[[], int]) -> int:
    """Run ``body``, turning refusals and local errors into one-line messages and exit statuses."""
    try:
        return body()
    except grpc.RpcError as exc:
        return rpc_failure(command, exc, where())
    except KilnError as exc:
        return fail(command, str(exc), EXIT_USAGE)
    except OSError as exc:
        return fail(command, f"{exc.filename or ''}: {exc.strerror or exc}".lstrip(": "), EXIT_USAGE)


Metadata = tuple[tuple[str, str], ...]
APP_METADATA_KEY = "kiln-app"  # the app a call through the control plane's gateway acts on (deploy/control/gateway.py)


def metadata(token: str) -> Metadata:
    return (("authorization", f"Bearer {token}"),)


def app_metadata(args: Any, app_id: str = "") -> Metadata:
    """A call to an app's service through the control plane's gateway: the deploy token and the app."""
    return (*metadata(args.token), (APP_METADATA_KEY, app_id or args.app))


def app_of_token(token: str) -> str:
    """The one app a deploy token (``kiln1.APP.SCOPE.NAME.MAC``) names, or "" (every app, or not a token).

    Read without verifying: it only fills in ``--app``; the control plane verifies the token.
    """
    parts = token.split(".")
    return parts[1] if len(parts) == 5 and parts[0] == "kiln1" and parts[1] != "*" else ""


def missing_credentials(command: str, args: Any, *, app: bool = True) -> int | None:
    """The exit status and message when ``--app`` (if needed) or ``--token`` is missing, else None."""
    if app and not args.app:
        args.app = app_of_token(args.token)
    if app and not args.app:
        return fail(command, "which app? pass --app APP or set KILN_APP (a token for one app names it)", EXIT_USAGE)
    if not args.token:
        return fail(command, "no deploy token; pass --token or set KILN_TOKEN (your operator mints it)", EXIT_USAGE)
    return None
