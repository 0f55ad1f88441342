"""Top-k selection and merging on [Q, M] arrays, ordered by (key desc, id asc).

Keys are "higher is better" everywhere in the engine: cosine and dot use the
similarity, l2 uses the negated squared distance. Breaking ties by id makes
every answer a pure function of the data, independent of how it is sharded.

Three primitives, all vectorised over the query batch:
- `top_columns`: the k best columns of a wide [Q, N] key matrix (a shard scan);
- `merge_topk`: the k best of a narrow [Q, M] candidate matrix (a merge);
- `run_funnel`: successive `merge_topk`s over per-stage keys (a funnel).
"""
from __future__ import annotations

import numpy as np


def merge_topk(ids: np.ndarray, keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best `k` of each row of ([Q, M] ids, [Q, M] keys), sorted by (key desc, id asc).

    Rows may hold the same candidates in any order (shard results concatenated).
    Returns the selected ids and keys, [Q, min(k, M)]. Extra trailing axes of
    `keys` (per-stage keys, [Q, M, S]) are carried along; the order uses [..., 0].
    """
    primary = keys if keys.ndim == 2 else keys[..., 0]
    order = np.lexsort((ids, -primary), axis=1)[:, :k]
    out_ids = np.take_along_axis(ids, order, axis=1)
    if keys.ndim == 2:
        return out_ids, np.take_along_axis(primary, order, axis=1)
    return out_ids, np.take_along_axis(keys, order[..., None], axis=1)


def top_columns(keys: np.ndarray, col_ids: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the best `k` keys of each row of a wide [Q, N] matrix.

    `col_ids[j]` is the id of column j; ties at the k-th key go to the smaller
    id, exactly as a full sort would decide. Returns [Q, k] column indices sorted
    by (key desc, id asc). Uses one argpartition per row (O(N)), not a sort.
    """
    n_queries, n = keys.shape
    k = min(k, n)
    if k == 0:
        return np.empty((n_queries, 0), dtype=np.intp)
    if k == n:
        cols = np.broadcast_to(np.arange(n), keys.shape)
    else:
        # Partition so the last k+1 positions hold the k+1 largest keys, the
        # (k+1)-th largest first: it tells us whether a tie crosses the cut.
        part = np.argpartition(keys, n - k - 1, axis=1)
        cols = part[:, n - k:]
        outside = np.take_along_axis(keys, part[:, n - k - 1: n - k], axis=1)[:, 0]
        worst_in = np.take_along_axis(keys, cols, axis=1).min(axis=1)
        tied = np.flatnonzero(outside == worst_in)
        if tied.size:
            cols = cols.copy()
            for q in tied:  # rare: only rows whose k-th key is shared by a column left out
                cols[q] = _resolve_tie(keys[q], col_ids, k, worst_in[q])
    cols = np.ascontiguousarray(cols)
    sel_keys = np.take_along_axis(keys, cols, axis=1)
    order = np.lexsort((col_ids[cols], -sel_keys), axis=1)
    return np.take_along_axis(cols, order, axis=1)


def _resolve_tie(row: np.ndarray, col_ids: np.ndarray, k: int, cut: float) -> np.ndarray:
    """The k best columns of one row whose k-th key `cut` is shared across the cut."""
    above = np.flatnonzero(row > cut)
    at = np.flatnonzero(row == cut)
    at = at[np.argsort(col_ids[at], kind="stable")[: k - above.size]]
    return np.concatenate([above, at])


def run_funnel(ids: np.ndarray, stage_keys: np.ndarray, keeps: list[int], k: int
               ) -> tuple[np.ndarray, np.ndarray]:
    """Apply a funnel to candidates that carry their key at every stage.

    `stage_keys` is [Q, M, len(keeps) + 1]: key at each shortlist stage, then the
    final key. Stage i keeps its `keeps[i]` best by its own key among the
    survivors of stage i-1; the final ranking returns `k`. Because each stage
    only needs keys the candidates already carry, a merge of per-shard candidate
    lists run through this gives exactly the single-node funnel's answer.
    """
    for keep in keeps:
        if keep < ids.shape[1]:  # a stage that keeps everyone changes nothing: skip its sort
            ids, stage_keys = merge_topk(ids, stage_keys, keep)
        stage_keys = stage_keys[..., 1:]  # this stage's key is spent
    return merge_topk(ids, stage_keys[..., 0], k)
