"""The decisions behind rates and max_concurrent_requests across taskqueue_svc replicas (taskqueue_svc.shared), without
sockets: the shared token bucket's refill and take, batches, pause, and the replicas' slot leases."""

from __future__ import annotations

import pytest

from kiln.pb.taskqueue.v1 import taskqueue_pb2 as pb
from taskqueue_svc import shared


def test_a_bucket_never_seen_starts_full():
    after, got, wait = shared.take(None, 5.0, 5, 100.0, 5)
    assert (got, wait, after.tokens) == (5, 0.0, 0.0)


def test_the_bucket_refills_at_the_rate_and_says_how_long_until_the_next_token():
    empty = pb.SharedBucket(tokens=0.0, refilled_at=100.0)
    after, got, wait = shared.take(empty, 2.0, 3, 100.25, 1)
    assert got == 0 and wait == pytest.approx(0.25) and after.tokens == pytest.approx(0.5)
    after, got, _ = shared.take(after, 2.0, 3, 100.5, 1)
    assert got == 1 and after.tokens == pytest.approx(0.0)


def test_the_bucket_never_holds_more_than_its_size_however_long_it_waited():
    after, got, _ = shared.take(pb.SharedBucket(tokens=0.0, refilled_at=0.0), 2.0, 3, 86400.0, 10)
    assert got == 3 and after.tokens == 0


@pytest.mark.parametrize("want, tokens, got", [(1, 4.5, 1), (3, 4.5, 3), (10, 4.5, 4), (2, 0.99, 0)])
def test_a_take_gives_whole_tokens_up_to_what_is_asked_and_what_is_there(want, tokens, got):
    after, taken, _ = shared.take(pb.SharedBucket(tokens=tokens, refilled_at=50.0), 1.0, 10, 50.0, want)
    assert taken == got and after.tokens == pytest.approx(tokens - got)


def test_a_writer_with_a_clock_behind_adds_no_tokens_and_never_moves_time_back():
    ahead = pb.SharedBucket(tokens=0.0, refilled_at=200.0)
    after, got, _ = shared.take(ahead, 10.0, 10, 150.0, 1)
    assert got == 0 and after.refilled_at == 200.0 and after.tokens == 0


@pytest.mark.parametrize("bucket, rate", [(pb.SharedBucket(tokens=5, refilled_at=1, paused=True), 5.0),
                                          (pb.SharedBucket(tokens=5, refilled_at=1), 0.0), (None, 0.0)])
def test_a_paused_queue_or_a_rate_of_zero_gives_no_token_and_an_endless_wait(bucket, rate):
    after, got, wait = shared.take(bucket, rate, 5, 2.0, 1)
    assert got == 0 and wait == float("inf") and after.tokens == 5


@pytest.mark.parametrize("rate, capacity, batch", [(5.0, 5, 1), (1 / 60, 1, 1), (100.0, 50, 10), (500.0, 500, 50),
                                                   (500.0, 20, 20)])
def test_a_replica_takes_a_tenth_of_a_second_of_the_rate_at_once_within_the_bucket(rate, capacity, batch):
    assert shared.batch_for(rate, capacity) == batch


def test_the_tokens_of_many_takers_never_exceed_the_bucket_and_the_rate():
    bucket, now, taken = None, 0.0, 0
    for step in range(1000):  # three replicas taking batches in turn, every 10 ms over 10 s
        now = step * 0.01
        bucket, got, _ = shared.take(bucket, 5.0, 5, now, 2)
        taken += got
    assert taken == 5 + int(5.0 * now)


def _leases(**held: tuple[int, float]) -> pb.SlotLeases:
    return pb.SlotLeases(replicas={r: pb.SlotLease(held=h, expires_at=e) for r, (h, e) in held.items()})


def test_only_live_leases_count_against_the_limit():
    leases = _leases(a=(2, 110.0), b=(3, 99.0), c=(1, 105.0))
    assert shared.live_held(leases, 100.0) == 3
    assert shared.live_held(leases, 100.0, besides="a") == 1
    assert shared.live_held(None, 100.0) == 0


def test_renewing_a_lease_keeps_the_live_others_and_drops_the_expired():
    out = shared.with_held(_leases(a=(2, 110.0), b=(3, 99.0)), "c", 4, 100.0, 30.0)
    assert dict((r, (lease.held, lease.expires_at)) for r, lease in out.replicas.items()) == {
        "a": (2, 110.0), "c": (4, 130.0)}


def test_a_replica_holding_nothing_leaves_the_leases():
    out = shared.with_held(_leases(a=(2, 110.0), c=(1, 110.0)), "c", 0, 100.0, 30.0)
    assert list(out.replicas) == ["a"]


def test_a_lease_says_how_many_tasks_are_being_sent_and_only_live_ones_count_as_in_flight():
    leases = shared.with_held(_leases(a=(2, 99.0)), "b", 3, 100.0, 30.0, sending=1)
    leases = shared.with_held(leases, "c", 0, 100.0, 30.0, sending=2)  # its slots freed, requests still under way
    assert shared.live_sending(leases, 100.0) == 3
    assert shared.live_held(leases, 100.0) == 3
    assert shared.live_sending(leases, 131.0) == 0
