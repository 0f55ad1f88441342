"""An optional fused scan + top-k kernel: FAISS's brute-force `knn` on a contiguous matrix.

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
