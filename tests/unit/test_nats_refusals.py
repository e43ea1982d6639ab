"""How a connection backs off when NATS refuses its credentials (``kiln_platform.bus.Refusals``): each further
refusal waits longer, up to a pause that keeps recovery within about two seconds of the auth callout's return, and
an accepted connection starts over."""

from __future__ import annotations

import asyncio

from kiln_platform import bus


def _pauses(refusals: int, *, accepted_after: int | None = None) -> list[float]:
    asked: list[float] = []

    async def sleep(seconds: float) -> None:
        asked.append(seconds)

    async def run() -> None:
        state = bus.Refusals("nats://n:4222", user="u", sleep=sleep)
        for n in range(refusals):
            if n == accepted_after:
                state.accepted()
            await state.refused()

    asyncio.run(run())
    return asked


def test_each_refusal_waits_longer_up_to_a_cap():
    pauses = _pauses(6)
    assert pauses == sorted(pauses) and pauses[0] == 0.0
    assert len(set(pauses[-3:])) == 1  # capped: the last ones wait the same
    assert pauses[-1] + 0.5 <= 2.0  # with nats-py's own 0.5 s, at most two seconds between attempts


def test_an_accepted_connection_starts_the_back_off_over():
    assert _pauses(5, accepted_after=3)[3] == 0.0
