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


def order(keys: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """Per row of [Q, M] keys, the column order by (key desc, id asc): np.lexsort's
    answer. A stable argsort by key alone is ~8x faster than lexsort on two keys
    and already right where no two keys of a row are equal; rows with equal keys
    (rare outside of duplicated vectors) are lexsorted. One row (a single query's
    merge) is lexsorted outright: on 1-D arrays that is cheaper than the checks."""
    if keys.shape[0] == 1:  # ids: [1, M] or [M] (the caller's broadcastable column ids)
        return np.lexsort((ids[0] if ids.ndim == 2 else ids, -keys[0]))[None]
    idx = np.argsort(-keys, axis=1, kind="stable")
    if keys.shape[1] < 2:
        return idx
    sk = np.take_along_axis(keys, idx, axis=1)
    tied = np.flatnonzero((sk[:, 1:] == sk[:, :-1]).any(axis=1))
    if tied.size:
        ids = np.broadcast_to(ids, keys.shape)
        idx[tied] = np.lexsort((ids[tied], -keys[tied]), axis=1)
    return idx


def merge_topk(ids: np.ndarray, keys: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Best `k` of each row of ([Q, M] ids, [Q, M] keys), sorted by (key desc, id asc).

    Rows may hold the same candidates in any order (shard results concatenated).
    Returns the selected ids and keys, [Q, min(k, M)]. Extra trailing axes of
    `keys` (per-stage keys, [Q, M, S]) are carried along; the order uses [..., 0].
    """
    primary = keys if keys.ndim == 2 else keys[..., 0]
    best = best_columns(primary, ids, k)
    if ids.shape[0] == 1:  # one query: plain indexing (take_along_axis costs ~5 us a call)
        return ids[:, best[0]], (primary if keys.ndim == 2 else keys)[:, best[0]]
    out_ids = np.take_along_axis(ids, best, axis=1)
    if keys.ndim == 2:
        return out_ids, np.take_along_axis(primary, best, axis=1)
    return out_ids, np.take_along_axis(keys, best[..., None], axis=1)


def best_columns(keys: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the best `k` of each row of [Q, M] (keys, ids), sorted by
    (key desc, id asc): [Q, min(k, M)].

    Several rows and k < M: one argpartition, then sort only the k (sorting all M
    cost 4.6x at [32, 400], k=10). One row sorts outright: there the argpartition's
    overhead is more than the sort it saves.
    """
    if keys.shape[0] > 1 and 0 < k < keys.shape[1]:
        return _select(keys, ids, k)
    return order(keys, ids)[:, :k]


def best_unordered(keys: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """Column indices of the best `k` of each row of [Q, M] (keys, ids) by (key desc,
    id asc), in no particular order: merge_topk's set without its sort.

    `_select`'s one argpartition; only rows where a finite k-th key is shared
    across the cut are decided by id. Ties at -inf (padding, deleted rows) are
    not resolved: callers drop those entries.
    """
    k = min(k, keys.shape[1])
    if k <= 0:
        return np.empty((keys.shape[0], 0), dtype=np.intp)
    return _select(keys, ids, k, sort=False, inf_ties=False)


# The threshold path (see _prefilter) pays off once a row is this wide and k is
# at most 1/PREFILTER_MAX_K_FRACTION of it; below that argpartition is cheap anyway.
PREFILTER_MIN_COLS = 4096
PREFILTER_MAX_K_FRACTION = 8
SAMPLE_STRIDE = 32  # every 32nd column estimates a row's threshold
# Columns per row the threshold aims to pass, in units of k + 1: fewer make the
# selection among them cheaper, but more rows fall short and go the slow way.
SURVIVORS = 2.0


def top_columns(keys: np.ndarray, col_ids: np.ndarray, k: int, sort: bool = True) -> np.ndarray:
    """Column indices of the best `k` keys of each row of a wide [Q, N] matrix.

    `col_ids[j]` is the id of column j; ties at the k-th key go to the smaller
    id, exactly as a full sort would decide. Returns [Q, k] column indices sorted
    by (key desc, id asc), or in no set order with `sort=False` (a shortlist
    whose next stage sorts anyway). Keys must be free of NaN (-inf is fine).

    Wide rows first drop every column below a threshold that a column sample
    says leaves a few times k survivors (_prefilter), and select among those;
    argpartition over the whole row (O(N), ~0.14 ms per 100k columns) remains
    for narrow rows and for rows the threshold left fewer than k columns.
    """
    n_queries, n = keys.shape
    k = min(k, n)
    if k == 0:
        return np.empty((n_queries, 0), dtype=np.intp)
    if n >= PREFILTER_MIN_COLS and k * PREFILTER_MAX_K_FRACTION <= n:
        return _prefilter(keys, col_ids, k, sort)
    return _select(keys, col_ids, k, sort)


def _prefilter(keys: np.ndarray, col_ids: np.ndarray, k: int, sort: bool = True) -> np.ndarray:
    """top_columns by a per-row threshold: exact, and ~5x faster than argpartition.

    A row's k best keys are all >= t whenever at least k keys are >= t (the k-th
    best is then >= t, and so is every key tied with it), so selecting among the
    columns >= t gives exactly the full answer, tie rule included. t is the r-th
    best of every SAMPLE_STRIDE-th column, r chosen so ~SURVIVORS x (k+1) columns pass.
    """
    n_queries, n = keys.shape
    sample = keys[:, ::SAMPLE_STRIDE]
    m = sample.shape[1]
    r = min(m, int(np.ceil(SURVIVORS * (k + 1) * m / n)) + 3)
    thr = np.partition(sample, m - r, axis=1)[:, m - r]
    # One compare and one flatnonzero over the whole matrix: a 2-D np.nonzero or
    # a loop over rows costs several times more. Hits come out grouped by row.
    hit = np.flatnonzero(keys >= thr[:, None])
    row = hit // n
    counts = np.bincount(row, minlength=n_queries)
    # A -inf threshold would pass dead rows (keys -inf) and padding could tie with
    # them; rows with most columns passing (heavy ties) are cheaper the plain way.
    ok = (counts >= k) & (counts <= n // 4) & np.isfinite(thr)
    out = np.empty((n_queries, k), dtype=np.intp)
    if ok.any():
        sel = ok[row]
        hit, row = hit[sel], row[sel]
        starts = np.cumsum(counts * ok) - counts * ok
        pos = np.arange(hit.size) - starts[row]
        good = np.flatnonzero(ok)
        dense = np.cumsum(ok) - 1           # row -> its index among the ok rows
        width = int(counts[good].max())
        # Survivors packed left in a [ok rows, width] matrix; padding is -inf, below
        # every survivor (they are >= a finite threshold), so it is never chosen.
        packed = np.full((good.size, width), -np.inf, dtype=keys.dtype)
        cols = np.zeros((good.size, width), dtype=np.intp)
        packed[dense[row], pos] = keys.ravel()[hit]
        cols[dense[row], pos] = hit - row * n
        best = _select(packed, col_ids[cols], k, sort)
        out[good] = np.take_along_axis(cols, best, axis=1)
    bad = np.flatnonzero(~ok)
    if bad.size:  # rare: the sample misjudged the row, or the row is mostly ties
        out[bad] = _select(keys[bad], col_ids, k, sort)
    return out


def _select(keys: np.ndarray, col_ids: np.ndarray, k: int, sort: bool = True,
            inf_ties: bool = True) -> np.ndarray:
    """top_columns by one argpartition per row (O(N)), not a sort.

    `col_ids` is [N] (the same ids in every row) or [Q, N] (ids per row).
    `inf_ties=False` leaves a tie at a -inf k-th key undecided (best_unordered).
    """
    n_queries, n = keys.shape
    if n_queries == 1:
        return _select_one(keys[0], col_ids[0] if col_ids.ndim == 2 else col_ids, k, sort, inf_ties)[None]
    ids = np.broadcast_to(col_ids, keys.shape)
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
        if not inf_ties:
            tied = tied[np.isfinite(worst_in[tied])]
        if tied.size:
            cols = cols.copy()
            for q in tied:  # rare: only rows whose k-th key is shared by a column left out
                cols[q] = _resolve_tie(keys[q], ids[q], k, worst_in[q])
    cols = np.ascontiguousarray(cols)
    if not sort:
        return cols
    sel_keys = np.take_along_axis(keys, cols, axis=1)
    return np.take_along_axis(cols, order(sel_keys, np.take_along_axis(ids, cols, axis=1)), axis=1)


def _select_one(row: np.ndarray, row_ids: np.ndarray, k: int, sort: bool, inf_ties: bool
                ) -> np.ndarray:
    """_select for one query (a 1-D row): the same answer with plain indexing, which
    costs a few µs where take_along_axis costs ~8 µs a call (a batch-1 search)."""
    n = row.size
    if k == n:
        cols = np.arange(n)
    else:
        part = np.argpartition(row, n - k - 1)
        cols = part[n - k:]
        worst_in = row[cols].min()
        if row[part[n - k - 1]] == worst_in and (inf_ties or np.isfinite(worst_in)):
            cols = _resolve_tie(row, row_ids, k, worst_in)
    if not sort:
        return cols
    return cols[np.lexsort((row_ids[cols], -row[cols]))]


def _resolve_tie(row: np.ndarray, row_ids: np.ndarray, k: int, cut: float) -> np.ndarray:
    """The k best columns of one row whose k-th key `cut` is shared across the cut."""
    above = np.flatnonzero(row > cut)
    at = np.flatnonzero(row == cut)
    at = at[np.argsort(row_ids[at], kind="stable")[: k - above.size]]
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
