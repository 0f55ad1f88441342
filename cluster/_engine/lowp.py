"""Low-precision copies of the leading dims, for a funnel's first stage.

A collection created with `first_stage="float16"` or `"int8"` keeps, beside its
float32 vectors, a copy of each nested prefix of 65..LOWP_MAX_DIM dims in that
precision (under cosine, rows normalised at their own width first). A funnel
whose first stage runs at such a dim shortlists on the copy: int8 reads a
quarter of the bytes of float32, so a 128-dim int8 stage costs about what a
32-dim float32 one does in memory traffic, with 128 dims' recall. Later stages
and the final rank always use the float32 vectors, so returned scores stay exact.

int8 is scalar-quantised per dimension, FAISS's `QT_8bit` layout: a code c in
0..255 stands for vmin + (c + 0.5) / 255 * vdiff. The ranges are the shard's
own per-dimension min and max (widened by INT8_MARGIN), trained on its rows and
re-trained whenever its row count has doubled since, so rows written later are
rarely clipped (a clipped row only scores a little off in the shortlist).

Kernel: FAISS's `IndexScalarQuantizer`, which decodes and scores in SIMD (there
is no int8 or float16 BLAS to call). It serves batches of up to SIMD_MAX_BATCH
queries; larger batches are cheaper as one float32 BLAS product, so they (and
every search without FAISS installed) shortlist exactly on the float32 rows.
Both end in the same exact re-rank; they can differ only where the
low-precision scan missed a row of the exact shortlist (see lowp_overfetch).
"""
from __future__ import annotations

import numpy as np

from nestvec.cluster._engine import kernels

PRECISIONS = ("float32", "float16", "int8")
LOWP_MAX_DIM = 128        # nested dims up to this (and below the full dim) get a copy...
# ...above this one: up to 64 dims the engine's contiguous float32 copies
# (engine.FAST_PREFIX_MAX_DIM) scan faster than the scalar-quantizer SIMD
# scan (bench_recall_qps, corpusA: 2,239 vs 1,267 QPS for 64 dims keep 200).
LOWP_MIN_DIM = 64
INT8_MARGIN = 0.05        # each range widened by this fraction of its span on each side
SIMD_MAX_BATCH = 8        # above this a float32 BLAS product is faster than the SIMD scan


def has_copy(d: int, dim: int) -> bool:
    """Whether a collection of `dim` keeps a low-precision copy of nested dim `d`."""
    return LOWP_MIN_DIM < d <= LOWP_MAX_DIM and d < dim


def lowp_overfetch(keep: int) -> int:
    """Rows a low-precision shortlist takes so that `keep` survive by their exact key.

    The extra rows absorb quantisation error at the cut: on corpusA, 128 dims
    keep 100 in int8 shortlists the same 100 rows as float32 for every query.
    """
    return keep + max(16, keep // 4)


class QuantizedPrefix:
    """One prefix width's low-precision rows, [capacity, dim], and its search kernels."""

    def __init__(self, dim: int, precision: str, capacity: int, l2: bool = False):
        if precision not in ("float16", "int8"):
            raise ValueError(f"no low-precision copy for {precision!r}")
        self.dim = dim
        self.precision = precision
        self.l2 = l2  # scan by squared l2 distance (lower first), else by inner product
        self.codes = np.zeros((capacity, dim), dtype=np.uint8 if precision == "int8" else np.float16)
        self.vmin: np.ndarray | None = None   # int8: per-dimension range
        self.vdiff: np.ndarray | None = None
        self.trained_rows = 0
        self._index = None                    # FAISS index over codes[:n]; None after a write

    # ----- writes ---------------------------------------------------------------
    def needs_training(self, rows_now: int) -> bool:
        return self.precision == "int8" and (self.vmin is None or rows_now >= 2 * self.trained_rows)

    def train(self, x: np.ndarray) -> None:
        """Per-dimension ranges from `x` (int8 only); every stored row must be re-encoded after."""
        lo = x.min(axis=0).astype(np.float64)
        hi = x.max(axis=0).astype(np.float64)
        span = np.maximum(hi - lo, 1e-12)
        self.vmin = (lo - INT8_MARGIN * span).astype(np.float32)
        self.vdiff = (span * (1 + 2 * INT8_MARGIN)).astype(np.float32)
        self.trained_rows = x.shape[0]

    def write(self, rows, x: np.ndarray) -> None:
        self.codes[rows] = self.encode(x)
        self._index = None

    def encode(self, x: np.ndarray) -> np.ndarray:
        if self.precision == "float16":
            return x.astype(np.float16)
        unit = np.clip((x - self.vmin) / self.vdiff, 0.0, 1.0)
        return np.floor(unit * 255).astype(np.uint8)  # FAISS's Codec8bit encoding

    def decode(self, start: int, stop: int) -> np.ndarray:
        """Rows start..stop as the float32 values the codes stand for."""
        c = self.codes[start:stop]
        if self.precision == "float16":
            return c.astype(np.float32)
        return self.vmin + (c.astype(np.float32) + 0.5) * (self.vdiff / 255)

    def keep_rows(self, keep: np.ndarray) -> None:
        """Compaction: rows `keep` move to the front, in order."""
        self.codes[: keep.size] = self.codes[keep]
        self._index = None

    def grow(self, capacity: int) -> None:
        out = np.zeros((capacity, self.dim), dtype=self.codes.dtype)
        out[: self.codes.shape[0]] = self.codes
        self.codes = out

    def nbytes(self) -> int:
        return int(self.codes.nbytes)

    # ----- search ---------------------------------------------------------------
    @staticmethod
    def serves(batch: int) -> bool:
        """Whether a batch of this many queries shortlists here (else exactly, in float32)."""
        return kernels.available() and batch <= SIMD_MAX_BATCH

    def search(self, q: np.ndarray, n: int, k: int) -> tuple[np.ndarray, np.ndarray]:
        """FAISS's SIMD scan over codes[:n]: (scores [Q, k], rows [Q, k]); inner products
        (higher first) or, with l2, squared distances (lower first) to the decoded rows."""
        index = self._faiss_index(n)
        return index.search(np.ascontiguousarray(q, dtype=np.float32), k)

    def _faiss_index(self, n: int):
        # Rebuilt from the codes after any write (a copy of n * dim bytes), then reused.
        if self._index is None or self._index.ntotal != n:
            faiss = kernels.faiss
            qt = (faiss.ScalarQuantizer.QT_8bit if self.precision == "int8"
                  else faiss.ScalarQuantizer.QT_fp16)
            metric = faiss.METRIC_L2 if self.l2 else faiss.METRIC_INNER_PRODUCT
            index = faiss.IndexScalarQuantizer(self.dim, qt, metric)
            if self.precision == "int8":
                faiss.copy_array_to_vector(np.concatenate([self.vmin, self.vdiff]), index.sq.trained)
                index.is_trained = True
            index.add_sa_codes(np.ascontiguousarray(self.codes[:n]).view(np.uint8))
            self._index = index
        return self._index
