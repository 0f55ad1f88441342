"""target_recall's calibrations: measure recall and cost of candidate funnels, keep the curve.

Sub-plans of the coordinator (they yield `Fanout`s like its operations). A curve
is made from recent real queries, or from stored vectors with a stricter bar
(planner.py), cached in the coordinator and stored with the collection in the catalog.
"""
from __future__ import annotations

import time

import numpy as np

from nestvec.cluster._distributed.fanout import Fanout
from nestvec.cluster._distributed.shard_set import ShardSet
from nestvec.cluster._engine import collection as col
from nestvec.cluster._engine import planner
from nestvec.errors import InvalidArgument


def curve(coord, c: ShardSet, k: int):
    """Sub-plan: the collection's calibration at k, made or refreshed when needed."""
    key = (c.config.name, k)
    cached = coord._curves.get(key)
    if cached is None:
        (rec,) = yield Fanout([(coord._catalog.get, (c.config.name,))])
        stored = ((rec or {}).get("calibration") or {}).get(str(k))
        if stored:
            cached = (planner.Curve.from_dict(stored), 0.0)
    if cached is not None and time.monotonic() - cached[1] < 10:
        return cached[0]
    live, index_dim = yield from live_count(c)
    if cached is not None and not cached[0].stale(live) and cached[0].index_dim == index_dim:
        coord._curves[key] = (cached[0], time.monotonic())
        return cached[0]
    curve = yield from calibrate(coord, c, k, None)
    return curve

def live_count(c: ShardSet):
    """Sub-plan: (live vectors, the dim of an ANN graph serving on every shard, 0 if
    some shard has none)."""
    stats = yield Fanout([(h.stats, ()) for h in c.shards])
    live = int(sum(s["vectors"] for s in stats))
    ready = all(s.get("index_state") in ("ready", "stale") for s in stats)
    return live, int(stats[0].get("index_dim", 0)) if ready else 0

def calibrate(coord, c: ShardSet, k: int, queries):
    cfg, name = c.config, c.config.name
    live, index_dim = yield from live_count(c)
    if live <= k:
        raise InvalidArgument(f"collection {name!r} has {live} vectors: too few to calibrate at k={k}")
    own = None
    observed = coord._observed.get(name)
    if queries is not None:
        sample, source = col.check_queries(queries, cfg, coord.limits), "queries"
    elif observed is not None and len(observed) >= planner.MIN_OBSERVED:
        sample, source = np.stack(list(observed)), "queries"
    else:
        per = max(1, 300 // cfg.shards)
        got = yield Fanout([(h.sample, (per,)) for h in c.shards])
        own = np.concatenate([g[0] for g in got])
        sample, source = np.concatenate([g[1] for g in got]), "stored"
    extra = 0 if own is None else 1  # a stored vector finds itself: ask one more, drop it
    exact = yield from type(coord).search.__wrapped__(coord, name, sample, k + extra, _record=False)
    truth = planner.drop_self(exact.ids, own, k)
    schedules = []
    for stages in planner.candidate_schedules(cfg.nested_dims, cfg.dim, k, live, cfg.shards):
        if stages:
            res = yield from type(coord).search.__wrapped__(
                coord, name, sample, k + extra, None, [list(s) for s in stages], _record=False)
            found = planner.drop_self(res.ids, own, k)
            rec, low = planner.recall(found, truth)
        else:
            rec = low = 1.0
        schedules.append(planner.Schedule(stages, rec, planner.cost(stages, cfg.dim, live, cfg.shards,
                                                               cfg.first_stage),
                                          low))
    if index_dim:  # ANN schedules: graph walk + exact re-rank at the full dim
        m = cfg.index.m if cfg.index is not None else 16
        for ef, cand in planner.ann_schedules(k, live, coord.limits.max_candidates):
            res = yield from type(coord).search.__wrapped__(
                coord, name, sample, k + extra, ann=True, ef=ef, candidates=cand, _record=False)
            rec, low = planner.recall(planner.drop_self(res.ids, own, k), truth)
            schedules.append(planner.Schedule((), rec, planner.ann_cost(
                ef, cand, index_dim, m, cfg.dim, cfg.shards), low, (ef, cand)))
    curve = planner.Curve(k, cfg.dim, live, source, tuple(schedules), index_dim)
    coord._curves[(name, k)] = (curve, time.monotonic())
    yield Fanout([(coord._catalog.set_calibration, (name, k, curve.to_dict()))])
    return curve
