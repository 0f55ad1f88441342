"""Low-precision first stages (cluster/_engine/lowp.py): float16 and int8 shortlists, exact re-rank."""
from __future__ import annotations

import uuid

import numpy as np
import pytest

from nestvec.client import Client
from nestvec.errors import InvalidArgument
from nestvec.cluster._engine import shard_engine as engine_mod
from nestvec.cluster._engine import kernels
from nestvec.cluster._engine import lowp
from nestvec.cluster._engine import planner
from nestvec.cluster._engine.collection import CollectionConfig, plan_search
from nestvec.cluster._engine.shard_engine import ShardEngine
from oracle import brute_force, exact_scores

N = 20_000
FUNNELS = [[(128, 50)], [(32, 400), (128, 50)], [(64, 100)]]  # the last one: no copy at 64


@pytest.fixture(scope="module")
def data(corpus):
    return corpus["docs"][:N], corpus["queries"][:100]


def _engine(docs, metric, first_stage, batch=3000):
    e = ShardEngine(CollectionConfig.create("t", docs.shape[1], metric, first_stage=first_stage))
    for s in range(0, docs.shape[0], batch):  # several writes: ranges retrain as rows double
        e.upsert(np.arange(s, min(len(docs), s + batch), dtype=np.uint64), docs[s: s + batch])
    return e


def _recall(got, want):
    return np.mean([len(set(a) & set(b)) / len(b) for a, b in zip(got, want)])


# ----- the quantiser ----------------------------------------------------------------------
def test_int8_codes_decode_within_half_a_step_and_clip_outside_the_range(data):
    docs, _ = data
    x = docs[:5000, :64]
    lp = lowp.QuantizedPrefix(64, "int8", 6000)
    lp.train(x)
    lp.write(slice(0, 5000), x)
    err = np.abs(lp.decode(0, 5000) - x)
    step = lp.vdiff / 255
    assert (err <= step[None, :] * 0.5 + 1e-6).all()
    far = x[:1] + 10 * lp.vdiff  # far above the trained range: clipped to the top code
    lp.write([5000], far)
    assert (lp.codes[5000] == 254).all() or (lp.codes[5000] == 255).all()


def test_float16_copy_is_float16_of_the_rows(data):
    docs, _ = data
    lp = lowp.QuantizedPrefix(32, "float16", 100)
    lp.write(slice(0, 100), docs[:100, :32])
    np.testing.assert_array_equal(lp.decode(0, 100), docs[:100, :32].astype(np.float16).astype(np.float32))


@pytest.mark.skipif(not kernels.available(), reason="the low-precision kernel is FAISS's (test extra)")
@pytest.mark.parametrize("precision", ["float16", "int8"])
@pytest.mark.parametrize("metric", ["cosine", "l2"])
def test_faiss_scan_scores_the_decoded_codes(data, precision, metric):
    docs, queries = data
    e = _engine(docs, metric, precision)
    lp = e._lowp[128]
    q = queries[:4, :128]
    if metric == "cosine":
        q = q / np.linalg.norm(q, axis=1, keepdims=True)
    l2 = metric == "l2"
    got_scores, got_rows = lp.search(q, e._n, 50)  # the engine made lp with its metric
    x = lp.decode(0, e._n).astype(np.float64)  # the numpy oracle: score the decoded rows
    want = ((q.astype(np.float64)[:, None, :] - x[None]) ** 2).sum(-1) if l2 else q.astype(np.float64) @ x.T
    np.testing.assert_allclose(got_scores, np.take_along_axis(want, got_rows, axis=1), rtol=1e-4, atol=1e-4)
    order = np.argsort(want if l2 else -want, axis=1)[:, :50]
    assert _recall(got_rows, order) >= 0.98  # the same top-50, up to float near-ties


def test_small_batches_shortlist_on_the_copy_and_large_ones_exactly(data):
    docs, queries = data
    e = _engine(docs[:5000], "cosine", "int8")
    lp = e._lowp[128]
    assert (e._lowp_rows(queries[:1], 50, lp) is not None) == kernels.available()
    assert e._lowp_rows(queries[:lowp.SIMD_MAX_BATCH + 1], 50, lp) is None


# ----- the engine's funnel ----------------------------------------------------------------
@pytest.mark.parametrize("precision", ["float16", "int8"])
@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
def test_lowp_funnel_returns_exact_scores_and_matches_the_exact_funnel(data, metric, precision):
    docs, queries = data
    ids = np.arange(N, dtype=np.uint64)
    e = _engine(docs, metric, precision)
    assert set(e._lowp) == {128}  # 32 and 64 have contiguous float32 copies (lowp.has_copy)
    for funnel in FUNNELS:
        plan = plan_search(e.config, 384, 10, 384, funnel)
        got = e.search(queries, plan)
        want_ids, _ = brute_force(ids, docs, queries, metric, 384, 10, funnel)
        assert _recall(got.ids, want_ids) >= 0.99, funnel
        for row in got.ids:
            assert len(set(row.tolist())) == row.size  # never an id twice
        exact = exact_scores(docs, queries, metric, 384)
        np.testing.assert_allclose(got.scores, np.take_along_axis(exact, got.ids.astype(np.int64), axis=1),
                                   rtol=1e-4, atol=1e-4)
        # one query at a time (FAISS SIMD kernel) answers as the batch (BLAS decode) does
        singles = np.concatenate([e.search(queries[i: i + 1], plan).ids for i in range(8)])
        np.testing.assert_array_equal(singles, got.ids[:8])


def test_shortlist_is_the_exact_shortlist_on_corpus(data):
    """The over-fetch (lowp_overfetch) absorbs int8 error at the cut on real data."""
    docs, queries = data
    exact = _engine(docs, "cosine", "float32")
    quant = _engine(docs, "cosine", "int8")
    plan = plan_search(exact.config, 384, 10, 384, [(128, 100)])
    a = exact.funnel_candidates(queries, plan)
    b = quant.funnel_candidates(queries, plan)
    assert _recall(b.ids, a.ids) >= 0.995
    np.testing.assert_allclose(np.sort(b.keys[..., 0], axis=1), np.sort(a.keys[..., 0], axis=1), atol=1e-3)


def test_deleted_rows_never_come_back_from_a_lowp_shortlist(data):
    docs, queries = data
    e = _engine(docs[:4000], "cosine", "int8")
    plan = plan_search(e.config, 384, 10, 384, [(128, 50)])
    before = e.search(queries[:10], plan).ids
    gone = np.unique(before[:, :3])
    e.delete(gone)
    after = e.search(queries[:10], plan).ids
    assert not np.isin(after, gone).any()
    # enough deletes to force the numpy path (dead rows above the kernel's limit) and compaction
    old = engine_mod.KERNEL_MAX_DEAD
    engine_mod.KERNEL_MAX_DEAD = 0
    try:
        after = e.search(queries[:10], plan).ids
        assert not np.isin(after, gone).any()
    finally:
        engine_mod.KERNEL_MAX_DEAD = old
    e.delete(np.arange(0, 1500, dtype=np.uint64))  # compacts (a quarter dead)
    assert e.stats().tombstones == 0
    rest_ids = np.setdiff1d(np.arange(4000, dtype=np.uint64), np.concatenate([gone, np.arange(1500, dtype=np.uint64)]))
    want, _ = brute_force(rest_ids, docs[rest_ids.astype(np.int64)], queries[:10], "cosine", 384, 10, [(128, 50)])
    assert _recall(e.search(queries[:10], plan).ids, want) >= 0.99


def test_int8_ranges_retrain_as_the_shard_grows(data):
    docs, _ = data
    e = ShardEngine(CollectionConfig.create("t", 384, "cosine", first_stage="int8"))
    e.upsert(np.arange(10, dtype=np.uint64), docs[:10])
    assert e._lowp[128].trained_rows == 10
    e.upsert(np.arange(10, 15, dtype=np.uint64), docs[10:15])
    assert e._lowp[128].trained_rows == 10  # not doubled yet: encoded with the old ranges
    e.upsert(np.arange(15, 1000, dtype=np.uint64), docs[15:1000])
    assert e._lowp[128].trained_rows == 1000
    assert e.lowp_nbytes() == e.stats().capacity * 128


def test_planner_prices_a_lowp_first_stage_below_float32():
    assert planner.cost(((64, 100),), 384, 100_000, 1, "int8") == planner.cost(((64, 100),), 384, 100_000, 1)
    args = (((128, 100),), 384, 100_000, 1)
    assert planner.cost(*args, "int8") < planner.cost(*args, "float16") < planner.cost(*args)
    assert planner.cost(((256, 100),), 384, 100_000, 1, "int8") == planner.cost(((256, 100),), 384, 100_000, 1)


# ----- over gRPC --------------------------------------------------------------------------
def test_int8_collection_over_grpc(gateway, data):
    docs, queries = data
    name = f"lowp-{uuid.uuid4().hex[:6]}"
    ids = np.arange(N, dtype=np.uint64) * 3 + 1
    with Client(gateway.address, timeout=120) as c:
        info = c.create_collection(name, 384, "cosine", shards=2, first_stage="int8")
        try:
            assert info.first_stage == "int8"
            c.upsert(name, ids, docs)
            assert c.describe_collection(name).first_stage == "int8"
            res = c.search(name, queries, k=10, funnel=[(128, 50)])
            want, _ = brute_force(ids, docs, queries, "cosine", 384, 10, [(128, 50)])
            assert _recall(res.ids, want) >= 0.99
            exact = exact_scores(docs, queries, "cosine", 384)
            pos = np.searchsorted(ids, res.ids)
            np.testing.assert_allclose(res.scores, np.take_along_axis(exact, pos.astype(np.int64), axis=1),
                                       atol=1e-4)
            planned = c.search(name, queries[:5], k=10, target_recall=0.9)
            assert planned.ids.shape == (5, 10)
            with pytest.raises(InvalidArgument, match="first_stage"):  # the SDK checks names itself
                c.create_collection(name + "-x", 384, first_stage="int4")
        finally:
            c.drop_collection(name)
