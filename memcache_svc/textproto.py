"""The memcached text protocol, so standard memcached clients and tools can use a shard.

It has no authentication, so a listener serves one app's cache (namespace
""), chosen by configuration; it should listen only where that app's trusted
tools run.

It answers as memcached 1.6 does, byte for byte (tests/integration/test_memcached_bytes.py plays
the same bytes to both): get/gets/gat/gats, set/add/replace/append/prepend/cas, delete, incr/decr,
touch, flush_all (with a delay), stats (general, settings, reset, items/slabs/sizes/conns/detail),
version, verbosity, cache_memlimit, quit, shutdown, ``noreply``, and the meta commands mg, ms, md,
ma, mn with the flags listed in ``_META_FLAGS``. Lines end in ``\\r\\n`` or a bare ``\\n``; a line
with no end after 2,048 bytes closes the connection unless it is a get (up to ``MAX_GET_LINE``).
Malformed commands get memcached's ``ERROR``/``CLIENT_ERROR``; a value over the size limit gets
``SERVER_ERROR object too large for cache``, its data is skipped and the connection goes on.

Where kiln cannot or must not do what memcached does, it says so (README, "Memcache"): values are
at most 1,000,000 bytes (App Engine's limit, memcached's is 1 MiB with the item's header);
``cache_memlimit`` and ``verbosity`` are checked and answered but change nothing (the shard's bound
is its operator's, and this port has no authentication); meta flags that need memcached's
item-level bookkeeping (stale items, win tokens, fetched bits) are refused as invalid.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import time
import typing
from collections.abc import Awaitable, Callable

from memcache_svc.store import MAX_KEY_BYTES, MAX_VALUE_BYTES, THIRTY_DAYS, Cache, Item, Key

log = logging.getLogger(__name__)

MAX_LINE = 2048  # a line with no end beyond this closes the connection, as memcached's (gets excepted)
MAX_GET_LINE = 2 * 1024 * 1024  # a multi-key get line: about 8,000 keys of 250 bytes
READ_CHUNK = 16384  # memcached's read buffer
MAX_QUEUED_ANSWERS = 256 * 1024  # answers to a pipeline are written when input runs out, or at this size
VERSION = "1.6.18-kiln"
_EXPIRED = THIRTY_DAYS + 1  # an absolute time long past: memcached's rule for negative exptimes
_U32, _U64 = 2**32, 2**64
_I32_MAX = 2**31 - 1
_META_MAX_TOKENS = 19  # memcached: at most 20 tokens counting the terminator
_META_MAX_OPAQUE = 32

# C's strtol/strtoul as memcached uses them: leading white space, a sign, digits, then the end or white space.
_C_NUMBER = re.compile(rb"[ \t\n\v\f\r]*([+-]?)([0-9]+)(?:[ \t\n\v\f\r].*)?", re.DOTALL)


def _strtoul(raw: bytes, bits: int) -> int | None:
    """memcached's safe_strtoul/safe_strtoull: None where it refuses. A minus sign is allowed only where the
    two's-complement result is not negative (so ``-0``), as C's unsigned conversion does."""
    match = _C_NUMBER.fullmatch(raw)
    if match is None:
        return None
    value = int(match[2])
    if value >= _U64:
        return None  # ERANGE
    if match[1] == b"-":
        value = (-value) % _U64
        if value >= 2**63:
            return None
    return int(value % (2**bits))


def _strtol(raw: bytes) -> int | None:
    """memcached's safe_strtol into a 32-bit int: None where it refuses."""
    match = _C_NUMBER.fullmatch(raw)
    if match is None:
        return None
    value = -int(match[2]) if match[1] == b"-" else int(match[2])
    if not -(2**63) <= value < 2**63:
        return None  # ERANGE
    value %= _U32  # memcached stores C's long into an int32_t: it wraps
    return value - _U32 if value > _I32_MAX else value


def _exptime(value: int) -> int:
    """A protocol exptime as the store takes it: negative ones expire at once."""
    return _EXPIRED if value < 0 else value


class _Close(Exception):
    """The connection ends here (quit, an HTTP request, an unparsable stream, the client went away)."""


@dataclasses.dataclass
class Counters:
    """What ``stats`` reports beyond the store's own numbers: per listener (one app)."""

    started: float = dataclasses.field(default_factory=time.time)
    curr_connections: int = 0
    total_connections: int = 0
    cmd_get: int = 0
    cmd_set: int = 0
    cmd_flush: int = 0
    cmd_touch: int = 0
    touch_hits: int = 0
    touch_misses: int = 0
    delete_hits: int = 0
    delete_misses: int = 0
    incr_hits: int = 0
    incr_misses: int = 0
    decr_hits: int = 0
    decr_misses: int = 0
    cas_hits: int = 0
    cas_misses: int = 0
    cas_badval: int = 0

    def reset(self) -> None:
        for name in [f.name for f in dataclasses.fields(self)][3:]:
            setattr(self, name, 0)


class _Meta:
    """The flags of one meta command, checked as memcached's _meta_flag_preparse does: a repeated or unknown flag
    ends the check; a bad number marks an error and the last such message is the one answered."""

    _NUMBERS: typing.ClassVar[dict[str, str]] = {"T": "CLIENT_ERROR bad token in command line format", "N": "CLIENT_ERROR bad token in command line "
                "format", "C": "CLIENT_ERROR bad token in command line format", "F": "",
                "J": "CLIENT_ERROR invalid numeric initial value", "D": "CLIENT_ERROR invalid numeric delta value"}

    def __init__(self, tokens: list[bytes], accepted: str = "") -> None:
        self.tokens = tokens
        self.flags: dict[int, bytes] = {}
        self.error = ""
        failed, message = False, "CLIENT_ERROR bad command line format"
        for token in tokens:
            flag, value = token[0], token[1:]
            if flag >= 127 or flag in self.flags:
                self.error = "CLIENT_ERROR duplicate flag"
                return
            self.flags[flag] = value
            letter = chr(flag)
            if letter not in _META_FLAGS + accepted:
                self.error = "CLIENT_ERROR invalid flag"
                return
            if letter in self._NUMBERS and self._parse(letter, value) is None:
                failed, message = True, self._NUMBERS[letter] or message
            elif letter == "M" and len(value) != 1:
                failed, message = True, "CLIENT_ERROR incorrect length for M token"
        if failed:
            self.error = message

    @staticmethod
    def _parse(letter: str, raw: bytes) -> int | None:
        if letter in "TN":
            return _strtol(raw)
        return _strtoul(raw, 32 if letter == "F" else 64)

    def opaque_too_long(self) -> bool:
        return any(t[:1] == b"O" and len(t) > _META_MAX_OPAQUE for t in self.tokens)

    def has(self, flag: str) -> bool:
        return ord(flag) in self.flags

    def number(self, flag: str, default: int = 0) -> int:
        raw = self.flags.get(ord(flag))
        if raw is None:
            return default
        value = self._parse(flag, raw)
        assert value is not None  # checked in __init__
        return value

    def mode(self) -> str:
        raw = self.flags.get(ord("M"), b"")
        return raw.decode("latin-1")

    def echo(self, key: bytes) -> bytes:
        """The opaque and key flags echoed back, in the order they were given."""
        out = b""
        for token in self.tokens:
            if token[:1] == b"O":
                out += b" " + token
            elif token[:1] == b"k":
                out += b" k" + key
        return out


# Meta flags kiln answers (and ``N`` for ma); memcached's others -- b (base64 keys), N (mg's win tokens), R, I
# (stale items), h, l, u (fetched bits, access times, no LRU bump) -- need item bookkeeping kiln's store does not
# keep, and are refused as invalid flags.
_META_FLAGS = "OPLkstcfvqTFCMJD"


class _Session:
    """One client connection: reads command lines and data blocks from its own buffer (so it sees the stream as
    memcached does: any split, any pipeline), answers each command, and writes the answers when input runs out."""

    def __init__(self, cache: Cache, app: str, counters: Counters, flush: Callable[[int], None],
                 reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._cache, self._app, self._counters = cache, app, counters
        self._flush = flush
        self._reader, self._writer = reader, writer
        self._buf = bytearray()
        self._out: list[bytes] = []  # answers not yet written
        self._out_bytes = 0
        self._scanned = 0  # bytes of _buf known to hold no newline
        self._commands: dict[bytes, Callable[[list[bytes]], Awaitable[bytes]]] = {
            b"get": self._get, b"gets": self._get, b"gat": self._get, b"gats": self._get, b"bget": self._get,
            b"set": self._update, b"add": self._update, b"replace": self._update, b"append": self._update,
            b"prepend": self._update, b"cas": self._update, b"delete": self._delete, b"incr": self._arith,
            b"decr": self._arith, b"touch": self._touch, b"flush_all": self._flush_all, b"stats": self._stats,
            b"version": self._version, b"verbosity": self._verbosity, b"cache_memlimit": self._memlimit,
            b"quit": self._quit, b"shutdown": self._shutdown, b"mg": self._mg, b"ms": self._ms, b"md": self._md,
            b"ma": self._ma, b"mn": self._mn,
        }

    def _k(self, key: bytes) -> Key:
        return (self._app, "", key)

    # ------------------------------------------------------------ the stream

    async def run(self) -> None:
        try:
            while True:
                line = await self._line()
                answer = await self._command(line)
                if answer:
                    self._out.append(answer)
                    self._out_bytes += len(answer)
                    if self._out_bytes > MAX_QUEUED_ANSWERS:
                        await self._send()
        except _Close:
            self._writer.write(b"".join(self._out))  # what was answered before the end still goes out

    async def _send(self) -> None:
        self._writer.write(b"".join(self._out))
        self._out.clear()
        self._out_bytes = 0
        await self._writer.drain()

    async def _fill(self) -> None:
        if self._out:
            await self._send()  # answers to pipelined commands go out together, before waiting for more
        chunk = await self._reader.read(READ_CHUNK)
        if not chunk:
            raise _Close
        self._buf += chunk

    async def _line(self) -> bytes:
        """The next command line without its end (``\\r\\n`` or ``\\n``), as memcached reads it."""
        while True:
            end = self._buf.find(b"\n", self._scanned)
            if end >= 0:
                cut = end - 1 if end > 1 and self._buf[end - 1] == 13 else end
                line = bytes(self._buf[:cut])
                del self._buf[:end + 1]
                self._scanned = 0
                return line
            self._scanned = len(self._buf)
            if len(self._buf) > MAX_LINE:
                start = len(self._buf) - len(self._buf.lstrip(b" "))
                head = self._buf[start:start + 5]
                if start > 100 or not (head[:4] == b"get " or head == b"gets "):
                    raise _Close  # memcached drops a client whose line has no end
                if len(self._buf) > MAX_GET_LINE:
                    self._out.append(b"CLIENT_ERROR line too long\r\n")
                    raise _Close
            await self._fill()

    async def _data(self, size: int) -> bytes:
        while len(self._buf) < size:
            await self._fill()
        data = bytes(self._buf[:size])
        del self._buf[:size]
        return data

    async def _swallow(self, size: int) -> None:
        """Skip ``size`` bytes of data without holding them (a refused value)."""
        while size > 0:
            if not self._buf:
                await self._fill()
            taken = min(size, len(self._buf))
            del self._buf[:taken]
            size -= taken

    async def _command(self, line: bytes) -> bytes:
        tokens = [t for t in line.split(b" ") if t]
        if not tokens or len(tokens[0]) < 2:
            return b"ERROR\r\n"
        handler = self._commands.get(tokens[0])
        if handler is None:
            if tokens[-1].startswith(b"HTTP/"):
                raise _Close  # memcached hangs up on HTTP requests
            return b"ERROR\r\n"
        return await handler(tokens)

    @staticmethod
    def _noreply(tokens: list[bytes], reply: bytes) -> bytes:
        return b"" if tokens[-1] == b"noreply" else reply

    # ------------------------------------------------------------ retrieval

    async def _get(self, tokens: list[bytes]) -> bytes:
        cmd = tokens[0]
        if len(tokens) < 2:
            return b"ERROR\r\n"
        touch = cmd in (b"gat", b"gats")
        keys, exptime = tokens[1:], 0
        if touch:
            parsed = _strtol(tokens[1])
            if parsed is None:
                return b"CLIENT_ERROR invalid exptime argument\r\n"
            keys, exptime = tokens[2:], _exptime(parsed)
        if any(len(key) > MAX_KEY_BYTES for key in keys):
            return b"CLIENT_ERROR bad command line format\r\n"
        out = []
        for key in keys:
            item = self._cache.get(self._k(key))
            if touch:
                self._counters.cmd_touch += 1
                self._counters.touch_hits += item is not None
                self._counters.touch_misses += item is None
            else:
                self._counters.cmd_get += 1
            if item is None:
                continue
            cas = b" %d" % item.cas if cmd in (b"gets", b"gats") else b""
            out.append(b"VALUE %s %d %d%s\r\n%s\r\n" % (key, item.flags, len(item.value), cas, item.value))
            if touch:
                self._cache.touch(self._k(key), exptime)
        out.append(b"END\r\n")
        return b"".join(out)

    # ------------------------------------------------------------ storage

    async def _update(self, tokens: list[bytes]) -> bytes:
        policy = tokens[0].decode()
        want = 6 if policy == "cas" else 5
        if len(tokens) not in (want, want + 1):
            return b"ERROR\r\n"
        noreply = tokens[-1] == b"noreply"
        key = tokens[1]
        if len(key) > MAX_KEY_BYTES:
            return self._noreply(tokens, b"CLIENT_ERROR bad command line format\r\n")
        flags, exptime, size = _strtoul(tokens[2], 32), _strtol(tokens[3]), _strtol(tokens[4])
        cas = _strtoul(tokens[5], 64) if policy == "cas" else 0
        if flags is None or exptime is None or size is None or cas is None or not 0 <= size <= _I32_MAX - 2:
            return self._noreply(tokens, b"CLIENT_ERROR bad command line format\r\n")
        self._counters.cmd_set += 1
        if size > MAX_VALUE_BYTES:
            await self._swallow(size + 2)
            if policy == "set":
                self._cache.delete(self._k(key))  # as memcached: no stale value outlives a failed set
            return self._noreply(tokens, b"SERVER_ERROR object too large for cache\r\n")
        data = await self._data(size + 2)
        if data[-2:] != b"\r\n":
            return self._noreply(tokens, b"CLIENT_ERROR bad data chunk\r\n")
        reply = self._store(policy, self._k(key), data[:-2], flags, _exptime(exptime), cas)
        return b"" if noreply else reply

    def _store(self, policy: str, key: Key, value: bytes, flags: int, exptime: int, cas: int) -> bytes:
        if policy in ("append", "prepend"):
            current = self._cache.get(key, count=False)
            if current is None:
                return b"NOT_STORED\r\n"
            value = current.value + value if policy == "append" else value + current.value
            if len(value) > MAX_VALUE_BYTES:
                return b"SERVER_ERROR out of memory storing object\r\n"
            return f"{self._cache.set(key, value, current.flags, 0, 'cas', current.cas)}\r\n".encode()
        result = self._cache.set(key, value, flags, exptime, policy, cas)
        if policy == "cas":
            if result == "NOT_STORED":
                self._counters.cas_misses += 1
                return b"NOT_FOUND\r\n"
            self._counters.cas_badval += result == "EXISTS"
            self._counters.cas_hits += result == "STORED"
        return f"{result}\r\n".encode()

    # ------------------------------------------------------------ other item commands

    async def _delete(self, tokens: list[bytes]) -> bytes:
        if not 2 <= len(tokens) <= 4:
            return b"ERROR\r\n"
        if len(tokens) > 2:  # only "0" (App Engine's lock-out seconds have no place here) and noreply
            hold_is_zero, noreply = tokens[2] == b"0", tokens[-1] == b"noreply"
            if not ((len(tokens) == 3 and (hold_is_zero or noreply)) or (len(tokens) == 4 and hold_is_zero
                                                                        and noreply)):
                return self._noreply(tokens, b"CLIENT_ERROR bad command line format.  "
                                     b"Usage: delete <key> [noreply]\r\n")
        if len(tokens[1]) > MAX_KEY_BYTES:
            return self._noreply(tokens, b"CLIENT_ERROR bad command line format\r\n")
        found = self._cache.delete(self._k(tokens[1]))
        self._counters.delete_hits += found
        self._counters.delete_misses += not found
        return self._noreply(tokens, b"DELETED\r\n" if found else b"NOT_FOUND\r\n")

    async def _arith(self, tokens: list[bytes]) -> bytes:
        if len(tokens) not in (3, 4):
            return b"ERROR\r\n"
        decrement = tokens[0] == b"decr"
        if len(tokens[1]) > MAX_KEY_BYTES:
            return self._noreply(tokens, b"CLIENT_ERROR bad command line format\r\n")
        delta = _strtoul(tokens[2], 64)
        if delta is None:
            return self._noreply(tokens, b"CLIENT_ERROR invalid numeric delta argument\r\n")
        try:
            new = self._cache.incr(self._k(tokens[1]), delta, decrement, None, keep_width=True)
        except ValueError:
            return self._noreply(tokens, b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n")
        hit = new is not None
        if decrement:
            self._counters.decr_hits += hit
            self._counters.decr_misses += not hit
        else:
            self._counters.incr_hits += hit
            self._counters.incr_misses += not hit
        return self._noreply(tokens, b"NOT_FOUND\r\n" if new is None else b"%d\r\n" % new)

    async def _touch(self, tokens: list[bytes]) -> bytes:
        if len(tokens) not in (3, 4):
            return b"ERROR\r\n"
        if len(tokens[1]) > MAX_KEY_BYTES:
            return self._noreply(tokens, b"CLIENT_ERROR bad command line format\r\n")
        exptime = _strtol(tokens[2])
        if exptime is None:
            return self._noreply(tokens, b"CLIENT_ERROR invalid exptime argument\r\n")
        found = self._cache.touch(self._k(tokens[1]), _exptime(exptime))
        self._counters.cmd_touch += 1
        self._counters.touch_hits += found
        self._counters.touch_misses += not found
        return self._noreply(tokens, b"TOUCHED\r\n" if found else b"NOT_FOUND\r\n")

    # ------------------------------------------------------------ server commands

    async def _flush_all(self, tokens: list[bytes]) -> bytes:
        if len(tokens) > 3:
            return b"ERROR\r\n"
        noreply = tokens[-1] == b"noreply"
        self._counters.cmd_flush += 1
        delay = 0
        if len(tokens) != (2 if noreply else 1):
            parsed = _strtol(tokens[1])
            if parsed is None:
                return self._noreply(tokens, b"CLIENT_ERROR invalid exptime argument\r\n")
            delay = parsed
        self._flush(delay)
        return self._noreply(tokens, b"OK\r\n")

    async def _stats(self, tokens: list[bytes]) -> bytes:
        if len(tokens) == 1:
            return self._general_stats()
        sub = tokens[1]
        if sub == b"reset":
            self._cache.reset_counters(self._app)
            self._counters.reset()
            return b"RESET\r\n"
        if sub == b"detail":
            action = tokens[2] if len(tokens) > 2 else b""
            return {b"on": b"OK\r\n", b"off": b"OK\r\n", b"dump": b"END\r\n"}.get(
                action, b"CLIENT_ERROR usage: stats detail on|off|dump\r\n")
        if sub == b"settings":
            return self._lines([("maxbytes", self._cache.max_bytes), ("item_size_max", MAX_VALUE_BYTES),
                                ("evictions", "on"), ("cas_enabled", "yes"), ("flush_enabled", "yes")])
        if sub == b"cachedump":
            if len(tokens) < 4:
                return b"CLIENT_ERROR bad command line\r\n"
            slab, limit = _strtoul(tokens[2], 32), _strtoul(tokens[3], 32)
            if slab is None or limit is None:
                return b"CLIENT_ERROR bad command line format\r\n"
            return b"CLIENT_ERROR Illegal slab id\r\n" if slab >= 64 else b"END\r\n"  # no slab classes here
        if sub == b"sizes":
            return b"STAT sizes_status disabled\r\nEND\r\n"
        if sub in (b"items", b"slabs", b"conns"):
            return b"END\r\n"  # kiln has no slab classes; its items are reported by the general stats
        return b"ERROR\r\n"

    def _general_stats(self) -> bytes:
        stats, _ = self._cache.stats(self._app)
        c, now = self._counters, time.time()
        return self._lines([
            ("pid", os.getpid()), ("uptime", int(now - c.started)), ("time", int(now)), ("version", VERSION),
            ("pointer_size", 64), ("curr_connections", c.curr_connections),
            ("total_connections", c.total_connections), ("cmd_get", c.cmd_get), ("cmd_set", c.cmd_set),
            ("cmd_flush", c.cmd_flush), ("cmd_touch", c.cmd_touch), ("get_hits", stats.hits),
            ("get_misses", stats.misses), ("delete_misses", c.delete_misses), ("delete_hits", c.delete_hits),
            ("incr_misses", c.incr_misses), ("incr_hits", c.incr_hits), ("decr_misses", c.decr_misses),
            ("decr_hits", c.decr_hits), ("cas_misses", c.cas_misses), ("cas_hits", c.cas_hits),
            ("cas_badval", c.cas_badval), ("touch_hits", c.touch_hits), ("touch_misses", c.touch_misses),
            ("threads", 1), ("bytes", stats.bytes), ("curr_items", stats.items),
            ("limit_maxbytes", self._cache.max_bytes)])

    @staticmethod
    def _lines(pairs: list[tuple[str, object]]) -> bytes:
        return "".join(f"STAT {name} {value}\r\n" for name, value in pairs).encode() + b"END\r\n"

    async def _version(self, tokens: list[bytes]) -> bytes:
        return f"VERSION {VERSION}\r\n".encode()

    async def _verbosity(self, tokens: list[bytes]) -> bytes:
        if len(tokens) not in (2, 3):
            return b"ERROR\r\n"
        if _strtoul(tokens[1], 32) is None:
            return self._noreply(tokens, b"CLIENT_ERROR bad command line format\r\n")
        return self._noreply(tokens, b"OK\r\n")  # kiln's logging is its operator's; accepted, changes nothing

    async def _memlimit(self, tokens: list[bytes]) -> bytes:
        if len(tokens) not in (2, 3):
            return b"ERROR\r\n"
        megabytes = _strtoul(tokens[1], 32)
        if megabytes is None:
            return self._noreply(tokens, b"ERROR\r\n")
        if megabytes < 8:
            return self._noreply(tokens, b"MEMLIMIT_TOO_SMALL cannot set maxbytes to less than 8m\r\n")
        if megabytes > 1_000_000_000:
            return self._noreply(tokens, b"MEMLIMIT_ADJUST_FAILED input value is megabytes not bytes\r\n")
        # The shard's bound (--max-bytes) is its operator's and shared by every app: checked, answered, kept.
        return self._noreply(tokens, b"OK\r\n")

    async def _quit(self, tokens: list[bytes]) -> bytes:
        raise _Close

    async def _shutdown(self, tokens: list[bytes]) -> bytes:
        return b"ERROR: shutdown not enabled\r\n"

    # ------------------------------------------------------------ meta commands

    def _meta_head(self, tokens: list[bytes], first_flag: int, accepted: str = "") -> tuple[_Meta | None, bytes]:
        """The parsed flags, or the error answer memcached gives before it looks at the item."""
        if len(tokens) < 2:
            return None, b"ERROR\r\n"
        if len(tokens[1]) > MAX_KEY_BYTES:
            return None, b"CLIENT_ERROR bad command line format\r\n"
        if len(tokens) > _META_MAX_TOKENS:
            return None, b"CLIENT_ERROR options flags are too long\r\n"
        return _Meta(tokens[first_flag:], accepted), b""

    def _item_flags(self, meta: _Meta, key: bytes, item: Item) -> bytes:
        out = b""
        for token in meta.tokens:
            flag = token[:1]
            if flag == b"s":
                out += b" s%d" % len(item.value)
            elif flag == b"t":
                out += b" t-1" if not item.expires else b" t%d" % max(int(item.expires - time.time() + 0.5), 0)
            elif flag == b"c":
                out += b" c%d" % item.cas
            elif flag == b"f":
                out += b" f%d" % item.flags
            elif flag == b"O":
                out += b" " + token
            elif flag == b"k":
                out += b" k" + key
        return out

    async def _mg(self, tokens: list[bytes]) -> bytes:
        meta, error = self._meta_head(tokens, 2)
        if meta is None:
            return error
        if meta.error:
            return meta.error.encode() + b"\r\n"
        if meta.opaque_too_long():
            return b"CLIENT_ERROR opaque token too long\r\n"
        key = tokens[1]
        item = self._cache.get(self._k(key))
        if item is None:
            return b"" if meta.has("q") else b"EN" + meta.echo(key) + b"\r\n"
        if meta.has("T"):
            self._cache.touch(self._k(key), _exptime(meta.number("T")))
        head = b"VA %d" % len(item.value) if meta.has("v") else b"HD"
        out = head + self._item_flags(meta, key, item) + b"\r\n"
        if meta.has("v"):
            out += item.value + b"\r\n"
        return out

    async def _ms(self, tokens: list[bytes]) -> bytes:
        if len(tokens) < 2:
            return b"ERROR\r\n"
        if len(tokens[1]) > MAX_KEY_BYTES or len(tokens) == 2:
            return b"CLIENT_ERROR bad command line format\r\n"
        if len(tokens) > _META_MAX_TOKENS:
            return b"CLIENT_ERROR options flags too long\r\n"
        size = _strtol(tokens[2])
        if size is None or not 0 <= size <= _I32_MAX - 2:
            return b"CLIENT_ERROR bad command line format\r\n"
        meta = _Meta(tokens[3:])
        error = meta.error
        policy = {"": "set", "S": "set", "E": "add", "A": "append", "P": "prepend", "R": "replace"}.get(meta.mode())
        if not error and policy is None:
            error = "CLIENT_ERROR invalid mode for ms M token"
        if not error and meta.opaque_too_long():
            error = "CLIENT_ERROR opaque token too long"
        if not error and size > MAX_VALUE_BYTES:
            error = "SERVER_ERROR object too large for cache"
            self._cache.delete(self._k(tokens[1]))  # as memcached: no stale value outlives a failed store
        if error:
            await self._swallow(size + 2)
            return error.encode() + b"\r\n"
        assert policy is not None
        data = await self._data(size + 2)
        if data[-2:] != b"\r\n":
            return b"CLIENT_ERROR bad data chunk\r\n"  # meta commands report this even when quiet
        key, cas = tokens[1], meta.number("C")
        if meta.has("C") and policy in ("set", "replace"):
            policy = "cas"
        self._counters.cmd_set += 1
        if policy in ("append", "prepend"):
            current = self._cache.get(self._k(key), count=False)
            status = b"NS"
            if current is not None and meta.has("C") and current.cas != cas:
                status = b"EX"
            elif current is not None:
                status = self._store(policy, self._k(key), data[:-2], 0, 0, 0)[:-2]
                status = b"HD" if status == b"STORED" else b"NS"
        else:
            result = self._cache.set(self._k(key), data[:-2], meta.number("F"), _exptime(meta.number("T")), policy,
                                     cas)
            status = {"STORED": b"HD", "EXISTS": b"EX"}.get(result, b"NF" if policy == "cas" else b"NS")
        if status == b"HD" and meta.has("q"):
            return b""
        stored = self._cache.get(self._k(key), count=False) if status == b"HD" else None
        out = status
        for token in meta.tokens:
            if token[:1] == b"O":
                out += b" " + token
            elif token[:1] == b"k":
                out += b" k" + key
            elif token[:1] == b"c":
                out += b" c%d" % (stored.cas if stored is not None else 0)
        return out + b"\r\n"

    async def _md(self, tokens: list[bytes]) -> bytes:
        meta, error = self._meta_head(tokens, 2)
        if meta is None:
            return error
        if meta.error:
            return b"CLIENT_ERROR invalid or duplicate flag\r\n"
        if meta.opaque_too_long():
            return b"CLIENT_ERROR opaque token too long\r\n"
        key = tokens[1]
        item = self._cache.get(self._k(key), count=False)
        if item is None:
            status = b"NF"
        elif meta.has("C") and item.cas != meta.number("C"):
            status = b"EX"
        else:
            self._cache.delete(self._k(key))
            if meta.has("q"):
                return b""
            status = b"HD"
        return status + meta.echo(key) + b"\r\n"

    async def _ma(self, tokens: list[bytes]) -> bytes:
        meta, error = self._meta_head(tokens, 2, accepted="N")
        if meta is None:
            return error
        if meta.error:
            return b"CLIENT_ERROR invalid or duplicate flag\r\n"
        mode = meta.mode()
        if mode not in ("", "I", "+", "D", "-"):
            return b"CLIENT_ERROR invalid mode for ma M token\r\n"
        if meta.opaque_too_long():
            return b"CLIENT_ERROR opaque token too long\r\n"
        key, k = tokens[1], self._k(tokens[1])
        current = self._cache.get(k, count=False)
        if current is not None and meta.has("C") and current.cas != meta.number("C"):
            return b"EX" + meta.echo(key) + b"\r\n"
        try:
            new = self._cache.incr(k, meta.number("D", 1), mode in ("D", "-"), None, keep_width=True)
        except ValueError:
            return b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\n"
        created = new is None and meta.has("N")
        if created:
            new = meta.number("J")
            self._cache.set(k, b"%d" % new, 0, _exptime(meta.number("N")), "add")
        if new is None:
            return b"NF" + meta.echo(key) + b"\r\n"
        if meta.has("q") and not created:  # quiet hides a nominal answer; memcached still reports a creation
            return b""
        if meta.has("T"):
            self._cache.touch(k, _exptime(meta.number("T")))
        item = self._cache.get(k, count=False)
        assert item is not None
        text = b"%d" % new
        flags = b""
        for token in meta.tokens:
            flag = token[:1]
            if flag == b"c":
                flags += b" c%d" % item.cas
            elif flag == b"t":
                flags += b" t-1" if not item.expires else b" t%d" % max(int(item.expires - time.time() + 0.5), 0)
            elif flag == b"O":
                flags += b" " + token
            elif flag == b"k":
                flags += b" k" + key
        if meta.has("v"):
            return b"VA %d%s\r\n%s\r\n" % (len(text), flags, text)
        return b"HD" + flags + b"\r\n"

    async def _mn(self, tokens: list[bytes]) -> bytes:
        return b"MN\r\n"


async def start(cache: Cache, app: str, host: str, port: int) -> asyncio.Server:
    """Listen for memcached text protocol clients."""
    counters = Counters()
    loop = asyncio.get_running_loop()
    delayed: list[asyncio.TimerHandle] = []  # the pending delayed flush_all, if any

    def flush(delay: int) -> None:
        """flush_all: now, or (a delay, relative or an absolute time) what is there when it ends; a later flush_all
        replaces a pending one, as in memcached. Counters are kept, as memcached keeps them."""
        while delayed:
            delayed.pop().cancel()
        if delay <= 0:
            cache.flush(app, reset_stats=False)
            return
        seconds = delay if delay <= THIRTY_DAYS else max(delay - time.time(), 0)
        delayed.append(loop.call_later(seconds, lambda: cache.flush(app, reset_stats=False)))

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        counters.curr_connections += 1
        counters.total_connections += 1
        try:
            await _Session(cache, app, counters, flush, reader, writer).run()
            with contextlib.suppress(ConnectionError):
                await writer.drain()
        except ConnectionError:
            pass
        except Exception:  # noqa: BLE001 - one client's failure must not stop the listener
            log.exception("memcached text protocol session failed")
        finally:
            counters.curr_connections -= 1
            writer.close()

    return await asyncio.start_server(handle, host, port)
