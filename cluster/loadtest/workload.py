"""What a load test sends: the search parameters, the queries, and the write mix.

A `Workload` is plain data (it travels to worker processes and Ray actors).
`QuerySet` holds the query vectors and, when given, their exact ground truth
(`gt_ids`, row ids of the true top results, best first) for recall@k.
Writes upsert fresh ids from a range owned by each worker (so workers never
race on an id), with vectors that are a pure function of the id, so a soak can
check afterwards that what the server returns is what was acknowledged.
"""
from __future__ import annotations

import os
import pathlib
from dataclasses import dataclass, field

import numpy as np

WRITE_ID_BASE = 1 << 60     # writes use ids far above any loaded corpus's row ids
WORKER_ID_SPAN = 1 << 32    # each worker owns [base + w * span, base + (w + 1) * span)
RUN_ID_SPAN = 1 << 40       # each run owns 256 workers' spans; a random run tag picks which
_POOL_ROWS = 4096


@dataclass
class Workload:
    collection: str
    k: int = 10
    dim: int = 0                                   # 0: the collection's full dim
    funnel: list[tuple[int, int]] = field(default_factory=list)
    batch: int = 1                                 # query rows per Search call
    write_ratio: float = 0.0                       # fraction of calls that are writes
    delete_ratio: float = 0.0                      # fraction of writes that are deletes
    write_batch: int = 1                           # ids per Upsert / Delete call
    write_id_base: int | None = None               # None: WRITE_ID_BASE + a random run tag
    timeout: float = 30.0                          # per-call deadline, seconds
    seed: int = 0

    def __post_init__(self):
        if self.k < 1 or self.batch < 1 or self.write_batch < 1:
            raise ValueError("k, batch and write_batch must be >= 1")
        if not 0 <= self.write_ratio <= 1 or not 0 <= self.delete_ratio <= 1:
            raise ValueError("write_ratio and delete_ratio must be between 0 and 1")
        self.funnel = [(int(d), int(c)) for d, c in self.funnel]
        if self.write_id_base is None:
            # a fresh id range per run (2**19 tags), so a second run against the same
            # collection never overwrites the first run's ids and the ledger check holds
            tag = int.from_bytes(os.urandom(4), "little") % (1 << 19)
            self.write_id_base = WRITE_ID_BASE + tag * RUN_ID_SPAN


@dataclass
class QuerySet:
    queries: np.ndarray                 # [nq, dim] float32
    gt_ids: np.ndarray | None = None    # [nq, >=k] exact top ids, or None

    def __post_init__(self):
        self.queries = np.ascontiguousarray(self.queries, dtype=np.float32)
        if self.queries.ndim != 2 or self.queries.shape[0] == 0:
            raise ValueError(f"queries must be a non-empty [n, dim] array, got {self.queries.shape}")
        if self.gt_ids is not None:
            self.gt_ids = np.asarray(self.gt_ids).astype(np.uint64)
            if self.gt_ids.shape[0] != self.queries.shape[0]:
                raise ValueError(f"gt_ids has {self.gt_ids.shape[0]} rows for "
                                 f"{self.queries.shape[0]} queries")


def load_queries(path: str | pathlib.Path, limit: int | None = None) -> QuerySet:
    """Queries from an .npz (`queries`, optional `gt_ids`, corpusA's layout) or a [n, dim] .npy."""
    path = pathlib.Path(path)
    if not path.exists():
        raise FileNotFoundError(f"query file not found: {path}")
    if path.suffix == ".npy":
        return QuerySet(np.load(path)[:limit])
    z = np.load(path)
    if "queries" not in z.files:
        raise ValueError(f"{path} has no 'queries' array (it has {', '.join(z.files)})")
    gt = z["gt_ids"][:limit] if "gt_ids" in z.files else None
    return QuerySet(z["queries"][:limit], gt)


def recall_hits(result_ids: np.ndarray, gt_ids: np.ndarray, k: int) -> np.ndarray:
    """Per query row: how many of the true top-k ids the result's top-k holds."""
    res = np.asarray(result_ids, dtype=np.uint64)[:, :k]
    gt = np.asarray(gt_ids, dtype=np.uint64)[:, :k]
    return (res[:, :, None] == gt[:, None, :]).any(axis=2).sum(axis=1)


class WriteVectors:
    """The vector written for an id: a pure function of (seed, dim, id), so anyone can recompute it."""

    def __init__(self, dim: int, seed: int = 0):
        self.pool = np.random.default_rng(seed + 7919).standard_normal((_POOL_ROWS, dim)).astype(np.float32)

    def __call__(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, dtype=np.uint64)
        rows = self.pool[(ids % _POOL_ROWS).astype(np.int64)]
        # a per-id scale so two ids sharing a pool row still differ
        scale = 1.0 + ((ids // _POOL_ROWS) % 97).astype(np.float32) / 97
        return rows * scale[:, None]


def worker_id_range(workload: Workload, worker: int) -> int:
    """First id of the range worker `worker` writes."""
    return workload.write_id_base + worker * WORKER_ID_SPAN
