"""Each shard's BLAS/OpenMP pools are pinned to the configured thread count."""
from __future__ import annotations

import uuid

import numpy as np
import pytest
import ray


@pytest.mark.parametrize("threads", [1, 2])
def test_shard_threads(ray_cluster, threads):
    from nestvec.cluster._distributed.coordinator import Coordinator

    ns = f"{ray_cluster}-threads-{threads}-{uuid.uuid4().hex[:4]}"
    coord = Coordinator(namespace=ns, create_catalog=True, shard_threads=threads)
    try:
        coord.create_collection("t", 8, "dot", shards=1)
        coord.upsert("t", np.arange(10), np.ones((10, 8)))
        name = coord.describe_collection("t")[1][0]["actor_name"]
        pools = ray.get(ray.get_actor(name, namespace=ns).thread_pools.remote())
        assert pools and {p["threads"] for p in pools} == {threads}, pools
        assert coord.search("t", np.ones(8), k=3).ids.shape == (1, 3)
        coord.drop_collection("t")
    finally:
        ray.kill(ray.get_actor("catalog", namespace=ns))
