"""A collection's fixed settings, and the checks every request is held to.

Pure Python and numpy: used by the coordinator (so Ray jobs get the same checks
as gRPC clients) and by the engine. Every failure is an `InvalidArgument` whose
message says what was wrong and how to fix it.
"""
from __future__ import annotations

import re
import uuid
from dataclasses import asdict, dataclass, field

import numpy as np

from nestvec.cluster._engine.limits import DEFAULT_LIMITS, Limits
from nestvec.cluster._engine.lowp import PRECISIONS
from nestvec.errors import InvalidArgument, ResourceExhausted

METRICS = ("cosine", "dot", "l2")
MAX_DIM = 65_536
MAX_SHARDS = 256
MAX_K = DEFAULT_LIMITS.max_k
MAX_CANDIDATES = DEFAULT_LIMITS.max_candidates
# The graph's prefix and build beam when an index names none, per type (docs/ann.md):
# - hnsw (float32 prefixes): the 128-dim graph reaches recall@10 0.95 after re-ranking
#   ~60 candidates, the 64-dim one needs ~300 and answers at under half the speed;
#   its memory stays under 0.4x a full-dim graph's.
# - hnsw_sq8 (8-bit codes): a code is a quarter of the bytes, so a wider prefix costs
#   little; at 160 dims the walk finds better candidates (recall 0.95 at ef 50 with 50
#   re-ranked; at 128 dims ef 72 with 40 or ef 60 with 60) and answered fastest of
#   128/144/160/192/256 at that recall. A beam of 128 builds in about 0.4x hnswlib's
#   full-dim time (200: 0.5-0.75x) for ~0.005 recall.
DEFAULT_INDEX_DIM = {"hnsw": 128, "hnsw_sq8": 160}
DEFAULT_EF_CONSTRUCTION = {"hnsw": 200, "hnsw_sq8": 128}
# Largest squared norm a vector or query may have: keeps every score and l2
# distance (at most about 4x this) finite in float32 (max ~3.4e38).
MAX_SQUARED_NORM = 1e37
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.\-]{0,127}$")


def default_nested_dims(dim: int) -> list[int]:
    """Powers of two from 32 below `dim`, plus `dim` itself."""
    dims, d = [], 32
    while d < dim:
        dims.append(d)
        d *= 2
    return dims + [dim]


INDEX_TYPES = ("hnsw", "hnsw_sq8")  # hnswlib float32 / FAISS 8-bit codes (docs/ann.md)
MAX_GRAPH_M = 128
MAX_EF = 10_000


@dataclass(frozen=True)
class IndexSpec:
    """An ANN graph over each shard's leading `dim` dims (ann_index.py, docs/ann.md)."""

    type: str = "hnsw"
    dim: int = 64
    m: int = 16                 # graph degree (hnswlib's M)
    ef_construction: int = 200  # build-time beam width

    @staticmethod
    def create(spec, dim: int) -> "IndexSpec | None":
        """Validate a user's index option (a dict, an IndexSpec or None) for a collection of `dim`."""
        if spec is None or spec == {}:
            return None
        if isinstance(spec, IndexSpec):
            spec = spec.to_dict()
        if not isinstance(spec, dict):
            raise InvalidArgument(f"index must be a dict like {{'type': 'hnsw', 'dim': 64}}, got {spec!r}")
        unknown = set(spec) - {"type", "dim", "m", "ef_construction"}
        if unknown:
            raise InvalidArgument(f"unknown index options {sorted(unknown)}: use type, dim, m, ef_construction")
        kind = str(spec.get("type") or "hnsw").lower()
        if kind not in INDEX_TYPES:
            raise InvalidArgument(f"unknown index type {kind!r}: use one of {', '.join(INDEX_TYPES)}")
        if kind == "hnsw_sq8":
            from nestvec.cluster._engine import ann_sq  # FAISS is optional: say so before a build fails
            if not ann_sq.available():
                raise InvalidArgument("index type hnsw_sq8 needs FAISS on the server: "
                                      "pip install 'nestvec[fast]', or use type hnsw")
        try:
            d = int(spec.get("dim") or min(DEFAULT_INDEX_DIM[kind], dim))
            m = int(spec.get("m") or 16)
            efc = int(spec.get("ef_construction") or DEFAULT_EF_CONSTRUCTION[kind])
        except (TypeError, ValueError):
            raise InvalidArgument(f"index dim, m and ef_construction must be integers, got {spec!r}") from None
        if not 1 <= d <= dim:
            raise InvalidArgument(f"index dim {d} is outside 1..{dim}: the graph covers a prefix of the vectors")
        if not 2 <= m <= MAX_GRAPH_M:
            raise InvalidArgument(f"index m must be between 2 and {MAX_GRAPH_M}, got {m}")
        if not m <= efc <= MAX_EF:
            raise InvalidArgument(f"index ef_construction must be between m ({m}) and {MAX_EF}, got {efc}")
        return IndexSpec(kind, d, m, efc)

    def to_dict(self) -> dict:
        return asdict(self)

    @staticmethod
    def from_dict(d: dict | None) -> "IndexSpec | None":
        if not d:
            return None
        return IndexSpec(d.get("type", "hnsw"), int(d["dim"]), int(d["m"]), int(d["ef_construction"]))


@dataclass(frozen=True)
class CollectionConfig:
    name: str
    dim: int
    metric: str = "cosine"
    nested_dims: tuple[int, ...] = field(default=())
    shards: int = 1
    uid: str = ""  # fresh per creation: names this incarnation's files on disk
    first_stage: str = "float32"  # precision of funnel shortlists at dims <= lowp.LOWP_MAX_DIM
    index: IndexSpec | None = None  # ANN graph built at creation (or later by CreateIndex)
    # Payload fields, (name, type) sorted by name: declared at creation or by a field's
    # first write (payload.py). A tuple so the config stays hashable.
    payload_schema: tuple[tuple[str, str], ...] = ()

    @property
    def schema(self) -> dict[str, str]:
        return dict(self.payload_schema)

    @staticmethod
    def create(name: str, dim: int, metric: str = "cosine",
               nested_dims: list[int] | tuple[int, ...] | None = None,
               shards: int = 1, first_stage: str | None = None, index=None,
               payload_schema: dict[str, str] | None = None) -> "CollectionConfig":
        """Validate and normalise user input into a config (nested dims sorted, dim included)."""
        if not isinstance(name, str) or not _NAME.match(name):
            raise InvalidArgument(
                f"collection name {name!r} is invalid: use 1-128 characters from "
                "letters, digits, '_', '.', '-', starting with a letter or digit")
        if not 1 <= int(dim) <= MAX_DIM:
            raise InvalidArgument(f"dim must be between 1 and {MAX_DIM}, got {dim}")
        dim = int(dim)
        metric = str(metric).lower()
        if metric not in METRICS:
            raise InvalidArgument(f"unknown metric {metric!r}: use one of {', '.join(METRICS)}")
        if nested_dims:
            dims = sorted({int(d) for d in nested_dims})
            bad = [d for d in dims if not 1 <= d <= dim]
            if bad:
                raise InvalidArgument(
                    f"nested_dims {bad} are outside 1..{dim}: each nested dim is a prefix "
                    "length of the vectors")
            if dims[-1] != dim:
                dims.append(dim)
        else:
            dims = default_nested_dims(dim)
        if not 1 <= int(shards) <= MAX_SHARDS:
            raise InvalidArgument(f"shards must be between 1 and {MAX_SHARDS}, got {shards}")
        first_stage = str(first_stage or "float32").lower()
        if first_stage not in PRECISIONS:
            raise InvalidArgument(
                f"unknown first_stage precision {first_stage!r}: use one of {', '.join(PRECISIONS)}")
        from nestvec.cluster._engine.payload import check_schema
        schema = check_schema(payload_schema or {})
        return CollectionConfig(name, dim, metric, tuple(dims), int(shards), uuid.uuid4().hex[:12],
                                first_stage, IndexSpec.create(index, dim), tuple(sorted(schema.items())))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["nested_dims"] = list(self.nested_dims)
        d["payload_schema"] = dict(self.payload_schema)
        return d

    @staticmethod
    def from_dict(d: dict) -> "CollectionConfig":
        return CollectionConfig(d["name"], int(d["dim"]), d["metric"],
                                tuple(int(x) for x in d["nested_dims"]), int(d["shards"]),
                                d.get("uid", ""), d.get("first_stage", "float32"),
                                IndexSpec.from_dict(d.get("index")),
                                tuple(sorted((d.get("payload_schema") or {}).items())))


@dataclass(frozen=True)
class SearchPlan:
    """A validated search: final scoring dim, shortlist stages, k."""

    k: int
    dim: int
    stages: tuple[tuple[int, int], ...] = ()   # (dim, candidates) shortlists before the final rank
    # ANN (docs/ann.md): > 0 means candidates come from each shard's graph walk (with
    # beam width `ef`) instead of a scan; `stages` then re-rank them, then the final dim.
    ann_candidates: int = 0
    ef: int = 0
    # A payload filter (payload.check_filter's canonical form) as JSON: only matching
    # rows are candidates at any stage. A string so plans stay hashable and travel
    # as they are over Ray and the same-node socket.
    filter: str = ""

    @property
    def keeps(self) -> list[int]:
        return [c for _, c in self.stages]


def check_ids(ids, rows: int | None = None, what: str = "ids",
              limit: int = DEFAULT_LIMITS.max_ids) -> np.ndarray:
    """ids as a 1-D uint64 array; `rows` (if given) must match their count."""
    arr = np.asarray(ids)
    if arr.ndim != 1:
        raise InvalidArgument(f"{what} must be a 1-D sequence of unsigned 64-bit ints, got shape {arr.shape}")
    if arr.size == 0:
        raise InvalidArgument(f"{what} is empty: send at least one id")
    if arr.dtype.kind == "i" and (arr < 0).any():
        raise InvalidArgument(f"{what} must be non-negative (uint64), got {int(arr.min())}")
    if arr.dtype.kind not in "iu":
        raise InvalidArgument(f"{what} must be integers (uint64), got dtype {arr.dtype}")
    arr = arr.astype(np.uint64, copy=False)
    if rows is None and arr.size > limit:
        raise ResourceExhausted(f"{arr.size} {what} in one call is above the limit of {limit}: "
                                "split them over several calls")
    if rows is not None and arr.size != rows:
        raise InvalidArgument(f"got {arr.size} ids for {rows} vector rows: send exactly one id per row")
    return arr


def check_vectors(vectors, cfg: CollectionConfig, limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
    """Vectors to store: [n, cfg.dim] finite float32; non-zero under cosine."""
    arr = _as_matrix(vectors, "vectors")
    if arr.shape[0] > limits.max_vectors:
        raise ResourceExhausted(f"{arr.shape[0]} vectors in one upsert is above the limit of "
                                f"{limits.max_vectors}: split the batch (the SDK's upsert does)")
    if arr.shape[1] != cfg.dim:
        raise InvalidArgument(
            f"vectors have dim {arr.shape[1]} but collection {cfg.name!r} has dim {cfg.dim}: "
            "send full-dimension vectors")
    _check_finite(arr, "vectors")
    if cfg.metric == "cosine":
        zero = np.flatnonzero(~np.any(arr != 0, axis=1))
        if zero.size:
            raise InvalidArgument(
                f"vector rows {zero[:5].tolist()} have zero norm, which has no cosine similarity: "
                "drop them or use metric 'dot'")
    return arr


def check_queries(queries, cfg: CollectionConfig, limits: Limits = DEFAULT_LIMITS) -> np.ndarray:
    """Query matrix: [Q, d] finite float32 with d <= cfg.dim (checked against the plan later)."""
    arr = _as_matrix(queries, "queries")
    if arr.shape[0] > limits.max_queries:
        raise ResourceExhausted(f"{arr.shape[0]} queries in one search is above the limit of "
                                f"{limits.max_queries}: split the batch")
    if arr.shape[1] > cfg.dim:
        raise InvalidArgument(
            f"queries have dim {arr.shape[1]} but collection {cfg.name!r} has dim {cfg.dim}")
    _check_finite(arr, "queries")
    if cfg.metric == "cosine":
        zero = np.flatnonzero(~np.any(arr != 0, axis=1))
        if zero.size:
            raise InvalidArgument(
                f"query rows {zero[:5].tolist()} have zero norm, which has no cosine similarity")
    return arr


def default_ann_candidates(k: int, dim: int, index_dim: int, limit: int) -> int:
    """Candidates an ANN search re-ranks by default: k x max(5, ceil(5/6 x (dim / index_dim)^2)).

    The shorter the graph's prefix against the ranking dim, the more its order
    differs from the exact one, so the more candidates the re-rank needs, and
    faster than in proportion: fitted to corpusA (k=10, ranking at 384 dims,
    one shard), where recall@10 first reaches 0.95 near 60 candidates on a
    128-dim graph and near 300 on a 64-dim one. This gives 80 (recall 0.968)
    and 300 (0.957); docs/ann.md has the curves.
    """
    index_dim = max(1, index_dim)
    per_k = -(-5 * dim * dim // (6 * index_dim * index_dim))
    return int(min(limit, max(k, k * max(5, per_k))))


def plan_search(cfg: CollectionConfig, query_dim: int, k: int, dim: int | None = 0,
                funnel=None, limits: Limits = DEFAULT_LIMITS, ann: bool = False,
                ef: int | None = None, candidates: int | None = None) -> SearchPlan:
    """Validate k, dim and funnel stages against the collection and the queries sent.

    With `ann`, candidates come from the graph (default count: default_ann_candidates;
    default ef: the candidate count) and the funnel stages re-rank them.
    """
    k = int(k)
    if not 1 <= k <= limits.max_k:
        raise InvalidArgument(f"k must be between 1 and {limits.max_k}, got {k}")
    dim = int(dim or 0) or cfg.dim
    if not 1 <= dim <= cfg.dim:
        raise InvalidArgument(
            f"dim {dim} is outside 1..{cfg.dim} for collection {cfg.name!r} (0 means the full dim)")
    if query_dim < dim:
        raise InvalidArgument(
            f"queries have dim {query_dim} but the search ranks at dim {dim}: send at least "
            f"{dim} leading dims (or the full {cfg.dim})")
    stages: list[tuple[int, int]] = []
    for i, stage in enumerate(funnel or ()):
        try:
            sd, sc = (int(x) for x in stage)
        except (TypeError, ValueError):
            raise InvalidArgument(f"funnel stage {i} must be a (dim, candidates) pair, got {stage!r}") from None
        if not 1 <= sd <= dim:
            raise InvalidArgument(
                f"funnel stage {i} has dim {sd}, outside 1..{dim} (the search's final dim)")
        if stages and sd <= stages[-1][0]:
            raise InvalidArgument(
                f"funnel stage dims must strictly increase: stage {i} has dim {sd} after "
                f"{stages[-1][0]}")
        if sc < k:
            raise InvalidArgument(
                f"funnel stage {i} keeps {sc} candidates, fewer than k={k}: every stage must keep "
                "at least k")
        if sc > limits.max_candidates:
            raise InvalidArgument(
                f"funnel stage {i} keeps {sc} candidates, above the limit {limits.max_candidates}")
        stages.append((sd, sc))
    if not ann:
        if ef or candidates:
            raise InvalidArgument("ef and candidates apply to ANN searches: set ann=True")
        return SearchPlan(k=k, dim=dim, stages=tuple(stages))
    if cfg.index is not None and query_dim < cfg.index.dim:
        raise InvalidArgument(f"queries have dim {query_dim} but the ANN graph walks {cfg.index.dim} "
                              "dims: send at least that many leading dims")
    index_dim = cfg.index.dim if cfg.index is not None else dim
    cand = int(candidates or 0) or default_ann_candidates(k, dim, index_dim, limits.max_candidates)
    if not k <= cand <= limits.max_candidates:
        raise InvalidArgument(f"ANN candidates must be between k={k} and {limits.max_candidates}, got {cand}")
    ef = int(ef or 0) or cand
    if not 1 <= ef <= MAX_EF:
        raise InvalidArgument(f"ef must be between 1 and {MAX_EF}, got {ef}")
    return SearchPlan(k=k, dim=dim, stages=tuple(stages), ann_candidates=cand, ef=ef)


def _as_matrix(values, what: str) -> np.ndarray:
    arr = np.asarray(values)
    if arr.ndim == 1:
        arr = arr[None, :]
    if arr.ndim != 2:
        raise InvalidArgument(f"{what} must be a 2-D [rows, dim] matrix, got shape {arr.shape}")
    if arr.shape[0] == 0 or arr.shape[1] == 0:
        raise InvalidArgument(f"{what} is empty (shape {arr.shape}): send at least one row")
    if arr.dtype.kind not in "fiu":
        raise InvalidArgument(f"{what} must be numeric, got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.float32)


def _check_finite(arr: np.ndarray, what: str) -> None:
    bad = ~np.isfinite(arr)
    if bad.any():
        rows = np.flatnonzero(bad.any(axis=1))
        raise InvalidArgument(f"{what} rows {rows[:5].tolist()} contain NaN or Inf values")
    # Values near float32's limit would make scores or l2 distances overflow to Inf.
    sq = np.einsum("ij,ij->i", arr, arr, dtype=np.float64)
    if (sq > MAX_SQUARED_NORM).any():
        rows = np.flatnonzero(sq > MAX_SQUARED_NORM)
        raise InvalidArgument(
            f"{what} rows {rows[:5].tolist()} are too large: their squared norm is above "
            f"{MAX_SQUARED_NORM:g}, so scores would overflow float32; scale them down")
