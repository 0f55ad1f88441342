"""ANN search (issue 8): an HNSW graph on a prefix, exact re-rank, updates, persistence.

The unit tests drive AnnIndex / ShardAnn / DurableShard on real files without
Ray; the rest go through a real Ray cluster and the gRPC gateway. Every ANN
answer is held to the oracle: its scores are the exact scores of its ids at
the requested dim, no id twice, no deleted id; recall is measured against
exact search (corpusA's own ground truth for the full set).
"""
from __future__ import annotations

import os
import time
import uuid

import numpy as np
import pytest
import ray

from nestvec.client import Client
from nestvec.cluster._storage import ann_shard
from nestvec.cluster._engine.ann_index import AnnIndex, GraphParams
from nestvec.cluster._engine.ann_sq import SqAnnIndex
from nestvec.cluster._storage.ann_shard import ShardAnn
from nestvec.cluster._engine.collection import (DEFAULT_EF_CONSTRUCTION, DEFAULT_INDEX_DIM, CollectionConfig,
                                       plan_search)
from nestvec.cluster._distributed.coordinator import merge_shard_results
from nestvec.cluster._storage.durable_shard import DurableShard
from nestvec.cluster._engine.shard_engine import ShardEngine
from nestvec.errors import FailedPrecondition, InvalidArgument
from tests.oracle import assert_matches_oracle

SUBSET = 20_000
GRAPHS = {"hnsw": AnnIndex, "hnsw_sq8": SqAnnIndex}  # index type -> graph class (docs/ann.md)
SMALL = 10_000   # where the claim does not need more (keeps CI time down)


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float((found[:, :, None] == truth[:, None, :]).any(axis=2).mean())


def _check_exact_scores(res_ids, res_scores, ids, docs, queries, dim, metric="cosine"):
    """Each returned id is stored, at most once per row, scored exactly at `dim`, best first."""
    pos = np.searchsorted(ids, res_ids)
    assert (ids[np.minimum(pos, ids.size - 1)] == res_ids).all(), "an id that is not stored"
    assert all(len(set(r)) == len(r) for r in res_ids.tolist()), "an id twice in one result"
    x = docs[pos][..., :dim].astype(np.float64)            # [Q, k, dim]
    q = queries[:, None, :dim].astype(np.float64)           # [Q, 1, dim]
    if metric == "cosine":
        x /= np.linalg.norm(x, axis=2, keepdims=True)
        q = q / np.linalg.norm(q, axis=2, keepdims=True)
    want = ((x - q) ** 2).sum(2) if metric == "l2" else (x * q).sum(2)
    np.testing.assert_allclose(res_scores, want, atol=1e-4)
    step = np.diff(res_scores, axis=1)
    assert (step <= 1e-6).all() if metric != "l2" else (step >= -1e-6).all(), "not sorted best first"


def _wait_ready(client: Client, name: str, timeout: float = 300) -> list:
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        info = client.describe_collection(name)
        if all(s.index_state == "ready" for s in info.shard_info):
            return info.shard_info
        assert not any(s.index_state == "failed" for s in info.shard_info), info.shard_info
        time.sleep(0.2)
    raise AssertionError(f"index not ready after {timeout}s: {client.describe_collection(name)}")


# ----- the graph and its shard owner, no Ray ------------------------------------------
@pytest.mark.parametrize("kind", GRAPHS)
def test_graph_labels_are_ids_and_deleted_ids_never_come_back(corpus, kind):
    x = corpus["docs"][:3000]
    ids = np.arange(3000, dtype=np.uint64) * 1_000_003 + 2**40  # large, sparse ids as labels
    g = GRAPHS[kind](GraphParams(64, 16, 100, "cosine"), capacity=100)  # grows past its capacity
    g.add(ids[:2000], x[:2000])
    g.add(ids[2000:], x[2000:])
    gone = ids[::3]
    assert g.delete(gone) == gone.size and g.delete(gone) == 0  # twice: nothing more to mark
    found = g.search(x[:200], 50, 100)
    assert found.shape == (200, 50) and not np.isin(found, gone).any()
    assert np.isin(found, ids).all()
    g.add(gone[:10], x[::3][:10])  # an upsert of a deleted id brings it back
    assert g.live == 3000 - gone.size + 10
    # hnswlib un-marks the label; the quantised graph adds a slot and its old one stays dead
    assert g.deleted == (gone.size - 10 if kind == "hnsw" else gone.size)
    assert (g.search(x[::3][:10], 1, 50)[:, 0] == gone[:10]).all()
    # an upsert of a live id replaces its vector: found by the new one, never twice
    g.add(ids[1:2], x[2500:2501])
    assert g.live == 3000 - gone.size + 10
    assert g.search(x[2500:2501], 2, 50)[0].tolist() in ([ids[1], ids[2500]], [ids[2500], ids[1]])
    assert (g.search(x[:100], 50, 100) == ids[1]).sum(axis=1).max() <= 1


@pytest.mark.parametrize("kind", GRAPHS)
def test_writes_during_a_build_reach_the_new_graph(corpus, kind):
    cfg = CollectionConfig.create("w", 384, "cosine", index={"type": kind, "dim": 64})
    eng = ShardEngine(cfg)
    docs = corpus["docs"]
    ids = np.arange(SUBSET, dtype=np.uint64)
    eng.upsert(ids, docs[:SUBSET])
    ann = ShardAnn(cfg.index, "cosine")
    ann.start_build(eng, "test")
    assert ann.status()["index_state"] == "building"
    # Writes arrive while the build thread runs: they must all be in the graph it swaps in.
    new = np.arange(SUBSET, SUBSET + 500, dtype=np.uint64)
    for op in range(5):
        part = slice(op * 100, (op + 1) * 100)
        eng.upsert(new[part], docs[SUBSET:][part]); ann.upsert(new[part], docs[SUBSET:][part])
        dead = ids[op * 300: op * 300 + 300]
        eng.delete(dead); ann.delete(dead, eng)
    assert ann.wait(300)
    st = ann.status()
    assert st["index_state"] == "ready" and st["index_builds"] == 1, st
    assert ann.graph.live == len(eng) == SUBSET - 1500 + 500
    plan = plan_search(cfg, 384, 10, ann=True)
    got_ids, got_keys = ann_shard.search_keys(eng, ann, docs[SUBSET:SUBSET + 500], plan)
    assert (got_ids[:, 0] == new).mean() > 0.97  # each new vector finds itself first
    assert not np.isin(got_ids, ids[:1500]).any()


@pytest.mark.parametrize("kind", GRAPHS)
def test_dead_fraction_rebuild_keeps_answers_correct(corpus, kind):
    cfg = CollectionConfig.create("d", 384, "cosine", index={"type": kind, "dim": 64})
    eng, docs, queries = ShardEngine(cfg), corpus["docs"][:SUBSET], corpus["queries"][:50]
    ids = np.arange(SUBSET, dtype=np.uint64)
    eng.upsert(ids, docs)
    ann = ShardAnn(cfg.index, "cosine")
    ann.start_build(eng, "test")
    assert ann.wait(300)
    plan = plan_search(cfg, 384, 10, ann=True)
    rng = np.random.default_rng(3)
    dead = rng.permutation(ids)[: int(0.4 * SUBSET)]
    seen_stale = False
    for part in np.array_split(dead, 8):
        eng.delete(part)
        ann.delete(part, eng)
        seen_stale |= ann.status()["index_state"] == "stale"
        got, keys = ann_shard.search_keys(eng, ann, queries, plan)
        res = merge_shard_results("cosine", queries, plan, [(got, keys)])
        assert np.isin(res.ids, eng.ids()).all(), "a deleted id was returned"
        live = eng.ids()
        _check_exact_scores(res.ids, res.scores, live, docs[live.astype(np.int64)], queries, 384)
    assert seen_stale, "30% dead should have started a rebuild while the old graph served"
    assert ann.wait(300)
    st = ann.status()
    assert st["index_builds"] >= 2 and st["index_state"] == "ready", st
    assert ann.graph.live == len(eng) and ann.graph.dead_fraction() < ann_shard.REBUILD_DEAD_FRACTION


@pytest.mark.parametrize("metric", ["cosine", "dot", "l2"])
@pytest.mark.parametrize("dense_ids", [True, False])
def test_single_query_rescore_is_exact(corpus, metric, dense_ids):
    """The one-query re-rank path (and the dense id table) give the batched path's exact keys."""
    docs = corpus["docs"][:3000].copy()
    docs[7, :64] = 0  # a zero prefix: cosine 0 at dims <= 64
    ids = np.arange(3000, dtype=np.uint64)
    if not dense_ids:  # ids far apart: the engine keeps no id table and binary-searches
        ids = ids * 1_000_003 + 2**40
    eng = ShardEngine(CollectionConfig.create("r", 384, metric))
    eng.upsert(ids, docs)
    eng.delete(ids[::5])
    assert (eng._row_table() is not None) == dense_ids
    cand = np.random.default_rng(1).choice(ids, size=(1, 80), replace=False)
    cand[0, :3] = [ids[7], ids[5], ids[-1] + 10]  # zero prefix, deleted, never stored
    dims = [48, 64, 384]
    for q in corpus["queries"][:4]:
        found, keys = eng.rescore_ids(q[None], cand, dims)
        found2, keys2 = eng.rescore_ids(np.stack([q, q]), np.repeat(cand, 2, axis=0), dims)
        np.testing.assert_array_equal(found[0], found2[1])
        np.testing.assert_allclose(keys[0], keys2[1], rtol=1e-6, atol=1e-6)
        pos = np.searchsorted(ids, cand[0])
        stored = (ids[np.minimum(pos, ids.size - 1)] == cand[0]) & (pos % 5 != 0)
        np.testing.assert_array_equal(found[0], stored)
        assert np.isneginf(keys[0][~stored]).all()
        x = docs[pos[stored]].astype(np.float64)
        for j, d in enumerate(dims):
            xd, qd = x[:, :d], q[:d].astype(np.float64)
            if metric == "cosine":
                nx = np.linalg.norm(xd, axis=1)
                want = np.where(nx > 0, xd @ qd / np.where(nx > 0, nx, 1), 0) / np.linalg.norm(qd)
            elif metric == "dot":
                want = xd @ qd
            else:  # l2 keys: 2 q.x - |x|^2 (the distance without |q|^2, negated)
                want = 2 * xd @ qd - (xd * xd).sum(1)
            np.testing.assert_allclose(keys[0][stored, j], want, rtol=1e-5, atol=1e-5)
    for n_q in (1, 3):  # no candidates at all: empty answers of the right shapes
        found, keys = eng.rescore_ids(corpus["queries"][:n_q], np.zeros((n_q, 0), np.uint64), dims)
        assert found.shape == (n_q, 0) and keys.shape == (n_q, 0, len(dims))
    eng.upsert(ids[:1] + 2**50, docs[:1])  # a far id: the table is dropped, lookups still right
    found, _ = eng.rescore_ids(corpus["queries"][:1], (ids[:4] + 0)[None], [384])
    np.testing.assert_array_equal(found[0], [False, True, True, True])
    assert eng._row_table() is None


@pytest.mark.parametrize("metric", ["dot", "l2"])
def test_quantised_graph_under_dot_and_l2(corpus, metric):
    """hnsw_sq8 trains its ranges on raw (unnormalised) prefixes under dot and l2: answers
    carry exact scores and find most of the exact top 10."""
    docs, queries = corpus["docs"][:SMALL] * 3.0, corpus["queries"][:50] * 3.0  # off the unit sphere
    ids = np.arange(SMALL, dtype=np.uint64)
    cfg = CollectionConfig.create("q", 384, metric, index={"type": "hnsw_sq8", "dim": 128})
    eng = ShardEngine(cfg)
    eng.upsert(ids, docs)
    ann = ShardAnn(cfg.index, metric)
    ann.start_build(eng, "test")
    assert ann.wait(300) and isinstance(ann.graph, SqAnnIndex)
    plan = plan_search(cfg, 384, 10, ann=True)
    res = merge_shard_results(metric, queries, plan, [ann_shard.search_keys(eng, ann, queries, plan)])
    _check_exact_scores(res.ids, res.scores, ids, docs, queries, 384, metric)
    exact = eng.search(queries, plan_search(cfg, 384, 10))
    assert _recall(res.ids.astype(np.int64), exact.ids.astype(np.int64)) >= 0.9


@pytest.mark.parametrize("kind", GRAPHS)
def test_default_index_and_candidates_reach_recall_on_one_shard(corpus, kind):
    """All of corpusA in one shard (fewer candidates in total than two shards re-rank), one
    query at a time: the default graph prefix and candidate count reach recall@10 0.95."""
    cfg = CollectionConfig.create("one", 384, "cosine", index={"type": kind})
    eng = ShardEngine(cfg, initial_capacity=len(corpus["docs"]))
    eng.upsert(np.arange(len(corpus["docs"]), dtype=np.uint64), corpus["docs"])
    ann = ShardAnn(cfg.index, "cosine", threads=2)
    ann.start_build(eng, "test")
    assert ann.wait(600) and ann.graph is not None
    assert (ann.graph.params.dim, ann.graph.params.ef_construction) == (
        DEFAULT_INDEX_DIM[kind], DEFAULT_EF_CONSTRUCTION[kind])
    queries = corpus["queries"]
    plan = plan_search(cfg, 384, 10, ann=True)
    found = np.vstack([merge_shard_results("cosine", q[None], plan,
                                           [ann_shard.search_keys(eng, ann, q[None], plan)]).ids
                       for q in queries])
    rec = _recall(found.astype(np.int64), corpus["gt_ids"][:, :10])
    assert rec >= 0.95, f"recall@10 {rec:.3f} at the default ({plan.ann_candidates} candidates)"


def test_single_query_merge_orders_like_the_batched_merge():
    """merge_shard_results' one-query path: (key desc, id asc), ties by id, as for a batch."""
    rng = np.random.default_rng(0)
    plan = plan_search(CollectionConfig.create("m", 8, "cosine"), 8, 5)
    for _ in range(50):
        ids = rng.permutation(40).astype(np.uint64)[None, :30]
        keys = rng.integers(0, 4, size=(1, 30)).astype(np.float32)  # many ties
        one = merge_shard_results("cosine", np.ones((1, 8), np.float32), plan, [(ids, keys)])
        two = merge_shard_results("cosine", np.ones((2, 8), np.float32), plan,
                                  [(np.repeat(ids, 2, 0), np.repeat(keys, 2, 0))])
        np.testing.assert_array_equal(one.ids[0], two.ids[1])
        np.testing.assert_array_equal(one.scores[0], two.scores[1])
        order = sorted(zip((-keys[0]).tolist(), ids[0].tolist()))[:5]
        assert one.ids[0].tolist() == [i for _, i in order]


@pytest.mark.parametrize("kind", GRAPHS)
def test_snapshot_keeps_the_graph_and_recovery_does_not_rebuild(corpus, tmp_path, kind):
    cfg = CollectionConfig.create("p", 384, "cosine", index={"type": kind, "dim": 64})
    docs, queries = corpus["docs"], corpus["queries"][:100]
    folder = str(tmp_path / "shard")
    ann = ShardAnn(cfg.index, "cosine")
    store = DurableShard(cfg, folder, fsync="none", ann=ann)
    store.upsert(np.arange(10_000, dtype=np.uint64), docs[:10_000])
    ann.start_build(store.engine, "test")
    assert ann.wait(300)
    store.snapshot()
    # after the snapshot: writes only in the log, replayed into the loaded graph
    store.upsert(np.arange(10_000, 10_500, dtype=np.uint64), docs[10_000:10_500])
    store.delete(np.arange(0, 200, dtype=np.uint64))
    plan = plan_search(cfg, 384, 10, ann=True)
    before = ann_shard.search_keys(store.engine, ann, queries, plan)
    store.close(snapshot=False)

    ann2 = ShardAnn(cfg.index, "cosine")
    store2 = DurableShard(cfg, folder, fsync="none", ann=ann2)
    st = ann2.status()
    assert st["index_state"] == "ready" and st["index_loaded"] and st["index_builds"] == 0, st
    assert ann2.graph.live == len(store2.engine) == 10_300
    after = ann_shard.search_keys(store2.engine, ann2, queries, plan)
    if kind == "hnsw":  # hnswlib's inserts replay identically into the loaded graph
        np.testing.assert_array_equal(after[0], before[0])
        np.testing.assert_allclose(after[1], before[1], atol=1e-6)
    else:  # FAISS draws new nodes' levels from an RNG that is not saved: an equivalent graph
        res = merge_shard_results("cosine", queries, plan, [after])
        live = store2.engine.ids()
        _check_exact_scores(res.ids, res.scores, live, docs[live.astype(np.int64)], queries, 384)
        ref = merge_shard_results("cosine", queries, plan, [before]).ids
        assert _recall(res.ids.astype(np.int64), ref.astype(np.int64)) >= 0.97
    store2.close(snapshot=False)

    # A damaged saved graph costs a rebuild, never the shard.
    snap = next(os.path.join(folder, d) for d in os.listdir(folder) if d.startswith("snapshot-"))
    with open(os.path.join(snap, ann_shard.GRAPH_FILE), "r+b") as f:
        f.truncate(1000)
    ann3 = ShardAnn(cfg.index, "cosine")
    store3 = DurableShard(cfg, folder, fsync="none", ann=ann3)
    assert ann3.graph is None and "unreadable" in ann3.load_problem
    assert len(store3.engine) == 10_300
    store3.close(snapshot=False)


# ----- through Ray and gRPC -------------------------------------------------------------
@pytest.fixture(scope="module")
def corpus_ann(gateway, coordinator, corpus):
    """All of corpusA in a 2-shard collection with the default index (hnsw on 128 dims)."""
    name = f"ann-corpusA-{uuid.uuid4().hex[:6]}"
    with Client(gateway.address, timeout=300) as c:
        info = c.create_collection(name, 384, "cosine", shards=2, index={"type": "hnsw"})
        assert info.index == {"type": "hnsw", "dim": 128, "m": 16, "ef_construction": 200}
        c.upsert(name, np.arange(len(corpus["docs"])), corpus["docs"])
        shards = _wait_ready(c, name, 600)
    yield name, shards
    coordinator.drop_collection(name)


def test_recall_at_defaults_on_corpusA(corpus_ann, client, corpus):
    name, shards = corpus_ann
    assert sum(s.index_vectors for s in shards) == len(corpus["docs"])
    assert all(s.index_dim == 128 and s.index_bytes > 0 and s.index_build_seconds > 0 for s in shards)
    queries = corpus["queries"]
    res = client.search(name, queries, k=10, ann=True)
    rec = _recall(res.ids.astype(np.int64), corpus["gt_ids"][:, :10])
    assert rec >= 0.95, f"recall@10 {rec:.3f} at the default ef/candidates"
    _check_exact_scores(res.ids, res.scores, np.arange(len(corpus["docs"]), dtype=np.uint64),
                        corpus["docs"], queries, 384)


def test_ann_rerank_is_exact_at_a_prefix_and_through_stages(corpus_ann, client, corpus):
    name, _ = corpus_ann
    docs, queries = corpus["docs"], corpus["queries"][:100]
    all_ids = np.arange(len(docs), dtype=np.uint64)
    res = client.search(name, queries, k=10, dim=192, ann=True, ef=200, candidates=100)
    _check_exact_scores(res.ids, res.scores, all_ids, docs, queries, 192)
    res = client.search(name, queries, k=10, funnel=[(128, 40)], ann=True)
    _check_exact_scores(res.ids, res.scores, all_ids, docs, queries, 384)
    # With as many candidates as vectors the walk finds everything: equal to exact search.
    small = client.search(name, queries[:5], k=10, ann=True, ef=2000, candidates=2000)
    exact = client.search(name, queries[:5], k=10)
    assert _recall(small.ids, exact.ids) >= 0.98


def test_target_recall_plans_ef_and_candidates_with_an_index(client, collection_name, coordinator,
                                                             corpus):
    docs, queries = corpus["docs"][:SUBSET], corpus["queries"]
    client.create_collection(collection_name, 384, "cosine", nested_dims=[64, 128, 384],
                             index={"dim": 64})
    client.upsert(collection_name, np.arange(SUBSET), docs)
    _wait_ready(client, collection_name)
    curve = coordinator.calibrate(collection_name, 10, queries=queries[:200])
    assert curve.index_dim == 64 and any(s.ann for s in curve.schedules)
    truth = client.search(collection_name, queries[200:], k=10).ids
    res = client.search(collection_name, queries[200:], k=10, target_recall=0.9)
    assert res.ann_used is not None, "with a ready index the cheapest schedule is a graph walk"
    assert _recall(res.ids, truth) >= 0.9
    only_ann = client.search(collection_name, queries[200:], k=10, target_recall=0.95, ann=True)
    assert only_ann.ann_used is not None and only_ann.calibrated_recall >= 0.95
    assert _recall(only_ann.ids, truth) >= 0.95


def test_deleted_ids_are_never_returned_and_never_twice(client, collection_name, corpus, coordinator):
    docs, queries = corpus["docs"][:SUBSET], corpus["queries"][:100]
    ids = np.arange(SUBSET, dtype=np.uint64) * 3 + 1
    client.create_collection(collection_name, 384, "cosine", shards=2, index={"dim": 64, "m": 12})
    client.upsert(collection_name, ids, docs)
    _wait_ready(client, collection_name)
    rng = np.random.default_rng(0)
    order = rng.permutation(SUBSET)
    dead = ids[order[: int(0.45 * SUBSET)]]  # past the rebuild threshold on both shards
    for part in np.array_split(dead, 6):
        client.delete(collection_name, part)
        res = client.search(collection_name, queries, k=10, ann=True)
        done = dead[: np.flatnonzero(dead == part[-1])[0] + 1]
        assert not np.isin(res.ids, done).any(), "a deleted id was returned"
        assert all(len(set(r)) == len(r) for r in res.ids.tolist())
    shards = _wait_ready(client, collection_name)
    assert all(s.index_builds >= 2 for s in shards), [s.index_builds for s in shards]  # rebuilt
    live = np.sort(ids[order[int(0.45 * SUBSET):]])
    res = client.search(collection_name, queries, k=10, ann=True)
    _check_exact_scores(res.ids, res.scores, live, docs[((live - 1) // 3).astype(np.int64)], queries, 384)
    exact = client.search(collection_name, queries, k=10)
    assert _recall(res.ids, exact.ids) >= 0.95
    # deleted ids that are upserted again come back
    client.upsert(collection_name, dead[:5], docs[((dead[:5] - 1) // 3).astype(np.int64)])
    again = client.search(collection_name, docs[((dead[:5] - 1) // 3).astype(np.int64)], k=1, ann=True)
    assert (again.ids[:, 0] == dead[:5]).all()


def test_create_index_builds_in_background_while_exact_search_serves(client, collection_name, corpus):
    docs, queries = corpus["docs"][:SMALL], corpus["queries"][:20]
    ids = np.arange(SMALL, dtype=np.uint64)
    client.create_collection(collection_name, 384, "cosine", shards=1)
    client.upsert(collection_name, ids, docs)
    with pytest.raises(FailedPrecondition, match="no ANN index"):
        client.search(collection_name, queries, k=10, ann=True)
    # a slowish build (wide beam) so searches certainly arrive while it runs
    info = client.create_index(collection_name, {"type": "hnsw", "dim": 128, "m": 16,
                                                 "ef_construction": 400})
    assert info.index["dim"] == 128 and info.shard_info[0].index_state == "building"
    during = 0
    new_ids = np.arange(SMALL, SMALL + 200, dtype=np.uint64)
    extra = corpus["docs"][SMALL:SMALL + 200]
    client.upsert(collection_name, new_ids, extra)  # a write during the build
    all_ids, all_docs = np.concatenate([ids, new_ids]), np.concatenate([docs, extra])
    while client.describe_collection(collection_name).shard_info[0].index_state == "building":
        res = client.search(collection_name, queries, k=10, ann=True)
        # the build may finish between the describe and the search; only a search that
        # provably ran while the shard was still building must be the exact fallback
        if client.describe_collection(collection_name).shard_info[0].index_state != "building":
            break
        assert_matches_oracle(res.ids, res.scores, all_ids, all_docs, queries, "cosine", 384, 10)
        during += 1
    shard = _wait_ready(client, collection_name)[0]
    assert during > 0 and shard.index_fallback_queries > 0
    assert shard.index_vectors == SMALL + 200 and 0 < shard.index_progress <= 1
    res = client.search(collection_name, extra[:50], k=1, ann=True)
    assert (res.ids[:, 0] == new_ids[:50]).all()  # the write during the build is in the graph


def test_quantised_graph_over_grpc_retrains_as_it_grows(client, collection_name, corpus):
    """index type hnsw_sq8 (FAISS HNSW over 8-bit codes): created empty, its ranges train
    on the first small write; growing 4-fold past that rebuilds (retrains) it, and every
    answer meanwhile carries exact scores, never a deleted id."""
    docs, queries = corpus["docs"][:SMALL], corpus["queries"][:50]
    info = client.create_collection(collection_name, 384, "cosine", shards=1,
                                    index={"type": "hnsw_sq8", "dim": 128})
    assert info.index == {"type": "hnsw_sq8", "dim": 128, "m": 16, "ef_construction": 128}
    client.upsert(collection_name, np.arange(200), docs[:200])  # trains the ranges on 200 rows
    _wait_ready(client, collection_name)
    client.upsert(collection_name, np.arange(200, SMALL), docs[200:])  # 50x: a retrain
    shard = _wait_ready(client, collection_name)[0]
    assert shard.index_builds >= 2 and shard.index_vectors == SMALL, shard
    client.delete(collection_name, np.arange(0, SMALL, 5))
    live = np.setdiff1d(np.arange(SMALL), np.arange(0, SMALL, 5)).astype(np.uint64)
    res = client.search(collection_name, queries, k=10, ann=True)
    _check_exact_scores(res.ids, res.scores, live, docs[live.astype(np.int64)], queries, 384)
    exact = client.search(collection_name, queries, k=10)
    assert _recall(res.ids.astype(np.int64), exact.ids.astype(np.int64)) >= 0.95


def test_bad_ann_requests_get_clear_errors(client, collection_name, corpus):
    client.create_collection(collection_name, 384, "cosine", index={"dim": 32})
    client.upsert(collection_name, np.arange(100), corpus["docs"][:100])
    q = corpus["queries"][:2]
    with pytest.raises(InvalidArgument, match="set ann=True"):
        client.search(collection_name, q, k=5, ef=50)
    with pytest.raises(InvalidArgument, match="candidates must be between"):
        client.search(collection_name, q, k=5, ann=True, candidates=3)
    with pytest.raises(InvalidArgument, match="index dim 500 is outside"):
        client.create_index(collection_name, {"dim": 500})
    with pytest.raises(InvalidArgument, match="unknown index type"):
        client.create_collection(collection_name + "x", 8, "dot", index={"type": "ivf"})
    with pytest.raises(InvalidArgument, match="ANN graph walks 32"):
        client.search(collection_name, q[:, :16], k=5, dim=16, ann=True)
    res = client.search(collection_name, q, k=5, ann=True)  # the server still serves
    assert res.ids.shape == (2, 5)


@pytest.fixture
def durable(ray_cluster, tmp_path):
    from nestvec.cluster._distributed.coordinator import Coordinator
    from nestvec.cluster._server.serve import GatewayThread

    ns = f"{ray_cluster}-ann-{uuid.uuid4().hex[:6]}"
    coord = Coordinator(namespace=ns, create_catalog=True, data_dir=str(tmp_path / "data"))
    gw = GatewayThread(coord)
    yield ns, coord, gw, str(tmp_path / "data")
    gw.stop()
    for cfg in coord.list_collections():
        coord.drop_collection(cfg.name)
    ray.kill(ray.get_actor("catalog", namespace=ns))


def _restart_shard(ns: str, actor_name: str) -> None:
    handle = ray.get_actor(actor_name, namespace=ns)
    pid = ray.get(handle.pid.remote())
    ray.kill(handle, no_restart=False)  # Ray restarts it; __init__ recovers from disk
    end = time.monotonic() + 120
    while time.monotonic() < end:
        try:
            if ray.get(handle.pid.remote(), timeout=30) != pid:
                return
        except (ray.exceptions.RayActorError, ray.exceptions.GetTimeoutError):
            time.sleep(0.2)
    raise AssertionError("shard actor did not restart")


def test_index_survives_restart_without_rebuild(durable, corpus):
    ns, coord, gw, data_dir = durable
    docs, queries = corpus["docs"], corpus["queries"][:100]
    name = "ann-restart"
    with Client(gw.address, timeout=120) as c:
        c.create_collection(name, 384, "cosine", index={"dim": 64})
        c.upsert(name, np.arange(SMALL), docs[:SMALL])
        _wait_ready(c, name)
        coord.checkpoint()  # the snapshot now holds the graph
        c.upsert(name, np.arange(SMALL, SMALL + 300), docs[SMALL:SMALL + 300])  # log only
        c.delete(name, np.arange(100))
        before = c.search(name, queries, k=10, ann=True)
        actor = c.describe_collection(name).shard_info[0].actor_name

        _restart_shard(ns, actor)
        s = c.describe_collection(name).shard_info[0]
        assert s.index_state == "ready" and s.index_loaded and s.index_builds == 0, s
        assert s.index_vectors == s.vectors == SMALL + 200
        after = c.search(name, queries, k=10, ann=True)
        np.testing.assert_array_equal(after.ids, before.ids)
        np.testing.assert_allclose(after.scores, before.scores, atol=1e-6)

        # A missing saved graph: rebuilt in the background while exact answers serve.
        snaps = [os.path.join(r, d) for r, ds, _ in os.walk(data_dir) for d in ds
                 if d.startswith("snapshot-")]
        assert len(snaps) == 1
        for f in (ann_shard.GRAPH_FILE, ann_shard.META_FILE):
            os.remove(os.path.join(snaps[0], f))
        _restart_shard(ns, actor)
        s = c.describe_collection(name).shard_info[0]
        assert not s.index_loaded and (
            s.index_state == "building" and "no saved graph" in s.index_reason
            or s.index_state == "ready" and s.index_builds == 1), s
        live = np.arange(100, SMALL + 300)
        res = c.search(name, queries, k=10, ann=True)  # exact while building, graph after
        _check_exact_scores(res.ids, res.scores, live.astype(np.uint64), docs[live], queries, 384)
        s = _wait_ready(c, name)[0]
        assert s.index_builds == 1 and not s.index_loaded
