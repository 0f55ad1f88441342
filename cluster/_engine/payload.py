"""Payloads: typed per-row attributes of a shard, their checks, filters as row masks,
and their write-ahead-log encoding. Pure numpy (docs/filters.md).

Forms:
- A batch's values for one field travel as a `Column` (one entry per row, a
  presence flag per row); a write is a {field: Column} dict.
- A filter is a nested list, JSON-able, put in canonical form by `check_filter`:
  ["and", [f, ...]], ["or", [f, ...]], ["not", f], ["eq", field, value],
  ["in", field, [values]], ["range", field, gt, gte, lt, lte], ["exists", field].
  A row without a value for a field matches no eq / in / range on it.
  Internal only (never from a caller; `check_filter` refuses it): ["sample", p], the
  rows whose id hashes below p, a seeded stand-in for a filter of selectivity p that
  target_recall's calibration uses (`sample_mask`).

Storage (`PayloadStore`, row-aligned with the shard engine's rows): keyword fields
as int32 codes into a per-field vocabulary (-1: no value), so equality and `in`
are one vectorised comparison; numbers as int64 / float64 with a presence mask;
booleans as int8 (-1: no value); keyword lists as a table of (row, code) pairs.
"""
from __future__ import annotations

import json
import math
import re
import struct
from dataclasses import dataclass

import numpy as np

from nestvec.cluster._engine import filter_eval
from nestvec.cluster._engine.payload_index import CodeIndex, PairIndex, SortedIndex
from nestvec.errors import InvalidArgument

TYPES = ("keyword", "keywords", "int", "float", "bool")
_NAME = re.compile(r"^[A-Za-z_][A-Za-z0-9_.-]{0,63}$")
_I64_MIN, _I64_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class PayloadLimits:
    max_fields: int = 64
    max_keyword_bytes: int = 1024
    max_list_len: int = 256
    max_filter_depth: int = 16
    max_filter_nodes: int = 1024
    max_in_values: int = 1024


PAYLOAD_LIMITS = PayloadLimits()


@dataclass
class Column:
    type: str                       # one of TYPES
    values: np.ndarray              # keyword: object (str) per row; keywords: object (str), all rows' lists
    present: np.ndarray             # bool per row; entries of rows without a value are ignored
    offsets: np.ndarray | None = None  # keywords: int64 [rows + 1], row i = values[offsets[i]:offsets[i+1]]

    def __len__(self) -> int:
        return int(self.present.size)


# ----- building and slicing columns -------------------------------------------------
def column_from_values(kind: str, values: list) -> Column:
    """A column from Python values, None = no value (keywords: a list of str per row)."""
    present = np.array([v is not None for v in values], dtype=bool)
    if kind == "keywords":
        lists = [list(v) if v is not None else [] for v in values]
        offsets = np.concatenate([[0], np.cumsum([len(x) for x in lists])]).astype(np.int64)
        flat = np.empty(int(offsets[-1]), dtype=object)
        flat[:] = [x for lst in lists for x in lst]
        return Column(kind, flat, present, offsets)
    if kind == "keyword":
        arr = np.empty(len(values), dtype=object)
        arr[:] = [v if v is not None else "" for v in values]
        return Column(kind, arr, present)
    dtype = {"int": np.int64, "float": np.float64, "bool": bool}[kind]
    fill = {"int": 0, "float": 0.0, "bool": False}[kind]
    return Column(kind, np.array([v if v is not None else fill for v in values], dtype=dtype), present)


def column_to_values(col: Column) -> list:
    if col.type == "keywords":
        return [list(col.values[col.offsets[i]:col.offsets[i + 1]]) if p else None
                for i, p in enumerate(col.present.tolist())]
    return [v if p else None for v, p in zip(col.values.tolist(), col.present.tolist())]


def missing_column(kind: str, rows: int) -> Column:
    present = np.zeros(rows, dtype=bool)
    if kind == "keywords":
        return Column(kind, np.empty(0, dtype=object), present, np.zeros(rows + 1, dtype=np.int64))
    if kind == "keyword":
        values = np.empty(rows, dtype=object)
        values[:] = ""
        return Column(kind, values, present)
    return Column(kind, np.zeros(rows, dtype={"int": np.int64, "float": np.float64, "bool": bool}[kind]),
                  present)


def take_rows(col: Column, idx) -> Column:
    """The column's rows `idx` (repeats allowed; -1: a row without a value)."""
    idx = np.asarray(idx, dtype=np.int64)
    gone = idx < 0
    safe = np.where(gone, 0, idx) if col.present.size else np.zeros_like(idx)
    if col.present.size == 0:
        return missing_column(col.type, idx.size)
    present = col.present[safe] & ~gone
    if col.type != "keywords":
        return Column(col.type, col.values[safe], present)
    lengths = np.diff(col.offsets)[safe]
    lengths[gone] = 0
    offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
    starts = col.offsets[:-1][safe]
    within = np.arange(int(offsets[-1]), dtype=np.int64) - np.repeat(offsets[:-1], lengths)
    return Column(col.type, col.values[np.repeat(starts, lengths) + within], present, offsets)


def take_columns(columns: dict | None, idx) -> dict | None:
    if columns is None:
        return None
    return {name: take_rows(c, idx) for name, c in columns.items()}


def concat_columns(parts: list[tuple[int, dict]], schema: dict[str, str],
                   fields: list[str] | None = None) -> dict[str, Column]:
    """(rows, columns) parts one after another; a part without a field has no values
    for it. `fields`: these (in this order), else every field any part has."""
    names = list(fields) if fields else list(dict.fromkeys(n for _, cols in parts for n in cols))
    out = {}
    for name in names:
        kind = schema.get(name) or next(c[name].type for _, c in parts if name in c)
        cols = [c.get(name) or missing_column(kind, n) for n, c in parts]
        present = np.concatenate([c.present for c in cols]) if cols else np.zeros(0, bool)
        if kind == "keywords":
            values = np.concatenate([c.values for c in cols]) if cols else np.empty(0, object)
            lengths = np.concatenate([np.diff(c.offsets) for c in cols]) if cols else np.zeros(0, np.int64)
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            out[name] = Column(kind, values.astype(object), present, offsets)
        else:
            values = (np.concatenate([c.values for c in cols]) if cols
                      else missing_column(kind, 0).values)
            if kind == "float":
                values = values.astype(np.float64)
            out[name] = Column(kind, values, present)
    return out


# ----- checks -----------------------------------------------------------------------
def check_schema(schema: dict, limits: PayloadLimits = PAYLOAD_LIMITS) -> dict[str, str]:
    out = {}
    for name, kind in dict(schema).items():
        _check_name(name)
        kind = str(kind).lower()
        if kind not in TYPES:
            raise InvalidArgument(f"payload field {name!r}: unknown type {kind!r} (use {', '.join(TYPES)})")
        out[name] = kind
    if len(out) > limits.max_fields:
        raise InvalidArgument(f"{len(out)} payload fields is above the limit of {limits.max_fields}")
    return out


def _check_name(name) -> None:
    if not isinstance(name, str) or not _NAME.match(name):
        raise InvalidArgument(f"payload field name {name!r} is invalid: use 1-64 characters from "
                              "letters, digits, '_', '.', '-', starting with a letter or '_'")


def check_columns(columns: dict[str, Column], n: int, schema: dict[str, str],
                  limits: PayloadLimits = PAYLOAD_LIMITS) -> dict[str, str]:
    """Check a write's columns for `n` rows against the collection's fields; returns the
    fields it would add (name -> type). An "int" column for a "float" field is accepted
    (and converted when stored); every other type change is refused."""
    new = {}
    for name, col in columns.items():
        _check_name(name)
        if col.type not in TYPES:
            raise InvalidArgument(f"payload field {name!r}: unknown type {col.type!r}")
        declared = schema.get(name)
        if not col.present.any():
            pass  # no values (all cleared): any type says that, and it declares nothing
        elif declared is None:
            new[name] = col.type
        elif declared != col.type and not (declared == "float" and col.type == "int"):
            raise InvalidArgument(f"payload field {name!r} is {declared}, got {col.type} values")
        if col.present.size != n:
            raise InvalidArgument(f"payload field {name!r}: {col.present.size} entries for {n} rows")
        if col.type == "keywords":
            if col.offsets is None or col.offsets.size != n + 1 or col.offsets[-1] != col.values.size \
                    or (np.diff(col.offsets) < 0).any():
                raise InvalidArgument(f"payload field {name!r}: list offsets do not match its values")
            longest = int(np.diff(col.offsets).max()) if n else 0
            if longest > limits.max_list_len:
                raise InvalidArgument(f"payload field {name!r}: a list of {longest} keywords is above "
                                      f"the limit of {limits.max_list_len}")
            _check_keywords(name, col.values, limits)
        else:
            if col.values.size != n:
                raise InvalidArgument(f"payload field {name!r}: {col.values.size} values for {n} rows")
            if col.type == "keyword":
                _check_keywords(name, col.values[col.present], limits)
            elif col.type == "float" and not np.isfinite(col.values[col.present]).all():
                raise InvalidArgument(f"payload field {name!r}: values must be finite (no NaN or inf)")
    if len(schema) + len(new) > limits.max_fields:
        raise InvalidArgument(f"{len(schema) + len(new)} payload fields is above the limit of "
                              f"{limits.max_fields}")
    return new


def _check_keywords(name: str, values: np.ndarray, limits: PayloadLimits) -> None:
    for v in values.tolist():  # per keyword, at write time only (validation, not search)
        if not isinstance(v, str) or not v:
            raise InvalidArgument(f"payload field {name!r}: keywords must be non-empty strings, got {v!r}")
        if len(v) * 4 > limits.max_keyword_bytes and len(v.encode()) > limits.max_keyword_bytes:
            raise InvalidArgument(f"payload field {name!r}: a keyword of {len(v.encode())} bytes is above "
                                  f"the limit of {limits.max_keyword_bytes}")


def check_filter(f, schema: dict[str, str], limits: PayloadLimits = PAYLOAD_LIMITS) -> list:
    """A filter checked against the collection's fields, in canonical form."""
    count = [0]
    return _check_node(f, schema, limits, 1, count)


def filter_key(canonical: list) -> str:
    return json.dumps(canonical, sort_keys=True, separators=(",", ":"))


def _check_node(f, schema, limits, depth, count) -> list:
    if depth > limits.max_filter_depth:
        raise InvalidArgument(f"filter is nested more than {limits.max_filter_depth} levels deep")
    count[0] += 1
    if count[0] > limits.max_filter_nodes:
        raise InvalidArgument(f"filter has more than {limits.max_filter_nodes} conditions")
    if not isinstance(f, (list, tuple)) or not f:
        raise InvalidArgument(f"malformed filter node {f!r}")
    op = f[0]
    if op in ("and", "or"):
        if len(f) != 2 or not isinstance(f[1], (list, tuple)) or not f[1]:
            raise InvalidArgument(f"filter '{op}' needs a non-empty list of conditions")
        parts = [_check_node(x, schema, limits, depth + 1, count) for x in f[1]]
        return [op, sorted(parts, key=filter_key)]  # the order written does not change the key
    if op == "not":
        if len(f) != 2:
            raise InvalidArgument("filter 'not' takes one condition")
        return ["not", _check_node(f[1], schema, limits, depth + 1, count)]
    if op not in ("eq", "in", "range", "exists") or len(f) < 2:
        raise InvalidArgument(f"unknown filter operator {op!r}")
    field = f[1]
    kind = schema.get(field) if isinstance(field, str) else None
    if kind is None:
        raise InvalidArgument(f"unknown payload field {field!r} (fields: {', '.join(sorted(schema)) or 'none'})")
    if op == "exists":
        return ["exists", field]
    if op == "eq":
        if len(f) != 3:
            raise InvalidArgument(f"filter eq on {field!r} takes one value")
        v = _value(field, kind, f[2])
        return ["eq", field, v] if v is not _NO_VALUE else ["in", field, []]
    if op == "in":
        if len(f) != 3 or not isinstance(f[2], (list, tuple)):
            raise InvalidArgument(f"filter in on {field!r} takes a list of values")
        if len(f[2]) > limits.max_in_values:
            raise InvalidArgument(f"filter in on {field!r} has {len(f[2])} values, above the limit "
                                  f"of {limits.max_in_values}")
        values = {_value(field, kind, v) for v in f[2]} - {_NO_VALUE}
        return ["in", field, sorted(values, key=lambda v: (str(type(v)), v))]
    if kind not in ("int", "float"):
        raise InvalidArgument(f"a range needs a number field; {field!r} is {kind}")
    if len(f) != 6:
        raise InvalidArgument(f"filter range on {field!r} takes gt, gte, lt, lte")
    bounds = []
    for b in f[2:]:
        if b is not None and (isinstance(b, bool) or not isinstance(b, (int, float)) or
                              (isinstance(b, float) and not math.isfinite(b))):
            raise InvalidArgument(f"range bounds on {field!r} must be finite numbers, got {b!r}")
        bounds.append(b)
    if all(b is None for b in bounds):
        raise InvalidArgument(f"range on {field!r} has no bound: set gt, gte, lt or lte")
    if kind == "float":
        bounds = _float_bounds(*bounds)
    return ["range", field, *bounds]


def _float_bounds(gt, gte, lt, lte) -> list:
    """Integer bounds on a float field as float bounds that select exactly the same
    floats: x = float(k) is the float nearest k, so no float lies strictly between
    them, and v >= k (or v > k) is v >= x when x > k and v > x when x < k."""
    out = [None, None, None, None]  # gt, gte, lt, lte
    for i, b in enumerate((gt, gte, lt, lte)):
        if b is None:
            continue
        x = _nearest_float(b)
        if isinstance(b, float) or int(x) == b if math.isfinite(x) else False:
            j = i
        elif i < 2:  # a lower bound
            j = 1 if x > b else 0
        else:
            j = 3 if x < b else 2
        if out[j] is None or (out[j] < x if j < 2 else out[j] > x):
            out[j] = x
    return out


def _nearest_float(b) -> float:
    try:
        return float(b)
    except OverflowError:  # beyond every float: the bound is past them all
        return math.inf if b > 0 else -math.inf


_NO_VALUE = object()  # an int no float equals, compared with a float field: matches nothing


def _value(field: str, kind: str, v):
    if kind in ("keyword", "keywords"):
        if not isinstance(v, str):
            raise InvalidArgument(f"payload field {field!r} is {kind}: compare it with strings, got {v!r}")
        return v
    if kind == "bool":
        if not isinstance(v, bool):
            raise InvalidArgument(f"payload field {field!r} is bool: compare it with true/false, got {v!r}")
        return v
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        raise InvalidArgument(f"payload field {field!r} is {kind}: compare it with numbers, got {v!r}")
    if kind == "int":
        if isinstance(v, float):
            if not v.is_integer():
                raise InvalidArgument(f"payload field {field!r} is int: {v} is not an integer")
            v = int(v)
        return v
    if isinstance(v, float):
        if not math.isfinite(v):
            raise InvalidArgument(f"payload field {field!r}: {v} is not a finite number")
        return v
    x = _nearest_float(v)
    return x if math.isfinite(x) and int(x) == v else _NO_VALUE  # exact, or no float equals it


def _int_bounds(gt, gte, lt, lte) -> tuple[int, int]:
    """Inclusive integer bounds [lo, hi] of a range on an int field, computed exactly
    (no float rounding of the values); lo > hi: nothing is in range."""
    lo, hi = _I64_MIN, _I64_MAX
    if gt is not None:
        lo = max(lo, math.floor(gt) + 1)
    if gte is not None:
        lo = max(lo, math.ceil(gte))
    if lt is not None:
        hi = min(hi, math.ceil(lt) - 1)
    if lte is not None:
        hi = min(hi, math.floor(lte))
    return lo, hi


# ----- storage ----------------------------------------------------------------------
class _Field:
    """One field's values over the shard's rows."""

    def __init__(self, kind: str, size: int):
        self.kind = kind
        self.vocab: dict[str, int] = {}
        self.words: list[str] = []
        if kind in ("keyword", "bool"):
            self.data = np.full(size, -1, dtype=np.int32 if kind == "keyword" else np.int8)
        elif kind in ("int", "float"):
            self.data = np.zeros(size, dtype=np.int64 if kind == "int" else np.float64)
            self.present = np.zeros(size, dtype=bool)
        else:  # keywords: (row, code) pairs; has: the row has a list (maybe empty)
            self.has = np.zeros(size, dtype=bool)
            self.pair_rows = np.empty(0, dtype=np.int64)
            self.pair_codes = np.empty(0, dtype=np.int32)
            self.dead = 0
        self.index = (CodeIndex() if kind in ("keyword", "bool") else
                      SortedIndex() if kind in ("int", "float") else PairIndex())

    def size(self) -> int:
        return (self.has if self.kind == "keywords" else self.data).size

    def grow(self, size: int) -> None:
        old = self.size()
        if size <= old:
            return
        def g(a, fill):
            out = np.full(size, fill, dtype=a.dtype)
            out[:old] = a
            return out
        if self.kind == "keywords":
            self.has = g(self.has, False)
        elif self.kind in ("keyword", "bool"):
            self.data = g(self.data, -1)
        else:
            self.data, self.present = g(self.data, 0), g(self.present, False)

    def codes(self, words) -> np.ndarray:
        out = np.empty(len(words), dtype=np.int32)
        for i, w in enumerate(words):  # per distinct keyword only: a dict lookup
            c = self.vocab.get(w)
            if c is None:
                c = self.vocab[w] = len(self.words)
                self.words.append(w)
            out[i] = c
        return out

    def encode(self, values: np.ndarray) -> np.ndarray:
        uniq, inverse = np.unique(values.astype(str), return_inverse=True) if values.size else \
            (np.empty(0, dtype=str), np.empty(0, dtype=np.int64))
        return self.codes(uniq.tolist())[inverse] if values.size else np.empty(0, np.int32)

    def clear(self, rows: np.ndarray) -> None:
        rows = rows[rows < self.size()]
        if self.kind == "keywords":
            self._drop_pairs(rows)
            self.has[rows] = False
        elif self.kind in ("keyword", "bool"):
            self.data[rows] = -1
        else:
            self.present[rows] = False

    def _drop_pairs(self, rows: np.ndarray) -> None:
        # Appends of new rows (the usual upsert) have no pairs to drop: skip the scan.
        if self.pair_rows.size and rows.size and rows.min() <= self.pair_rows.max():
            keep = ~np.isin(self.pair_rows, rows)
            self.dead += int((~keep).sum())
            self.index.reset()  # pairs moved: its positions no longer hold
            self.pair_rows, self.pair_codes = self.pair_rows[keep], self.pair_codes[keep]

    def write(self, rows: np.ndarray, col: Column) -> None:
        self.grow(int(rows.max()) + 1 if rows.size else 0)
        p = col.present
        if self.kind == "keywords":
            self._drop_pairs(rows)
            self.has[rows] = p
            lengths = np.diff(col.offsets)
            lengths = np.where(p, lengths, 0)
            keep = np.repeat(p, np.diff(col.offsets))
            words = col.values[keep]
            self.pair_rows = np.concatenate([self.pair_rows, np.repeat(rows, lengths)])
            self.pair_codes = np.concatenate([self.pair_codes, self.encode(words)])
        elif self.kind == "keyword":
            codes = np.full(rows.size, -1, dtype=np.int32)
            codes[p] = self.encode(col.values[p])
            self.data[rows] = codes
        elif self.kind == "bool":
            self.data[rows] = np.where(p, col.values.astype(np.int8), -1)
        else:
            self.data[rows] = col.values.astype(self.data.dtype)
            self.present[rows] = p
        if self.kind != "keywords":  # appended pairs are the list index's pending ones
            self.index.written(rows, self.size())

    def take(self, keep: np.ndarray) -> None:
        self.index.reset()  # rows move
        if self.kind == "keywords":
            old = self.size()
            new_of = np.full(max(old, 1), -1, dtype=np.int64)
            inside = keep[keep < old]
            new_of[inside] = np.flatnonzero(keep < old)
            self.grow(int(keep.max()) + 1 if keep.size else 0)
            self.has = self.has[keep]
            rows = new_of[np.minimum(self.pair_rows, max(old, 1) - 1)]
            ok = rows >= 0
            self.pair_rows, self.pair_codes, self.dead = rows[ok], self.pair_codes[ok], 0
            return
        self.grow(int(keep.max()) + 1 if keep.size else 0)
        self.data = self.data[keep]
        if self.kind in ("int", "float"):
            self.present = self.present[keep]

    def read(self, rows: np.ndarray) -> Column:
        n = self.size()
        inside = rows < n
        safe = np.where(inside, rows, 0)
        if self.kind == "keywords":
            present = np.zeros(rows.size, dtype=bool)
            if n:
                present = self.has[safe] & inside
            # pairs of the asked rows, grouped by the asked position, in insertion order
            sel = np.flatnonzero(np.isin(self.pair_rows, rows[present]))
            prow = self.pair_rows[sel]
            order = np.argsort(prow, kind="stable")
            prow, pcode = prow[order], self.pair_codes[sel][order]
            lo = np.searchsorted(prow, rows, side="left")
            hi = np.searchsorted(prow, rows, side="right")
            lengths = np.where(present, hi - lo, 0)
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            within = np.arange(int(offsets[-1]), dtype=np.int64) - np.repeat(offsets[:-1], lengths)
            codes = pcode[np.repeat(lo, lengths) + within]
            words = np.array(self.words, dtype=object)
            values = words[codes] if codes.size else np.empty(0, dtype=object)
            return Column("keywords", values.astype(object), present, offsets)
        if self.kind == "keyword":
            codes = np.where(inside, self.data[safe] if n else -1, -1)
            words = np.array(self.words + [""], dtype=object)
            return Column("keyword", words[codes], codes >= 0)
        if self.kind == "bool":
            v = np.where(inside, self.data[safe] if n else -1, -1)
            return Column("bool", v == 1, v >= 0)
        present = np.where(inside, self.present[safe] if n else False, False)
        return Column(self.kind, self.data[safe] if n else np.zeros(rows.size, self.data.dtype), present)

    # --- conditions: a leaf of a filter on this field (payload_index.py's forms) ---
    def condition(self, op: str, args: list):
        """The leaf `op` (eq / in / range) as a condition; None: it matches no row."""
        if op == "range":
            if self.kind not in ("int", "float"):
                return None
            if self.kind == "float":
                return ("bounds", *[None if b is None else float(b) for b in args])
            lo, hi = _int_bounds(*args)
            return None if lo > hi else ("between", lo, hi)
        values = [args[0]] if op == "eq" else list(args[0])
        if self.kind in ("keyword", "keywords"):
            codes = [self.vocab[v] for v in values if isinstance(v, str) and v in self.vocab]
            return ("codes", codes) if codes else None
        if self.kind == "bool":
            codes = sorted({int(v) for v in values if isinstance(v, bool)})
            return ("codes", codes) if codes else None
        if self.kind == "int":
            ints = [v for v in values if not isinstance(v, bool) and _I64_MIN <= v <= _I64_MAX]
            return ("values", np.unique(np.array(ints, dtype=np.int64))) if ints else None
        return ("values", np.unique(np.array(values, dtype=np.float64))) if values else None

    def test(self, cond: tuple, at) -> np.ndarray:
        """bool per row of `at` (an index array or a slice, rows below size()): the
        row's current value meets `cond`."""
        kind = cond[0]
        if self.kind == "keywords":
            hits = self.index.rows(cond[1], self.pair_rows, self.pair_codes, self.size())
            return np.isin(np.arange(self.size())[at] if isinstance(at, slice) else at, hits)
        v = self.data[at]
        if kind == "codes":
            return v == cond[1][0] if len(cond[1]) == 1 else np.isin(v, cond[1])
        ok = self.present[at]
        if kind == "values":
            return ok & np.isin(v, cond[1])
        if kind == "between":
            return ok & (v >= np.int64(cond[1])) & (v <= np.int64(cond[2]))
        for bound, cmp in zip(cond[1:], (np.greater, np.greater_equal, np.less, np.less_equal)):
            if bound is not None:
                ok = ok & cmp(v, bound)
        return ok

    def estimate(self, cond: tuple) -> int:
        """How many rows may meet `cond` (an upper bound), from the index."""
        if self.kind == "keywords":
            return self.index.estimate(cond[1], self.pair_rows, self.pair_codes)
        if self.kind in ("keyword", "bool"):
            return self.index.estimate(cond[1], self.data)
        return self.index.estimate(cond, self.data, self.present)

    def rows(self, cond: tuple, n: int) -> np.ndarray:
        """Rows below n meeting `cond`, ascending, read from the index."""
        if self.kind == "keywords":
            return self.index.rows(cond[1], self.pair_rows, self.pair_codes, n)
        if self.kind in ("keyword", "bool"):
            return self.index.rows(cond[1], self.data, n)
        return self.index.rows(cond, self.data, self.present, n, self.test)

    def mask(self, cond: tuple, n: int) -> np.ndarray:
        """bool[n]: rows 0..n-1 meeting `cond`, one vectorised pass."""
        out = np.zeros(n, dtype=bool)
        m = min(n, self.size())
        if self.kind == "keywords":
            out[self.rows(cond, n)] = True
        else:
            out[:m] = self.test(cond, slice(0, m))
        return out

    def exists(self, n: int) -> np.ndarray:
        out = np.zeros(n, dtype=bool)
        m = min(n, self.size())
        if self.kind == "keywords":
            out[:m] = self.has[:m]
        elif self.kind in ("keyword", "bool"):
            out[:m] = self.data[:m] >= 0
        else:
            out[:m] = self.present[:m]
        return out

    def nbytes(self) -> int:
        if self.kind == "keywords":
            return self.has.nbytes + self.pair_rows.nbytes + self.pair_codes.nbytes
        return self.data.nbytes + (self.present.nbytes if self.kind in ("int", "float") else 0)


class PayloadStore:
    """Every payload field of one shard, aligned with the engine's rows."""

    def __init__(self):
        self._fields: dict[str, _Field] = {}

    @property
    def fields(self) -> dict[str, str]:
        return {name: f.kind for name, f in self._fields.items()}

    def write(self, rows: np.ndarray, columns: dict[str, Column], replace: bool) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        if replace:
            for name, f in self._fields.items():
                if name not in columns:
                    f.clear(rows)
        for name, col in columns.items():
            f = self._fields.get(name)
            if not col.present.any():  # a column of no values clears, whatever its type
                if f is not None:
                    f.clear(rows)
                continue
            if f is None:
                f = self._fields[name] = _Field(col.type, 0)
            if f.kind == "float" and col.type == "int":
                col = Column("float", col.values.astype(np.float64), col.present)
            f.write(rows, col)

    def clear(self, rows: np.ndarray) -> None:
        rows = np.asarray(rows, dtype=np.int64)
        for f in self._fields.values():
            f.clear(rows)

    def take(self, keep: np.ndarray) -> None:
        keep = np.asarray(keep, dtype=np.int64)
        for f in self._fields.values():
            f.take(keep)

    def read(self, rows: np.ndarray, fields: list[str] | None = None) -> dict[str, Column]:
        rows = np.asarray(rows, dtype=np.int64)
        names = [n for n in (fields if fields is not None else self._fields) if n in self._fields]
        return {n: self._fields[n].read(rows) for n in names}

    # --- filters (filter_eval.py plans rows or masks from the indexes) ---
    def field(self, name: str):
        return self._fields.get(name)

    sample = staticmethod(lambda ids, p: sample_mask(ids, p))

    def mask(self, f: list, n: int, ids: np.ndarray | None = None) -> np.ndarray:
        """bool[n]: rows 0..n-1 matching the canonical filter `f` (`ids`: the rows'
        ids, which only the internal "sample" node reads)."""
        return filter_eval.mask(self, f, n, ids)

    def rows(self, f: list, n: int, ids: np.ndarray | None = None) -> np.ndarray:
        """Rows 0..n-1 matching `f`, ascending; O(matches) when the filter is selective."""
        return filter_eval.rows(self, f, n, ids)

    def estimate(self, f: list, n: int) -> int:
        """At most this many of rows 0..n-1 match `f` (read from the indexes only)."""
        return filter_eval.estimate(self, f, n)

    def nbytes(self) -> int:
        return sum(f.nbytes() for f in self._fields.values())


def sample_mask(ids: np.ndarray, p: float) -> np.ndarray:
    """Ids whose splitmix64 hash falls below p of the range: a fixed pseudo-random
    share p of any set of ids, the same on every shard and in every run."""
    z = np.asarray(ids, dtype=np.uint64) + np.uint64(0x9E3779B97F4A7C15)
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        z = z ^ (z >> np.uint64(31))
    return (z >> np.uint64(11)).astype(np.float64) < p * float(1 << 53)


# ----- log encoding -----------------------------------------------------------------
_LEN = struct.Struct("<I")


def _strings(values: np.ndarray) -> tuple[bytes, np.ndarray]:
    blobs = [s.encode() for s in values.tolist()]
    offsets = np.concatenate([[0], np.cumsum([len(b) for b in blobs])]).astype("<i8")
    return b"".join(blobs), offsets


def encode_columns(columns: dict[str, Column], n: int) -> bytes:
    """A write's columns as bytes for the log: [u32 header length][JSON header][buffers]."""
    header, buffers = {"rows": int(n), "fields": []}, []
    for name, col in columns.items():
        parts = {"present": np.ascontiguousarray(col.present, dtype=np.uint8).tobytes()}
        if col.type in ("keyword", "keywords"):
            vals = col.values if col.type == "keywords" else np.where(col.present, col.values, "")
            blob, offs = _strings(np.asarray(vals, dtype=object))
            parts["strings"], parts["string_offsets"] = blob, offs.tobytes()
            if col.type == "keywords":
                parts["offsets"] = np.ascontiguousarray(col.offsets, dtype="<i8").tobytes()
        else:
            dtype = {"int": "<i8", "float": "<f8", "bool": "u1"}[col.type]
            parts["values"] = np.ascontiguousarray(col.values, dtype=dtype).tobytes()
        header["fields"].append({"name": name, "type": col.type,
                                 "parts": [[k, len(v)] for k, v in parts.items()]})
        buffers.extend(parts.values())
    head = json.dumps(header).encode()
    return _LEN.pack(len(head)) + head + b"".join(buffers)


def decode_columns(data) -> tuple[dict[str, Column], int]:
    data = memoryview(data)
    (hlen,) = _LEN.unpack_from(data)
    header = json.loads(bytes(data[4:4 + hlen]))
    at, out = 4 + hlen, {}
    for fld in header["fields"]:
        parts = {}
        for key, size in fld["parts"]:
            parts[key] = data[at:at + size]
            at += size
        present = np.frombuffer(parts["present"], dtype=np.uint8).astype(bool)
        kind = fld["type"]
        offsets = None
        if kind in ("keyword", "keywords"):
            blob = bytes(parts["strings"])
            so = np.frombuffer(parts["string_offsets"], dtype="<i8")
            values = np.empty(so.size - 1, dtype=object)
            values[:] = [blob[so[i]:so[i + 1]].decode() for i in range(so.size - 1)]
            if kind == "keywords":
                offsets = np.frombuffer(parts["offsets"], dtype="<i8").astype(np.int64)
        else:
            dtype = {"int": "<i8", "float": "<f8", "bool": "u1"}[kind]
            values = np.frombuffer(parts["values"], dtype=dtype).copy()
            if kind == "bool":
                values = values.astype(bool)
        out[fld["name"]] = Column(kind, values, present, offsets)
    return out, int(header["rows"])


# ----- Python forms, for Ray jobs calling the coordinator directly ----------------------
_RANGE = {"$gt": 0, "$gte": 1, "$lt": 2, "$lte": 3}


def from_mongo(f) -> list:
    """The SDK's Mongo-style filter dict (docs/filters.md) in this module's form; a list
    is taken to be that form already."""
    if isinstance(f, (list, tuple)):
        return list(f)
    if not isinstance(f, dict) or not f:
        raise InvalidArgument(f"a filter is a non-empty dict like {{'pos': 'noun'}}, got {f!r}")
    parts = [_mongo_clause(k, v) for k, v in f.items()]
    return parts[0] if len(parts) == 1 else ["and", parts]


def _mongo_clause(key: str, value) -> list:
    if key in ("$and", "$or"):
        if not isinstance(value, (list, tuple)) or not value:
            raise InvalidArgument(f"{key} takes a non-empty list of filters")
        return [key[1:], [from_mongo(x) for x in value]]
    if key == "$not":
        return ["not", from_mongo(value)]
    if key.startswith("$"):
        raise InvalidArgument(f"unknown filter operator {key!r} at the top level")
    if not isinstance(value, dict):
        return ["eq", key, value]
    conds, bounds = [], [None] * 4
    for op, arg in value.items():
        if op in _RANGE:
            bounds[_RANGE[op]] = arg
        elif op == "$eq":
            conds.append(["eq", key, arg])
        elif op == "$ne":
            conds.append(["not", ["eq", key, arg]])
        elif op in ("$in", "$nin"):
            c = ["in", key, list(arg) if isinstance(arg, (list, tuple, set)) else arg]
            conds.append(c if op == "$in" else ["not", c])
        elif op == "$exists":
            conds.append(["exists", key] if arg else ["not", ["exists", key]])
        else:
            raise InvalidArgument(f"unknown filter operator {op!r} on {key!r}")
    if any(b is not None for b in bounds):
        conds.append(["range", key, *bounds])
    if not conds:
        raise InvalidArgument(f"filter on {key!r} is an empty dict")
    return conds[0] if len(conds) == 1 else ["and", conds]


def columns_from_python(payload, rows: int) -> dict[str, Column]:
    """A list of dicts (one per row) or a dict of value lists as Columns, types inferred
    as the SDK infers them; a dict of Columns passes through."""
    if isinstance(payload, dict) and all(isinstance(c, Column) for c in payload.values()):
        return payload
    if isinstance(payload, dict):
        cols = {k: list(v) for k, v in payload.items()}
    else:
        rows_list = list(payload)
        if len(rows_list) != rows:
            raise InvalidArgument(f"payload has {len(rows_list)} rows for {rows} ids")
        names = dict.fromkeys(k for r in rows_list for k in (r or {}))
        cols = {n: [(r or {}).get(n) for r in rows_list] for n in names}
    out = {}
    for name, values in cols.items():
        if len(values) != rows:
            raise InvalidArgument(f"payload column {name!r} has {len(values)} values for {rows} rows")
        kinds = {_python_type(name, v) for v in values if v is not None}
        kind = "float" if kinds == {"int", "float"} else (kinds.pop() if len(kinds) == 1 else None)
        if kind is None and kinds:
            raise InvalidArgument(f"payload field {name!r} mixes types {sorted(kinds)}: one type per field")
        out[name] = column_from_values(kind or "keyword", values)
    return out


def _python_type(name: str, v) -> str:
    if isinstance(v, bool):
        return "bool"
    if isinstance(v, (int, np.integer)):
        return "int"
    if isinstance(v, (float, np.floating)):
        return "float"
    if isinstance(v, str):
        return "keyword"
    if isinstance(v, (list, tuple)) and all(isinstance(x, str) for x in v):
        return "keywords"
    raise InvalidArgument(f"payload field {name!r}: {type(v).__name__} values are not supported")
