"""Batches searched on several threads (cluster/_engine/parallel.py) answer exactly as on one.

Real engines and real threads; the split thresholds are lowered so a small
collection still splits its scans into row ranges and its re-ranks by queries.
"""
from __future__ import annotations

import threading

import numpy as np
import pytest
import threadpoolctl

from nestvec.cluster._engine import shard_engine as engine_mod
from nestvec.cluster._engine import parallel
from nestvec.cluster._engine.collection import CollectionConfig, plan_search
from nestvec.cluster._engine.shard_engine import ShardEngine
from oracle import assert_matches_oracle

N_DOCS = 6_000
PLANS = [(384, None), (64, None), (128, None), (384, [(64, 300)]), (384, [(32, 400), (128, 50)]),
         (384, [(128, 50)]), (256, [(32, 200), (64, 100), (128, 20)])]


@pytest.fixture
def two_threads(monkeypatch):
    monkeypatch.setattr(engine_mod, "SPLIT_MIN_ROWS", 500)
    parallel.set_threads(2)
    yield
    parallel.set_threads(1)


def _search(e, q, dim, funnel):
    return e.search(q, plan_search(e.config, q.shape[1], 10, dim, funnel))


@pytest.mark.parametrize("first_stage", ["float32", "int8"])
@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
def test_split_search_equals_one_thread(corpus, two_threads, metric, first_stage):
    docs = corpus["docs"][:N_DOCS].copy()
    docs[10:40] = docs[5]  # duplicates: ties inside and across the parts' row ranges
    ids = np.arange(N_DOCS, dtype=np.uint64)[::-1].copy() * 3 + 1
    e = ShardEngine(CollectionConfig.create("t", 384, metric, first_stage=first_stage))
    e.upsert(ids, docs)
    e.delete(ids[::50])  # dead rows in every range
    live = np.arange(N_DOCS) % 50 != 0
    q = np.concatenate([corpus["queries"][:40], docs[5:6]])  # 41 queries: uneven parts
    assert parallel.ways(q.shape[0]) == 2
    for dim, funnel in PLANS:
        split = _search(e, q, dim, funnel)
        engine_mod.split_search = False
        try:
            whole = _search(e, q, dim, funnel)
        finally:
            engine_mod.split_search = True
        assert_matches_oracle(split.ids, split.scores, ids[live], docs[live], q, metric, dim, 10,
                              funnel or ())
        # The same answer. Duplicated rows' keys may differ in the last bit between
        # the two (BLAS sums a row in another order in another shape): the oracle
        # above decides their ties; every other row must match exactly.
        clean = ~np.isin(whole.ids, ids[5:40]).any(axis=1)
        assert clean.sum() >= 20
        np.testing.assert_array_equal(split.ids[clean], whole.ids[clean], err_msg=str((dim, funnel)))


def test_small_batches_and_one_thread_do_not_split():
    parallel.set_threads(1)
    assert parallel.ways(1000) == 1
    parallel.set_threads(2)
    try:
        assert parallel.ways(parallel.MIN_BATCH - 1) == 1
        assert parallel.ways(parallel.MIN_BATCH) == 2
        # inside a part nothing splits again (the pool's threads are taken)
        assert parallel.run(lambda x: parallel.ways(100), [0, 1]) == [1, 1]
    finally:
        parallel.set_threads(1)


def test_parts_hold_blas_to_one_thread_and_restore_it(two_threads):
    # Searches on several caller threads at once: every part runs with BLAS at one
    # thread (a count OpenBLAS keeps per process), and the count is restored once
    # the last of them ends, whatever order they end in.
    libs = [lib for lib in threadpoolctl.ThreadpoolController().lib_controllers
            if lib.user_api == "blas" and lib.threading_layer == "pthreads"]
    assert libs and parallel.ways(100) == 2  # numpy's OpenBLAS
    before = [lib.num_threads for lib in libs]
    assert before != [1] * len(libs), "test needs BLAS at 2+ threads to see the limit"
    seen, barrier = [], threading.Barrier(3)

    def part(_):
        seen.append([lib.num_threads for lib in libs])
        return 0

    def caller():
        barrier.wait()
        for _ in range(50):
            parallel.run(part, [0, 1])

    threads = [threading.Thread(target=caller) for _ in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert len(seen) == 300 and all(s == [1] * len(libs) for s in seen)
    assert [lib.num_threads for lib in libs] == before
