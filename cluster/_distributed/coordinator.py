"""Coordinator: routes writes to shards by id, fans searches out, merges top-k.

A plain object, used two ways over the same code:
- inside the gateway, through the `a*` coroutines (`asearch`, `aupsert`, ...),
  which await Ray object refs and never block the event loop;
- from a Ray job, through `connect()` and the plain methods (`search`, ...),
  which call `ray.get`.

Each operation is written once, as a generator "plan" that yields a `Fanout`
(the actor calls it needs) and receives their results; `_run_sync` /
`_run_async` drive it. The drivers also own fault handling: a call that failed
because its shard actor died is re-issued (Ray restarts durable shards, which
recover from disk before answering) until the request's deadline or the retry
window ends; then the request fails with UNAVAILABLE, or, for a search that
allows partial results, returns what the live shards found and names the rest.

Searches to shards on this coordinator's own Ray node skip the Ray task and go
over the shard's Unix socket (direct.py, ~15 us instead of ~0.5-1.4 ms); if a
socket fails, that call falls back to Ray, which then handles the fault as above.

Shard and catalog actors are detached: a non-detached actor dies when the last
handle to it goes away, so evicting a cache entry in one gateway would kill a
shard every other gateway and Ray job still uses. They end when their
collection is dropped, or with the Ray cluster.
"""
from __future__ import annotations

import asyncio
import collections
import functools
import shutil
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Generator

import numpy as np
import ray
from ray import exceptions as ray_errors
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from nestvec.cluster._engine import collection as col
from nestvec.cluster._storage import datadir
from nestvec.cluster._engine import funnel_rounds
from nestvec.cluster._engine import planner
from nestvec.cluster._distributed.catalog import CATALOG_ACTOR, CatalogActor
from nestvec.cluster._engine.collection import CollectionConfig, SearchPlan
from nestvec.cluster._distributed.direct import MAX_QUERY_BYTES, DirectClient, DirectUnavailable
from nestvec.cluster._engine.limits import DEFAULT_LIMITS, Limits
from nestvec.cluster._distributed.placement import Placement
from nestvec.cluster._engine.shard_engine import SearchResult, keys_to_scores
from nestvec.cluster._distributed.routing import split_by_shard
from nestvec.cluster._distributed.shard_actor import ShardActor, shard_actor_name
from nestvec.cluster._engine.topk import merge_topk, run_funnel
from nestvec.errors import (AlreadyExists, DeadlineExceeded, FailedPrecondition, InvalidArgument,
                            NestvecError, NotFound, Unavailable)

DEFAULT_NAMESPACE = "nestvec"
# A funnel over several shards runs in rounds (funnel_rounds.py) once the re-rank
# work of one fan-out (queries x stage-1 candidates x the dims re-scored after it,
# on every shard) reaches this many row-dims; below it the extra round trips cost
# more than re-ranking every shard's whole shortlist. Measured with 2 shards on
# corpusA: a round costs ~0.5 ms over the sockets (more as Ray calls); at 2M
# row-dims (64:400 -> 384 at 13 queries) the two ways break even.
ROUNDS_MIN_ROW_DIMS_DIRECT = 2_000_000
ROUNDS_MIN_ROW_DIMS_RAY = 8_000_000
RETRY_WINDOW_S = 15.0     # how long a call waits for a restarting shard without a deadline
_INLINE_BYTES = 100_000   # larger query batches go to the object store once, not once per shard


class ShardMissing(Exception):
    """The shard's actor is not registered at all (it died and will not restart)."""


class _MissingShard:
    """Stands in for the handle of a shard that is not running: every call fails fast."""

    def __init__(self, name: str):
        self.name = name

    def __getattr__(self, method):
        return self

    def remote(self, *args, **kwargs):
        raise ShardMissing(f"shard actor {self.name!r} is not running")


_ACTOR_DOWN = (ray_errors.RayActorError, ray_errors.ActorUnavailableError, ShardMissing)


@dataclass
class Fanout:
    """Actor calls to run at once: each a (bound remote method, args) pair."""

    calls: list[tuple[Any, tuple]]
    partial_ok: bool = False   # a call whose actor stays down yields None instead of failing
    retry: bool = True         # re-issue calls whose actor died (durable shards restart)
    deadline: bool = False     # pass the request's wall-clock deadline (shard data calls)
    # Searches only: per call, the shard's DirectClient (None: use Ray) and the
    # (queries, plan, round or None) to send it; and what to do when a socket fails.
    direct: list | None = None
    direct_args: list = field(default_factory=list)
    on_direct_down: Callable[[], None] | None = None


Plan = Generator[Fanout, list, Any]


@dataclass
class GetResult:
    """Stored vectors of the found ids, in the order asked, and the ids not stored."""

    ids: np.ndarray          # found ids (uint64), in request order
    vectors: np.ndarray      # [len(ids), dim] float32
    missing_ids: np.ndarray  # requested ids that are not stored


@dataclass
class ClusterSearchResult(SearchResult):
    """A SearchResult plus the shards that did not answer (only with allow_partial),
    and, for a target_recall search, the funnel that ran and its calibrated recall."""

    missing_shards: list[int] = field(default_factory=list)
    funnel_used: list = field(default_factory=list)
    calibrated_recall: float | None = None
    ann_used: tuple = ()   # with target_recall: (ef, candidates) if an ANN schedule ran


@dataclass
class _Collection:
    config: CollectionConfig
    shards: list  # ShardActor handles, index = shard number
    direct: list | None = None  # per shard, a DirectClient or None (not on this node); None: ask


def _both(plan_method: Callable[..., Plan]):
    """Expose a plan as a sync method (for Ray jobs); `a<name>` is the async twin."""

    @functools.wraps(plan_method)
    def sync(self, *args, timeout: float | None = None, **kwargs):
        try:
            return _run_sync(plan_method(self, *args, **kwargs), timeout, self._retry)
        except Unavailable:
            self._cache.clear()  # handles may be stale (a shard died, or a drop elsewhere)
            raise

    async def run_async(self, *args, timeout: float | None = None, **kwargs):
        try:
            return await _run_async(plan_method(self, *args, **kwargs), timeout, self._retry)
        except Unavailable:
            self._cache.clear()
            raise

    sync._async = run_async  # collected into the class by _add_async_twins
    return sync


class Coordinator:
    """The cluster's front: catalog, routing, fan-out and merge. No data of its own.

    `create_catalog=True` (the server) starts the catalog actor, persisted under
    `data_dir` if given; otherwise the coordinator attaches to a running one.
    """

    def __init__(self, namespace: str = DEFAULT_NAMESPACE, default_shards: int = 1,
                 create_catalog: bool = False, data_dir: str | None = None,
                 fsync: str = "always", fsync_interval: float = 0.05,
                 limits: Limits = DEFAULT_LIMITS, shard_threads: int = 1,
                 placement: Placement | None = None, direct: bool = True,
                 funnel_in_rounds: bool | None = None):
        """`direct=False` sends every search through Ray (to compare, or to debug).
        `funnel_in_rounds` True/False forces funnels into rounds or one fan-out (default:
        chosen per search by `_in_rounds`)."""
        self.namespace = namespace
        self.direct = direct
        self.funnel_in_rounds = funnel_in_rounds
        self._node_id = ray.get_runtime_context().get_node_id()
        self.limits = limits
        self.default_shards = default_shards
        if create_catalog:
            if data_dir:
                data_dir = datadir.open_data_dir(data_dir)
            if placement is not None:
                placement.check_cluster(ray.cluster_resources())
            # The catalog holds the data dir's lock: keep it on this (the server's) node,
            # not on a worker node that may go away. Hard affinity: a soft one was seen
            # placing it on a worker node of a 3-node test cluster, which then took it down.
            here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
            self._catalog = CatalogActor.options(
                name=CATALOG_ACTOR, namespace=namespace, get_if_exists=True,
                lifetime="detached", scheduling_strategy=here).remote(
                    data_dir, fsync, fsync_interval, shard_threads,
                    placement.to_dict() if placement else None)
        else:
            try:
                self._catalog = ray.get_actor(CATALOG_ACTOR, namespace=namespace)
            except ValueError:
                raise Unavailable(
                    f"no nestvec cluster found in Ray namespace {namespace!r}: start one with "
                    "`nestvec serve` (or pass the namespace it uses)") from None
        try:
            self.settings = ray.get(self._catalog.settings.remote())
        except ray_errors.RayActorError as err:  # the catalog could not open the data dir
            last_line = str(err).strip().splitlines()[-1]  # the constructor's own error
            raise Unavailable(f"the catalog failed to start: {last_line}") from None
        if create_catalog and self.settings["data_dir"] != data_dir:
            # get_if_exists attached us to a catalog another server started differently
            raise Unavailable(
                f"Ray namespace {namespace!r} already holds a nestvec catalog for data dir "
                f"{self.settings['data_dir'] or '(in memory)'}, not {data_dir or '(in memory)'}: "
                "use the same --data-dir, or another --namespace")
        self._retry = RETRY_WINDOW_S if self.settings["data_dir"] else 0.0
        self._cache: dict[str, _Collection] = {}
        self._observed: dict[str, collections.deque] = {}  # recent query rows, for calibration
        self._curves: dict[tuple[str, int], tuple[planner.Curve, float]] = {}  # -> (curve, checked at)

    # ----- catalog --------------------------------------------------------------
    @_both
    def create_collection(self, name: str, dim: int, metric: str = "cosine",
                          nested_dims=None, shards: int | None = None,
                          first_stage: str | None = None, index=None) -> Plan:
        """`first_stage`: "float32", "float16" or "int8" shortlist copies (lowp.py);
        `index`: an ANN graph spec such as {"type": "hnsw", "dim": 64} (docs/ann.md),
        whose build starts in the background on each shard."""
        cfg = CollectionConfig.create(name, dim, metric, nested_dims,
                                      shards or self.default_shards, first_stage, index)
        (created,) = yield Fanout([(self._catalog.create, (cfg.to_dict(),))])
        if not created:
            raise AlreadyExists(f"collection {name!r} already exists: drop it first or pick another name")
        handles = self._spawn_shards(cfg, reuse=False)
        try:
            yield Fanout([(h.ready, ()) for h in handles])
        except BaseException:
            self._kill(handles)
            yield Fanout([(self._catalog.drop, (name,))])
            raise
        self._cache[name] = _Collection(cfg, handles)
        return cfg

    @_both
    def drop_collection(self, name: str) -> Plan:
        (cfg,) = yield Fanout([(self._catalog.drop, (name,))])
        cached = self._cache.pop(name, None)
        if cfg is None:
            raise NotFound(f"collection {name!r} does not exist")
        config = CollectionConfig.from_dict(cfg)
        self._kill(cached.shards if cached else self._named_handles(config, missing_ok=True))
        if self.settings["data_dir"]:
            shutil.rmtree(datadir.collection_dir(self.settings["data_dir"], name, config.uid),
                          ignore_errors=True)
        return None

    @_both
    def list_collections(self) -> Plan:
        (configs,) = yield Fanout([(self._catalog.list, ())])
        return [CollectionConfig.from_dict(c) for c in configs]

    @_both
    def describe_collection(self, name: str) -> Plan:
        """(config, per-shard stats dicts; a shard that is down reports {"shard": i, "down": True})."""
        c = yield from self._collection(name)
        yield from self._refresh_config(c)  # CreateIndex may have come through another gateway
        stats = yield Fanout([(h.stats, ()) for h in c.shards], partial_ok=True, retry=False)
        return c.config, [s if s is not None else {"shard": i, "down": True}
                          for i, s in enumerate(stats)]

    @_both
    def create_index(self, name: str, index) -> Plan:
        """Add (or replace) a collection's ANN index; each shard builds it in the background
        while exact search keeps serving. Returns (config, per-shard stats)."""
        c = yield from self._collection(name)
        spec = col.IndexSpec.create(index if index is not None else {}, c.config.dim)
        if spec is None:
            raise InvalidArgument("index is empty: give at least {'type': 'hnsw'}")
        (cfg,) = yield Fanout([(self._catalog.set_index, (name, spec.to_dict()))])
        if cfg is None:
            raise NotFound(f"collection {name!r} does not exist")
        yield Fanout([(h.create_index, (spec.to_dict(),)) for h in c.shards])
        c.config = CollectionConfig.from_dict(cfg)
        self._curves = {key: v for key, v in self._curves.items() if key[0] != name}
        stats = yield Fanout([(h.stats, ()) for h in c.shards])
        return c.config, stats

    @_both
    def wait_index(self, name: str, timeout_s: float = 600.0) -> Plan:
        """Wait until no shard of the collection is building its graph; returns shard stats."""
        c = yield from self._collection(name)
        stats = yield Fanout([(h.wait_index, (timeout_s,)) for h in c.shards])
        return stats

    @_both
    def open_collections(self) -> Plan:
        """Start the shards of every catalogued collection (a server restarting on its data dir)."""
        (configs,) = yield Fanout([(self._catalog.list, ())])
        opened = []
        for cfg in map(CollectionConfig.from_dict, configs):
            handles = self._named_handles(cfg, missing_ok=True)
            if any(h is None for h in handles):
                handles = self._spawn_shards(cfg, reuse=True)
            yield Fanout([(h.ready, ()) for h in handles])
            self._cache[cfg.name] = _Collection(cfg, handles)
            opened.append(cfg)
        return opened

    @_both
    def checkpoint(self) -> Plan:
        """Snapshot every shard (clean shutdown: the next start replays no log)."""
        (configs,) = yield Fanout([(self._catalog.list, ())])
        handles = [h for cfg in map(CollectionConfig.from_dict, configs)
                   for h in self._named_handles(cfg, missing_ok=True) if h is not None]
        yield Fanout([(h.checkpoint, ()) for h in handles], partial_ok=True, retry=False)

    # ----- writes ---------------------------------------------------------------
    @_both
    def upsert(self, name: str, ids, vectors) -> Plan:
        """Insert or replace vectors by id; returns rows written.

        Acknowledged (returned) only after every shard has the batch in its log.
        If a call fails part-way, some shards may hold their part: upserts are
        idempotent, so retrying the same upsert is safe.
        """
        c = yield from self._collection(name)
        vectors = col.check_vectors(vectors, c.config, self.limits)
        ids = col.check_ids(ids, vectors.shape[0])
        parts = [(s, p) for s, p in enumerate(split_by_shard(ids, c.config.shards)) if p.size]
        yield Fanout([(c.shards[s].upsert, (ids[p], vectors[p])) for s, p in parts], deadline=True)
        return int(np.unique(ids).size)  # rows written: a repeated id is one row (last wins)

    @_both
    def delete(self, name: str, ids) -> Plan:
        """Delete by id; returns how many existed."""
        c = yield from self._collection(name)
        ids = col.check_ids(ids, limit=self.limits.max_ids)
        parts = [(s, p) for s, p in enumerate(split_by_shard(ids, c.config.shards)) if p.size]
        counts = yield Fanout([(c.shards[s].delete, (ids[p],)) for s, p in parts], deadline=True)
        return int(sum(counts))

    # ----- reads ----------------------------------------------------------------
    @_both
    def get(self, name: str, ids, dim: int | None = None) -> Plan:
        c = yield from self._collection(name)
        ids = col.check_ids(ids, limit=self.limits.max_ids)
        dim = int(dim or 0) or c.config.dim
        if not 1 <= dim <= c.config.dim:
            raise InvalidArgument(f"dim {dim} is outside 1..{c.config.dim} (0 means the full dim)")
        parts = [(s, p) for s, p in enumerate(split_by_shard(ids, c.config.shards)) if p.size]
        results = yield Fanout([(c.shards[s].get, (ids[p], dim)) for s, p in parts], deadline=True)
        found = np.zeros(ids.size, dtype=bool)
        vectors = np.zeros((ids.size, dim), dtype=np.float32)
        for (_, pos), (f, v) in zip(parts, results):
            found[pos[f]] = True
            vectors[pos[f]] = v
        return GetResult(ids[found], vectors[found], ids[~found])

    @_both
    def search(self, name: str, queries, k: int = 10, dim: int | None = None,
               funnel=None, allow_partial: bool = False, target_recall: float | None = None,
               ann: bool = False, ef: int | None = None, candidates: int | None = None,
               _record: bool = True) -> Plan:
        """Exact top-k over every shard at prefix `dim` (full if None), optionally via a funnel.

        A shard that is down fails the search with UNAVAILABLE, unless
        `allow_partial`: then the live shards' merged answer comes back with
        `missing_shards` naming the others. With `target_recall` instead of a
        funnel, the cheapest calibrated funnel that reaches it runs (planner.py).
        With `ann`, each shard takes `candidates` from its ANN graph (beam width
        `ef`) and re-ranks them exactly at the funnel's stages and `dim` (docs/ann.md).
        """
        c = yield from self._collection(name)
        queries = col.check_queries(queries, c.config, self.limits)
        chosen = None
        if target_recall:
            if funnel:
                raise InvalidArgument("give either a funnel or target_recall, not both")
            if not 0 < float(target_recall) <= 1:
                raise InvalidArgument(f"target_recall must be in (0, 1], got {target_recall}")
            if int(dim or 0) not in (0, c.config.dim):
                raise InvalidArgument("target_recall plans funnels ranked at the full dim: leave dim at 0")
            curve = yield from self._curve(c, int(k))
            if ann and not curve.index_dim:
                raise FailedPrecondition(
                    f"collection {name!r} has no ANN index ready on every shard to plan with: "
                    "wait for DescribeCollection to show it ready, or search without ann")
            chosen = curve.pick(float(target_recall), ann_only=bool(ann))
            funnel = [list(s) for s in chosen.stages]
            ann = bool(chosen.ann)
            ef, candidates = chosen.ann or (None, None)
        if ann and c.config.index is None:  # maybe created through another gateway
            yield from self._refresh_config(c)
        plan = col.plan_search(c.config, queries.shape[1], k, dim, funnel, self.limits,
                               ann, ef, candidates)
        if _record and queries.shape[1] == c.config.dim:
            rows = self._observed.setdefault(name, collections.deque(maxlen=1000))
            rows.extend(queries[:64].copy())  # a copy: rows must not pin a large request's array
        direct = (yield from self._direct_clients(c)) if queries.nbytes <= MAX_QUERY_BYTES else None
        if direct is not None and not any(direct):
            direct = None  # every shard is on another node: plain Ray, no empty socket round
        big = queries.nbytes > _INLINE_BYTES and not (direct and all(direct))
        q_arg = ray.put(queries) if big else queries
        if plan.stages and not plan.ann_candidates and self._in_rounds(c, queries, plan, direct):
            ids, keys, missing = yield from self._funnel_rounds(c, queries, q_arg, plan, direct,
                                                                allow_partial)
            return ClusterSearchResult(ids, keys_to_scores(c.config.metric, queries, keys, plan.dim),
                                       missing, [list(s) for s in plan.stages] if chosen else [],
                                       chosen.recall if chosen else None)
        parts = yield Fanout([(h.search_keys, (q_arg, plan)) for h in c.shards],
                             partial_ok=allow_partial, deadline=True, direct=direct,
                             direct_args=[(queries, plan, None)] * len(c.shards), on_direct_down=functools.partial(self._forget_direct, c))
        missing = [i for i, p in enumerate(parts) if p is None]
        live = [p for p in parts if p is not None]
        if not live:
            raise Unavailable(f"no shard of collection {name!r} is reachable; retry later")
        res = merge_shard_results(c.config.metric, queries, plan, live)
        return ClusterSearchResult(res.ids, res.scores, missing,
                                   [list(s) for s in plan.stages] if chosen else [],
                                   chosen.recall if chosen else None,
                                   (plan.ef, plan.ann_candidates) if chosen and chosen.ann else ())

    def _in_rounds(self, c: _Collection, queries: np.ndarray, plan: SearchPlan, direct) -> bool:
        """Run this funnel in rounds (funnel_rounds.py) rather than in one fan-out?
        Always with one shard (one call runs the whole pruned funnel there) and for
        one stage (one round, which re-scores less than one fan-out: measured as fast
        at batch 1, 10-22% faster at batches of 4-16 for 64:400 over 2 shards); for
        longer funnels on several shards, once the shortlists are big enough that
        re-ranking only the global survivors saves more than the extra round trips cost."""
        if self.funnel_in_rounds is not None:
            return self.funnel_in_rounds
        if len(c.shards) == 1 or len(plan.stages) == 1:
            return True
        later = sum(d for d, _ in plan.stages[1:]) + plan.dim
        work = queries.shape[0] * plan.stages[0][1] * later
        return work >= (ROUNDS_MIN_ROW_DIMS_DIRECT if direct and all(direct) else ROUNDS_MIN_ROW_DIMS_RAY)

    def _funnel_rounds(self, c: _Collection, queries: np.ndarray, q_arg, plan: SearchPlan,
                       direct, partial: bool, one_round: bool = True):
        """A funnel across the shards, one round per stage (funnel_rounds.py); a
        one-stage funnel in one round, its queries a shard may hold more of again in
        rounds (`one_round=False`). Returns ([Q, kk] ids, keys, missing shards)."""
        def fan(shards: list[int], rounds: list[tuple]) -> Fanout:
            return Fanout([(c.shards[i].funnel_round, (q_arg, plan, *r)) for i, r in zip(shards, rounds)],
                          partial_ok=partial, deadline=True,
                          direct=[direct[i] for i in shards] if direct else None,
                          direct_args=[(queries, plan, r) for r in rounds],
                          on_direct_down=functools.partial(self._forget_direct, c))

        def unreachable():
            return Unavailable(f"no shard of collection {c.config.name!r} is reachable; retry later")

        if len(c.shards) == 1:  # the shard holds everything: it runs the whole funnel
            (got,) = yield fan([0], [(funnel_rounds.WHOLE_FUNNEL, None, None)])
            if got is None:
                raise unreachable()
            return got[0], got[1], []
        if len(plan.stages) == 1 and one_round:  # usually settled in one round (funnel_rounds.py)
            keep = plan.stages[0][1]
            spec = funnel_rounds.spec_count(keep, len(c.shards))
            got = yield fan(list(range(len(c.shards))),
                            [(funnel_rounds.ONE_ROUND, None, np.array([spec], np.int32))] * len(c.shards))
            parts = [g for g in got if g is not None]
            if not parts:
                raise unreachable()
            ids, keys, redo = funnel_rounds.one_round(parts, spec, keep, plan.k)
            missing = [i for i, g in enumerate(got) if g is None]
            if redo.size:  # a shard may hold more of these queries' shortlists: rounds
                again, again_keys, more = yield from self._funnel_rounds(
                    c, queries[redo], queries[redo], plan, direct, partial, one_round=False)
                width = min(ids.shape[1], again.shape[1])  # deletes meanwhile may narrow it
                ids, keys = ids[:, :width], keys[:, :width]
                ids[redo], keys[redo] = again[:, :width], again_keys[:, :width]
                missing = sorted(set(missing) | set(more))
            return ids, keys, missing
        missing: set[int] = set()
        shards, rounds = list(range(len(c.shards))), [(0, None, None)] * len(c.shards)
        for stage in range(len(plan.stages) + 1):
            got = yield fan(shards, rounds)
            missing |= {i for i, g in zip(shards, got) if g is None}
            parts = [(i, *g) for i, g in zip(shards, got) if g is not None]
            if not parts:
                raise unreachable()
            if stage == len(plan.stages):
                ids, keys = funnel_rounds.final([p[1:] for p in parts], plan.k)
                return ids, keys, sorted(missing)
            surv = funnel_rounds.cut(parts, plan.stages[stage][1])
            shares = [(i, funnel_rounds.share(surv, i)) for i in range(len(c.shards)) if i not in missing]
            shares = [(i, sh) for i, sh in shares if sh is not None]
            if not shares:  # every survivor was deleted between the rounds
                return (np.zeros((queries.shape[0], 0), np.uint64),
                        np.zeros((queries.shape[0], 0), np.float32), sorted(missing))
            shards, rounds = [i for i, _ in shares], [(stage + 1, *sh) for _, sh in shares]

    @_both
    def calibrate(self, name: str, k: int = 10, queries=None) -> Plan:
        """Measure recall@k and cost of candidate funnels for a collection (planner.py).

        Sample: `queries` if given, else the query rows this coordinator served
        recently (at least planner.MIN_OBSERVED), else stored vectors.
        """
        c = yield from self._collection(name)
        curve = yield from self._calibrate(c, int(k), queries)
        return curve

    def _curve(self, c: _Collection, k: int):
        """Sub-plan: the collection's calibration at k, made or refreshed when needed."""
        key = (c.config.name, k)
        cached = self._curves.get(key)
        if cached is None:
            (rec,) = yield Fanout([(self._catalog.get, (c.config.name,))])
            stored = ((rec or {}).get("calibration") or {}).get(str(k))
            if stored:
                cached = (planner.Curve.from_dict(stored), 0.0)
        if cached is not None and time.monotonic() - cached[1] < 10:
            return cached[0]
        live, index_dim = yield from self._live_count(c)
        if cached is not None and not cached[0].stale(live) and cached[0].index_dim == index_dim:
            self._curves[key] = (cached[0], time.monotonic())
            return cached[0]
        curve = yield from self._calibrate(c, k, None)
        return curve

    def _live_count(self, c: _Collection):
        """Sub-plan: (live vectors, the dim of an ANN graph serving on every shard, 0 if
        some shard has none)."""
        stats = yield Fanout([(h.stats, ()) for h in c.shards])
        live = int(sum(s["vectors"] for s in stats))
        ready = all(s.get("index_state") in ("ready", "stale") for s in stats)
        return live, int(stats[0].get("index_dim", 0)) if ready else 0

    def _calibrate(self, c: _Collection, k: int, queries):
        cfg, name = c.config, c.config.name
        live, index_dim = yield from self._live_count(c)
        if live <= k:
            raise InvalidArgument(f"collection {name!r} has {live} vectors: too few to calibrate at k={k}")
        own = None
        observed = self._observed.get(name)
        if queries is not None:
            sample, source = col.check_queries(queries, cfg, self.limits), "queries"
        elif observed is not None and len(observed) >= planner.MIN_OBSERVED:
            sample, source = np.stack(list(observed)), "queries"
        else:
            per = max(1, 300 // cfg.shards)
            got = yield Fanout([(h.sample, (per,)) for h in c.shards])
            own = np.concatenate([g[0] for g in got])
            sample, source = np.concatenate([g[1] for g in got]), "stored"
        extra = 0 if own is None else 1  # a stored vector finds itself: ask one more, drop it
        exact = yield from Coordinator.search.__wrapped__(self, name, sample, k + extra, _record=False)
        truth = planner.drop_self(exact.ids, own, k)
        schedules = []
        for stages in planner.candidate_schedules(cfg.nested_dims, cfg.dim, k, live, cfg.shards):
            if stages:
                res = yield from Coordinator.search.__wrapped__(
                    self, name, sample, k + extra, None, [list(s) for s in stages], _record=False)
                found = planner.drop_self(res.ids, own, k)
                rec, low = planner.recall(found, truth)
            else:
                rec = low = 1.0
            schedules.append(planner.Schedule(stages, rec, planner.cost(stages, cfg.dim, live, cfg.shards,
                                                                   cfg.first_stage),
                                              low))
        if index_dim:  # ANN schedules: graph walk + exact re-rank at the full dim
            m = cfg.index.m if cfg.index is not None else 16
            for ef, cand in planner.ann_schedules(k, live, self.limits.max_candidates):
                res = yield from Coordinator.search.__wrapped__(
                    self, name, sample, k + extra, ann=True, ef=ef, candidates=cand, _record=False)
                rec, low = planner.recall(planner.drop_self(res.ids, own, k), truth)
                schedules.append(planner.Schedule((), rec, planner.ann_cost(
                    ef, cand, index_dim, m, cfg.dim, cfg.shards), low, (ef, cand)))
        curve = planner.Curve(k, cfg.dim, live, source, tuple(schedules), index_dim)
        self._curves[(name, k)] = (curve, time.monotonic())
        yield Fanout([(self._catalog.set_calibration, (name, k, curve.to_dict()))])
        return curve

    # ----- internals ------------------------------------------------------------
    def _collection(self, name: str):
        """Sub-plan: the collection's config and shard handles (cached)."""
        c = self._cache.get(name)
        if c is not None:
            return c
        (cfg,) = yield Fanout([(self._catalog.get, (name,))])
        if cfg is None:
            raise NotFound(f"collection {name!r} does not exist: create it first "
                           "(or list collections to check the name)")
        config = CollectionConfig.from_dict(cfg)
        handles = self._named_handles(config, missing_ok=True)
        c = _Collection(config, [h if h is not None else _MissingShard(shard_actor_name(config, i))
                                 for i, h in enumerate(handles)])
        if all(h is not None for h in handles):  # look a missing shard up again next time
            self._cache[name] = c
        return c

    def _direct_clients(self, c: _Collection):
        """Sub-plan: the shards' direct channels (None for shards on other nodes), asked once."""
        if not self.direct:
            return None
        if c.direct is None:
            try:
                addrs = yield Fanout([(h.direct_address, ()) for h in c.shards], partial_ok=True, retry=False)
            except Exception:  # e.g. a shard from an older nestvec without the call: use Ray
                addrs = [None] * len(c.shards)
            clients = [DirectClient(a["path"], a["token"]) if a and a["node_id"] == self._node_id else None
                       for a in addrs]
            if all(a is not None for a in addrs):  # a shard that did not answer is asked again later
                c.direct = clients
            return clients
        return c.direct

    @staticmethod
    def _forget_direct(c: _Collection) -> None:
        """A socket failed (its shard restarted, or died): ask the shards again next time."""
        old, c.direct = c.direct, None
        for client in old or ():
            if client is not None:
                client.close()

    def _refresh_config(self, c: _Collection):
        """Sub-plan: re-read the collection's config (its index spec can change) from the catalog."""
        (cfg,) = yield Fanout([(self._catalog.get, (c.config.name,))])
        if cfg is not None and cfg.get("uid") == c.config.uid:
            c.config = CollectionConfig.from_dict(cfg)

    def _spawn_shards(self, cfg: CollectionConfig, reuse: bool) -> list:
        """Start the shard actors (`reuse`: attach to any already running under the name)."""
        return [self._spawn_shard(cfg, i, reuse) for i in range(cfg.shards)]

    def _spawn_shard(self, cfg: CollectionConfig, i: int, reuse: bool):
        data_dir = self.settings["data_dir"]
        opts = dict(name=shard_actor_name(cfg, i), namespace=self.namespace,
                    lifetime="detached", get_if_exists=reuse,
                    # A durable shard restarts and recovers from disk; an in-memory one
                    # must not come back empty and pretend nothing was lost.
                    max_restarts=-1 if data_dir else 0,
                    **Placement.from_dict(self.settings.get("placement")).actor_options(i))
        args = (cfg.to_dict(), i,
                datadir.shard_dir(data_dir, cfg.name, cfg.uid, i) if data_dir else None,
                self.settings["fsync"], self.settings["fsync_interval"],
                self.settings.get("shard_threads", 1))
        return ShardActor.options(**opts).remote(*args)

    def _named_handles(self, cfg: CollectionConfig, missing_ok: bool = False) -> list:
        handles = []
        for i in range(cfg.shards):
            try:
                handles.append(ray.get_actor(shard_actor_name(cfg, i), namespace=self.namespace))
            except ValueError:
                if not missing_ok:
                    raise Unavailable(f"shard {i} of collection {cfg.name!r} is not running") from None
                handles.append(None)
        return handles

    @staticmethod
    def _kill(handles: list) -> None:
        for h in handles:
            if h is None:
                continue
            try:
                ray.kill(h, no_restart=True)
            except Exception:  # already gone is fine: we wanted it gone
                pass


def merge_shard_results(metric: str, queries: np.ndarray, plan: SearchPlan,
                        parts: list[tuple[np.ndarray, np.ndarray]]) -> SearchResult:
    """Merge per-shard (ids, keys) into the global answer (the funnel runs here on candidates)."""
    if len(parts) == 1:
        ids, keys = parts[0]
    else:
        ids = np.concatenate([p[0] for p in parts], axis=1)
        keys = np.concatenate([p[1] for p in parts], axis=1)
    if plan.stages:  # (ANN plans too: their candidates carry a key per stage)
        ids, keys = run_funnel(ids, keys, plan.keeps, plan.k)
    else:
        ids, keys = merge_topk(ids, keys, plan.k)
    return SearchResult(ids, keys_to_scores(metric, queries, keys, plan.dim))


def _add_async_twins(cls):
    for name, member in list(vars(cls).items()):
        twin = getattr(member, "_async", None)
        if twin is not None:
            twin.__name__ = twin.__qualname__ = "a" + name
            twin.__doc__ = member.__doc__
            setattr(cls, "a" + name, twin)
    return cls


Coordinator = _add_async_twins(Coordinator)


# ----- plan drivers ------------------------------------------------------------
class _Deadline:
    def __init__(self, timeout: float | None, retry_window: float):
        now = time.monotonic()
        self.end = None if timeout is None else now + timeout
        # The shards compare against the wall clock (another process, maybe another node).
        self.wall_end = None if timeout is None else time.time() + timeout
        self.retry_end = now + retry_window if self.end is None else min(self.end, now + retry_window)

    def remaining(self) -> float | None:
        return None if self.end is None else max(0.0, self.end - time.monotonic())

    def may_retry(self, backoff: float) -> bool:
        return time.monotonic() + backoff < self.retry_end


def _translate(err: BaseException) -> BaseException:
    """Ray's errors as nestvec errors; an engine's own error passes through unwrapped."""
    if isinstance(err, ray_errors.RayTaskError) and isinstance(err.cause, NestvecError):
        return err.cause
    if isinstance(err, _ACTOR_DOWN):
        return Unavailable(f"a shard is down ({err.__class__.__name__}) and did not come back "
                           "in time; retry later")
    if isinstance(err, (ray_errors.GetTimeoutError, asyncio.TimeoutError, TimeoutError)):
        return DeadlineExceeded("the request's deadline passed before the shards answered")
    return err


def _settle(fan: Fanout, results: list, down: list[int], deadline: _Deadline, backoff: float) -> bool:
    """After a round: True to retry the `down` calls; else fill them in or fail."""
    if not down:
        return False
    if fan.retry and not fan.partial_ok and deadline.may_retry(backoff):
        return True
    if fan.partial_ok:
        for i in down:
            results[i] = None
        return False
    raise _translate(results[down[0]])


def _issue(call: tuple[Any, tuple], wall_deadline: float | None = None):
    """Submit one actor call; a shard that is not running gives its error instead of a ref."""
    method, args = call
    try:
        return method.remote(*args, deadline=wall_deadline) if wall_deadline else method.remote(*args)
    except _ACTOR_DOWN as err:  # not running, or Ray refuses the call at once (its node died)
        return err


async def _failed(err: BaseException):
    raise err


def _run_sync(plan: Plan, timeout: float | None, retry_window: float) -> Any:
    deadline = _Deadline(timeout, retry_window)
    try:
        fan = next(plan)
        while True:
            try:
                results = _gather_sync(fan, deadline)
            except Exception as err:  # hand the error to the plan (it may clean up)
                fan = plan.throw(_translate(err))
                continue
            fan = plan.send(results)
    except StopIteration as stop:
        return stop.value


def _direct_sync(fan: Fanout, deadline: _Deadline, results: list) -> list[int]:
    """Run the calls that have a direct channel (send all, then read all); returns the
    indices left for Ray: those without a channel and those whose socket failed."""
    todo, sent, failed = [], [], False
    try:
        for i, client in enumerate(fan.direct):
            if client is None:
                todo.append(i)
                continue
            queries, plan, round_ = fan.direct_args[i]
            try:
                sent.append((i, client, client.send(queries, plan, deadline.wall_end,
                                                    deadline.remaining(), round_)))
            except DirectUnavailable:
                todo.append(i)
                failed = True
        while sent:
            i, client, conn = sent.pop(0)
            try:
                results[i] = client.receive(conn)
            except DirectUnavailable:
                todo.append(i)
                failed = True
    finally:
        for _, client, conn in sent:  # a shard's error ended the round: drop the unread replies
            client.abandon(conn)
    if failed and fan.on_direct_down:
        fan.on_direct_down()
    return sorted(todo)


async def _direct_async(fan: Fanout, deadline: _Deadline, results: list) -> list[int]:
    """The asyncio twin of _direct_sync."""
    idx = [i for i, client in enumerate(fan.direct) if client is not None]
    todo = [i for i, client in enumerate(fan.direct) if client is None]
    calls = []
    for i in idx:
        queries, plan, round_ = fan.direct_args[i]
        calls.append(fan.direct[i].asearch(queries, plan, deadline.wall_end, round_))
    if len(calls) == 1:  # the common single-shard case: no gather task
        try:
            got = [await asyncio.wait_for(calls[0], deadline.remaining())]
        except DirectUnavailable as err:
            got = [err]
    else:
        got = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), deadline.remaining())
    failed = False
    for i, r in zip(idx, got):
        if isinstance(r, DirectUnavailable):
            todo.append(i)
            failed = True
        elif isinstance(r, BaseException):
            raise r
        else:
            results[i] = r
    if failed and fan.on_direct_down:
        fan.on_direct_down()
    return sorted(todo)


def _gather_sync(fan: Fanout, deadline: _Deadline) -> list:
    results: list = [None] * len(fan.calls)
    todo, backoff = list(range(len(fan.calls))), 0.05
    if fan.direct:
        todo = _direct_sync(fan, deadline, results)
        if not todo:
            return results
    while True:
        refs = [_issue(fan.calls[i], fan.deadline and deadline.wall_end) for i in todo]
        if not any(isinstance(r, _ACTOR_DOWN) for r in refs):
            try:  # the common case: one wait for all of them
                for i, r in zip(todo, ray.get(refs, timeout=deadline.remaining())):
                    results[i] = r
                return results
            except _ACTOR_DOWN:
                pass  # sort out below which calls failed; the rest are done already
        down = []
        for i, ref in zip(todo, refs):
            try:
                if isinstance(ref, _ACTOR_DOWN):
                    raise ref
                results[i] = ray.get(ref, timeout=deadline.remaining())
            except _ACTOR_DOWN as err:
                results[i] = err
                down.append(i)
        if not _settle(fan, results, down, deadline, backoff):
            return results
        time.sleep(backoff)
        todo, backoff = down, min(1.0, backoff * 2)


async def _run_async(plan: Plan, timeout: float | None, retry_window: float) -> Any:
    deadline = _Deadline(timeout, retry_window)
    try:
        fan = next(plan)
        while True:
            try:
                results = await _gather_async(fan, deadline)
            except Exception as err:
                fan = plan.throw(_translate(err))
                continue
            fan = plan.send(results)
    except StopIteration as stop:
        return stop.value


async def _gather_async(fan: Fanout, deadline: _Deadline) -> list:
    results: list = [None] * len(fan.calls)
    todo, backoff = list(range(len(fan.calls))), 0.05
    if fan.direct:
        todo = await _direct_async(fan, deadline, results)
        if not todo:
            return results
    while True:
        refs = [_issue(fan.calls[i], fan.deadline and deadline.wall_end) for i in todo]
        gathered = asyncio.gather(*[_failed(r) if isinstance(r, _ACTOR_DOWN) else r for r in refs],
                                  return_exceptions=True)
        # If the wait is abandoned, its outcome is still read, so asyncio logs nothing.
        gathered.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            got = await asyncio.wait_for(gathered, deadline.remaining())
        except (asyncio.TimeoutError, asyncio.CancelledError):
            # Deadline passed, or the client went away. Shard calls still queued see
            # their deadline when they start and return without working (ShardActor);
            # we do not ray.cancel actor tasks: in tests a cancelled call left the
            # next call to the same actor waiting until its own deadline.
            raise
        down = []
        for i, r in zip(todo, got):
            if isinstance(r, _ACTOR_DOWN):
                down.append(i)
            elif isinstance(r, BaseException):
                raise r
            results[i] = r
        if not _settle(fan, results, down, deadline, backoff):
            return results
        await asyncio.sleep(backoff)
        todo, backoff = down, min(1.0, backoff * 2)


def connect(namespace: str = DEFAULT_NAMESPACE, address: str | None = "auto") -> Coordinator:
    """A Coordinator attached to a running nestvec cluster's shards (for Ray jobs).

    Inside a Ray job (or any driver on a node of the cluster) `address="auto"`
    joins the cluster; no gRPC hop is involved.
    """
    if not ray.is_initialized():
        ray.init(address=address, namespace=namespace, log_to_driver=False)
    return Coordinator(namespace=namespace)
