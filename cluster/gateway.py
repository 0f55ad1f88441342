"""The gRPC gateway: wire messages in, coordinator calls, wire messages out.

It holds no data and does no math: it decodes requests (nestvec.wire), calls
the coordinator's async methods with the client's deadline, encodes results,
and maps nestvec errors to gRPC status codes with their message.
"""
from __future__ import annotations

import functools
import logging

import grpc
import numpy as np

from nestvec import wire
from nestvec.cluster.collection import CollectionConfig
from nestvec.cluster.coordinator import Coordinator
from nestvec.errors import InvalidArgument, NestvecError
from nestvec.v1 import nestvec_pb2 as pb
from nestvec.v1 import nestvec_pb2_grpc as pb_grpc

log = logging.getLogger("nestvec.gateway")


def _rpc(handler):
    """Run a handler with the coordinator's errors mapped to gRPC status codes."""

    @functools.wraps(handler)
    async def wrapped(self, request, context):
        try:
            return await handler(self, request, context)
        except NestvecError as err:
            await context.abort(grpc.StatusCode[err.code], err.message)
        except Exception:  # a bug, not bad input: log it whole, tell the client little
            log.exception("%s failed", handler.__name__)
            await context.abort(grpc.StatusCode.INTERNAL,
                                f"internal error in {handler.__name__}; see the server log")

    return wrapped


def _metric_name(metric: int) -> str:
    if metric == pb.METRIC_UNSPECIFIED:
        raise InvalidArgument("metric is unspecified: set COSINE, DOT or L2")
    name = wire.METRIC_FROM_WIRE.get(metric)
    if name is None:
        raise InvalidArgument(f"unknown metric {metric}: use COSINE (1), DOT (2) or L2 (3)")
    return name


def _collection_info(cfg: CollectionConfig, stats: list[dict] | None = None) -> pb.CollectionInfo:
    info = pb.CollectionInfo(name=cfg.name, dim=cfg.dim, metric=wire.METRIC_TO_WIRE[cfg.metric],
                             nested_dims=list(cfg.nested_dims), shards=cfg.shards)
    for s in stats or ():
        if s.get("down"):
            info.shard_info.add(shard=s["shard"], down=True)
            continue
        info.shard_info.add(shard=s["shard"], vectors=s["vectors"], tombstones=s["tombstones"],
                            capacity=s["capacity"], actor_name=s["actor_name"],
                            wal_bytes=s.get("wal_bytes", 0))
        info.vectors += s["vectors"]
    return info


def _ids(values) -> np.ndarray:
    return np.fromiter(values, dtype=np.uint64, count=len(values))


class VectorSearchServicer(pb_grpc.VectorSearchServicer):
    def __init__(self, coordinator: Coordinator):
        self.coord = coordinator

    @_rpc
    async def CreateCollection(self, request, context):
        cfg = await self.coord.acreate_collection(
            request.name, request.dim, _metric_name(request.metric),
            list(request.nested_dims) or None, request.shards or None,
            timeout=context.time_remaining())
        return pb.CreateCollectionResponse(collection=_collection_info(cfg))

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
            collection = request.collection or collection
            if not collection:
                raise InvalidArgument("the first UpsertStream message must name the collection")
            request.collection = collection
            try:
                total += await self._upsert(request, context)
            except InvalidArgument as err:
                raise InvalidArgument(
                    f"batch {batches} of the stream: {err.message} ({batches} earlier batches, "
                    f"{total} rows, were written)") from None
            batches += 1
        return pb.UpsertStreamResponse(upserted=total, batches=batches)

    async def _upsert(self, request, context) -> int:
        if not request.HasField("vectors"):
            raise InvalidArgument("vectors are missing: send a Matrix with one row per id")
        vectors = wire.decode_matrix(request.vectors, "vectors")
        return await self.coord.aupsert(request.collection, _ids(request.ids), vectors,
                                        timeout=context.time_remaining())

    @_rpc
    async def Delete(self, request, context):
        n = await self.coord.adelete(request.collection, _ids(request.ids),
                                     timeout=context.time_remaining())
        return pb.DeleteResponse(deleted=n)

    @_rpc
    async def Get(self, request, context):
        res = await self.coord.aget(request.collection, _ids(request.ids), request.dim,
                                    timeout=context.time_remaining())
        return pb.GetResponse(ids=res.ids.tolist(), vectors=wire.encode_matrix(res.vectors),
                              missing_ids=res.missing_ids.tolist())

    @_rpc
    async def Search(self, request, context):
        if not request.HasField("queries"):
            raise InvalidArgument("queries are missing: send a Matrix with one query per row")
        queries = wire.decode_matrix(request.queries, "queries")
        funnel = [(s.dim, s.candidates) for s in request.funnel]
        res = await self.coord.asearch(request.collection, queries, request.k, request.dim,
                                       funnel, request.allow_partial,
                                       timeout=context.time_remaining())
        return pb.SearchResponse(queries=res.ids.shape[0], k=res.ids.shape[1],
                                 ids=wire.encode_ids(res.ids), scores=wire.encode_scores(res.scores),
                                 missing_shards=res.missing_shards)
