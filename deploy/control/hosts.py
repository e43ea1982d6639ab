"""Which runtimes the cluster can run: the live runtime hosts and the Pythons each has.

Every runtime host publishes a :class:`~kiln.pb.deploy.v1.events_pb2.HostHeartbeat` on
:data:`kiln_platform.bus.DEPLOY_HOST_SUBJECT` every few seconds (``runtime/host.py``): the Pythons it found
(:mod:`kiln_platform.interpreters`, the lookup its instance managers make) and kiln's own, which ``python27`` apps
run on. Only the platform's NATS user may publish there (:mod:`kiln_platform.natsauth`), and every control plane
replica hears every host, so each replica knows the same hosts without a shared table. A host is live until its
heartbeat's ``ttl_seconds`` have passed without another.

The control plane refuses a version no live host can run (:meth:`Hosts.check`), as App Engine does not accept a
runtime it cannot run. With no live host at all it refuses too — nothing would run the version, and the deploy
could not say whether anything ever will — naming the fix: start a runtime host, or deploy with
``kiln deploy --no-host-check`` (``CreateVersionRequest.skip_host_check``) when the hosts come later.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable

from kiln_platform import appyaml
from kiln.errors import BadRequestError, FailedPreconditionError
from kiln.pb.deploy.v1 import deploy_pb2 as pb
from kiln.pb.deploy.v1 import events_pb2

# A heartbeat claiming longer than this is held to it (a host that died is forgotten within the hour at worst).
MAX_TTL_SECONDS = 3600.0
MAX_HOSTS_NAMED = 10  # in a refusal; the rest are counted


@dataclasses.dataclass(frozen=True)
class Host:
    """One live host as its last heartbeat described it."""

    name: str
    python_versions: frozenset[str]
    own_python_version: str
    expires: float  # on the registry's clock

    def python_for(self, version: tuple[int, int] | None) -> str | None:
        """The Python this host runs a version on (``None``: kiln's own, for python27), or None if it has none."""
        if version is None:
            return self.own_python_version or None
        wanted = f"{version[0]}.{version[1]}"
        return wanted if wanted in self.python_versions else None

    def describe(self) -> str:
        return f"{self.name} ({', '.join(f'python{v}' for v in sorted(self.python_versions, key=_version_key))})"


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(p) if p.isdigit() else 0 for p in version.split("."))


class Hosts:
    """The live runtime hosts (see module docstring); ``clock`` is monotonic seconds (injected by tests)."""

    def __init__(self, *, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._hosts: dict[str, Host] = {}

    def observe(self, beat: events_pb2.HostHeartbeat) -> None:
        """Record a heartbeat (the newest one of a host replaces what it said before)."""
        if not beat.host:
            return
        ttl = min(max(beat.ttl_seconds, 0.0), MAX_TTL_SECONDS)
        self._hosts[beat.host] = Host(beat.host, frozenset(beat.python_versions), beat.own_python_version,
                                      self._clock() + ttl)

    def live(self) -> list[Host]:
        """The hosts heard from within their ttl, sorted by name (the others are forgotten)."""
        now = self._clock()
        for name in [n for n, h in self._hosts.items() if h.expires <= now]:
            del self._hosts[name]
        return sorted(self._hosts.values(), key=lambda h: h.name)

    def check(self, runtime: str) -> list[pb.HostRuntime]:
        """The live hosts that can run ``runtime``, with the Python each would use.

        Raises:
            BadRequestError: ``runtime`` is not one kiln runs.
            FailedPreconditionError: no live host can run it; the message names the runtime, the interpreter it
                needs, the hosts there are and the fix.
        """
        version = python_version(runtime)
        hosts = self.live()
        able = [pb.HostRuntime(host=h.name, python_version=found) for h in hosts
                if (found := h.python_for(version)) is not None]
        if able:
            return able
        needs = "kiln's own Python" if version is None else f"python{version[0]}.{version[1]}"
        if not hosts:
            raise FailedPreconditionError(
                f"runtime {runtime}: no runtime host is live (none has reported to the control plane), so nothing "
                f"would run this version; start python -m runtime.host on a machine with {needs}, or deploy anyway "
                "with kiln deploy --no-host-check (the version waits for a host that can run it)")
        named = ", ".join(h.describe() for h in hosts[:MAX_HOSTS_NAMED])
        more = f" and {len(hosts) - MAX_HOSTS_NAMED} more" if len(hosts) > MAX_HOSTS_NAMED else ""
        install = f"pyenv install {version[0]}.{version[1]}" if version is not None else "restart it"
        raise FailedPreconditionError(
            f"runtime {runtime} needs {needs}, which no runtime host has: the hosts are {named}{more}. Install it "
            f"on a host ({install}; the host reports it within a minute), or use a runtime the hosts have")


def python_version(runtime: str) -> tuple[int, int] | None:
    """The Python ``runtime`` names, by app.yaml's rule (``None``: python27, kiln's own).

    Raises:
        BadRequestError: not a runtime kiln runs.
    """
    found = appyaml.RUNTIME_RE.match(runtime)
    version = None if found is None or found.group(2) is None else (3, int(found.group(2)))
    if found is None or (version is not None and version < appyaml.MIN_PYTHON3):
        raise BadRequestError(f"runtime {runtime[:40]!r}: kiln runs python27 and python3NN from python311 on")
    return version
