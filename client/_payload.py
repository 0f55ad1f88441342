"""Payloads and filters in the SDK's Python forms, to and from the wire (docs/filters.md).

Payloads: a list of dicts, one per row (`[{"pos": "noun", "n": 3}, ...]`), or columns,
one list per field (`{"pos": ["noun", "verb"], "n": [3, None]}`); None or an absent key
is a row without a value. Types are inferred per column: str -> KEYWORD, a list of str
-> KEYWORDS, bool -> BOOLEAN, int -> INTEGER, float (or ints mixed with floats) ->
FLOAT.

Filters: Mongo / Chroma style dicts, because that is what most people filtering a
vector store have written before:

    {"pos": "noun"}                              equality (a KEYWORDS field: any element)
    {"lexname": {"$in": ["noun.food", "noun.plant"]}}
    {"gloss_chars": {"$gte": 20, "$lt": 120}}    ranges ($gt $gte $lt $lte)
    {"pos": {"$ne": "noun"}}, {"x": {"$nin": [...]}}, {"x": {"$exists": True}}
    {"pos": "noun", "n": {"$gt": 2}}             several keys: all must hold
    {"$and": [...]}, {"$or": [...]}, {"$not": {...}}
"""
from __future__ import annotations

from typing import Any

from nestvec.errors import InvalidArgument
from nestvec.v1 import nestvec_pb2 as pb

_RANGE_OPS = {"$gt": "gt", "$gte": "gte", "$lt": "lt", "$lte": "lte"}
_TYPES = {"keyword": pb.KEYWORD, "keywords": pb.KEYWORDS, "int": pb.INTEGER, "integer": pb.INTEGER,
          "float": pb.FLOAT, "bool": pb.BOOLEAN, "boolean": pb.BOOLEAN}
_NAMES = {pb.KEYWORD: "keyword", pb.KEYWORDS: "keywords", pb.INTEGER: "int", pb.FLOAT: "float",
          pb.BOOLEAN: "bool"}


def schema_fields(schema: dict[str, str] | None) -> list:
    out = []
    for name, kind in (schema or {}).items():
        t = _TYPES.get(str(kind).lower())
        if t is None:
            raise InvalidArgument(f"payload field {name!r}: unknown type {kind!r} "
                                  "(use keyword, keywords, int, float or bool)")
        out.append(pb.PayloadField(name=name, type=t))
    return out


def read_schema(fields) -> dict[str, str]:
    return {f.name: _NAMES.get(f.type, "unknown") for f in fields}


# ----- payload columns ---------------------------------------------------------------
def as_columns(payload, rows: int) -> dict[str, list]:
    """Either payload form as {field: [one value or None per row]}."""
    if isinstance(payload, dict):
        cols = {k: list(v) for k, v in payload.items()}
        for k, v in cols.items():
            if len(v) != rows:
                raise InvalidArgument(f"payload column {k!r} has {len(v)} values for {rows} rows")
        return cols
    rows_list = list(payload)
    if len(rows_list) != rows:
        raise InvalidArgument(f"payload has {len(rows_list)} rows for {rows} ids")
    names: dict[str, None] = {}
    for r in rows_list:
        if r is not None and not isinstance(r, dict):
            raise InvalidArgument(f"each payload row must be a dict (or None), got {type(r).__name__}")
        names.update(dict.fromkeys(r or {}))
    return {n: [(r or {}).get(n) for r in rows_list] for n in names}


def _infer(name: str, values: list) -> int:
    kinds = set()
    for v in values:
        if v is None:
            continue
        if isinstance(v, bool):
            kinds.add(pb.BOOLEAN)
        elif isinstance(v, int):
            kinds.add(pb.INTEGER)
        elif isinstance(v, float):
            kinds.add(pb.FLOAT)
        elif isinstance(v, str):
            kinds.add(pb.KEYWORD)
        elif isinstance(v, (list, tuple)):
            if not all(isinstance(x, str) for x in v):
                raise InvalidArgument(f"payload field {name!r}: a list value must hold strings only")
            kinds.add(pb.KEYWORDS)
        else:
            raise InvalidArgument(f"payload field {name!r}: {type(v).__name__} values are not "
                                  "supported (use str, list of str, int, float or bool)")
    if kinds == {pb.INTEGER, pb.FLOAT}:
        return pb.FLOAT
    if len(kinds) > 1:
        raise InvalidArgument(f"payload field {name!r} mixes types "
                              f"{sorted(_NAMES[k] for k in kinds)}: one type per field")
    return kinds.pop() if kinds else pb.KEYWORD  # all missing: any type carries that


def columns_to_wire(payload, rows: int, slice_: slice | None = None) -> list:
    cols = as_columns(payload, rows)
    out = []
    for name, values in cols.items():
        if slice_ is not None:
            values = values[slice_]
        t = _infer(name, values)
        col = pb.PayloadColumn(name=name, type=t)
        present = [v is not None for v in values]
        if not all(present):
            col.present = bytes(present)
        if t == pb.KEYWORD:
            col.keywords.extend(v if v is not None else "" for v in values)
        elif t == pb.KEYWORDS:
            for v in values:
                col.keywords.extend(v or ())
                col.list_lengths.append(len(v or ()))
        elif t == pb.INTEGER:
            col.integers.extend(v if v is not None else 0 for v in values)
        elif t == pb.FLOAT:
            col.floats.extend(float(v) if v is not None else 0.0 for v in values)
        else:
            col.booleans.extend(bool(v) for v in values)
        out.append(col)
    return out


def columns_from_wire(columns, rows: int) -> list[dict[str, Any]]:
    """One dict per row (fields without a value left out)."""
    out: list[dict[str, Any]] = [{} for _ in range(rows)]
    for c in columns:
        present = list(c.present) if c.present else None
        if c.type == pb.KEYWORDS:
            at, values = 0, []
            for n in c.list_lengths:
                values.append(list(c.keywords[at: at + n]))
                at += n
        else:
            values = {pb.KEYWORD: c.keywords, pb.INTEGER: c.integers, pb.FLOAT: c.floats,
                      pb.BOOLEAN: c.booleans}[c.type]
        for i, v in enumerate(values):
            if present is None or present[i]:
                out[i][c.name] = v
    return out


# ----- filters -----------------------------------------------------------------------
def filter_to_wire(f: dict) -> pb.Filter:
    if not isinstance(f, dict) or not f:
        raise InvalidArgument(f"a filter is a non-empty dict like {{'pos': 'noun'}}, got {f!r}")
    parts = [_clause(k, v) for k, v in f.items()]
    if len(parts) == 1:
        return parts[0]
    return pb.Filter(all_of=pb.FilterList(filters=parts))


def _clause(key: str, value) -> pb.Filter:
    if key in ("$and", "$or"):
        if not isinstance(value, (list, tuple)) or not value:
            raise InvalidArgument(f"{key} takes a non-empty list of filters")
        lst = pb.FilterList(filters=[filter_to_wire(x) for x in value])
        return pb.Filter(all_of=lst) if key == "$and" else pb.Filter(any_of=lst)
    if key == "$not":
        return pb.Filter(none_of=filter_to_wire(value))
    if key.startswith("$"):
        raise InvalidArgument(f"unknown filter operator {key!r} at the top level "
                              "(use $and, $or, $not, or a field name)")
    if not isinstance(value, dict):
        return pb.Filter(match=_match(key, value))
    if not value:
        raise InvalidArgument(f"filter on {key!r} is an empty dict")
    conds, bounds = [], {}
    for op, arg in value.items():
        if op in _RANGE_OPS:
            if isinstance(arg, bool) or not isinstance(arg, (int, float)):
                raise InvalidArgument(f"{op} on {key!r} takes a number, got {arg!r}")
            bounds[_RANGE_OPS[op]] = float(arg)
        elif op == "$eq":
            conds.append(pb.Filter(match=_match(key, arg)))
        elif op == "$ne":
            conds.append(pb.Filter(none_of=pb.Filter(match=_match(key, arg))))
        elif op in ("$in", "$nin"):
            m = pb.Filter(match=_match_any(key, arg))
            conds.append(m if op == "$in" else pb.Filter(none_of=m))
        elif op == "$exists":
            e = pb.Filter(exists=key)
            conds.append(e if arg else pb.Filter(none_of=e))
        else:
            raise InvalidArgument(f"unknown filter operator {op!r} on {key!r} "
                                  "(use $eq $ne $in $nin $gt $gte $lt $lte $exists)")
    if bounds:
        conds.append(pb.Filter(range=pb.Range(field=key, **bounds)))
    return conds[0] if len(conds) == 1 else pb.Filter(all_of=pb.FilterList(filters=conds))


def _match(field: str, value) -> pb.Match:
    if isinstance(value, bool):
        return pb.Match(field=field, boolean=value)
    if isinstance(value, int):
        return pb.Match(field=field, integer=value)
    if isinstance(value, float):
        return pb.Match(field=field, number=value)
    if isinstance(value, str):
        return pb.Match(field=field, keyword=value)
    raise InvalidArgument(f"filter value for {field!r} must be a str, int, float or bool, got {value!r}")


def _match_any(field: str, values) -> pb.Match:
    if not isinstance(values, (list, tuple, set)):
        raise InvalidArgument(f"$in / $nin on {field!r} takes a list, got {values!r}")
    values = list(values)
    any_ = pb.MatchAny()
    if all(isinstance(v, str) for v in values):
        any_.keywords.extend(values)
    elif all(isinstance(v, int) and not isinstance(v, bool) for v in values):
        any_.integers.extend(values)
    elif all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        any_.numbers.extend(float(v) for v in values)
    else:
        raise InvalidArgument(f"$in / $nin on {field!r}: the values must all be strings or all numbers")
    return pb.Match(field=field, any=any_)
