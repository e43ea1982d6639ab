"""Each app's keys as the service uses them: the current one (made on first use), the published ones.

:class:`Keyring` sits over a :class:`~identity_svc.store.KeyStore` with an injected clock. It keeps opened keys
in memory (bounded, least recently used first out), and within one process makes each period's key once; across
replicas the store's insert-if-absent decides (:mod:`identity_svc.keys`). Using an app's current key also makes its
next period's key, in the background, so that its certificate is published (and cached by whoever verifies) before
the key signs anything, even for clients that only ever look certificates up.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import logging
import time
from collections.abc import Callable

from cryptography.hazmat.primitives.asymmetric import rsa

from identity_svc import errors, keys
from identity_svc.store import KeyStore

log = logging.getLogger(__name__)

DEFAULT_CACHE_KEYS = 4096


class Keyring:
    """The keys of every app (module docstring)."""

    def __init__(self, store: KeyStore, sealer: keys.Sealer, rotation: keys.Rotation, *, token_seconds: int,
                 clock: Callable[[], float] = time.time, cache_keys: int = DEFAULT_CACHE_KEYS) -> None:
        self._store = store
        self._sealer = sealer
        self.rotation = rotation
        self._token_seconds = token_seconds
        self._clock = clock
        self._cache_keys = cache_keys
        self._opened: collections.OrderedDict[tuple[str, int], tuple[keys.StoredKey, rsa.RSAPrivateKey]] = (
            collections.OrderedDict())
        self._making: dict[tuple[str, int], asyncio.Lock] = {}
        self._ahead: set[asyncio.Task[object]] = set()

    def now(self) -> float:
        return self._clock()

    async def current(self, app: str) -> tuple[keys.StoredKey, rsa.RSAPrivateKey]:
        """The app's key for the period now, made if it has none yet, and its private key (the next period's is made
        in the background)."""
        start = self.rotation.start(self._clock())
        found = await self._key(app, start)
        upcoming = (app, start + self.rotation.seconds)
        if upcoming not in self._opened and upcoming not in self._making:
            task: asyncio.Task[object] = asyncio.create_task(self._key(*upcoming))
            self._ahead.add(task)
            task.add_done_callback(self._made_ahead)
        return found

    def _made_ahead(self, task: asyncio.Task[object]) -> None:
        self._ahead.discard(task)
        if not task.cancelled() and task.exception() is not None:
            log.error("making an app's next key ahead of time failed", exc_info=task.exception())

    async def settle(self) -> None:
        """Wait for the keys being made ahead of time."""
        while self._ahead:
            await asyncio.wait(set(self._ahead))

    async def close(self) -> None:
        """Stop making keys ahead of time (before the store closes)."""
        for task in list(self._ahead):
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def published(self, app: str) -> list[keys.StoredKey]:
        """The keys whose certificates the app publishes: current, next (both made if missing), previous."""
        start, period = self.rotation.start(self._clock()), self.rotation.seconds
        current, _ = await self._key(app, start)
        upcoming, _ = await self._key(app, start + period)
        return [current, upcoming, *self._previous(await self._store.since(app, start - period), start)]

    async def published_existing(self, app: str) -> list[keys.StoredKey]:
        """The same as :meth:`published`, without making any key (for lookups by anyone)."""
        start, period = self.rotation.start(self._clock()), self.rotation.seconds
        found = [k for k in await self._store.since(app, start - period) if k.period_start <= start + period]
        first = [k for k in found if k.period_start == start] + [k for k in found if k.period_start == start + period]
        return first + self._previous(found, start)

    @staticmethod
    def _previous(found: list[keys.StoredKey], start: int) -> list[keys.StoredKey]:
        return [k for k in found if k.period_start < start]

    async def _key(self, app: str, start: int) -> tuple[keys.StoredKey, rsa.RSAPrivateKey]:
        slot = (app, start)
        found = self._cached(slot)
        if found is not None:
            return found
        lock = self._making.setdefault(slot, asyncio.Lock())
        try:
            async with lock:
                found = self._cached(slot)
                if found is not None:
                    return found
                stored = await self._store.find(app, start)
                if stored is None:
                    made, _ = await asyncio.get_running_loop().run_in_executor(
                        None, keys.new_key, app, start, self.rotation, self._token_seconds, self._sealer)
                    stored = await self._store.add(made)  # another replica's, if it stored one first
                try:
                    opened = (stored, self._sealer.open(stored))
                except keys.SealError as exc:
                    raise errors.KeySecretMismatchError(str(exc)) from None
                self._opened[slot] = opened
                while len(self._opened) > self._cache_keys:
                    self._opened.popitem(last=False)
                return opened
        finally:
            if not lock.locked():
                self._making.pop(slot, None)

    def _cached(self, slot: tuple[str, int]) -> tuple[keys.StoredKey, rsa.RSAPrivateKey] | None:
        found = self._opened.get(slot)
        if found is not None:
            self._opened.move_to_end(slot)
        return found
