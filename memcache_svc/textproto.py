"""The memcached text protocol, so standard memcached clients and tools can use a shard.

It has no authentication, so a listener serves one app's cache (namespace
""), chosen by configuration; it should listen only where that app's trusted
tools run. Supported: get/gets, set/add/replace/append/prepend/cas, delete,
incr/decr, touch, flush_all, stats, version, quit, with ``noreply``. Lines are
at most 2048 bytes and values at most 1,000,000; malformed commands get
``CLIENT_ERROR``/``ERROR`` and the connection goes on (it is closed only when
a value's length cannot be trusted).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from memcache_svc.store import MAX_KEY_BYTES, MAX_VALUE_BYTES, Cache, Key

log = logging.getLogger(__name__)

MAX_LINE = 2048
VERSION = b"VERSION kiln-memcache 0.1\r\n"
_STORE = {b"set": "set", b"add": "add", b"replace": "replace", b"append": "append", b"prepend": "prepend",
          b"cas": "cas"}


class _Reject(Exception):
    """A client error answered with CLIENT_ERROR; ``close`` when the stream can no longer be parsed."""

    def __init__(self, message: str, close: bool = False) -> None:
        super().__init__(message)
        self.close = close


def _key(raw: bytes) -> bytes:
    if not raw or len(raw) > MAX_KEY_BYTES or any(c <= 32 or c == 127 for c in raw):
        raise _Reject("bad key")
    return raw


def _number(raw: bytes, what: str) -> int:
    if not raw.isdigit():
        raise _Reject(f"bad {what}")
    return int(raw)


class _Session:
    def __init__(self, cache: Cache, app: str, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._cache, self._app, self._reader, self._writer = cache, app, reader, writer

    def _k(self, key: bytes) -> Key:
        return (self._app, "", key)

    async def run(self) -> None:
        while True:
            try:
                line = await self._reader.readuntil(b"\r\n")
            except asyncio.LimitOverrunError:
                self._writer.write(b"CLIENT_ERROR line too long\r\n")
                return
            except asyncio.IncompleteReadError:
                return
            parts = line[:-2].split()
            if not parts:
                self._writer.write(b"ERROR\r\n")
                continue
            try:
                if await self._command(parts) is False:
                    return
            except _Reject as exc:
                self._writer.write(f"CLIENT_ERROR {exc}\r\n".encode())
                if exc.close:
                    return
            await self._writer.drain()

    async def _command(self, parts: list[bytes]) -> bool:
        cmd, args = parts[0].lower(), parts[1:]
        noreply = bool(args) and args[-1] == b"noreply"
        if noreply:
            args = args[:-1]
        reply: bytes
        if cmd in (b"get", b"gets"):
            if not args:
                raise _Reject("no key")
            self._get([_key(a) for a in args], cmd == b"gets")
            return True
        if cmd in _STORE:
            reply = await self._store(_STORE[cmd], args)
        elif cmd == b"delete":
            if len(args) != 1:
                raise _Reject("usage: delete <key> [noreply]")
            reply = b"DELETED\r\n" if self._cache.delete(self._k(_key(args[0]))) else b"NOT_FOUND\r\n"
        elif cmd in (b"incr", b"decr"):
            reply = self._incr(cmd == b"decr", args)
        elif cmd == b"touch":
            if len(args) != 2:
                raise _Reject("usage: touch <key> <exptime> [noreply]")
            found = self._cache.touch(self._k(_key(args[0])), _number(args[1], "exptime"))
            reply = b"TOUCHED\r\n" if found else b"NOT_FOUND\r\n"
        elif cmd == b"flush_all":
            self._cache.flush(self._app, reset_stats=False)  # memcached keeps its counters
            reply = b"OK\r\n"
        elif cmd == b"stats":
            reply = self._stats()
        elif cmd == b"version":
            reply = VERSION
        elif cmd == b"quit":
            return False
        else:
            reply = b"ERROR\r\n"
        if not noreply:
            self._writer.write(reply)
        return True

    def _get(self, keys: list[bytes], with_cas: bool) -> None:
        out = []
        for key in keys:
            item = self._cache.get(self._k(key))
            if item is not None:
                cas = f" {item.cas}" if with_cas else ""
                out.append(f"VALUE {key.decode('latin-1')} {item.flags} {len(item.value)}{cas}\r\n".encode("latin-1")
                           + item.value + b"\r\n")
        self._writer.write(b"".join(out) + b"END\r\n")

    async def _store(self, policy: str, args: list[bytes]) -> bytes:
        want = 5 if policy == "cas" else 4
        if len(args) != want:
            raise _Reject(f"usage: {policy} <key> <flags> <exptime> <bytes>{' <cas>' if policy == 'cas' else ''}",
                          close=len(args) >= 4)
        size = _number(args[3], "data length") if args[3].isdigit() else -1
        if size < 0 or size > MAX_VALUE_BYTES:
            # The value's length cannot be trusted: the rest of the stream cannot be parsed.
            raise _Reject("object too large for cache" if size > MAX_VALUE_BYTES else "bad data chunk", close=True)
        try:
            data = await self._reader.readexactly(size + 2)
        except asyncio.IncompleteReadError:
            raise _Reject("bad data chunk", close=True) from None
        if data[-2:] != b"\r\n":
            raise _Reject("bad data chunk", close=True)
        key, value = self._k(_key(args[0])), data[:-2]
        flags, exptime = _number(args[1], "flags"), _number(args[2], "exptime")
        if flags >= 2**32:
            raise _Reject("bad flags")
        if policy in ("append", "prepend"):
            current = self._cache.get(key, count=False)
            if current is None:
                return b"NOT_STORED\r\n"
            value = current.value + value if policy == "append" else value + current.value
            if len(value) > MAX_VALUE_BYTES:
                return b"SERVER_ERROR object too large for cache\r\n"
            result = self._cache.set(key, value, current.flags, 0, "cas", current.cas)
        else:
            cas = _number(args[4], "cas") if policy == "cas" else 0
            result = self._cache.set(key, value, flags, exptime, policy, cas)
            if policy == "cas" and result == "NOT_STORED":
                return b"NOT_FOUND\r\n"
        return f"{result}\r\n".encode()

    def _incr(self, decrement: bool, args: list[bytes]) -> bytes:
        if len(args) != 2:
            raise _Reject("usage: incr|decr <key> <value> [noreply]")
        delta = _number(args[1], "delta")
        if delta >= 2**64:
            raise _Reject("invalid numeric delta argument")
        try:
            new = self._cache.incr(self._k(_key(args[0])), delta, decrement, None)
        except ValueError:
            raise _Reject("cannot increment or decrement non-numeric value") from None
        return b"NOT_FOUND\r\n" if new is None else f"{new}\r\n".encode()

    def _stats(self) -> bytes:
        stats, oldest = self._cache.stats(self._app)
        lines = [f"STAT get_hits {stats.hits}", f"STAT get_misses {stats.misses}", f"STAT curr_items {stats.items}",
                 f"STAT bytes {stats.bytes}", f"STAT limit_maxbytes {self._cache.max_bytes}",
                 f"STAT oldest_item_age {oldest}"]
        return ("\r\n".join(lines) + "\r\nEND\r\n").encode()


async def start(cache: Cache, app: str, host: str, port: int) -> asyncio.Server:
    """Listen for memcached text protocol clients."""

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            await _Session(cache, app, reader, writer).run()
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        except ConnectionError:
            pass
        except Exception:  # noqa: BLE001 - one client's failure must not stop the listener
            log.exception("memcached text protocol session failed")
        finally:
            writer.close()

    return await asyncio.start_server(handle, host, port, limit=MAX_LINE)
