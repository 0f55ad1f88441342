"""ShardEngine unit tests (pure numpy, no Ray): exactness against the float64
oracle at many prefix dims, funnels, writes, deletes and compaction, growth,
and the shard-split invariance the coordinator's merge relies on."""
from __future__ import annotations

import numpy as np
import pytest

from nestvec.cluster._engine.collection import CollectionConfig, check_vectors, plan_search
from nestvec.cluster._distributed.coordinator import merge_shard_results
from nestvec.cluster._engine.shard_engine import ShardEngine
from nestvec.cluster._distributed.routing import shard_of
from nestvec.errors import InvalidArgument
from oracle import assert_matches_oracle, brute_force

N_DOCS = 5_000
N_QUERIES = 30
DIM = 384
METRICS = ("cosine", "dot", "l2")


def make_ids(rows) -> np.ndarray:
    """A non-trivial uint64 id for each row (not the row number, not sorted by row)."""
    return (np.asarray(rows, dtype=np.uint64) * np.uint64(7919) + np.uint64(13)) % np.uint64(2**40)


def new_engine(metric: str, dim: int = DIM, **kwargs) -> ShardEngine:
    return ShardEngine(CollectionConfig.create("t", dim, metric), **kwargs)


def search(engine: ShardEngine, queries, k=10, dim=None, funnel=None):
    plan = plan_search(engine.config, queries.shape[1], k, dim, funnel)
    return engine.search(queries, plan)


@pytest.fixture(scope="module")
def data(corpus):
    docs = corpus["docs"][:N_DOCS]
    return {"docs": docs, "ids": make_ids(np.arange(N_DOCS)), "queries": corpus["queries"][:N_QUERIES]}


@pytest.fixture(scope="module")
def engines(data):
    """One loaded engine per metric, shared by the read-only tests."""
    out = {}
    for metric in METRICS:
        e = new_engine(metric)
        assert e.upsert(data["ids"], data["docs"]) == N_DOCS
        out[metric] = e
    return out


# ----- exactness -----------------------------------------------------------------
@pytest.mark.parametrize("dim", [1, 32, 64, 100, 384])  # 100 is not a nested dim
@pytest.mark.parametrize("metric", METRICS)
def test_exact_at_prefix_dim(engines, data, metric, dim):
    res = search(engines[metric], data["queries"], k=10, dim=dim)
    assert res.ids.dtype == np.uint64 and res.scores.dtype == np.float32
    assert_matches_oracle(res.ids, res.scores, data["ids"], data["docs"], data["queries"],
                          metric, dim, 10)


@pytest.mark.parametrize("metric", METRICS)
def test_exact_at_dim_not_in_nested_dims_with_custom_nested(data, metric):
    # nested dims [48, 384]: dim 100 must add columns 48..99 to the stored norms.
    e = ShardEngine(CollectionConfig.create("t", DIM, metric, nested_dims=[48]))
    e.upsert(data["ids"], data["docs"])
    for dim in (20, 48, 100):
        res = search(e, data["queries"], k=10, dim=dim)
        assert_matches_oracle(res.ids, res.scores, data["ids"], data["docs"], data["queries"],
                              metric, dim, 10)


@pytest.mark.parametrize("funnel,dim", [
    ([(32, 200)], 384),
    ([(64, 150)], 128),
    ([(32, 300), (100, 60)], 384),   # two stages, the second at a non-nested dim
])
@pytest.mark.parametrize("metric", METRICS)
def test_funnel_matches_oracle(engines, data, metric, funnel, dim):
    res = search(engines[metric], data["queries"], k=10, dim=dim, funnel=funnel)
    assert_matches_oracle(res.ids, res.scores, data["ids"], data["docs"], data["queries"],
                          metric, dim, 10, funnel)


def test_funnel_differs_from_flat_search_at_small_shortlists(engines, data):
    # Guards against a funnel that silently ignores its stages: with a tiny
    # 16-dim shortlist some answers must differ from the flat 384-dim search.
    flat = search(engines["cosine"], data["queries"], k=10)
    fun = search(engines["cosine"], data["queries"], k=10, funnel=[(16, 10)])
    assert (flat.ids != fun.ids).any()
    assert_matches_oracle(fun.ids, fun.scores, data["ids"], data["docs"], data["queries"],
                          "cosine", DIM, 10, [(16, 10)])


def test_k_above_live_count_returns_all(data):
    e = new_engine("l2")
    e.upsert(data["ids"][:7], data["docs"][:7])
    res = search(e, data["queries"][:3], k=50)
    assert res.ids.shape == (3, 7)
    assert_matches_oracle(res.ids, res.scores, data["ids"][:7], data["docs"][:7],
                          data["queries"][:3], "l2", DIM, 50)
    res = search(e, data["queries"][:3], k=5, funnel=[(32, 100)])
    assert_matches_oracle(res.ids, res.scores, data["ids"][:7], data["docs"][:7],
                          data["queries"][:3], "l2", DIM, 5, [(32, 100)])


def test_empty_engine_returns_no_columns(data):
    e = new_engine("cosine")
    res = search(e, data["queries"][:2], k=5)
    assert res.ids.shape == (2, 0) and res.scores.shape == (2, 0)


# ----- writes ----------------------------------------------------------------------
def test_upsert_replaces_existing_ids(data):
    docs = data["docs"][:2000].copy()
    ids = data["ids"][:2000]
    e = new_engine("cosine")
    e.upsert(ids, docs)
    before = search(e, data["queries"], k=10)
    # Replace 50 vectors; the first 10 become the queries themselves, so they must now rank first.
    rows = np.random.default_rng(0).choice(2000, 50, replace=False)
    new = data["docs"][3000:3050].copy()
    new[:10] = data["queries"][:10]
    assert e.upsert(ids[rows], new) == 50
    docs[rows] = new
    assert len(e) == 2000 and e.stats().vectors == 2000 and e.stats().tombstones == 0
    found, got = e.get(ids[rows])
    assert found.all()
    np.testing.assert_array_equal(got, new)
    after = search(e, data["queries"], k=10)
    assert (after.ids != before.ids).any() and not np.allclose(after.scores, before.scores)
    np.testing.assert_array_equal(after.ids[:10, 0], ids[rows[:10]])
    assert_matches_oracle(after.ids, after.scores, ids, docs, data["queries"], "cosine", DIM, 10)
    # Stored norms follow the new vectors at a nested and a non-nested prefix too.
    for dim in (32, 100):
        res = search(e, data["queries"], k=10, dim=dim)
        assert_matches_oracle(res.ids, res.scores, ids, docs, data["queries"], "cosine", dim, 10)


def test_duplicate_ids_in_one_batch_last_wins(data):
    e = new_engine("dot")
    v = data["docs"][:4]
    ids = np.array([5, 6, 5, 5], dtype=np.uint64)
    assert e.upsert(ids, v) == 2
    assert len(e) == 2
    found, got = e.get(np.array([5, 6], dtype=np.uint64))
    assert found.all()
    np.testing.assert_array_equal(got, v[[3, 1]])
    res = search(e, v[3:4], k=2)
    assert_matches_oracle(res.ids, res.scores, np.array([5, 6], np.uint64), v[[3, 1]], v[3:4],
                          "dot", DIM, 2)


def test_delete_tombstones_then_compacts(data):
    n = 1000
    docs, ids = data["docs"][:n], data["ids"][:n]
    e = new_engine("l2")
    e.upsert(ids, docs)
    cap = e.stats().capacity
    rng = np.random.default_rng(1)
    order = rng.permutation(n)
    # Include every query's current best hit, so a leaked tombstone would show up.
    best = search(e, data["queries"], k=1).ids[:, 0]
    first = np.unique(np.concatenate([best, ids[order[:200]]]))[:200]
    alive = ~np.isin(ids, first)

    assert e.delete(first) == 200
    assert e.delete(first[:5]) == 0                      # already gone
    s = e.stats()
    assert (s.vectors, s.tombstones, s.capacity) == (800, 200, cap)  # 200 < n/4: no compaction yet
    check_deleted(e, data, ids, docs, alive, first)

    second = ids[alive][:60]                             # 260 dead >= 1000/4: compacts
    assert e.delete(np.concatenate([second, second[:3]])) == 60  # duplicates counted once
    alive &= ~np.isin(ids, second)
    s = e.stats()
    assert (s.vectors, s.tombstones, s.capacity) == (740, 0, cap)
    check_deleted(e, data, ids, docs, alive, np.concatenate([first, second]))

    # A deleted id can come back, and writes after compaction land correctly.
    assert e.upsert(first[:3], data["docs"][4000:4003]) == 3
    found, got = e.get(first[:3])
    assert found.all()
    np.testing.assert_array_equal(got, data["docs"][4000:4003])
    assert len(e) == 743


def check_deleted(e, data, ids, docs, alive, deleted):
    found, _ = e.get(deleted)
    assert not found.any()
    np.testing.assert_array_equal(e.ids(), np.sort(ids[alive]))
    for funnel in ((), [(32, 100)]):
        res = search(e, data["queries"], k=20, funnel=funnel)
        assert not np.isin(res.ids, deleted).any()
        assert_matches_oracle(res.ids, res.scores, ids[alive], docs[alive], data["queries"],
                              "l2", DIM, 20, funnel)


def test_growth_by_doubling(data):
    init = 4
    e = new_engine("cosine", initial_capacity=init)
    seen = {e.stats().capacity}
    for s in range(0, 300, 5):   # small batches: each growth is one doubling
        e.upsert(data["ids"][s: s + 5], data["docs"][s: s + 5])
        seen.add(e.stats().capacity)
    n = len(e)
    assert n == 300
    caps = sorted(seen)
    assert caps == [init * 2 ** j for j in range(len(caps))], caps   # 4, 8, 16, ..., 512
    assert caps[-1] == 512 and e.stats().capacity >= n
    found, got = e.get(data["ids"][:300])
    assert found.all()
    np.testing.assert_array_equal(got, data["docs"][:300])
    res = search(e, data["queries"], k=10, dim=64)
    assert_matches_oracle(res.ids, res.scores, data["ids"][:300], data["docs"][:300],
                          data["queries"], "cosine", 64, 10)


def test_growth_in_one_large_batch(data):
    e = new_engine("dot", initial_capacity=16)
    e.upsert(data["ids"][:1000], data["docs"][:1000])
    cap = e.stats().capacity
    assert 1000 <= cap <= 2000   # enough room, no runaway over-allocation
    found, got = e.get(data["ids"][:1000])
    assert found.all()
    np.testing.assert_array_equal(got, data["docs"][:1000])


def test_get_in_the_order_asked_with_missing(engines, data):
    e = engines["dot"]
    ids = data["ids"]
    ask = np.array([ids[42], 999_999_999_999, ids[7], ids[4999], 3, ids[42]], dtype=np.uint64)
    found, got = e.get(ask)
    np.testing.assert_array_equal(found, [True, False, True, True, False, True])
    np.testing.assert_array_equal(got, data["docs"][[42, 7, 4999, 42]])
    found, got = e.get(ask, dim=17)
    assert got.shape == (4, 17)
    np.testing.assert_array_equal(got, data["docs"][[42, 7, 4999, 42], :17])


def test_zero_prefix_under_cosine(data):
    # A vector whose first 32 dims are all zero is a valid cosine vector (its
    # full norm is not zero) but has no direction at dim 32: it scores 0 there.
    n = 500
    docs = data["docs"][:n].copy()
    docs[0, :32] = 0
    ids = data["ids"][:n]
    e = new_engine("cosine")
    e.upsert(ids, docs)
    q = data["queries"][:5]
    everything = search(e, q, k=n, dim=32)
    col = everything.ids == ids[0]
    assert col.sum(axis=1).tolist() == [1] * 5
    np.testing.assert_array_equal(everything.scores[col], 0)
    assert np.isfinite(everything.scores).all()
    for dim, funnel in ((32, ()), (64, ()), (384, [(32, 50)]), (384, [(32, 500)])):
        res = search(e, q, k=10, dim=dim, funnel=funnel)
        assert np.isfinite(res.scores).all()
        assert_matches_oracle(res.ids, res.scores, ids, docs, q, "cosine", dim, 10, funnel)


def test_query_with_zero_prefix_under_cosine_scores_zero_everywhere(engines, data):
    # Every score at dim 32 is 0, so the result is the k smallest ids (ties by id).
    q = data["queries"][:2].copy()
    q[:, :32] = 0
    res = search(engines["cosine"], q, k=10, dim=32)
    np.testing.assert_array_equal(res.scores, 0)
    np.testing.assert_array_equal(res.ids, np.broadcast_to(np.sort(data["ids"])[:10], (2, 10)))



@pytest.mark.parametrize("first_stage", ["float32", "int8"])
@pytest.mark.parametrize("metric", METRICS)
def test_multi_stage_funnel_prunes_to_the_candidates_answer(data, metric, first_stage):
    # One engine runs a funnel of several stages by re-scoring only each stage's
    # survivors; it must give exactly what the coordinator's path gives (every
    # stage-1 survivor's key at every dim, then run_funnel), deletes included.
    from nestvec.cluster._engine.topk import run_funnel
    live = np.arange(N_DOCS) % 97 != 0
    for dup in (False, True):
        docs = data["docs"].copy()
        if dup:  # duplicated rows: ties at every stage
            docs[100:400] = docs[0]
        e = ShardEngine(CollectionConfig.create("t", DIM, metric, first_stage=first_stage))
        e.upsert(data["ids"], docs)
        e.delete(data["ids"][~live])
        q = np.concatenate([data["queries"], docs[:2]])
        for funnel in ([(32, 400), (128, 50)], [(64, 300), (128, 100), (256, 20)],
                       [(16, 40), (100, 10)], [(32, 5000), (64, 4000)]):
            plan = plan_search(e.config, DIM, 10, DIM, funnel)
            got = e.search(q, plan)
            assert_matches_oracle(got.ids, got.scores, data["ids"][live], docs[live], q,
                                  metric, DIM, 10, funnel)
            if not dup:  # duplicates' keys may differ in the last bit between the two
                # paths (BLAS sums a row differently in another batch shape): the oracle
                # above decides those ties with its tolerance
                cand = e.funnel_candidates(q, plan)
                want_ids, _ = run_funnel(cand.ids, cand.keys, plan.keeps, plan.k)
                np.testing.assert_array_equal(got.ids, want_ids, err_msg=str(funnel))

# ----- sharding invariance -----------------------------------------------------------
@pytest.fixture(scope="module")
def sharded(data):
    """For each metric, the same data split over 4 engines by the coordinator's routing."""
    owner = shard_of(data["ids"], 4)
    out = {}
    for metric in METRICS:
        parts = []
        for s in range(4):
            e = new_engine(metric)
            e.upsert(data["ids"][owner == s], data["docs"][owner == s])
            parts.append(e)
        assert sum(len(p) for p in parts) == N_DOCS and min(len(p) for p in parts) > 0
        out[metric] = parts
    return out


def search_sharded(parts, queries, k=10, dim=None, funnel=None):
    """What the coordinator does: per-shard keys (or funnel candidates), then one merge."""
    plan = plan_search(parts[0].config, queries.shape[1], k, dim, funnel)
    if plan.stages:
        keys = [(c.ids, c.keys) for c in (p.funnel_candidates(queries, plan) for p in parts)]
    else:
        keys = [p.top_keys(queries, plan.k, plan.dim) for p in parts]
    return merge_shard_results(parts[0].metric, queries, plan, keys)


@pytest.mark.parametrize("dim,funnel", [(64, None), (384, None), (384, [(32, 200)]),
                                        (384, [(32, 300), (128, 40)])])
@pytest.mark.parametrize("metric", METRICS)
def test_sharding_invariance(engines, sharded, data, metric, dim, funnel):
    q = data["queries"]
    one = search(engines[metric], q, k=10, dim=dim, funnel=funnel)
    four = search_sharded(sharded[metric], q, k=10, dim=dim, funnel=funnel)
    np.testing.assert_array_equal(four.ids, one.ids)
    np.testing.assert_allclose(four.scores, one.scores, rtol=0, atol=1e-6)
    assert_matches_oracle(four.ids, four.scores, data["ids"], data["docs"], q, metric, dim, 10,
                          funnel or ())


# ----- extreme magnitudes that validation accepts ------------------------------------
def test_l2_largest_accepted_values_match_oracle():
    # Validation caps the squared norm at MAX_SQUARED_NORM so that 2*q.x - |x|^2
    # and the distance stay finite in float32; right below the cap, l2 ranks exactly.
    cfg = CollectionConfig.create("t", 2, "l2")
    x = np.array([[3.0e18, 0.0], [3.16e18, 0.0]], dtype=np.float32)   # ids 1 (far), 2 (exact)
    ids = np.array([1, 2], dtype=np.uint64)
    check_vectors(x, cfg)
    q = x[1:2].copy()
    e = ShardEngine(cfg)
    e.upsert(ids, x)
    res = search(e, q, k=2)
    ref_ids, ref_scores = brute_force(ids, x, q, "l2", 2, 2)
    np.testing.assert_array_equal(res.ids, ref_ids)       # [[2, 1]]: the exact match first
    np.testing.assert_allclose(res.scores, ref_scores, rtol=1e-5, atol=1e31)
    assert np.isfinite(res.scores).all()


def test_values_whose_scores_could_overflow_are_rejected():
    cfg = CollectionConfig.create("t", 2, "l2")
    with pytest.raises(InvalidArgument, match="overflow"):
        check_vectors(np.array([[1.4e19, 0.0]], dtype=np.float32), cfg)


def test_cosine_tiny_but_accepted_values_match_oracle(data):
    # Cosine is scale-invariant and check_vectors only rejects all-zero rows,
    # so docs scaled by 1e-23 are valid and must rank exactly like the originals.
    cfg = CollectionConfig.create("t", DIM, "cosine")
    docs = data["docs"][:300] * np.float32(1e-23)
    check_vectors(docs, cfg)
    e = ShardEngine(cfg)
    e.upsert(data["ids"][:300], docs)
    res = search(e, data["queries"][:5], k=10)
    assert_matches_oracle(res.ids, res.scores, data["ids"][:300], docs, data["queries"][:5],
                          "cosine", DIM, 10)


@pytest.mark.parametrize("metric", METRICS)
def test_cached_row_norms_follow_every_write(data, metric):
    # The per-dim scan terms (cosine 1/|x_d|, l2 |x_d|^2) are cached between
    # writes: search, then replace / insert / delete / compact, then search again.
    cfg = CollectionConfig.create("t", DIM, metric)
    e = ShardEngine(cfg)
    ids, docs, q = data["ids"][:2000], data["docs"][:2000].copy(), data["queries"][:5]
    e.upsert(ids, docs)
    search(e, q, dim=64)  # fills the cache at dim 64
    docs[:300] = data["docs"][3000:3300]          # replace 300 rows in place
    e.upsert(ids[:300], docs[:300])
    res = search(e, q, dim=64)
    assert_matches_oracle(res.ids, res.scores, ids, docs, q, metric, 64, 10)
    e.delete(ids[:600])                          # tombstones then compaction (>= 1/4 dead)
    res = search(e, q, dim=64)
    assert_matches_oracle(res.ids, res.scores, ids[600:], docs[600:], q, metric, 64, 10)
    new_ids = data["ids"][3000:3100]
    e.upsert(new_ids, data["docs"][3500:3600])   # appended rows
    res = search(e, q, dim=64)
    all_ids = np.concatenate([ids[600:], new_ids])
    all_docs = np.concatenate([docs[600:], data["docs"][3500:3600]])
    assert_matches_oracle(res.ids, res.scores, all_ids, all_docs, q, metric, 64, 10)
