"""A mergeable log-bucketed latency histogram (HDR/DDSketch style).

Buckets grow geometrically: bucket i holds values in (LOW * g**(i-1), LOW * g**i]
with g = (1 + a) / (1 - a). A percentile is answered with the bucket's midpoint
2 * LOW * g**i / (g + 1), which is within a relative error `a` of every value in
the bucket (default a = 1%, so a reported 10.0 ms p99 means the true p99 sample
lies in 9.9 - 10.1 ms). Values below LOW (1 microsecond) and above HIGH (1,000 s)
land in the end buckets; min and max are kept exactly.

Merging adds the bucket counts, so the merge of per-worker histograms is exactly
the histogram of all samples: percentiles are computed from the merged counts,
never averaged across workers.
"""
from __future__ import annotations

import math

import numpy as np

LOW = 1e-6     # seconds
HIGH = 1e3     # seconds
DEFAULT_ACCURACY = 0.01


class Histogram:
    """Latencies in seconds. `record`/`record_many` add samples; `merge` adds another histogram."""

    def __init__(self, accuracy: float = DEFAULT_ACCURACY):
        if not 0 < accuracy < 1:
            raise ValueError(f"accuracy must be in (0, 1), got {accuracy}")
        self.accuracy = accuracy
        self.gamma = (1 + accuracy) / (1 - accuracy)
        self._log_gamma = math.log(self.gamma)
        self.nbuckets = int(math.ceil(math.log(HIGH / LOW) / self._log_gamma)) + 1
        self.counts = np.zeros(self.nbuckets, dtype=np.int64)
        self.count = 0
        self.total = 0.0           # sum of samples, for the mean
        self.min = math.inf
        self.max = -math.inf

    # ----- recording ------------------------------------------------------------
    def _index(self, values: np.ndarray) -> np.ndarray:
        v = np.clip(values, LOW, HIGH)
        idx = np.ceil(np.log(v / LOW) / self._log_gamma).astype(np.int64)
        return np.clip(idx, 0, self.nbuckets - 1)

    def record(self, value: float) -> None:
        self.record_many(np.array([value], dtype=np.float64))

    def record_many(self, values) -> None:
        v = np.asarray(values, dtype=np.float64).ravel()
        if v.size == 0:
            return
        self.counts += np.bincount(self._index(v), minlength=self.nbuckets)
        self.count += int(v.size)
        self.total += float(v.sum())
        self.min = min(self.min, float(v.min()))
        self.max = max(self.max, float(v.max()))

    def merge(self, other: "Histogram") -> "Histogram":
        """Add `other`'s samples to this histogram (in place); returns self."""
        if other.accuracy != self.accuracy:
            raise ValueError("histograms with different accuracies cannot be merged exactly")
        self.counts += other.counts
        self.count += other.count
        self.total += other.total
        self.min = min(self.min, other.min)
        self.max = max(self.max, other.max)
        return self

    @classmethod
    def merged(cls, hists) -> "Histogram":
        hists = list(hists)
        out = cls(hists[0].accuracy if hists else DEFAULT_ACCURACY)
        for h in hists:
            out.merge(h)
        return out

    # ----- reading --------------------------------------------------------------
    def bucket_value(self, index: int) -> float:
        """The representative (midpoint) value of bucket `index`."""
        if index == 0:
            return LOW
        return 2 * LOW * self.gamma ** index / (self.gamma + 1)

    def percentile(self, p: float) -> float:
        """The p-th percentile (0..100) of the samples, within relative error `accuracy`.

        Rank rule: the smallest sample with at least p% of the samples at or below
        it (numpy's 'inverted_cdf'). Clamped to the exact min and max.
        """
        if self.count == 0:
            return math.nan
        if p <= 0:
            return self.min
        if p >= 100:
            return self.max
        rank = max(1, int(math.ceil(p / 100 * self.count)))
        idx = int(np.searchsorted(np.cumsum(self.counts), rank))
        return min(max(self.bucket_value(idx), self.min), self.max)

    def percentiles(self, ps=(50, 90, 99, 99.9)) -> dict[float, float]:
        return {p: self.percentile(p) for p in ps}

    @property
    def mean(self) -> float:
        return self.total / self.count if self.count else math.nan

    def nonzero_buckets(self) -> tuple[np.ndarray, np.ndarray]:
        """(bucket midpoints, counts) for the buckets that hold samples (for plots)."""
        idx = np.flatnonzero(self.counts)
        return np.array([self.bucket_value(i) for i in idx]), self.counts[idx]

    # ----- transport (between processes / Ray actors, and into JSON) ---------------
    def to_dict(self) -> dict:
        idx = np.flatnonzero(self.counts)
        return {"accuracy": self.accuracy, "count": self.count, "total": self.total,
                "min": self.min if self.count else None, "max": self.max if self.count else None,
                "buckets": idx.tolist(), "counts": self.counts[idx].tolist()}

    @classmethod
    def from_dict(cls, d: dict) -> "Histogram":
        h = cls(d["accuracy"])
        h.counts[np.asarray(d["buckets"], dtype=np.int64)] = np.asarray(d["counts"], dtype=np.int64)
        h.count, h.total = int(d["count"]), float(d["total"])
        if h.count:
            h.min, h.max = float(d["min"]), float(d["max"])
        return h

    def __eq__(self, other) -> bool:
        return (isinstance(other, Histogram) and self.accuracy == other.accuracy
                and self.count == other.count and self.min == other.min and self.max == other.max
                and bool(np.array_equal(self.counts, other.counts)))
