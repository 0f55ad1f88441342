"""Funnels across shards in rounds: when, and the sub-plan that runs them.

The per-round math (cuts, shares, the one-round margin) is pure and lives in
`_engine/funnel_rounds.py`; this module decides when a search goes in rounds
rather than one fan-out and drives the rounds as a coordinator sub-plan.
"""
from __future__ import annotations

import functools

import numpy as np

from nestvec.cluster._distributed.fanout import Fanout
from nestvec.cluster._distributed.shard_set import ShardSet, forget_direct
from nestvec.cluster._engine import funnel_rounds
from nestvec.cluster._engine.collection import SearchPlan
from nestvec.errors import Unavailable

# A funnel over several shards runs in rounds (funnel_rounds.py) once the re-rank
# work of one fan-out (queries x stage-1 candidates x the dims re-scored after it,
# on every shard) reaches this many row-dims; below it the extra round trips cost
# more than re-ranking every shard's whole shortlist. Measured with 2 shards on
# corpusA: a round costs ~0.5 ms over the sockets (more as Ray calls); at 2M
# row-dims (64:400 -> 384 at 13 queries) the two ways break even.
ROUNDS_MIN_ROW_DIMS_DIRECT = 2_000_000
ROUNDS_MIN_ROW_DIMS_RAY = 8_000_000


def in_rounds(forced: bool | None, c: ShardSet, queries: np.ndarray, plan: SearchPlan, direct) -> bool:
    """Run this funnel in rounds (funnel_rounds.py) rather than in one fan-out?
    Always with one shard (one call runs the whole pruned funnel there) and for
    one stage (one round, which re-scores less than one fan-out: measured as fast
    at batch 1, 10-22% faster at batches of 4-16 for 64:400 over 2 shards); for
    longer funnels on several shards, once the shortlists are big enough that
    re-ranking only the global survivors saves more than the extra round trips cost."""
    if forced is not None:
        return forced
    if len(c.shards) == 1 or len(plan.stages) == 1:
        return True
    later = sum(d for d, _ in plan.stages[1:]) + plan.dim
    work = queries.shape[0] * plan.stages[0][1] * later
    return work >= (ROUNDS_MIN_ROW_DIMS_DIRECT if direct and all(direct) else ROUNDS_MIN_ROW_DIMS_RAY)

def run_rounds(c: ShardSet, queries: np.ndarray, q_arg, plan: SearchPlan,
                   direct, partial: bool, one_round: bool = True):
    """A funnel across the shards, one round per stage (funnel_rounds.py); a
    one-stage funnel in one round, its queries a shard may hold more of again in
    rounds (`one_round=False`). Returns ([Q, kk] ids, keys, missing shards)."""
    def fan(shards: list[int], rounds: list[tuple]) -> Fanout:
        return Fanout([(c.shards[i].funnel_round, (q_arg, plan, *r)) for i, r in zip(shards, rounds)],
                      partial_ok=partial, deadline=True,
                      direct=[direct[i] for i in shards] if direct else None,
                      direct_args=[(queries, plan, r) for r in rounds],
                      on_direct_down=functools.partial(forget_direct, c))

    def unreachable():
        return Unavailable(f"no shard of collection {c.config.name!r} is reachable; retry later")

    if len(c.shards) == 1:  # the shard holds everything: it runs the whole funnel
        (got,) = yield fan([0], [(funnel_rounds.WHOLE_FUNNEL, None, None)])
        if got is None:
            raise unreachable()
        return got[0], got[1], []
    if len(plan.stages) == 1 and one_round:  # usually settled in one round (funnel_rounds.py)
        keep = plan.stages[0][1]
        spec = funnel_rounds.spec_count(keep, len(c.shards))
        got = yield fan(list(range(len(c.shards))),
                        [(funnel_rounds.ONE_ROUND, None, np.array([spec], np.int32))] * len(c.shards))
        parts = [g for g in got if g is not None]
        if not parts:
            raise unreachable()
        ids, keys, redo = funnel_rounds.one_round(parts, spec, keep, plan.k)
        missing = [i for i, g in enumerate(got) if g is None]
        if redo.size:  # a shard may hold more of these queries' shortlists: rounds
            again, again_keys, more = yield from run_rounds(
                c, queries[redo], queries[redo], plan, direct, partial, one_round=False)
            width = min(ids.shape[1], again.shape[1])  # deletes meanwhile may narrow it
            ids, keys = ids[:, :width], keys[:, :width]
            ids[redo], keys[redo] = again[:, :width], again_keys[:, :width]
            missing = sorted(set(missing) | set(more))
        return ids, keys, missing
    missing: set[int] = set()
    shards, rounds = list(range(len(c.shards))), [(0, None, None)] * len(c.shards)
    for stage in range(len(plan.stages) + 1):
        got = yield fan(shards, rounds)
        missing |= {i for i, g in zip(shards, got) if g is None}
        parts = [(i, *g) for i, g in zip(shards, got) if g is not None]
        if not parts:
            raise unreachable()
        if stage == len(plan.stages):
            ids, keys = funnel_rounds.final([p[1:] for p in parts], plan.k)
            return ids, keys, sorted(missing)
        surv = funnel_rounds.cut(parts, plan.stages[stage][1])
        shares = [(i, funnel_rounds.share(surv, i)) for i in range(len(c.shards)) if i not in missing]
        shares = [(i, sh) for i, sh in shares if sh is not None]
        if not shares:  # every survivor was deleted between the rounds
            return (np.zeros((queries.shape[0], 0), np.uint64),
                    np.zeros((queries.shape[0], 0), np.float32), sorted(missing))
        shards, rounds = [i for i, _ in shares], [(stage + 1, *sh) for _, sh in shares]
