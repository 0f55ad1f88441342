"""The optional FAISS kernel path gives exactly the numpy path's answers (and the oracle's)."""
from __future__ import annotations

import numpy as np
import pytest

from nestvec.cluster._engine import shard_engine as engine_mod
from nestvec.cluster._engine import kernels
from nestvec.cluster._engine.collection import CollectionConfig, plan_search
from nestvec.cluster._engine.shard_engine import ShardEngine
from oracle import assert_matches_oracle

pytestmark = pytest.mark.skipif(not kernels.available(), reason="faiss-cpu is in the test extra")

METRICS = ("cosine", "dot", "l2")


def _search(e, q, k, dim, kernel: bool, funnel=None):
    saved = engine_mod.use_kernel
    engine_mod.use_kernel = kernel
    try:
        return e.search(q, plan_search(e.config, q.shape[1], k, dim, funnel))
    finally:
        engine_mod.use_kernel = saved


@pytest.fixture(scope="module")
def data(corpus):
    return corpus["docs"][:8000], corpus["queries"][: kernels.MIN_BATCH + 4]  # batches the kernel serves


@pytest.mark.parametrize("metric", METRICS)
@pytest.mark.parametrize("dim", [32, 64])
def test_kernel_equals_numpy_and_oracle(data, metric, dim):
    docs, q = data
    ids = np.arange(docs.shape[0], dtype=np.uint64) * 5 + 1
    e = ShardEngine(CollectionConfig.create("k", 384, metric))
    e.upsert(ids, docs)
    fast, slow = _search(e, q, 10, dim, True), _search(e, q, 10, dim, False)
    np.testing.assert_array_equal(fast.ids, slow.ids)
    np.testing.assert_allclose(fast.scores, slow.scores, atol=1e-5)
    assert_matches_oracle(fast.ids, fast.scores, ids, docs, q, metric, dim, 10)
    # the funnel's first stage goes through the kernel too
    f = _search(e, q, 10, 384, True, funnel=[(dim, 200)])
    assert_matches_oracle(f.ids, f.scores, ids, docs, q, metric, 384, 10, [(dim, 200)])


@pytest.mark.parametrize("metric", METRICS)
def test_kernel_skips_deleted_rows(data, metric):
    docs, q = data
    ids = np.arange(docs.shape[0], dtype=np.uint64)
    e = ShardEngine(CollectionConfig.create("k", 384, metric))
    e.upsert(ids, docs)
    # delete the current best answers (and some more), below the compaction threshold
    best = _search(e, q, 10, 32, False).ids
    dead = np.unique(np.concatenate([best.ravel(), ids[::7]]))
    e.delete(dead)
    assert e.stats().tombstones > 0
    fast = _search(e, q, 10, 32, True)
    assert not np.isin(fast.ids, dead).any()
    live = ~np.isin(ids, dead)
    assert_matches_oracle(fast.ids, fast.scores, ids[live], docs[live], q, metric, 32, 10)


def test_ties_across_the_cut_go_to_the_smaller_id():
    # 30 identical vectors tie for the top; k=10 must return the 10 smallest ids.
    rng = np.random.default_rng(0)
    x = rng.standard_normal((500, 64)).astype(np.float32)
    x[100:130] = x[0] * 5  # same direction, larger than everything else in dot
    ids = rng.permutation(np.arange(1000, 1500)).astype(np.uint64)
    e = ShardEngine(CollectionConfig.create("k", 64, "dot", [32, 64]))
    e.upsert(ids, x)
    q = np.tile(x[0], (kernels.MIN_BATCH, 1))
    fast = _search(e, q, 10, 32, True)
    smallest = np.sort(ids[100:130])[:10]
    for row in fast.ids:
        np.testing.assert_array_equal(row, smallest)
    np.testing.assert_array_equal(fast.ids, _search(e, q, 10, 32, False).ids)


@pytest.mark.parametrize("metric", METRICS)
def test_single_query_rerank_reads_rows_in_place_like_numpy(data, metric):
    """A single query's ANN re-rank at the full dim goes through kernels.row_dots; its keys
    equal the numpy gather's (to float32 rounding) and the oracle's exact scores, ids
    that are not stored (deleted, never written) are reported and get -inf, and a
    re-rank at a prefix or at several dims keeps the numpy path."""
    docs, q = data
    ids = np.arange(docs.shape[0], dtype=np.uint64) * 3 + 2
    e = ShardEngine(CollectionConfig.create("k", 384, metric))
    e.upsert(ids, docs)
    e.delete(ids[::11])
    rng = np.random.default_rng(1)
    for i in range(5):
        cand = rng.choice(ids, 60, replace=False)
        cand[:3] = [1, ids[0], ids[11]]  # never stored, deleted, deleted
        for dims in ([64, 384], [128], [384]):  # the full dim last: checked against the oracle below
            saved = engine_mod.use_kernel
            try:
                engine_mod.use_kernel = True
                found_k, keys_k = e.rescore_ids(q[i: i + 1], cand[None], dims)
                engine_mod.use_kernel = False
                found_n, keys_n = e.rescore_ids(q[i: i + 1], cand[None], dims)
            finally:
                engine_mod.use_kernel = saved
            np.testing.assert_array_equal(found_k, found_n)
            assert not found_k[0, :3].any() and found_k[0, 3:].sum() == np.isin(cand[3:], ids[::11],
                                                                                 invert=True).sum()
            assert np.isneginf(keys_k[~found_k]).all()
            np.testing.assert_allclose(keys_k[found_k], keys_n[found_n], rtol=1e-6, atol=1e-6)
        live = found_k[0]
        x, qq = docs[((cand[live] - 2) // 3).astype(np.int64)].astype(np.float64), q[i].astype(np.float64)
        if metric == "cosine":
            want = x @ qq / np.linalg.norm(x, axis=1) / np.linalg.norm(qq)
        elif metric == "dot":
            want = x @ qq
        else:  # l2 keys: 2 q.x - |x|^2 (higher is better; |q|^2 added back for scores)
            want = 2 * x @ qq - (x * x).sum(1)
        np.testing.assert_allclose(keys_k[0, live, 0], want, rtol=1e-5, atol=1e-4)
