"""SqAnnIndex: an HNSW graph over 8-bit scalar-quantised prefixes (FAISS IndexHNSWSQ).

Index type "hnsw_sq8"; the same interface as ann_index.AnnIndex ("hnsw"), so
ann_shard.py drives either. Why a second graph: a walk over 8-bit codes reads a
quarter of the bytes of hnswlib's float32 prefixes; on corpusA's 128-dim
prefix it took 56 µs against 81 µs at the same recall after the exact re-rank,
and the graph is about half the size (docs/ann.md). The graph only ranks
candidates: the shard re-scores them exactly, so the codes' rounding never
reaches a returned score.

What FAISS's HNSW lacks, kept here:
- ids: FAISS numbers vectors 0..n-1 in insertion order ("slots"); `_ids[slot]`
  is a slot's id, and a sorted (id, slot) table finds an id's live slot.
- deletes and replacements: FAISS's HNSW cannot remove a vector. A deleted or
  replaced slot is cleared in a live bitmap that every search passes as an
  IDSelector, so it is never returned; the graph still routes through it until
  the next rebuild (ShardAnn rebuilds once REBUILD_DEAD_FRACTION of the slots
  are dead).
- ranges: 8-bit codes need per-dimension ranges, trained on the first vectors
  added (a build adds all live rows at once) and widened by RANGE_MARGIN; values
  outside are clipped. A graph trained on few rows asks to be rebuilt once it
  has grown RETRAIN_GROWTH-fold (`wants_retrain`).
"""
from __future__ import annotations

import os
import threading

import numpy as np

from nestvec.cluster._engine.ann_index import GraphParams, prefix_rows
from nestvec.cluster._engine.kernels import with_threads
from nestvec.errors import InvalidArgument

try:
    import faiss
except ImportError:  # optional: only this index type needs it
    faiss = None

RANGE_MARGIN = 0.05       # each trained range widened by this fraction of its span, each side
RETRAIN_GROWTH = 4        # rebuild (retrain) once the graph holds this many times its training rows...
RETRAIN_BELOW = 100_000   # ...while it was trained on fewer rows than this
SLOTS_SUFFIX = ".slots.npz"


def available() -> bool:
    return faiss is not None


class SqAnnIndex:
    """One quantised HNSW graph. Searches may run concurrently with each other; a
    write must run alone (the owner serialises it against everything)."""

    CONCURRENT_SEARCHES = True
    FILTERED_WALK = True  # search_allowed: a filter inside the walk

    FIRST_ADD_ROWS = RETRAIN_BELOW  # a build's first add: the rows the ranges train on

    def __init__(self, params: GraphParams, capacity: int = 0, threads: int = 1, _index=None):
        if faiss is None:
            raise InvalidArgument("index type hnsw_sq8 needs FAISS: pip install 'nestvec[fast]'")
        self.params = params
        self.threads = max(1, int(threads))
        if _index is None:
            metric = faiss.METRIC_L2 if params.metric == "l2" else faiss.METRIC_INNER_PRODUCT
            _index = faiss.IndexHNSWSQ(params.dim, faiss.ScalarQuantizer.QT_8bit, params.m, metric)
            _index.hnsw.efConstruction = params.ef_construction
            faiss.downcast_index(_index.storage).sq.rangestat_arg = RANGE_MARGIN
        self._ix = _index
        self._ids = np.empty(0, dtype=np.uint64)       # slot -> id
        self._live = np.empty(0, dtype=bool)           # slot -> not deleted or replaced
        self._by_id = np.empty(0, dtype=np.uint64)     # live ids, sorted...
        self._slot_of = np.empty(0, dtype=np.int64)    # ...and their slots
        self.trained_on = 0
        # Search parameters per ef, kept between searches (SWIG attribute writes cost
        # microseconds) and shared by concurrent searches, which only read them. Each
        # carries the live bitmap's selector once the graph has a dead slot. Writes
        # (which run alone: the shard's SharedLock) drop both; a search rebuilds them
        # under _params_lock.
        self._selector = None                          # (bitmap, IDSelectorBitmap)
        self._params: dict[int, object] = {}
        self._params_lock = threading.Lock()

    # ----- size -----------------------------------------------------------------
    @property
    def count(self) -> int:
        """Slots in the graph, dead ones included."""
        return int(self._ids.size)

    @property
    def live(self) -> int:
        return int(self._by_id.size)

    @property
    def deleted(self) -> int:
        return self.count - self.live

    def dead_fraction(self) -> float:
        return self.deleted / self.count if self.count else 0.0

    def memory_bytes(self) -> int:
        """Codes, links and the id tables."""
        h = self._ix.hnsw
        return int(self.count * self.params.dim + h.neighbors.size() * 4 + h.offsets.size() * 8
                   + h.levels.size() * 4 + self.count * 9 + self.live * 16)

    def wants_retrain(self) -> bool:
        """True once the graph outgrew the rows its ranges were trained on."""
        return 0 < self.trained_on < RETRAIN_BELOW and self.count >= RETRAIN_GROWTH * self.trained_on

    # ----- writes ---------------------------------------------------------------
    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        """Insert or replace ids (distinct within one call); a replaced id's old slot dies."""
        ids = np.asarray(ids, dtype=np.uint64)
        if not ids.size:
            return
        x = prefix_rows(vectors, self.params)
        if not self._ix.is_trained:
            # a few rows would give ranges of zero width: mirror them and add +-1 rows
            ones = np.ones((1, x.shape[1]), np.float32)
            self._ix.train(x if x.shape[0] >= 1000 else np.vstack([x, -x, ones, -ones]))
            self.trained_on = int(x.shape[0])
        self._kill(ids)
        first = self.count
        with_threads(self.threads, self._ix.add, x)
        self._ids = np.concatenate([self._ids, ids])
        self._live = np.concatenate([self._live, np.ones(ids.size, dtype=bool)])
        slots = np.arange(first, first + ids.size, dtype=np.int64)
        pos = np.searchsorted(self._by_id, ids)
        order = np.argsort(ids, kind="stable")  # ascending ids: positions ascend too
        self._by_id = np.insert(self._by_id, pos[order], ids[order])
        self._slot_of = np.insert(self._slot_of, pos[order], slots[order])
        self._selector, self._params = None, {}

    def delete(self, ids: np.ndarray) -> int:
        """Never return these ids again (until re-added). Returns how many were live."""
        return self._kill(np.unique(np.asarray(ids, dtype=np.uint64)))

    def _kill(self, ids: np.ndarray) -> int:
        if not self._by_id.size:
            return 0
        pos = np.minimum(np.searchsorted(self._by_id, ids), self._by_id.size - 1)
        hit = pos[self._by_id[pos] == ids]
        if not hit.size:
            return 0
        self._live[self._slot_of[hit]] = False
        self._by_id = np.delete(self._by_id, hit)
        self._slot_of = np.delete(self._slot_of, hit)
        self._selector, self._params = None, {}
        return int(hit.size)

    # ----- reads ----------------------------------------------------------------
    def search(self, queries: np.ndarray, candidates: int, ef: int,
               threads: int | None = None) -> np.ndarray:
        """[Q, min(candidates, live)] ids of each query's nearest live slots.

        A batch walks on `threads` OpenMP threads (default: the graph's). Raises
        RuntimeError if the walk found fewer (a graph cut up by deletions), as
        hnswlib does: the shard then answers those queries exactly.
        """
        live = self._by_id.size
        c = int(candidates) if candidates < live else live
        if c <= 0:
            return np.empty((queries.shape[0], 0), dtype=np.uint64)
        ef = int(ef) if ef > c else c
        p = self._params.get(ef)
        if p is None:
            p = self._new_params(ef)
        n = queries.shape[0]
        q = np.ascontiguousarray(queries[:, : self.params.dim], dtype=np.float32)
        dist = np.empty((n, c), dtype=np.float32)
        slots = np.empty((n, c), dtype=np.int64)
        # search_c: the same call as FAISS's Python search() without its checks. A batch
        # walks its queries on the shard's threads (with_threads says why it must ask).
        args = (n, faiss.swig_ptr(q), c, faiss.swig_ptr(dist), faiss.swig_ptr(slots), p)
        if n > 1:  # set the count even for 1: a thread's default comes from OMP_NUM_THREADS
            with_threads(self.threads if threads is None else threads, self._ix.search_c, *args)
        else:  # one query never opens a parallel region
            self._ix.search_c(*args)
        if slots[:, -1].min() < 0:  # FAISS pads each row's tail with -1
            raise RuntimeError("the graph walk found fewer live vectors than asked")
        return self._ids[slots]

    def search_allowed(self, queries: np.ndarray, candidates: int, ef: int,
                       allowed: np.ndarray) -> np.ndarray:
        """search() among the slots where `allowed` (bool per slot, live ones only):
        the filter inside the walk, as FAISS's IDSelector, so no candidate is spent on
        a row that does not match (a filter matching ~50% of the rows: ef 80 reaches
        recall 0.96 after the exact re-rank, docs/filters.md)."""
        c = min(int(candidates), int(allowed.sum()))
        if c <= 0:
            return np.empty((queries.shape[0], 0), dtype=np.uint64)
        bits = np.packbits(allowed, bitorder="little")
        p = faiss.SearchParametersHNSW()
        p.efSearch = max(int(ef), c)
        p.sel = faiss.IDSelectorBitmap(allowed.size, faiss.swig_ptr(bits))
        n = queries.shape[0]
        q = np.ascontiguousarray(queries[:, : self.params.dim], dtype=np.float32)
        dist = np.empty((n, c), dtype=np.float32)
        slots = np.empty((n, c), dtype=np.int64)
        args = (n, faiss.swig_ptr(q), c, faiss.swig_ptr(dist), faiss.swig_ptr(slots), p)
        if n > 1:
            with_threads(self.threads, self._ix.search_c, *args)
        else:
            self._ix.search_c(*args)
        del bits  # held until the walk is done: the selector points into it
        if slots[:, -1].min() < 0:
            raise RuntimeError("the filtered walk found fewer matching vectors than asked")
        return self._ids[slots]

    @property
    def slot_ids(self) -> np.ndarray:
        return self._ids

    @property
    def live_slots(self) -> np.ndarray:
        return self._live

    def _new_params(self, ef: int):
        with self._params_lock:
            p = self._params.get(ef)
            if p is None:
                if len(self._params) >= 32:  # clients choose ef: keep the cache small
                    self._params = {}        # (a search holding an old one keeps its reference)
                p = faiss.SearchParametersHNSW()
                p.efSearch = ef
                if self._by_id.size < self._ids.size:  # dead slots: filter them
                    if self._selector is None:  # slots never come back to life
                        bits = np.packbits(self._live, bitorder="little")
                        self._selector = (bits, faiss.IDSelectorBitmap(self.count, faiss.swig_ptr(bits)))
                    p.sel = self._selector[1]
                self._params[ef] = p
            return p

    def deleted_ids(self) -> np.ndarray:
        """Ids whose only slots are dead (a replaced id is live: its new slot serves)."""
        return np.setdiff1d(self._ids[~self._live], self._by_id)

    # ----- persistence ----------------------------------------------------------
    def save(self, path: str) -> None:
        faiss.write_index(self._ix, path)
        with open(path + SLOTS_SUFFIX, "wb") as f:
            np.savez(f, ids=self._ids, live=self._live, trained_on=np.int64(self.trained_on))
            f.flush()
            os.fsync(f.fileno())
        with open(path, "rb+") as f:
            os.fsync(f.fileno())

    @staticmethod
    def load(path: str, params: GraphParams, deleted: np.ndarray, threads: int = 1) -> "SqAnnIndex":
        ix = faiss.read_index(path)
        if ix.d != params.dim or ix.hnsw.efConstruction != params.ef_construction:
            raise ValueError(f"saved graph has dim={ix.d} ef_construction={ix.hnsw.efConstruction}, "
                             f"expected {params.dim}/{params.ef_construction}")
        g = SqAnnIndex(params, threads=threads, _index=ix)
        with np.load(path + SLOTS_SUFFIX) as z:
            g._ids, g._live, g.trained_on = z["ids"], z["live"].astype(bool), int(z["trained_on"])
        if g._ids.size != ix.ntotal:
            raise ValueError(f"saved graph has {ix.ntotal} vectors but {g._ids.size} slot ids")
        slots = np.flatnonzero(g._live)
        order = np.argsort(g._ids[slots], kind="stable")
        g._by_id, g._slot_of = g._ids[slots][order], slots[order].astype(np.int64)
        if deleted.size and np.isin(np.asarray(deleted, dtype=np.uint64), g._by_id).any():
            raise ValueError("the saved deleted ids and live slots disagree")
        return g
