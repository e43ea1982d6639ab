"""console.versions: how versions and instances are laid out for the Apps and versions page."""

from __future__ import annotations

from console.versions import instance_row, rows
from kiln.pb.deploy.v1 import deploy_pb2 as pb


def test_an_instance_shows_its_state_memory_latency_and_start():
    instance = pb.Instance(instance_id="a" * 32, version_id="v1", requests_served=4, memory_bytes=45 << 20,
                           average_latency_ms=12.345, active_requests=2)
    instance.started_at.FromSeconds(1_800_000_000)
    row = instance_row(instance)
    assert (row.state, row.memory, row.latency, row.started) == (
        "busy (2 in flight)", "45.0 MiB", "12.3 ms", "2027-01-15 08:00:00 UTC")


def test_an_idle_instance_that_served_nothing_has_no_latency_and_a_stopping_one_says_so():
    assert (instance_row(pb.Instance()).state, instance_row(pb.Instance()).latency) == ("idle", "–")
    assert instance_row(pb.Instance(stopping=True, active_requests=1)).state == "stopping"


def test_instances_are_grouped_under_their_versions_in_the_versions_order():
    versions = [pb.Version(version_id="v2"), pb.Version(version_id="v1", is_default=True)]
    instances = [pb.Instance(instance_id="a", version_id="v1"), pb.Instance(instance_id="b", version_id="v2"),
                 pb.Instance(instance_id="c", version_id="v1")]
    laid_out = rows(versions, instances)
    assert [(r.version.version_id, [i.instance.instance_id for i in r.instances]) for r in laid_out] == [
        ("v2", ["b"]), ("v1", ["a", "c"])]


def test_instances_of_a_version_no_longer_listed_are_shown_under_it_as_deleted():
    laid_out = rows([pb.Version(version_id="v1")], [pb.Instance(instance_id="a", version_id="gone")])
    assert [(r.version.version_id, r.deployed, len(r.instances)) for r in laid_out] == [
        ("v1", "–", 0), ("gone", "deleted", 1)]
