"""memcache_svc's memcached text protocol without sockets: how a session reads its stream (each piece below is one
read, so splits are exact), and memcached's C number conversions. What it answers, byte for byte against memcached,
is tests/integration/test_memcached_bytes.py."""

from __future__ import annotations

from memcache_svc import textproto
from memcache_svc.store import Cache


class Reader:
    """Hands the session one piece per read, then the end of the stream."""

    def __init__(self, pieces: list[bytes]) -> None:
        self.pieces = list(pieces)

    async def read(self, n: int) -> bytes:
        assert all(len(p) <= n for p in self.pieces[:1])
        return self.pieces.pop(0) if self.pieces else b""


class Writer:
    def __init__(self) -> None:
        self.writes: list[bytes] = []

    def write(self, data: bytes) -> None:
        if data:
            self.writes.append(data)

    async def drain(self) -> None:
        pass


class Clock:
    now = 1_800_000_000.0  # 2027: memcached's absolute times are Unix times

    def __call__(self) -> float:
        return self.now


async def converse(pieces: list[bytes], cache: Cache | None = None) -> tuple[bytes, Writer, Reader]:
    cache = cache or Cache(64 * 1024 * 1024, Clock())
    reader, writer = Reader(pieces), Writer()
    session = textproto._Session(cache, "tools", textproto.Counters(),
                                 lambda delay: cache.flush("tools", reset_stats=False), reader, writer)
    await session.run()
    return b"".join(writer.writes), writer, reader


async def test_a_command_split_over_many_reads_is_answered_whole():
    sent = b"set a 0 0 3\r\nabc\r\nget a\r\n"
    answer, _, _ = await converse([sent[i:i + 1] for i in range(len(sent))])
    assert answer == b"STORED\r\nVALUE a 0 3\r\nabc\r\nEND\r\n"


async def test_lines_may_end_in_a_bare_newline():
    answer, _, _ = await converse([b"set a 0 0 1\nx\r\nget a\n"])
    assert answer == b"STORED\r\nVALUE a 0 1\r\nx\r\nEND\r\n"


async def test_an_unended_line_over_2048_bytes_ends_the_connection_unread():
    answer, _, reader = await converse([b"set " + b"x" * 3000, b" 0 0 1\r\n"])
    assert answer == b"" and reader.pieces == [b" 0 0 1\r\n"]


async def test_an_unended_get_line_over_2048_bytes_is_read_on():
    keys = b" ".join(b"key%04d" % i for i in range(600))
    answer, _, _ = await converse([b"get " + keys[:4000], keys[4000:] + b"\r\n"])
    assert answer == b"END\r\n"


async def test_a_get_line_beyond_its_bound_is_refused_and_the_connection_ends():
    chunk = b"k " * (textproto.READ_CHUNK // 2)
    pieces = [b"get "] + [chunk] * (textproto.MAX_GET_LINE // len(chunk) + 1) + [b"\r\n"]
    answer, _, reader = await converse(pieces)
    assert answer == b"CLIENT_ERROR line too long\r\n" and reader.pieces[-1:] == [b"\r\n"]


async def test_an_over_size_value_is_skipped_and_the_connection_goes_on():
    size = textproto.MAX_VALUE_BYTES + 1
    value = b"v" * size + b"\r\n"
    pieces = [b"set a 0 0 %d\r\n" % size] + [value[i:i + 10_000] for i in range(0, len(value), 10_000)]
    answer, _, _ = await converse([*pieces, b"get a\r\n"])
    assert answer == b"SERVER_ERROR object too large for cache\r\nEND\r\n"


async def test_a_negative_exptime_stores_an_item_already_expired():
    answer, _, _ = await converse([b"set a 0 -1 1\r\nx\r\nadd a 0 0 1\r\ny\r\nget a\r\n"])
    assert answer == b"STORED\r\nSTORED\r\nVALUE a 0 1\r\ny\r\nEND\r\n"


async def test_answers_to_a_pipeline_read_at_once_are_written_at_once():
    _, writer, _ = await converse([b"set a 0 0 1\r\nx\r\nget a\r\nincr a 1\r\nmn\r\n", b"version\r\n"])
    assert writer.writes[0] == b"STORED\r\nVALUE a 0 1\r\nx\r\nEND\r\n" + \
        b"CLIENT_ERROR cannot increment or decrement non-numeric value\r\nMN\r\n"
    assert writer.writes[1:] == [f"VERSION {textproto.VERSION}\r\n".encode()]


def test_unsigned_numbers_are_read_as_cs_strtoul_reads_them():
    assert [textproto._strtoul(raw, 32) for raw in (b"5", b"+5", b"-0", b"4294967296", b"\t7")] == [5, 5, 0, 0, 7]
    assert [textproto._strtoul(raw, 64) for raw in (b"-1", b"x", b"5x", b"", b"18446744073709551616")] == [None] * 5


def test_signed_numbers_are_read_as_cs_strtol_into_32_bits():
    assert [textproto._strtol(raw) for raw in (b"-1", b"+100", b"3000000000", b"-3000000000")] == [
        -1, 100, 3000000000 - 2**32, 2**32 - 3000000000]
    assert [textproto._strtol(raw) for raw in (b"x", b"1.5", b"9223372036854775808")] == [None] * 3
