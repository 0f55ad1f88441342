"""Payload columns and filters between the wire (nestvec.v1 messages) and the engine's
forms (payload.Column, filters as nested lists). Shapes only: what a column or a
filter means is checked by the engine's payload.check_columns / check_filter.
"""
from __future__ import annotations

import numpy as np

from nestvec.cluster._engine.payload import Column
from nestvec.errors import InvalidArgument
from nestvec.v1 import nestvec_pb2 as pb

TYPE_NAMES = {pb.KEYWORD: "keyword", pb.KEYWORDS: "keywords", pb.INTEGER: "int",
              pb.FLOAT: "float", pb.BOOLEAN: "bool"}
TYPE_ENUMS = {v: k for k, v in TYPE_NAMES.items()}


def type_name(value: int, field: str) -> str:
    try:
        return TYPE_NAMES[value]
    except KeyError:
        raise InvalidArgument(f"payload field {field!r}: type must be one of KEYWORD, KEYWORDS, "
                              f"INTEGER, FLOAT, BOOLEAN, got {value}") from None


def schema_from_wire(fields) -> dict[str, str]:
    out = {}
    for f in fields:
        if f.name in out:
            raise InvalidArgument(f"payload field {f.name!r} is declared twice")
        out[f.name] = type_name(f.type, f.name)
    return out


def schema_to_wire(schema: dict[str, str] | None) -> list:
    return [pb.PayloadField(name=k, type=TYPE_ENUMS[v]) for k, v in sorted((schema or {}).items())]


# ----- columns ----------------------------------------------------------------------
def columns_from_wire(columns, rows: int) -> dict[str, Column]:
    """The request's payload columns for `rows` rows (the ids' count)."""
    out: dict[str, Column] = {}
    for c in columns:
        if c.name in out:
            raise InvalidArgument(f"payload field {c.name!r} is sent twice in one batch")
        kind = type_name(c.type, c.name)
        if c.present:
            if len(c.present) != rows:
                raise InvalidArgument(f"payload field {c.name!r}: present has {len(c.present)} bytes "
                                      f"for {rows} rows (one byte per row, or empty)")
            present = np.frombuffer(c.present, dtype=np.uint8) != 0
        else:
            present = np.ones(rows, dtype=bool)
        offsets = None
        if kind == "keyword":
            values = np.array(list(c.keywords), dtype=object)
        elif kind == "keywords":
            lengths = np.asarray(c.list_lengths, dtype=np.int64)
            if lengths.size != rows:
                raise InvalidArgument(f"payload field {c.name!r}: list_lengths has {lengths.size} "
                                      f"entries for {rows} rows")
            offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
            values = np.array(list(c.keywords), dtype=object)
            if values.size != offsets[-1]:
                raise InvalidArgument(f"payload field {c.name!r}: list_lengths add up to {offsets[-1]} "
                                      f"keywords, got {values.size}")
        elif kind == "int":
            values = np.asarray(c.integers, dtype=np.int64)
        elif kind == "float":
            values = np.asarray(c.floats, dtype=np.float64)
        else:
            values = np.asarray(c.booleans, dtype=bool)
        if kind != "keywords" and values.size != rows:
            raise InvalidArgument(f"payload field {c.name!r}: {values.size} values for {rows} rows "
                                  "(one entry per row; mark rows without a value in present)")
        out[c.name] = Column(kind, values, present, offsets)
    return out


def columns_to_wire(columns: dict[str, Column]) -> list:
    out = []
    for name, col in columns.items():
        msg = pb.PayloadColumn(name=name, type=TYPE_ENUMS[col.type])
        present = np.asarray(col.present, dtype=bool)
        if not present.all():
            msg.present = present.astype(np.uint8).tobytes()
        if col.type == "keyword":
            msg.keywords.extend(v if p else "" for v, p in zip(col.values.tolist(), present))
        elif col.type == "keywords":
            msg.keywords.extend(col.values.tolist())
            msg.list_lengths.extend(np.diff(col.offsets).tolist())
        elif col.type == "int":
            msg.integers.extend(np.where(present, col.values, 0).tolist())
        elif col.type == "float":
            msg.floats.extend(np.where(present, col.values, 0.0).tolist())
        else:
            msg.booleans.extend(np.where(present, col.values, False).tolist())
        out.append(msg)
    return out


# ----- filters ----------------------------------------------------------------------
MAX_WIRE_DEPTH = 32  # deeper nesting is refused before it is walked (check_filter's limit is lower)


def filter_from_wire(f, depth: int = 0) -> list | None:
    """The engine's nested-list form of a Filter message; None for an unset filter."""
    if depth > MAX_WIRE_DEPTH:
        raise InvalidArgument(f"filter is nested more than {MAX_WIRE_DEPTH} levels deep")
    kind = f.WhichOneof("kind")
    if kind is None:
        if depth:
            raise InvalidArgument("filter has an empty condition: set one of all_of, any_of, "
                                  "none_of, match, range, exists")
        return None
    if kind in ("all_of", "any_of"):
        parts = [filter_from_wire(x, depth + 1) for x in getattr(f, kind).filters]
        return ["and" if kind == "all_of" else "or", parts]
    if kind == "none_of":
        inner = filter_from_wire(f.none_of, depth + 1)
        if inner is None:
            raise InvalidArgument("filter none_of has an empty condition")
        return ["not", inner]
    if kind == "exists":
        return ["exists", f.exists]
    if kind == "range":
        r = f.range
        return ["range", r.field] + [getattr(r, b) if r.HasField(b) else None
                                     for b in ("gt", "gte", "lt", "lte")]
    m = f.match
    which = m.WhichOneof("value")
    if which is None:
        raise InvalidArgument(f"filter match on {m.field!r} has no value")
    if which == "any":
        values = [*m.any.keywords, *m.any.integers, *m.any.numbers]
        return ["in", m.field, values]
    return ["eq", m.field, getattr(m, which)]


def filter_of(request) -> list | None:
    return filter_from_wire(request.filter) if request.HasField("filter") else None
