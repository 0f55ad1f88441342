"""A funnel over several shards, run in rounds: the coordinator's arithmetic.

In one round (ShardEngine.funnel_candidates) every shard must re-score its whole
local shortlist at every later dim, because only the merge knows which of its
candidates survive globally: with S shards that is S times the re-rank work of
one engine. In rounds, the coordinator cuts to the global survivors between
stages, so each shard gathers only its share of them:

- round 1: each shard shortlists at stage 1's dim (ShardEngine.shortlist); the
  coordinator keeps the global best `keep` (`cut`);
- each later round sends every shard its own survivors (`share`) to re-score at
  the next stage's dim (ShardEngine.rescore_survivors), and cuts again;
- the last round asks each shard for only its best k survivors at the final dim;
  `final` merges those.

Each cut keeps the best by (key desc, id asc) among the previous survivors, so
the answer is run_funnel's over the one-round candidates. A survivor deleted
between rounds comes back with key -inf and drops out.

A funnel of one stage usually needs no second round. Shards are filled by id
hash, so a shard's share of the global shortlist of `keep` is about keep / S,
give or take a binomial spread. Each shard therefore re-scores, in the first
round, only the best `spec_count` rows of its own shortlist (a few standard
deviations above its share) and sends those with both keys (`one_round`). A
query is exact whenever every shard whose rows all made the global shortlist
sent fewer than `spec_count`; a query where some shard's sent rows all made it
(that shard may hold more) is run again in rounds.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from nestvec.cluster._engine.topk import best_unordered, merge_topk

# Round codes besides the stage numbers (ShardActor.funnel_round):
WHOLE_FUNNEL = -1   # a one-shard collection: the shard runs the whole funnel
ONE_ROUND = -2      # a one-stage funnel's single round
SPEC_SIGMAS = 4.0   # a shard re-scores its expected share plus this many standard deviations


@dataclass
class Survivors:
    ids: np.ndarray    # [Q, M] uint64, the global best, in no order
    owner: np.ndarray  # [Q, M] index of the shard that holds each id
    valid: np.ndarray  # [Q, M] False where a key was -inf (padding, or deleted meanwhile)


def cut(parts: list[tuple[int, np.ndarray, np.ndarray]], keep: int) -> Survivors:
    """The global best `keep` of the shards' (shard, ids [Q, m], keys [Q, m]) lists."""
    ids = np.concatenate([p[1] for p in parts], axis=1)
    keys = np.concatenate([p[2] for p in parts], axis=1)
    owner = np.concatenate([np.full(p[1].shape, p[0], dtype=np.int32) for p in parts], axis=1)
    order = best_unordered(keys, ids, keep)  # the shards need no order
    return Survivors(np.take_along_axis(ids, order, axis=1),
                     np.take_along_axis(owner, order, axis=1),
                     np.isfinite(np.take_along_axis(keys, order, axis=1)))


def share(surv: Survivors, shard: int) -> tuple[np.ndarray, np.ndarray] | None:
    """One shard's survivors, left-packed per query: ([Q, M] ids, [Q] counts); the
    tail of a row past its count is padding (id 0). None if the shard holds none."""
    mine = (surv.owner == shard) & surv.valid
    counts = mine.sum(axis=1)
    width = int(counts.max()) if counts.size else 0
    if width == 0:
        return None
    rows, cols = np.nonzero(mine)  # row-major: each row's entries together, in order
    starts = np.cumsum(counts) - counts
    packed = np.zeros((mine.shape[0], width), dtype=surv.ids.dtype)
    packed[rows, np.arange(rows.size) - np.repeat(starts, counts)] = surv.ids[rows, cols]
    return packed, counts.astype(np.int32)


def final(parts: list[tuple[np.ndarray, np.ndarray]], k: int) -> tuple[np.ndarray, np.ndarray]:
    """Merge the shards' own top-k survivors at the final dim into [Q, kk] (ids, keys):
    kk is k, or fewer if some query has fewer live survivors (deletes meanwhile)."""
    ids, keys = merge_topk(np.concatenate([p[0] for p in parts], axis=1),
                           np.concatenate([p[1] for p in parts], axis=1), k)
    live = int(np.isfinite(keys).sum(axis=1).min()) if keys.size else 0
    return ids[:, :live], keys[:, :live]


def spec_count(keep: int, shards: int) -> int:
    """Rows of its shortlist each of `shards` shards re-scores in a one-round funnel:
    its expected share of the global `keep`, plus SPEC_SIGMAS binomial deviations."""
    p = 1.0 / shards
    return min(keep, int(np.ceil(keep * p + SPEC_SIGMAS * np.sqrt(keep * p * (1 - p)))) + 1)


def one_round(parts: list[tuple[np.ndarray, np.ndarray]], spec: int, keep: int, k: int
              ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A one-stage funnel from one round: the shards' (ids [Q, m], keys [Q, m, 2]) lists,
    each shard's best `spec` by its stage key with their keys at the stage dim and at
    the final dim. Returns the [Q, kk] (ids, final keys) and the queries to run again
    in rounds: those where a shard sent `spec` rows (so it may hold more) and all of
    them made the global shortlist."""
    ids = np.concatenate([p[0] for p in parts], axis=1)
    keys = np.concatenate([p[1] for p in parts], axis=1)
    owner = np.concatenate([np.full(p[0].shape, i, dtype=np.int32) for i, p in enumerate(parts)], axis=1)
    cols = best_unordered(keys[..., 0], ids, keep)
    took = np.take_along_axis(owner, cols, axis=1)
    redo = np.zeros(ids.shape[0], dtype=bool)
    if spec < keep:  # (a shard that sent fewer than spec sent every live row it has)
        for i in range(len(parts)):
            redo |= (took == i).sum(axis=1) >= spec
    out_ids, out_keys = merge_topk(np.take_along_axis(ids, cols, axis=1),
                                   np.take_along_axis(keys[..., 1], cols, axis=1), k)
    return out_ids, out_keys, np.flatnonzero(redo)
