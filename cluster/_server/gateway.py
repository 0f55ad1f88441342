"""The gRPC gateway: wire messages in, coordinator calls, wire messages out.

It holds no data and does no math: it decodes requests (nestvec.wire), calls
the coordinator's async methods with the client's deadline, encodes results,
and maps nestvec errors to gRPC status codes with their message.

Every call goes through one guard (`_rpc`): request id (returned in trailing
metadata as `x-request-id`), API-key check and role, the concurrency limit,
error mapping, metrics and one log line. Requests are parsed with
deserializers that turn undecodable bytes into INVALID_ARGUMENT instead of
gRPC's UNKNOWN.
"""
from __future__ import annotations

import asyncio
import functools
import logging
import time
import uuid

import grpc
import numpy as np
from google.protobuf.message import DecodeError

from nestvec import wire
from nestvec.cluster._server import auth, payload_wire
from nestvec.cluster._distributed.batcher import SearchBatcher
from nestvec.cluster._engine.collection import CollectionConfig
from nestvec.cluster._distributed.coordinator import Coordinator
from nestvec.cluster._engine.limits import DEFAULT_LIMITS, Limits
from nestvec.cluster._server.metrics import GatewayMetrics
from nestvec.errors import (InvalidArgument, NestvecError, PermissionDenied, ResourceExhausted,
                            Unauthenticated)
from nestvec.v1 import nestvec_pb2 as pb

log = logging.getLogger("nestvec.gateway")
SERVICE = pb.DESCRIPTOR.services_by_name["VectorSearch"]


class Malformed:
    """Stands in for a request whose bytes are not the expected protobuf message."""

    def __init__(self, type_name: str, error: str):
        self.type_name, self.error = type_name, error


def _safe_deserializer(message_cls):
    def parse(data: bytes):
        try:
            return message_cls.FromString(data)
        except (DecodeError, ValueError, RuntimeError) as err:
            return Malformed(message_cls.DESCRIPTOR.full_name, str(err))
    return parse


def _check_parsed(request) -> None:
    if isinstance(request, Malformed):
        raise InvalidArgument(f"the request is not a valid {request.type_name} message: {request.error}")


class CallGuard:
    """What every call passes before and after its handler: auth, limit, metrics, log."""

    def __init__(self, keys: auth.KeyStore | None, limits: Limits, metrics: GatewayMetrics):
        self.keys = keys if keys is not None and len(keys) else None
        self.limits = limits
        self.metrics = metrics
        self.in_flight = 0

    def admit(self, call: str, context) -> None:
        """Raise unless the caller may make this call now; on success, count it in flight."""
        if self.keys is not None:
            role = self._role(context)
            if not auth.allows(role, call):
                raise PermissionDenied(
                    f"{call} needs the {auth.CALL_ROLES[call]!r} role; this API key has {role!r}")
        if self.in_flight >= self.limits.max_concurrent:
            self.metrics.rejected.inc()
            raise ResourceExhausted(
                f"the gateway is serving its limit of {self.limits.max_concurrent} concurrent calls; "
                "retry with backoff")
        self.in_flight += 1
        self.metrics.in_flight.set(self.in_flight)

    def release(self) -> None:
        self.in_flight -= 1
        self.metrics.in_flight.set(self.in_flight)

    def _role(self, context) -> str:
        header = dict(context.invocation_metadata() or ()).get("authorization", "")
        scheme, _, key = header.partition(" ")
        if scheme.lower() != "bearer" or not key.strip():
            raise Unauthenticated("missing API key: send metadata 'authorization: Bearer <key>'")
        role = self.keys.role_for(key.strip())
        if role is None:
            raise Unauthenticated("unknown API key")
        return role


def _rpc(handler):
    """Run a handler through the guard, with errors mapped to gRPC status codes."""
    call = handler.__name__

    @functools.wraps(handler)
    async def wrapped(self, request, context):
        request_id = uuid.uuid4().hex[:16]
        trailer = (("x-request-id", request_id),)
        context.set_trailing_metadata(trailer)
        start, code, admitted = time.perf_counter(), "OK", False
        try:
            self.guard.admit(call, context)
            admitted = True
            _check_parsed(request)
            return await handler(self, request, context)
        except NestvecError as err:
            code = err.code
            log.info("request_id=%s method=%s code=%s error=%r", request_id, call, code, err.message)
            await context.abort(grpc.StatusCode[code], err.message, trailing_metadata=trailer)
        except asyncio.CancelledError:  # the client went away or its deadline passed
            code = "CANCELLED"
            raise
        except Exception:  # a bug, not bad input: log it whole, tell the client little
            code = "INTERNAL"
            log.exception("request_id=%s method=%s code=INTERNAL", request_id, call)
            await context.abort(grpc.StatusCode.INTERNAL,
                                f"internal error in {call} (request id {request_id}); "
                                "see the server log", trailing_metadata=trailer)
        finally:
            if admitted:
                self.guard.release()
            seconds = time.perf_counter() - start
            self.guard.metrics.observe(call, code, seconds)
            if log.isEnabledFor(logging.DEBUG):
                log.debug("request_id=%s method=%s code=%s ms=%.3f peer=%s", request_id, call, code,
                          1000 * seconds, context.peer())

    return wrapped


def _metric_name(metric: int) -> str:
    if metric == pb.METRIC_UNSPECIFIED:
        raise InvalidArgument("metric is unspecified: set COSINE, DOT or L2")
    name = wire.METRIC_FROM_WIRE.get(metric)
    if name is None:
        raise InvalidArgument(f"unknown metric {metric}: use COSINE (1), DOT (2) or L2 (3)")
    return name


def _precision_name(value: int) -> str:
    name = wire.PRECISION_FROM_WIRE.get(value)
    if name is None:
        raise InvalidArgument(f"unknown first_stage precision {value}: use FLOAT32 (0), "
                              "FLOAT16 (1) or INT8 (2)")
    return name


def _index_spec(spec) -> dict | None:
    """An IndexSpec message as the coordinator's dict (None if not set)."""
    if spec is None:
        return None
    return {"type": spec.type or "hnsw", "dim": spec.dim, "m": spec.m,
            "ef_construction": spec.ef_construction}


def _collection_info(cfg: CollectionConfig, stats: list[dict] | None = None) -> pb.CollectionInfo:
    info = pb.CollectionInfo(name=cfg.name, dim=cfg.dim, metric=wire.METRIC_TO_WIRE[cfg.metric],
                             nested_dims=list(cfg.nested_dims), shards=cfg.shards,
                             first_stage=wire.PRECISION_TO_WIRE[cfg.first_stage])
    if cfg.index is not None:
        info.index.CopyFrom(pb.IndexSpec(**cfg.index.to_dict()))
    info.payload_schema.extend(payload_wire.schema_to_wire(cfg.schema))
    for s in stats or ():
        if s.get("down"):
            info.shard_info.add(shard=s["shard"], down=True, health="DOWN",
                                down_reason=s.get("down_reason", ""))
            continue
        info.shard_info.add(shard=s["shard"], vectors=s["vectors"], tombstones=s["tombstones"],
                            capacity=s["capacity"], actor_name=s["actor_name"],
                            wal_bytes=s.get("wal_bytes", 0), node_id=s.get("node_id", ""),
                            node_ip=s.get("node_ip", ""), memory_bytes=s.get("memory_bytes", 0),
                            rss_bytes=s.get("rss_bytes", 0), health=s.get("health", "SERVING"),
                            restarts=s.get("restarts", 0), write_error=s.get("write_error", ""),
                            write_errors=s.get("write_errors", 0),
                            snapshot_error=s.get("snapshot_error", ""),
                            **{f: s[f] for f in wire.SHARD_INDEX_FIELDS if f in s})
        info.vectors += s["vectors"]
    return info


def _ids(values) -> np.ndarray:
    return np.fromiter(values, dtype=np.uint64, count=len(values))


class VectorSearchServicer:
    def __init__(self, coordinator: Coordinator, guard: CallGuard, batcher: SearchBatcher):
        self.coord = coordinator
        self.guard = guard
        self.batcher = batcher

    @_rpc
    async def CreateCollection(self, request, context):
        cfg = await self.coord.acreate_collection(
            request.name, request.dim, _metric_name(request.metric),
            list(request.nested_dims) or None, request.shards or None,
            _precision_name(request.first_stage),
            _index_spec(request.index) if request.HasField("index") else None,
            payload_wire.schema_from_wire(request.payload_schema),
            timeout=context.time_remaining())
        return pb.CreateCollectionResponse(collection=_collection_info(cfg))

    @_rpc
    async def CreateIndex(self, request, context):
        cfg, stats = await self.coord.acreate_index(
            request.collection, _index_spec(request.index) if request.HasField("index") else {},
            timeout=context.time_remaining())
        return pb.CreateIndexResponse(collection=_collection_info(cfg, stats))

    @_rpc
    async def DescribeCollection(self, request, context):
        cfg, stats = await self.coord.adescribe_collection(request.name,
                                                           timeout=context.time_remaining())
        return pb.DescribeCollectionResponse(collection=_collection_info(cfg, stats))

    @_rpc
    async def ListCollections(self, request, context):
        configs = await self.coord.alist_collections(timeout=context.time_remaining())
        return pb.ListCollectionsResponse(collections=[_collection_info(c) for c in configs])

    @_rpc
    async def DropCollection(self, request, context):
        await self.coord.adrop_collection(request.name, timeout=context.time_remaining())
        return pb.DropCollectionResponse()

    @_rpc
    async def Upsert(self, request, context):
        n = await self._upsert(request, context)
        return pb.UpsertResponse(upserted=n)

    @_rpc
    async def UpsertStream(self, request_iterator, context):
        total = batches = 0
        collection = None
        async for request in request_iterator:
            _check_parsed(request)
            collection = request.collection or collection
            if not collection:
                raise InvalidArgument("the first UpsertStream message must name the collection")
            request.collection = collection
            try:
                total += await self._upsert(request, context)
            except NestvecError as err:  # any failure says how much of the stream landed
                raise type(err)(
                    f"batch {batches} of the stream: {err.message} ({batches} earlier batches, "
                    f"{total} rows, were written)") from None
            batches += 1
        return pb.UpsertStreamResponse(upserted=total, batches=batches)

    async def _upsert(self, request, context) -> int:
        if not request.HasField("vectors"):
            raise InvalidArgument("vectors are missing: send a Matrix with one row per id")
        vectors = wire.decode_matrix(request.vectors, "vectors")
        payload = payload_wire.columns_from_wire(request.payload, len(request.ids)) if request.payload else None
        return await self.coord.aupsert(request.collection, _ids(request.ids), vectors, payload,
                                        timeout=context.time_remaining())

    @_rpc
    async def SetPayload(self, request, context):
        payload = payload_wire.columns_from_wire(request.payload, len(request.ids))
        n = await self.coord.aset_payload(request.collection, _ids(request.ids), payload,
                                          timeout=context.time_remaining())
        return pb.SetPayloadResponse(updated=n)

    @_rpc
    async def Count(self, request, context):
        n = await self.coord.acount(request.collection, payload_wire.filter_of(request),
                                    timeout=context.time_remaining())
        return pb.CountResponse(count=n)

    @_rpc
    async def Delete(self, request, context):
        n = await self.coord.adelete(request.collection, _ids(request.ids), payload_wire.filter_of(request),
                                     timeout=context.time_remaining())
        return pb.DeleteResponse(deleted=n)

    @_rpc
    async def Get(self, request, context):
        res = await self.coord.aget(request.collection, _ids(request.ids), request.dim,
                                    request.with_payload, list(request.payload_fields) or None,
                                    not request.without_vectors, payload_wire.filter_of(request),
                                    request.limit, timeout=context.time_remaining())
        resp = pb.GetResponse(ids=res.ids.tolist(), missing_ids=res.missing_ids.tolist())
        if not request.without_vectors:
            resp.vectors.CopyFrom(wire.encode_matrix(res.vectors))
        if res.payload is not None:
            resp.payload.extend(payload_wire.columns_to_wire(res.payload))
        return resp

    @_rpc
    async def Search(self, request, context):
        if not request.HasField("queries"):
            raise InvalidArgument("queries are missing: send a Matrix with one query per row")
        queries = wire.decode_matrix(request.queries, "queries")
        funnel = [(s.dim, s.candidates) for s in request.funnel]
        res = await self.batcher.search(request.collection, queries, request.k, request.dim,
                                        funnel, request.allow_partial, context.time_remaining(),
                                        request.target_recall or None,
                                        (request.ann, request.ef, request.candidates)
                                        if request.ann or request.ef or request.candidates else (),
                                        payload_wire.filter_of(request), request.with_payload,
                                        list(request.payload_fields) or None)
        resp = pb.SearchResponse(queries=res.ids.shape[0], k=res.ids.shape[1],
                                 ids=wire.encode_ids(res.ids), scores=wire.encode_scores(res.scores),
                                 missing_shards=res.missing_shards)
        if res.payload is not None:
            resp.payload.extend(payload_wire.columns_to_wire(res.payload))
        if res.calibrated_recall is not None:
            for d, c in res.funnel_used:
                resp.funnel_used.add(dim=d, candidates=c)
            resp.calibrated_recall = res.calibrated_recall
            if res.ann_used:
                resp.ann_ef, resp.ann_candidates = res.ann_used
        return resp


def add_to_server(servicer: VectorSearchServicer, server) -> None:
    """Register the service with deserializers that never raise (see module doc)."""
    handlers = {}
    for m in SERVICE.methods:
        request_cls = getattr(pb, m.input_type.name)
        response_cls = getattr(pb, m.output_type.name)
        make = (grpc.stream_unary_rpc_method_handler if m.client_streaming
                else grpc.unary_unary_rpc_method_handler)
        handlers[m.name] = make(getattr(servicer, m.name),
                                request_deserializer=_safe_deserializer(request_cls),
                                response_serializer=response_cls.SerializeToString)
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(SERVICE.full_name, handlers),))
    server.add_registered_method_handlers(SERVICE.full_name, handlers)  # gRPC's faster dispatch


def make_servicer(coordinator: Coordinator, keys: auth.KeyStore | None = None,
                  limits: Limits = DEFAULT_LIMITS, metrics: GatewayMetrics | None = None,
                  batch_window: float = 0.001) -> VectorSearchServicer:
    metrics = metrics or GatewayMetrics()
    return VectorSearchServicer(coordinator, CallGuard(keys, limits, metrics),
                                SearchBatcher(coordinator, batch_window, metrics=metrics))
