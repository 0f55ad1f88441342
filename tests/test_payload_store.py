"""cluster/_engine/payload.py on its own (no Ray): random writes, clears, SetPayload and
compactions against a plain-Python model of the rows, every filter checked row by row
against a plain-Python evaluator; the log encoding round trip; the checks' errors."""
from __future__ import annotations

import numpy as np
import pytest

from nestvec.cluster._engine import payload as pl
from nestvec.errors import InvalidArgument

WORDS = ["red", "green", "blue", "cyan", "black"]
SCHEMA = {"color": "keyword", "tags": "keywords", "n": "int", "x": "float", "ok": "bool"}


def _random_value(rng, kind):
    if rng.random() < 0.2:
        return None
    if kind == "keyword":
        return str(rng.choice(WORDS))
    if kind == "keywords":
        return [str(w) for w in rng.choice(WORDS, rng.integers(0, 4))]
    if kind == "int":
        return int(rng.integers(-5, 6)) * (2**60 if rng.random() < 0.05 else 1)
    if kind == "float":
        return float(rng.normal() * 3)
    return bool(rng.random() < 0.5)


def _random_filter(rng, depth=0):
    r = rng.random()
    if depth < 3 and r < 0.3:
        op = str(rng.choice(["and", "or"]))
        return [op, [_random_filter(rng, depth + 1) for _ in range(rng.integers(1, 4))]]
    if depth < 3 and r < 0.4:
        return ["not", _random_filter(rng, depth + 1)]
    field = str(rng.choice(list(SCHEMA)))
    kind = SCHEMA[field]
    if rng.random() < 0.15:
        return ["exists", field]
    if kind in ("int", "float") and rng.random() < 0.5:
        b = [None, None, None, None]
        for i in rng.choice(4, rng.integers(1, 3), replace=False):
            b[i] = float(rng.normal() * 3) if rng.random() < 0.5 else int(rng.integers(-5, 6))
            if kind == "int" and rng.random() < 0.3:
                b[i] = float(rng.integers(-5, 6)) + 0.5  # a fractional bound on ints
        return ["range", field, *b]
    vals = [_random_value(rng, kind) for _ in range(3)]
    vals = [v if not isinstance(v, list) else (v[0] if v else "red") for v in vals if v is not None] or ["red"]
    if kind == "int":
        vals = [v if isinstance(v, int) else 1 for v in vals]
    if kind == "float":
        vals = [float(v) if isinstance(v, (int, float)) and not isinstance(v, bool) else 0.5 for v in vals]
    if kind == "bool":
        vals = [v if isinstance(v, bool) else True for v in vals]
    if kind in ("keyword", "keywords"):
        vals = [v if isinstance(v, str) else "red" for v in vals]
    return ["in", field, vals] if rng.random() < 0.4 else ["eq", field, vals[0]]


def _ref(row: dict, f) -> bool:
    op = f[0]
    if op == "and":
        return all(_ref(row, x) for x in f[1])
    if op == "or":
        return any(_ref(row, x) for x in f[1])
    if op == "not":
        return not _ref(row, f[1])
    v = row.get(f[1])
    if op == "exists":
        return v is not None
    if v is None:
        return False
    if op in ("eq", "in"):
        wanted = [f[2]] if op == "eq" else f[2]
        items = v if isinstance(v, list) else [v]
        return any(i == w and type(i) is type(w) or (isinstance(i, float) and i == w) for i in items for w in wanted)
    gt, gte, lt, lte = f[2:6]
    return ((gt is None or v > gt) and (gte is None or v >= gte) and (lt is None or v < lt)
            and (lte is None or v <= lte))


def _columns(rows: list[dict], fields) -> dict:
    return {f: pl.column_from_values(SCHEMA[f], [r.get(f) for r in rows]) for f in fields}


@pytest.mark.parametrize("sparse,rebuild", [(1 / 8, 1 / 8), (1.0, 0.0), (0.0, 1.0), (1.0, 1.0)],
                         ids=["default", "rows-always-rebuild-often", "masks-always", "rows-never-rebuild"])
def test_masks_match_a_row_by_row_evaluator_through_random_writes(monkeypatch, sparse, rebuild):
    """Every filter through random writes, with the planner forced to read rows from the
    indexes always (sparse 1.0) or never (0.0), and the indexes rebuilt after every
    write (rebuild 0.0) or kept with all writes pending (1.0)."""
    from nestvec.cluster._engine import filter_eval, payload_index
    monkeypatch.setattr(filter_eval, "SPARSE_FRACTION", sparse)
    monkeypatch.setattr(payload_index, "REBUILD_FRACTION", rebuild)
    monkeypatch.setattr(payload_index, "REBUILD_MIN_ROWS", 0 if rebuild == 0.0 else 10**9)
    rng = np.random.default_rng(11)
    store, model = pl.PayloadStore(), {}  # model: row -> dict
    n = 0
    for step in range(60):
        what = rng.random()
        if what < 0.45 or n == 0:  # upsert-like: new rows and replaced rows, replace=True
            new = int(rng.integers(1, 30))
            rows = np.concatenate([np.arange(n, n + new), rng.integers(0, max(n, 1), 5)[: 5 if n else 0]])
            rows = np.unique(rows)
            n = max(n, int(rows.max()) + 1)
            fields = [f for f in SCHEMA if rng.random() < 0.8]
            vals = [{f: _random_value(rng, SCHEMA[f]) for f in fields} for _ in rows]
            store.write(rows, _columns(vals, fields), replace=True)
            for r, v in zip(rows.tolist(), vals):
                model[r] = {k: x for k, x in v.items() if x is not None}
        elif what < 0.7:  # SetPayload: some fields change, None clears
            rows = np.unique(rng.integers(0, n, 10))
            fields = [str(rng.choice(list(SCHEMA)))]
            vals = [{f: _random_value(rng, SCHEMA[f]) for f in fields} for _ in rows]
            store.write(rows, _columns(vals, fields), replace=False)
            for r, v in zip(rows.tolist(), vals):
                for k, x in v.items():
                    if x is None:
                        model.setdefault(r, {}).pop(k, None)
                    else:
                        model.setdefault(r, {})[k] = x
        elif what < 0.85:  # delete
            rows = np.unique(rng.integers(0, n, 8))
            store.clear(rows)
            for r in rows.tolist():
                model[r] = {}
        else:  # compaction: keep a subset of rows, renumbered
            keep = np.sort(rng.choice(n, max(1, n * 3 // 4), replace=False))
            store.take(keep)
            model = {i: model.get(int(old), {}) for i, old in enumerate(keep.tolist())}
            n = keep.size
        for _ in range(8):
            f = pl.check_filter(_random_filter(rng), SCHEMA)
            want = np.array([_ref(model.get(r, {}), f) for r in range(n)], dtype=bool)
            np.testing.assert_array_equal(store.mask(f, n), want, err_msg=str(f))
            np.testing.assert_array_equal(store.rows(f, n), np.flatnonzero(want), err_msg=str(f))
            assert store.estimate(f, n) >= want.sum(), f
        got = store.read(np.arange(n))
        for name, col in got.items():
            assert pl.column_to_values(col) == [model.get(r, {}).get(name) for r in range(n)], name


def test_log_encoding_round_trips():
    rng = np.random.default_rng(5)
    rows = [{f: _random_value(rng, SCHEMA[f]) for f in SCHEMA} for _ in range(200)]
    cols = _columns(rows, SCHEMA)
    back, n = pl.decode_columns(pl.encode_columns(cols, 200))
    assert n == 200 and set(back) == set(SCHEMA)
    for f in SCHEMA:
        assert pl.column_to_values(back[f]) == pl.column_to_values(cols[f]), f


def test_take_rows_and_concat():
    col = pl.column_from_values("keywords", [["a"], None, ["b", "c"], []])
    picked = pl.take_rows(col, np.array([2, -1, 0, 2, 3]))
    assert pl.column_to_values(picked) == [["b", "c"], None, ["a"], ["b", "c"], []]
    merged = pl.concat_columns([(2, {"k": pl.column_from_values("int", [1, None])}), (1, {})],
                               {"k": "int"}, ["k"])
    assert pl.column_to_values(merged["k"]) == [1, None, None]


def test_int_ranges_are_exact_beyond_2_53():
    big = 2**60
    store = pl.PayloadStore()
    store.write(np.arange(3), {"n": pl.column_from_values("int", [big, big + 1, 3])}, replace=True)
    assert store.mask(pl.check_filter(["range", "n", None, big + 1, None, None], SCHEMA), 3).tolist() == \
        [False, True, False]
    assert store.mask(pl.check_filter(["eq", "n", big + 1], SCHEMA), 3).tolist() == [False, True, False]
    assert store.mask(pl.check_filter(["range", "n", 2.5, None, 3.5, None], SCHEMA), 3).tolist() == \
        [False, False, True]


@pytest.mark.parametrize("f,why", [
    (["eq", "nope", "x"], "unknown payload field"),
    (["eq", "n", "x"], "'n' is int"),
    (["eq", "ok", 1], "'ok' is bool"),
    (["range", "color", 1, None, None, None], "number field"),
    (["range", "n", None, None, None, None], "no bound"),
    (["in", "color", ["a"] * 2000], "above the limit"),
    (["xor", []], "unknown filter operator"),
    (["and", []], "non-empty"),
])
def test_bad_filters(f, why):
    with pytest.raises(InvalidArgument, match=why):
        pl.check_filter(f, SCHEMA)


def test_deep_filters_are_refused():
    f = ["exists", "n"]
    for _ in range(20):
        f = ["not", f]
    with pytest.raises(InvalidArgument, match="deep"):
        pl.check_filter(f, SCHEMA)


def test_canonical_form_is_stable():
    a = pl.check_filter(["in", "color", ["red", "blue", "red"]], SCHEMA)
    b = pl.check_filter(["in", "color", ["blue", "red"]], SCHEMA)
    assert pl.filter_key(a) == pl.filter_key(b)


@pytest.mark.parametrize("cols,why", [
    ({"n": pl.column_from_values("keyword", ["a", "b"])}, "'n' is int"),
    ({"x": pl.column_from_values("float", [float("nan"), 1.0])}, "finite"),
    ({"bad name": pl.column_from_values("int", [1, 2])}, "invalid"),
    ({"color": pl.column_from_values("keyword", ["", "a"])}, "non-empty"),
    ({"color": pl.column_from_values("keyword", ["a" * 2000, "a"])}, "above the limit"),
    ({"tags": pl.column_from_values("keywords", [["a"] * 300, []])}, "above the limit"),
    ({"n": pl.column_from_values("int", [1])}, "entries for 2 rows"),
])
def test_bad_columns(cols, why):
    with pytest.raises(InvalidArgument, match=why):
        pl.check_columns(cols, 2, SCHEMA)


def test_an_int_column_fits_a_float_field_and_new_fields_are_reported():
    new = pl.check_columns({"x": pl.column_from_values("int", [1, 2]),
                            "fresh": pl.column_from_values("bool", [True, None])}, 2, SCHEMA)
    assert new == {"fresh": "bool"}


def test_ints_against_a_float_field_compare_exactly():
    """An int no float equals (2**53 + 1) matches no float; int bounds select exactly the
    floats on their side; ints beyond every float and infinite bounds are handled."""
    store = pl.PayloadStore()
    vals = [9007199254740992.0, 9007199254740994.0, 1.5]  # 2**53, 2**53 + 2
    store.write(np.arange(3), {"x": pl.column_from_values("float", vals)}, replace=True)
    k = 2**53 + 1

    def m(f):
        return store.mask(pl.check_filter(f, SCHEMA), 3).tolist()
    assert m(["eq", "x", k]) == [False, False, False]
    assert m(["in", "x", [k, 2**53]]) == [True, False, False]
    assert m(["range", "x", None, k, None, None]) == [False, True, False]   # >= 2**53 + 1
    assert m(["range", "x", k, None, None, None]) == [False, True, False]   # >  2**53 + 1
    assert m(["range", "x", None, None, k, None]) == [True, False, True]    # <  2**53 + 1
    assert m(["range", "x", None, None, None, k]) == [True, False, True]    # <= 2**53 + 1
    assert m(["range", "x", 10**400, None, None, None]) == [False, False, False]
    assert m(["range", "x", None, None, 10**400, None]) == [True, True, True]
    assert m(["eq", "x", 10**400]) == [False, False, False]
    for bad in (float("inf"), float("-inf"), float("nan")):
        with pytest.raises(InvalidArgument, match="finite"):
            pl.check_filter(["range", "n", None, None, bad, None], SCHEMA)


def test_and_or_children_in_any_order_share_a_key():
    a = pl.check_filter(["and", [["eq", "color", "red"], ["exists", "n"]]], SCHEMA)
    b = pl.check_filter(["and", [["exists", "n"], ["eq", "color", "red"]]], SCHEMA)
    assert pl.filter_key(a) == pl.filter_key(b)
