"""Exact search works in query chunks under a per-shard memory budget (shard_engine's
score_budget): a tiny budget gives exactly the oracle's answer, and a search that
would need 1.6 GB of scores at once stays within the budget's bounds."""
from __future__ import annotations

import subprocess
import sys
import textwrap

import numpy as np
import pytest

from oracle import assert_matches_oracle
from test_engine import METRICS, make_ids, new_engine, search


@pytest.mark.parametrize("metric", METRICS)
def test_chunked_scans_match_the_oracle(corpus, metric):
    docs, queries = corpus["docs"][:4000], corpus["queries"][:40]
    ids = make_ids(np.arange(docs.shape[0]))
    e = new_engine(metric)
    e.upsert(ids, docs)
    whole = search(e, queries, k=10, dim=128)
    e.score_budget = 3 * docs.shape[0] * 8  # 3 queries a chunk: 14 chunks
    for dim, funnel in ((128, None), (384, None), (384, [(64, 200)]), (384, [(32, 300), (128, 50)])):
        res = search(e, queries, k=10, dim=dim, funnel=funnel)
        if funnel is None:
            assert_matches_oracle(res.ids, res.scores, ids, docs, queries, metric, dim, 10)
    chunked = search(e, queries, k=10, dim=128)
    np.testing.assert_array_equal(chunked.ids, whole.ids)
    # BLAS may round a row's dot product differently in a smaller batch (as it does for a
    # query searched alone): the same ids, scores equal to float32 rounding.
    np.testing.assert_allclose(chunked.scores, whole.scores, rtol=0, atol=1e-6)
    e.score_budget = 1 << 40
    big = search(e, queries, k=10, dim=384, funnel=[(64, 200)])
    e.score_budget = 3 * docs.shape[0] * 8
    small = search(e, queries, k=10, dim=384, funnel=[(64, 200)])
    np.testing.assert_array_equal(small.ids, big.ids)


def test_a_huge_search_stays_within_the_budget():
    """200k rows x 2,000 queries would be 1.6 GB of float32 scores at once; with a
    32 MiB budget the peak RSS growth of the search stays under 3x budget + 64 MiB."""
    code = textwrap.dedent("""
        import resource, numpy as np
        from nestvec.cluster._engine.collection import CollectionConfig, plan_search
        from nestvec.cluster._engine.shard_engine import ShardEngine
        rng = np.random.default_rng(0)
        e = ShardEngine(CollectionConfig.create("m", 64, "dot"))
        e.upsert(np.arange(200_000, dtype=np.uint64), rng.standard_normal((200_000, 64), dtype=np.float32))
        e.score_budget = 32 << 20
        q = rng.standard_normal((2_000, 64), dtype=np.float32)
        plan = plan_search(e.config, 64, 10, 64)
        e.search(q[:8], plan)  # warm up the BLAS and numpy pools
        before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        r = e.search(q, plan)
        after = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        assert r.ids.shape == (2_000, 10)
        print(after - before)
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    grown = int(out.stdout.split()[-1])
    print(f"peak RSS growth {grown / 2**20:.0f} MiB for a 1.6 GB-score search at a 32 MiB budget")
    assert grown <= 3 * (32 << 20) + (64 << 20)
