"""Evaluating a canonical filter over a shard's rows: as sorted row numbers when it
is selective, as a bool mask when it is not (docs/filters.md).

A full mask costs a pass over every row whatever matches; the payload indexes
(payload_index.py) give a leaf's rows in O(matches). So each node is planned from
the indexes' counts, known before anything is read:

- a leaf matching at most SPARSE_FRACTION of the rows is read from its index as rows;
  a denser one is one vectorised pass (a mask);
- `and`: its most selective child, if sparse, gives the rows, and every other child
  is then tested on only those rows (never a pass over all rows);
- `or`: the union of its children's rows when every child is sparse, else a mask;
- `not`, `exists` and the internal `sample`: masks.
"""
from __future__ import annotations

import numpy as np

SPARSE_FRACTION = 1 / 8  # measured: above ~1/8 of the rows a mask pass is as fast as the rows

_NONE = np.empty(0, dtype=np.int64)


def rows(store, f: list, n: int, ids: np.ndarray | None) -> np.ndarray:
    """Rows below n matching `f`, ascending."""
    out = _select(store, f, n, ids)
    return np.flatnonzero(out) if out.dtype == bool else out


def mask(store, f: list, n: int, ids: np.ndarray | None) -> np.ndarray:
    """bool[n]: rows below n matching `f` (a fresh array the caller may change)."""
    return _as_mask(_select(store, f, n, ids), n)


def estimate(store, f: list, n: int) -> int:
    """An upper bound on the rows matching `f`, from the indexes alone."""
    op = f[0]
    if op == "and":
        return min(estimate(store, x, n) for x in f[1])
    if op == "or":
        return min(n, sum(estimate(store, x, n) for x in f[1]))
    if op == "sample":
        return int(np.ceil(float(f[1]) * n))
    if op in ("not", "exists"):
        return n
    field, cond = _leaf(store, f)
    return 0 if cond is None else min(n, field.estimate(cond))


def indexed(f: list) -> bool:
    """Whether `estimate` of `f` comes from the indexes (no not / exists / sample)."""
    if f[0] in ("and", "or"):
        return all(indexed(x) for x in f[1])
    return f[0] in ("eq", "in", "range")


def _as_mask(sel: np.ndarray, n: int) -> np.ndarray:
    if sel.dtype == bool:
        return sel
    out = np.zeros(n, dtype=bool)
    out[sel] = True
    return out


def _leaf(store, f: list):
    """(field, condition) of an eq / in / range leaf; condition None: matches nothing."""
    field = store.field(f[1])
    if field is None:  # never written here: no row has a value
        return None, None
    args = f[2:6] if f[0] == "range" else f[2:3]
    return field, field.condition(f[0], args)


def _select(store, f: list, n: int, ids) -> np.ndarray:
    op = f[0]
    sparse = SPARSE_FRACTION * n
    if op == "and":
        best = min(f[1], key=lambda x: estimate(store, x, n))
        if estimate(store, best, n) <= sparse:
            out = rows(store, best, n, ids)
            for x in f[1]:
                if x is not best and out.size:
                    out = out[test(store, x, out, ids)]
            return out
        out = mask(store, f[1][0], n, ids)
        for x in f[1][1:]:
            out &= _as_mask(_select(store, x, n, ids), n)
        return out
    if op == "or":
        parts = [_select(store, x, n, ids) for x in f[1]]
        if all(p.dtype != bool for p in parts):
            return np.unique(np.concatenate(parts))
        out = _as_mask(parts[0], n).copy()
        for p in parts[1:]:
            out |= _as_mask(p, n)
        return out
    if op == "not":
        return ~_as_mask(_select(store, f[1], n, ids), n)
    if op == "sample":
        return store.sample(ids[:n], float(f[1]))
    if op == "exists":
        field = store.field(f[1])
        return field.exists(n) if field is not None else np.zeros(n, dtype=bool)
    field, cond = _leaf(store, f)
    if cond is None:
        return _NONE
    if field.estimate(cond) <= sparse:
        return field.rows(cond, n)
    return field.mask(cond, n)


def test(store, f: list, at: np.ndarray, ids) -> np.ndarray:
    """bool per row of `at` (rows, ascending): the row matches `f`. Reads only those rows."""
    op = f[0]
    if op == "and":
        out = test(store, f[1][0], at, ids)
        for x in f[1][1:]:
            out &= test(store, x, at, ids)
        return out
    if op == "or":
        out = test(store, f[1][0], at, ids)
        for x in f[1][1:]:
            out |= test(store, x, at, ids)
        return out
    if op == "not":
        return ~test(store, f[1], at, ids)
    if op == "sample":
        return store.sample(ids[at], float(f[1]))
    field = store.field(f[1])
    if field is None:
        return np.zeros(at.size, dtype=bool)
    inside = at < field.size()
    out = np.zeros(at.size, dtype=bool)
    if op == "exists":
        out[inside] = field.exists(field.size())[at[inside]]
        return out
    cond = field.condition(f[0], f[2:6] if f[0] == "range" else f[2:3])
    if cond is not None:
        out[inside] = field.test(cond, at[inside])
    return out
