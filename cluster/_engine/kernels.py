"""Optional FAISS kernels: a fused scan + top-k (`knn`) and an in-place re-rank (`row_dots`).

FAISS keeps a heap per query while it scans (BLAS blocks, then a threshold
check per score). Against numpy's product + argpartition (~0.14 ms per query per
100k rows for the selection alone) it was about 2x faster for batches of 20+
queries on the small contiguous prefix copies; against the threshold selection
(topk._prefilter) with the batch split over the cores (parallel.py) it is 2-4x
slower at batches of 20-64 and only ahead from about 128 (flat 64 at batch 128:
6,300 vs 4,700 QPS, corpusA, 2 threads), hence MIN_BATCH. FAISS is an
optional dependency (`pip install nestvec[fast]`); without it the engine uses
numpy everywhere and answers the same.
"""
from __future__ import annotations

import numpy as np

try:
    import faiss
except ImportError:  # the engine falls back to numpy
    faiss = None

# FAISS 1.15's default (128000) sends every batch below it to a per-pair SIMD
# loop; at 20 it uses BLAS, which is what makes it fast here. Process-wide.
if faiss is not None:
    faiss.cvar.distance_compute_blas_threshold = 20

MIN_BATCH = 96  # below this numpy's product + threshold selection is faster (see above)


def available() -> bool:
    return faiss is not None


def set_threads(n: int) -> None:
    """FAISS's OpenMP pool (its BLAS is covered by threadpoolctl with numpy's)."""
    if faiss is not None:
        faiss.omp_set_num_threads(n)


def knn(x: np.ndarray, q: np.ndarray, k: int, l2: bool) -> tuple[np.ndarray, np.ndarray]:
    """(scores [Q, k], rows [Q, k]) of the k best rows of contiguous `x` for each query:
    inner products (higher first), or squared l2 distances (lower first)."""
    metric = faiss.METRIC_L2 if l2 else faiss.METRIC_INNER_PRODUCT
    return faiss.knn(np.ascontiguousarray(q, dtype=np.float32), x, k, metric=metric)


def row_dots(x: np.ndarray, q: np.ndarray, rows: np.ndarray) -> np.ndarray:
    """[M] float32 inner products of one query `q` [d] with rows `rows` of `x`
    ([N, d] float32, C-contiguous), read where they lie: no gathered copy.

    A single query's ANN re-rank: FAISS's loop took ~6 µs for 60 rows of 384 dims
    against ~9 µs for numpy's take + matrix-vector product, and a copy of the rows
    also evicts the graph from the cache before the next walk (whole query ~10 µs
    less). Run on one OpenMP thread: FAISS splits this loop by query, and waking a
    second thread for one query cost ~40 µs, more than the loop.
    """
    out = np.empty(rows.size, dtype=np.float32)
    rows = np.ascontiguousarray(rows, dtype=np.int64)
    q = np.ascontiguousarray(q, dtype=np.float32)
    with_threads(1, faiss.fvec_inner_products_by_idx, faiss.swig_ptr(out), faiss.swig_ptr(q),
                 faiss.swig_ptr(x), faiss.swig_ptr(rows), x.shape[1], 1, rows.size)
    return out


def with_threads(threads: int, fn, *args):
    """fn(*args) with FAISS's OpenMP pool at `threads` for the calling thread.

    OpenMP keeps the count per calling thread: other threads keep theirs, and a
    shard's socket and Ray threads start at the worker's default (1)."""
    before = faiss.omp_get_max_threads()
    faiss.omp_set_num_threads(threads)
    try:
        return fn(*args)
    finally:
        faiss.omp_set_num_threads(before)
