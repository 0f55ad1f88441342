"""Coordinator: routes writes to shards by id, fans searches out, merges top-k.

A plain object, used two ways over the same code:
- inside the gateway, through the `a*` coroutines (`asearch`, `aupsert`, ...),
  which await Ray object refs and never block the event loop;
- from a Ray job, through `connect()` and the plain methods (`search`, ...),
  which call `ray.get`.

Shard and catalog actors are detached: a non-detached actor dies when the last
handle to it goes away, so evicting a cache entry in one gateway would kill a
shard every other gateway and Ray job still uses. They end when their
collection is dropped, or with the Ray cluster.

Each operation is written once, as a generator "plan" that yields the Ray refs
it needs and receives their results; `_run_sync` / `_run_async` drive it.
"""
from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass
from typing import Any, Callable, Generator

import numpy as np
import ray
from ray import exceptions as ray_errors

from nestvec.cluster import collection as col
from nestvec.cluster.catalog import CATALOG_ACTOR, CatalogActor
from nestvec.cluster.collection import CollectionConfig, SearchPlan
from nestvec.cluster.engine import SearchResult, keys_to_scores
from nestvec.cluster.routing import split_by_shard
from nestvec.cluster.shard_actor import ShardActor, shard_actor_name
from nestvec.cluster.topk import merge_topk, run_funnel
from nestvec.errors import (AlreadyExists, DeadlineExceeded, NestvecError, NotFound,
                            Unavailable)

DEFAULT_NAMESPACE = "nestvec"
_INLINE_BYTES = 100_000  # larger query batches go to the object store once, not once per shard

Plan = Generator[list, list, Any]


@dataclass
class GetResult:
    """Stored vectors of the found ids, in the order asked, and the ids not stored."""

    ids: np.ndarray          # found ids (uint64), in request order
    vectors: np.ndarray      # [len(ids), dim] float32
    missing_ids: np.ndarray  # requested ids that are not stored


@dataclass
class _Collection:
    config: CollectionConfig
    shards: list  # ShardActor handles, index = shard number


def _both(plan_method: Callable[..., Plan]):
    """Expose a plan as a sync method (for Ray jobs); `a<name>` is the async twin."""

    @functools.wraps(plan_method)
    def sync(self, *args, timeout: float | None = None, **kwargs):
        try:
            return _run_sync(plan_method(self, *args, **kwargs), timeout)
        except Unavailable:
            self._cache.clear()  # handles may be stale (a shard died, or a drop elsewhere)
            raise

    async def run_async(self, *args, timeout: float | None = None, **kwargs):
        try:
            return await _run_async(plan_method(self, *args, **kwargs), timeout)
        except Unavailable:
            self._cache.clear()
            raise

    sync._async = run_async  # collected into the class by _add_async_twins
    return sync


class Coordinator:
    """The cluster's front: catalog, routing, fan-out and merge. No data of its own."""

    def __init__(self, namespace: str = DEFAULT_NAMESPACE, default_shards: int = 1,
                 create_catalog: bool = False):
        self.namespace = namespace
        self.default_shards = default_shards
        if create_catalog:
            self._catalog = CatalogActor.options(
                name=CATALOG_ACTOR, namespace=namespace, get_if_exists=True,
                lifetime="detached").remote()
        else:
            try:
                self._catalog = ray.get_actor(CATALOG_ACTOR, namespace=namespace)
            except ValueError:
                raise Unavailable(
                    f"no nestvec cluster found in Ray namespace {namespace!r}: start one with "
                    "`nestvec serve` (or pass the namespace it uses)") from None
        self._cache: dict[str, _Collection] = {}

    # ----- catalog --------------------------------------------------------------
    @_both
    def create_collection(self, name: str, dim: int, metric: str = "cosine",
                          nested_dims=None, shards: int | None = None) -> Plan:
        cfg = CollectionConfig.create(name, dim, metric, nested_dims,
                                      shards or self.default_shards)
        (created,) = yield [self._catalog.create.remote(cfg.to_dict())]
        if not created:
            raise AlreadyExists(f"collection {name!r} already exists: drop it first or pick another name")
        handles = [
            ShardActor.options(name=shard_actor_name(name, i), namespace=self.namespace,
                               lifetime="detached")
            .remote(cfg.to_dict(), i)
            for i in range(cfg.shards)
        ]
        try:
            yield [h.ready.remote() for h in handles]
        except BaseException:
            self._kill(handles)
            yield [self._catalog.drop.remote(name)]
            raise
        self._cache[name] = _Collection(cfg, handles)
        return cfg

    @_both
    def drop_collection(self, name: str) -> Plan:
        (cfg,) = yield [self._catalog.drop.remote(name)]
        cached = self._cache.pop(name, None)
        if cfg is None:
            raise NotFound(f"collection {name!r} does not exist")
        self._kill(cached.shards if cached else self._named_handles(CollectionConfig.from_dict(cfg)))
        return None

    @_both
    def list_collections(self) -> Plan:
        (configs,) = yield [self._catalog.list.remote()]
        return [CollectionConfig.from_dict(c) for c in configs]

    @_both
    def describe_collection(self, name: str) -> Plan:
        """(config, per-shard stats dicts)."""
        c = yield from self._collection(name)
        stats = yield [h.stats.remote() for h in c.shards]
        return c.config, stats

    # ----- writes ---------------------------------------------------------------
    @_both
    def upsert(self, name: str, ids, vectors) -> Plan:
        """Insert or replace vectors by id; returns rows written."""
        c = yield from self._collection(name)
        vectors = col.check_vectors(vectors, c.config)
        ids = col.check_ids(ids, vectors.shape[0])
        parts = [(s, p) for s, p in enumerate(split_by_shard(ids, c.config.shards)) if p.size]
        counts = yield [c.shards[s].upsert.remote(ids[p], vectors[p]) for s, p in parts]
        return int(ids.size) if counts else 0

    @_both
    def delete(self, name: str, ids) -> Plan:
        """Delete by id; returns how many existed."""
        c = yield from self._collection(name)
        ids = col.check_ids(ids)
        parts = [(s, p) for s, p in enumerate(split_by_shard(ids, c.config.shards)) if p.size]
        counts = yield [c.shards[s].delete.remote(ids[p]) for s, p in parts]
        return int(sum(counts))

    # ----- reads ----------------------------------------------------------------
    @_both
    def get(self, name: str, ids, dim: int | None = None) -> Plan:
        c = yield from self._collection(name)
        ids = col.check_ids(ids)
        dim = int(dim or 0) or c.config.dim
        if not 1 <= dim <= c.config.dim:
            raise col.InvalidArgument(f"dim {dim} is outside 1..{c.config.dim} (0 means the full dim)")
        parts = [(s, p) for s, p in enumerate(split_by_shard(ids, c.config.shards)) if p.size]
        results = yield [c.shards[s].get.remote(ids[p], dim) for s, p in parts]
        found = np.zeros(ids.size, dtype=bool)
        vectors = np.zeros((ids.size, dim), dtype=np.float32)
        for (_, pos), (f, v) in zip(parts, results):
            found[pos[f]] = True
            vectors[pos[f]] = v
        return GetResult(ids[found], vectors[found], ids[~found])

    @_both
    def search(self, name: str, queries, k: int = 10, dim: int | None = None,
               funnel=None) -> Plan:
        """Exact top-k over every shard at prefix `dim` (full if None), optionally via a funnel."""
        c = yield from self._collection(name)
        queries = col.check_queries(queries, c.config)
        plan = col.plan_search(c.config, queries.shape[1], k, dim, funnel)
        q_arg = ray.put(queries) if queries.nbytes > _INLINE_BYTES else queries
        parts = yield [h.search_keys.remote(q_arg, plan) for h in c.shards]
        return merge_shard_results(c.config.metric, queries, plan, parts)

    # ----- internals ------------------------------------------------------------
    def _collection(self, name: str):
        """Sub-plan: the collection's config and shard handles (cached)."""
        c = self._cache.get(name)
        if c is not None:
            return c
        (cfg,) = yield [self._catalog.get.remote(name)]
        if cfg is None:
            raise NotFound(f"collection {name!r} does not exist: create it first "
                           "(or list collections to check the name)")
        config = CollectionConfig.from_dict(cfg)
        c = _Collection(config, self._named_handles(config))
        self._cache[name] = c
        return c

    def _named_handles(self, cfg: CollectionConfig) -> list:
        try:
            return [ray.get_actor(shard_actor_name(cfg.name, i), namespace=self.namespace)
                    for i in range(cfg.shards)]
        except ValueError:
            raise Unavailable(f"a shard of collection {cfg.name!r} is not running") from None

    def forget(self, name: str) -> None:
        """Drop cached handles (after a shard died or the collection was dropped elsewhere)."""
        self._cache.pop(name, None)

    @staticmethod
    def _kill(handles: list) -> None:
        for h in handles:
            try:
                ray.kill(h, no_restart=True)
            except Exception:  # already gone is fine: we wanted it gone
                pass


def merge_shard_results(metric: str, queries: np.ndarray, plan: SearchPlan,
                        parts: list[tuple[np.ndarray, np.ndarray]]) -> SearchResult:
    """Merge per-shard (ids, keys) into the global answer (the funnel runs here on candidates)."""
    ids = np.concatenate([p[0] for p in parts], axis=1)
    keys = np.concatenate([p[1] for p in parts], axis=1)
    if plan.stages:
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


def _translate(err: BaseException) -> BaseException:
    """Ray's errors as nestvec errors; an engine's own error passes through unwrapped."""
    if isinstance(err, ray_errors.RayTaskError) and isinstance(err.cause, NestvecError):
        return err.cause
    if isinstance(err, (ray_errors.RayActorError, ray_errors.ActorUnavailableError)):
        return Unavailable(f"a shard is unavailable: {err.__class__.__name__}; retry later")
    if isinstance(err, (ray_errors.GetTimeoutError, asyncio.TimeoutError, TimeoutError)):
        return DeadlineExceeded("the request's deadline passed before the shards answered")
    return err


def _remaining(deadline: float | None) -> float | None:
    return None if deadline is None else max(0.0, deadline - time.monotonic())


def _run_sync(plan: Plan, timeout: float | None) -> Any:
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        refs = next(plan)
        while True:
            try:
                results = ray.get(refs, timeout=_remaining(deadline)) if refs else []
            except Exception as err:  # hand the error to the plan (it may clean up)
                refs = plan.throw(_translate(err))
                continue
            refs = plan.send(results)
    except StopIteration as stop:
        return stop.value


async def _run_async(plan: Plan, timeout: float | None) -> Any:
    deadline = None if timeout is None else time.monotonic() + timeout
    try:
        refs = next(plan)
        while True:
            try:
                results = (list(await asyncio.wait_for(asyncio.gather(*refs), _remaining(deadline)))
                           if refs else [])
            except Exception as err:
                refs = plan.throw(_translate(err))
                continue
            refs = plan.send(results)
    except StopIteration as stop:
        return stop.value


def connect(namespace: str = DEFAULT_NAMESPACE, address: str | None = "auto") -> Coordinator:
    """A Coordinator attached to a running nestvec cluster's shards (for Ray jobs).

    Inside a Ray job (or any driver on a node of the cluster) `address="auto"`
    joins the cluster; no gRPC hop is involved.
    """
    if not ray.is_initialized():
        ray.init(address=address, namespace=namespace, log_to_driver=False)
    return Coordinator(namespace=namespace)
