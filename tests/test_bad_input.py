"""Bad requests over real gRPC: the exact status code, an informative message,
and no harm done.

Every case runs against the server the other tests use. After each one the
reference collection (created once for the module) must answer the same search
with the same result, hold exactly the vectors it held, and no collection may
have appeared or vanished. Bad writes target the reference collection itself,
with ids it already stores, so a partial write would be caught.
"""
from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Callable

import grpc
import numpy as np
import pytest

from nestvec import wire
from nestvec.client import Client
from nestvec.cluster._engine.collection import MAX_K
from nestvec.errors import NestvecError
from nestvec.v1 import nestvec_pb2 as pb
from nestvec.v1 import nestvec_pb2_grpc as pb_grpc

DIM = 128
N_REF = 300
MISSING = "no-such-collection"


@dataclass
class Ref:
    """The healthy reference collection and what it looked like before any bad call."""

    name: str
    ids: np.ndarray
    docs: np.ndarray
    queries: np.ndarray
    search: tuple[np.ndarray, np.ndarray] = None
    names: set = None

    def assert_unchanged(self, client: Client):
        res = client.search(self.name, self.queries, k=10)
        np.testing.assert_array_equal(res.ids, self.search[0])
        np.testing.assert_array_equal(res.scores, self.search[1])
        got = client.get(self.name, self.ids)
        assert got.missing_ids.size == 0
        np.testing.assert_array_equal(got.ids, self.ids)
        np.testing.assert_array_equal(got.vectors, self.docs)
        assert client.describe_collection(self.name).vectors == N_REF
        assert {c.name for c in client.list_collections()} == self.names


@pytest.fixture(scope="module")
def sdk(gateway):
    with Client(gateway.address, timeout=60) as c:
        yield c


@pytest.fixture(scope="module")
def stub(gateway):
    """The raw generated stub, for messages the SDK would never build."""
    with grpc.insecure_channel(gateway.address) as ch:
        yield pb_grpc.VectorSearchStub(ch)


@pytest.fixture(scope="module")
def ref(sdk, corpus):
    name = f"badinput-ref-{uuid.uuid4().hex[:6]}"
    ids = np.arange(N_REF, dtype=np.uint64) * np.uint64(101) + np.uint64(5)
    docs = np.ascontiguousarray(corpus["docs"][:N_REF, :DIM])
    sdk.create_collection(name, DIM, "cosine", shards=2)
    assert sdk.upsert(name, ids, docs) == N_REF
    r = Ref(name, ids, docs, np.ascontiguousarray(corpus["queries"][:5, :DIM]))
    res = sdk.search(name, r.queries, k=10)
    r.search = (res.ids, res.scores)
    r.names = {c.name for c in sdk.list_collections()}
    yield r
    sdk.drop_collection(name)


# ----- the cases ----------------------------------------------------------------------
@dataclass
class Ctx:
    sdk: Client
    stub: pb_grpc.VectorSearchStub
    ref: Ref

    def vectors(self, n=3) -> np.ndarray:
        """Valid replacement vectors for the first n stored ids (a good base to spoil)."""
        return self.ref.docs[::-1][:n].copy()

    def upsert_raw(self, ids, matrix: pb.Matrix, collection=None):
        return self.stub.Upsert(pb.UpsertRequest(collection=collection or self.ref.name,
                                                 ids=[int(i) for i in ids], vectors=matrix),
                                timeout=30)

    def search_raw(self, **fields):
        return self.stub.Search(pb.SearchRequest(collection=self.ref.name, **fields), timeout=30)


@dataclass
class Case:
    id: str
    call: Callable[[Ctx], object]
    code: str
    keyword: str   # the message must mention it (case-insensitive)


def spoiled(ctx: Ctx, value, row=1, col=7) -> np.ndarray:
    v = ctx.vectors()
    v[row, col] = value
    return v


def with_zero_row(ctx: Ctx) -> np.ndarray:
    v = ctx.vectors()
    v[2] = 0
    return v


def bad_bytes_matrix(rows=2) -> pb.Matrix:
    m = wire.encode_matrix(np.ones((rows, DIM), np.float32))
    m.data = m.data[:-4]   # one float short of rows x dim x 4
    return m


def stream_without_collection(ctx: Ctx):
    msg = pb.UpsertRequest(ids=[int(i) for i in ctx.ref.ids[:3]],
                           vectors=wire.encode_matrix(ctx.vectors()))
    return ctx.stub.UpsertStream(iter([msg]), timeout=30)


def q(ctx: Ctx, n=2, d=DIM) -> np.ndarray:
    return ctx.ref.queries[:n, :d]


CASES = [
    # Unknown collection, on every call that names one.
    Case("search-missing", lambda c: c.sdk.search(MISSING, q(c)), "NOT_FOUND", MISSING),
    Case("upsert-missing", lambda c: c.sdk.upsert(MISSING, c.ref.ids[:3], c.vectors()),
         "NOT_FOUND", MISSING),
    Case("get-missing", lambda c: c.sdk.get(MISSING, c.ref.ids[:3]), "NOT_FOUND", MISSING),
    Case("delete-missing", lambda c: c.sdk.delete(MISSING, c.ref.ids[:3]), "NOT_FOUND", MISSING),
    Case("describe-missing", lambda c: c.sdk.describe_collection(MISSING), "NOT_FOUND", MISSING),
    Case("drop-missing", lambda c: c.sdk.drop_collection(MISSING), "NOT_FOUND", MISSING),
    Case("create-duplicate", lambda c: c.sdk.create_collection(c.ref.name, DIM, "cosine"),
         "ALREADY_EXISTS", "already exists"),
    Case("create-duplicate-other-settings",
         lambda c: c.sdk.create_collection(c.ref.name, 16, "l2", shards=3),
         "ALREADY_EXISTS", "already exists"),

    # Vectors.
    Case("upsert-wrong-dim", lambda c: c.sdk.upsert(c.ref.name, c.ref.ids[:3], c.vectors()[:, :64]),
         "INVALID_ARGUMENT", "dim"),
    Case("upsert-too-wide", lambda c: c.sdk.upsert(
        c.ref.name, c.ref.ids[:3], np.hstack([c.vectors(), c.vectors()])), "INVALID_ARGUMENT", "dim"),
    Case("upsert-bytes-mismatch", lambda c: c.upsert_raw(c.ref.ids[:2], bad_bytes_matrix()),
         "INVALID_ARGUMENT", "bytes"),
    Case("upsert-unknown-dtype", lambda c: c.upsert_raw(
        c.ref.ids[:3], pb.Matrix(rows=3, dim=DIM, dtype=5, data=c.vectors().tobytes())),
        "INVALID_ARGUMENT", "dtype"),
    Case("upsert-no-matrix", lambda c: c.stub.Upsert(
        pb.UpsertRequest(collection=c.ref.name, ids=[int(c.ref.ids[0])]), timeout=30),
        "INVALID_ARGUMENT", "vectors"),
    Case("upsert-nan", lambda c: c.sdk.upsert(c.ref.name, c.ref.ids[:3], spoiled(c, np.nan)),
         "INVALID_ARGUMENT", "nan"),
    Case("upsert-inf", lambda c: c.sdk.upsert(c.ref.name, c.ref.ids[:3], spoiled(c, -np.inf)),
         "INVALID_ARGUMENT", "inf"),
    Case("upsert-norm-overflow", lambda c: c.sdk.upsert(c.ref.name, c.ref.ids[:3], spoiled(c, 1e20)),
         "INVALID_ARGUMENT", "overflow"),
    Case("upsert-more-ids-than-rows",
         lambda c: c.sdk.upsert(c.ref.name, c.ref.ids[:4], c.vectors(3), batch_bytes=1 << 30),
         "INVALID_ARGUMENT", "one id per row"),
    Case("upsert-fewer-ids-than-rows", lambda c: c.upsert_raw(c.ref.ids[:2],
                                                              wire.encode_matrix(c.vectors(3))),
         "INVALID_ARGUMENT", "one id per row"),
    Case("upsert-empty-batch", lambda c: c.sdk.upsert(c.ref.name, [], np.zeros((0, DIM), np.float32)),
         "INVALID_ARGUMENT", "empty"),
    Case("upsert-rows-but-no-ids", lambda c: c.upsert_raw([], wire.encode_matrix(c.vectors(2))),
         "INVALID_ARGUMENT", "empty"),
    Case("upsert-zero-norm-cosine", lambda c: c.sdk.upsert(c.ref.name, c.ref.ids[:3], with_zero_row(c)),
         "INVALID_ARGUMENT", "zero norm"),
    Case("stream-first-message-without-collection", stream_without_collection,
         "INVALID_ARGUMENT", "collection"),
    Case("stream-bad-first-batch", lambda c: c.sdk.upsert_stream(
        c.ref.name, [(c.ref.ids[:3], spoiled(c, np.nan))]), "INVALID_ARGUMENT", "nan"),
    Case("delete-no-ids", lambda c: c.sdk.delete(c.ref.name, []), "INVALID_ARGUMENT", "empty"),
    Case("get-no-ids", lambda c: c.sdk.get(c.ref.name, []), "INVALID_ARGUMENT", "empty"),
    Case("get-dim-above-collection", lambda c: c.sdk.get(c.ref.name, c.ref.ids[:3], dim=DIM + 1),
         "INVALID_ARGUMENT", "outside"),

    # Queries.
    Case("search-nan-query", lambda c: c.sdk.search(c.ref.name, np.where(
        np.arange(DIM) == 3, np.nan, q(c, 1)[0])), "INVALID_ARGUMENT", "nan"),
    Case("search-inf-query", lambda c: c.sdk.search(c.ref.name, np.where(
        np.arange(DIM) == 3, np.inf, q(c, 1)[0])), "INVALID_ARGUMENT", "inf"),
    Case("search-overflow-query", lambda c: c.sdk.search(c.ref.name, np.where(
        np.arange(DIM) == 3, 1e20, q(c, 1)[0])), "INVALID_ARGUMENT", "overflow"),
    Case("search-zero-norm-query-cosine", lambda c: c.sdk.search(
        c.ref.name, np.vstack([q(c, 1), np.zeros((1, DIM))])), "INVALID_ARGUMENT", "zero norm"),
    Case("search-query-too-wide", lambda c: c.sdk.search(c.ref.name, np.ones((1, DIM + 1))),
         "INVALID_ARGUMENT", "dim"),
    Case("search-bytes-mismatch", lambda c: c.search_raw(queries=bad_bytes_matrix(1), k=5),
         "INVALID_ARGUMENT", "bytes"),
    Case("search-no-queries-matrix", lambda c: c.search_raw(k=5), "INVALID_ARGUMENT", "queries"),
    Case("search-zero-queries", lambda c: c.sdk.search(c.ref.name, np.zeros((0, DIM), np.float32)),
         "INVALID_ARGUMENT", "empty"),
    Case("search-k-zero", lambda c: c.sdk.search(c.ref.name, q(c), k=0), "INVALID_ARGUMENT", "k must"),
    Case("search-k-above-limit", lambda c: c.sdk.search(c.ref.name, q(c), k=MAX_K + 1),
         "INVALID_ARGUMENT", str(MAX_K)),
    Case("search-dim-above-collection", lambda c: c.sdk.search(c.ref.name, q(c), dim=DIM + 1),
         "INVALID_ARGUMENT", "outside"),
    Case("search-query-narrower-than-dim", lambda c: c.sdk.search(c.ref.name, q(c, d=32), dim=64),
         "INVALID_ARGUMENT", "ranks at dim 64"),
    Case("search-query-narrower-than-full-dim", lambda c: c.sdk.search(c.ref.name, q(c, d=64)),
         "INVALID_ARGUMENT", f"ranks at dim {DIM}"),
    Case("funnel-dims-not-increasing", lambda c: c.sdk.search(
        c.ref.name, q(c), funnel=[(64, 100), (32, 50)]), "INVALID_ARGUMENT", "strictly increase"),
    Case("funnel-dims-repeated", lambda c: c.sdk.search(
        c.ref.name, q(c), funnel=[(64, 100), (64, 50)]), "INVALID_ARGUMENT", "strictly increase"),
    Case("funnel-candidates-below-k", lambda c: c.sdk.search(
        c.ref.name, q(c), k=20, funnel=[(32, 19)]), "INVALID_ARGUMENT", "fewer than k"),
    Case("funnel-stage-dim-above-final-dim", lambda c: c.sdk.search(
        c.ref.name, q(c), dim=64, funnel=[(128, 100)]), "INVALID_ARGUMENT", "funnel stage 0"),
    Case("funnel-stage-dim-zero", lambda c: c.sdk.search(
        c.ref.name, q(c), funnel=[(0, 100)]), "INVALID_ARGUMENT", "funnel stage 0"),

    # Collections.
    Case("create-metric-unspecified", lambda c: c.stub.CreateCollection(pb.CreateCollectionRequest(
        name="never-created-1", dim=DIM, metric=pb.METRIC_UNSPECIFIED), timeout=30),
        "INVALID_ARGUMENT", "unspecified"),
    Case("create-metric-unknown-number", lambda c: c.stub.CreateCollection(pb.CreateCollectionRequest(
        name="never-created-2", dim=DIM, metric=7), timeout=30), "INVALID_ARGUMENT", "unknown metric"),
    Case("create-invalid-name", lambda c: c.sdk.create_collection("bad name/with spaces", DIM),
         "INVALID_ARGUMENT", "name"),
    Case("create-empty-name", lambda c: c.sdk.create_collection("", DIM), "INVALID_ARGUMENT", "name"),
    Case("create-dim-zero", lambda c: c.sdk.create_collection("never-created-3", 0),
         "INVALID_ARGUMENT", "dim"),
    Case("create-nested-dim-above-dim", lambda c: c.sdk.create_collection(
        "never-created-4", 64, nested_dims=[32, 128]), "INVALID_ARGUMENT", "nested_dims"),
    Case("create-first-stage-unknown-number", lambda c: c.stub.CreateCollection(
        pb.CreateCollectionRequest(name="never-created-5", dim=DIM, metric=pb.COSINE, first_stage=9),
        timeout=30), "INVALID_ARGUMENT", "first_stage"),
]


def status_of(call) -> tuple[str, str]:
    """(status name, message) of a call that must fail: SDK error or raw gRPC error."""
    try:
        call()
    except NestvecError as err:
        # The SDK re-raises the server's status; a client-side check would not test the server.
        assert isinstance(err.__context__, grpc.RpcError), f"rejected by the SDK, not the server: {err}"
        return err.code, err.message
    except grpc.RpcError as err:
        return err.code().name, err.details() or ""
    pytest.fail("the bad request was accepted")


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_request_is_rejected_and_harmless(case, sdk, stub, ref):
    code, message = status_of(lambda: case.call(Ctx(sdk, stub, ref)))
    assert code == case.code, f"{case.id}: got {code}: {message}"
    assert case.keyword.lower() in message.lower(), f"{case.id}: uninformative message {message!r}"
    ref.assert_unchanged(sdk)


def test_reference_collection_is_usable_after_all_cases(sdk, ref):
    # The server still takes good writes: replace one vector and put it back.
    ids, docs = ref.ids[:1], ref.docs[:1]
    assert sdk.upsert(ref.name, ids, docs[:, ::-1].copy()) == 1
    np.testing.assert_array_equal(sdk.get(ref.name, ids).vectors, docs[:, ::-1])
    assert sdk.upsert(ref.name, ids, docs) == 1
    ref.assert_unchanged(sdk)


def test_a_stream_failing_midway_says_what_was_written(stub, sdk, ref):
    """Any failure of an UpsertStream names the batches and rows already written, not only
    bad-input ones: here the third message names a collection that does not exist."""
    good = [pb.UpsertRequest(collection=ref.name, ids=[10_000_001 + i],
                             vectors=wire.encode_matrix(ref.docs[i:i + 1])) for i in range(2)]
    stray = pb.UpsertRequest(collection="no-such-collection", ids=[10_000_009],
                             vectors=wire.encode_matrix(ref.docs[:1]))
    with pytest.raises(grpc.RpcError) as err:
        stub.UpsertStream(iter(good + [stray]), timeout=30)
    assert err.value.code() == grpc.StatusCode.NOT_FOUND
    assert "batch 2 of the stream" in err.value.details()
    assert "2 earlier batches, 2 rows, were written" in err.value.details()
    got = sdk.get(ref.name, [10_000_001, 10_000_002])
    assert got.missing_ids.size == 0  # what it says was written, was
    np.testing.assert_array_equal(got.vectors, ref.docs[:2])
    sdk.delete(ref.name, [10_000_001, 10_000_002])
