"""AsyncClient: the asyncio gRPC SDK, same calls as Client, awaited."""
from __future__ import annotations

import functools
from typing import AsyncIterable, Iterable

import grpc

from nestvec.client import _messages as m
from nestvec.client._channel import auth_metadata, make_channel, warn_if_plaintext_key
from nestvec.client.sync import DEFAULT_TIMEOUT
from nestvec.v1 import nestvec_pb2 as pb
from nestvec.v1 import nestvec_pb2_grpc as pb_grpc


def _wrap_errors(method):
    @functools.wraps(method)
    async def wrapped(*args, **kwargs):
        try:
            return await method(*args, **kwargs)
        except grpc.RpcError as err:
            raise m.rpc_error(err) from None
    return wrapped


class AsyncClient:
    """Asyncio client; use `async with AsyncClient(addr) as c:` or call `await close()`."""

    def __init__(self, address: str = "127.0.0.1:50051", timeout: float = DEFAULT_TIMEOUT, *,
                 api_key: str | None = None, tls: bool = False,
                 root_certificates: bytes | None = None, client_certificate: bytes | None = None,
                 client_key: bytes | None = None, options: list | None = None):
        self.address = address
        self.timeout = timeout
        warn_if_plaintext_key(address, api_key, tls, root_certificates, client_certificate)
        self._md = auth_metadata(api_key)
        self._channel = make_channel(address, aio=True, tls=tls, root_certificates=root_certificates,
                                     client_certificate=client_certificate, client_key=client_key,
                                     options=options)
        self._stub = pb_grpc.VectorSearchStub(self._channel)

    async def close(self) -> None:
        await self._channel.close()

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc) -> None:
        await self.close()

    def _t(self, timeout):
        return self.timeout if timeout is None else timeout

    @_wrap_errors
    async def create_collection(self, name: str, dim: int, metric: str = "cosine",
                                nested_dims=None, shards: int | None = None,
                                timeout: float | None = None, *, first_stage: str = "float32",
                                index: dict | None = None,
                          payload_schema: dict | None = None) -> m.CollectionInfo:
        req = m.create_request(name, dim, metric, nested_dims, shards, first_stage, index,
                               payload_schema)
        return m.read_info((await self._stub.CreateCollection(req, timeout=self._t(timeout), metadata=self._md)).collection)

    @_wrap_errors
    async def create_index(self, collection: str, index: dict | None = None,
                           timeout: float | None = None) -> m.CollectionInfo:
        req = pb.CreateIndexRequest(collection=collection, index=m.index_spec(index or {}))
        return m.read_info((await self._stub.CreateIndex(req, timeout=self._t(timeout),
                                                         metadata=self._md)).collection)

    @_wrap_errors
    async def describe_collection(self, name: str, timeout: float | None = None) -> m.CollectionInfo:
        resp = await self._stub.DescribeCollection(pb.DescribeCollectionRequest(name=name),
                                                   timeout=self._t(timeout), metadata=self._md)
        return m.read_info(resp.collection)

    @_wrap_errors
    async def list_collections(self, timeout: float | None = None) -> list[m.CollectionInfo]:
        resp = await self._stub.ListCollections(pb.ListCollectionsRequest(), timeout=self._t(timeout), metadata=self._md)
        return [m.read_info(c) for c in resp.collections]

    @_wrap_errors
    async def drop_collection(self, name: str, timeout: float | None = None) -> None:
        await self._stub.DropCollection(pb.DropCollectionRequest(name=name), timeout=self._t(timeout), metadata=self._md)

    @_wrap_errors
    async def upsert(self, collection: str, ids, vectors, *, batch_bytes: int = m.DEFAULT_BATCH_BYTES,
                     dtype: str = "float32", payload=None, timeout: float | None = None) -> int:
        total = 0
        for req in m.upsert_requests(collection, ids, vectors, batch_bytes, dtype, payload):
            total += (await self._stub.Upsert(req, timeout=self._t(timeout), metadata=self._md)).upserted
        return total

    @_wrap_errors
    async def upsert_stream(self, collection: str, batches: Iterable | AsyncIterable, *,
                            dtype: str = "float32", timeout: float | None = None) -> m.StreamResult:
        async def requests():
            if hasattr(batches, "__aiter__"):
                async for batch in batches:
                    for req in m.upsert_requests(collection, *batch[:2], dtype=dtype, payload=m.batch_payload(batch)):
                        yield req
            else:
                for batch in batches:
                    for req in m.upsert_requests(collection, *batch[:2], dtype=dtype, payload=m.batch_payload(batch)):
                        yield req
        resp = await self._stub.UpsertStream(requests(), timeout=self._t(timeout), metadata=self._md)
        return m.StreamResult(resp.upserted, resp.batches)

    @_wrap_errors
    async def delete(self, collection: str, ids=None, timeout: float | None = None, *, filter=None) -> int:
        """Delete by id, or every row matching `filter` (docs/filters.md); returns how many existed."""
        req = pb.DeleteRequest(collection=collection, ids=[] if ids is None else m.as_ids(ids).tolist())
        if filter is not None:
            req.filter.CopyFrom(m.filter_message(filter))
        return (await self._stub.Delete(req, timeout=self._t(timeout), metadata=self._md)).deleted

    @_wrap_errors
    async def set_payload(self, collection: str, ids, payload, timeout: float | None = None) -> int:
        """Change only the given payload fields of stored ids (vectors untouched; None clears
        a field); returns how many ids were stored."""
        ids = m.as_ids(ids)
        req = pb.SetPayloadRequest(collection=collection, ids=ids.tolist(),
                                   payload=m.payload_columns(payload, ids.size))
        return (await self._stub.SetPayload(req, timeout=self._t(timeout), metadata=self._md)).updated

    @_wrap_errors
    async def count(self, collection: str, filter=None, timeout: float | None = None) -> int:
        """Live rows matching `filter` (all of them without one)."""
        req = pb.CountRequest(collection=collection)
        if filter is not None:
            req.filter.CopyFrom(m.filter_message(filter))
        return (await self._stub.Count(req, timeout=self._t(timeout), metadata=self._md)).count

    @_wrap_errors
    async def get(self, collection: str, ids=None, dim: int | None = None,
            timeout: float | None = None, *, with_payload: bool = False, payload_fields=None,
            filter=None, limit: int | None = None, with_vectors: bool = True) -> m.GetResult:
        """Stored rows by id, in the order asked; or with `filter` the `limit` (default 100)
        smallest matching ids. `with_payload` / `payload_fields`: their payloads too."""
        req = m.get_request(collection, ids, dim, with_payload, payload_fields, filter, limit, with_vectors)
        return m.read_get(await self._stub.Get(req, timeout=self._t(timeout), metadata=self._md),
                          req.with_payload)

    @_wrap_errors
    async def search(self, collection: str, queries, k: int = 10, dim: int | None = None,
                     funnel=None, *, allow_partial: bool = False,
                     target_recall: float | None = None, ann: bool = False,
                     ef: int | None = None, candidates: int | None = None,
                     dtype: str = "float32", timeout: float | None = None, filter=None,
                     with_payload: bool = False, payload_fields=None) -> m.SearchResult:
        req = m.search_request(collection, queries, k, dim, funnel, dtype, allow_partial,
                               target_recall, ann, ef, candidates, filter, with_payload,
                               payload_fields)
        return m.read_search(await self._stub.Search(req, timeout=self._t(timeout), metadata=self._md))
