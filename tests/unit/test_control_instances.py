"""deploy.control.instances: the instances the control plane knows from heartbeats, and stopping one."""

from __future__ import annotations

import pytest

from deploy.control.instances import Instances
from kiln.errors import BadRequestError, NotFoundError
from kiln.pb.runtime.v1 import events_pb2

A = "a" * 32
B = "b" * 32


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


class Managers:
    """Stands in for the instance managers on NATS: which instances they run, and the stops they were asked."""

    def __init__(self, running: set[str]) -> None:
        self.running = running
        self.asked: list[tuple[str, str, str]] = []

    async def __call__(self, app_id: str, version_id: str, instance_id: str) -> bool:
        self.asked.append((app_id, version_id, instance_id))
        return instance_id in self.running


def beat(instance_id: str, *, app_id: str = "myapp", version_id: str = "v1", started: int = 1,
         **fields: object) -> events_pb2.InstanceHeartbeat:
    out = events_pb2.InstanceHeartbeat(instance_id=instance_id, app_id=app_id, version_id=version_id, **fields)
    out.started_at.FromSeconds(started)
    return out


def test_an_instance_is_listed_with_the_figures_of_its_last_heartbeat():
    known = Instances(Managers(set()))
    known.observe("myapp", "v1", beat(A, requests_served=3, memory_bytes=1 << 20, average_latency_ms=2.5))
    known.observe("myapp", "v1", beat(A, requests_served=7, memory_bytes=2 << 20, average_latency_ms=4.0,
                                      active_requests=2, deployment_id="v1.3"))
    [listed] = known.list("myapp")
    assert (listed.instance_id, listed.version_id, listed.deployment_id, listed.requests_served, listed.memory_bytes,
            listed.average_latency_ms, listed.active_requests, listed.started_at.seconds) == (
        A, "v1", "v1.3", 7, 2 << 20, 4.0, 2, 1)


def test_the_subjects_app_and_version_are_trusted_not_the_payloads():
    known = Instances(Managers(set()))
    known.observe("myapp", "v1", beat(A, app_id="other", version_id="v9"))
    assert [i.version_id for i in known.list("myapp")] == ["v1"]
    assert known.list("other") == []


def test_instances_are_listed_by_version_then_start_and_can_be_filtered_by_version():
    known = Instances(Managers(set()))
    known.observe("myapp", "v2", beat(A, started=5))
    known.observe("myapp", "v1", beat(B, started=9))
    known.observe("myapp", "v1", beat("c" * 32, started=3))
    assert [(i.version_id, i.instance_id[0]) for i in known.list("myapp")] == [("v1", "c"), ("v1", "b"), ("v2", "a")]
    assert [i.instance_id for i in known.list("myapp", "v2")] == [A]


def test_an_instance_silent_past_the_ttl_is_forgotten():
    clock = Clock()
    known = Instances(Managers(set()), ttl_seconds=10, clock=clock)
    known.observe("myapp", "v1", beat(A))
    clock.now += 9
    assert len(known.list("myapp")) == 1
    clock.now += 1
    assert known.list("myapp") == []


def test_heartbeats_with_a_malformed_instance_id_are_ignored():
    known = Instances(Managers(set()))
    known.observe("myapp", "v1", beat("<script>"))
    known.observe("myapp", "v1", beat(""))
    assert known.list("myapp") == []


def test_an_app_cannot_make_the_control_plane_hold_more_than_the_limit_of_its_instances():
    known = Instances(Managers(set()), limit=2)
    for i in range(5):
        known.observe("myapp", "v1", beat(f"{i:032x}"))
    known.observe("other", "v1", beat(A))
    assert len(known.list("myapp")) == 2 and len(known.list("other")) == 1


async def test_stopping_asks_the_managers_of_its_version_and_marks_it_stopping():
    managers = Managers({A})
    known = Instances(managers)
    known.observe("myapp", "v2", beat(A))
    stopped = await known.stop("myapp", A)
    assert managers.asked == [("myapp", "v2", A)] and stopped.stopping
    known.observe("myapp", "v2", beat(A))  # it still reports while it finishes its requests
    assert [i.stopping for i in known.list("myapp")] == [True]


async def test_stopping_an_instance_the_app_does_not_have_is_not_found_without_asking():
    managers = Managers({A})
    known = Instances(managers)
    known.observe("other", "v1", beat(A))
    with pytest.raises(NotFoundError, match="no running instance"):
        await known.stop("myapp", A)
    assert managers.asked == []


async def test_stopping_an_instance_no_manager_runs_any_more_is_not_found_and_forgets_it():
    known = Instances(Managers(set()))
    known.observe("myapp", "v1", beat(A))
    with pytest.raises(NotFoundError, match="reload the list"):
        await known.stop("myapp", A)
    assert known.list("myapp") == []


async def test_stopping_a_malformed_instance_id_is_a_bad_request():
    with pytest.raises(BadRequestError, match="instance id"):
        await Instances(Managers(set())).stop("myapp", "../x")
