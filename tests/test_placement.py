"""Placement options, and what DescribeCollection / `nestvec status` say about each shard.

(tests/test_multinode.py checks placement across three real Ray nodes.)
"""
from __future__ import annotations

import uuid

import numpy as np
import pytest
import ray

from nestvec.cluster._distributed.placement import RESOURCE_SLIVER, Placement, PlacementError


def test_parse_and_actor_options():
    assert Placement.parse(None) == Placement() == Placement.parse("default")
    assert Placement.parse("default").actor_options(3) == {"num_cpus": 0.0}
    spread = Placement.parse("SPREAD", num_cpus=0.5, memory=1 << 30)
    assert spread.actor_options(0) == {"num_cpus": 0.5, "memory": 1 << 30, "scheduling_strategy": "SPREAD"}
    pinned = Placement.parse("resources: a, b ,c")
    assert pinned.resources == ("a", "b", "c")
    assert [pinned.actor_options(i)["resources"] for i in range(4)] == [
        {"a": RESOURCE_SLIVER}, {"b": RESOURCE_SLIVER}, {"c": RESOURCE_SLIVER}, {"a": RESOURCE_SLIVER}]
    assert Placement.from_dict(pinned.to_dict()) == pinned
    assert Placement.from_dict(None) == Placement()


@pytest.mark.parametrize("spec, message", [
    ("nearest", "unknown placement"), ("resources:", "at least one"), ("resources: ,", "at least one"),
    ("spread:a", "takes no arguments")])
def test_bad_specs_say_what_to_write(spec, message):
    with pytest.raises(PlacementError, match=message):
        Placement.parse(spec)


def test_negative_resources_are_refused():
    with pytest.raises(PlacementError, match=">= 0"):
        Placement.parse("default", num_cpus=-1)


def test_a_resource_no_node_has_is_refused_before_anything_starts(ray_cluster):
    from nestvec.cluster._distributed.coordinator import Coordinator

    with pytest.raises(PlacementError, match="no-such-node"):
        Coordinator(namespace=f"pl-{uuid.uuid4().hex[:6]}", create_catalog=True,
                    placement=Placement.parse("resources:no-such-node"))


def test_spread_and_per_shard_resources_place_working_shards(ray_cluster, corpus):
    from nestvec.cluster._distributed.coordinator import Coordinator

    coord = Coordinator(namespace=f"pl-{uuid.uuid4().hex[:6]}", create_catalog=True,
                        placement=Placement.parse("spread", num_cpus=0.1, memory=64 << 20))
    coord.create_collection("spread", 384, shards=3)
    try:
        coord.upsert("spread", np.arange(300), corpus["docs"][:300])
        _, stats = coord.describe_collection("spread")
        assert sum(s["vectors"] for s in stats) == 300
        res = coord.search("spread", corpus["queries"][:2], k=3)
        assert res.ids.shape == (2, 3) and not res.missing_shards
    finally:
        coord.drop_collection("spread")


def test_describe_reports_node_memory_and_health(client, collection_name, corpus):
    client.create_collection(collection_name, 384, "cosine", shards=2)
    empty = client.describe_collection(collection_name)
    client.upsert(collection_name, np.arange(3000), corpus["docs"][:3000])
    info = client.describe_collection(collection_name)
    here = ray.get_runtime_context().get_node_id()
    for before, s in zip(empty.shard_info, info.shard_info):
        assert (s.node_id, s.node_ip, s.health, s.restarts) == (here, "127.0.0.1", "SERVING", 0)
        assert s.memory_bytes >= s.capacity * 384 * 4 and s.memory_bytes > before.memory_bytes
        assert s.rss_bytes > s.memory_bytes  # the worker process holds the arrays and more


def test_status_prints_every_shard(gateway, client, collection_name, corpus, capsys):
    from nestvec.cluster._ops.status import print_status

    client.create_collection(collection_name, 384, "cosine", shards=3)
    client.upsert(collection_name, np.arange(600), corpus["docs"][:600])
    print_status(gateway.address, collection_name)
    out = capsys.readouterr().out
    assert f"collection {collection_name}: dim 384, cosine, 3 shards, 600 vectors" in out
    rows = [r for r in map(str.split, out.splitlines()) if len(r) == 10 and r[0].isdigit()]  # shard ... memory MiB rss MiB restarts
    assert [r[0] for r in rows] == ["0", "1", "2"] and all(r[1] == "SERVING" for r in rows)
    assert sum(int(r[4]) for r in rows) == 600
    assert "nodes holding shards: 1" in out
