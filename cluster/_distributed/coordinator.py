"""Coordinator: the cluster's operations, each written once as a plan.

A plain object, used two ways over the same code:
- inside the gateway, through the `a*` coroutines (`asearch`, `aupsert`, ...),
  which await Ray object refs and never block the event loop;
- from a Ray job, through `connect()` and the plain methods (`search`, ...),
  which call `ray.get`.

Each operation is a generator "plan" that yields a `Fanout` (the actor calls it
needs) and receives their results; fanout.py's drivers run it and own fault
handling (retries, deadlines, partial answers). Around it: shard_set.py (the
shards' handles and sockets), search_rounds.py (funnels across shards in rounds),
calibration.py (target_recall's curves), routing.py (which shard owns an id).
"""
from __future__ import annotations

import collections
import dataclasses
import functools
import json
import logging
import shutil
from dataclasses import dataclass, field

import numpy as np
import ray
from ray import exceptions as ray_errors
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from nestvec.cluster._distributed import calibration, search_rounds
from nestvec.cluster._distributed.catalog import CATALOG_ACTOR, CatalogActor
from nestvec.cluster._distributed.direct import MAX_QUERY_BYTES
from nestvec.cluster._distributed.fanout import Fanout, MissingShard, Plan, add_async_twins
from nestvec.cluster._distributed.fanout import both as _both
from nestvec.cluster._distributed.placement import Placement
from nestvec.cluster._distributed.routing import split_by_shard
from nestvec.cluster._distributed.shard_actor import shard_actor_name
from nestvec.cluster._distributed.shard_set import (ShardSet, direct_clients, forget_direct, kill,
                                                    named_handles, spawn_shards)
from nestvec.cluster._engine import collection as col
from nestvec.cluster._engine import payload as pl
from nestvec.cluster._engine import planner
from nestvec.cluster._engine.collection import CollectionConfig, SearchPlan
from nestvec.cluster._engine.limits import DEFAULT_LIMITS, Limits
from nestvec.cluster._engine.shard_engine import SearchResult, keys_to_scores
from nestvec.cluster._engine.topk import merge_topk, run_funnel
from nestvec.cluster._storage import datadir
from nestvec.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, Unavailable

log = logging.getLogger("nestvec.coordinator")

DEFAULT_NAMESPACE = "nestvec"
RETRY_WINDOW_S = 15.0     # how long a call waits for a restarting shard without a deadline
_INLINE_BYTES = 100_000   # larger query batches go to the object store once, not once per shard
DEFAULT_FIND_LIMIT = 100  # Get by filter without a limit




@dataclass
class GetResult:
    """Stored vectors of the found ids, in the order asked, and the ids not stored."""

    ids: np.ndarray          # found ids (uint64), in request order
    vectors: np.ndarray      # [len(ids), dim] float32 (no columns without vectors)
    missing_ids: np.ndarray  # requested ids that are not stored
    payload: dict | None = None  # with with_payload: field -> Column, one row per found id


@dataclass
class ClusterSearchResult(SearchResult):
    """A SearchResult plus the shards that did not answer (only with allow_partial),
    and, for a target_recall search, the funnel that ran and its calibrated recall."""

    missing_shards: list[int] = field(default_factory=list)
    funnel_used: list = field(default_factory=list)
    calibrated_recall: float | None = None
    ann_used: tuple = ()   # with target_recall: (ef, candidates) if an ANN schedule ran
    payload: dict | None = None  # with with_payload: field -> Column over [Q * k] results


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
                lifetime="detached", scheduling_strategy=here,
                # Durable: restarts and retakes the lock (datadir.py). In memory: would come back empty.
                max_restarts=-1 if data_dir else 0).remote(
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
        self._cache: dict[str, ShardSet] = {}
        self._observed: dict[str, collections.deque] = {}  # recent query rows, for calibration
        self._curves: dict[tuple[str, int], tuple[planner.Curve, float]] = {}  # -> (curve, checked at)

    # ----- catalog --------------------------------------------------------------
    @_both
    def create_collection(self, name: str, dim: int, metric: str = "cosine",
                          nested_dims=None, shards: int | None = None,
                          first_stage: str | None = None, index=None,
                          payload_schema: dict | None = None) -> Plan:
        """`first_stage`: "float32", "float16" or "int8" shortlist copies (lowp.py);
        `index`: an ANN graph spec such as {"type": "hnsw", "dim": 64} (docs/ann.md),
        whose build starts in the background on each shard; `payload_schema`:
        payload fields declared up front, {name: type} (docs/filters.md)."""
        cfg = CollectionConfig.create(name, dim, metric, nested_dims,
                                      shards or self.default_shards, first_stage, index,
                                      payload_schema)
        (created,) = yield Fanout([(self._catalog.create, (cfg.to_dict(),))])
        if not created:
            raise AlreadyExists(f"collection {name!r} already exists: drop it first or pick another name")
        handles = spawn_shards(self.namespace, self.settings, cfg, reuse=False)
        try:
            yield Fanout([(h.ready, ()) for h in handles])
        except BaseException:
            kill(handles)
            yield Fanout([(self._catalog.drop, (name,))])
            raise
        self._cache[name] = ShardSet(cfg, handles)
        return cfg

    @_both
    def drop_collection(self, name: str) -> Plan:
        (cfg,) = yield Fanout([(self._catalog.drop, (name,))])
        cached = self._cache.pop(name, None)
        if cfg is None:
            raise NotFound(f"collection {name!r} does not exist")
        config = CollectionConfig.from_dict(cfg)
        kill(cached.shards if cached else named_handles(self.namespace, config, missing_ok=True))
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
        """(config, per-shard stats dicts; a shard that is down reports {"shard": i, "down": True,
        "down_reason": why, when known})."""
        c = yield from self._collection(name)
        yield from self._refresh_config(c)  # CreateIndex may have come through another gateway
        fan = Fanout([(h.stats, ()) for h in c.shards], partial_ok=True, retry=False)
        stats = yield fan
        return c.config, [s if s is not None else {"shard": i, "down": True,
                                                   "down_reason": fan.errors.get(i, "")}
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
            handles = named_handles(self.namespace, cfg, missing_ok=True)
            if any(h is None for h in handles):
                handles = spawn_shards(self.namespace, self.settings, cfg, reuse=True)
            # A shard that cannot start (a corrupt log) stays down, named; the rest serve.
            fan = Fanout([(h.ready, ()) for h in handles], partial_ok=True)
            for i, up in enumerate((yield fan)):
                if up is None:
                    log.error("collection %r shard %d is down: %s", cfg.name, i, fan.errors.get(i))
            self._cache[cfg.name] = ShardSet(cfg, handles)
            opened.append(cfg)
        return opened

    @_both
    def checkpoint(self) -> Plan:
        """Snapshot every shard (clean shutdown: the next start replays no log)."""
        (configs,) = yield Fanout([(self._catalog.list, ())])
        handles = [h for cfg in map(CollectionConfig.from_dict, configs)
                   for h in named_handles(self.namespace, cfg, missing_ok=True) if h is not None]
        yield Fanout([(h.checkpoint, ()) for h in handles], partial_ok=True, retry=False)

    # ----- writes ---------------------------------------------------------------
    @_both
    def upsert(self, name: str, ids, vectors, payload: dict | None = None) -> Plan:
        """Insert or replace vectors (and their payloads: {field: payload.Column}, one
        entry per row) by id; returns rows written.

        Acknowledged (returned) only after every shard has the batch in its log.
        If a call fails part-way, some shards may hold their part: upserts are
        idempotent, so retrying the same upsert is safe.
        """
        c = yield from self._collection(name)
        vectors = col.check_vectors(vectors, c.config, self.limits)
        ids = col.check_ids(ids, vectors.shape[0])
        if payload:
            payload = yield from self._declare_fields(c, payload, ids.size)
        parts = [(s, p) for s, p in enumerate(split_by_shard(ids, c.config.shards)) if p.size]
        yield Fanout([(c.shards[s].upsert, (ids[p], vectors[p], pl.take_columns(payload, p)))
                      for s, p in parts], deadline=True)
        return int(np.unique(ids).size)  # rows written: a repeated id is one row (last wins)

    @_both
    def set_payload(self, name: str, ids, payload: dict) -> Plan:
        """Change the given payload fields of stored ids (one entry per id; a missing
        entry clears the field), vectors untouched; returns how many ids were stored."""
        c = yield from self._collection(name)
        ids = col.check_ids(ids, limit=self.limits.max_ids)
        if not payload:
            raise InvalidArgument("SetPayload needs at least one payload field")
        payload = yield from self._declare_fields(c, payload, ids.size)
        parts = [(s, p) for s, p in enumerate(split_by_shard(ids, c.config.shards)) if p.size]
        counts = yield Fanout([(c.shards[s].set_payload, (ids[p], pl.take_columns(payload, p)))
                               for s, p in parts], deadline=True)
        return int(sum(counts))

    @_both
    def delete(self, name: str, ids=None, filter=None) -> Plan:
        """Delete by id, or every row matching `filter`; returns how many existed."""
        c = yield from self._collection(name)
        if filter is not None:
            if ids is not None and len(ids):
                raise InvalidArgument("give either ids or a filter to delete, not both")
            f = yield from self._filter(c, filter)
            counts = yield Fanout([(h.delete_matching, (f,)) for h in c.shards], deadline=True)
            return int(sum(counts))
        ids = col.check_ids(ids if ids is not None else [], limit=self.limits.max_ids)
        parts = [(s, p) for s, p in enumerate(split_by_shard(ids, c.config.shards)) if p.size]
        counts = yield Fanout([(c.shards[s].delete, (ids[p],)) for s, p in parts], deadline=True)
        return int(sum(counts))

    # ----- reads ----------------------------------------------------------------
    @_both
    def count(self, name: str, filter=None) -> Plan:
        """Live rows matching `filter` (all live rows without one)."""
        c = yield from self._collection(name)
        f = (yield from self._filter(c, filter)) if filter is not None else ""
        counts = yield Fanout([(h.count, (f,)) for h in c.shards], deadline=True)
        return int(sum(counts))

    @_both
    def get(self, name: str, ids=None, dim: int | None = None, with_payload: bool = False,
            payload_fields: list | None = None, with_vectors: bool = True, filter=None,
            limit: int = 0) -> Plan:
        """Stored rows by id (in the order asked), or with `filter` the `limit` smallest
        matching ids (ascending); vectors at prefix `dim` and, if asked, payloads."""
        c = yield from self._collection(name)
        dim = int(dim or 0) or c.config.dim
        if not 1 <= dim <= c.config.dim:
            raise InvalidArgument(f"dim {dim} is outside 1..{c.config.dim} (0 means the full dim)")
        fields = self._fields(c, payload_fields) if with_payload else None
        if filter is not None:
            if ids is not None and len(ids):
                raise InvalidArgument("give either ids or a filter to get, not both")
            limit = int(limit or DEFAULT_FIND_LIMIT)
            if not 1 <= limit <= self.limits.max_ids:
                raise InvalidArgument(f"limit must be between 1 and {self.limits.max_ids}, got {limit}")
            f = yield from self._filter(c, filter)
            parts = yield Fanout([(h.find, (f, limit, dim, with_vectors, fields, with_payload))
                                  for h in c.shards], deadline=True)
            found = np.concatenate([p[0] for p in parts])
            order = np.argsort(found, kind="stable")[:limit]
            vectors = (np.concatenate([p[1] for p in parts])[order] if with_vectors
                       else np.zeros((order.size, 0), np.float32))
            payload = (pl.take_columns(pl.concat_columns([(p[0].size, p[2]) for p in parts],
                                                         c.config.schema, fields), order)
                       if with_payload else None)
            return GetResult(found[order], vectors, np.empty(0, np.uint64), payload)
        ids = col.check_ids(ids if ids is not None else [], limit=self.limits.max_ids)
        parts = [(s, p) for s, p in enumerate(split_by_shard(ids, c.config.shards)) if p.size]
        results = yield Fanout([(c.shards[s].get, (ids[p], dim if with_vectors else 1)) for s, p in parts],
                               deadline=True)
        found = np.zeros(ids.size, dtype=bool)
        vectors = np.zeros((ids.size, dim if with_vectors else 0), dtype=np.float32)
        for (_, pos), (f, v) in zip(parts, results):
            found[pos[f]] = True
            if with_vectors:
                vectors[pos[f]] = v
        payload = None
        if with_payload:
            payload = yield from self._payload_of(c, ids[found], fields)
        return GetResult(ids[found], vectors[found], ids[~found], payload)

    @_both
    def search(self, name: str, queries, k: int = 10, dim: int | None = None,
               funnel=None, allow_partial: bool = False, target_recall: float | None = None,
               ann: bool = False, ef: int | None = None, candidates: int | None = None,
               _record: bool = True, filter=None, with_payload: bool = False,
               payload_fields: list | None = None) -> Plan:
        """Exact top-k over every shard at prefix `dim` (full if None), optionally via a funnel.

        A shard that is down fails the search with UNAVAILABLE, unless
        `allow_partial`: then the live shards' merged answer comes back with
        `missing_shards` naming the others. With `target_recall` instead of a
        funnel, the cheapest calibrated funnel that reaches it runs (planner.py).
        With `ann`, each shard takes `candidates` from its ANN graph (beam width
        `ef`) and re-ranks them exactly at the funnel's stages and `dim` (docs/ann.md).
        With `filter` only matching rows are candidates, at every stage; filtered ANN and
        target_recall searches run as exact scans of the matching rows for now
        (docs/filters.md). `with_payload` returns the results' payloads.
        """
        c = yield from self._collection(name)
        queries = col.check_queries(queries, c.config, self.limits)
        fields = self._fields(c, payload_fields) if with_payload else None
        chosen = None
        f = ""
        if filter is not None:
            f = yield from self._filter(c, filter)
            if target_recall:  # an exact scan of the matching rows meets any target
                if funnel:
                    raise InvalidArgument("give either a funnel or target_recall, not both")
                if not 0 < float(target_recall) <= 1:
                    raise InvalidArgument(f"target_recall must be in (0, 1], got {target_recall}")
                target_recall, funnel = None, None
                chosen = planner.Schedule((), 1.0, 0.0)  # reported: the exact scan ran
                ann = False
        if target_recall:
            if funnel:
                raise InvalidArgument("give either a funnel or target_recall, not both")
            if not 0 < float(target_recall) <= 1:
                raise InvalidArgument(f"target_recall must be in (0, 1], got {target_recall}")
            if int(dim or 0) not in (0, c.config.dim):
                raise InvalidArgument("target_recall plans funnels ranked at the full dim: leave dim at 0")
            curve = yield from calibration.curve(self, c, int(k))
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
        if f:
            plan = dataclasses.replace(plan, filter=f)
        if _record and queries.shape[1] == c.config.dim:
            rows = self._observed.setdefault(name, collections.deque(maxlen=1000))
            rows.extend(queries[:64].copy())  # a copy: rows must not pin a large request's array
        direct = ((yield from direct_clients(c, self._node_id)) if self.direct and queries.nbytes <= MAX_QUERY_BYTES
                  else None)
        if direct is not None and not any(direct):
            direct = None  # every shard is on another node: plain Ray, no empty socket round
        big = queries.nbytes > _INLINE_BYTES and not (direct and all(direct))
        q_arg = ray.put(queries) if big else queries
        if plan.stages and not plan.ann_candidates and search_rounds.in_rounds(self.funnel_in_rounds, c, queries, plan, direct):
            ids, keys, missing = yield from search_rounds.run_rounds(c, queries, q_arg, plan, direct,
                                                                allow_partial)
            payload = (yield from self._payload_of(c, ids.ravel(), fields)) if with_payload else None
            return ClusterSearchResult(ids, keys_to_scores(c.config.metric, queries, keys, plan.dim),
                                       missing, [list(s) for s in plan.stages] if chosen else [],
                                       chosen.recall if chosen else None, payload=payload)
        parts = yield Fanout([(h.search_keys, (q_arg, plan)) for h in c.shards],
                             partial_ok=allow_partial, deadline=True, direct=direct,
                             direct_args=[(queries, plan, None)] * len(c.shards), on_direct_down=functools.partial(forget_direct, c))
        missing = [i for i, p in enumerate(parts) if p is None]
        live = [p for p in parts if p is not None]
        if not live:
            raise Unavailable(f"no shard of collection {name!r} is reachable; retry later")
        res = merge_shard_results(c.config.metric, queries, plan, live)
        payload = (yield from self._payload_of(c, res.ids.ravel(), fields)) if with_payload else None
        return ClusterSearchResult(res.ids, res.scores, missing,
                                   [list(s) for s in plan.stages] if chosen else [],
                                   chosen.recall if chosen else None,
                                   (plan.ef, plan.ann_candidates) if chosen and chosen.ann else (),
                                   payload)

    @_both
    def calibrate(self, name: str, k: int = 10, queries=None) -> Plan:
        """Measure recall@k and cost of candidate funnels for a collection (planner.py).

        Sample: `queries` if given, else the query rows this coordinator served
        recently (at least planner.MIN_OBSERVED), else stored vectors.
        """
        c = yield from self._collection(name)
        curve = yield from calibration.calibrate(self, c, int(k), queries)
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
        handles = named_handles(self.namespace, config, missing_ok=True)
        c = ShardSet(config, [h if h is not None else MissingShard(shard_actor_name(config, i))
                                 for i, h in enumerate(handles)])
        if all(h is not None for h in handles):  # look a missing shard up again next time
            self._cache[name] = c
        return c

    def _declare_fields(self, c: ShardSet, payload: dict, rows: int):
        """Sub-plan: check a write's payload columns against the collection's fields;
        a field's first write declares its type in the catalog (shared by gateways).
        Returns the columns (a Ray job may pass rows as dicts, or value lists)."""
        payload = pl.columns_from_python(payload, rows)
        new = pl.check_columns(payload, rows, c.config.schema)
        if not new:
            return payload
        (cfg,) = yield Fanout([(self._catalog.add_payload_fields, (c.config.name, c.config.uid, new))])
        if cfg is None:
            raise NotFound(f"collection {c.config.name!r} does not exist")
        if isinstance(cfg, str):  # another gateway declared it first, differently
            raise InvalidArgument(cfg)
        c.config = CollectionConfig.from_dict(cfg)
        pl.check_columns(payload, rows, c.config.schema)
        return payload

    def _filter(self, c: ShardSet, filter):
        """Sub-plan: a filter checked against the collection's fields, as canonical JSON.
        A field unknown here may have been declared through another gateway: re-read once."""
        f = pl.from_mongo(filter)  # Ray jobs may pass the SDK's dict form
        try:
            return pl.filter_key(pl.check_filter(f, c.config.schema))
        except InvalidArgument:
            yield from self._refresh_config(c)
            return pl.filter_key(pl.check_filter(f, c.config.schema))

    @staticmethod
    def _fields(c: ShardSet, names) -> list[str] | None:
        if not names:
            return None
        unknown = [n for n in names if n not in c.config.schema]
        if unknown:
            raise InvalidArgument(f"unknown payload fields {unknown} (fields: {sorted(c.config.schema)})")
        return list(dict.fromkeys(names))

    def _payload_of(self, c: ShardSet, ids: np.ndarray, fields: list[str] | None):
        """Sub-plan: payload columns, one row per entry of `ids` (repeats allowed); an id
        no longer stored (deleted since the search) gets missing values."""
        uniq, inverse = np.unique(np.asarray(ids, dtype=np.uint64), return_inverse=True)
        parts = [(s, p) for s, p in enumerate(split_by_shard(uniq, c.config.shards)) if p.size]
        results = yield Fanout([(c.shards[s].get_payload, (uniq[p], fields)) for s, p in parts],
                               deadline=True)
        where = np.full(uniq.size, -1, dtype=np.int64)  # uniq row -> row of the concatenation
        at, columns = 0, []
        for (_, p), (found, cols) in zip(parts, results):
            where[p[found]] = at + np.arange(int(found.sum()))
            at += int(found.sum())
            columns.append((int(found.sum()), cols))
        merged = pl.concat_columns(columns, c.config.schema, fields)
        return pl.take_columns(merged, where[inverse])  # -1: a missing row

    def _refresh_config(self, c: ShardSet):
        """Sub-plan: re-read the collection's config (its index spec can change) from the catalog."""
        (cfg,) = yield Fanout([(self._catalog.get, (c.config.name,))])
        if cfg is not None and cfg.get("uid") == c.config.uid:
            c.config = CollectionConfig.from_dict(cfg)


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


Coordinator = add_async_twins(Coordinator)



def connect(namespace: str = DEFAULT_NAMESPACE, address: str | None = "auto") -> Coordinator:
    """A Coordinator attached to a running nestvec cluster's shards (for Ray jobs).

    Inside a Ray job (or any driver on a node of the cluster) `address="auto"`
    joins the cluster; no gRPC hop is involved.
    """
    if not ray.is_initialized():
        ray.init(address=address, namespace=namespace, log_to_driver=False)
    return Coordinator(namespace=namespace)
