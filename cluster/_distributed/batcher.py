"""Search micro-batching in the gateway: many small concurrent searches, one shard call.

Each shard call has a fixed cost (a Ray task, a BLAS call, a top-k pass), so
200 single-query searches cost far more as 200 calls than as one call of 200
rows. Searches with the same shape (collection, k, dim, funnel, partial,
query width) that arrive while another search is in flight are stacked for
up to `window` seconds (or `max_rows` rows), searched together, and each caller
gets exactly its own rows back.

At low load nothing waits: a search that arrives when none is in flight goes
straight out, so batching adds latency only when there is a queue to batch.
"""
from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field

import numpy as np

from nestvec.cluster._distributed.coordinator import ClusterSearchResult, Coordinator
from nestvec.errors import InvalidArgument, ResourceExhausted


@dataclass
class _Member:
    queries: np.ndarray
    future: asyncio.Future
    deadline: float | None  # monotonic


@dataclass
class _Batch:
    members: list[_Member] = field(default_factory=list)
    rows: int = 0
    timer: asyncio.TimerHandle | None = None


class SearchBatcher:
    def __init__(self, coordinator: Coordinator, window: float = 0.001, max_rows: int = 256,
                 metrics=None, ann_max_rows: int = 32):
        self.coord = coordinator
        self.window = window
        self.max_rows = max_rows
        # ANN batches go out smaller: a scan's cost is mostly one pass over the shard's
        # rows whatever the batch (bigger amortises more), a graph walk's is per query,
        # and a shard runs several ANN batches side by side (shard_actor.py), so a few
        # smaller batches in flight keep its cores busy where one big batch leaves them
        # idle while its callers come back (docs/ann.md, "Concurrent callers").
        self.ann_max_rows = ann_max_rows
        self.metrics = metrics
        self._pending: dict[tuple, _Batch] = {}
        self._in_flight = 0
        # The loop keeps only weak references to tasks: a batch task waiting on a
        # socket is otherwise garbage (its stream reader is held by that task alone)
        # and is collected mid-search, leaving its callers waiting forever.
        self._tasks: set[asyncio.Task] = set()

    async def search(self, name: str, queries: np.ndarray, k: int, dim: int, funnel: list,
                     allow_partial: bool, timeout: float | None,
                     target_recall: float | None = None, ann: tuple = (), filter=None,
                     with_payload: bool = False, payload_fields=None) -> ClusterSearchResult:
        """`ann`: () for a scan, else (ann, ef, candidates) (0 = default) for an ANN search.
        `filter`: the engine's nested-list form (payload.py), or None."""
        if target_recall or with_payload:
            # Planned searches go straight through (they may calibrate first), and so do
            # searches returning payloads (fetched for their own results).
            ann_args = dict(ann=ann[0], ef=ann[1], candidates=ann[2]) if ann else {}
            return await self.coord.asearch(name, queries, k, dim, funnel, allow_partial,
                                            target_recall, timeout=timeout, filter=filter,
                                            with_payload=with_payload, payload_fields=payload_fields,
                                            **ann_args)
        key = (name, int(k), int(dim or 0), tuple(tuple(s) for s in funnel), bool(allow_partial),
               queries.ndim == 2 and queries.shape[1], tuple(ann),
               None if filter is None else json.dumps(filter, sort_keys=True))
        max_rows = self.ann_max_rows if ann and ann[0] else self.max_rows
        if self.window <= 0 or queries.ndim != 2 or queries.shape[0] >= max_rows or (
                self._in_flight == 0 and key not in self._pending):
            return await self._run(key, queries, timeout)
        loop = asyncio.get_running_loop()
        batch = self._pending.get(key)
        if batch is None:
            batch = self._pending[key] = _Batch()
            batch.timer = loop.call_later(self.window, self._flush, key)
        member = _Member(queries, loop.create_future(),
                         None if timeout is None else time.monotonic() + timeout)
        batch.members.append(member)
        batch.rows += queries.shape[0]
        if batch.rows >= max_rows:
            batch.timer.cancel()
            self._flush(key)
        return await member.future

    async def _run(self, key: tuple, queries: np.ndarray, timeout: float | None):
        name, k, dim, funnel, partial, _, ann, filter_json = key
        ann_args = dict(ann=ann[0], ef=ann[1], candidates=ann[2]) if ann else {}
        if filter_json is not None:
            ann_args["filter"] = json.loads(filter_json)
        self._in_flight += 1
        self._gauge()
        try:
            return await self.coord.asearch(name, queries, k, dim, [list(s) for s in funnel],
                                            partial, timeout=timeout, **ann_args)
        finally:
            self._in_flight -= 1
            self._gauge()

    def _gauge(self) -> None:
        if self.metrics is not None:
            self.metrics.shard_searches_in_flight.set(self._in_flight)

    def _flush(self, key: tuple) -> None:
        batch = self._pending.pop(key, None)
        if batch is not None:
            task = asyncio.get_running_loop().create_task(self._search_batch(key, batch.members))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _search_batch(self, key: tuple, members: list[_Member]) -> None:
        if self.metrics is not None:
            self.metrics.search_batches.inc()
            rows = sum(m.queries.shape[0] for m in members)
            self.metrics.batched_queries.inc(rows)
            self.metrics.batch_rows.observe(rows)
        now = time.monotonic()
        ends = [m.deadline for m in members]
        timeout = None if None in ends else max(0.0, max(ends) - now)
        try:
            res = await self._run(key, np.concatenate([m.queries for m in members]), timeout)
        except (InvalidArgument, ResourceExhausted):
            # One member's bad or oversized input must not fail the others: run each alone.
            await asyncio.gather(*[self._alone(key, m) for m in members])
            return
        except Exception as err:  # the shards failed: every member sees it
            for m in members:
                if not m.future.done():
                    m.future.set_exception(err)
            return
        start = 0
        for m in members:
            end = start + m.queries.shape[0]
            if not m.future.done():
                m.future.set_result(ClusterSearchResult(res.ids[start:end], res.scores[start:end],
                                                        list(res.missing_shards)))
            start = end

    async def _alone(self, key: tuple, m: _Member) -> None:
        timeout = None if m.deadline is None else max(0.0, m.deadline - time.monotonic())
        try:
            result = await self._run(key, m.queries, timeout)
        except Exception as err:
            if not m.future.done():
                m.future.set_exception(err)
            return
        if not m.future.done():
            m.future.set_result(result)
