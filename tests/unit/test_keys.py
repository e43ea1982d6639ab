"""datastore_svc.keys: the order-preserving key path encoding."""

import random

from datastore_svc.keys import PREFIX_END, decode_path, encode_path
from kiln.pb.datastore.v1 import datastore_pb2 as pb


def _path(*pairs):
    out = []
    for kind, ident in zip(pairs[::2], pairs[1::2]):
        out.append(pb.PathElement(kind=kind, id=ident) if isinstance(ident, int) else pb.PathElement(kind=kind, name=ident))
    return out


def _sort_key(path):
    return [(e.kind.encode(), 0 if e.WhichOneof("id_type") == "id" else 1, e.id, e.name.encode()) for e in path]


def test_encoding_round_trips_ids_and_names_with_awkward_bytes():
    path = _path("A\x00b", 1, "K\x01", "n\x00\x01\xff-é", "Z", 2**63 - 1)
    assert decode_path(encode_path(path)) == path


def test_byte_order_equals_app_engine_key_order():
    rng = random.Random(7)
    kinds = ["A", "AB", "B", "a\x00", "é"]
    paths = []
    for _ in range(300):
        depth = rng.randint(1, 3)
        pairs = []
        for _ in range(depth):
            pairs += [rng.choice(kinds), rng.choice([rng.randint(1, 2**40), rng.choice(["x", "xy", "y\x01", ""]) or "z"])]
        paths.append(_path(*pairs))
    by_bytes = sorted(paths, key=encode_path)
    by_rule = sorted(paths, key=_sort_key)
    assert [encode_path(p) for p in by_bytes] == [encode_path(p) for p in by_rule]


def test_ids_sort_before_names_of_the_same_kind():
    assert encode_path(_path("K", 2**62)) < encode_path(_path("K", "a"))


def test_descendants_fall_inside_the_ancestor_prefix_range():
    parent = encode_path(_path("Book", "b"))
    child = encode_path(_path("Book", "b", "Greeting", 5))
    sibling = encode_path(_path("Book", "c"))
    assert parent <= child < parent + PREFIX_END
    assert not (parent <= sibling < parent + PREFIX_END)


def test_group_of_is_the_encoding_of_the_root_element():
    from datastore_svc.keys import encode_element, encode_path, group_of
    for root in (pb.PathElement(kind="A", id=7), pb.PathElement(kind="A\x00b", name="n\x01\x00m")):
        path = [root, pb.PathElement(kind="Child", name="c"), pb.PathElement(kind="G", id=2)]
        assert group_of(encode_path(path)) == encode_element(root)
        assert group_of(encode_element(root)) == encode_element(root)
