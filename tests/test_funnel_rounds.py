"""Funnels across shards in rounds (cluster/_engine/funnel_rounds.py): the coordinator's cuts
against run_funnel, the engine's round methods, and whole searches over a real Ray
cluster in rounds and in one fan-out against the numpy oracle."""
from __future__ import annotations

import uuid

import numpy as np
import pytest

from nestvec.cluster._engine import funnel_rounds
from nestvec.cluster._engine.collection import CollectionConfig, SearchPlan
from nestvec.cluster._engine.shard_engine import ShardEngine
from nestvec.cluster._engine.topk import run_funnel
from oracle import assert_matches_oracle


def _rounds_by_hand(engines: list[ShardEngine], queries: np.ndarray, plan: SearchPlan):
    """The coordinator's loop, with engines in place of shard actors."""
    parts = [(i, *e.shortlist(queries, plan.stages[0])) for i, e in enumerate(engines)]
    for stage in range(1, len(plan.stages) + 1):
        surv = funnel_rounds.cut(parts, plan.stages[stage - 1][1])
        last = stage == len(plan.stages)
        dim = plan.dim if last else plan.stages[stage][0]
        parts = []
        for i, e in enumerate(engines):
            sh = funnel_rounds.share(surv, i)
            if sh is not None:
                parts.append((i, *e.rescore_survivors(queries, *sh, dim, plan.k if last else None)))
    return funnel_rounds.final([p[1:] for p in parts], plan.k)


@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
@pytest.mark.parametrize("stages", [((32, 300),), ((32, 400), (128, 60)), ((16, 500), (64, 200), (128, 40))])
def test_rounds_equal_one_engines_funnel(corpus, metric, stages):
    docs, queries = corpus["docs"][:8000], corpus["queries"][:24]
    ids = np.arange(docs.shape[0], dtype=np.uint64) * 7 + 3
    cfg = CollectionConfig.create("r", 384, metric)
    whole = ShardEngine(cfg)
    whole.upsert(ids, docs)
    engines = [ShardEngine(cfg) for _ in range(3)]
    for i, e in enumerate(engines):
        e.upsert(ids[i::3], docs[i::3])
    plan = SearchPlan(10, 384, stages)
    got_ids, got_keys = _rounds_by_hand(engines, queries, plan)
    ref_ids, ref_keys = whole.funnel_keys(queries, plan)
    np.testing.assert_array_equal(got_ids, ref_ids)
    np.testing.assert_allclose(got_keys, ref_keys, rtol=1e-5, atol=1e-5)
    # and the one-round candidates through run_funnel (what a single fan-out merges)
    cands = [e.funnel_candidates(queries, plan) for e in engines]
    one_ids, _ = run_funnel(np.concatenate([c.ids for c in cands], axis=1),
                            np.concatenate([c.keys for c in cands], axis=1), plan.keeps, plan.k)
    np.testing.assert_array_equal(got_ids, one_ids)


def test_cut_share_and_final_by_hand():
    # two shards, two queries; keys chosen so that ties break by id
    parts = [(0, np.array([[5, 1, 9], [2, 4, 6]], np.uint64), np.array([[0.9, 0.5, 0.5], [0.1, 0.2, 0.3]], np.float32)),
             (1, np.array([[3, 8], [7, 11]], np.uint64), np.array([[0.7, 0.5], [0.8, -np.inf]], np.float32))]
    surv = funnel_rounds.cut(parts, 4)  # the survivors' set; their order is free
    got = [sorted(zip(i.tolist(), o.tolist())) for i, o in zip(surv.ids, surv.owner)]
    assert got == [[(1, 0), (3, 1), (5, 0), (8, 1)], [(2, 0), (4, 0), (6, 0), (7, 1)]]
    assert surv.valid.all()
    ids0, counts0 = funnel_rounds.share(surv, 0)
    np.testing.assert_array_equal(counts0, [2, 3])
    assert sorted(ids0[0, :2]) == [1, 5] and sorted(ids0[1]) == [2, 4, 6]
    ids1, counts1 = funnel_rounds.share(surv, 1)
    np.testing.assert_array_equal(counts1, [2, 1])
    assert funnel_rounds.share(surv, 2) is None  # a shard with no survivors gets no call
    # an id deleted between the rounds (-inf) drops out, and the answer narrows to what is live
    ids, keys = funnel_rounds.final([(np.array([[5, 1], [6, 4]], np.uint64), np.array([[0.4, -np.inf], [0.3, 0.2]], np.float32)),
                                     (np.array([[3], [7]], np.uint64), np.array([[0.6], [0.1]], np.float32))], 3)
    np.testing.assert_array_equal(ids, [[3, 5], [6, 4]])
    assert np.isfinite(keys).all()


def test_rescore_survivors_masks_padding_and_deleted_ids(corpus):
    cfg = CollectionConfig.create("m", 384, "cosine")
    e = ShardEngine(cfg)
    e.upsert(np.arange(100, dtype=np.uint64), corpus["docs"][:100])
    e.delete(np.array([7], np.uint64))
    q = corpus["queries"][:2]
    ids = np.array([[7, 3, 3], [1, 2, 99]], np.uint64)
    _, keys = e.rescore_survivors(q, ids, np.array([2, 3], np.int32), 64)
    assert keys[0, 0] == -np.inf and keys[0, 2] == -np.inf  # deleted; padding
    assert np.isfinite(keys[0, 1]) and np.isfinite(keys[1]).all()
    best_ids, best_keys = e.rescore_survivors(q, ids, np.array([2, 3], np.int32), 64, best=2)
    assert best_ids[0, 0] == 3 and np.isfinite(best_keys[1]).all()


@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_cluster_funnels_in_rounds_match_the_oracle(coordinator, corpus, metric):
    """4 shards and 1: the funnel in rounds (over the sockets and through Ray calls) and
    in one fan-out give the oracle's answer, sync and async."""
    import asyncio

    from nestvec.cluster._distributed.coordinator import Coordinator

    docs, queries = corpus["docs"][:20_000], corpus["queries"][:20]
    ids = np.arange(docs.shape[0], dtype=np.uint64) * 3
    ns = coordinator.namespace
    paths = {"rounds": Coordinator(namespace=ns, funnel_in_rounds=True),
             "rounds-ray": Coordinator(namespace=ns, funnel_in_rounds=True, direct=False),
             "one-fanout": Coordinator(namespace=ns, funnel_in_rounds=False)}
    for shards in (4, 1):
        name = f"rounds-{shards}-{uuid.uuid4().hex[:6]}"
        coordinator.create_collection(name, 384, metric, shards=shards)
        try:
            coordinator.upsert(name, ids, docs)
            for funnel in ([(64, 300)], [(32, 500), (128, 60)], [(32, 800), (64, 200), (128, 30)]):
                for label, coord in paths.items():
                    res = coord.search(name, queries, k=10, funnel=funnel)
                    assert_matches_oracle(res.ids, res.scores, ids, docs, queries, metric, 384, 10, funnel)
                    ares = asyncio.run(coord.asearch(name, queries, k=10, funnel=funnel))
                    np.testing.assert_array_equal(ares.ids, res.ids, err_msg=label)
                # a single query on the default path (one round for one stage, else one fan-out)
                one = coordinator.search(name, queries[:1], k=10, funnel=funnel)
                assert_matches_oracle(one.ids, one.scores, ids, docs, queries[:1], metric, 384, 10, funnel)
        finally:
            coordinator.drop_collection(name)


def test_one_round_by_hand_flags_shards_that_may_hold_more():
    # three shards sent their best 2 (spec) of a shortlist of 3 (keep); keys are (stage, final)
    def part(first, stage, final):
        return (np.array([[first, first + 1]] * 2, np.uint64),
                np.stack([np.array(stage, np.float32), np.array(final, np.float32)], axis=-1))
    a = part(1, [[0.9, 0.8], [0.9, 0.1]], [[0.1, 0.2], [0.1, 0.2]])
    b = part(3, [[0.7, 0.6], [0.5, 0.05]], [[0.5, 0.4], [0.5, 0.4]])
    c = part(5, [[0.1, 0.05], [0.4, 0.01]], [[0.3, 0.3], [0.3, 0.3]])
    ids, keys, redo = funnel_rounds.one_round([a, b, c], spec=2, keep=3, k=2)
    # query 0: shortlist {1, 2, 3}: both of shard a's rows made it, so a may hold a better
    # row than 3 that it did not send: run again. Query 1: shortlist {1, 3, 5}: settled.
    np.testing.assert_array_equal(redo, [0])
    np.testing.assert_array_equal(ids[1], [3, 5])  # by the final key among {1, 3, 5}
    np.testing.assert_allclose(keys[1], [0.5, 0.3])
    # spec = keep: each shard's whole shortlist came, so nothing can be missing either
    assert funnel_rounds.one_round([a, b, c], spec=2, keep=2, k=2)[2].size == 0


@pytest.mark.parametrize("sigmas", [4.0, -1.5])
def test_one_round_equals_one_engines_funnel(corpus, sigmas, monkeypatch):
    """The shards' one-round lists settle exactly the queries one_round does not flag; with
    spec cut below the expected share (sigmas < 0) many are flagged, and those run in
    rounds. Together: the single engine's funnel."""
    monkeypatch.setattr(funnel_rounds, "SPEC_SIGMAS", sigmas)
    docs, queries = corpus["docs"][:9000], corpus["queries"][:32]
    ids = np.arange(docs.shape[0], dtype=np.uint64) * 5 + 1
    cfg = CollectionConfig.create("o", 384, "cosine")
    whole = ShardEngine(cfg)
    whole.upsert(ids, docs)
    engines = [ShardEngine(cfg) for _ in range(3)]
    for i, e in enumerate(engines):
        e.upsert(ids[i::3], docs[i::3])
    plan = SearchPlan(10, 384, ((64, 300),))
    spec = funnel_rounds.spec_count(300, 3)
    got_ids, got_keys, redo = funnel_rounds.one_round(
        [e.shortlist(queries, plan.stages[0], (spec, 384)) for e in engines], spec, 300, 10)
    if sigmas < 0:
        assert redo.size > 0
    else:
        assert redo.size == 0
    if redo.size:
        got_ids[redo], got_keys[redo] = _rounds_by_hand(engines, queries[redo], plan)
    ref_ids, ref_keys = whole.funnel_keys(queries, plan)
    np.testing.assert_array_equal(got_ids, ref_ids)
    np.testing.assert_allclose(got_keys, ref_keys, rtol=1e-5, atol=1e-5)


def test_cluster_one_round_falls_back_to_rounds_exactly(coordinator, corpus, monkeypatch):
    """Through the cluster with spec cut far below each shard's share, most queries need
    their second round; answers still equal the oracle's, sync and async."""
    import asyncio

    from nestvec.cluster._distributed.coordinator import Coordinator

    monkeypatch.setattr(funnel_rounds, "SPEC_SIGMAS", -2.0)
    assert funnel_rounds.spec_count(200, 3) < 200 / 3  # below every shard's expected share
    docs, queries = corpus["docs"][:12_000], corpus["queries"][:24]
    ids = np.arange(docs.shape[0], dtype=np.uint64)
    name = f"oneround-{uuid.uuid4().hex[:6]}"
    coordinator.create_collection(name, 384, "l2", shards=3)
    try:
        coordinator.upsert(name, ids, docs)
        for coord in (Coordinator(namespace=coordinator.namespace, funnel_in_rounds=True),
                      Coordinator(namespace=coordinator.namespace, funnel_in_rounds=True, direct=False)):
            res = coord.search(name, queries, k=10, funnel=[(64, 200)])
            assert_matches_oracle(res.ids, res.scores, ids, docs, queries, "l2", 384, 10, [(64, 200)])
            ares = asyncio.run(coord.asearch(name, queries, k=10, funnel=[(64, 200)]))
            np.testing.assert_array_equal(ares.ids, res.ids)
    finally:
        coordinator.drop_collection(name)
