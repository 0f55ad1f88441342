"""The brute-force oracle every search path is checked against: a float64 numpy scan."""
from __future__ import annotations

import numpy as np


def exact_scores(docs: np.ndarray, queries: np.ndarray, metric: str, dim: int) -> np.ndarray:
    """[Q, N] scores at prefix `dim` in float64 (l2: squared distance)."""
    x = docs[:, :dim].astype(np.float64)
    q = queries[:, :dim].astype(np.float64)
    if metric == "cosine":
        xn = np.linalg.norm(x, axis=1, keepdims=True)
        qn = np.linalg.norm(q, axis=1, keepdims=True)
        x = np.divide(x, xn, out=np.zeros_like(x), where=xn > 0)
        q = np.divide(q, qn, out=np.zeros_like(q), where=qn > 0)
        return q @ x.T
    if metric == "dot":
        return q @ x.T
    return (q * q).sum(1)[:, None] - 2 * q @ x.T + (x * x).sum(1)[None, :]


def brute_force(ids: np.ndarray, docs: np.ndarray, queries: np.ndarray, metric: str, dim: int,
                k: int, funnel=()) -> tuple[np.ndarray, np.ndarray]:
    """Exact top-k (ids, scores) at `dim`, through the funnel stages if given.

    Order: best score first, ties by id ascending (the contract).
    """
    ids = np.asarray(ids, dtype=np.uint64)
    sign = 1.0 if metric == "l2" else -1.0   # sort key: ascending
    cand = np.broadcast_to(np.arange(len(ids)), (queries.shape[0], len(ids)))
    for d, keep in funnel:
        s = exact_scores(docs, queries, metric, d)
        s = np.take_along_axis(s, cand, axis=1)
        order = np.lexsort((ids[cand], sign * s), axis=1)[:, :keep]
        cand = np.take_along_axis(cand, order, axis=1)
    s = np.take_along_axis(exact_scores(docs, queries, metric, dim), cand, axis=1)
    order = np.lexsort((ids[cand], sign * s), axis=1)[:, :k]
    rows = np.take_along_axis(cand, order, axis=1)
    return ids[rows], np.take_along_axis(s, order, axis=1)


def assert_matches_oracle(got_ids, got_scores, ids, docs, queries, metric: str, dim: int, k: int,
                          funnel=(), *, atol: float = 1e-4, tie_tol: float = 1e-5) -> None:
    """The search result equals the brute-force answer.

    Ids must be identical position by position, except where the oracle's own
    scores tie within `tie_tol` (float32 vs float64 rounding may order a near-tie
    either way; the (k+1)-th oracle result is included so a near-tie across the
    cut is recognised). Scores must match to `atol`.
    """
    ref_ids, ref_scores = brute_force(ids, docs, queries, metric, dim, k + 1, funnel)
    kk = min(k, ref_ids.shape[1])
    got_ids = np.asarray(got_ids)
    assert got_ids.shape == (queries.shape[0], kk), (got_ids.shape, kk)
    np.testing.assert_allclose(got_scores, ref_scores[:, :kk], atol=atol)
    for qi, ji in zip(*np.nonzero(got_ids != ref_ids[:, :kk])):
        row = ref_scores[qi]
        assert (np.abs(row - row[ji]) <= tie_tol).sum() > 1, (
            f"query {qi} rank {ji}: got id {got_ids[qi, ji]}, oracle has {ref_ids[qi, ji]} "
            f"(score {row[ji]:.7f}) and no near-tie there")
    assert all(len(set(r)) == kk for r in got_ids.tolist()), "an id appears twice in one result"
