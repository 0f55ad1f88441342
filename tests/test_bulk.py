"""Ray Data bulk ingest and batch search (cluster/_ops/bulk.py) on the session's Ray cluster.

Real Ray Data tasks upsert into real shard actors; results are checked against
the brute-force oracle. (tests/test_multinode.py runs the same jobs with
`ray job submit` on a 3-node cluster.)
"""
from __future__ import annotations

import subprocess
import sys

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from nestvec.cluster._ops import bulk
from nestvec.errors import InvalidArgument, NotFound
from oracle import assert_matches_oracle

N = 3000


def write_parquet(path, ids, vectors, fixed: bool, files: int = 3) -> None:
    """`files` Parquet files: an id column and a list or fixed-size-list vector column."""
    path.mkdir(parents=True, exist_ok=True)
    for i, part in enumerate(np.array_split(np.arange(ids.size), files)):
        flat = pa.array(vectors[part].reshape(-1))
        vec = (pa.FixedSizeListArray.from_arrays(flat, vectors.shape[1]) if fixed else
               pa.ListArray.from_arrays(pa.array(np.arange(part.size + 1) * vectors.shape[1],
                                                 type=pa.int32()), flat))
        pq.write_table(pa.table({"id": pa.array(ids[part]), "vector": vec}),
                       path / f"part-{i:03d}.parquet", row_group_size=500)


@pytest.mark.parametrize("fixed", [True, False], ids=["fixed_size_list", "list"])
def test_parquet_ingest_is_exact_and_idempotent(coordinator, collection_name, corpus, tmp_path, fixed):
    docs = corpus["docs"][:N]
    ids = np.arange(N, dtype=np.uint64) * 7 + 3
    write_parquet(tmp_path / "in", ids, docs, fixed)
    lines = []
    rep = bulk.ingest(collection_name, str(tmp_path / "in"), namespace=coordinator.namespace,
                      batch_rows=700, create_metric="cosine", create_shards=3,
                      progress=lines.append)
    assert (rep.files, rep.rows, rep.collection_vectors) == (3, N, N)
    assert any(f"{N}/{N} rows" in line for line in lines), lines
    # A second run (say, after a failure part-way) rewrites the same ids: nothing doubles.
    again = bulk.ingest(collection_name, str(tmp_path / "in"), namespace=coordinator.namespace,
                        batch_rows=1000, progress=lambda _: None)
    assert (again.rows, again.collection_vectors) == (N, N)
    q = corpus["queries"][:20]
    res = coordinator.search(collection_name, q, k=10, dim=128)
    assert_matches_oracle(res.ids, res.scores, ids, docs, q, "cosine", 128, 10)
    got = coordinator.get(collection_name, ids[[0, 1234, N - 1]])
    np.testing.assert_array_equal(got.vectors, docs[[0, 1234, N - 1]])


def test_npy_ingest_and_batch_search_match_the_oracle(coordinator, collection_name, corpus, tmp_path):
    docs = corpus["docs"][:N]
    (tmp_path / "in").mkdir()
    np.save(tmp_path / "in" / "a.npy", docs[:1000].astype(np.float16))  # float16 is read too
    np.save(tmp_path / "in" / "b.npy", docs[1000:])
    rep = bulk.ingest(collection_name, str(tmp_path / "in"), namespace=coordinator.namespace,
                      batch_rows=800, id_offset=10, create_metric="dot", create_shards=2,
                      progress=lambda _: None)
    assert (rep.rows, rep.collection_vectors) == (N, N)
    stored = np.concatenate([docs[:1000].astype(np.float16).astype(np.float32), docs[1000:]])
    ids = np.arange(10, 10 + N, dtype=np.uint64)  # id_offset + row number across files in name order

    queries = corpus["queries"][:50]
    np.save(tmp_path / "q.npy", queries)
    out = tmp_path / "out"
    srep = bulk.batch_search(collection_name, str(tmp_path / "q.npy"), str(out),
                             namespace=coordinator.namespace, k=5, funnel=[(64, 200)],
                             batch_rows=16, progress=lambda _: None)
    assert srep.queries == 50
    qid, got_ids, got_scores = bulk.read_results(str(out))
    np.testing.assert_array_equal(qid, np.arange(50))
    assert_matches_oracle(got_ids, got_scores, ids, stored, queries, "dot", 384, 5, funnel=[(64, 200)])

    # Parquet queries with their own ids, ranked at a prefix.
    write_parquet(tmp_path / "qp", np.arange(500, 550, dtype=np.uint64), queries, fixed=True, files=2)
    bulk.batch_search(collection_name, str(tmp_path / "qp"), str(tmp_path / "out2"),
                      namespace=coordinator.namespace, k=7, dim=64, progress=lambda _: None)
    qid, got_ids, got_scores = bulk.read_results(str(tmp_path / "out2"))
    np.testing.assert_array_equal(qid, np.arange(500, 550))
    assert_matches_oracle(got_ids, got_scores, ids, stored, queries, "dot", 64, 7)


def test_bad_inputs_are_clear_errors(coordinator, collection_name, corpus, tmp_path):
    with pytest.raises(NotFound, match="pass --metric"):
        np.save(tmp_path / "x.npy", corpus["docs"][:10])
        bulk.ingest(collection_name, str(tmp_path / "x.npy"), namespace=coordinator.namespace)
    with pytest.raises(InvalidArgument, match="does not exist"):
        bulk.ingest(collection_name, str(tmp_path / "nope"), namespace=coordinator.namespace)
    (tmp_path / "mixed").mkdir()
    np.save(tmp_path / "mixed" / "a.npy", corpus["docs"][:10])
    write_parquet(tmp_path / "mixed", np.arange(10, dtype=np.uint64), corpus["docs"][:10], True, 1)
    with pytest.raises(InvalidArgument, match="both"):
        bulk.ingest(collection_name, str(tmp_path / "mixed"), namespace=coordinator.namespace)
    ragged = pa.ListArray.from_arrays(pa.array([0, 3, 5], type=pa.int32()), pa.array(np.ones(5)))
    with pytest.raises(InvalidArgument, match="different lengths"):
        bulk.arrow_vectors(ragged)


def test_cli_parses_funnel_and_rejects_garbage():
    from nestvec.cluster._ops.cli import _parser

    args = _parser().parse_args(["batch-search", "q.npy", "--output", "o", "--collection", "c",
                                 "--funnel", "64:400,128:100"])
    assert args.funnel == [(64, 400), (128, 100)]
    bad = subprocess.run([sys.executable, "-m", "nestvec.cluster._ops.cli", "batch-search", "q.npy",
                          "--output", "o", "--collection", "c", "--funnel", "64x400"],
                         capture_output=True, text=True)
    assert bad.returncode == 2 and "DIM:KEEP" in bad.stderr


def test_rerun_after_a_failed_ingest_completes_without_duplicates(coordinator, collection_name,
                                                                  corpus, tmp_path):
    docs = corpus["docs"][:N].copy()
    ids = np.arange(N, dtype=np.uint64)
    bad = docs.copy()
    bad[N - 5] = 0  # a zero vector has no cosine: the last file's upsert is refused
    write_parquet(tmp_path / "in", ids, bad, fixed=True, files=3)
    with pytest.raises(InvalidArgument, match="zero norm.*run it again"):
        bulk.ingest(collection_name, str(tmp_path / "in"), namespace=coordinator.namespace,
                    batch_rows=500, create_metric="cosine", create_shards=2, progress=lambda _: None)
    _, stats = coordinator.describe_collection(collection_name)
    partial = sum(s["vectors"] for s in stats)
    assert partial < N  # the job failed part-way (some batches may have landed)
    write_parquet(tmp_path / "in", ids, docs, fixed=True, files=3)  # fix the data, run it again
    rep = bulk.ingest(collection_name, str(tmp_path / "in"), namespace=coordinator.namespace,
                      batch_rows=500, progress=lambda _: None)
    assert (rep.rows, rep.collection_vectors) == (N, N)
    got = coordinator.get(collection_name, ids)
    np.testing.assert_array_equal(got.vectors, docs)
