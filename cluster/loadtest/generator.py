"""One load generator: an asyncio loop driving a nestvec server over grpc.aio.

Two ways to drive it:
- closed loop: `concurrency` clients, each sends its next call when the last
  one returns (measures what N busy clients see; hides queueing by design);
- open loop: calls arrive as a Poisson process at `rate` per second, whatever
  the server is doing. Latency is measured from each call's *intended* send
  time, so when the server (or this generator) falls behind, the wait counts:
  no coordinated omission. `concurrency` caps calls in flight; a call waiting
  for a slot is still timed from its intended time.

The generator keeps latency histograms (per method, and per time window for
the over-time plot), status codes, recall hits against ground truth, a ledger
of acknowledged writes, and its own CPU use.
"""
from __future__ import annotations

import asyncio
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from typing import Callable

import grpc
import numpy as np

from nestvec import wire
from nestvec.client._channel import auth_metadata, make_channel
from nestvec.cluster.loadtest.histogram import Histogram
from nestvec.cluster.loadtest.workload import QuerySet, Workload, WriteVectors, recall_hits, worker_id_range
from nestvec.v1 import nestvec_pb2 as pb
from nestvec.v1 import nestvec_pb2_grpc as pb_grpc

LATE_SEND = 0.010   # an open-loop call sent this long after its intended time counts as late


@dataclass
class Plan:
    """How to drive: mode, size, and how long."""
    mode: str = "closed"              # "closed" or "open"
    concurrency: int = 8              # closed: clients; open: most calls in flight
    rate: float = 100.0               # open: calls per second (this generator's share)
    duration: float = 10.0            # seconds
    window: float = 1.0               # seconds per time-series window
    progress_every: float = 1.0       # seconds between progress callbacks
    channels: int = 1                 # gRPC connections (each its own HTTP/2 connection)
    trace: bool = False               # keep every call's (intended time, latency, method, code)

    def __post_init__(self):
        if self.mode not in ("closed", "open"):
            raise ValueError(f"mode must be 'closed' or 'open', got {self.mode!r}")
        if self.concurrency < 1 or self.duration <= 0 or self.channels < 1:
            raise ValueError("concurrency and channels must be >= 1 and duration > 0")
        if self.mode == "open" and not self.rate > 0:
            raise ValueError("open loop needs a rate > 0")


@dataclass
class Connection:
    address: str
    api_key: str | None = None
    root_certificates: bytes | None = None


@dataclass
class Ledger:
    """Writes this generator made, by what the server said about them."""
    acked_upserts: list = field(default_factory=list)      # arrays of ids the server acknowledged
    acked_deletes: list = field(default_factory=list)
    uncertain_upserts: list = field(default_factory=list)  # failed calls: may or may not have applied
    uncertain_deletes: list = field(default_factory=list)
    delete_found_fewer: int = 0   # acknowledged deletes of acknowledged ids the server did not have

    def as_arrays(self) -> dict:
        cat = lambda xs: np.concatenate(xs).astype(np.uint64) if xs else np.zeros(0, np.uint64)  # noqa: E731
        return {"acked_upserts": cat(self.acked_upserts), "acked_deletes": cat(self.acked_deletes),
                "uncertain_upserts": cat(self.uncertain_upserts),
                "uncertain_deletes": cat(self.uncertain_deletes),
                "delete_found_fewer": self.delete_found_fewer}


class Generator:
    def __init__(self, conn: Connection, workload: Workload, queries: QuerySet, plan: Plan,
                 worker: int = 0, on_progress: Callable[[dict], None] | None = None):
        self.conn, self.w, self.q, self.plan = conn, workload, queries, plan
        self.worker = worker
        self.on_progress = on_progress
        self.rng = np.random.default_rng((workload.seed, worker))
        self.md = auth_metadata(conn.api_key)
        self.hist: dict[str, Histogram] = defaultdict(Histogram)        # method -> all OK latencies
        self.windows: dict[tuple[str, int], Histogram] = defaultdict(Histogram)
        self.codes: Counter = Counter()                                  # (method, code) -> calls
        self.recall_hits = 0
        self.recall_rows = 0
        self.query_uses = np.zeros(queries.queries.shape[0], dtype=np.int64)
        self.ledger = Ledger()
        self.trace: list[tuple[float, float, str, str]] = []
        self._live: list[int] = []          # acknowledged, not yet deleted ids (delete candidates)
        self._next_id = worker_id_range(workload, worker)
        self._vectors = WriteVectors(queries.queries.shape[1], workload.seed)
        self._progress = Histogram()
        self._progress_codes: Counter = Counter()
        self._late = 0
        self._max_send_lag = 0.0
        self._in_flight = 0
        self._search_cache: dict[int, pb.SearchRequest] = {}

    # ----- requests -----------------------------------------------------------------
    def _search_request(self):
        rows = self.rng.integers(0, self.q.queries.shape[0], size=self.w.batch)
        if self.w.batch == 1 and int(rows[0]) in self._search_cache:
            return rows, self._search_cache[int(rows[0])]
        req = pb.SearchRequest(collection=self.w.collection, k=self.w.k, dim=self.w.dim,
                               queries=wire.encode_matrix(self.q.queries[rows]))
        for d, c in self.w.funnel:
            req.funnel.add(dim=d, candidates=c)
        if self.w.batch == 1:
            self._search_cache[int(rows[0])] = req
        return rows, req

    def _pick_op(self) -> str:
        if self.w.write_ratio and self.rng.random() < self.w.write_ratio:
            if (self.w.delete_ratio and len(self._live) >= self.w.write_batch
                    and self.rng.random() < self.w.delete_ratio):
                return "Delete"
            return "Upsert"
        return "Search"

    async def _call(self, stub, op: str):
        """Send one call; returns (status code name, what to do once timed)."""
        if op == "Search":
            rows, req = self._search_request()
            try:
                resp = await stub.Search(req, timeout=self.w.timeout, metadata=self.md)
            except grpc.aio.AioRpcError as err:
                return err.code().name
            self.query_uses[rows] += 1
            if self.q.gt_ids is not None:
                got = wire.decode_ids(resp.ids, (resp.queries, resp.k))
                self.recall_hits += int(recall_hits(got, self.q.gt_ids[rows], self.w.k).sum())
                self.recall_rows += len(rows)
            return "OK"
        if op == "Upsert":
            n = self.w.write_batch
            ids = np.arange(self._next_id, self._next_id + n, dtype=np.uint64)
            self._next_id += n
            req = pb.UpsertRequest(collection=self.w.collection, ids=ids.tolist(),
                                   vectors=wire.encode_matrix(self._vectors(ids)))
            try:
                await stub.Upsert(req, timeout=self.w.timeout, metadata=self.md)
            except grpc.aio.AioRpcError as err:
                self.ledger.uncertain_upserts.append(ids)
                return err.code().name
            self.ledger.acked_upserts.append(ids)
            self._live.extend(ids.tolist())
            return "OK"
        # Delete: take ids out of the live set first, so no two calls delete the same id
        ids = np.array([self._pop_live() for _ in range(self.w.write_batch)], dtype=np.uint64)
        try:
            resp = await stub.Delete(pb.DeleteRequest(collection=self.w.collection, ids=ids.tolist()),
                                     timeout=self.w.timeout, metadata=self.md)
        except grpc.aio.AioRpcError as err:
            self.ledger.uncertain_deletes.append(ids)
            return err.code().name
        self.ledger.acked_deletes.append(ids)
        self.ledger.delete_found_fewer += len(ids) - resp.deleted
        return "OK"

    def _pop_live(self) -> int:
        i = int(self.rng.integers(0, len(self._live)))
        self._live[i], self._live[-1] = self._live[-1], self._live[i]
        return self._live.pop()

    def _record(self, op: str, code: str, intended: float, latency: float) -> None:
        self.codes[(op, code)] += 1
        self._progress_codes[code] += 1
        if code == "OK":
            self.hist[op].record(latency)
            self.windows[(op, int((intended - self._start) / self.plan.window))].record(latency)
            self._progress.record(latency)
        if self.plan.trace:
            self.trace.append((intended, latency, op, code))

    async def _timed(self, stub, intended: float) -> None:
        op = self._pick_op()
        self._in_flight += 1
        try:
            code = await self._call(stub, op)
        except Exception as err:  # a generator bug must show up in the report, not vanish
            code = f"CLIENT_{type(err).__name__}"
        finally:
            self._in_flight -= 1
        self._record(op, code, intended, time.perf_counter() - intended)

    # ----- the two loops ------------------------------------------------------------
    async def _closed_client(self, stub) -> None:
        while time.perf_counter() < self._end:
            await self._timed(stub, time.perf_counter())

    async def _open_arrivals(self, stubs) -> None:
        slots = asyncio.Semaphore(self.plan.concurrency)
        tasks: set[asyncio.Task] = set()
        t, i = self._start, 0
        while True:
            t += self.rng.exponential(1.0 / self.plan.rate)
            if t >= self._end:
                break
            delay = t - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            await slots.acquire()   # waiting here still counts: timing starts at t
            lag = time.perf_counter() - t
            self._max_send_lag = max(self._max_send_lag, lag)
            self._late += lag > LATE_SEND
            task = asyncio.create_task(self._timed(stubs[i % len(stubs)], t))
            i += 1
            tasks.add(task)
            task.add_done_callback(lambda tk: (tasks.discard(tk), slots.release()))
        if tasks:
            await asyncio.wait(tasks)

    async def _progress_loop(self) -> None:
        last_t, last_cpu = time.perf_counter(), time.process_time()
        while True:
            await asyncio.sleep(self.plan.progress_every)
            now, cpu = time.perf_counter(), time.process_time()
            self._emit_progress(now - last_t, cpu - last_cpu)
            last_t, last_cpu = now, cpu

    def _emit_progress(self, wall: float, cpu: float) -> None:
        if self.on_progress is not None:
            self.on_progress({"worker": self.worker, "hist": self._progress.to_dict(),
                              "codes": dict(self._progress_codes), "wall": wall, "cpu": cpu,
                              "in_flight": self._in_flight})
        self._progress, self._progress_codes = Histogram(), Counter()

    async def run(self, ready: Callable[[], float] | None = None) -> dict:
        """Connect, then run the plan. Returns the result.

        `ready` (blocking) is called once connected and returns the wall-clock
        time (time.time()) at which all generators start together.
        """
        opts = [("grpc.use_local_subchannel_pool", 1)]  # one connection per channel, really
        channels = [make_channel(self.conn.address, aio=True, tls=False,
                                 root_certificates=self.conn.root_certificates,
                                 client_certificate=None, client_key=None, options=opts)
                    for _ in range(self.plan.channels)]
        try:
            for ch in channels:
                await asyncio.wait_for(ch.channel_ready(), timeout=30)
            stubs = [pb_grpc.VectorSearchStub(ch) for ch in channels]
            if ready is not None:
                start_wall = ready()
                await asyncio.sleep(max(0.0, start_wall - time.time()))
            self._start = time.perf_counter()
            self._end = self._start + self.plan.duration
            cpu0 = time.process_time()
            progress = asyncio.create_task(self._progress_loop())
            if self.plan.mode == "closed":
                await asyncio.gather(*(self._closed_client(stubs[i % len(stubs)])
                                       for i in range(self.plan.concurrency)))
            else:
                await self._open_arrivals(stubs)
            progress.cancel()
            wall = time.perf_counter() - self._start
            cpu = time.process_time() - cpu0
            self._emit_progress(0.0, 0.0)  # the last partial interval
        finally:
            for ch in channels:
                await ch.close()
        return self._result(wall, cpu)

    def _result(self, wall: float, cpu: float) -> dict:
        return {
            "worker": self.worker, "wall": wall, "cpu": cpu, "start": self._start,
            "window": self.plan.window,
            "hist": {op: h.to_dict() for op, h in self.hist.items()},
            "windows": [[op, i, h.to_dict()] for (op, i), h in sorted(self.windows.items())],
            "codes": [[op, code, n] for (op, code), n in self.codes.items()],
            "recall_hits": self.recall_hits, "recall_rows": self.recall_rows,
            "query_uses": self.query_uses, "ledger": self.ledger.as_arrays(),
            "late_sends": self._late, "max_send_lag": self._max_send_lag,
            "trace": self.trace,
        }


def run_generator(conn: Connection, workload: Workload, queries: QuerySet, plan: Plan,
                  worker: int = 0, ready: Callable[[], float] | None = None,
                  on_progress: Callable[[dict], None] | None = None) -> dict:
    """Run one generator on a fresh event loop (a worker process or Ray actor calls this)."""
    gen = Generator(conn, workload, queries, plan, worker, on_progress)
    return asyncio.run(gen.run(ready))
