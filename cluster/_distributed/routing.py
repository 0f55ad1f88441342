"""Which shard owns an id: a stable hash, the same on every machine and run."""
from __future__ import annotations

import numpy as np

_M1 = np.uint64(0xBF58476D1CE4E5B9)
_M2 = np.uint64(0x94D049BB133111EB)


def mix64(ids: np.ndarray) -> np.ndarray:
    """splitmix64's finaliser: spreads sequential ids evenly; pure uint64 arithmetic."""
    z = np.asarray(ids, dtype=np.uint64).copy()
    with np.errstate(over="ignore"):
        z ^= z >> np.uint64(30)
        z *= _M1
        z ^= z >> np.uint64(27)
        z *= _M2
        z ^= z >> np.uint64(31)
    return z


def shard_of(ids: np.ndarray, shards: int) -> np.ndarray:
    """Shard index of each id (int64 array)."""
    return (mix64(ids) % np.uint64(shards)).astype(np.int64)


def split_by_shard(ids: np.ndarray, shards: int) -> list[np.ndarray]:
    """For each shard, the positions (into `ids`) of the ids it owns, in request order."""
    owner = shard_of(ids, shards)
    order = np.argsort(owner, kind="stable")
    bounds = np.searchsorted(owner[order], np.arange(shards + 1))
    return [order[bounds[s]: bounds[s + 1]] for s in range(shards)]
