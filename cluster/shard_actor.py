"""ShardActor: a thin Ray actor around one ShardEngine.

It adds nothing to the math; it gives the engine a name in a Ray namespace so
any gateway or Ray job can find it, and runs its calls one at a time (Ray's
default for a synchronous actor), so the engine needs no locks.
"""
from __future__ import annotations

import numpy as np
import ray

from nestvec.cluster.collection import CollectionConfig, SearchPlan
from nestvec.cluster.engine import ShardEngine


def shard_actor_name(collection: str, shard: int) -> str:
    return f"{collection}/shard-{shard}"


@ray.remote(num_cpus=0)  # STACK-NOTES: whole-CPU requests starve a 2-CPU node of actors
class ShardActor:
    def __init__(self, config: dict, shard: int):
        self.config = CollectionConfig.from_dict(config)
        self.shard = shard
        self.engine = ShardEngine(self.config)

    def ready(self) -> bool:
        return True

    def upsert(self, ids: np.ndarray, vectors: np.ndarray) -> int:
        return self.engine.upsert(ids, vectors)

    def delete(self, ids: np.ndarray) -> int:
        return self.engine.delete(ids)

    def get(self, ids: np.ndarray, dim: int) -> tuple[np.ndarray, np.ndarray]:
        return self.engine.get(ids, dim)

    def search_keys(self, queries: np.ndarray, plan: SearchPlan) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (ids, keys), or funnel candidates with per-stage keys, for the merge."""
        if plan.stages:
            cand = self.engine.funnel_candidates(queries, plan)
            return cand.ids, cand.keys
        return self.engine.top_keys(queries, plan.k, plan.dim)

    def stats(self) -> dict:
        s = self.engine.stats()
        return {"shard": self.shard, "vectors": s.vectors, "tombstones": s.tombstones,
                "capacity": s.capacity}
