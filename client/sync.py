"""Client: the blocking gRPC SDK. numpy in, numpy out."""
from __future__ import annotations

import functools
from typing import Iterable

import grpc

from nestvec.client import _messages as m
from nestvec.client._channel import auth_metadata, make_channel, warn_if_plaintext_key
from nestvec.v1 import nestvec_pb2 as pb
from nestvec.v1 import nestvec_pb2_grpc as pb_grpc

DEFAULT_TIMEOUT = 30.0


def _wrap_errors(method):
    @functools.wraps(method)
    def wrapped(*args, **kwargs):
        try:
            return method(*args, **kwargs)
        except grpc.RpcError as err:
            raise m.rpc_error(err) from None
    return wrapped


class Client:
    """Blocking client. Every call takes `timeout` (seconds; default the client's).

    Errors raise `nestvec.NestvecError` subclasses whose `.code` is the gRPC status name.
    """

    def __init__(self, address: str = "127.0.0.1:50051", timeout: float = DEFAULT_TIMEOUT, *,
                 api_key: str | None = None, tls: bool = False,
                 root_certificates: bytes | None = None, client_certificate: bytes | None = None,
                 client_key: bytes | None = None, options: list | None = None):
        self.address = address
        self.timeout = timeout
        warn_if_plaintext_key(address, api_key, tls, root_certificates, client_certificate)
        self._md = auth_metadata(api_key)
        self._channel = make_channel(address, aio=False, tls=tls, root_certificates=root_certificates,
                                     client_certificate=client_certificate, client_key=client_key,
                                     options=options)
        self._stub = pb_grpc.VectorSearchStub(self._channel)

    def close(self) -> None:
        self._channel.close()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _t(self, timeout):
        return self.timeout if timeout is None else timeout

    @_wrap_errors
    def create_collection(self, name: str, dim: int, metric: str = "cosine", nested_dims=None,
                          shards: int | None = None, timeout: float | None = None, *,
                          first_stage: str = "float32", index: dict | None = None,
                          payload_schema: dict | None = None) -> m.CollectionInfo:
        """`first_stage`: "float32", "float16" or "int8" copies of the leading dims for funnel
        shortlists (docs/funnel-planning.md); returned scores are exact either way.
        `index`: an ANN index built in the background, e.g. {"type": "hnsw", "dim": 64,
        "m": 16, "ef_construction": 200} (docs/ann.md)."""
        req = m.create_request(name, dim, metric, nested_dims, shards, first_stage, index,
                               payload_schema)
        return m.read_info(self._stub.CreateCollection(req, timeout=self._t(timeout), metadata=self._md).collection)

    @_wrap_errors
    def create_index(self, collection: str, index: dict | None = None,
                     timeout: float | None = None) -> m.CollectionInfo:
        """Add or replace the collection's ANN index; shards build it in the background
        (exact search keeps serving). Poll describe_collection(...).index_ready."""
        req = pb.CreateIndexRequest(collection=collection, index=m.index_spec(index or {}))
        return m.read_info(self._stub.CreateIndex(req, timeout=self._t(timeout), metadata=self._md).collection)

    @_wrap_errors
    def describe_collection(self, name: str, timeout: float | None = None) -> m.CollectionInfo:
        resp = self._stub.DescribeCollection(pb.DescribeCollectionRequest(name=name),
                                             timeout=self._t(timeout), metadata=self._md)
        return m.read_info(resp.collection)

    @_wrap_errors
    def list_collections(self, timeout: float | None = None) -> list[m.CollectionInfo]:
        resp = self._stub.ListCollections(pb.ListCollectionsRequest(), timeout=self._t(timeout), metadata=self._md)
        return [m.read_info(c) for c in resp.collections]

    @_wrap_errors
    def drop_collection(self, name: str, timeout: float | None = None) -> None:
        self._stub.DropCollection(pb.DropCollectionRequest(name=name), timeout=self._t(timeout), metadata=self._md)

    @_wrap_errors
    def upsert(self, collection: str, ids, vectors, *, batch_bytes: int = m.DEFAULT_BATCH_BYTES,
               dtype: str = "float32", payload=None, timeout: float | None = None) -> int:
        """Insert or replace vectors; big arrays go as several requests. Returns rows written.
        `payload`: one dict per row, or {field: [one value per row]} (docs/filters.md); an
        upsert replaces a row's payload."""
        return sum(self._stub.Upsert(req, timeout=self._t(timeout), metadata=self._md).upserted
                   for req in m.upsert_requests(collection, ids, vectors, batch_bytes, dtype, payload))

    @_wrap_errors
    def upsert_stream(self, collection: str, batches: Iterable, *, dtype: str = "float32",
                      timeout: float | None = None) -> m.StreamResult:
        """Stream (ids, vectors) or (ids, vectors, payload) batches in one call (bulk loads);
        one summary at the end."""
        def requests():
            for batch in batches:
                yield from m.upsert_requests(collection, *batch[:2], dtype=dtype, payload=m.batch_payload(batch))
        resp = self._stub.UpsertStream(requests(), timeout=self._t(timeout), metadata=self._md)
        return m.StreamResult(resp.upserted, resp.batches)

    @_wrap_errors
    def delete(self, collection: str, ids=None, timeout: float | None = None, *, filter=None) -> int:
        """Delete by id, or every row matching `filter` (docs/filters.md); returns how many existed."""
        req = pb.DeleteRequest(collection=collection, ids=[] if ids is None else m.as_ids(ids).tolist())
        if filter is not None:
            req.filter.CopyFrom(m.filter_message(filter))
        return (self._stub.Delete(req, timeout=self._t(timeout), metadata=self._md)).deleted

    @_wrap_errors
    def set_payload(self, collection: str, ids, payload, timeout: float | None = None) -> int:
        """Change only the given payload fields of stored ids (vectors untouched; None clears
        a field); returns how many ids were stored."""
        ids = m.as_ids(ids)
        req = pb.SetPayloadRequest(collection=collection, ids=ids.tolist(),
                                   payload=m.payload_columns(payload, ids.size))
        return (self._stub.SetPayload(req, timeout=self._t(timeout), metadata=self._md)).updated

    @_wrap_errors
    def count(self, collection: str, filter=None, timeout: float | None = None) -> int:
        """Live rows matching `filter` (all of them without one)."""
        req = pb.CountRequest(collection=collection)
        if filter is not None:
            req.filter.CopyFrom(m.filter_message(filter))
        return (self._stub.Count(req, timeout=self._t(timeout), metadata=self._md)).count

    @_wrap_errors
    def get(self, collection: str, ids=None, dim: int | None = None,
            timeout: float | None = None, *, with_payload: bool = False, payload_fields=None,
            filter=None, limit: int | None = None, with_vectors: bool = True) -> m.GetResult:
        """Stored rows by id, in the order asked; or with `filter` the `limit` (default 100)
        smallest matching ids. `with_payload` / `payload_fields`: their payloads too."""
        req = m.get_request(collection, ids, dim, with_payload, payload_fields, filter, limit, with_vectors)
        return m.read_get(self._stub.Get(req, timeout=self._t(timeout), metadata=self._md),
                          req.with_payload)

    @_wrap_errors
    def search(self, collection: str, queries, k: int = 10, dim: int | None = None, funnel=None,
               *, allow_partial: bool = False, target_recall: float | None = None,
               ann: bool = False, ef: int | None = None, candidates: int | None = None,
               dtype: str = "float32", timeout: float | None = None, filter=None,
               with_payload: bool = False, payload_fields=None) -> m.SearchResult:
        """Top-k for each query row at prefix `dim` (None: full), optionally via a funnel.

        `funnel`: a list of (dim, candidates) stages, or "auto". `target_recall`
        (instead of a funnel): the recall@k needed; the result says which funnel
        ran (`funnel_used`) and its `calibrated_recall`. `ann=True`: candidates from the
        collection's ANN graph (beam width `ef`, `candidates` per shard; defaults in
        docs/ann.md), re-ranked exactly at the funnel's stages and `dim`.
        `filter`: only rows matching it are candidates, e.g. {"pos": "noun", "n": {"$lt": 5}}
        (docs/filters.md); `with_payload` / `payload_fields`: results' payloads in `payloads`.
        """
        req = m.search_request(collection, queries, k, dim, funnel, dtype, allow_partial,
                               target_recall, ann, ef, candidates, filter, with_payload,
                               payload_fields)
        return m.read_search(self._stub.Search(req, timeout=self._t(timeout), metadata=self._md))
