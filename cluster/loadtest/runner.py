"""Run several generators at once and merge what they measured.

Locally, each generator is its own process (spawned: gRPC does not survive a
fork) with its own asyncio loop and gRPC channel, so one Python interpreter's
CPU is not the ceiling. With a Ray address, the generators are Ray actors
spread over the cluster's nodes instead. Either way the generators start at
one agreed wall-clock time, and the result merges their histograms exactly.
"""
from __future__ import annotations

import multiprocessing as mp
import queue as queue_mod
import sys
import time
import traceback
from dataclasses import replace
from typing import TextIO

from nestvec.cluster.loadtest.generator import Connection, Plan, run_generator
from nestvec.cluster.loadtest.histogram import Histogram
from nestvec.cluster.loadtest.results import SATURATED_CPU, LoadResult
from nestvec.cluster.loadtest.workload import QuerySet, Workload

START_DELAY = 0.3   # seconds between "all connected" and the common start


def _share(plan: Plan, workers: int, i: int) -> Plan:
    """Worker i's part of the plan: clients split as evenly as possible; rate split evenly."""
    if plan.mode == "closed":
        return replace(plan, concurrency=plan.concurrency // workers + (i < plan.concurrency % workers))
    return replace(plan, rate=plan.rate / workers,
                   concurrency=max(1, plan.concurrency // workers))


def _worker_main(i, conn, workload, queries, plan, msgs, go, start_wall) -> None:
    def ready() -> float:
        msgs.put(("ready", i, None))
        go.wait()
        return start_wall.value
    try:
        res = run_generator(conn, workload, queries, plan, i, ready,
                            on_progress=lambda p: msgs.put(("progress", i, p)))
        msgs.put(("result", i, res))
    except BaseException:
        msgs.put(("error", i, traceback.format_exc()))


class Progress:
    """The live line: calls/s, errors, p50/p99 so far, generator CPU."""

    def __init__(self, out: TextIO | None, every: float = 1.0):
        self.out, self.every = out, every
        self.hist = Histogram()
        self.calls = self.errors = 0
        self._interval_calls = 0
        self._cpu: dict[int, float] = {}
        self._t0 = self._last = time.monotonic()

    def start(self) -> None:
        """The generators start now: the clock and the first interval begin here."""
        self._t0 = self._last = time.monotonic()

    def add(self, worker: int, p: dict) -> None:
        self.hist.merge(Histogram.from_dict(p["hist"]))
        n = sum(p["codes"].values())
        self.calls += n
        self._interval_calls += n
        self.errors += n - p["codes"].get("OK", 0)
        if p["wall"] > 0:
            self._cpu[worker] = p["cpu"] / p["wall"]
        now = time.monotonic()
        if self.out is not None and now - self._last >= self.every:
            self.print(now)

    def print(self, now: float) -> None:
        rate = self._interval_calls / max(now - self._last, 1e-9)
        cpu = max(self._cpu.values(), default=0.0)
        p = lambda q: f"{self.hist.percentile(q) * 1e3:.1f}" if self.hist.count else "-"  # noqa: E731
        flag = "  GENERATOR SATURATED" if cpu >= SATURATED_CPU else ""
        print(f"[{now - self._t0:6.1f}s] {rate:8.0f} calls/s  errors {self.errors}  "
              f"p50 {p(50)} ms  p99 {p(99)} ms  (so far)  generator CPU {cpu:.0%}{flag}",
              file=self.out, flush=True)
        self._last, self._interval_calls = now, 0


def run_local(conn: Connection, workload: Workload, queries: QuerySet, plan: Plan,
              workers: int = 2, progress: TextIO | None = sys.stderr) -> LoadResult:
    """Run `workers` generator processes on this machine and merge their results."""
    workers = max(1, min(workers, plan.concurrency if plan.mode == "closed" else workers))
    ctx = mp.get_context("spawn")
    msgs, go, start_wall = ctx.Queue(), ctx.Event(), ctx.Value("d", 0.0)
    procs = [ctx.Process(target=_worker_main, daemon=True,
                         args=(i, conn, workload, queries, _share(plan, workers, i), msgs, go, start_wall))
             for i in range(workers)]
    for p in procs:
        p.start()
    live = Progress(progress, plan.progress_every)
    results: dict[int, dict] = {}
    ready = 0
    deadline = time.monotonic() + 120 + plan.duration * 2
    try:
        while len(results) < workers:
            try:
                kind, i, body = msgs.get(timeout=1.0)
            except queue_mod.Empty:
                if time.monotonic() > deadline:
                    raise TimeoutError("load generators did not finish in time")
                dead = [p for j, p in enumerate(procs) if not p.is_alive() and j not in results]
                if dead and msgs.empty():
                    time.sleep(0.5)
                    if msgs.empty():
                        raise RuntimeError(f"a load generator process died (exit code {dead[0].exitcode})")
                continue
            if kind == "ready":
                ready += 1
                if ready == workers:
                    start_wall.value = time.time() + START_DELAY
                    go.set()
                    live.start()
            elif kind == "progress":
                live.add(i, body)
            elif kind == "result":
                results[i] = body
            else:
                raise RuntimeError(f"load generator {i} failed:\n{body}")
    finally:
        go.set()
        for p in procs:
            p.join(timeout=10)
            if p.is_alive():
                p.kill()
    return LoadResult.merge([results[i] for i in sorted(results)], plan.mode, workload.k,
                            _settings(conn, workload, plan, workers, "processes"))


def run_ray(conn: Connection, workload: Workload, queries: QuerySet, plan: Plan, workers: int,
            ray_address: str, namespace: str | None = None, progress: TextIO | None = sys.stderr,
            cpus_per_generator: float = 1.0) -> LoadResult:
    """Run `workers` generators as Ray actors spread over the cluster's nodes."""
    import ray

    if not ray.is_initialized():
        ray.init(address=ray_address, namespace=namespace, log_to_driver=False)
    actor_cls = ray.remote(num_cpus=cpus_per_generator)(_GeneratorActor)
    actors = [actor_cls.options(scheduling_strategy="SPREAD").remote() for _ in range(workers)]
    nodes = ray.get([a.node.remote() for a in actors], timeout=300)
    # actors are up and importable: start together a little later (wall clock; nodes' clocks
    # must be NTP-synchronised, as for any multi-machine timing)
    start = time.time() + 2.0
    refs = [a.run.remote(conn, workload, queries, _share(plan, workers, i), i, start)
            for i, a in enumerate(actors)]
    t0 = time.monotonic()
    pending = list(refs)
    while pending:
        _, pending = ray.wait(pending, num_returns=len(pending), timeout=plan.progress_every)
        if progress is not None and pending:
            print(f"[{time.monotonic() - t0:6.1f}s] {len(refs) - len(pending)}/{len(refs)} "
                  f"Ray generators done", file=progress, flush=True)
    parts = ray.get(refs)
    for a in actors:
        ray.kill(a)
    settings = _settings(conn, workload, plan, workers, "Ray actors")
    settings["generator_nodes"] = sorted(set(nodes))
    return LoadResult.merge(parts, plan.mode, workload.k, settings)


class _GeneratorActor:
    """A generator in a Ray actor: one run, results returned as plain data."""

    def node(self) -> str:
        import ray
        return ray.get_runtime_context().get_node_id()

    def run(self, conn, workload, queries, plan, worker, start_wall) -> dict:
        return run_generator(conn, workload, queries, plan, worker, ready=lambda: start_wall)


def _settings(conn, workload, plan, workers, how) -> dict:
    return {"address": conn.address, "collection": workload.collection, "k": workload.k,
            "dim": workload.dim, "funnel": workload.funnel, "batch": workload.batch,
            "write_ratio": workload.write_ratio, "delete_ratio": workload.delete_ratio,
            "write_batch": workload.write_batch, "mode": plan.mode,
            "clients" if plan.mode == "closed" else "rate": (plan.concurrency if plan.mode == "closed"
                                                             else plan.rate),
            "max_in_flight": plan.concurrency if plan.mode == "open" else None,
            "duration_s": plan.duration, "generators": workers, "generator_kind": how}


def run(conn: Connection, workload: Workload, queries: QuerySet, plan: Plan, workers: int = 2,
        ray_address: str | None = None, progress: TextIO | None = sys.stderr,
        **kwargs) -> LoadResult:
    if ray_address:
        return run_ray(conn, workload, queries, plan, workers, ray_address, progress=progress, **kwargs)
    return run_local(conn, workload, queries, plan, workers, progress)
