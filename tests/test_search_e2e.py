"""End to end over real gRPC: client SDK -> gateway -> coordinator -> Ray shard actors.

Each (metric, shards) collection holds 20,000 corpusA documents and is ingested
once per module (the `store` fixture); every search is checked against the
float64 brute-force oracle. The lifecycle tests at the end of the file take a
collection over, mutate it (replace, delete) and drop it.
"""
from __future__ import annotations

import asyncio
import uuid
from dataclasses import dataclass

import grpc
import numpy as np
import pytest

from nestvec.client import AsyncClient, Client
from nestvec.errors import NestvecError
from oracle import assert_matches_oracle

N_DOCS = 20_000
N_QUERIES = 50
K = 10
DIM = 384
METRICS = ("cosine", "dot", "l2")
CONFIGS = [(m, s) for m in METRICS for s in (1, 4)]
BIG_IDS = (2**64 - 1, 2**63 + 7)   # ids above int64: prove uint64 travels end to end

# (label, dim, funnel): dim None means the collection's full dim.
SEARCHES = [
    ("dim32", 32, None),
    ("dim64", 64, None),
    ("dim128", 128, None),
    ("dim384", 384, None),
    ("full", None, None),
    ("funnel64", None, [(64, 200)]),
    ("funnel32-128", None, [(32, 400), (128, 100)]),
]


def make_ids(n: int) -> np.ndarray:
    ids = np.arange(n, dtype=np.uint64) * np.uint64(7919) + np.uint64(13)
    ids[-len(BIG_IDS):] = BIG_IDS
    return ids


def check_search(client, coll: "Loaded", queries, k=K, dim=None, funnel=None):
    res = client.search(coll.name, queries, k=k, dim=dim, funnel=funnel)
    assert res.ids.dtype == np.uint64 and res.scores.dtype == np.float32
    assert_matches_oracle(res.ids, res.scores, coll.ids, coll.docs, np.atleast_2d(queries),
                          coll.metric, dim or DIM, k, funnel or ())
    return res


def error_code(fn) -> tuple[str, str]:
    with pytest.raises(NestvecError) as info:
        fn()
    return info.value.code, info.value.message


@dataclass
class Loaded:
    name: str
    metric: str
    shards: int
    ids: np.ndarray
    docs: np.ndarray   # what the collection is expected to hold, row i <-> ids[i]


class Store:
    """Ingests each (metric, shards) collection on first use; drops them all at the end."""

    def __init__(self, client: Client, corpus):
        self.client, self.corpus = client, corpus
        self.loaded: dict[tuple[str, int], Loaded] = {}

    def get(self, metric: str, shards: int) -> Loaded:
        key = (metric, shards)
        if key not in self.loaded:
            self.loaded[key] = self._ingest(metric, shards)
        return self.loaded[key]

    def take(self, metric: str, shards: int) -> Loaded:
        """Hand the collection over to a test that mutates and drops it."""
        coll = self.get(metric, shards)
        del self.loaded[(metric, shards)]
        coll.docs = coll.docs.copy()
        return coll

    def _ingest(self, metric, shards) -> Loaded:
        name = f"e2e-{metric}-{shards}-{uuid.uuid4().hex[:6]}"
        info = self.client.create_collection(name, DIM, metric, shards=shards)
        assert (info.dim, info.metric, info.shards) == (DIM, metric, shards)
        assert info.nested_dims == [32, 64, 128, 256, 384]
        ids, docs = make_ids(N_DOCS), self.corpus["docs"][:N_DOCS]
        if (metric, shards) == ("l2", 4):   # one configuration loads through the stream
            batches = ((ids[s: s + 4000], docs[s: s + 4000]) for s in range(0, N_DOCS, 4000))
            summary = self.client.upsert_stream(name, batches)
            assert (summary.upserted, summary.batches) == (N_DOCS, 5)
        else:
            assert self.client.upsert(name, ids, docs) == N_DOCS
        info = self.client.describe_collection(name)
        assert info.vectors == N_DOCS
        assert len(info.shard_info) == shards
        assert sum(s.vectors for s in info.shard_info) == N_DOCS
        assert all(s.vectors > 0 for s in info.shard_info)   # the hash spreads the ids
        return Loaded(name, metric, shards, ids, docs)

    def close(self):
        for coll in self.loaded.values():
            self.client.drop_collection(coll.name)


@pytest.fixture(scope="module")
def store(gateway, corpus):
    with Client(gateway.address, timeout=120) as c:
        s = Store(c, corpus)
        yield s
        s.close()


@pytest.fixture(scope="module")
def queries(corpus):
    return corpus["queries"][:N_QUERIES]


# ----- exact search over every configuration ---------------------------------------
@pytest.mark.parametrize("label,dim,funnel", SEARCHES, ids=[s[0] for s in SEARCHES])
@pytest.mark.parametrize("metric,shards", CONFIGS, ids=[f"{m}-{s}" for m, s in CONFIGS])
def test_search_matches_oracle(store, client, queries, metric, shards, label, dim, funnel):
    check_search(client, store.get(metric, shards), queries, dim=dim, funnel=funnel)


@pytest.mark.parametrize("metric", METRICS)
def test_one_and_four_shards_give_identical_results(store, client, queries, metric):
    one, four = store.get(metric, 1), store.get(metric, 4)
    for _, dim, funnel in SEARCHES:
        a = client.search(one.name, queries, k=K, dim=dim, funnel=funnel)
        b = client.search(four.name, queries, k=K, dim=dim, funnel=funnel)
        np.testing.assert_array_equal(b.ids, a.ids, err_msg=f"dim={dim} funnel={funnel}")
        np.testing.assert_allclose(b.scores, a.scores, rtol=0, atol=1e-6)


def test_uint64_ids_round_trip(store, client):
    coll = store.get("cosine", 4)
    got = client.get(coll.name, list(BIG_IDS))
    np.testing.assert_array_equal(got.ids, np.array(BIG_IDS, dtype=np.uint64))
    np.testing.assert_array_equal(got.vectors, coll.docs[-len(BIG_IDS):])
    assert got.missing_ids.size == 0
    # Each big-id document queried with its own vector comes back first.
    res = check_search(client, coll, coll.docs[-len(BIG_IDS):])
    np.testing.assert_array_equal(res.ids[:, 0], np.array(BIG_IDS, dtype=np.uint64))


def test_single_1d_query_gives_one_row(store, client, queries):
    coll = store.get("dot", 1)
    res = check_search(client, coll, queries[3], k=7)
    assert res.ids.shape == (1, 7) and res.scores.shape == (1, 7)
    np.testing.assert_array_equal(res.ids, client.search(coll.name, queries[3:4], k=7).ids)


def test_describe_and_list(store, client):
    coll = store.get("l2", 4)
    info = client.describe_collection(coll.name)
    assert (info.name, info.dim, info.metric, info.shards, info.vectors) == (
        coll.name, DIM, "l2", 4, N_DOCS)
    assert [s.shard for s in info.shard_info] == [0, 1, 2, 3]
    assert all(s.capacity >= s.vectors for s in info.shard_info)
    assert coll.name in {c.name for c in client.list_collections()}


# ----- small collections -----------------------------------------------------------------
@pytest.mark.parametrize("shards", [1, 4])
def test_k_larger_than_stored_returns_all(client, collection_name, corpus, shards):
    docs, q = corpus["docs"][:7], corpus["queries"][:4]
    ids = np.array([70, 10, 50, 30, 20, 60, 40], dtype=np.uint64)
    client.create_collection(collection_name, DIM, "cosine", shards=shards)
    client.upsert(collection_name, ids, docs)
    for funnel in (None, [(32, 1000)]):
        res = client.search(collection_name, q, k=50, funnel=funnel)
        assert res.ids.shape == (4, 7)
        assert all(sorted(r) == sorted(ids.tolist()) for r in res.ids.tolist())
        assert_matches_oracle(res.ids, res.scores, ids, docs, q, "cosine", DIM, 50, funnel or ())


def test_float16_transport(client, collection_name, corpus):
    # Values not exactly representable in float16, so the rounding is visible.
    rng = np.random.default_rng(5)
    docs = (rng.normal(size=(2000, 128)) / np.sqrt(128)).astype(np.float32)
    q = (rng.normal(size=(20, 128)) / np.sqrt(128)).astype(np.float32)
    ids = np.arange(2000, dtype=np.uint64) * np.uint64(3) + np.uint64(1)
    client.create_collection(collection_name, 128, "l2", shards=2)
    assert client.upsert(collection_name, ids, docs, dtype="float16") == 2000
    docs16 = docs.astype(np.float16).astype(np.float32)
    assert not np.array_equal(docs16, docs)
    got = client.get(collection_name, ids[:50])
    np.testing.assert_array_equal(got.vectors, docs16[:50])   # stored exactly as sent
    q16 = q.astype(np.float16).astype(np.float32)
    for dim, funnel in ((None, None), (64, None), (None, [(32, 300)])):
        res = client.search(collection_name, q, k=K, dim=dim, funnel=funnel, dtype="float16")
        assert_matches_oracle(res.ids, res.scores, ids, docs16, q16, "l2", dim or 128, K,
                              funnel or ())


def test_async_client(gateway, collection_name, corpus):
    docs, q = corpus["docs"][:3000], corpus["queries"][:20]
    ids = np.arange(3000, dtype=np.uint64) * np.uint64(11) + np.uint64(2**63)

    async def main():
        async with AsyncClient(gateway.address, timeout=60) as ac:
            info = await ac.create_collection(collection_name, DIM, "dot", shards=2)
            assert (info.name, info.metric, info.shards) == (collection_name, "dot", 2)
            assert await ac.upsert(collection_name, ids, docs) == 3000
            assert (await ac.describe_collection(collection_name)).vectors == 3000
            flat = await ac.search(collection_name, q, k=K)
            fun = await ac.search(collection_name, q, k=K, dim=128, funnel=[(32, 200)])
            got = await ac.get(collection_name, ids[[5, 0]])

            async def more():  # an async iterable of batches, for a bulk load
                for s in range(0, 1000, 250):
                    yield ids[s: s + 250] + np.uint64(1), docs[s: s + 250]
            summary = await ac.upsert_stream(collection_name, more())
            assert (summary.upserted, summary.batches) == (1000, 4)
            assert await ac.delete(collection_name, ids[:10] + np.uint64(1)) == 10
            assert (await ac.describe_collection(collection_name)).vectors == 3990
            assert collection_name in [c.name for c in await ac.list_collections()]
            await ac.drop_collection(collection_name)
            assert collection_name not in [c.name for c in await ac.list_collections()]
            return flat, fun, got

    flat, fun, got = asyncio.run(main())
    assert_matches_oracle(flat.ids, flat.scores, ids, docs, q, "dot", DIM, K)
    assert_matches_oracle(fun.ids, fun.scores, ids, docs, q, "dot", 128, K, [(32, 200)])
    np.testing.assert_array_equal(got.vectors, docs[[5, 0]])


def test_heavy_deletes_compact_shards(client, collection_name, corpus):
    # Deleting 40% of every shard crosses the 1/4 dead-rows threshold: tombstones go back to 0.
    docs, q = corpus["docs"][:1000], corpus["queries"][:10]
    ids = np.arange(1000, dtype=np.uint64) * np.uint64(7) + np.uint64(1)
    client.create_collection(collection_name, DIM, "l2", shards=4)
    client.upsert(collection_name, ids, docs)
    gone = ids[np.arange(1000) % 5 < 2]
    client.delete(collection_name, gone[:100])            # below the threshold everywhere
    info = client.describe_collection(collection_name)
    assert sum(s.tombstones for s in info.shard_info) == 100
    assert client.delete(collection_name, gone) == gone.size - 100
    info = client.describe_collection(collection_name)
    assert info.vectors == 600
    assert [s.tombstones for s in info.shard_info] == [0, 0, 0, 0]
    keep = ~np.isin(ids, gone)
    res = client.search(collection_name, q, k=K, funnel=[(32, 100)])
    assert_matches_oracle(res.ids, res.scores, ids[keep], docs[keep], q, "l2", DIM, K, [(32, 100)])


def test_duplicate_ids_in_one_upsert_last_wins(client, collection_name, corpus):
    v = corpus["docs"][:4]
    client.create_collection(collection_name, DIM, "dot", shards=2)
    written = client.upsert(collection_name, [5, 6, 5, 5], v)
    got = client.get(collection_name, [5, 6])
    np.testing.assert_array_equal(got.vectors, v[[3, 1]])
    assert client.describe_collection(collection_name).vectors == 2
    # UpsertResponse.upserted is "rows written (new or replaced)": 2 ids were written,
    # as ShardEngine.upsert itself reports.
    assert written == 2


def test_describe_names_the_shard_actors(gateway, client, collection_name, ray_cluster):
    # CollectionInfo.shard_info[i].actor_name is part of the wire contract (nestvec.proto):
    # the Ray actor a Ray job or an operator can look the shard up by.
    import ray

    from nestvec.v1 import nestvec_pb2 as pb
    from nestvec.v1 import nestvec_pb2_grpc as pb_grpc

    client.create_collection(collection_name, 16, "l2", shards=3)
    with grpc.insecure_channel(gateway.address) as ch:
        resp = pb_grpc.VectorSearchStub(ch).DescribeCollection(
            pb.DescribeCollectionRequest(name=collection_name), timeout=30)
    assert [s.shard for s in resp.collection.shard_info] == [0, 1, 2]
    names = [s.actor_name for s in resp.collection.shard_info]
    assert [s.actor_name for s in client.describe_collection(collection_name).shard_info] == names
    assert len(set(names)) == 3 and all(n.startswith(collection_name + ".") for n in names)
    for i, n in enumerate(names):
        assert n.endswith(f"/shard-{i}")
        assert ray.get(ray.get_actor(n, namespace=ray_cluster).ready.remote())


# ----- standard gRPC services ---------------------------------------------------------------
def test_health_check_serving(gateway):
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(gateway.address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        for service in ("", "nestvec.v1.VectorSearch"):
            resp = stub.Check(health_pb2.HealthCheckRequest(service=service), timeout=10)
            assert resp.status == health_pb2.HealthCheckResponse.SERVING, service


def test_server_reflection_lists_the_service(gateway):
    from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

    with grpc.insecure_channel(gateway.address) as ch:
        stub = reflection_pb2_grpc.ServerReflectionStub(ch)
        req = reflection_pb2.ServerReflectionRequest(list_services="")
        (resp,) = list(stub.ServerReflectionInfo(iter([req]), timeout=10))
        names = {s.name for s in resp.list_services_response.service}
        assert "nestvec.v1.VectorSearch" in names
        assert "grpc.health.v1.Health" in names
        # The descriptor is served too, so grpcurl can call methods by name.
        req = reflection_pb2.ServerReflectionRequest(file_containing_symbol="nestvec.v1.VectorSearch")
        (resp,) = list(stub.ServerReflectionInfo(iter([req]), timeout=10))
        assert resp.file_descriptor_response.file_descriptor_proto


# ----- lifecycle: replace, delete, get at a prefix, drop (last: they consume the store) ----
@pytest.mark.parametrize("metric,shards", CONFIGS, ids=[f"{m}-{s}" for m, s in CONFIGS])
def test_lifecycle(store, client, corpus, queries, metric, shards):
    coll = store.take(metric, shards)
    try:
        replace_vectors(client, coll, corpus, queries)
        delete_vectors(client, coll, queries)
        get_at_prefix(client, coll)
    finally:
        client.drop_collection(coll.name)
    # Gone: every call on it is NOT_FOUND, and it is no longer listed.
    assert error_code(lambda: client.search(coll.name, queries[:1]))[0] == "NOT_FOUND"
    assert error_code(lambda: client.describe_collection(coll.name))[0] == "NOT_FOUND"
    assert error_code(lambda: client.drop_collection(coll.name))[0] == "NOT_FOUND"
    assert coll.name not in {c.name for c in client.list_collections()}


def replace_vectors(client, coll: Loaded, corpus, queries):
    rows = np.random.default_rng(11).choice(N_DOCS, 100, replace=False)
    new = corpus["docs"][N_DOCS: N_DOCS + 100].copy()
    new[:10] = queries[:10]          # these must become the top hit of queries 0..9
    assert client.upsert(coll.name, coll.ids[rows], new) == 100
    coll.docs[rows] = new
    got = client.get(coll.name, coll.ids[rows])
    np.testing.assert_array_equal(got.ids, coll.ids[rows])
    np.testing.assert_array_equal(got.vectors, new)
    assert client.describe_collection(coll.name).vectors == N_DOCS   # replaced, not added
    res = check_search(client, coll, queries)
    assert np.isin(coll.ids[rows[:10]], res.ids[:10, 0]).all()
    check_search(client, coll, queries, funnel=[(32, 400), (128, 100)])


def delete_vectors(client, coll: Loaded, queries):
    # Delete every query's current top-5 (so a leak would show) plus random others: 500 ids.
    top = np.unique(client.search(coll.name, queries, k=5).ids)
    rest = np.setdiff1d(coll.ids, top)
    extra = np.random.default_rng(12).choice(rest, 500 - top.size, replace=False)
    gone = np.concatenate([top, extra])
    assert client.delete(coll.name, gone) == 500
    assert client.delete(coll.name, gone[:10]) == 0           # already deleted
    got = client.get(coll.name, gone)
    assert got.ids.size == 0
    np.testing.assert_array_equal(np.sort(got.missing_ids), np.sort(gone))
    assert client.describe_collection(coll.name).vectors == N_DOCS - 500
    keep = ~np.isin(coll.ids, gone)
    coll.ids, coll.docs = coll.ids[keep], coll.docs[keep]
    for dim, funnel in ((None, None), (64, None), (None, [(64, 200)])):
        res = check_search(client, coll, queries, dim=dim, funnel=funnel)
        assert not np.isin(res.ids, gone).any()
    wide = client.search(coll.name, queries, k=300)
    assert not np.isin(wide.ids, gone).any()


def get_at_prefix(client, coll: Loaded):
    ask = np.array([coll.ids[5], 424242, coll.ids[-1], coll.ids[0]], dtype=np.uint64)
    got = client.get(coll.name, ask, dim=64)
    np.testing.assert_array_equal(got.ids, ask[[0, 2, 3]])
    assert got.vectors.shape == (3, 64)
    np.testing.assert_array_equal(got.vectors, coll.docs[[5, -1, 0], :64])
    np.testing.assert_array_equal(got.missing_ids, [424242])
