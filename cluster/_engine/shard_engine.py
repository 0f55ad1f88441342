"""ShardEngine: one shard's vectors and exact search at any prefix dim. Pure numpy.

Storage is one contiguous float32 matrix grown by doubling, so `X[:n, :d]` is a
strided view BLAS reads without a copy. Ids map to rows through a sorted id
array (binary search, vectorised; no per-id Python work). Deletes leave
tombstones, compacted away once a quarter of the rows are dead. The squared norm
of every row at every nested dim is kept, so cosine at a prefix and l2 need no
extra pass over the data at those dims (and only a partial one in between).
Small nested prefixes also get a contiguous copy (normalised at their own
width under cosine), so the cheap first stage of a funnel streams memory.

Scores are computed as "keys", higher is better (see topk.py); l2 keys are the
negated squared distance. Results convert keys back to the metric's own score.

Why one 650-line module (over the layout's 400-line guide): ShardEngine is one
class over one set of arrays (rows, id table, tombstones, per-dim norms, prefix
copies) whose methods keep those arrays consistent with each other; the search
math that needs none of that state already lives beside it (topk, funnel_rounds,
lowp, kernels, parallel).
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np

from nestvec.cluster._engine import kernels, parallel
from nestvec.cluster._engine import filter_eval
from nestvec.cluster._engine.payload import Column, PayloadStore, take_rows
from nestvec.cluster._engine.collection import CollectionConfig, SearchPlan
from nestvec.cluster._engine.lowp import QuantizedPrefix, has_copy, lowp_overfetch
from nestvec.cluster._engine.topk import order as topk_order
from nestvec.cluster._engine.topk import best_columns, best_unordered, run_funnel, top_columns

COMPACT_DEAD_FRACTION = 0.25
# Nested dims up to this width (and below the full dim) also live in their own
# contiguous [cap, d] matrix: scanning X[:, :32] as a strided view reads two
# scattered cache lines per 1,536-byte row, a contiguous copy streams (measured
# 0.65 ms vs 0.09 ms per 100k rows at d=32). 128 is included because it is the
# usual middle prefix (funnel stage, ANN index dim): 1.2 vs 3.8 ms per 100k-row
# query at d=128. Costs 58% more vector memory at 384 dims (32 + 64 + 128 of
# 384), 29% at 768.
FAST_PREFIX_MAX_DIM = 128
# With FAISS installed, batches of kernels.MIN_BATCH+ queries on those copies use
# its fused scan + top-k (kernels.py) while at most this many rows are dead.
KERNEL_MAX_DEAD = 4096
use_kernel = kernels.available()  # module switch: tests run both paths
split_search = True  # module switch: batches on several cores (parallel.py) when set_threads > 1
SPLIT_MIN_ROWS = 8192  # a scan splits into row ranges of at least this many rows
# A scan's [queries, rows] score matrix stays under this many bytes (queries go in
# chunks): no request can make a shard allocate queries x rows at once (a 10,000-query
# search of a 1M-row shard would need ~58 GB). Per engine: `engine.score_budget`.
SCORE_BUDGET_BYTES = 256 << 20
_BYTES_PER_SCORE = 8  # float32 keys plus a scan's temporaries (~5.8 bytes measured)
_GATHER_BYTES = 32 << 20  # funnel re-rank works in query chunks of about this many bytes
# A filtered scan matching at least this share of the rows scans them all and masks the
# rest (a strided view BLAS reads in place); below it, the matching rows are gathered
# and only they are scored (docs/filters.md).
DENSE_FILTER_FRACTION = 0.5
# One query reads each matching row once through cache-sized blocks (_best_subset_one),
# which beat the in-place scan up to ~90% of the rows (corpusA at 50%: 15 vs 25 ms).
DENSE_FILTER_FRACTION_ONE = 0.9
_SUBSET_BLOCK_BYTES = 1 << 20  # 1 MiB blocks measured fastest (256 KiB-2 MiB tried)


@dataclass
class SearchResult:
    """[Q, k] ids and scores, sorted best first (ties by id)."""

    ids: np.ndarray     # uint64
    scores: np.ndarray  # float32, the metric's score (l2: squared distance)


@dataclass
class Candidates:
    """Funnel candidates of one shard, with their key at every stage and at the final dim."""

    ids: np.ndarray   # [Q, M] uint64
    keys: np.ndarray  # [Q, M, stages + 1] float32


@dataclass
class ShardStats:
    vectors: int
    tombstones: int
    capacity: int


class ShardEngine:
    def __init__(self, config: CollectionConfig, initial_capacity: int = 1024):
        self.config = config
        self.score_budget = SCORE_BUDGET_BYTES
        self.dim = config.dim
        self.metric = config.metric
        self.nested = np.asarray(config.nested_dims, dtype=np.int64)
        self._nested_col = {int(d): j for j, d in enumerate(self.nested)}  # dim -> _sqnorms column
        cap = max(1, int(initial_capacity))
        self._vectors = np.zeros((cap, self.dim), dtype=np.float32)
        self._row_ids = np.zeros(cap, dtype=np.uint64)
        self._alive = np.zeros(cap, dtype=bool)
        # float64: squares of tiny (but valid) values underflow float32 and would zero cosines
        self._sqnorms = np.zeros((cap, len(self.nested)), dtype=np.float64)
        self._fast = {int(d): np.zeros((cap, int(d)), dtype=np.float32) for d in self.nested
                      if d <= FAST_PREFIX_MAX_DIM and d < self.dim}
        # first_stage="float16"/"int8": low-precision copies for funnel shortlists (lowp.py)
        self._lowp = {} if config.first_stage == "float32" else {
            int(d): QuantizedPrefix(int(d), config.first_stage, cap, l2=self.metric == "l2")
            for d in self.nested
            if has_copy(int(d), self.dim)}
        self._n = 0                                       # rows in use (live + dead)
        self._index_ids = np.empty(0, dtype=np.uint64)    # sorted live ids
        self._index_rows = np.empty(0, dtype=np.int64)    # their rows
        self._dead_rows: np.ndarray | None = np.empty(0, dtype=np.int64)
        self._row_terms: dict[int, np.ndarray] = {}  # dim -> per-row scan term, until a write
        self._table_of: np.ndarray | None = None          # the _index_rows _table was built from
        self._table: np.ndarray | None = None             # see _row_table
        self.payload = PayloadStore()                     # attributes, row-aligned (payload.py)
        self._filters: dict[str, list] = {}               # canonical filter JSON -> parsed
        self.epoch = 0                                    # bumped by every write

    # ----- size -----------------------------------------------------------------
    def __len__(self) -> int:
        return int(self._index_ids.size)

    def stats(self) -> ShardStats:
        return ShardStats(len(self), self._n - len(self), self._vectors.shape[0])

    def memory_bytes(self) -> int:
        """Bytes held by the shard's arrays (allocated capacity, not just live rows)."""
        arrays = [self._vectors, self._row_ids, self._alive, self._sqnorms, self._index_ids,
                  self._index_rows, *self._fast.values(), *self._row_terms.values()]
        if self._table is not None:
            arrays.append(self._table)
        return int(sum(a.nbytes for a in arrays)) + self.lowp_nbytes() + self.payload.nbytes()

    # ----- writes ---------------------------------------------------------------
    def upsert(self, ids: np.ndarray, vectors: np.ndarray,
               payload: dict[str, Column] | None = None) -> int:
        """Insert or replace rows (and their payloads: fields not given become missing).
        Within one batch the last occurrence of an id wins."""
        ids = np.asarray(ids, dtype=np.uint64)
        vectors = np.asarray(vectors, dtype=np.float32)
        # Keep each id's last occurrence (np.unique on the reversed batch).
        uniq, first_in_rev = np.unique(ids[::-1], return_index=True)
        take = ids.size - 1 - first_in_rev
        ids, vectors = uniq, vectors[take]
        pos, found = self._lookup(ids)
        old_rows = self._index_rows[pos[found]]
        self._write_rows(old_rows, vectors[found])
        new_ids = ids[~found]
        rows_of = np.empty(ids.size, dtype=np.int64)  # each unique id's row
        rows_of[found] = old_rows
        rows_of[~found] = np.arange(self._n, self._n + new_ids.size, dtype=np.int64)
        if payload:
            self.payload.write(rows_of, {f: take_rows(c, take) for f, c in payload.items()}, replace=True)
        elif self.payload.fields:
            self.payload.clear(rows_of)
        if new_ids.size:
            start = self._n
            self._reserve(start + new_ids.size)
            rows = np.arange(start, start + new_ids.size, dtype=np.int64)
            self._n += new_ids.size
            self._row_ids[rows] = new_ids
            self._alive[rows] = True
            self._write_rows(rows, vectors[~found])
            ins = pos[~found]  # sorted ids keep insertion points monotonic
            self._index_ids = np.insert(self._index_ids, ins, new_ids)
            self._index_rows = np.insert(self._index_rows, ins, rows)
        self._row_terms.clear()
        self.epoch += 1  # rows or their contents changed (caches keyed on it go stale)
        return int(ids.size)

    def delete(self, ids: np.ndarray) -> int:
        """Tombstone the given ids; returns how many existed."""
        ids = np.unique(np.asarray(ids, dtype=np.uint64))
        pos, found = self._lookup(ids)
        if not found.any():
            return 0
        pos = pos[found]
        self._alive[self._index_rows[pos]] = False
        if self.payload.fields:
            self.payload.clear(self._index_rows[pos])
        self._index_ids = np.delete(self._index_ids, pos)
        self._index_rows = np.delete(self._index_rows, pos)
        self._dead_rows = None
        self._row_terms.clear()
        self.epoch += 1  # rows or their contents changed (caches keyed on it go stale)
        if self._n - len(self) >= COMPACT_DEAD_FRACTION * self._n:
            self.compact()
        return int(pos.size)

    def compact(self) -> None:
        """Drop tombstoned rows, keeping live rows in their order."""
        keep = np.flatnonzero(self._alive[: self._n])
        m = keep.size
        self._vectors[:m] = self._vectors[keep]
        self._row_ids[:m] = self._row_ids[keep]
        self._sqnorms[:m] = self._sqnorms[keep]
        for copy in self._fast.values():
            copy[:m] = copy[keep]
        for lp in self._lowp.values():
            lp.keep_rows(keep)
        self.payload.take(keep)
        self._alive[:m] = True
        self._alive[m: self._n] = False
        self._n = m
        order = np.argsort(self._row_ids[:m], kind="stable")
        self._index_ids = self._row_ids[order].copy()
        self._index_rows = order.astype(np.int64)
        self._dead_rows = np.empty(0, dtype=np.int64)
        self._row_terms.clear()
        self.epoch += 1  # rows or their contents changed (caches keyed on it go stale)

    # ----- reads ----------------------------------------------------------------
    def get(self, ids: np.ndarray, dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(found mask in the order asked, [found, dim] vectors of the found ids)."""
        ids = np.asarray(ids, dtype=np.uint64)
        pos, found = self._lookup(ids)
        rows = self._index_rows[pos[found]]
        return found, self._vectors[rows, : (dim or self.dim)].copy()

    def ids(self) -> np.ndarray:
        """All live ids, sorted."""
        return self._index_ids.copy()

    # ----- payloads and filters (payload.py, docs/filters.md) ---------------------
    def set_payload(self, ids: np.ndarray, payload: dict[str, Column]) -> int:
        """Change the given fields of stored ids (one column entry per id; the last
        occurrence of a repeated id wins); ids not stored are skipped. Returns how many
        were stored."""
        ids = np.asarray(ids, dtype=np.uint64)
        uniq, first_in_rev = np.unique(ids[::-1], return_index=True)
        take = ids.size - 1 - first_in_rev
        pos, found = self._lookup(uniq)
        if found.any():
            rows = self._index_rows[pos[found]]
            self.payload.write(rows, {f: take_rows(c, take[found]) for f, c in payload.items()},
                               replace=False)
        return int(found.sum())

    def read_payload(self, ids: np.ndarray, fields: list[str] | None = None) -> dict[str, Column]:
        """Payload columns of stored `ids` (each must be stored: callers pass found ids)."""
        rows, found = self.stored_rows(np.asarray(ids, dtype=np.uint64))
        return self.payload.read(rows[found], fields)

    def filter_rows(self, filter_json: str) -> np.ndarray:
        """Live rows matching a canonical filter (as JSON), ascending: read from the
        payload indexes in O(matches) when the filter is selective (filter_eval.py)."""
        rows = self.payload.rows(self._parsed(filter_json), self._n, self._row_ids)
        return rows[self._alive[rows]]

    def filter_mask(self, filter_json: str) -> np.ndarray:
        """bool over rows 0..n-1: live and matching the canonical filter (as JSON)."""
        mask = self.payload.mask(self._parsed(filter_json), self._n, self._row_ids)
        mask &= self._alive[: self._n]
        return mask

    def filter_count_for_planning(self, filter_json: str) -> int:
        """About how many live rows match, cheaply: from the payload indexes' counts
        when the filter is built of indexed conditions (an upper bound: rows deleted or
        rewritten since the index was built count), else counted exactly by a mask."""
        f = self._parsed(filter_json)
        if filter_eval.indexed(f):
            return min(len(self), self.payload.estimate(f, self._n))
        return int(self.filter_mask(filter_json).sum())

    def filter_test(self, filter_json: str, rows: np.ndarray) -> np.ndarray:
        """bool per row of `rows` (stored rows, any order): it matches the filter.
        Reads only those rows (a graph walk's candidates)."""
        return filter_eval.test(self.payload, self._parsed(filter_json), rows, self._row_ids)

    def _parsed(self, filter_json: str) -> list:
        # Queries repeat their filters: parse each canonical form once (a few kept).
        f = self._filters.get(filter_json)
        if f is None:
            if len(self._filters) >= 64:
                self._filters.clear()
            f = self._filters[filter_json] = json.loads(filter_json)
        return f

    def stored_rows(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, stored mask) of ids of any shape; rows of ids not stored are 0."""
        pos, found = self._lookup(ids.ravel())
        rows = np.zeros(found.shape, dtype=np.int64)
        rows[found] = self._index_rows[pos[found]]
        return rows.reshape(ids.shape), found.reshape(ids.shape)

    def count(self, filter_json: str = "") -> int:
        return len(self) if not filter_json else int(self.filter_rows(filter_json).size)

    def matching_ids(self, filter_json: str, limit: int) -> np.ndarray:
        """The `limit` smallest live ids matching the filter, ascending."""
        ids = np.sort(self._row_ids[self.filter_rows(filter_json)])
        return ids[:limit]

    def live_arrays(self, dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(sorted live ids, their [n, dim] vectors): the state a snapshot keeps.

        `dim` copies only a prefix (a graph build needs no more).
        """
        if dim is None or dim >= self.dim:
            return self._index_ids.copy(), self._vectors[self._index_rows]
        return self._index_ids.copy(), self._vectors[self._index_rows, :dim]

    def search(self, queries: np.ndarray, plan: SearchPlan) -> SearchResult:
        """Exact top-k at `plan.dim`, through the funnel's stages if it has any."""
        if plan.stages:
            ids, keys = self.funnel_keys(queries, plan)
        else:
            ids, keys = self.top_keys(queries, plan.k, plan.dim, plan.filter)
        return SearchResult(ids, keys_to_scores(self.metric, queries, keys, plan.dim))

    def funnel_keys(self, queries: np.ndarray, plan: SearchPlan) -> tuple[np.ndarray, np.ndarray]:
        """The whole funnel in this engine: [Q, min(k, live)] ids and final keys."""
        if len(plan.stages) > 1:
            return self._funnel_pruned(queries, plan)
        cand = self.funnel_candidates(queries, plan)
        return run_funnel(cand.ids, cand.keys, plan.keeps, plan.k)

    def top_keys(self, queries: np.ndarray, k: int, dim: int, filter: str = ""
                 ) -> tuple[np.ndarray, np.ndarray]:
        """[Q, min(k, live)] ids and keys of the best rows at prefix `dim` (with a
        filter: the best matching rows, at most as many as match)."""
        if filter:
            subset = self.filter_rows(filter)
            rows, keys = self._best_subset_rows(queries, min(k, subset.size), dim, subset, True)
            return self._row_ids[rows], keys
        rows, keys = self._best_rows(queries, min(k, len(self)), dim)
        return self._row_ids[rows], keys

    def _best_subset_rows(self, queries: np.ndarray, k: int, dim: int, subset: np.ndarray,
                          sort: bool) -> tuple[np.ndarray, np.ndarray]:
        """_best_rows among `subset` (live rows, ascending): the brute-force answer over
        the matching rows. A dense subset is scanned in place with the other rows'
        keys set to -inf before the selection; a sparse one is gathered and only its
        rows are scored. Query chunks keep the score matrix within score_budget."""
        q_rows = queries.shape[0]
        if k == 0 or subset.size == 0:
            return np.zeros((q_rows, 0), dtype=np.int64), np.zeros((q_rows, 0), dtype=np.float32)
        if q_rows == 1 and subset.size < DENSE_FILTER_FRACTION_ONE * self._n:
            return self._best_subset_one(queries, k, dim, subset, sort)
        dense = subset.size >= DENSE_FILTER_FRACTION * self._n
        if dense:
            outside = np.ones(self._n, dtype=bool)
            outside[subset] = False
            outside = np.flatnonzero(outside)
            ids = self._row_ids[: self._n]
        else:
            gathered = self._vectors[subset, :dim]  # one copy, scored by every chunk
            ids = self._row_ids[subset]
        width = self._n if dense else subset.size
        step = max(1, self.score_budget // (max(width, 1) * _BYTES_PER_SCORE))
        parts = []
        for i in range(0, q_rows, step):
            chunk = queries[i:i + step]
            if dense:
                keys = self._scan_keys(chunk, dim)
                keys[:, outside] = -np.inf
            else:
                keys = self._scan_gathered(chunk, dim, subset, gathered)
            cols = top_columns(keys, ids, k, sort)
            parts.append((cols if dense else subset[cols], np.take_along_axis(keys, cols, axis=1)))
        if len(parts) == 1:
            return parts[0]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _best_subset_one(self, queries: np.ndarray, k: int, dim: int, subset: np.ndarray,
                         sort: bool) -> tuple[np.ndarray, np.ndarray]:
        """_best_subset_rows for one query over a sparse subset: the rows are gathered
        and scored a cache-sized block at a time (the block is read back from cache,
        not memory), with 1-D selection (no per-call batch overheads at ~50 µs a query)."""
        q = np.ascontiguousarray(queries[:, :dim], dtype=np.float32)
        if self.metric == "cosine":
            q = _unit_rows(q)
        q = q[0]
        keys = np.empty(subset.size, dtype=np.float32)
        step = max(1, _SUBSET_BLOCK_BYTES // (4 * dim))
        for i in range(0, subset.size, step):
            keys[i:i + step] = self._vectors[subset[i:i + step], :dim] @ q
        if self.metric == "cosine":
            keys *= self._scan_term(dim)[subset]
        elif self.metric == "l2":
            keys *= 2
            keys -= self._scan_term(dim)[subset]
        cols = top_columns(keys[None], self._row_ids[subset], k, sort)[0]
        return subset[cols][None], keys[cols][None]

    def _scan_gathered(self, queries: np.ndarray, dim: int, rows: np.ndarray, x: np.ndarray
                       ) -> np.ndarray:
        """[Q, len(rows)] keys at `dim` of `rows`, whose prefixes are `x` (gathered)."""
        q = np.ascontiguousarray(queries[:, :dim], dtype=np.float32)
        if self.metric == "cosine":
            keys = _unit_rows(q) @ x.T
            keys *= self._scan_term(dim)[rows][None, :]
        elif self.metric == "dot":
            keys = q @ x.T
        else:
            keys = q @ x.T
            keys *= 2
            keys -= self._scan_term(dim)[rows][None, :]
        return keys

    def _best_rows(self, queries: np.ndarray, k: int, dim: int, sort: bool = True
                   ) -> tuple[np.ndarray, np.ndarray]:
        """[Q, k] rows and keys of the k best live rows at `dim`, in (key desc, id asc)
        order (any order without `sort`: a shortlist whose next stage sorts).

        A scan holds a [queries, rows] score matrix: in chunks of queries so that it
        stays within `score_budget` bytes (each query's answer is its own, so the
        chunks' answers concatenate to exactly the whole batch's)."""
        step = max(1, self.score_budget // (max(self._n, 1) * _BYTES_PER_SCORE))
        if queries.shape[0] <= step:
            return self._best_rows_batch(queries, k, dim, sort)
        parts = [self._best_rows_batch(queries[i:i + step], k, dim, sort)
                 for i in range(0, queries.shape[0], step)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _best_rows_batch(self, queries: np.ndarray, k: int, dim: int, sort: bool
                         ) -> tuple[np.ndarray, np.ndarray]:
        found = self._kernel_rows(queries, k, dim)
        if found is not None:
            return found
        ways = parallel.ways(queries.shape[0]) if split_search else 1
        if ways == 1 or self._n < ways * SPLIT_MIN_ROWS:
            return self._best_in_range(queries, k, dim, 0, self._n, sort)
        # Each part scans and selects in its own row range (a shard of the rows); the
        # global best k are among the parts' best k, merged by the same order.
        bounds = np.linspace(0, self._n, ways + 1).astype(np.int64)
        parts = parallel.run(lambda r: self._best_in_range(queries, k, dim, *r),
                             list(zip(bounds[:-1], bounds[1:])))
        rows = np.concatenate([p[0] for p in parts], axis=1)
        keys = np.concatenate([p[1] for p in parts], axis=1)
        best = top_columns(keys, self._row_ids[rows], k, sort)
        return np.take_along_axis(rows, best, axis=1), np.take_along_axis(keys, best, axis=1)

    def _best_in_range(self, queries: np.ndarray, k: int, dim: int, lo: int, hi: int,
                       sort: bool = False) -> tuple[np.ndarray, np.ndarray]:
        """_best_rows among rows lo..hi (dead rows there may fill up a short range)."""
        keys = self._scan_keys(queries, dim, lo, hi)
        cols = top_columns(keys, self._row_ids[lo:hi], k, sort)
        return cols + lo, np.take_along_axis(keys, cols, axis=1)

    def _kernel_rows(self, queries: np.ndarray, k: int, dim: int):
        """_best_rows through FAISS's fused kernel, or None where it does not apply.

        It asks for k+1+dead rows, drops dead ones, and keeps the answer only for
        queries whose k-th and (k+1)-th keys differ: there the top-k set is
        unique, so FAISS's own tie order cannot change it. Other queries (ties
        across the cut, rare) are answered by the numpy path.
        """
        x = self._fast.get(dim)
        dead = self._n - len(self)
        if (not use_kernel or x is None or queries.shape[0] < kernels.MIN_BATCH
                or dead > KERNEL_MAX_DEAD or k + 1 + dead > self._n):
            return None
        q = np.ascontiguousarray(queries[:, :dim], dtype=np.float32)
        if self.metric == "cosine":
            q = _unit_rows(q)  # the copy's rows are unit length too
        scores, rows = kernels.knn(x[: self._n], q, k + 1 + dead, l2=self.metric == "l2")
        # l2 keys are |q|^2 - distance (the scan's 2 q.x - |x|^2): keys_to_scores undoes it
        keys = (np.einsum("ij,ij->i", q, q)[:, None] - scores) if self.metric == "l2" else scores
        if dead:
            live_first = self._live_first(rows)[:, : k + 1]
            rows = np.take_along_axis(rows, live_first, axis=1)
            keys = np.take_along_axis(keys, live_first, axis=1)
        order = topk_order(keys, self._row_ids[rows])
        rows = np.take_along_axis(rows, order, axis=1)
        keys = np.take_along_axis(keys, order, axis=1).astype(np.float32)
        tied = np.flatnonzero(keys[:, k - 1] == keys[:, k]) if k else np.empty(0, int)
        rows, keys = rows[:, :k].copy(), keys[:, :k].copy()
        if tied.size:
            slow = self._scan_keys(queries[tied], dim)
            cols = top_columns(slow, self._row_ids[: self._n], k)
            rows[tied] = cols
            keys[tied] = np.take_along_axis(slow, cols, axis=1)
        return rows, keys

    def funnel_candidates(self, queries: np.ndarray, plan: SearchPlan) -> Candidates:
        """Stage 1 over every live row, then every survivor's key at each later dim.

        Survivors carry keys at all later stages and at the final dim so a merge of
        several shards' candidates can run the remaining stages exactly (topk.run_funnel).
        """
        later_dims = [d for d, _ in plan.stages[1:]] + [plan.dim]
        cols, keys = self._first_stage(queries, plan.stages[0], later_dims, plan.filter)
        return Candidates(self._row_ids[cols], keys)

    def _first_stage(self, queries: np.ndarray, stage: tuple[int, int], later_dims: list[int],
                     filter: str = "") -> tuple[np.ndarray, np.ndarray]:
        """[Q, keep] rows best at the stage's dim (by (key desc, id asc)), in no order, and their keys
        at that dim then at each of `later_dims`: [Q, keep, 1 + len(later_dims)].
        With a filter only matching rows are shortlisted (so every later stage sees only them)."""
        first_dim, first_keep = stage
        if filter:  # later stages sort
            subset = self.filter_rows(filter)
            cols, keys1 = self._best_subset_rows(queries, min(first_keep, subset.size), first_dim,
                                                 subset, sort=False)
            return cols, self._with_later_keys(queries, cols, keys1, later_dims)
        keep = min(first_keep, len(self))
        lp = self._lowp.get(first_dim)
        wide = None if lp is None else self._lowp_rows(queries, min(len(self), lowp_overfetch(keep)), lp)
        if wide is not None:
            # A few extra rows shortlisted on the low-precision copy; keep the best by
            # their exact float32 key: shards send exact keys, so merges stay exact.
            keys = self._rescore(queries, wide, [first_dim] + later_dims)
            best = best_unordered(keys[..., 0], self._row_ids[wide], keep)  # later stages sort
            return (np.take_along_axis(wide, best, axis=1),
                    np.take_along_axis(keys, best[..., None], axis=1))
        cols, keys1 = self._best_rows(queries, keep, first_dim, sort=False)  # later stages sort
        return cols, self._with_later_keys(queries, cols, keys1, later_dims)

    def _with_later_keys(self, queries: np.ndarray, cols: np.ndarray, keys1: np.ndarray,
                         later_dims: list[int]) -> np.ndarray:
        """[Q, M, 1 + len(later_dims)]: the first stage's keys, then the rows' keys at each later dim."""
        out = np.empty(cols.shape + (len(later_dims) + 1,), dtype=np.float32)
        out[..., 0] = keys1
        if later_dims and cols.size:
            out[..., 1:] = self._rescore(queries, cols, later_dims)
        return out

    def _funnel_pruned(self, queries: np.ndarray, plan: SearchPlan) -> tuple[np.ndarray, np.ndarray]:
        """A funnel of several stages inside one engine: each stage re-scores only the
        previous stage's survivors, so 64:400 -> 128:50 -> 384 gathers 400 rows at 128
        dims and 50 at 384, not 400 at both as funnel_candidates must (a merge of
        shards needs every key). The same answer as run_funnel on funnel_candidates:
        each stage keeps its best by (key desc, id asc) among the previous survivors."""
        cols, _ = self._first_stage(queries, plan.stages[0], [], plan.filter)
        later = [*plan.stages[1:], (plan.dim, plan.k)]
        for i, (d, keep) in enumerate(later):
            keys = self._rescore(queries, cols, [d])[..., 0]
            if i == len(later) - 1:  # the final rank sorts
                best = best_columns(keys, self._row_ids[cols], keep)
            elif keep < cols.shape[1]:  # a shortlist in between needs no order
                best = best_unordered(keys, self._row_ids[cols], keep)
            else:
                continue
            cols = np.take_along_axis(cols, best, axis=1)
            keys = np.take_along_axis(keys, best, axis=1)
        return self._row_ids[cols], keys

    # ----- a funnel over several shards, in rounds (_distributed/search_rounds.py) ----------
    def shortlist(self, queries: np.ndarray, stage: tuple[int, int],
                  rescore: tuple[int, int] | None = None, filter: str = ""
                  ) -> tuple[np.ndarray, np.ndarray]:
        """Round 1: [Q, keep] ids best at the stage's dim and their keys, in any order
        (the coordinator cuts the shards' lists to the global shortlist).

        With `rescore` = (spec, dim), a one-stage funnel's single round: only the
        shortlist's best `spec` come back, keys [Q, spec, 2] at the stage's dim and
        at `dim` (funnel_rounds.one_round).
        """
        cols, keys = self._first_stage(queries, stage, [], filter)
        keys = keys[..., 0]
        if rescore is None:
            return self._row_ids[cols], keys
        spec, dim = rescore
        if spec < cols.shape[1]:
            best = best_unordered(keys, self._row_ids[cols], spec)
            cols, keys = np.take_along_axis(cols, best, axis=1), np.take_along_axis(keys, best, axis=1)
        both = np.stack([keys, self._rescore(queries, cols, [dim])[..., 0]], axis=-1)
        return self._row_ids[cols], both

    def rescore_survivors(self, queries: np.ndarray, ids: np.ndarray, counts: np.ndarray,
                          dim: int, best: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Later rounds: keys at `dim` of each query's first `counts[q]` ids (the rest of
        the row is padding and gets -inf, as does an id deleted since round 1).

        With `best`, only each row's `best` ids by (key desc, id asc) come back, in no
        order (the coordinator's merge sorts): the last stage's global top-k is among
        the shards' own top-k of their survivors.
        """
        _, keys = self.rescore_ids(queries, ids, [dim])
        keys = keys[..., 0]
        keys[np.arange(ids.shape[1])[None, :] >= np.asarray(counts)[:, None]] = -np.inf
        if best is None:
            return ids, keys
        cols = best_unordered(keys, ids, best)  # the coordinator's merge sorts
        return np.take_along_axis(ids, cols, axis=1), np.take_along_axis(keys, cols, axis=1)

    def _lowp_rows(self, queries: np.ndarray, k: int, lp: QuantizedPrefix) -> np.ndarray | None:
        """[Q, k] live rows best by their low-precision key at `lp.dim` (approximate),
        or None where the low-precision kernel does not apply (lowp.py)."""
        dead = self._n - len(self)
        if not lp.serves(queries.shape[0]) or dead > KERNEL_MAX_DEAD or k + dead > self._n:
            return None
        q = np.ascontiguousarray(queries[:, : lp.dim], dtype=np.float32)
        if self.metric == "cosine":
            q = _unit_rows(q)  # the copy's rows are unit length at their width
        rows = lp.search(q, self._n, k + dead)[1]
        if dead:
            rows = np.take_along_axis(rows, self._live_first(rows), axis=1)
        return rows[:, :k]

    def _live_first(self, rows: np.ndarray) -> np.ndarray:
        """Per row of a FAISS answer over all rows (dead ones too), the order that puts
        live rows first and keeps FAISS's order among them (a stable sort)."""
        return np.argsort(~self._alive[rows], axis=1, kind="stable")

    def lowp_nbytes(self) -> int:
        """Memory held by the low-precision first-stage copies."""
        return sum(lp.nbytes() for lp in self._lowp.values())

    def rescore_ids(self, queries: np.ndarray, ids: np.ndarray, dims: list[int]
                    ) -> tuple[np.ndarray, np.ndarray]:
        """Exact keys of candidate ids ([Q, M], e.g. from an ANN graph) at each of `dims`.

        Returns ([Q, M] stored mask, [Q, M, len(dims)] keys); ids not stored get -inf.
        """
        n = self._index_ids.size
        if not n:
            return (np.zeros(ids.shape, dtype=bool),
                    np.full(ids.shape + (len(dims),), -np.inf, np.float32))
        table = self._row_table()
        if table is not None and ids.size and ids.max() < table.size:  # dense ids: one gather
            rows = table[ids]
            found = rows >= 0
            all_found = bool(found.all())
            if not all_found:
                rows = np.where(found, rows, 0)
        else:  # the lookup of _lookup, without its masking: clip, gather, compare
            pos = np.searchsorted(self._index_ids, ids)
            np.minimum(pos, n - 1, out=pos)
            found = self._index_ids[pos] == ids
            all_found = bool(found.all())
            rows = self._index_rows[pos]
        if ids.shape[0] == 1 and queries.shape[0] == 1:  # one query: 1-D BLAS, no batching
            keys = self._rescore_one(queries[0], rows[0], dims)[None]
        else:
            keys = self._rescore(queries, rows, dims)
        if not all_found:  # rows of ids not stored were scored as someone else's: drop them
            keys[~found] = -np.inf
        return found, keys

    # ----- internals ------------------------------------------------------------
    def _scan_keys(self, queries: np.ndarray, dim: int, lo: int = 0, hi: int | None = None
                   ) -> np.ndarray:
        """[Q, hi - lo] keys of rows lo..hi (default: all) at prefix `dim`: one matrix
        product on the view."""
        hi = self._n if hi is None else hi
        fast = self._fast.get(dim)
        # strided view of the full matrix (BLAS reads it without a copy), or the contiguous copy
        x = self._vectors[lo:hi, :dim] if fast is None else fast[lo:hi]
        q = np.ascontiguousarray(queries[:, :dim], dtype=np.float32)
        if self.metric == "cosine":
            keys = _unit_rows(q) @ x.T
            if fast is None:  # the copy's rows are already unit length at this dim
                keys *= self._scan_term(dim)[None, lo:hi]
        elif self.metric == "dot":
            keys = q @ x.T
        else:  # l2: -|q - x|^2 = 2 q.x - |x|^2 - |q|^2; |q|^2 is added back in keys_to_scores
            keys = q @ x.T
            keys *= 2
            keys -= self._scan_term(dim)[None, lo:hi]
        dead = self._dead()
        if dead.size:
            dead = dead[(dead >= lo) & (dead < hi)]
            keys[:, dead - lo] = -np.inf
        return keys

    def _scan_term(self, dim: int) -> np.ndarray:
        """Per-row float32 factor of a scan at `dim` (cosine: 1/|x_d|, l2: |x_d|^2).

        Cached per dim until the next write, so repeated searches at a dim pay
        for the matrix product and the selection only.
        """
        term = self._row_terms.get(dim)
        if term is None:
            sq = self._prefix_sqnorms(slice(0, self._n), dim)
            term = _inv_sqrt(sq) if self.metric == "cosine" else sq.astype(np.float32)
            self._row_terms[dim] = term
        return term

    def _rescore(self, queries: np.ndarray, cols: np.ndarray, dims: list[int]) -> np.ndarray:
        """Keys of rows `cols` ([Q, M]) at each of `dims`: [Q, M, len(dims)].

        Gathers only the candidates' rows (never the whole matrix), in query chunks
        so the gathered block stays about _GATHER_BYTES.
        """
        n_q, m = cols.shape
        ways = parallel.ways(n_q) if split_search else 1
        if ways > 1:  # a re-rank's cost is per query: split the queries
            bounds = np.linspace(0, n_q, ways + 1).astype(np.int64)
            return np.concatenate(parallel.run(
                lambda r: self._rescore(queries[r[0]: r[1]], cols[r[0]: r[1]], dims),
                list(zip(bounds[:-1], bounds[1:]))))
        top = max(dims)
        out = np.empty((n_q, m, len(dims)), dtype=np.float32)
        step = max(1, _GATHER_BYTES // max(1, m * top * 4))
        for s in range(0, n_q, step):
            c = cols[s: s + step]
            rows = self._vectors[c, :top]               # [q, M, top] gathered copy
            q = queries[s: s + step]
            for j, d in enumerate(dims):
                qd = q[:, :d]
                if self.metric == "cosine":
                    qd = _unit_rows(np.ascontiguousarray(qd))
                dots = np.matmul(rows[..., :d], qd[:, :, None])[..., 0]  # batched BLAS gemv
                if self.metric == "cosine":
                    dots *= _inv_sqrt(self._prefix_sqnorms(c, d, rows))
                elif self.metric == "l2":
                    dots = 2 * dots - self._prefix_sqnorms(c, d, rows).astype(np.float32)
                out[s: s + step, :, j] = dots
        return out

    def _rescore_one(self, query: np.ndarray, rows: np.ndarray, dims: list[int]) -> np.ndarray:
        """_rescore for a single query: [M] rows -> [M, len(dims)] keys.

        The same keys from one gather and a matrix-vector product per dim; for
        one query the batched path's per-call overhead cost more than the math.
        The usual ANN re-rank (one dim, the full one) with FAISS installed reads
        the rows in place instead (kernels.row_dots: ~10 µs less a query, and
        no gathered copy pushing the graph out of the cache).
        """
        top = dims[0] if len(dims) == 1 else max(dims)
        out = np.empty((rows.size, len(dims)), dtype=np.float32)
        if use_kernel and top == self.dim and len(dims) == 1:
            x = None
        else:
            x = self._vectors.take(rows, axis=0) if top == self.dim else self._vectors[rows, :top]
        for j, d in enumerate(dims):
            if x is None:
                dots = kernels.row_dots(self._vectors, query, rows)
            else:
                dots = (x if d == top else x[:, :d]) @ query[:d]
            if self.metric == "cosine":
                # exact cosine: x.q / (|x_d| |q_d|), both norms in float64 as in _rescore
                qd = query[:d].astype(np.float64)
                sq = self._prefix_sqnorms(rows, d, x)
                sq *= qd @ qd
                if sq.size and sq.min() > 0:  # else _inv_sqrt gives a zero prefix cosine 0
                    np.sqrt(sq, out=sq)
                    np.divide(dots, sq, out=out[:, j], casting="same_kind")
                    continue
                dots *= _inv_sqrt(sq)
            elif self.metric == "l2":
                dots = 2 * dots - self._prefix_sqnorms(rows, d, x).astype(np.float32)
            out[:, j] = dots
        return out

    def _prefix_sqnorms(self, rows, dim: int, gathered: np.ndarray | None = None) -> np.ndarray:
        """Squared norms of `rows` at prefix `dim` from the nearest stored nested dim.

        Only the columns between that nested dim and `dim` are read. `gathered`
        (rows already copied out, [..., >= dim]) saves reading them again.
        """
        j = self._nested_col.get(dim)
        if j is not None:  # a stored nested dim: the usual re-rank
            return self._sqnorms[rows, j]
        j = int(np.searchsorted(self.nested, dim, side="right")) - 1
        base_dim = int(self.nested[j]) if j >= 0 else 0
        base = self._sqnorms[rows, j] if j >= 0 else 0.0
        part = gathered[..., base_dim:dim] if gathered is not None else self._vectors[rows, base_dim:dim]
        return base + np.einsum("...j,...j->...", part, part, dtype=np.float64)

    def _write_rows(self, rows: np.ndarray, vectors: np.ndarray) -> None:
        if rows.size == 0:
            return
        self._vectors[rows] = vectors
        # Squared norm at each nested dim, block by block (no [n, dim] temporary).
        acc = np.zeros(rows.size, dtype=np.float64)
        out = np.empty((rows.size, self.nested.size), dtype=np.float64)
        prev = 0
        for j, d in enumerate(self.nested.tolist()):
            block = vectors[:, prev:d]
            acc += np.einsum("ij,ij->i", block, block, dtype=np.float64)
            out[:, j] = acc
            prev = d
        self._sqnorms[rows] = out
        for j, d in enumerate(self.nested.tolist()):
            fast, lp = self._fast.get(d), self._lowp.get(d)
            if fast is None and lp is None:
                continue
            block = vectors[:, :d]
            if self.metric == "cosine":  # the copies hold rows unit length at their width
                block = block * _inv_sqrt(out[:, j])[:, None]
            if fast is not None:
                fast[rows] = block
            if lp is None:
                pass
            elif lp.needs_training(self._n):  # new ranges: re-encode every stored row
                lp.train(self._prefix_rows(slice(0, self._n), d, j))
                for s in range(0, self._n, 65536):
                    chunk = slice(s, min(self._n, s + 65536))
                    lp.write(chunk, self._prefix_rows(chunk, d, j))
            else:
                lp.write(rows, block)

    def _prefix_rows(self, rows, dim: int, j: int) -> np.ndarray:
        """Stored rows at prefix `dim` (nested dim number j), unit length under cosine."""
        block = self._vectors[rows, :dim]
        if self.metric == "cosine":
            return block * _inv_sqrt(self._sqnorms[rows, j])[:, None]
        return np.array(block)

    def _row_table(self) -> np.ndarray | None:
        """id -> row (-1: not stored) as a flat array, when ids are dense enough.

        A re-rank looks up a few dozen random ids per query; a binary search of
        the sorted ids misses cache at every level (12 us for 64 ids on 100k),
        one gather from this table does not. Built on first use after the id set
        changes (every change replaces _index_rows), and only while the largest
        id is under 4 x the count, so it costs at most ~4 int64s per vector.
        """
        if self._table_of is not self._index_rows:
            self._table_of, self._table = self._index_rows, None
            n = self._index_ids.size
            if n and int(self._index_ids[-1]) < 4 * n + 1024:
                table = np.full(int(self._index_ids[-1]) + 1, -1, dtype=np.int64)
                table[self._index_ids] = self._index_rows
                self._table = table
        return self._table

    def _lookup(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Positions of `ids` in the sorted index and whether each is present."""
        pos = np.searchsorted(self._index_ids, ids)
        found = np.zeros(ids.shape, dtype=bool)
        inside = pos < self._index_ids.size
        found[inside] = self._index_ids[pos[inside]] == ids[inside]
        return pos, found

    def _reserve(self, rows: int) -> None:
        cap = self._vectors.shape[0]
        if rows <= cap:
            return
        new_cap = max(rows, 2 * cap)
        self._vectors = _grow(self._vectors, new_cap)
        self._row_ids = _grow(self._row_ids, new_cap)
        self._alive = _grow(self._alive, new_cap)
        self._sqnorms = _grow(self._sqnorms, new_cap)
        self._fast = {d: _grow(copy, new_cap) for d, copy in self._fast.items()}
        for lp in self._lowp.values():
            lp.grow(new_cap)

    def _dead(self) -> np.ndarray:
        if self._dead_rows is None:
            self._dead_rows = np.flatnonzero(~self._alive[: self._n])
        return self._dead_rows


def keys_to_scores(metric: str, queries: np.ndarray, keys: np.ndarray, dim: int) -> np.ndarray:
    """Turn keys at prefix `dim` into the metric's scores (l2: squared distance)."""
    if metric != "l2":
        return keys.astype(np.float32, copy=False)
    q = queries[:, :dim]
    qsq = np.einsum("ij,ij->i", q, q)[:, None]
    return np.maximum(qsq - keys, 0).astype(np.float32)


def _grow(arr: np.ndarray, rows: int) -> np.ndarray:
    out = np.zeros((rows,) + arr.shape[1:], dtype=arr.dtype)
    out[: arr.shape[0]] = arr
    return out


def _unit_rows(q: np.ndarray) -> np.ndarray:
    """Rows scaled to unit norm; an all-zero row stays zero (it scores 0 everywhere)."""
    return q * _inv_sqrt(np.einsum("ij,ij->i", q, q, dtype=np.float64))[:, None]


def _inv_sqrt(sq: np.ndarray) -> np.ndarray:
    """1/sqrt(sq), with 0 where sq is 0: a prefix that is all zeros has cosine 0."""
    sq = np.asarray(sq, dtype=np.float64)  # float64 in, float32 out: tiny norms stay exact
    out = np.zeros(sq.shape, dtype=np.float32)
    np.divide(1.0, np.sqrt(sq), out=out, where=sq > 0)
    return out
