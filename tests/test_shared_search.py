"""Searches of the 8-bit graph run side by side in a shard (shared_lock.py, shard_actor.py).

The lock itself is tested with real threads; the graph's concurrent searches
against its one-at-a-time answers; and the shard end to end: many concurrent
searches over the same-node socket while deletes and upserts land, each answer
held to the oracle (no id twice, no acknowledged-deleted id, exact scores).
"""
from __future__ import annotations

import asyncio
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from nestvec.cluster._engine.ann_index import GraphParams
from nestvec.cluster._engine.ann_sq import SqAnnIndex
from nestvec.cluster._distributed.shared_lock import SharedLock
from tests.oracle import exact_scores


# ----- the lock -----------------------------------------------------------------------
def test_readers_overlap_and_a_writer_runs_alone():
    lock = SharedLock()
    both_in = threading.Barrier(2, timeout=5)  # breaks (raises) unless two readers are inside at once
    seen = []

    def reader():
        with lock.shared() as inside:
            seen.append(inside)
            both_in.wait()
            time.sleep(0.05)

    readers = [threading.Thread(target=reader) for _ in range(2)]
    for t in readers:
        t.start()
    time.sleep(0.01)
    with lock.exclusive():  # waits for both readers to leave
        assert lock.readers == 0
    for t in readers:
        t.join()
    assert sorted(seen) == [1, 2]


def test_a_waiting_writer_goes_before_new_readers():
    lock = SharedLock()
    order = []
    first_in = threading.Event()
    release_first = threading.Event()

    def first_reader():
        with lock.shared():
            first_in.set()
            release_first.wait(5)
            order.append("reader 1 out")

    def writer():
        with lock.exclusive():
            order.append("writer")

    def late_reader():
        with lock.shared():
            order.append("reader 2")

    threads = [threading.Thread(target=first_reader)]
    threads[0].start()
    first_in.wait(5)
    threads.append(threading.Thread(target=writer))
    threads[1].start()
    while not lock._writers_waiting:  # the writer is queued behind reader 1
        time.sleep(0.001)
    threads.append(threading.Thread(target=late_reader))
    threads[2].start()
    time.sleep(0.05)
    assert order == []  # reader 2 waits behind the writer, not beside reader 1
    release_first.set()
    for t in threads:
        t.join(5)
    assert order == ["reader 1 out", "writer", "reader 2"]


# ----- the 8-bit graph ----------------------------------------------------------------
def test_concurrent_graph_searches_answer_as_one_at_a_time(corpus):
    docs, queries = corpus["docs"][:10_000], corpus["queries"][:64]
    g = SqAnnIndex(GraphParams(64, 16, 64, "cosine"), threads=2)
    ids = np.arange(docs.shape[0], dtype=np.uint64) * 7
    g.add(ids, docs)
    g.delete(ids[::5])  # dead slots: every search carries the live-bitmap selector
    cases = [(ef, threads, rows) for ef in (20, 40, 80) for threads in (1, 2) for rows in (1, 16)]
    want = {c: g.search(queries[: c[2]], 20, c[0], c[1]) for c in cases}
    with ThreadPoolExecutor(8) as pool:  # FAISS releases the GIL: these walks overlap
        got = list(pool.map(lambda c: (c, g.search(queries[: c[2]], 20, c[0], c[1])), cases * 8))
    for case, ids_found in got:
        assert np.array_equal(ids_found, want[case]), case
        assert not np.isin(ids_found, ids[::5]).any()


# ----- a shard, end to end ------------------------------------------------------------
@pytest.fixture
def sq8_collection(coordinator, corpus):
    from nestvec.cluster._distributed.coordinator import Coordinator

    coord = Coordinator(namespace=coordinator.namespace, shard_threads=2)  # batches walk on 2 threads
    name = f"shared-{uuid.uuid4().hex[:6]}"
    docs = corpus["docs"][:20_000]
    coord.create_collection(name, 384, "cosine", shards=1,
                            index={"type": "hnsw_sq8", "dim": 128, "m": 16, "ef_construction": 64})
    coord.upsert(name, np.arange(docs.shape[0]), docs)
    coord.wait_index(name, 300)
    yield coord, name, docs
    coord.drop_collection(name)


def test_concurrent_searches_with_writes_stay_exact(sq8_collection, corpus):
    coord, name, docs = sq8_collection
    queries = corpus["queries"][:200]
    deleted: set[int] = set()  # ids whose delete was acknowledged and not undone since
    revived: list[int] = []  # ids in the order their upsert back began
    guard = threading.Lock()
    first_delete = threading.Event()
    rng = np.random.default_rng(1)

    def writes():
        for _ in range(30):
            gone = [int(i) for i in rng.choice(docs.shape[0], 40, replace=False)]
            coord.delete(name, gone)
            with guard:  # recorded once acknowledged
                deleted.update(gone)
                back = sorted(deleted)[:20]
                deleted.difference_update(back)  # before the upsert: may come back from now on
                revived.extend(back)
            first_delete.set()  # from now on at least 20 ids are deleted at any moment
            coord.upsert(name, back, docs[back])

    async def searches(start: int):
        async def one(i: int):
            with guard:
                before = set(deleted)  # deleted before this search started
                mark = len(revived)
            qi = i % len(queries)
            r = await coord.asearch(name, queries[qi][None], 10, ann=True, ef=40, candidates=30)
            with guard:
                # An id whose upsert began while this search was in flight may rightly
                # be found again; the rest stayed deleted for the whole search.
                return before.difference(revived[mark:]), qi, r
        # Every search of a round takes its snapshot as the round starts: short
        # rounds, so that the snapshots follow the writes.
        return await asyncio.gather(*[one(i) for i in range(start, start + 64)])

    writer = threading.Thread(target=writes)
    writer.start()
    assert first_delete.wait(60), "the writer never finished a delete"
    results = []
    while writer.is_alive() or len(results) < 600:
        results += asyncio.run(searches(len(results)))
    writer.join()
    assert sum(1 for before, _, _ in results if before) > len(results) // 2, "too few searches had deletes to miss"
    exact = exact_scores(docs, queries, "cosine", 384)  # ids are row numbers here
    for before, qi, r in results:
        row_ids, row_scores = r.ids[0], r.scores[0]
        assert len(set(row_ids.tolist())) == len(row_ids), "an id twice"
        assert not before.intersection(row_ids.tolist()), "an acknowledged-deleted id came back"
        np.testing.assert_allclose(row_scores, exact[qi, row_ids.astype(np.int64)], atol=1e-4)
        assert (np.diff(row_scores) <= 1e-6).all()
    stats = coord.describe_collection(name)[1][0]
    assert stats["overlapped_searches"] > 0, "no two searches ever ran side by side"


def test_batched_concurrent_callers_get_what_they_get_alone(sq8_collection, corpus):
    """128 single-query callers through the gateway's batcher: ANN batches close at
    ann_max_rows, several run in the shard at once, and every caller gets exactly the
    answer its query gets searched alone (the walk is deterministic per query)."""
    from nestvec.cluster._distributed.batcher import SearchBatcher

    coord, name, _ = sq8_collection
    queries = corpus["queries"][:256]
    alone = coord.search(name, queries, 10, ann=True)  # one batch; per-query answers
    sizes = []

    class Recording(SearchBatcher):
        async def _run(self, key, q, timeout):
            sizes.append(q.shape[0])
            return await super()._run(key, q, timeout)

    async def storm():
        batcher = Recording(coord)

        async def caller(i):
            return [(j, await batcher.search(name, queries[j][None], 10, 0, [], False, None,
                                             ann=(True, 0, 0)))
                    for j in range(i, queries.shape[0], 128)]
        return await asyncio.gather(*[caller(i) for i in range(128)])
    before = coord.describe_collection(name)[1][0]["overlapped_searches"]
    answers = [pair for per_caller in asyncio.run(storm()) for pair in per_caller]
    assert sorted(j for j, _ in answers) == list(range(queries.shape[0]))
    for j, r in answers:  # sets and scores: a single query re-ranks by another kernel,
        # so two candidates tied to the last bit may come in either order
        assert set(r.ids[0].tolist()) == set(alone.ids[j].tolist()), j
        np.testing.assert_allclose(r.scores[0], alone.scores[j], atol=1e-5)
    assert max(sizes) <= SearchBatcher(coord).ann_max_rows
    assert max(sizes) > 1, "nothing was batched"
    assert coord.describe_collection(name)[1][0]["overlapped_searches"] > before
