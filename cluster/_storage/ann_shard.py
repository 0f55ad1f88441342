"""ShardAnn: one shard's ANN graph over time: builds in the background, follows writes, persists.

Owned by the shard actor beside its ShardEngine (the engine knows nothing of
it). Everything here except the build thread and searches runs under the
actor's lock alone (searches of the 8-bit graph may run side by side: they only
read), so only the hand-over between a build and the rest needs this lock:

- A build snapshots the live (id, prefix) rows in the call thread, then adds
  them to a fresh graph in a background thread (hnswlib releases the GIL, so
  the actor keeps serving exact and graph searches meanwhile).
- Writes that arrive during a build go to the graph that serves (if any) and
  to a pending list; the build thread replays that list into the new graph and
  swaps it in under the lock once nothing is pending, so no write is lost.
- Deletes mark the id deleted in the graph (never returned again); once
  REBUILD_DEAD_FRACTION of the graph is dead a rebuild starts, and the old graph
  keeps serving (its deleted ids still filtered) until the new one is in.
- A graph that serves is saved into each shard snapshot (durable_shard.py) and
  loaded on recovery; the log after the snapshot is replayed into it. A missing,
  unreadable or mismatched saved graph is rebuilt in the background.
"""
from __future__ import annotations

import json
import logging
import os
import threading
import time
from dataclasses import dataclass, field

import numpy as np

from nestvec.cluster._engine.ann_index import AnnIndex, GraphParams
from nestvec.cluster._engine.ann_sq import SqAnnIndex
from nestvec.cluster._engine.collection import IndexSpec
from nestvec.cluster._storage.datadir import write_json_atomic

log = logging.getLogger("nestvec.ann")

REBUILD_DEAD_FRACTION = 0.3   # rebuild once this share of the graph's labels are deleted
_CHUNK = 4096                 # rows added per step of a build (progress granularity)
GRAPH_FILE, META_FILE, DEAD_FILE = "ann-graph.bin", "ann-meta.json", "ann-deleted.npy"
SPEC_FILE = "index.json"      # in the shard folder: an index made by CreateIndex after creation


@dataclass
class _Build:
    reason: str
    total: int
    added: int = 0
    pending: list = field(default_factory=list)  # ("u", ids, prefixes) / ("d", ids), in order
    started: float = field(default_factory=time.perf_counter)
    cancelled: bool = False


class ShardAnn:
    def __init__(self, spec: IndexSpec | None, metric: str, threads: int = 1):
        self.spec = spec
        self.metric = metric
        self.threads = threads
        self.graph: AnnIndex | None = None    # the graph that serves searches
        self._build: _Build | None = None
        self._lock = threading.Lock()
        self.builds = 0                       # builds finished by this process (recovery: 0)
        self.loaded = False                   # the serving graph came from a snapshot
        self.build_seconds = 0.0              # the last finished build's wall time
        self.error = ""
        self.fallback_queries = 0             # ANN queries answered by the exact scan
        self.load_problem = ""                # why recovery could not use a saved graph
        self._allowed: dict = {}              # filtered walks' slot bitmaps (filtered_candidates)

    # ----- configuration ----------------------------------------------------------
    def params(self) -> GraphParams:
        s = self.spec
        return GraphParams(s.dim, s.m, s.ef_construction, self.metric)

    def graph_class(self):
        """hnswlib's float32 graph, or FAISS's over 8-bit codes (ann_sq.py)."""
        return SqAnnIndex if self.spec.type == "hnsw_sq8" else AnnIndex

    def set_spec(self, spec: IndexSpec, engine) -> bool:
        """Adopt a (new) index spec; returns True if a build started."""
        if self.spec == spec and (self.graph is not None or self._build is not None):
            return False
        with self._lock:
            if self._build is not None:
                self._build.cancelled = True
                self._build = None
            if self.spec != spec:
                self.graph = None  # a graph of other params cannot answer for this spec
            self.spec = spec
        self.start_build(engine, "create_index")
        return True

    # ----- builds -----------------------------------------------------------------
    def start_build(self, engine, reason: str) -> None:
        """Build a fresh graph of the engine's live rows in a background thread."""
        if self.spec is None:
            return
        with self._lock:
            if self._build is not None:
                return
            # copies of the prefixes only (the engine may change meanwhile; full rows
            # would be 3x the copy at 128 of 384 dims, 1.5 GB at a million vectors)
            ids, prefixes = engine.live_arrays(self.spec.dim)
            build = _Build(reason, int(ids.size))
            self._build = build
        threading.Thread(target=self._run_build, args=(build, ids, prefixes), daemon=True,
                         name="nestvec-ann-build").start()

    def _run_build(self, build: _Build, ids: np.ndarray, prefixes: np.ndarray) -> None:
        try:
            graph = self.graph_class()(self.params(), capacity=int(ids.size * 1.1) + 1,
                                       threads=self.threads)
            # A graph that trains on the first rows it is given (the 8-bit one's
            # ranges) gets them in one first chunk, as large a sample as it wants.
            first = min(ids.size, graph.FIRST_ADD_ROWS)
            if first:
                graph.add(ids[:first], prefixes[:first])
                build.added = first
            for s in range(first, ids.size, _CHUNK):
                if build.cancelled:
                    return
                graph.add(ids[s: s + _CHUNK], prefixes[s: s + _CHUNK])
                build.added = min(ids.size, s + _CHUNK)
            while True:  # replay the writes that came in meanwhile, then swap under the lock
                with self._lock:
                    if build.cancelled:
                        return
                    todo, build.pending = build.pending, []
                    if not todo:
                        self.graph, self._build, self.loaded = graph, None, False
                        self.builds += 1
                        self.build_seconds = time.perf_counter() - build.started
                        self.error = ""
                        break
                for op, op_ids, op_vectors in todo:
                    graph.add(op_ids, op_vectors) if op == "u" else graph.delete(op_ids)
            log.info("ANN graph built: %d vectors at dim %d in %.1fs (%s)", graph.live,
                     self.spec.dim, self.build_seconds, build.reason)
        except Exception as err:  # reported in DescribeCollection; exact search still serves
            log.exception("ANN build failed")
            with self._lock:
                if self._build is build:
                    self._build, self.error = None, f"{type(err).__name__}: {err}"

    def wait(self, timeout: float | None = None) -> bool:
        """Block until no build runs (tests, benchmarks). True if none runs."""
        end = None if timeout is None else time.monotonic() + timeout
        while self._build is not None:
            if end is not None and time.monotonic() > end:
                return False
            time.sleep(0.02)
        return True

    def close(self) -> None:
        with self._lock:
            if self._build is not None:
                self._build.cancelled = True
                self._build = None

    # ----- writes (call thread) ---------------------------------------------------
    def upsert(self, ids: np.ndarray, vectors: np.ndarray, engine=None) -> None:
        """Add or replace ids in the graph. With `engine`, a quantised graph that
        outgrew the rows its ranges were trained on is rebuilt (retrained)."""
        if self.spec is None:
            return
        ids = np.asarray(ids, dtype=np.uint64)
        uniq, first_in_rev = np.unique(ids[::-1], return_index=True)  # last occurrence wins
        prefixes = np.ascontiguousarray(
            np.asarray(vectors, dtype=np.float32)[ids.size - 1 - first_in_rev, : self.spec.dim])
        with self._lock:
            if self.graph is not None:
                self.graph.add(uniq, prefixes)
            if self._build is not None:
                self._build.pending.append(("u", uniq, prefixes))
            retrain = (engine is not None and self._build is None and self.graph is not None
                       and self.graph.wants_retrain())
        if retrain:
            self.start_build(engine, f"ranges trained on {self.graph.trained_on} rows, "
                                     f"the graph holds {self.graph.count}")

    def delete(self, ids: np.ndarray, engine) -> None:
        if self.spec is None:
            return
        ids = np.asarray(ids, dtype=np.uint64)
        with self._lock:
            if self.graph is not None:
                self.graph.delete(ids)
            if self._build is not None:
                self._build.pending.append(("d", ids, None))
            rebuild = (self.graph is not None and self._build is None
                       and self.graph.dead_fraction() >= REBUILD_DEAD_FRACTION)
        if rebuild:
            self.start_build(engine, f"{self.graph.dead_fraction():.0%} of the graph deleted")

    # ----- reads ------------------------------------------------------------------
    def concurrent_searches(self) -> bool:
        """Whether the serving graph answers searches side by side (the 8-bit one:
        its searches only read; hnswlib's ef is one setting for the whole graph)."""
        graph = self.graph
        return graph is not None and graph.CONCURRENT_SEARCHES

    def candidates(self, queries: np.ndarray, candidates: int, ef: int,
                   threads: int | None = None) -> np.ndarray | None:
        """[Q, M] candidate ids from the graph, or None while no graph serves."""
        graph = self.graph
        if graph is None:
            return None
        try:
            return graph.search(queries, candidates, ef, threads)
        except RuntimeError:  # hnswlib found fewer than asked (a graph cut up by deletions)
            return None       # the exact scan answers instead

    def filtered_candidates(self, engine, filter_json: str, queries: np.ndarray, candidates: int,
                            ef: int, threads: int | None = None) -> np.ndarray | None:
        """[Q, M] ids of matching rows from a walk with the filter inside it, or None
        where the graph cannot (hnswlib, no graph) or found too few (scan instead).
        The slots' allowed bitmap (live, stored, matching) costs a pass over the
        slots, so it is kept per filter until the next write (a few filters kept)."""
        graph = self.graph
        if graph is None or not getattr(graph, "FILTERED_WALK", False):
            return None
        key = (filter_json, engine.epoch, id(graph), graph.count, graph.live)
        allowed = self._allowed.get(key)
        if allowed is None:
            rows, stored = engine.stored_rows(graph.slot_ids)
            allowed = graph.live_slots & stored & engine.filter_mask(filter_json)[rows]
            if len(self._allowed) >= ALLOWED_CACHE:
                self._allowed.clear()
            self._allowed[key] = allowed
        try:
            return graph.search_allowed(queries, candidates, ef, allowed)
        except RuntimeError:
            return None

    def count_fallback(self, queries: int) -> None:
        with self._lock:  # searches may run side by side
            self.fallback_queries += queries

    def status(self) -> dict:
        """State for DescribeCollection: none / building / ready / stale (serving, rebuilding) / failed."""
        b, g = self._build, self.graph
        if self.spec is None:
            return {"index_state": "none"}
        if b is not None:
            state = "stale" if g is not None else "building"
        else:
            state = "ready" if g is not None else ("failed" if self.error else "building")
        return {"index_state": state,
                "index_progress": (b.added / b.total if b.total else 1.0) if b else (1.0 if g else 0.0),
                "index_reason": b.reason if b else self.error,
                "index_dim": self.spec.dim, "index_m": self.spec.m,
                "index_ef_construction": self.spec.ef_construction,
                "index_bytes": g.memory_bytes() if g else 0,
                "index_vectors": g.live if g else 0, "index_deleted": g.deleted if g else 0,
                "index_build_seconds": self.build_seconds, "index_builds": self.builds,
                "index_loaded": self.loaded, "index_fallback_queries": self.fallback_queries}

    # ----- persistence ------------------------------------------------------------
    def save(self, folder: str) -> None:
        """Write the serving graph into a snapshot folder being written (call thread)."""
        g = self.graph
        if g is None or self.spec is None:
            return
        g.save(os.path.join(folder, GRAPH_FILE))
        with open(os.path.join(folder, DEAD_FILE), "wb") as f:
            np.save(f, g.deleted_ids())
            f.flush()
            os.fsync(f.fileno())
        with open(os.path.join(folder, META_FILE), "w") as f:
            json.dump({"spec": self.spec.to_dict(), "metric": self.metric, "live": g.live,
                       "build_seconds": self.build_seconds}, f)
            f.flush()
            os.fsync(f.fileno())

    def load(self, folder: str, live: int) -> str:
        """Load the graph saved in a snapshot folder holding `live` rows; '' or why not."""
        if self.spec is None:
            return "no index"
        meta_path = os.path.join(folder, META_FILE)
        if not os.path.exists(meta_path):
            return "no saved graph"
        try:
            with open(meta_path) as f:
                meta = json.load(f)
            if IndexSpec.from_dict(meta["spec"]) != self.spec or meta["metric"] != self.metric:
                return "saved graph has other parameters"
            graph = self.graph_class().load(os.path.join(folder, GRAPH_FILE), self.params(),
                                            np.load(os.path.join(folder, DEAD_FILE)), self.threads)
        except Exception as err:  # a damaged file costs a rebuild, never the shard
            return f"saved graph unreadable ({type(err).__name__}: {err})"
        if graph.live != live or meta["live"] != live:
            return f"saved graph holds {graph.live} vectors, the snapshot {live}"
        self.graph, self.loaded = graph, True
        self.build_seconds = float(meta.get("build_seconds", 0.0))
        return ""


def read_spec(shard_dir: str | None) -> IndexSpec | None:
    """The index spec a CreateIndex call left in the shard folder, if any."""
    if not shard_dir:
        return None
    path = os.path.join(shard_dir, SPEC_FILE)
    if not os.path.exists(path):
        return None
    with open(path) as f:
        return IndexSpec.from_dict(json.load(f))


def write_spec(shard_dir: str | None, spec: IndexSpec) -> None:
    if shard_dir:
        write_json_atomic(os.path.join(shard_dir, SPEC_FILE), spec.to_dict())


def search_keys(engine, ann: ShardAnn, queries: np.ndarray, plan, threads: int | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
    """One shard's answer to an ANN plan, shaped like the scan paths' for the merge.

    Candidates come from the graph and are re-scored exactly at every funnel
    stage dim and at the final dim (engine.rescore_ids), so the merged result
    carries exact scores. Each shard returns min(candidates, live) candidates
    per query, all stored and distinct. A query the graph cannot fill with
    stored ids (no graph yet: building) is answered by the exact scan instead.
    `threads`: the graph walk's (default: the shard's).
    Returns (ids [Q, M], keys [Q, M]) without stages, else keys [Q, M, stages+1].
    """
    if plan.filter:
        return _filtered_search_keys(engine, ann, queries, plan, threads)
    later = [d for d, _ in plan.stages] + [plan.dim]
    m = min(plan.ann_candidates, len(engine))
    n_q = queries.shape[0]
    ids = ann.candidates(queries, plan.ann_candidates, plan.ef, threads)
    if ids is None or ids.shape[1] < m:
        short = np.arange(n_q)
        ids = np.zeros((n_q, m), dtype=np.uint64)
        keys = np.zeros((n_q, m, len(later)), dtype=np.float32)
    else:
        found, keys = engine.rescore_ids(queries, ids, later)
        if found.all() and ids.shape[1] == m:  # the usual case: every candidate is stored
            short = np.empty(0, dtype=np.intp)
        else:  # stored candidates first (in graph order), then keep m of them
            order = np.argsort(~found, axis=1, kind="stable")[:, :m]
            ids = np.take_along_axis(ids, order, axis=1)
            keys = np.take_along_axis(keys, order[..., None], axis=1)
            short = np.flatnonzero(found.sum(axis=1) < m)
    if short.size:
        ann.count_fallback(int(short.size))
        ids[short], keys[short] = _exact(engine, queries[short], m, plan, later)
    return (ids, keys) if plan.stages else (ids, keys[..., 0])


def _exact(engine, queries: np.ndarray, m: int, plan, later: list[int]):
    """The exact scan's m best (among the plan's filter's rows, if it has one), with their
    keys at every stage dim and the final dim, shaped like the walk's candidates."""
    ids, _ = engine.top_keys(queries, m, plan.dim, plan.filter)
    return ids, engine.rescore_ids(queries, ids, later)[1]


# Filtered ANN (docs/filters.md, "ANN"). Each shard picks the cheaper side. The scan
# scores only the matching rows (exact). The walk asks the graph for
# FILTER_OVERSAMPLE x candidates / selectivity ids, so about as many matching
# candidates come back as an unfiltered walk gives, drops the others and re-ranks the
# rest exactly; a query left short of k matching candidates falls back to the scan.
# Costs measured on corpusA (100k x 384, 128-dim graph, bench/bench_filters.py): a
# walked candidate ~3.7 us (walk + exact re-rank), a scanned row ~0.26 us, so the
# walk wins when it needs fewer than 1/14 as many candidates as there are matching
# rows (at 100k rows and 80 candidates: above ~13k matching rows).
WALK_COST_PER_SCANNED_ROW = 14   # one walked candidate costs this many scanned rows
FILTER_EXACT_ROWS = 2048         # at most this many matching rows: always scan
FILTER_MAX_WALK = 4096           # never walk for more candidates than this
FILTER_OVERSAMPLE = 1.5          # walk a little past candidates / selectivity (fewer short queries)


FILTER_GRAPH_MIN_SELECTIVITY = 0.3  # a graph that filters inside its walk does so above this
ALLOWED_CACHE = 4                    # filters whose slot bitmaps a shard keeps


def filtered_plan(matching: int, live: int, candidates: int) -> int:
    """Candidates to walk for under a filter matching `matching` of `live` rows; 0 = scan."""
    if matching <= FILTER_EXACT_ROWS or not live:
        return 0
    want = int(np.ceil(FILTER_OVERSAMPLE * candidates * live / matching))
    if want > FILTER_MAX_WALK or want * WALK_COST_PER_SCANNED_ROW >= matching:
        return 0
    return want


def _filtered_search_keys(engine, ann: ShardAnn, queries: np.ndarray, plan, threads):
    later = [d for d, _ in plan.stages] + [plan.dim]
    # Planned from the payload indexes' counts: the walk never evaluates the filter
    # over every row, only on the candidates it returns.
    matching = engine.filter_count_for_planning(plan.filter)
    ids = None
    if matching >= FILTER_GRAPH_MIN_SELECTIVITY * len(engine) > 0:  # dense: filter inside the walk
        ids = ann.filtered_candidates(engine, plan.filter, queries, plan.ann_candidates, plan.ef,
                                      threads)
    if ids is None:
        want = filtered_plan(matching, len(engine), plan.ann_candidates)
        ids = ann.candidates(queries, want, max(plan.ef, want), threads) if want else None
    m = min(plan.ann_candidates, matching)
    if ids is not None:
        rows, stored = engine.stored_rows(ids)
        found, keys = engine.rescore_ids(queries, ids, later)
        ok = found & stored
        ok[ok] = engine.filter_test(plan.filter, rows[ok])
        short = np.flatnonzero(ok.sum(axis=1) < min(plan.k, m))
        if short.size and engine.count(plan.filter) < m:  # the count overstated the matches
            ids = None
    if ids is None:  # the scan: exact over the matching rows
        ids, keys = _exact(engine, queries, min(m, engine.count(plan.filter)), plan, later)
        return (ids, keys) if plan.stages else (ids, keys[..., 0])
    order = np.argsort(~ok, axis=1, kind="stable")[:, :m]  # matching stored ids first, graph order
    ids = np.take_along_axis(ids, order, axis=1)
    keys = np.take_along_axis(keys, order[..., None], axis=1)
    # A query with fewer than m but at least k matching candidates keeps them; the rest
    # of its row ranks last (-inf at every stage), so no merge ever picks it (every
    # shard's row holds k real candidates). Fewer than k: the scan answers it.
    keys[~np.take_along_axis(ok, order, axis=1)] = -np.inf
    if short.size:
        ann.count_fallback(int(short.size))
        ids[short], keys[short] = _exact(engine, queries[short], m, plan, later)
    return (ids, keys) if plan.stages else (ids, keys[..., 0])
