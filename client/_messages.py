"""Request builders and response readers shared by Client and AsyncClient."""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Iterable, Sequence

import numpy as np

from nestvec import wire
from nestvec.client import _payload
from nestvec.errors import InvalidArgument, NestvecError, from_code
from nestvec.v1 import nestvec_pb2 as pb

DEFAULT_BATCH_BYTES = 16 << 20  # upsert() splits bigger arrays into requests of about this size


@dataclass
class ShardInfo:
    shard: int
    vectors: int
    tombstones: int
    capacity: int
    down: bool = False    # did not answer (restarting, or lost)
    actor_name: str = ""  # the shard's Ray actor name (in the server's namespace)
    wal_bytes: int = 0    # log written since the last snapshot
    # The shard's ANN graph (docs/ann.md): state none / building / ready / stale / failed
    index_state: str = "none"
    index_progress: float = 0.0      # share of the running build done
    index_dim: int = 0
    index_bytes: int = 0             # graph memory
    index_build_seconds: float = 0.0
    index_vectors: int = 0
    index_deleted: int = 0
    index_builds: int = 0            # builds since the shard process started
    index_loaded: bool = False       # loaded from a snapshot (not rebuilt)
    index_reason: str = ""
    index_fallback_queries: int = 0  # ANN queries answered exactly (no graph yet)
    node_id: str = ""     # Ray node the shard runs on
    node_ip: str = ""
    memory_bytes: int = 0  # the shard's vector data (allocated arrays)
    rss_bytes: int = 0     # resident memory of its worker process
    health: str = ""       # SERVING, RECOVERED (restarted from disk), WRITES_REFUSED or DOWN
    restarts: int = 0
    write_error: str = ""     # why the shard refuses writes (its disk failed); "" while it takes them
    write_errors: int = 0     # write or fsync errors since the shard process started
    snapshot_error: str = ""  # the last snapshot attempt's error, if it failed
    down_reason: str = ""     # why a DOWN shard is down, when known


@dataclass
class CollectionInfo:
    name: str
    dim: int
    metric: str
    nested_dims: list[int]
    shards: int
    first_stage: str = "float32"         # precision of funnel shortlists (create_collection)
    vectors: int = 0                     # filled by describe_collection
    shard_info: list[ShardInfo] = field(default_factory=list)
    index: dict | None = None            # the ANN index spec, if any
    payload_schema: dict[str, str] = field(default_factory=dict)  # payload field -> type

    @property
    def index_ready(self) -> bool:
        """Every shard has a graph serving ANN searches (ready, or stale while rebuilding)."""
        return bool(self.shard_info) and all(s.index_state in ("ready", "stale")
                                             for s in self.shard_info)


@dataclass
class SearchResult:
    """ids and scores, both [Q, k], best first (ties by id).

    A single 1-D query still gives [1, k]. k is min(k asked, vectors stored).
    Scores: cosine/dot similarity (descending), l2 squared distance (ascending).
    """

    ids: np.ndarray     # uint64
    scores: np.ndarray  # float32
    missing_shards: list[int] = field(default_factory=list)  # only with allow_partial=True
    funnel_used: list[tuple[int, int]] = field(default_factory=list)  # with target_recall / "auto"
    calibrated_recall: float | None = None                       # with target_recall / "auto"
    ann_used: tuple[int, int] | None = None  # with target_recall: (ef, candidates) if ANN ran
    payloads: list[list[dict]] | None = None  # with with_payload: [Q][k] dicts of field values


@dataclass
class GetResult:
    ids: np.ndarray          # found ids, in the order asked (uint64)
    vectors: np.ndarray      # [len(ids), dim] float32
    missing_ids: np.ndarray  # ids asked for that are not stored
    payloads: list[dict] | None = None  # with with_payload: one dict per found id

    def __len__(self) -> int:
        return int(self.ids.size)


@dataclass
class StreamResult:
    upserted: int
    batches: int


def as_ids(ids) -> np.ndarray:
    arr = np.asarray(ids)
    if arr.ndim == 0:
        arr = arr[None]
    if arr.ndim != 1 or (arr.size and arr.dtype.kind not in "iu"):
        raise InvalidArgument(f"ids must be a 1-D sequence of non-negative ints, got {arr.dtype} {arr.shape}")
    if arr.dtype.kind == "i" and arr.size and (arr < 0).any():
        raise InvalidArgument("ids must be non-negative (they are uint64)")
    return arr.astype(np.uint64, copy=False)


def as_matrix(values) -> np.ndarray:
    arr = np.asarray(values, dtype=np.float32)
    return arr[None, :] if arr.ndim == 1 else arr


def create_request(name, dim, metric, nested_dims, shards, first_stage=None, index=None,
                   payload_schema=None) -> pb.CreateCollectionRequest:
    m = wire.METRIC_TO_WIRE.get(str(metric).lower())
    if m is None:
        raise InvalidArgument(f"unknown metric {metric!r}: use one of {', '.join(wire.METRIC_TO_WIRE)}")
    p = wire.PRECISION_TO_WIRE.get(str(first_stage or "float32").lower())
    if p is None:
        raise InvalidArgument(f"unknown first_stage {first_stage!r}: use one of "
                              f"{', '.join(wire.PRECISION_TO_WIRE)}")
    req = pb.CreateCollectionRequest(name=name, dim=int(dim), metric=m,
                                     nested_dims=[int(d) for d in nested_dims or ()],
                                     shards=int(shards or 0), first_stage=p)
    if index is not None:
        req.index.CopyFrom(index_spec(index))
    req.payload_schema.extend(_payload.schema_fields(payload_schema))
    return req


def index_spec(index) -> pb.IndexSpec:
    """{"type": "hnsw", "dim": 64, "m": 16, "ef_construction": 200} (all optional) as a message."""
    if not isinstance(index, dict):
        raise InvalidArgument(f"index must be a dict like {{'type': 'hnsw', 'dim': 64}}, got {index!r}")
    unknown = set(index) - {"type", "dim", "m", "ef_construction"}
    if unknown:
        raise InvalidArgument(f"unknown index options {sorted(unknown)}: use type, dim, m, ef_construction")
    return pb.IndexSpec(type=str(index.get("type") or "hnsw"), dim=_uint32(index.get("dim"), "index dim"),
                        m=_uint32(index.get("m"), "index m"),
                        ef_construction=_uint32(index.get("ef_construction"), "index ef_construction"))


def upsert_requests(collection: str, ids, vectors, batch_bytes: int = DEFAULT_BATCH_BYTES,
                    dtype: str = "float32", payload=None) -> Iterable[pb.UpsertRequest]:
    """One request per slice of about `batch_bytes` (payloads: _payload.py's forms)."""
    ids, vectors = as_ids(ids), as_matrix(vectors)
    row_bytes = max(1, vectors.shape[1] * (2 if dtype == "float16" else 4))
    step = max(1, batch_bytes // row_bytes)
    columns = None if payload is None else _payload.as_columns(payload, vectors.shape[0])
    for s in range(0, max(1, vectors.shape[0]), step):
        req = pb.UpsertRequest(collection=collection, ids=ids[s: s + step].tolist(),
                               vectors=wire.encode_matrix(vectors[s: s + step], dtype))
        if columns:
            req.payload.extend(_payload.columns_to_wire(columns, vectors.shape[0], slice(s, s + step)))
        yield req


def batch_payload(batch):
    """An upsert_stream batch's payload: (ids, vectors) has none, (ids, vectors, payload) one."""
    return batch[2] if len(batch) > 2 else None


def payload_columns(payload, rows: int) -> list:
    return _payload.columns_to_wire(payload, rows)


def filter_message(f) -> pb.Filter:
    return _payload.filter_to_wire(f)


def _uint32(value, what: str) -> int:
    v = int(value or 0)
    if not 0 <= v < 2**32:
        raise InvalidArgument(f"{what} must be between 0 and 2**32-1, got {v}")
    return v


AUTO_TARGET_RECALL = 0.95  # funnel="auto"


def search_request(collection, queries, k, dim, funnel, dtype="float32",
                   allow_partial=False, target_recall=None, ann=False, ef=None,
                   candidates=None, filter=None, with_payload=False,
                   payload_fields=None) -> pb.SearchRequest:
    k, dim = _uint32(k, "k"), _uint32(dim, "dim")
    if isinstance(funnel, str):
        if funnel != "auto":
            raise InvalidArgument(f"funnel must be a list of (dim, candidates) stages or 'auto', got {funnel!r}")
        funnel, target_recall = None, target_recall or AUTO_TARGET_RECALL
    req = pb.SearchRequest(collection=collection, queries=wire.encode_matrix(as_matrix(queries), dtype),
                           k=int(k), dim=int(dim or 0), allow_partial=bool(allow_partial),
                           target_recall=float(target_recall or 0), ann=bool(ann),
                           ef=_uint32(ef, "ef"), candidates=_uint32(candidates, "candidates"))
    for stage in funnel or ():
        try:
            d, c = stage
        except (TypeError, ValueError):
            raise InvalidArgument(f"each funnel stage is a (dim, candidates) pair, got {stage!r}") from None
        req.funnel.add(dim=_uint32(d, "funnel dim"), candidates=_uint32(c, "funnel candidates"))
    if filter is not None:
        req.filter.CopyFrom(_payload.filter_to_wire(filter))
    req.with_payload = bool(with_payload or payload_fields)
    req.payload_fields.extend(payload_fields or ())
    return req


def get_request(collection, ids=None, dim=None, with_payload=False, payload_fields=None,
                filter=None, limit=None, with_vectors=True) -> pb.GetRequest:
    req = pb.GetRequest(collection=collection, dim=_uint32(dim, "dim"),
                        with_payload=bool(with_payload or payload_fields),
                        payload_fields=list(payload_fields or ()), limit=_uint32(limit, "limit"),
                        without_vectors=not with_vectors)
    if ids is not None:
        req.ids.extend(as_ids(ids).tolist())
    if filter is not None:
        req.filter.CopyFrom(_payload.filter_to_wire(filter))
    return req


def read_search(resp: pb.SearchResponse) -> SearchResult:
    shape = (resp.queries, resp.k)
    planned = resp.calibrated_recall > 0
    payloads = None
    if resp.payload:
        flat = _payload.columns_from_wire(resp.payload, resp.queries * resp.k)
        payloads = [flat[q * resp.k:(q + 1) * resp.k] for q in range(resp.queries)]
    return SearchResult(wire.decode_ids(resp.ids, shape), wire.decode_scores(resp.scores, shape),
                        list(resp.missing_shards),
                        [(s.dim, s.candidates) for s in resp.funnel_used],
                        float(resp.calibrated_recall) if planned else None,
                        (resp.ann_ef, resp.ann_candidates) if resp.ann_candidates else None,
                        payloads)


def read_get(resp: pb.GetResponse, with_payload: bool = False) -> GetResult:
    ids = np.array(resp.ids, dtype=np.uint64)
    vectors = (wire.decode_matrix(resp.vectors) if resp.HasField("vectors")
               else np.zeros((ids.size, 0), np.float32))
    payloads = _payload.columns_from_wire(resp.payload, ids.size) if with_payload else None
    return GetResult(ids, vectors, np.array(resp.missing_ids, dtype=np.uint64), payloads)


def read_info(info: pb.CollectionInfo) -> CollectionInfo:
    return CollectionInfo(
        name=info.name, dim=info.dim, metric=wire.METRIC_FROM_WIRE.get(info.metric, "unknown"),
        nested_dims=list(info.nested_dims), shards=info.shards, vectors=info.vectors,
        first_stage=wire.PRECISION_FROM_WIRE.get(info.first_stage, "unknown"),
        shard_info=[ShardInfo(shard=s.shard, vectors=s.vectors, tombstones=s.tombstones,
                              capacity=s.capacity, down=s.down, wal_bytes=s.wal_bytes,
                              actor_name=s.actor_name, node_id=s.node_id, node_ip=s.node_ip,
                              memory_bytes=s.memory_bytes, rss_bytes=s.rss_bytes,
                              health=s.health, restarts=s.restarts, write_error=s.write_error,
                              write_errors=s.write_errors, snapshot_error=s.snapshot_error,
                              down_reason=s.down_reason,
                              **{f: getattr(s, f) for f in wire.SHARD_INDEX_FIELDS})
                    for s in info.shard_info],
        index=({"type": info.index.type, "dim": info.index.dim, "m": info.index.m,
                "ef_construction": info.index.ef_construction} if info.HasField("index") else None),
        payload_schema=_payload.read_schema(info.payload_schema))


def rpc_error(err) -> NestvecError:
    """A gRPC error as the matching nestvec error (code, the server's message, request id)."""
    trailer = dict(err.trailing_metadata() or ())
    return from_code(err.code().name, err.details() or "", trailer.get("x-request-id", ""))
