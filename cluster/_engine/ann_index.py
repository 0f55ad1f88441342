"""AnnIndex: an HNSW graph (hnswlib) over the leading `dim` dims of one shard's vectors.

Pure Python over hnswlib: no Ray, no threads of its own (ann_shard.py owns the
background builds). The graph's labels are the vectors' own uint64 ids, not
engine rows, so compacting the engine (which moves rows) never touches the
graph, and a candidate from the graph is looked up in the engine by id.

Cosine collections store each prefix normalised at its own width and search
with inner product (a prefix must be re-normalised before cosine); dot uses
inner product on the raw prefix, l2 the squared distance. Distances from the
graph only rank candidates: the shard re-scores them exactly (shard_engine.py).

Why hnswlib rather than FAISS's IndexHNSWFlat (measured on corpusA prefixes,
docs/ann.md): it takes arbitrary uint64 labels, adds and updates incrementally,
marks deletions so they are never returned, saves/loads, and at the same
settings it built and answered faster here.
"""
from __future__ import annotations

import os
from dataclasses import dataclass

import numpy as np

try:
    import hnswlib
except ImportError:  # an optional extra: collections without an index never need it
    hnswlib = None

from nestvec.errors import InvalidArgument

_SPACE = {"cosine": "ip", "dot": "ip", "l2": "l2"}
_MIN_CAPACITY = 1024


def available() -> bool:
    return hnswlib is not None


@dataclass(frozen=True)
class GraphParams:
    dim: int
    m: int
    ef_construction: int
    metric: str


class AnnIndex:
    """One HNSW graph. Not thread-safe on its own: the owner serialises every call
    (ef is the graph's, not a search's: set_ef changes it for all)."""

    CONCURRENT_SEARCHES = False
    FILTERED_WALK = False  # hnswlib filters through a Python callback: slower than post-filtering

    FIRST_ADD_ROWS = 0  # nothing to train: a build adds every chunk alike

    def __init__(self, params: GraphParams, capacity: int = _MIN_CAPACITY, threads: int = 1,
                 _graph=None):
        if hnswlib is None:
            raise InvalidArgument("ANN indexes need hnswlib: pip install 'nestvec[ann]'")
        self.params = params
        self.threads = max(1, int(threads))
        if _graph is None:
            _graph = hnswlib.Index(space=_SPACE[params.metric], dim=params.dim)
            _graph.init_index(max_elements=max(_MIN_CAPACITY, int(capacity)), M=params.m,
                              ef_construction=params.ef_construction, random_seed=100)
        self._g = _graph
        self._dead = np.empty(0, dtype=np.uint64)  # sorted labels marked deleted (still in the graph)

    @property
    def deleted(self) -> int:
        return int(self._dead.size)

    # ----- size -----------------------------------------------------------------
    @property
    def count(self) -> int:
        """Labels in the graph, deleted ones included."""
        return int(self._g.get_current_count())

    @property
    def live(self) -> int:
        return self.count - self.deleted

    def dead_fraction(self) -> float:
        return self.deleted / self.count if self.count else 0.0

    def wants_retrain(self) -> bool:
        """Never: float32 prefixes need no trained ranges (ann_sq.py's graph does)."""
        return False

    def memory_bytes(self) -> int:
        """Bytes of the graph and its stored prefixes (what save_index writes)."""
        return int(self._g.index_file_size())

    # ----- writes ---------------------------------------------------------------
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Insert or replace ids (full vectors or prefixes: only `dim` dims are used).

        Re-adding a deleted id brings it back with its new vector (hnswlib unmarks it).
        """
        ids = np.asarray(ids, dtype=np.uint64)
        if not ids.size:
            return
        need = self.count + ids.size
        if need > self._g.get_max_elements():
            self._g.resize_index(max(need, 2 * self._g.get_max_elements()))
        if self._dead.size:  # ids marked deleted that come back are live again
            self._dead = np.setdiff1d(self._dead, ids, assume_unique=False)
        self._g.add_items(self.prepare(vectors), ids, num_threads=self.threads)

    def delete(self, ids: np.ndarray) -> int:
        """Mark ids deleted: never returned again (until re-added). Returns how many were live."""
        marked = []
        for label in np.unique(np.asarray(ids, dtype=np.uint64)).tolist():  # one label per call
            try:
                self._g.mark_deleted(label)
                marked.append(label)
            except RuntimeError:  # not in the graph, or already deleted
                pass
        if marked:
            self._dead = np.union1d(self._dead, np.array(marked, dtype=np.uint64))
        return len(marked)

    # ----- reads ----------------------------------------------------------------
    def search(self, queries: np.ndarray, candidates: int, ef: int,
               threads: int | None = None) -> np.ndarray:
        """[Q, min(candidates, live)] ids of each query's nearest graph neighbours.

        Asking for at least as many as ef is wasteful, so ef is raised to the
        candidate count (hnswlib needs ef >= k anyway).
        """
        c = min(int(candidates), self.live)
        if c <= 0:
            return np.empty((queries.shape[0], 0), dtype=np.uint64)
        self._g.set_ef(max(int(ef), c))
        # Queries need no normalising: scaling a query scales all its inner products alike.
        q = np.ascontiguousarray(queries[:, : self.params.dim], dtype=np.float32)
        labels, _ = self._g.knn_query(q, k=c, num_threads=threads or self.threads)
        return labels

    def prepare(self, vectors: np.ndarray) -> np.ndarray:
        return prefix_rows(vectors, self.params)

    # ----- persistence ----------------------------------------------------------
    def save(self, path: str) -> None:
        self._g.save_index(path)
        with open(path, "rb+") as f:
            os.fsync(f.fileno())

    @staticmethod
    def load(path: str, params: GraphParams, deleted: np.ndarray, threads: int = 1) -> "AnnIndex":
        g = hnswlib.Index(space=_SPACE[params.metric], dim=params.dim)
        g.load_index(path)
        if g.M != params.m or g.ef_construction != params.ef_construction:
            raise ValueError(f"saved graph has M={g.M} ef_construction={g.ef_construction}, "
                             f"expected {params.m}/{params.ef_construction}")
        idx = AnnIndex(params, threads=threads, _graph=g)
        idx._dead = np.asarray(deleted, dtype=np.uint64)
        return idx

    def deleted_ids(self) -> np.ndarray:
        return self._dead.copy()


def prefix_rows(vectors: np.ndarray, params: GraphParams) -> np.ndarray:
    """A graph's view of vectors: the leading dims, unit length under cosine."""
    x = np.ascontiguousarray(np.asarray(vectors, dtype=np.float32)[:, : params.dim])
    if params.metric == "cosine":
        norms = np.sqrt(np.einsum("ij,ij->i", x, x, dtype=np.float64)).astype(np.float32)
        x = x / np.where(norms > 0, norms, 1)[:, None]
    return x
