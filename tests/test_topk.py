"""Unit tests of the top-k primitives (pure numpy, no Ray).

Every primitive is compared with the obvious reference: a full lexsort by
(key descending, id ascending), which is the order the wire contract promises.
"""
from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nestvec.cluster._engine import topk
from nestvec.cluster._engine.topk import merge_topk, order, run_funnel, top_columns


def full_sort_columns(keys: np.ndarray, col_ids: np.ndarray, k: int) -> np.ndarray:
    """Reference: column order by (key desc, id asc) from a full sort, first k."""
    ids = np.broadcast_to(col_ids, keys.shape)
    return np.lexsort((ids, -keys), axis=1)[:, :k]


def tie_heavy_keys(rng, shape, levels: int = 3) -> np.ndarray:
    """Keys drawn from a few values, so almost every k cut falls inside a tie."""
    return rng.integers(0, levels, size=shape).astype(np.float32)


# ----- order ----------------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(data=st.data(), rows=st.integers(1, 5), m=st.integers(0, 60),
       levels=st.sampled_from([1, 2, 4, None]), per_row_ids=st.booleans())
def test_order_equals_lexsort(data, rows, m, levels, per_row_ids):
    # argsort by key, lexsort only where a row has equal keys: the same order as
    # lexsort by (key desc, id asc) always, ties, -inf, and -0.0 == 0.0 included.
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    if levels is None:
        keys = rng.normal(size=(rows, m)).astype(np.float32)
    else:
        keys = rng.integers(0, levels, size=(rows, m)).astype(np.float32) - 1
        keys[keys == 0] = rng.choice([0.0, -0.0], size=int((keys == 0).sum()))
    keys[rng.random((rows, m)) < 0.1] = -np.inf
    shape = (rows, m) if per_row_ids else (m,)
    ids = rng.choice(10 * rows * m + 10, size=shape, replace=False).astype(np.uint64)
    want = np.lexsort((np.broadcast_to(ids, keys.shape), -keys), axis=1)
    np.testing.assert_array_equal(order(keys, ids), want)


# ----- best_unordered ---------------------------------------------------------------
@settings(max_examples=200, deadline=None)
@given(data=st.data(), rows=st.integers(1, 5), m=st.integers(0, 60), k=st.integers(0, 70),
       levels=st.sampled_from([1, 2, 4, None]))
def test_best_unordered_is_merge_topks_set(data, rows, m, k, levels):
    # the same set as a full (key desc, id asc) sort's first k, ties across the cut
    # included; entries at -inf may differ (callers drop them)
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1)))
    keys = (rng.normal(size=(rows, m)) if levels is None
            else rng.integers(0, levels, size=(rows, m)) - 1.0).astype(np.float32)
    keys[rng.random((rows, m)) < 0.1] = -np.inf
    ids = rng.choice(10 * rows * m + 10, size=(rows, m), replace=False).astype(np.uint64)
    got = topk.best_unordered(keys, ids, k)
    assert got.shape == (rows, min(k, m))
    want = np.lexsort((ids, -keys), axis=1)[:, :k]
    for r in range(rows):
        g, w = got[r], want[r]
        assert sorted(ids[r, g[np.isfinite(keys[r, g])]]) == sorted(ids[r, w[np.isfinite(keys[r, w])]])
        assert len(set(g.tolist())) == g.size  # no column twice


# ----- merge_topk ----------------------------------------------------------------
def test_merge_topk_matches_full_sort():
    rng = np.random.default_rng(1)
    keys = rng.normal(size=(7, 50)).astype(np.float32)
    ids = rng.permutation(10_000)[:50 * 7].reshape(7, 50).astype(np.uint64)
    got_ids, got_keys = merge_topk(ids, keys, 12)
    order = np.lexsort((ids, -keys), axis=1)[:, :12]
    np.testing.assert_array_equal(got_ids, np.take_along_axis(ids, order, axis=1))
    np.testing.assert_array_equal(got_keys, np.take_along_axis(keys, order, axis=1))
    assert (np.diff(got_keys, axis=1) <= 0).all()  # best first


def test_merge_topk_breaks_ties_by_id():
    # Every key equal: the answer is simply the smallest ids, ascending.
    ids = np.array([[9, 3, 7, 1, 5], [2, 8, 4, 6, 0]], dtype=np.uint64)
    keys = np.ones(ids.shape, dtype=np.float32)
    got_ids, _ = merge_topk(ids, keys, 3)
    np.testing.assert_array_equal(got_ids, [[1, 3, 5], [0, 2, 4]])


def test_merge_topk_k_above_width_returns_all():
    rng = np.random.default_rng(2)
    keys = rng.normal(size=(3, 4)).astype(np.float32)
    ids = np.arange(12, dtype=np.uint64).reshape(3, 4)
    got_ids, got_keys = merge_topk(ids, keys, 10)
    assert got_ids.shape == (3, 4)
    assert sorted(got_ids[0].tolist()) == [0, 1, 2, 3]


def test_merge_topk_carries_stage_keys_and_orders_by_the_first():
    rng = np.random.default_rng(3)
    keys = rng.normal(size=(4, 30, 3)).astype(np.float32)
    ids = np.arange(120, dtype=np.uint64).reshape(4, 30)
    got_ids, got_keys = merge_topk(ids, keys, 5)
    assert got_keys.shape == (4, 5, 3)
    order = np.lexsort((ids, -keys[..., 0]), axis=1)[:, :5]
    np.testing.assert_array_equal(got_ids, np.take_along_axis(ids, order, axis=1))
    # The later-stage keys travel with their id, not re-ordered on their own.
    np.testing.assert_array_equal(got_keys, np.take_along_axis(keys, order[..., None], axis=1))


def test_merge_topk_of_shard_concat_equals_topk_of_union():
    # Merging per-shard top-k lists gives the global top-k: the coordinator's merge.
    rng = np.random.default_rng(4)
    keys = tie_heavy_keys(rng, (5, 200), levels=5)
    ids = rng.permutation(200).astype(np.uint64)
    ref = np.take_along_axis(np.broadcast_to(ids, keys.shape),
                             full_sort_columns(keys, ids, 10), axis=1)
    parts = np.array_split(np.arange(200), 4)
    shard_ids, shard_keys = [], []
    for p in parts:
        sub_ids = np.broadcast_to(ids[p], (5, p.size))
        i, kk = merge_topk(np.ascontiguousarray(sub_ids), keys[:, p], 10)
        shard_ids.append(i)
        shard_keys.append(kk)
    got, _ = merge_topk(np.concatenate(shard_ids, 1), np.concatenate(shard_keys, 1), 10)
    np.testing.assert_array_equal(got, ref)


# ----- top_columns ---------------------------------------------------------------
@pytest.mark.parametrize("k", [1, 5, 37, 99])
def test_top_columns_random_keys(k):
    rng = np.random.default_rng(k)
    keys = rng.normal(size=(9, 100)).astype(np.float32)
    col_ids = rng.permutation(1000)[:100].astype(np.uint64)
    np.testing.assert_array_equal(top_columns(keys, col_ids, k), full_sort_columns(keys, col_ids, k))


@pytest.mark.parametrize("k", [1, 3, 10, 50, 199])
@pytest.mark.parametrize("levels", [1, 2, 4])
def test_top_columns_ties_across_the_cut(k, levels):
    # With 1-4 distinct key values the k-th key is shared by columns on both
    # sides of the cut; the smallest ids must win exactly as a full sort says.
    rng = np.random.default_rng(100 * k + levels)
    keys = tie_heavy_keys(rng, (16, 200), levels)
    col_ids = rng.permutation(200).astype(np.uint64) * 3 + 11  # ids not in column order
    np.testing.assert_array_equal(top_columns(keys, col_ids, k), full_sort_columns(keys, col_ids, k))


def test_top_columns_ties_with_minus_inf_columns():
    # Dead rows score -inf; they must never beat a live tie and must sort last.
    rng = np.random.default_rng(7)
    keys = tie_heavy_keys(rng, (6, 60), 2)
    keys[:, ::3] = -np.inf
    col_ids = rng.permutation(60).astype(np.uint64)
    for k in (5, 20, 40):
        np.testing.assert_array_equal(top_columns(keys, col_ids, k),
                                      full_sort_columns(keys, col_ids, k))


def test_top_columns_k_equals_n_is_a_full_sort():
    rng = np.random.default_rng(8)
    keys = tie_heavy_keys(rng, (5, 40), 3)
    col_ids = rng.permutation(40).astype(np.uint64)
    np.testing.assert_array_equal(top_columns(keys, col_ids, 40), full_sort_columns(keys, col_ids, 40))


def test_top_columns_k_above_n_returns_all_sorted():
    rng = np.random.default_rng(9)
    keys = rng.normal(size=(3, 8)).astype(np.float32)
    col_ids = rng.permutation(8).astype(np.uint64)
    got = top_columns(keys, col_ids, 50)
    assert got.shape == (3, 8)
    np.testing.assert_array_equal(got, full_sort_columns(keys, col_ids, 8))


def test_top_columns_empty():
    assert top_columns(np.empty((2, 0), np.float32), np.empty(0, np.uint64), 5).shape == (2, 0)
    assert top_columns(np.ones((2, 5), np.float32), np.arange(5, dtype=np.uint64), 0).shape == (2, 0)


# ----- top_columns' threshold path (wide rows) -------------------------------------
@pytest.mark.parametrize("k", [1, 10, 100, 400, 1000, 1250])
def test_prefilter_path_random_keys(k):
    # 10,000 columns: wide enough for the threshold path at every k here.
    rng = np.random.default_rng(k)
    keys = rng.normal(size=(32, 10_000)).astype(np.float32)
    col_ids = rng.permutation(10**6)[:10_000].astype(np.uint64)
    np.testing.assert_array_equal(top_columns(keys, col_ids, k), full_sort_columns(keys, col_ids, k))


@pytest.mark.parametrize("n", [300, 10_000])
def test_unsorted_top_columns_hold_the_same_set(n):
    # sort=False (a shortlist) returns the same columns, in no set order; ties included.
    rng = np.random.default_rng(n)
    keys = tie_heavy_keys(rng, (16, n), 40)
    col_ids = rng.permutation(n).astype(np.uint64)
    for k in (1, 10, 37, n // 8):
        got = top_columns(keys, col_ids, k, sort=False)
        np.testing.assert_array_equal(np.sort(got, axis=1),
                                      np.sort(full_sort_columns(keys, col_ids, k), axis=1))


@pytest.mark.parametrize("levels", [1, 2, 3, 50, 1000])
def test_prefilter_path_ties_and_duplicates(levels):
    # Few distinct values: the threshold itself is tied and most rows fall back;
    # many: ties at the k-th key cross the cut inside the survivors.
    rng = np.random.default_rng(levels)
    keys = tie_heavy_keys(rng, (20, 8192), levels)
    col_ids = (rng.permutation(8192).astype(np.uint64) * 7) + 3
    for k in (1, 10, 64, 1000):
        np.testing.assert_array_equal(top_columns(keys, col_ids, k),
                                      full_sort_columns(keys, col_ids, k))


def test_prefilter_path_dead_columns_and_misjudged_rows():
    # Row 0: every column -inf but a few (threshold -inf). Row 1: the best keys sit
    # exactly off the sample's stride, so the sample overestimates nothing: the
    # threshold passes fewer than k columns and the row must fall back. Row 2: all
    # columns equal. Row 3: dead columns everywhere but enough live ones.
    n, k = 8192, 50
    rng = np.random.default_rng(5)
    keys = rng.normal(size=(4, n)).astype(np.float32)
    keys[0] = -np.inf
    keys[0, rng.choice(n, 20, replace=False)] = 1.0
    keys[1] = np.where(np.arange(n) % topk.SAMPLE_STRIDE == 0, 10.0, keys[1])
    keys[2] = 0.5
    keys[3, ::2] = -np.inf
    col_ids = rng.permutation(n).astype(np.uint64)
    for kk in (k, 20, 21, 1):
        np.testing.assert_array_equal(top_columns(keys, col_ids, kk),
                                      full_sort_columns(keys, col_ids, kk))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(data=st.data(), rows=st.integers(1, 6), n=st.integers(1, 300),
       levels=st.sampled_from([1, 2, 5, 1000, None]), dead=st.floats(0.0, 0.9))
def test_prefilter_property(data, rows, n, levels, dead):
    # The threshold path on small shapes (its floors lowered), against a full
    # sort: ties, duplicated keys, -inf columns, k from 1 to n, tiny n.
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    if levels is None:
        keys = rng.normal(size=(rows, n)).astype(np.float32)
    else:
        keys = rng.integers(0, levels, size=(rows, n)).astype(np.float32)
    keys[rng.random((rows, n)) < dead] = -np.inf
    col_ids = rng.choice(10 * n + 10, n, replace=False).astype(np.uint64)
    # small k (the threshold path's case) as often as any k up to n (mostly fallback)
    k = data.draw(st.one_of(st.integers(1, max(1, n // 10)), st.integers(1, n)))
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(topk, "PREFILTER_MIN_COLS", 1)
        mp.setattr(topk, "PREFILTER_MAX_K_FRACTION", 1)
        mp.setattr(topk, "SAMPLE_STRIDE", data.draw(st.sampled_from([1, 2, 3, 7])))
        got = top_columns(keys, col_ids, k)
    np.testing.assert_array_equal(got, full_sort_columns(keys, col_ids, k))


# ----- run_funnel ----------------------------------------------------------------
def reference_funnel(ids, stage_keys, keeps, k):
    """One query at a time with Python sorts: keep the best by each stage's key."""
    out_ids, out_keys = [], []
    for q in range(ids.shape[0]):
        cand = list(range(ids.shape[1]))
        for s, keep in enumerate(keeps):
            cand = sorted(cand, key=lambda j: (-stage_keys[q, j, s], int(ids[q, j])))[:keep]
        cand = sorted(cand, key=lambda j: (-stage_keys[q, j, -1], int(ids[q, j])))[:k]
        out_ids.append([int(ids[q, j]) for j in cand])
        out_keys.append([stage_keys[q, j, -1] for j in cand])
    return np.array(out_ids, dtype=np.uint64), np.array(out_keys, dtype=np.float32)


@pytest.mark.parametrize("keeps", [[], [40], [60, 25], [80, 50, 12]])
def test_run_funnel_matches_reference(keeps):
    rng = np.random.default_rng(len(keeps))
    n_q, m = 6, 100
    ids = np.stack([rng.permutation(1000)[:m] for _ in range(n_q)]).astype(np.uint64)
    stage_keys = tie_heavy_keys(rng, (n_q, m, len(keeps) + 1), 6)  # ties at every stage
    got_ids, got_keys = run_funnel(ids, stage_keys, keeps, 10)
    ref_ids, ref_keys = reference_funnel(ids, stage_keys, keeps, 10)
    np.testing.assert_array_equal(got_ids, ref_ids)
    np.testing.assert_array_equal(got_keys, ref_keys)


def test_run_funnel_shortlist_changes_the_answer():
    # A funnel is not a plain rank at the final key: a candidate dropped at
    # stage 1 cannot come back even if its final key is the best.
    ids = np.array([[1, 2, 3]], dtype=np.uint64)
    stage_keys = np.array([[[0.9, 0.1], [0.8, 0.2], [0.1, 0.99]]], dtype=np.float32)
    got_ids, got_keys = run_funnel(ids, stage_keys, [2], 1)
    np.testing.assert_array_equal(got_ids, [[2]])
    np.testing.assert_allclose(got_keys, [[0.2]])
    no_funnel, _ = run_funnel(ids, stage_keys[..., 1:], [], 1)
    np.testing.assert_array_equal(no_funnel, [[3]])

