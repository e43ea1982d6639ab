"""The memcached text protocol byte for byte: each sequence of the corpus below is sent to Debian's memcached and
to kiln's ``--text-listen`` (fresh servers for the module; the cache flushed and a new connection for each case),
the connection half-closed, and everything each server answers until it closes is compared.

Only what legitimately differs is normalised (``normalise``): cas unique numbers (each server numbers its own
stores; they are renumbered in order of appearance, so equal and different cas values stay so), the version
string, and the lines of ``stats`` (kiln's statistics are its own; ``test_stats_names_are_memcacheds`` checks
their names). The cases in ``DIFFERENCES`` are kiln's documented departures; each is asserted as it is.
"""

from __future__ import annotations

import re
import socket
import time

import pytest

from tests.integration.memcached_servers import start_kiln_text, start_memcached

pytestmark = pytest.mark.memcached

KEY_250 = b"k" * 250
KEY_251 = b"k" * 251
MANY_KEYS = b" ".join(b"key%03d" % i for i in range(300))  # a 2,400-byte get line
BIG = 2_000_000

CORPUS: dict[str, list[bytes]] = {
    # storage and retrieval
    "set-get": [b"set a 5 0 3\r\nabc\r\nget a\r\n"],
    "set-gets": [b"set a 0 0 1\r\nx\r\ngets a\r\n"],
    "get-miss": [b"get nothing\r\n"],
    "get-several": [b"set a 1 0 1\r\nx\r\nset b 2 0 1\r\ny\r\nget a missing b a\r\n"],
    "get-no-key": [b"get\r\n"],
    "gets-no-key": [b"gets\r\n"],
    "get-300-keys": [b"set key007 0 0 1\r\nx\r\nget " + MANY_KEYS + b"\r\n"],
    "gets-300-keys": [b"set key299 0 0 1\r\nx\r\ngets " + MANY_KEYS + b"\r\n"],
    "set-empty-value": [b"set a 0 0 0\r\n\r\nget a\r\n"],
    "set-binary-value": [b"set a 0 0 6\r\n\x00\r\n\xff\n\r\r\nget a\r\n"],
    "flags-max": [b"set a 4294967295 0 1\r\nx\r\nget a\r\n"],
    "flags-wrap": [b"set a 4294967296 0 1\r\nx\r\nget a\r\n"],
    "flags-negative": [b"set a -1 0 1\r\nx\r\n"],
    "flags-not-number": [b"set a x 0 1\r\nx\r\n"],
    "flags-too-big": [b"set a 18446744073709551616 0 1\r\nx\r\n"],
    "flags-minus-zero": [b"set a -0 0 1\r\nx\r\nget a\r\n"],
    "exptime-negative": [b"set a 0 -1 1\r\nx\r\nget a\r\n"],
    "exptime-plus": [b"set a 0 +100 1\r\nx\r\nget a\r\n"],
    "exptime-past-absolute": [b"set a 0 2592001 1\r\nx\r\nget a\r\n"],
    "exptime-wraps": [b"set a 0 3000000000 1\r\nx\r\nget a\r\n"],
    "exptime-not-number": [b"set a 0 x 1\r\nx\r\n"],
    "length-negative": [b"set a 0 0 -1\r\n"],
    "length-not-number": [b"set a 0 0 z\r\nx\r\n"],
    "data-too-long": [b"set a 0 0 3\r\nabcd\r\nget a\r\n"],
    "data-too-short": [b"set a 0 0 3\r\nab\r\nget a\r\n"],
    "data-bare-newline": [b"set a 0 0 1\r\nx\nget a\r\n"],
    "data-missing": [b"set a 0 0 5\r\n"],
    "data-cut-short": [b"set a 0 0 5\r\nab"],
    "set-too-few-args": [b"set a 0 0\r\n"],
    "set-too-many-args": [b"set a 0 0 1 noreply extra\r\nx\r\n"],
    "set-no-args": [b"set\r\n"],
    "set-noreply": [b"set a 0 0 1 noreply\r\nx\r\nget a\r\n"],
    "set-noreply-bad-chunk": [b"set a 0 0 1 noreply\r\nxyz\r\n"],
    "set-noreply-bad-flags": [b"set a x 0 1 noreply\r\nx\r\n"],
    "set-over-size": [b"set a 0 0 %d\r\n" % BIG + b"v" * BIG + b"\r\nget a\r\n"],
    "set-over-size-drops-old": [b"set a 0 0 1\r\nx\r\nset a 0 0 %d\r\n" % BIG + b"v" * BIG + b"\r\nget a\r\n"],
    "add-over-size-keeps-old": [b"set a 0 0 1\r\nx\r\nadd a 0 0 %d\r\n" % BIG + b"v" * BIG + b"\r\nget a\r\n"],
    "set-over-size-noreply": [b"set a 0 0 %d noreply\r\n" % BIG + b"v" * BIG + b"\r\nget a\r\n"],
    "add": [b"add a 0 0 1\r\nx\r\nadd a 0 0 1\r\ny\r\nget a\r\n"],
    "replace": [b"replace a 0 0 1\r\nx\r\nset a 0 0 1\r\nx\r\nreplace a 3 0 1\r\ny\r\nget a\r\n"],
    "append-prepend": [b"set a 5 0 1\r\nx\r\nappend a 9 0 1\r\ny\r\nprepend a 7 0 1\r\nw\r\nget a\r\n"],
    "append-missing": [b"append a 0 0 1\r\nx\r\nprepend a 0 0 1\r\nx\r\n"],
    "prepend-noreply": [b"set a 0 0 1\r\nx\r\nprepend a 0 0 1 noreply\r\ny\r\nget a\r\n"],
    "cas-cycle": [b"set a 0 0 1\r\nx\r\ngets a\r\ncas a 0 0 1 0\r\ny\r\n"],
    "cas-missing": [b"cas a 0 0 1 1\r\nx\r\n"],
    "cas-no-unique": [b"cas a 0 0 1\r\nx\r\n"],
    "cas-bad-unique": [b"cas a 0 0 1 x\r\nx\r\n"],
    "cas-unique-too-big": [b"cas a 0 0 1 18446744073709551616\r\nx\r\n"],
    "extra-spaces": [b"set  a  0  0  1 \r\nx\r\n get   a \r\n"],
    # delete
    "delete": [b"set a 0 0 1\r\nx\r\ndelete a\r\ndelete a\r\n"],
    "delete-zero": [b"set a 0 0 1\r\nx\r\ndelete a 0\r\nget a\r\n"],
    "delete-zero-noreply": [b"set a 0 0 1\r\nx\r\ndelete a 0 noreply\r\nget a\r\n"],
    "delete-seconds": [b"delete a 1\r\n"],
    "delete-noreply": [b"delete a noreply\r\n"],
    "delete-too-many": [b"delete a b c\r\n"],
    "delete-no-key": [b"delete\r\n"],
    # counters
    "incr-decr": [b"set n 0 0 2\r\n99\r\nincr n 1\r\ndecr n 50\r\ndecr n 100\r\nget n\r\n"],
    "decr-keeps-width": [b"set n 0 0 3\r\n100\r\ndecr n 1\r\nget n\r\n"],
    "incr-wraps": [b"set n 0 0 20\r\n18446744073709551615\r\nincr n 1\r\n"],
    "incr-missing": [b"incr n 1\r\ndecr n 1\r\n"],
    "incr-non-numeric": [b"set n 0 0 1\r\nx\r\nincr n 1\r\n"],
    "incr-leading-space": [b"set n 0 0 2\r\n 5\r\nincr n 1\r\n"],
    "incr-bad-delta": [b"set n 0 0 1\r\n5\r\nincr n x\r\nincr n -5\r\nincr n 18446744073709551616\r\n"],
    "incr-plus-delta": [b"set n 0 0 1\r\n5\r\nincr n +5\r\n"],
    "incr-extra-arg": [b"incr n 1 2\r\n"],
    "incr-no-delta": [b"incr n\r\n"],
    "incr-noreply": [b"set n 0 0 1\r\n5\r\nincr n 1 noreply\r\nget n\r\n"],
    "incr-keeps-flags": [b"set n 77 0 1\r\n5\r\nincr n 10\r\nget n\r\n"],
    # touch and get-and-touch
    "touch": [b"set a 0 0 1\r\nx\r\ntouch a 100\r\ntouch b 100\r\n"],
    "touch-negative-expires": [b"set a 0 0 1\r\nx\r\ntouch a -1\r\nget a\r\n"],
    "touch-bad-exptime": [b"touch a x\r\n"],
    "touch-no-exptime": [b"touch a\r\n"],
    "touch-noreply": [b"set a 0 0 1\r\nx\r\ntouch a 10 noreply\r\n"],
    "gat": [b"set a 3 0 1\r\nx\r\ngat 100 a b\r\ngats 100 a\r\n"],
    "gat-negative-then-gone": [b"set a 0 0 1\r\nx\r\ngat -1 a\r\nget a\r\n"],
    "gat-no-key": [b"gat 10\r\n"],
    "gat-nothing": [b"gat\r\ngats\r\n"],
    "gat-bad-exptime": [b"gat x a\r\n"],
    # keys
    "key-250": [b"set " + KEY_250 + b" 0 0 1\r\nx\r\nget " + KEY_250 + b"\r\n"],
    "key-251-get": [b"get a " + KEY_251 + b" a\r\n"],
    "key-251-gets": [b"gets " + KEY_251 + b"\r\n"],
    "key-251-set": [b"set " + KEY_251 + b" 0 0 1\r\nx\r\n"],
    "key-251-others": [b"%s %s 1\r\n" % (cmd, KEY_251) for cmd in (b"incr", b"decr", b"touch")]
                      + [b"delete " + KEY_251 + b"\r\n"],
    "key-251-gat": [b"gat 1 " + KEY_251 + b"\r\n"],
    "key-control-chars": [b"set a\x01\x7f 0 0 1\r\nx\r\nget a\x01\x7f\r\nget a\r\n"],
    "key-tab-is-not-a-separator": [b"get\ta\r\n"],
    "key-utf8": [b"set \xc3\xa9 0 0 1\r\nx\r\nget \xc3\xa9\r\n"],
    "key-carriage-return": [b"set a 0 0 1\r\nx\r\nget a\r\r\n"],
    # line endings and framing
    "bare-newline": [b"get a\n"],
    "bare-newline-set": [b"set a 0 0 1\nx\r\nget a\n"],
    "empty-line": [b"\r\n"],
    "lone-newline": [b"\n"],
    "spaces-only": [b"   \r\n"],
    "one-letter-command": [b"g a\r\n"],
    "pipelined": [b"set a 0 0 1\r\n1\r\nincr a 5\r\nget a\r\ndelete a\r\nget a\r\nversion\r\nmn\r\n"],
    "split-writes": [b"se", b"t a 0 0 3\r", b"\nab", b"c\r\nge", b"t a\r\n"],
    "split-in-value": [b"set a 0 0 4\r\nab", b"cd\r\nget a\r\n"],
    "long-line-with-end": [b"x" * 3000 + b"\r\n"],
    "long-line-without-end": [b"set " + b"x" * 3000],
    "long-get-line-without-end": [b"get " + b"x " * 1500],
    "unknown-command": [b"bogus command\r\n"],
    "uppercase-command": [b"GET a\r\n"],
    "http-request": [b"GET / HTTP/1.1\r\nHost: x\r\n\r\n"],
    "http-after-command": [b"get a\r\nHTTP/1.1\r\n"],
    "noreply-alone": [b"noreply\r\n"],
    # server commands
    "version": [b"version\r\n"],
    "version-args": [b"version now\r\n"],
    "quit": [b"quit\r\nget a\r\n"],
    "flush-all": [b"set a 0 0 1\r\nx\r\nflush_all\r\nget a\r\n"],
    "flush-all-zero": [b"set a 0 0 1\r\nx\r\nflush_all 0\r\nget a\r\n"],
    "flush-all-negative": [b"set a 0 0 1\r\nx\r\nflush_all -1\r\nget a\r\n"],
    "flush-all-delayed": [b"set a 0 0 1\r\nx\r\nflush_all 100\r\nget a\r\n"],
    "flush-all-noreply": [b"flush_all noreply\r\nflush_all 0 noreply\r\n"],
    "flush-all-bad": [b"flush_all x\r\nflush_all 1 2 3\r\n"],
    "verbosity": [b"verbosity 1\r\nverbosity 0 noreply\r\nverbosity 1 2\r\n"],
    "verbosity-bad": [b"verbosity\r\nverbosity x\r\n"],
    "cache-memlimit": [b"cache_memlimit 100\r\ncache_memlimit 64 noreply\r\ncache_memlimit 64\r\n"],
    "cache-memlimit-bad": [b"cache_memlimit\r\ncache_memlimit x\r\ncache_memlimit 1\r\n",
                           b"cache_memlimit 2000000000\r\n"],
    "shutdown": [b"shutdown\r\n"],
    "stats": [b"stats\r\n"],
    "stats-reset": [b"stats reset\r\n"],
    "stats-settings": [b"stats settings\r\n"],
    "stats-items-empty": [b"stats items\r\n"],
    "stats-sizes": [b"stats sizes\r\n"],
    "stats-detail": [b"stats detail on\r\nstats detail off\r\nstats detail\r\nstats detail dump\r\n"],
    "stats-cachedump": [b"stats cachedump 1 1\r\nstats cachedump 1\r\nstats cachedump x 1\r\n",
                        b"stats cachedump 99 1\r\n"],
    "stats-unknown": [b"stats bogus\r\nstats noreply\r\n"],
    # meta commands
    "mn": [b"mn\r\nmn extra\r\n"],
    "mg-miss": [b"mg a v\r\nmg a\r\nmg a v k Oabc\r\nmg a q\r\n"],
    "mg-hit": [b"set a 12 0 3\r\nabc\r\nmg a v\r\nmg a\r\nmg a s f k t Oxyz\r\nmg a c\r\n"],
    "mg-touch": [b"set a 0 0 1\r\nx\r\nmg a T-1 v\r\nmg a v\r\n"],
    "mg-bad-flags": [b"mg a zz\r\nmg a v v\r\nmg a T\r\nmg a Tx\r\nmg " + KEY_251 + b" v\r\nmg\r\n"],
    "mg-opaque-too-long": [b"set a 0 0 1\r\nx\r\nmg a O" + b"o" * 40 + b"\r\n"],
    "ms": [b"ms a 3\r\nabc\r\nmg a v\r\nms a 1 F5 T0\r\nx\r\nmg a v f t\r\n"],
    "ms-flags-echo": [b"ms a 1 Oq1 k\r\nx\r\nms a 1 q\r\ny\r\nmg a v\r\n"],
    "ms-modes": [b"ms a 1 ME\r\nx\r\nms a 1 ME\r\ny\r\nms b 1 MR\r\nx\r\nms a 1 MA\r\nz\r\n",
                 b"ms a 1 MP\r\nw\r\nms a 1 MS\r\nv\r\nmg a v\r\nms a 1 MX\r\nx\r\nms a 1 MEE\r\nx\r\n"],
    "ms-cas": [b"ms a 1\r\nx\r\nms a 1 C999999999\r\ny\r\nms b 1 C999999999\r\ny\r\n"],
    "ms-bad": [b"ms a\r\nms a x\r\nms a -1\r\nms\r\nms a 1 zz\r\nx\r\n"],
    "ms-bad-chunk": [b"ms a 1\r\nxyz\r\nms a 1 q\r\nxyz\r\n"],
    "ms-over-size": [b"ms a %d\r\n" % BIG + b"v" * BIG + b"\r\nmg a v\r\n"],
    "md": [b"set a 0 0 1\r\nx\r\nmd a\r\nmd a\r\nmd a q\r\nmd a k Ohi\r\nmg a v\r\n"],
    "md-quiet-hit": [b"set a 0 0 1\r\nx\r\nmd a q\r\nmg a v\r\n"],
    "md-cas": [b"set a 0 0 1\r\nx\r\nmd a C999999999\r\n"],
    "md-bad": [b"md\r\nmd a zz\r\nmd " + KEY_251 + b"\r\n"],
    "ma": [b"set n 0 0 2\r\n10\r\nma n\r\nma n v\r\nma n MD D5 v\r\nma n M- v\r\nma n M+ D100 v\r\nget n\r\n"],
    "ma-miss": [b"ma n\r\nma n q\r\nma n N0 J7 v\r\nma n v\r\n"],
    "ma-bad": [b"ma\r\nma n Dx\r\nma n Jx\r\nma n MX\r\nma n zz\r\n"],
    "ma-non-numeric": [b"set n 0 0 1\r\nx\r\nma n\r\n"],
    "ma-quiet": [b"set n 0 0 1\r\n1\r\nma n q\r\nmg n v\r\nma m q N0 J5\r\nma m q v\r\nmg m v\r\n"],
    "delete-long-key-with-args": [b"delete " + KEY_251 + b" 1\r\ndelete " + KEY_251 + b" 0\r\n"],
    "ma-keeps-width": [b"set n 0 0 3\r\n100\r\nma n MD v\r\nget n\r\n"],
    "ma-vivify-wraps": [b"ma n MI\r\nma n N0 J18446744073709551615\r\nma n v\r\n"],
    "ma-flags-echo": [b"set n 0 0 1\r\n1\r\nma n c t k Ox\r\n"],
    "mg-quiet": [b"mg a k q\r\nmg a k v Ox\r\nset a 0 0 1\r\nx\r\nmg a q v\r\nmg a q\r\nmn\r\n"],
    "mg-limits": [b"mg a v 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20\r\nmg a v O1 O2\r\nmg a\xff\r\n"],
    "md-quiet-miss": [b"md a q\r\nmd a k Oz\r\nmn\r\n"],
    "ms-expired": [b"ms a 1 T-1\r\nx\r\nmg a v\r\n"],
    "ms-flags": [b"ms a 1 c k Ox\r\nx\r\nms a 1 s\r\nx\r\nms a 1 v f t\r\nx\r\nms a S1\r\nx\r\n"],
    "meta-unknown": [b"mgx a\r\nm\r\nmz a\r\n"],
    "length-int-max": [b"set a 0 0 2147483647\r\nms a 2147483647\r\n"],
    "length-wraps": [b"set a 0 0 4294967297\r\nx\r\nget a\r\n"],
    "too-many-tokens": [b"set a 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26\r\n",
                        b"get a 1 2 3 4 5 6 7 8 9 10 11 12 13 14 15 16 17 18 19 20 21 22 23 24 25 26\r\n"],
    "incr-long-zero-padded": [b"set n 0 0 21\r\n000000000000000000001\r\nincr n 1\r\nget n\r\n"],
    "incr-too-big-value": [b"set n 0 0 20\r\n18446744073709551616\r\nincr n 1\r\n"],
    "value-holding-end": [b"set a 0 0 5\r\nEND\r\n\r\nget a\r\n"],
    "cas-noreply": [b"cas a 0 0 1 1 noreply\r\nx\r\nset a 0 0 1\r\nx\r\ncas a 0 0 1 1 noreply\r\ny\r\nget a\r\n"],
    "debug-commands": [b"misbehave\r\ndebugtime 1\r\nextstore x\r\n"],
}

# kiln's documented departures (README, Memcache): case -> (why, the bytes sent, kiln's answer).
DIFFERENCES: dict[str, tuple[str, list[bytes], bytes]] = {
    "value-over-kiln-limit": (
        ("values are at most 1,000,000 bytes (App Engine's limit, the same through the gRPC API); memcached's "
         "limit is 1 MiB less its item header"),
        [b"set a 0 0 1000001\r\n" + b"v" * 1_000_001 + b"\r\nget a\r\n"],
        b"SERVER_ERROR object too large for cache\r\nEND\r\n"),
    "long-key-get-after-pipelined-command": (
        ("memcached drops the answers still queued for earlier pipelined commands when a get, gets, gat or gats "
         "has a key over 250 bytes (it releases the connection's pending responses); kiln answers every command"),
        [b"set a 0 0 1\r\nx\r\nget a " + KEY_251 + b"\r\n"],
        b"STORED\r\nCLIENT_ERROR bad command line format\r\n"),
    "mg-win-token": (
        ("mg's N (create on miss and hand out a win token), R, I, h, l, u and b flags need per-item bookkeeping kiln's "
         "store does not keep; kiln refuses them as memcached refuses unknown flags"),
        [b"mg a N30 v\r\nmg a v\r\n"],
        b"CLIENT_ERROR invalid flag\r\nEN\r\n"),
    "meta-base64-keys": (
        ("the meta commands' b flag (base64 keys) is refused: kiln's keys are bytes already, and memcached marks "
         "such items to echo their keys in base64 later, bookkeeping kiln does not keep"),
        [b"ms YQ== 1 b\r\nx\r\nmg a v\r\n"],
        b"CLIENT_ERROR invalid flag\r\nEN\r\n"),
    "meta-debug": (
        "me (meta debug) reports memcached's slab class, internal size and fetch bit, which kiln does not have",
        [b"set a 0 0 1\r\nx\r\nme a\r\n"],
        b"STORED\r\nERROR\r\n"),
    "memcached-administration": (
        ("slabs, lru, lru_crawler and watch administer memcached's slab allocator, LRU crawler and log stream, "
         "which kiln does not have (its memory bound and logs are its operator's)"),
        [b"slabs automove 0\r\nlru mode flat\r\nlru_crawler crawl all\r\nwatch\r\n"],
        b"ERROR\r\nERROR\r\nERROR\r\nERROR\r\n"),
}


def exchange(port: int, parts: list[bytes]) -> bytes:
    """Everything the server answers to ``parts`` (one write each) before it closes the half-closed connection."""
    with socket.create_connection(("127.0.0.1", port), timeout=10) as flush:
        flush.sendall(b"flush_all\r\n")
        assert flush.makefile("rb").readline() == b"OK\r\n"
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        for part in parts:
            sock.sendall(part)
        sock.shutdown(socket.SHUT_WR)
        answer = b""
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                chunk = sock.recv(65536)
            except ConnectionResetError:
                return answer + b"<reset>"
            except TimeoutError:
                continue
            if not chunk:
                return answer
            answer += chunk
        return answer + b"<no close>"


_CAS = re.compile(rb"^(VALUE \S+ \d+ \d+ )(\d+)\r$|(?<= c)(\d+)(?=[ \r])", re.MULTILINE)
_STATS = re.compile(rb"(?:STAT [^\r\n]*\r\n)+")


def normalise(answer: bytes) -> bytes:
    """Cas uniques renumbered in order of appearance, the version string and stats lines blanked."""
    seen: dict[bytes, bytes] = {}

    def cas(match: re.Match[bytes]) -> bytes:
        number = match[2] or match[3]
        label = seen.setdefault(number, b"<cas%d>" % (len(seen) + 1))
        return match[1] + label + b"\r" if match[2] else label

    answer = _CAS.sub(cas, answer)
    answer = re.sub(rb"^VERSION [^\r\n]*", b"VERSION <version>", answer, flags=re.MULTILINE)
    return _STATS.sub(b"STAT <lines>\r\n", answer)


@pytest.fixture(scope="module")
def ports(supervisor):
    _, memcached = start_memcached(supervisor, "bytes-memcached")
    _, kiln = start_kiln_text(supervisor, "bytes-kiln")
    return memcached, kiln


@pytest.mark.parametrize("case", sorted(CORPUS))
def test_answers_the_same_bytes_as_memcached(ports, case):
    memcached, kiln = (normalise(exchange(port, CORPUS[case])) for port in ports)
    assert kiln == memcached


@pytest.mark.parametrize("case", sorted(DIFFERENCES))
def test_documented_difference_is_as_documented(ports, case):
    _, sent, expected = DIFFERENCES[case]
    memcached, kiln = (normalise(exchange(port, sent)) for port in ports)
    assert kiln == expected and memcached != kiln


def stat_names(port: int, command: bytes) -> list[bytes]:
    return re.findall(rb"^STAT (\S+) ", exchange(port, [command]), flags=re.MULTILINE)


def test_stats_names_are_memcacheds(ports):
    memcached, kiln = (stat_names(port, b"stats\r\n") for port in ports)
    assert {b"pid", b"uptime", b"version", b"get_hits", b"curr_items"} <= set(kiln)
    assert set(kiln) <= set(memcached)


def test_stats_settings_names_are_memcacheds(ports):
    memcached, kiln = (stat_names(port, b"stats settings\r\n") for port in ports)
    assert kiln and set(kiln) <= set(memcached)


def test_corpus_covers_every_command():
    sent = b"".join(b"".join(parts) for parts in CORPUS.values())
    commands = {b"get", b"gets", b"gat", b"gats", b"set", b"add", b"replace", b"append", b"prepend", b"cas",
                b"delete", b"incr", b"decr", b"touch", b"flush_all", b"stats", b"version", b"verbosity",
                b"cache_memlimit", b"quit", b"shutdown", b"mg", b"ms", b"md", b"ma", b"mn"}
    assert {c for c in commands if re.search(rb"(^|\n)\s*" + re.escape(c) + rb"[ \r\n]", sent)} == commands
    print(f"memcached byte corpus: {len(CORPUS)} cases, {len(DIFFERENCES)} documented difference(s)")
