"""Gateway micro-batching: concurrent single-query searches share shard calls,
and every caller still gets exactly its own answer."""
from __future__ import annotations

import asyncio
import uuid

import numpy as np
import pytest

from nestvec.client import AsyncClient
from nestvec.cluster._server.metrics import GatewayMetrics
from nestvec.errors import NestvecError
from oracle import assert_matches_oracle


@pytest.fixture(scope="module")
def batched(coordinator, corpus):
    from nestvec.cluster._server.serve import GatewayThread

    metrics = GatewayMetrics()
    gw = GatewayThread(coordinator, port=0, metrics=metrics, batch_window=0.005)
    name = f"batch-{uuid.uuid4().hex[:6]}"
    docs = corpus["docs"][:10_000]
    ids = np.arange(docs.shape[0], dtype=np.uint64) * 3
    coordinator.create_collection(name, 384, "cosine", shards=2)
    coordinator.upsert(name, ids, docs)
    yield gw, metrics, name, ids, docs
    coordinator.drop_collection(name)
    gw.stop()


async def _storm(address, calls):
    clients = [AsyncClient(address, timeout=120) for _ in range(20)]
    try:
        async def one(i, queries, kw):
            try:
                return await clients[i % 20].search(*queries, **kw)
            except NestvecError as err:
                return err
        return await asyncio.gather(*[one(i, q, kw) for i, (q, kw) in enumerate(calls)])
    finally:
        await asyncio.gather(*[c.close() for c in clients])


def test_200_concurrent_callers_each_get_their_own_answer(batched, corpus):
    gw, metrics, name, ids, docs = batched
    queries = corpus["queries"][:200]
    before_batches = metrics.search_batches._value.get()
    results = asyncio.run(_storm(gw.address, [((name, q), {"k": 10, "dim": 64}) for q in queries]))
    assert not [r for r in results if isinstance(r, NestvecError)]
    got_ids = np.concatenate([r.ids for r in results])
    got_scores = np.concatenate([r.scores for r in results])
    assert_matches_oracle(got_ids, got_scores, ids, docs, queries, "cosine", 64, 10)
    # Some of them really were stacked into shared shard calls.
    batches = metrics.search_batches._value.get() - before_batches
    assert 0 < batches < 200
    assert metrics.batched_queries._value.get() > batches


def test_a_bad_query_in_a_batch_fails_alone(batched, corpus):
    gw, _, name, ids, docs = batched
    queries = corpus["queries"][200:260].copy()
    bad = {7, 33}
    calls = []
    for i, q in enumerate(queries):
        q = q.copy()
        if i in bad:
            q[5] = np.nan
        calls.append(((name, q), {"k": 5}))
    results = asyncio.run(_storm(gw.address, calls))
    for i, r in enumerate(results):
        if i in bad:
            assert isinstance(r, NestvecError) and r.code == "INVALID_ARGUMENT"
        else:
            assert_matches_oracle(r.ids, r.scores, ids, docs, queries[i:i + 1], "cosine", 384, 5)


def test_different_shapes_are_not_mixed(batched, corpus):
    gw, _, name, ids, docs = batched
    queries = corpus["queries"][300:360]
    calls = [((name, q), {"k": 3 + i % 3, "dim": (32, 128, None)[i % 3]})
             for i, q in enumerate(queries)]
    results = asyncio.run(_storm(gw.address, calls))
    for i, r in enumerate(results):
        k, dim = 3 + i % 3, (32, 128, None)[i % 3]
        assert_matches_oracle(r.ids, r.scores, ids, docs, queries[i:i + 1], "cosine", dim or 384, k)


def test_batches_in_flight_survive_garbage_collection(batched, corpus, coordinator):
    """A batch's task is held by the batcher: the event loop keeps only weak references,
    and a task waiting on a shard's socket is otherwise unreachable, so a collection
    mid-search used to drop it and leave its callers waiting forever."""
    import gc

    from nestvec.cluster._distributed.batcher import SearchBatcher

    _, _, name, ids, docs = batched
    queries = corpus["queries"][:128]

    async def storm():
        batcher = SearchBatcher(coordinator, window=0.001, max_rows=8)
        stop = False

        async def collector():
            while not stop:
                gc.collect()
                await asyncio.sleep(0.002)

        async def caller(i):
            out = []
            for r in range(4):
                q = queries[(i + r) % 128][None]
                out.append((q, await batcher.search(name, q, 10, 64, [], False, None)))
            return out
        gc_task = asyncio.create_task(collector())
        try:
            return await asyncio.wait_for(asyncio.gather(*[caller(i) for i in range(128)]), 30)
        finally:
            stop = True
            await gc_task
    results = [pair for per_caller in asyncio.run(storm()) for pair in per_caller]
    assert len(results) == 512
    got_q = np.concatenate([q for q, _ in results])
    assert_matches_oracle(np.concatenate([r.ids for _, r in results]),
                          np.concatenate([r.scores for _, r in results]),
                          ids, docs, got_q, "cosine", 64, 10)
