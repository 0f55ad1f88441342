from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Metric(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    METRIC_UNSPECIFIED: _ClassVar[Metric]
    COSINE: _ClassVar[Metric]
    DOT: _ClassVar[Metric]
    L2: _ClassVar[Metric]

class DType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    FLOAT32: _ClassVar[DType]
    FLOAT16: _ClassVar[DType]

class Precision(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PRECISION_FLOAT32: _ClassVar[Precision]
    PRECISION_FLOAT16: _ClassVar[Precision]
    PRECISION_INT8: _ClassVar[Precision]
METRIC_UNSPECIFIED: Metric
COSINE: Metric
DOT: Metric
L2: Metric
FLOAT32: DType
FLOAT16: DType
PRECISION_FLOAT32: Precision
PRECISION_FLOAT16: Precision
PRECISION_INT8: Precision

class Matrix(_message.Message):
    __slots__ = ("rows", "dim", "dtype", "data")
    ROWS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    DATA_FIELD_NUMBER: _ClassVar[int]
    rows: int
    dim: int
    dtype: DType
    data: bytes
    def __init__(self, rows: _Optional[int] = ..., dim: _Optional[int] = ..., dtype: _Optional[_Union[DType, str]] = ..., data: _Optional[bytes] = ...) -> None: ...

class CollectionInfo(_message.Message):
    __slots__ = ("name", "dim", "metric", "nested_dims", "shards", "vectors", "shard_info", "first_stage", "index")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    NESTED_DIMS_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    SHARD_INFO_FIELD_NUMBER: _ClassVar[int]
    FIRST_STAGE_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    name: str
    dim: int
    metric: Metric
    nested_dims: _containers.RepeatedScalarFieldContainer[int]
    shards: int
    vectors: int
    shard_info: _containers.RepeatedCompositeFieldContainer[ShardInfo]
    first_stage: Precision
    index: IndexSpec
    def __init__(self, name: _Optional[str] = ..., dim: _Optional[int] = ..., metric: _Optional[_Union[Metric, str]] = ..., nested_dims: _Optional[_Iterable[int]] = ..., shards: _Optional[int] = ..., vectors: _Optional[int] = ..., shard_info: _Optional[_Iterable[_Union[ShardInfo, _Mapping]]] = ..., first_stage: _Optional[_Union[Precision, str]] = ..., index: _Optional[_Union[IndexSpec, _Mapping]] = ...) -> None: ...

class ShardInfo(_message.Message):
    __slots__ = ("shard", "vectors", "tombstones", "capacity", "actor_name", "down", "wal_bytes", "index_state", "index_progress", "index_dim", "index_bytes", "index_build_seconds", "index_vectors", "index_deleted", "index_builds", "index_loaded", "index_reason", "index_fallback_queries", "node_id", "node_ip", "memory_bytes", "rss_bytes", "health", "restarts", "write_error", "write_errors", "snapshot_error", "down_reason")
    SHARD_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    TOMBSTONES_FIELD_NUMBER: _ClassVar[int]
    CAPACITY_FIELD_NUMBER: _ClassVar[int]
    ACTOR_NAME_FIELD_NUMBER: _ClassVar[int]
    DOWN_FIELD_NUMBER: _ClassVar[int]
    WAL_BYTES_FIELD_NUMBER: _ClassVar[int]
    INDEX_STATE_FIELD_NUMBER: _ClassVar[int]
    INDEX_PROGRESS_FIELD_NUMBER: _ClassVar[int]
    INDEX_DIM_FIELD_NUMBER: _ClassVar[int]
    INDEX_BYTES_FIELD_NUMBER: _ClassVar[int]
    INDEX_BUILD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    INDEX_VECTORS_FIELD_NUMBER: _ClassVar[int]
    INDEX_DELETED_FIELD_NUMBER: _ClassVar[int]
    INDEX_BUILDS_FIELD_NUMBER: _ClassVar[int]
    INDEX_LOADED_FIELD_NUMBER: _ClassVar[int]
    INDEX_REASON_FIELD_NUMBER: _ClassVar[int]
    INDEX_FALLBACK_QUERIES_FIELD_NUMBER: _ClassVar[int]
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    NODE_IP_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    RSS_BYTES_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    WRITE_ERROR_FIELD_NUMBER: _ClassVar[int]
    WRITE_ERRORS_FIELD_NUMBER: _ClassVar[int]
    SNAPSHOT_ERROR_FIELD_NUMBER: _ClassVar[int]
    DOWN_REASON_FIELD_NUMBER: _ClassVar[int]
    shard: int
    vectors: int
    tombstones: int
    capacity: int
    actor_name: str
    down: bool
    wal_bytes: int
    index_state: str
    index_progress: float
    index_dim: int
    index_bytes: int
    index_build_seconds: float
    index_vectors: int
    index_deleted: int
    index_builds: int
    index_loaded: bool
    index_reason: str
    index_fallback_queries: int
    node_id: str
    node_ip: str
    memory_bytes: int
    rss_bytes: int
    health: str
    restarts: int
    write_error: str
    write_errors: int
    snapshot_error: str
    down_reason: str
    def __init__(self, shard: _Optional[int] = ..., vectors: _Optional[int] = ..., tombstones: _Optional[int] = ..., capacity: _Optional[int] = ..., actor_name: _Optional[str] = ..., down: _Optional[bool] = ..., wal_bytes: _Optional[int] = ..., index_state: _Optional[str] = ..., index_progress: _Optional[float] = ..., index_dim: _Optional[int] = ..., index_bytes: _Optional[int] = ..., index_build_seconds: _Optional[float] = ..., index_vectors: _Optional[int] = ..., index_deleted: _Optional[int] = ..., index_builds: _Optional[int] = ..., index_loaded: _Optional[bool] = ..., index_reason: _Optional[str] = ..., index_fallback_queries: _Optional[int] = ..., node_id: _Optional[str] = ..., node_ip: _Optional[str] = ..., memory_bytes: _Optional[int] = ..., rss_bytes: _Optional[int] = ..., health: _Optional[str] = ..., restarts: _Optional[int] = ..., write_error: _Optional[str] = ..., write_errors: _Optional[int] = ..., snapshot_error: _Optional[str] = ..., down_reason: _Optional[str] = ...) -> None: ...

class CreateCollectionRequest(_message.Message):
    __slots__ = ("name", "dim", "metric", "nested_dims", "shards", "first_stage", "index")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    NESTED_DIMS_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    FIRST_STAGE_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    name: str
    dim: int
    metric: Metric
    nested_dims: _containers.RepeatedScalarFieldContainer[int]
    shards: int
    first_stage: Precision
    index: IndexSpec
    def __init__(self, name: _Optional[str] = ..., dim: _Optional[int] = ..., metric: _Optional[_Union[Metric, str]] = ..., nested_dims: _Optional[_Iterable[int]] = ..., shards: _Optional[int] = ..., first_stage: _Optional[_Union[Precision, str]] = ..., index: _Optional[_Union[IndexSpec, _Mapping]] = ...) -> None: ...

class CreateCollectionResponse(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: CollectionInfo
    def __init__(self, collection: _Optional[_Union[CollectionInfo, _Mapping]] = ...) -> None: ...

class DescribeCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DescribeCollectionResponse(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: CollectionInfo
    def __init__(self, collection: _Optional[_Union[CollectionInfo, _Mapping]] = ...) -> None: ...

class ListCollectionsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class ListCollectionsResponse(_message.Message):
    __slots__ = ("collections",)
    COLLECTIONS_FIELD_NUMBER: _ClassVar[int]
    collections: _containers.RepeatedCompositeFieldContainer[CollectionInfo]
    def __init__(self, collections: _Optional[_Iterable[_Union[CollectionInfo, _Mapping]]] = ...) -> None: ...

class DropCollectionRequest(_message.Message):
    __slots__ = ("name",)
    NAME_FIELD_NUMBER: _ClassVar[int]
    name: str
    def __init__(self, name: _Optional[str] = ...) -> None: ...

class DropCollectionResponse(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class UpsertRequest(_message.Message):
    __slots__ = ("collection", "ids", "vectors")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[int]
    vectors: Matrix
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[int]] = ..., vectors: _Optional[_Union[Matrix, _Mapping]] = ...) -> None: ...

class UpsertResponse(_message.Message):
    __slots__ = ("upserted",)
    UPSERTED_FIELD_NUMBER: _ClassVar[int]
    upserted: int
    def __init__(self, upserted: _Optional[int] = ...) -> None: ...

class UpsertStreamResponse(_message.Message):
    __slots__ = ("upserted", "batches")
    UPSERTED_FIELD_NUMBER: _ClassVar[int]
    BATCHES_FIELD_NUMBER: _ClassVar[int]
    upserted: int
    batches: int
    def __init__(self, upserted: _Optional[int] = ..., batches: _Optional[int] = ...) -> None: ...

class DeleteRequest(_message.Message):
    __slots__ = ("collection", "ids")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[int]] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: _Optional[int] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("collection", "ids", "dim")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[int]
    dim: int
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[int]] = ..., dim: _Optional[int] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("ids", "vectors", "missing_ids")
    IDS_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    MISSING_IDS_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    vectors: Matrix
    missing_ids: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, ids: _Optional[_Iterable[int]] = ..., vectors: _Optional[_Union[Matrix, _Mapping]] = ..., missing_ids: _Optional[_Iterable[int]] = ...) -> None: ...

class FunnelStage(_message.Message):
    __slots__ = ("dim", "candidates")
    DIM_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    dim: int
    candidates: int
    def __init__(self, dim: _Optional[int] = ..., candidates: _Optional[int] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("collection", "queries", "k", "dim", "funnel", "allow_partial", "target_recall", "ann", "ef", "candidates")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    FUNNEL_FIELD_NUMBER: _ClassVar[int]
    ALLOW_PARTIAL_FIELD_NUMBER: _ClassVar[int]
    TARGET_RECALL_FIELD_NUMBER: _ClassVar[int]
    ANN_FIELD_NUMBER: _ClassVar[int]
    EF_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    collection: str
    queries: Matrix
    k: int
    dim: int
    funnel: _containers.RepeatedCompositeFieldContainer[FunnelStage]
    allow_partial: bool
    target_recall: float
    ann: bool
    ef: int
    candidates: int
    def __init__(self, collection: _Optional[str] = ..., queries: _Optional[_Union[Matrix, _Mapping]] = ..., k: _Optional[int] = ..., dim: _Optional[int] = ..., funnel: _Optional[_Iterable[_Union[FunnelStage, _Mapping]]] = ..., allow_partial: _Optional[bool] = ..., target_recall: _Optional[float] = ..., ann: _Optional[bool] = ..., ef: _Optional[int] = ..., candidates: _Optional[int] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("queries", "k", "ids", "scores", "missing_shards", "funnel_used", "calibrated_recall", "ann_ef", "ann_candidates")
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    MISSING_SHARDS_FIELD_NUMBER: _ClassVar[int]
    FUNNEL_USED_FIELD_NUMBER: _ClassVar[int]
    CALIBRATED_RECALL_FIELD_NUMBER: _ClassVar[int]
    ANN_EF_FIELD_NUMBER: _ClassVar[int]
    ANN_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    queries: int
    k: int
    ids: bytes
    scores: bytes
    missing_shards: _containers.RepeatedScalarFieldContainer[int]
    funnel_used: _containers.RepeatedCompositeFieldContainer[FunnelStage]
    calibrated_recall: float
    ann_ef: int
    ann_candidates: int
    def __init__(self, queries: _Optional[int] = ..., k: _Optional[int] = ..., ids: _Optional[bytes] = ..., scores: _Optional[bytes] = ..., missing_shards: _Optional[_Iterable[int]] = ..., funnel_used: _Optional[_Iterable[_Union[FunnelStage, _Mapping]]] = ..., calibrated_recall: _Optional[float] = ..., ann_ef: _Optional[int] = ..., ann_candidates: _Optional[int] = ...) -> None: ...

class IndexSpec(_message.Message):
    __slots__ = ("type", "dim", "m", "ef_construction")
    TYPE_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    M_FIELD_NUMBER: _ClassVar[int]
    EF_CONSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    type: str
    dim: int
    m: int
    ef_construction: int
    def __init__(self, type: _Optional[str] = ..., dim: _Optional[int] = ..., m: _Optional[int] = ..., ef_construction: _Optional[int] = ...) -> None: ...

class CreateIndexRequest(_message.Message):
    __slots__ = ("collection", "index")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    collection: str
    index: IndexSpec
    def __init__(self, collection: _Optional[str] = ..., index: _Optional[_Union[IndexSpec, _Mapping]] = ...) -> None: ...

class CreateIndexResponse(_message.Message):
    __slots__ = ("collection",)
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    collection: CollectionInfo
    def __init__(self, collection: _Optional[_Union[CollectionInfo, _Mapping]] = ...) -> None: ...
