"""Funnel planning from a target recall: calibrate a recall-vs-cost curve, pick from it.

Pure Python and numpy; the coordinator runs the searches. A calibration takes
sample queries, finds their exact top-k at the full dim, runs each candidate
schedule (one shortlist stage at each nested dim below the full dim, keeping
k x 2 ... k x 100 candidates), and records each schedule's recall@k and cost.

Where the sample comes from matters. Real queries are the best sample: the
coordinator keeps the recent query rows it served. Without enough of them it
samples stored vectors (their own id excluded from the answers), which are
closer to their neighbours than real queries are and so overstate recall: on
corpusA, 64 dims keep 100 measured 0.957 on stored vectors against 0.906 on the
real query set. Schedules calibrated on stored vectors therefore must reach a
stricter bar: a miss rate at most 1/STORED_MARGIN of the one asked for.

With an ANN index ready on every shard, calibration also measures ANN
schedules (graph walk with `ef` for `candidates` per shard, exact re-rank at
the full dim), and the curve remembers the index dim it measured, so a curve
made before the index was ready is remade once it is (docs/ann.md).
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nestvec.cluster._engine import funnel_rounds
from nestvec.cluster._engine.lowp import has_copy, lowp_overfetch

KEEP_FACTORS = (2, 5, 10, 20, 50, 100)
STORED_MARGIN = 10.0       # see the module doc
RECALIBRATE_GROWTH = 1.5   # recalibrate once the collection grows by half
MIN_OBSERVED = 200         # real query rows needed to calibrate on them
# A re-scored survivor is gathered by random access; a scanned row streams through
# BLAS. Measured on corpusA, one survivor-dim costs about 4 scanned row-dims.
RERANK_WEIGHT = 4.0
DEFAULT_TARGET = 0.95      # funnel="auto"
ANN_FACTORS = (3, 5, 10, 20, 30, 50)   # ANN candidates per shard = k x these (ef = candidates)


@dataclass(frozen=True)
class Schedule:
    stages: tuple[tuple[int, int], ...]   # () means exact flat search at the full dim
    recall: float                         # mean recall@k over the calibration sample
    cost: float                           # model: vector-dims touched per query
    recall_low: float = 1.0               # mean minus two standard errors: what pick() trusts
    ann: tuple[int, int] = ()             # (ef, candidates) of an ANN search; () for a scan


@dataclass(frozen=True)
class Curve:
    k: int
    dim: int
    vectors: int                # live vectors when calibrated
    source: str                 # "queries" (real, observed) or "stored" (sampled vectors)
    schedules: tuple[Schedule, ...]
    index_dim: int = 0          # dim of the ANN graph its ANN schedules used (0: none)

    def pick(self, target: float, ann_only: bool = False) -> Schedule:
        """The cheapest schedule whose calibrated recall meets `target` (flat if none does).

        `ann_only`: among ANN schedules only (the widest one if none meets it)."""
        miss = 1.0 - target
        if self.source == "stored":
            miss /= STORED_MARGIN
        # The sample is finite: a schedule must meet the target at the low end of its
        # recall's confidence interval, not only on average.
        pool = [s for s in self.schedules if s.ann] if ann_only else list(self.schedules)
        ok = [s for s in pool if 1.0 - s.recall_low <= miss + 1e-12]
        if ok:
            return min(ok, key=lambda s: s.cost)
        return max(pool, key=lambda s: s.ann[1]) if ann_only and pool else self.flat

    @property
    def flat(self) -> Schedule:
        return next(s for s in self.schedules if not s.stages and not s.ann)

    def stale(self, vectors: int) -> bool:
        return vectors > RECALIBRATE_GROWTH * self.vectors

    def to_dict(self) -> dict:
        return {"k": self.k, "dim": self.dim, "vectors": self.vectors, "source": self.source,
                "index_dim": self.index_dim,
                "schedules": [[list(map(list, s.stages)), s.recall, s.cost, s.recall_low, list(s.ann)]
                              for s in self.schedules]}

    @staticmethod
    def from_dict(d: dict) -> "Curve":
        return Curve(d["k"], d["dim"], d["vectors"], d["source"], tuple(
            Schedule(tuple(tuple(x) for x in st), r, c, lo, tuple(rest[0]) if rest else ())
            for st, r, c, lo, *rest in d["schedules"]), int(d.get("index_dim", 0)))


# Scan time of a low-precision first stage relative to float32 at the same dim, per
# query at batch 1 on corpusA (FAISS SQ kernels, bench/bench_recall_qps.py): rough.
SCAN_FACTOR = {"float16": 0.6, "int8": 0.5}


def candidate_schedules(nested_dims, dim: int, k: int, vectors: int, shards: int
                        ) -> list[tuple[tuple[int, int], ...]]:
    """One-stage shortlists below the full dim, plus () for exact flat search."""
    out: list[tuple[tuple[int, int], ...]] = [()]
    for d in nested_dims:
        if d >= dim:
            continue
        for f in KEEP_FACTORS:
            keep = k * f
            if keep < vectors:
                out.append(((int(d), int(keep)),))
    return out


def ann_schedules(k: int, vectors: int, max_candidates: int) -> list[tuple[int, int]]:
    """(ef, candidates) pairs an ANN calibration measures."""
    out = []
    for f in ANN_FACTORS:
        c = k * f
        if c <= max_candidates and c < vectors:
            out.append((c, c))
    return out


def ann_cost(ef: int, candidates: int, index_dim: int, m: int, dim: int, shards: int) -> float:
    """Relative cost of an ANN search, in the unit of cost(): each shard's walk
    computes about ef x m distances at the index dim, then re-scores its
    candidates at the full dim, all by random access (RERANK_WEIGHT)."""
    return float(RERANK_WEIGHT * shards * (ef * m * index_dim + candidates * dim))


def cost(stages, dim: int, vectors: int, shards: int, first_stage: str = "float32") -> float:
    """Relative cost per query: a full scan at stage 1's dim, then the re-scoring of
    shortlisted rows at every later dim.

    Rows re-scored after stage 1: one shard re-ranks its shortlist; several shards
    settle a one-stage funnel (the only kind planned) in one round, each re-scoring
    its share of the shortlist plus a margin (funnel_rounds.spec_count). Longer
    funnels are priced as one fan-out (every shard re-ranks `keep`).
    A low-precision first stage (lowp.py) scans its copy for SCAN_FACTOR of the
    float32 cost and re-scores a few extra rows at stage 1's dim (lowp.lowp_overfetch)."""
    if not stages:
        return float(vectors * dim)
    (d1, keep), rest = stages[0], stages[1:]
    later = sum(d for d, _ in rest) + dim
    if shards == 1:
        rows = keep
    elif not rest:
        rows = shards * funnel_rounds.spec_count(keep, shards)
    else:
        rows = shards * keep
    if first_stage != "float32" and has_copy(d1, dim):
        scan = SCAN_FACTOR[first_stage] * vectors * d1
        rerank = RERANK_WEIGHT * (shards * lowp_overfetch(keep) * d1 + rows * later)
        return float(scan + rerank)
    return float(vectors * d1 + RERANK_WEIGHT * rows * later)


def recall(found: np.ndarray, truth: np.ndarray) -> tuple[float, float]:
    """(mean recall, mean minus two standard errors): the fraction of each row of
    `truth` found in the same row of `found`, over the rows."""
    per_query = (found[:, :, None] == truth[:, None, :]).any(axis=2).sum(axis=1) / truth.shape[1]
    mean = float(per_query.mean())
    se = float(per_query.std(ddof=1) / np.sqrt(per_query.size)) if per_query.size > 1 else 1.0
    return mean, mean - 2 * se


def drop_self(ids: np.ndarray, own: np.ndarray | None, k: int) -> np.ndarray:
    """First k ids of each row without the query's own id (for stored-vector samples)."""
    if own is None:
        return ids[:, :k]
    keep = ids != own[:, None]
    # rows that did not contain their own id keep their first k
    order = np.argsort(~keep, axis=1, kind="stable")
    return np.take_along_axis(ids, order, axis=1)[:, :k]
