"""kiln.sdk.tickets: how API tickets are minted (192 random bits each, read for many tickets at once)."""

from __future__ import annotations

import os
import re

from kiln.sdk import tickets


def test_tickets_are_32_url_safe_characters_and_never_repeat_across_several_reads_of_random_bytes():
    environs: list[dict[str, str]] = [{} for _ in range(3 * tickets._POOL_TICKETS + 5)]
    minted = [tickets.open_ticket("app", environ) for environ in environs]
    try:
        assert all(re.fullmatch(r"[A-Za-z0-9_-]{32}", t) for t in minted)
        assert len(set(minted)) == len(minted)
        assert [e[tickets.ENVIRON_KEY] for e in environs] == minted
        assert all(tickets.lookup(t) is not None for t in minted)
    finally:
        for ticket in minted:
            tickets.close(ticket)


def test_a_forked_child_never_mints_the_tickets_its_parent_will():
    opened = tickets.open_ticket("app", {})  # the pool now holds the parent's next tickets
    tickets.close(opened)
    read, write = os.pipe()
    child = os.fork()
    if child == 0:  # pragma: no cover - the child reports through the pipe
        try:
            os.write(write, tickets.open_ticket("app", {}).encode())
        finally:
            os._exit(0)
    os.close(write)
    os.waitpid(child, 0)
    from_child = os.read(read, 64).decode()
    os.close(read)
    mine = tickets.open_ticket("app", {})
    tickets.close(mine)
    assert len(from_child) == 32 and from_child != mine
