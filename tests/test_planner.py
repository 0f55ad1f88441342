"""Funnel planning from a target recall (cluster/_engine/planner.py), unit and over real gRPC."""
from __future__ import annotations

import uuid

import numpy as np
import pytest
import ray

from nestvec.client import Client
from nestvec.cluster._engine import planner
from nestvec.errors import NestvecError
from oracle import brute_force, exact_scores


# ----- the curve ---------------------------------------------------------------------
def _curve(source="queries"):
    S = planner.Schedule
    return planner.Curve(10, 384, 1000, source, (
        S((), 1.0, 384_000.0, 1.0),
        S(((32, 100),), 0.90, 50_000.0, 0.88),
        S(((64, 100),), 0.96, 90_000.0, 0.95),
        S(((128, 100),), 0.995, 160_000.0, 0.992),
    ))


def test_pick_takes_the_cheapest_schedule_whose_low_bound_meets_the_target():
    c = _curve()
    assert c.pick(0.85).stages == ((32, 100),)
    assert c.pick(0.89).stages == ((64, 100),)      # 32:100 averages 0.90 but its low bound is 0.88
    assert c.pick(0.99).stages == ((128, 100),)
    assert c.pick(0.999).stages == ()                # nothing else is good enough: exact flat
    stored = _curve("stored")                        # stored-vector samples: 10x stricter on misses
    assert stored.pick(0.9).stages == ((128, 100),)  # miss allowed 0.01: only 128:100 (0.008)
    assert planner.Curve.from_dict(c.to_dict()) == c


def test_recall_and_self_exclusion():
    truth = np.array([[1, 2, 3], [4, 5, 6]])
    mean, low = planner.recall(np.array([[1, 2, 9], [4, 5, 6]]), truth)
    assert mean == pytest.approx(5 / 6) and low < mean
    ids = np.array([[7, 1, 2, 3], [4, 5, 6, 8]])
    np.testing.assert_array_equal(planner.drop_self(ids, np.array([7, 9]), 3), [[1, 2, 3], [4, 5, 6]])


def test_cost_model_orders_flat_above_funnels():
    assert planner.cost((), 384, 100_000, 2) > planner.cost(((64, 400),), 384, 100_000, 2)
    assert planner.cost(((64, 200),), 384, 100_000, 2) < planner.cost(((64, 400),), 384, 100_000, 2)
    # several shards re-score a one-stage funnel's shortlist once, plus each one's margin:
    # more than one shard's re-rank of it, less than every shard re-ranking all of it
    one = planner.cost(((64, 400),), 384, 100_000, 1) - 100_000 * 64
    two = planner.cost(((64, 400),), 384, 100_000, 2) - 100_000 * 64
    assert one < two < 2 * one


# ----- over gRPC ---------------------------------------------------------------------------
@pytest.fixture(scope="module")
def loaded(gateway, corpus):
    name = f"plan-{uuid.uuid4().hex[:6]}"
    docs = corpus["docs"][:20_000]
    ids = np.arange(docs.shape[0], dtype=np.uint64) * 7
    with Client(gateway.address, timeout=120) as c:
        c.create_collection(name, 384, "cosine", shards=2)
        c.upsert(name, ids, docs)
    yield name, ids, docs
    with Client(gateway.address) as c:
        c.drop_collection(name)


def _recall(found, truth):
    return float(np.mean([len(set(a) & set(b)) / truth.shape[1]
                          for a, b in zip(found.tolist(), truth.tolist())]))


def test_target_recall_is_met_on_held_out_queries(gateway, loaded, corpus):
    name, ids, docs = loaded
    queries = corpus["queries"]
    with Client(gateway.address, timeout=120) as c:
        for s in range(0, 400, 50):  # ordinary traffic: the planner calibrates on it
            c.search(name, queries[s: s + 50], k=10)
        held_out = queries[500:800]
        truth, _ = brute_force(ids, docs, held_out, "cosine", 384, 10)
        for target in (0.9, 0.99):
            r = c.search(name, held_out, k=10, target_recall=target)
            assert r.funnel_used and r.funnel_used[0][0] < 384, r.funnel_used  # cheaper than flat
            assert r.calibrated_recall >= target
            assert _recall(r.ids, truth) >= target, (target, r.funnel_used)
            # the answer is what that funnel gives, exactly
            again = c.search(name, held_out, k=10, funnel=r.funnel_used)
            np.testing.assert_array_equal(r.ids, again.ids)


@pytest.mark.parametrize("dim,nested", [(384, None), (96, [16, 48]), (64, [64]), (128, [8])])
def test_auto_is_valid_for_every_nested_dim_set(gateway, corpus, dim, nested):
    docs, queries = corpus["docs"][:3000, :dim], corpus["queries"][:20, :dim]
    ids = np.arange(docs.shape[0], dtype=np.uint64)
    name = f"auto-{uuid.uuid4().hex[:6]}"
    with Client(gateway.address, timeout=120) as c:
        c.create_collection(name, dim, "cosine", nested_dims=nested, shards=2)
        c.upsert(name, ids, docs)
        try:
            r = c.search(name, queries, k=10, funnel="auto")
            assert r.ids.shape == (20, 10) and r.calibrated_recall is not None
            assert all(len(set(row)) == 10 for row in r.ids.tolist())
            exact = exact_scores(docs, queries, "cosine", dim)  # scores are the exact ones
            np.testing.assert_allclose(r.scores, np.take_along_axis(exact, r.ids.astype(int), 1),
                                       atol=1e-4)
            assert all(d < dim for d, _ in r.funnel_used)
        finally:
            c.drop_collection(name)


def test_calibration_is_kept_and_redone_after_growth(gateway, coordinator, corpus, ray_cluster):
    name = f"grow-{uuid.uuid4().hex[:6]}"
    docs = corpus["docs"][:6000]
    with Client(gateway.address, timeout=120) as c:
        c.create_collection(name, 384, "cosine", shards=2)
        c.upsert(name, np.arange(2000), docs[:2000])
        c.search(name, corpus["queries"][:5], k=10, target_recall=0.95)
        catalog = ray.get_actor("catalog", namespace=ray_cluster)
        kept = ray.get(catalog.get.remote(name))["calibration"]["10"]
        assert kept["vectors"] == 2000 and kept["source"] == "stored"
        c.upsert(name, np.arange(2000, 6000), docs[2000:])  # 3x the vectors
        coordinator._curves.clear()  # as a fresh gateway would start
        c.search(name, corpus["queries"][:5], k=10, target_recall=0.95)
        # a gateway has its own cache; the catalog shows whether a recalibration ran
        redone = ray.get(catalog.get.remote(name))["calibration"]["10"]
        assert redone["vectors"] == 6000
        c.drop_collection(name)


@pytest.mark.parametrize("kwargs,word", [
    ({"target_recall": 0.9, "funnel": [(64, 100)]}, "not both"),
    ({"target_recall": 1.5}, "(0, 1]"),
    ({"target_recall": 0.9, "dim": 64}, "full dim"),
])
def test_bad_target_recall_requests(gateway, loaded, corpus, kwargs, word):
    name, _, _ = loaded
    with Client(gateway.address) as c, pytest.raises(NestvecError) as err:
        c.search(name, corpus["queries"][:2], k=10, **kwargs)
    assert err.value.code == "INVALID_ARGUMENT" and word in err.value.message


def test_calibrations_kept_per_collection_are_capped(gateway, corpus, ray_cluster):
    """A read key asking target_recall at ever new k must not grow the catalog without
    bound: at most MAX_CALIBRATIONS curves per collection, the newest kept."""
    from nestvec.cluster._distributed.catalog import MAX_CALIBRATIONS
    name = f"cap-{uuid.uuid4().hex[:6]}"
    with Client(gateway.address, timeout=120) as c:
        c.create_collection(name, 384, "cosine", shards=1)
        c.upsert(name, np.arange(1500), corpus["docs"][:1500])
        asked = list(range(1, MAX_CALIBRATIONS + 3))
        for k in asked:
            c.search(name, corpus["queries"][:3], k=k, target_recall=0.9)
        catalog = ray.get_actor("catalog", namespace=ray_cluster)
        kept = ray.get(catalog.get.remote(name))["calibration"]
        assert list(kept) == [str(k) for k in asked[-MAX_CALIBRATIONS:]]
        c.drop_collection(name)
