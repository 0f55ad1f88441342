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

class PayloadType(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    PAYLOAD_TYPE_UNSPECIFIED: _ClassVar[PayloadType]
    KEYWORD: _ClassVar[PayloadType]
    KEYWORDS: _ClassVar[PayloadType]
    INTEGER: _ClassVar[PayloadType]
    FLOAT: _ClassVar[PayloadType]
    BOOLEAN: _ClassVar[PayloadType]
METRIC_UNSPECIFIED: Metric
COSINE: Metric
DOT: Metric
L2: Metric
FLOAT32: DType
FLOAT16: DType
PRECISION_FLOAT32: Precision
PRECISION_FLOAT16: Precision
PRECISION_INT8: Precision
PAYLOAD_TYPE_UNSPECIFIED: PayloadType
KEYWORD: PayloadType
KEYWORDS: PayloadType
INTEGER: PayloadType
FLOAT: PayloadType
BOOLEAN: PayloadType

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
    __slots__ = ("name", "dim", "metric", "nested_dims", "shards", "vectors", "shard_info", "first_stage", "index", "payload_schema")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    NESTED_DIMS_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    SHARD_INFO_FIELD_NUMBER: _ClassVar[int]
    FIRST_STAGE_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    name: str
    dim: int
    metric: Metric
    nested_dims: _containers.RepeatedScalarFieldContainer[int]
    shards: int
    vectors: int
    shard_info: _containers.RepeatedCompositeFieldContainer[ShardInfo]
    first_stage: Precision
    index: IndexSpec
    payload_schema: _containers.RepeatedCompositeFieldContainer[PayloadField]
    def __init__(self, name: _Optional[str] = ..., dim: _Optional[int] = ..., metric: _Optional[_Union[Metric, str]] = ..., nested_dims: _Optional[_Iterable[int]] = ..., shards: _Optional[int] = ..., vectors: _Optional[int] = ..., shard_info: _Optional[_Iterable[_Union[ShardInfo, _Mapping]]] = ..., first_stage: _Optional[_Union[Precision, str]] = ..., index: _Optional[_Union[IndexSpec, _Mapping]] = ..., payload_schema: _Optional[_Iterable[_Union[PayloadField, _Mapping]]] = ...) -> None: ...

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
    __slots__ = ("name", "dim", "metric", "nested_dims", "shards", "first_stage", "index", "payload_schema")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    METRIC_FIELD_NUMBER: _ClassVar[int]
    NESTED_DIMS_FIELD_NUMBER: _ClassVar[int]
    SHARDS_FIELD_NUMBER: _ClassVar[int]
    FIRST_STAGE_FIELD_NUMBER: _ClassVar[int]
    INDEX_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_SCHEMA_FIELD_NUMBER: _ClassVar[int]
    name: str
    dim: int
    metric: Metric
    nested_dims: _containers.RepeatedScalarFieldContainer[int]
    shards: int
    first_stage: Precision
    index: IndexSpec
    payload_schema: _containers.RepeatedCompositeFieldContainer[PayloadField]
    def __init__(self, name: _Optional[str] = ..., dim: _Optional[int] = ..., metric: _Optional[_Union[Metric, str]] = ..., nested_dims: _Optional[_Iterable[int]] = ..., shards: _Optional[int] = ..., first_stage: _Optional[_Union[Precision, str]] = ..., index: _Optional[_Union[IndexSpec, _Mapping]] = ..., payload_schema: _Optional[_Iterable[_Union[PayloadField, _Mapping]]] = ...) -> None: ...

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
    __slots__ = ("collection", "ids", "vectors", "payload")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[int]
    vectors: Matrix
    payload: _containers.RepeatedCompositeFieldContainer[PayloadColumn]
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[int]] = ..., vectors: _Optional[_Union[Matrix, _Mapping]] = ..., payload: _Optional[_Iterable[_Union[PayloadColumn, _Mapping]]] = ...) -> None: ...

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
    __slots__ = ("collection", "ids", "filter")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[int]
    filter: Filter
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[int]] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ...) -> None: ...

class DeleteResponse(_message.Message):
    __slots__ = ("deleted",)
    DELETED_FIELD_NUMBER: _ClassVar[int]
    deleted: int
    def __init__(self, deleted: _Optional[int] = ...) -> None: ...

class GetRequest(_message.Message):
    __slots__ = ("collection", "ids", "dim", "filter", "limit", "with_payload", "payload_fields", "without_vectors")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    DIM_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    WITH_PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELDS_FIELD_NUMBER: _ClassVar[int]
    WITHOUT_VECTORS_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[int]
    dim: int
    filter: Filter
    limit: int
    with_payload: bool
    payload_fields: _containers.RepeatedScalarFieldContainer[str]
    without_vectors: bool
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[int]] = ..., dim: _Optional[int] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ..., limit: _Optional[int] = ..., with_payload: _Optional[bool] = ..., payload_fields: _Optional[_Iterable[str]] = ..., without_vectors: _Optional[bool] = ...) -> None: ...

class GetResponse(_message.Message):
    __slots__ = ("ids", "vectors", "missing_ids", "payload")
    IDS_FIELD_NUMBER: _ClassVar[int]
    VECTORS_FIELD_NUMBER: _ClassVar[int]
    MISSING_IDS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    ids: _containers.RepeatedScalarFieldContainer[int]
    vectors: Matrix
    missing_ids: _containers.RepeatedScalarFieldContainer[int]
    payload: _containers.RepeatedCompositeFieldContainer[PayloadColumn]
    def __init__(self, ids: _Optional[_Iterable[int]] = ..., vectors: _Optional[_Union[Matrix, _Mapping]] = ..., missing_ids: _Optional[_Iterable[int]] = ..., payload: _Optional[_Iterable[_Union[PayloadColumn, _Mapping]]] = ...) -> None: ...

class FunnelStage(_message.Message):
    __slots__ = ("dim", "candidates")
    DIM_FIELD_NUMBER: _ClassVar[int]
    CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    dim: int
    candidates: int
    def __init__(self, dim: _Optional[int] = ..., candidates: _Optional[int] = ...) -> None: ...

class SearchRequest(_message.Message):
    __slots__ = ("collection", "queries", "k", "dim", "funnel", "allow_partial", "target_recall", "ann", "ef", "candidates", "filter", "with_payload", "payload_fields")
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
    FILTER_FIELD_NUMBER: _ClassVar[int]
    WITH_PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELDS_FIELD_NUMBER: _ClassVar[int]
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
    filter: Filter
    with_payload: bool
    payload_fields: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, collection: _Optional[str] = ..., queries: _Optional[_Union[Matrix, _Mapping]] = ..., k: _Optional[int] = ..., dim: _Optional[int] = ..., funnel: _Optional[_Iterable[_Union[FunnelStage, _Mapping]]] = ..., allow_partial: _Optional[bool] = ..., target_recall: _Optional[float] = ..., ann: _Optional[bool] = ..., ef: _Optional[int] = ..., candidates: _Optional[int] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ..., with_payload: _Optional[bool] = ..., payload_fields: _Optional[_Iterable[str]] = ...) -> None: ...

class SearchResponse(_message.Message):
    __slots__ = ("queries", "k", "ids", "scores", "missing_shards", "funnel_used", "calibrated_recall", "ann_ef", "ann_candidates", "payload")
    QUERIES_FIELD_NUMBER: _ClassVar[int]
    K_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    SCORES_FIELD_NUMBER: _ClassVar[int]
    MISSING_SHARDS_FIELD_NUMBER: _ClassVar[int]
    FUNNEL_USED_FIELD_NUMBER: _ClassVar[int]
    CALIBRATED_RECALL_FIELD_NUMBER: _ClassVar[int]
    ANN_EF_FIELD_NUMBER: _ClassVar[int]
    ANN_CANDIDATES_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    queries: int
    k: int
    ids: bytes
    scores: bytes
    missing_shards: _containers.RepeatedScalarFieldContainer[int]
    funnel_used: _containers.RepeatedCompositeFieldContainer[FunnelStage]
    calibrated_recall: float
    ann_ef: int
    ann_candidates: int
    payload: _containers.RepeatedCompositeFieldContainer[PayloadColumn]
    def __init__(self, queries: _Optional[int] = ..., k: _Optional[int] = ..., ids: _Optional[bytes] = ..., scores: _Optional[bytes] = ..., missing_shards: _Optional[_Iterable[int]] = ..., funnel_used: _Optional[_Iterable[_Union[FunnelStage, _Mapping]]] = ..., calibrated_recall: _Optional[float] = ..., ann_ef: _Optional[int] = ..., ann_candidates: _Optional[int] = ..., payload: _Optional[_Iterable[_Union[PayloadColumn, _Mapping]]] = ...) -> None: ...

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

class PayloadField(_message.Message):
    __slots__ = ("name", "type")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: PayloadType
    def __init__(self, name: _Optional[str] = ..., type: _Optional[_Union[PayloadType, str]] = ...) -> None: ...

class PayloadColumn(_message.Message):
    __slots__ = ("name", "type", "keywords", "list_lengths", "integers", "floats", "booleans", "present")
    NAME_FIELD_NUMBER: _ClassVar[int]
    TYPE_FIELD_NUMBER: _ClassVar[int]
    KEYWORDS_FIELD_NUMBER: _ClassVar[int]
    LIST_LENGTHS_FIELD_NUMBER: _ClassVar[int]
    INTEGERS_FIELD_NUMBER: _ClassVar[int]
    FLOATS_FIELD_NUMBER: _ClassVar[int]
    BOOLEANS_FIELD_NUMBER: _ClassVar[int]
    PRESENT_FIELD_NUMBER: _ClassVar[int]
    name: str
    type: PayloadType
    keywords: _containers.RepeatedScalarFieldContainer[str]
    list_lengths: _containers.RepeatedScalarFieldContainer[int]
    integers: _containers.RepeatedScalarFieldContainer[int]
    floats: _containers.RepeatedScalarFieldContainer[float]
    booleans: _containers.RepeatedScalarFieldContainer[bool]
    present: bytes
    def __init__(self, name: _Optional[str] = ..., type: _Optional[_Union[PayloadType, str]] = ..., keywords: _Optional[_Iterable[str]] = ..., list_lengths: _Optional[_Iterable[int]] = ..., integers: _Optional[_Iterable[int]] = ..., floats: _Optional[_Iterable[float]] = ..., booleans: _Optional[_Iterable[bool]] = ..., present: _Optional[bytes] = ...) -> None: ...

class Filter(_message.Message):
    __slots__ = ("all_of", "any_of", "none_of", "match", "range", "exists")
    ALL_OF_FIELD_NUMBER: _ClassVar[int]
    ANY_OF_FIELD_NUMBER: _ClassVar[int]
    NONE_OF_FIELD_NUMBER: _ClassVar[int]
    MATCH_FIELD_NUMBER: _ClassVar[int]
    RANGE_FIELD_NUMBER: _ClassVar[int]
    EXISTS_FIELD_NUMBER: _ClassVar[int]
    all_of: FilterList
    any_of: FilterList
    none_of: Filter
    match: Match
    range: Range
    exists: str
    def __init__(self, all_of: _Optional[_Union[FilterList, _Mapping]] = ..., any_of: _Optional[_Union[FilterList, _Mapping]] = ..., none_of: _Optional[_Union[Filter, _Mapping]] = ..., match: _Optional[_Union[Match, _Mapping]] = ..., range: _Optional[_Union[Range, _Mapping]] = ..., exists: _Optional[str] = ...) -> None: ...

class FilterList(_message.Message):
    __slots__ = ("filters",)
    FILTERS_FIELD_NUMBER: _ClassVar[int]
    filters: _containers.RepeatedCompositeFieldContainer[Filter]
    def __init__(self, filters: _Optional[_Iterable[_Union[Filter, _Mapping]]] = ...) -> None: ...

class Match(_message.Message):
    __slots__ = ("field", "keyword", "integer", "boolean", "number", "any")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    KEYWORD_FIELD_NUMBER: _ClassVar[int]
    INTEGER_FIELD_NUMBER: _ClassVar[int]
    BOOLEAN_FIELD_NUMBER: _ClassVar[int]
    NUMBER_FIELD_NUMBER: _ClassVar[int]
    ANY_FIELD_NUMBER: _ClassVar[int]
    field: str
    keyword: str
    integer: int
    boolean: bool
    number: float
    any: MatchAny
    def __init__(self, field: _Optional[str] = ..., keyword: _Optional[str] = ..., integer: _Optional[int] = ..., boolean: _Optional[bool] = ..., number: _Optional[float] = ..., any: _Optional[_Union[MatchAny, _Mapping]] = ...) -> None: ...

class MatchAny(_message.Message):
    __slots__ = ("keywords", "integers", "numbers")
    KEYWORDS_FIELD_NUMBER: _ClassVar[int]
    INTEGERS_FIELD_NUMBER: _ClassVar[int]
    NUMBERS_FIELD_NUMBER: _ClassVar[int]
    keywords: _containers.RepeatedScalarFieldContainer[str]
    integers: _containers.RepeatedScalarFieldContainer[int]
    numbers: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, keywords: _Optional[_Iterable[str]] = ..., integers: _Optional[_Iterable[int]] = ..., numbers: _Optional[_Iterable[float]] = ...) -> None: ...

class Range(_message.Message):
    __slots__ = ("field", "gt", "gte", "lt", "lte")
    FIELD_FIELD_NUMBER: _ClassVar[int]
    GT_FIELD_NUMBER: _ClassVar[int]
    GTE_FIELD_NUMBER: _ClassVar[int]
    LT_FIELD_NUMBER: _ClassVar[int]
    LTE_FIELD_NUMBER: _ClassVar[int]
    field: str
    gt: float
    gte: float
    lt: float
    lte: float
    def __init__(self, field: _Optional[str] = ..., gt: _Optional[float] = ..., gte: _Optional[float] = ..., lt: _Optional[float] = ..., lte: _Optional[float] = ...) -> None: ...

class SetPayloadRequest(_message.Message):
    __slots__ = ("collection", "ids", "payload")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    IDS_FIELD_NUMBER: _ClassVar[int]
    PAYLOAD_FIELD_NUMBER: _ClassVar[int]
    collection: str
    ids: _containers.RepeatedScalarFieldContainer[int]
    payload: _containers.RepeatedCompositeFieldContainer[PayloadColumn]
    def __init__(self, collection: _Optional[str] = ..., ids: _Optional[_Iterable[int]] = ..., payload: _Optional[_Iterable[_Union[PayloadColumn, _Mapping]]] = ...) -> None: ...

class SetPayloadResponse(_message.Message):
    __slots__ = ("updated",)
    UPDATED_FIELD_NUMBER: _ClassVar[int]
    updated: int
    def __init__(self, updated: _Optional[int] = ...) -> None: ...

class CountRequest(_message.Message):
    __slots__ = ("collection", "filter")
    COLLECTION_FIELD_NUMBER: _ClassVar[int]
    FILTER_FIELD_NUMBER: _ClassVar[int]
    collection: str
    filter: Filter
    def __init__(self, collection: _Optional[str] = ..., filter: _Optional[_Union[Filter, _Mapping]] = ...) -> None: ...

class CountResponse(_message.Message):
    __slots__ = ("count",)
    COUNT_FIELD_NUMBER: _ClassVar[int]
    count: int
    def __init__(self, count: _Optional[int] = ...) -> None: ...
