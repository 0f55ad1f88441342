"""Concurrent writers and readers over real gRPC: nothing acknowledged is lost or mixed up.

Four writers upsert, replace and delete in their own id ranges at once while two
readers search; every answer seen during the storm is well formed, and at the end
the stored state is exactly the writers' ledger and searches equal brute force.
"""
from __future__ import annotations

import threading
import uuid

import numpy as np

from nestvec.client import Client
from oracle import assert_matches_oracle


def test_concurrent_writers_and_readers(gateway, corpus):
    docs, queries = corpus["docs"][:8000], corpus["queries"][:20]
    name = f"conc-rw-{uuid.uuid4().hex[:6]}"
    with Client(gateway.address, timeout=60) as c:
        c.create_collection(name, 384, "cosine", shards=3)
    ledger: list[dict[int, int]] = [{} for _ in range(4)]  # per writer: id -> doc row
    stop, problems = threading.Event(), []

    def writer(w: int):
        rng = np.random.default_rng(w)
        base = w * 1_000_000
        with Client(gateway.address, timeout=60) as c:
            for step in range(40):
                ids = base + rng.choice(400, 25, replace=False)
                rows = rng.integers(0, docs.shape[0], 25)
                c.upsert(name, ids, docs[rows])
                ledger[w].update(zip(ids.tolist(), rows.tolist()))
                if step % 5 == 4:
                    victims = rng.choice(sorted(ledger[w]), 5, replace=False).tolist()
                    c.delete(name, victims)
                    for v in victims:
                        ledger[w].pop(v)

    def reader():
        with Client(gateway.address, timeout=60) as c:
            while not stop.is_set():
                r = c.search(name, queries[:4], k=10, dim=64)
                for row, scores in zip(r.ids, r.scores):
                    if len(set(row.tolist())) != len(row) or np.any(np.diff(scores) > 1e-6):
                        problems.append((row, scores))

    writers = [threading.Thread(target=writer, args=(w,)) for w in range(4)]
    readers = [threading.Thread(target=reader) for _ in range(2)]
    for t in writers + readers:
        t.start()
    for t in writers:
        t.join(300)
    stop.set()
    for t in readers:
        t.join(60)
    assert not problems, problems[:2]

    truth = {i: r for part in ledger for i, r in part.items()}
    ids = np.array(sorted(truth), dtype=np.uint64)
    vecs = docs[[truth[i] for i in ids.tolist()]]
    with Client(gateway.address, timeout=60) as c:
        got = c.get(name, ids)
        assert got.missing_ids.size == 0
        np.testing.assert_array_equal(got.vectors, vecs)
        assert c.describe_collection(name).vectors == ids.size
        for dim in (64, 384):
            r = c.search(name, queries, k=10, dim=dim)
            assert_matches_oracle(r.ids, r.scores, ids, vecs, queries, "cosine", dim, 10)
        c.drop_collection(name)
