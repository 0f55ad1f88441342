"""ShardActor: a thin Ray actor around one shard (a DurableShard, or an in-memory engine).

It adds nothing to the math; it gives the shard a name in a Ray namespace so
any gateway or Ray job can find it. Ray runs its calls one at a time (a
synchronous actor); the shard also answers searches from coordinators on its
own node over a Unix socket (direct.py), on that server's threads, so every
call that touches the engine takes the actor's lock (shared_lock.py) and calls
run one at a time, whichever way they came; the exception is searches of an
8-bit graph over the socket, which only read and run side by side (searches
that come through Ray, from other nodes, still take the lock alone). With a data
directory it is created with max_restarts, and Ray's restart re-runs
__init__, which recovers the shard from disk before any call is served.

With an ANN index the actor also owns a ShardAnn (ann_shard.py) beside the
engine; its builds run in a background thread while calls keep being served.
"""
from __future__ import annotations

import contextlib
import functools
import os
import threading
import time

import numpy as np
import ray

from nestvec.cluster._storage import ann_shard

from nestvec.cluster._engine import funnel_rounds

from nestvec.cluster._engine import parallel
from nestvec.cluster._storage.ann_shard import ShardAnn
from nestvec.cluster._engine.collection import CollectionConfig, IndexSpec, SearchPlan
from nestvec.cluster._distributed.direct import DirectServer
from nestvec.cluster._storage import datadir, inflight
from nestvec.cluster._storage.durable_shard import DurableShard
from nestvec.cluster._storage.wal import WalCorruption
from nestvec.cluster._distributed.shared_lock import SharedLock
from nestvec.cluster._engine.shard_engine import ShardEngine
from nestvec.errors import DeadlineExceeded, FailedPrecondition, Unavailable


def shard_actor_name(cfg: CollectionConfig, shard: int) -> str:
    """Unique per incarnation (the uid), so a re-created collection never waits for
    the old incarnation's actor names to be released."""
    return f"{cfg.name}.{cfg.uid}/shard-{shard}"


KILLED = ("shard {shard} of collection {name!r}: its previous process died while running this "
          "same search, which was not run again: a search that exhausts a shard's memory would "
          "kill it again. The shard has restarted and serves other calls; if the search was not "
          "the cause, retry it")


def _locked(method):
    """Run under the actor's lock, alone: Ray's call thread and the direct-search
    threads must not use the engine at the same time."""
    @functools.wraps(method)
    def run(self, *args, **kwargs):
        self._check_started()
        with self._lock.exclusive():
            return method(self, *args, **kwargs)
    return run


@ray.remote(num_cpus=0)  # STACK-NOTES: whole-CPU requests starve a 2-CPU node of actors
class ShardActor:
    def __init__(self, config: dict, shard: int, directory: str | None = None,
                 fsync: str = "always", fsync_interval: float = 0.05, threads: int = 1):
        _limit_threads(threads)
        self._lock = SharedLock()
        self._count_lock = threading.Lock()
        self.config = CollectionConfig.from_dict(config)
        self.shard = shard
        self.directory = directory
        # Held until this process dies: no second server's shard may write this folder.
        self._dir_lock = datadir.lock_shard_dir(directory) if directory else None
        # Searches running when this process dies are refused once by the next (inflight.py).
        self.recorder = inflight.FlightRecorder(directory) if directory else None
        # An index added by CreateIndex after creation is recorded in the shard's folder
        # (Ray restarts this actor with its creation arguments).
        spec = ann_shard.read_spec(directory) or self.config.index
        self.ann = ShardAnn(spec, self.config.metric, threads)
        # A corrupt log: stay up, holding the folder, answering every call with why, so
        # the operator sees the file and offset in errors and status (not a dead actor).
        self.start_error: str | None = None
        try:
            self.store = (DurableShard(self.config, directory, fsync, fsync_interval, ann=self.ann)
                          if directory else None)
        except WalCorruption as err:
            self.start_error, self.store, spec = str(err), None, None
        self.engine = self.store.engine if self.store else ShardEngine(self.config)
        if spec is not None and self.ann.graph is None:
            self.ann.start_build(self.engine, f"start: {self.ann.load_problem or 'new shard'}")
        self.was_restarted = ray.get_runtime_context().was_current_actor_reconstructed
        self.direct = DirectServer(self._direct_search)
        self.direct_searches = 0
        self.overlapped_searches = 0  # ANN searches that began while another ran

    def ready(self) -> bool:
        return True

    @contextlib.contextmanager
    def _flight(self, queries: np.ndarray, plan: SearchPlan, round_: tuple | None):
        """Record the search while it runs; refuse the resend of one that died with the
        previous process. `round_`: (stage, ids, counts) of a funnel round, the same
        whether the call came over the socket or through Ray. Entered with the actor's
        lock held, on both ways in: a search still waiting for the lock when the
        process died cannot have killed it, and its resend is served."""
        if self.recorder is None:
            yield
            return
        fp = inflight.fingerprint(queries, plan, round_)
        if self.recorder.was_running_at_death(fp):
            raise Unavailable(KILLED.format(shard=self.shard, name=self.config.name))
        slot = self.recorder.begin(fp)
        try:
            yield
        finally:
            self.recorder.end(slot)

    def _check_started(self) -> None:
        if self.start_error is not None:
            raise Unavailable(f"shard {self.shard} of collection {self.config.name!r} did not start "
                              f"and serves nothing: {self.start_error}")

    def pid(self) -> int:
        return os.getpid()

    def thread_pools(self) -> list[dict]:
        """The BLAS/OpenMP pools in this worker and their thread counts."""
        import threadpoolctl
        return [{"api": p["internal_api"], "threads": p["num_threads"]}
                for p in threadpoolctl.threadpool_info()]

    # Data calls take the request's wall-clock deadline: a call that waited in
    # this actor's queue past it returns at once without touching anything, so an
    # expired or abandoned request stops costing work (and a late write is not applied).
    def direct_address(self) -> dict:
        """Where coordinators on this node send searches (direct.py): node, socket path, token."""
        return {"node_id": ray.get_runtime_context().get_node_id(), **self.direct.address()}

    def _direct_search(self, queries: np.ndarray, plan: SearchPlan, deadline: float | None,
                       round_: tuple | None = None):
        self._check_started()
        with self._count_lock:
            self.direct_searches += 1
        if round_ is None and plan.ann_candidates and self.ann.concurrent_searches():
            with self._lock.shared() as inside:
                if self.ann.concurrent_searches():  # still (the index may have changed)
                    if inside > 1:
                        with self._count_lock:
                            self.overlapped_searches += 1
                    with self._flight(queries, plan, None):
                        return self._shared_ann_search(queries, plan, deadline, alone=inside == 1)
        with self._lock.exclusive(), self._flight(queries, plan, round_):
            if round_ is not None:
                return self._funnel_round(queries, plan, *round_, deadline)
            return self._search_keys(queries, plan, deadline)

    def _shared_ann_search(self, queries: np.ndarray, plan: SearchPlan, deadline: float | None,
                           alone: bool):
        """An ANN search that may overlap others. Alone, a batch walks and re-ranks
        on all the shard's threads; beside another search it keeps to one core
        (OpenMP threads sharing cores wait on each other at every barrier)."""
        _check_deadline(deadline)
        if alone:
            return ann_shard.search_keys(self.engine, self.ann, queries, plan)
        with parallel.on_calling_thread():
            return ann_shard.search_keys(self.engine, self.ann, queries, plan, threads=1)

    @_locked
    def upsert(self, ids: np.ndarray, vectors: np.ndarray, payload: dict | None = None,
               deadline: float | None = None) -> int:
        _check_deadline(deadline)
        if self.store:
            return self.store.upsert(ids, vectors, payload)  # the store keeps the graph in step
        n = self.engine.upsert(ids, vectors, payload)
        self.ann.upsert(ids, vectors, self.engine)
        return n

    @_locked
    def set_payload(self, ids: np.ndarray, payload: dict, deadline: float | None = None) -> int:
        _check_deadline(deadline)
        if self.store:
            return self.store.set_payload(ids, payload)
        return self.engine.set_payload(ids, payload)

    @_locked
    def delete_matching(self, filter_json: str, deadline: float | None = None) -> int:
        """Delete every row matching the filter: resolved to ids under the lock, so the
        log records exactly which rows went (a replay does not re-evaluate the filter)."""
        _check_deadline(deadline)
        ids = self.engine.matching_ids(filter_json, len(self.engine))
        return self._delete(ids) if ids.size else 0

    @_locked
    def count(self, filter_json: str = "", deadline: float | None = None) -> int:
        _check_deadline(deadline)
        return self.engine.count(filter_json)

    @_locked
    def find(self, filter_json: str, limit: int, dim: int, with_vectors: bool,
             fields: list[str] | None, with_payload: bool, deadline: float | None = None):
        """Get by filter: (the `limit` smallest matching ids, their vectors or None,
        their payload columns or None)."""
        _check_deadline(deadline)
        ids = self.engine.matching_ids(filter_json, limit)
        vectors = self.engine.get(ids, dim)[1] if with_vectors else None
        return ids, vectors, self.engine.read_payload(ids, fields) if with_payload else None

    @_locked
    def get_payload(self, ids: np.ndarray, fields: list[str] | None,
                    deadline: float | None = None) -> tuple[np.ndarray, dict]:
        """(found mask in the order asked, payload columns of the found ids)."""
        _check_deadline(deadline)
        rows, found = self.engine.stored_rows(ids)
        return found, self.engine.payload.read(rows[found], fields)

    @_locked
    def delete(self, ids: np.ndarray, deadline: float | None = None) -> int:
        _check_deadline(deadline)
        return self._delete(ids)

    def _delete(self, ids: np.ndarray) -> int:
        if self.store:
            return self.store.delete(ids)  # the store keeps the graph in step
        n = self.engine.delete(ids)
        self.ann.delete(ids, self.engine)
        return n

    @_locked
    def get(self, ids: np.ndarray, dim: int, deadline: float | None = None
            ) -> tuple[np.ndarray, np.ndarray]:
        _check_deadline(deadline)
        return self.engine.get(ids, dim)

    @_locked
    def search_keys(self, queries: np.ndarray, plan: SearchPlan, deadline: float | None = None
                    ) -> tuple[np.ndarray, np.ndarray]:
        """Top-k (ids, keys), or funnel candidates with per-stage keys, for the merge."""
        with self._flight(queries, plan, None):
            return self._search_keys(queries, plan, deadline)

    def _search_keys(self, queries: np.ndarray, plan: SearchPlan, deadline: float | None):
        _check_deadline(deadline)
        if plan.ann_candidates:
            if self.ann.spec is None:
                raise FailedPrecondition(
                    f"collection {self.config.name!r} has no ANN index: create one with "
                    "CreateIndex (or create the collection with index=...), or search without ann")
            return ann_shard.search_keys(self.engine, self.ann, queries, plan)
        if plan.stages:
            cand = self.engine.funnel_candidates(queries, plan)
            return cand.ids, cand.keys
        return self.engine.top_keys(queries, plan.k, plan.dim, plan.filter)

    @_locked
    def funnel_round(self, queries: np.ndarray, plan: SearchPlan, stage: int,
                     ids: np.ndarray | None = None, counts: np.ndarray | None = None,
                     deadline: float | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One round of a funnel run across shards (funnel_rounds.py). `stage` 0: this
        shard's shortlist at stage 1; 1..len(stages): re-score the given survivors
        at that stage's dim (the last: the final dim, returning this shard's best k);
        funnel_rounds.WHOLE_FUNNEL: the whole funnel here, final top-k (a collection of
        one shard); funnel_rounds.ONE_ROUND: a one-stage funnel's single round,
        `counts` = [spec]."""
        with self._flight(queries, plan, (stage, ids, counts)):
            return self._funnel_round(queries, plan, stage, ids, counts, deadline)

    def _funnel_round(self, queries, plan, stage, ids, counts, deadline):
        _check_deadline(deadline)
        if stage == funnel_rounds.WHOLE_FUNNEL:
            return self.engine.funnel_keys(queries, plan)
        if stage == funnel_rounds.ONE_ROUND:
            return self.engine.shortlist(queries, plan.stages[0], (int(counts[0]), plan.dim), plan.filter)
        if stage == 0:
            return self.engine.shortlist(queries, plan.stages[0], filter=plan.filter)
        last = stage == len(plan.stages)
        dim = plan.dim if last else plan.stages[stage][0]
        return self.engine.rescore_survivors(queries, ids, counts, dim, plan.k if last else None)

    @_locked
    def sample(self, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
        """Up to n random live (ids, vectors), for funnel calibration."""
        ids = self.engine.ids()
        pick = np.random.default_rng(seed).choice(ids.size, min(n, ids.size), replace=False)
        found, vectors = self.engine.get(ids[pick])
        return ids[pick][found], vectors

    @_locked
    def create_index(self, spec: dict) -> dict:
        """Adopt an index spec and build its graph in the background; returns the index status."""
        spec = IndexSpec.from_dict(spec)
        ann_shard.write_spec(self.directory, spec)
        self.ann.set_spec(spec, self.engine)
        return self.ann.status()

    def wait_index(self, timeout: float = 600.0) -> dict:
        """Block until no graph build runs (tests, benchmarks); returns the index status.

        Runs in the actor's call thread, so other calls wait meanwhile: operators and
        clients poll DescribeCollection instead.
        """
        self.ann.wait(timeout)
        return self.ann.status()

    def checkpoint(self) -> None:
        """Snapshot now (clean shutdown), so the next start replays no log."""
        with self._lock.exclusive():
            if self.store and self.store.wal.bytes:  # (none if it did not start: nothing to keep)
                try:
                    self.store.snapshot()
                except OSError:  # logged, and in status; the log stays for the next start
                    pass

    def restarts(self) -> int:
        """How many times Ray restarted this actor (from the GCS actor table)."""
        try:
            from ray._private import state  # the public state API needs the dashboard
            return int(state.actors(ray.get_runtime_context().get_actor_id()).get("NumRestarts", 0))
        except Exception:
            return int(bool(self.was_restarted))

    def stats(self) -> dict:
        if self.start_error is not None:
            return {"shard": self.shard, "down": True, "health": "DOWN", "down_reason": self.start_error}
        with self._lock.exclusive():
            return self._stats()

    def _stats(self) -> dict:
        s = self.engine.stats()
        ctx = ray.get_runtime_context()
        restarts = self.restarts()
        out = {"shard": self.shard, "actor_name": shard_actor_name(self.config, self.shard),
               "vectors": s.vectors, "tombstones": s.tombstones,
               "capacity": s.capacity, "restarted": bool(self.was_restarted),
               "restarts": restarts, "node_id": ctx.get_node_id(),
               "node_ip": ray.util.get_node_ip_address(),
               "memory_bytes": self.engine.memory_bytes(), "rss_bytes": _rss_bytes(),
               "health": "RECOVERED" if (restarts or self.was_restarted) else "SERVING",
               "direct_searches": self.direct_searches,
               "overlapped_searches": self.overlapped_searches,
               **self.ann.status()}
        if self.store:
            out.update(wal_bytes=self.store.wal.bytes, snapshot_seq=self.store.seq,
                       recovery_seconds=self.store.recovery_seconds, **self.store.health())
            if out["write_error"]:  # its log cannot be written: reads only (wal.py)
                out["health"] = "WRITES_REFUSED"
        return out


def _rss_bytes() -> int:
    """Resident memory of this worker process (Linux /proc; 0 where unavailable)."""
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return 0


def _check_deadline(deadline: float | None) -> None:
    if deadline is not None and time.time() > deadline:
        raise DeadlineExceeded("the request's deadline passed while this call waited for its shard")


def _limit_threads(n: int) -> None:
    """Pin this worker's BLAS and OpenMP pools to `n` threads.

    Shards are how nestvec uses a machine's cores; each shard's math stays on a
    fixed number of threads so shards on one node do not oversubscribe it (Ray
    already starts workers with OMP_NUM_THREADS=1; this makes it explicit and
    configurable with `nestvec serve --shard-threads`).
    """
    import threadpoolctl

    from nestvec.cluster._engine import kernels
    threadpoolctl.threadpool_limits(n)
    kernels.set_threads(n)
    parallel.set_threads(n)  # batches then run as n parts of one BLAS thread each
