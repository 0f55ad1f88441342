"""Payload indexes: one field's matching rows in time proportional to the matches.

A filter evaluated as a full mask costs a pass over every row (~0.1 ms at 100k rows)
however few rows match. These indexes answer a condition on one field from
the rows that may match, so a selective filter costs O(matches), and they say how
many rows may match before anything is read (the planner's selectivity):

- keyword and bool fields: posting lists, the rows sorted by code (`CodeIndex`);
- int and float fields: the rows sorted by value, a range is two binary searches
  (`SortedIndex`);
- keyword lists: the (row, code) pairs sorted by code (`PairIndex`).

They are built lazily on the first selective filter and kept up to date cheaply:
a write appends its rows to a pending list that every lookup also reads, and each
candidate is checked against the field's current value, so a row rewritten since
the build is never returned for its old value. Once the pending rows pass
REBUILD_FRACTION of the field (or after a compaction moves rows) the index is
dropped and rebuilt by the next lookup: O(rows log rows), amortised over that
many writes.

Conditions (payload.py's `_Field.condition`): ("codes", [codes]) for eq / in on
keywords and bools, ("values", array) for eq / in on numbers, ("between", lo, hi)
for an int range (inclusive, exact), ("bounds", gt, gte, lt, lte) for a float range.
"""
from __future__ import annotations

import numpy as np

REBUILD_FRACTION = 1 / 8   # pending rows above this share of the field: rebuild
REBUILD_MIN_ROWS = 4096    # ... and above this many (small fields rebuild rarely)
_EMPTY = np.empty(0, dtype=np.int64)


class _Pending:
    """Rows written since the build: read by every lookup until the next rebuild."""

    def __init__(self):
        self.built = None          # the index's arrays (a tuple, swapped whole)
        self.pending: tuple = ()   # arrays of rows written since; swapped whole too
        self.count = 0

    def reset(self) -> None:
        self.built, self.pending, self.count = None, (), 0

    def written(self, rows: np.ndarray, size: int) -> None:
        if self.built is None:
            return
        self.count += int(rows.size)
        if self.count > max(REBUILD_MIN_ROWS, REBUILD_FRACTION * size):
            self.reset()
        else:
            self.pending = self.pending + (np.asarray(rows, dtype=np.int64).copy(),)

    def pending_rows(self) -> np.ndarray:
        return np.concatenate(self.pending) if self.pending else _EMPTY


class CodeIndex(_Pending):
    """Posting lists of a code column (int32 / int8 per row, -1: no value)."""

    def _build(self, codes: np.ndarray):
        rows = np.flatnonzero(codes >= 0)
        c = codes[rows]
        order = np.argsort(c, kind="stable")  # rows ascending within each code
        starts = np.searchsorted(c[order], np.arange(int(c.max()) + 2 if c.size else 1))
        self.built = (rows[order], starts)
        return self.built

    def estimate(self, codes: list[int], data: np.ndarray) -> int:
        post, starts = self.built or self._build(data)
        return int(sum(starts[c + 1] - starts[c] for c in codes if c + 1 < starts.size)) + self.count

    def rows(self, codes: list[int], data: np.ndarray, n: int) -> np.ndarray:
        post, starts = self.built or self._build(data)
        parts = [post[starts[c]:starts[c + 1]] for c in codes if c + 1 < starts.size]
        if self.pending:
            parts.append(self.pending_rows())
        cand = np.concatenate(parts) if len(parts) != 1 else parts[0]
        cand = cand[(cand < n) & (cand < data.size)]
        now = data[cand]
        cand = cand[now == codes[0]] if len(codes) == 1 else cand[np.isin(now, codes)]
        if len(parts) == 1 and not self.pending:
            return cand  # one posting list: ascending already
        return np.unique(cand)


class SortedIndex(_Pending):
    """A number column's present rows sorted by value."""

    def _build(self, values: np.ndarray, present: np.ndarray):
        rows = np.flatnonzero(present)
        order = np.argsort(values[rows], kind="stable")
        self.built = (rows[order], values[rows[order]])
        return self.built

    def _spans(self, cond: tuple, values, present) -> list[tuple[int, int]]:
        srows, svals = self.built or self._build(values, present)
        kind = cond[0]
        if kind == "values":
            return [(int(np.searchsorted(svals, v, "left")), int(np.searchsorted(svals, v, "right")))
                    for v in cond[1].tolist()]
        if kind == "between":
            return [(int(np.searchsorted(svals, cond[1], "left")),
                     int(np.searchsorted(svals, cond[2], "right")))]
        gt, gte, lt, lte = cond[1:]
        lo, hi = 0, svals.size
        if gt is not None:
            lo = max(lo, int(np.searchsorted(svals, gt, "right")))
        if gte is not None:
            lo = max(lo, int(np.searchsorted(svals, gte, "left")))
        if lt is not None:
            hi = min(hi, int(np.searchsorted(svals, lt, "left")))
        if lte is not None:
            hi = min(hi, int(np.searchsorted(svals, lte, "right")))
        return [(lo, hi)]

    def estimate(self, cond: tuple, values, present) -> int:
        return sum(max(0, b - a) for a, b in self._spans(cond, values, present)) + self.count

    def rows(self, cond: tuple, values, present, n: int, test) -> np.ndarray:
        """`test(cond, rows)`: the field's check of its current values."""
        spans = self._spans(cond, values, present)
        srows = self.built[0]
        parts = [srows[a:b] for a, b in spans if b > a]
        if self.pending:
            parts.append(self.pending_rows())
        cand = np.concatenate(parts) if parts else _EMPTY
        cand = cand[(cand < n) & (cand < values.size)]
        return np.unique(cand[test(cond, cand)])


class PairIndex:
    """A keyword-list field's (row, code) pairs sorted by code. Pairs are only
    appended, or dropped with their rows (which resets this index), so the pairs
    appended since the build are the pending ones: no check is needed."""

    def __init__(self):
        self.built = None

    def reset(self) -> None:
        self.built = None

    def _build(self, pair_rows: np.ndarray, pair_codes: np.ndarray):
        order = np.argsort(pair_codes, kind="stable")
        c = pair_codes[order]
        starts = np.searchsorted(c, np.arange(int(c.max()) + 2 if c.size else 1))
        self.built = (pair_rows[order], starts, int(pair_rows.size))
        return self.built

    def _fresh(self, pair_rows, pair_codes):
        built = self.built
        if built is None or pair_rows.size - built[2] > max(REBUILD_MIN_ROWS, REBUILD_FRACTION * pair_rows.size):
            built = self._build(pair_rows, pair_codes)
        return built

    def estimate(self, codes: list[int], pair_rows, pair_codes) -> int:
        post, starts, done = self._fresh(pair_rows, pair_codes)
        return int(sum(starts[c + 1] - starts[c] for c in codes if c + 1 < starts.size)) + \
            int(pair_rows.size - done)

    def rows(self, codes: list[int], pair_rows, pair_codes, n: int) -> np.ndarray:
        post, starts, done = self._fresh(pair_rows, pair_codes)
        parts = [post[starts[c]:starts[c + 1]] for c in codes if c + 1 < starts.size]
        if pair_rows.size > done:
            late = pair_codes[done:]
            parts.append(pair_rows[done:][late == codes[0] if len(codes) == 1 else np.isin(late, codes)])
        cand = np.concatenate(parts) if parts else _EMPTY
        return np.unique(cand[cand < n])  # a list may hold a keyword twice, or several asked
