"""Helpers shared by the benchmarks: data, ground truth, timing, tables, results files.

Import after `_threads.pin_env(...)`: this module imports numpy.
"""
from __future__ import annotations

import datetime as _dt
import json
import os
import pathlib
import platform
import socket
import sys
import time
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "corpusA" / "embeddings.npz"
RESULTS = REPO / "bench" / "results"


# ----- data ---------------------------------------------------------------------
@dataclass
class Corpus:
    docs: np.ndarray     # [n, dim] float32
    queries: np.ndarray  # [nq, dim] float32
    gt_ids: np.ndarray   # [nq, >=10] exact full-dim cosine top rows (score desc, ties by id)
    gt_source: str


def load_corpus(path: str | os.PathLike, docs: int | None = None, queries: int | None = None) -> Corpus:
    """Vectors to benchmark on, as float32.

    An .npz with `docs` and `queries` arrays (corpusA's layout; its `gt_ids` are
    used when the whole file is), or a plain [n, dim] .npy of your own: then 1,000
    rows (or `queries`) are held out as queries, seeded. Ground truth that the
    file does not give is computed exactly with numpy.
    """
    path = pathlib.Path(path)
    if not path.exists():
        sys.exit(f"data not found: {path} (see ../shared/data/README.md, or pass --data)")
    if path.suffix == ".npy":
        allv = np.load(path)
        held = np.random.default_rng(0).permutation(allv.shape[0])
        n_q = min(queries or 1000, allv.shape[0] // 10)
        z = {"docs": allv[np.sort(held[n_q:])], "queries": allv[held[:n_q]]}
        files: list[str] = []
    else:
        z = np.load(path)
        files = z.files
    d, q = z["docs"], z["queries"]
    if queries:
        q = q[:queries]
    full = docs is None or docs >= d.shape[0]
    if not full:
        d = d[:docs]
    d = d.astype(np.float32)
    q = q.astype(np.float32)
    if full and "gt_ids" in files:
        gt, src = z["gt_ids"][: q.shape[0]], "gt_ids from the data file"
    else:
        gt, src = exact_cosine_topk(d, q, 100), f"recomputed exactly (numpy) on the first {d.shape[0]} docs"
    return Corpus(d, q, gt, src)


def exact_cosine_topk(docs: np.ndarray, queries: np.ndarray, k: int, chunk: int = 100) -> np.ndarray:
    """Brute-force full-dim cosine top-k rows, score desc then row asc (float64 scores)."""
    dn = docs / np.linalg.norm(docs, axis=1, keepdims=True)
    out = np.empty((queries.shape[0], k), dtype=np.int64)
    rows = np.arange(docs.shape[0])
    for s in range(0, queries.shape[0], chunk):
        q = queries[s: s + chunk].astype(np.float64)
        q /= np.linalg.norm(q, axis=1, keepdims=True)
        sc = q @ dn.T.astype(np.float64)
        for i in range(sc.shape[0]):  # benchmark set-up, not a hot path
            out[s + i] = np.lexsort((rows, -sc[i]))[:k]
    return out


def recall(found: np.ndarray, truth: np.ndarray, k: int) -> float:
    """Mean |found[:, :k] ∩ truth[:, :k]| / k over queries."""
    f = np.asarray(found)[:, :k].astype(np.int64)
    t = np.asarray(truth)[:, :k].astype(np.int64)
    hits = (f[:, :, None] == t[:, None, :]).any(axis=2).sum(axis=1)
    return float(hits.mean() / k)


def batches(queries: np.ndarray, batch: int) -> list[np.ndarray]:
    """The query set cut into contiguous batches of `batch` rows (cycled by the timers)."""
    n = (queries.shape[0] // batch) * batch or batch
    q = queries if queries.shape[0] >= n else np.resize(queries, (n, queries.shape[1]))
    return [q[s: s + batch].copy() for s in range(0, n, batch)]


# ----- timing -------------------------------------------------------------------
@dataclass
class Timing:
    batch: int
    times: list[float] = field(default_factory=list)  # seconds per call

    @property
    def calls(self) -> int:
        return len(self.times)

    def pct(self, p: float) -> float:
        return float(np.percentile(self.times, p)) if self.times else float("nan")

    @property
    def qps(self) -> float:
        """Queries/s from the median call time (robust to bursts of other load)."""
        return self.batch / self.pct(50)

    @property
    def qps_mean(self) -> float:
        """Queries/s from total time (plain throughput; more exposed to noise)."""
        return self.batch * self.calls / sum(self.times)

    def summary(self) -> dict:
        return {"batch": self.batch, "calls": self.calls, "queries": self.calls * self.batch,
                "seconds": round(sum(self.times), 4), "qps": round(self.qps, 2),
                "qps_mean": round(self.qps_mean, 2), "p50_ms": round(self.pct(50) * 1e3, 4),
                "p99_ms": round(self.pct(99) * 1e3, 4)}


def interleaved(fns: dict[str, Callable[[np.ndarray], object]], inputs: list[np.ndarray],
                budget_s: float, slice_s: float = 0.25, warmup_s: float = 0.3,
                min_calls: int = 5) -> dict[str, Timing]:
    """Time each function for about `budget_s` seconds of its own calls, interleaved.

    The functions take turns in slices of about `slice_s` (the order flips every
    round), so a burst of load from other processes hits all of them alike. Each
    is warmed up first. Inputs are cycled; every function sees the same sequence.
    """
    batch = inputs[0].shape[0]
    for f in fns.values():  # warm-up: caches, page faults, BLAS thread start
        t_end = time.perf_counter() + warmup_s
        i = 0
        while i < 2 or time.perf_counter() < t_end:
            f(inputs[i % len(inputs)])
            i += 1
    res = {name: Timing(batch) for name in fns}
    pos = {name: 0 for name in fns}
    names = list(fns)
    rnd = 0
    while any(sum(res[n].times) < budget_s or res[n].calls < min_calls for n in names):
        for name in (names if rnd % 2 == 0 else names[::-1]):
            r = res[name]
            if sum(r.times) >= budget_s and r.calls >= min_calls:
                continue
            f, t_end = fns[name], time.perf_counter() + slice_s
            while True:
                x = inputs[pos[name] % len(inputs)]
                t0 = time.perf_counter()
                f(x)
                r.times.append(time.perf_counter() - t0)
                pos[name] += 1
                if time.perf_counter() >= t_end:
                    break
        rnd += 1
    return res


def median_time(f: Callable[[], object], budget_s: float = 0.4, min_calls: int = 5) -> float:
    """Median seconds per call of `f` over about `budget_s` (after one warm-up call)."""
    f()
    times: list[float] = []
    t_end = time.perf_counter() + budget_s
    while len(times) < min_calls or time.perf_counter() < t_end:
        t0 = time.perf_counter()
        f()
        times.append(time.perf_counter() - t0)
    return float(np.median(times))


class OtherLoad:
    """How contended the CPUs were while a block ran (Linux /proc; None elsewhere).

    `value`: CPU time other processes got, in cores (machine busy time minus this
    process's own, over wall time). `stall`: the fraction of wall time during
    which some runnable task waited for a CPU (/proc/pressure/cpu "some"): near 0
    on a quiet machine, high when other work competes for the cores.
    """

    def __enter__(self) -> "OtherLoad":
        self.value = self.stall = None
        self._start = self._sample()
        return self

    def __exit__(self, *exc) -> None:
        end = self._sample()
        if self._start and end:
            wall = end[0] - self._start[0]
            busy = (end[1] - self._start[1]) / _HZ
            own = end[2] - self._start[2]
            if wall > 0:
                self.value = round(max(0.0, (busy - own) / wall), 2)
                if end[3] is not None and self._start[3] is not None:
                    self.stall = round((end[3] - self._start[3]) / 1e6 / wall, 3)

    @staticmethod
    def _sample():
        try:
            with open("/proc/stat") as f:
                cpu = [int(x) for x in f.readline().split()[1:]]
        except (OSError, ValueError):
            return None
        idle = cpu[3] + (cpu[4] if len(cpu) > 4 else 0)
        t = os.times()
        try:
            with open("/proc/pressure/cpu") as f:
                stall = int(f.readline().rsplit("total=", 1)[1])  # microseconds
        except (OSError, ValueError, IndexError):
            stall = None
        return time.perf_counter(), sum(cpu[:8]) - idle, t.user + t.system, stall


_HZ = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100


# ----- reporting ----------------------------------------------------------------
def machine() -> dict:
    load = os.getloadavg() if hasattr(os, "getloadavg") else None
    cpu = ""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    import numpy
    info = {"cpu": cpu, "cores": os.cpu_count(), "python": platform.python_version(),
            "numpy": numpy.__version__, "platform": platform.platform(),
            "loadavg_at_start": [round(x, 2) for x in load] if load else None}
    try:
        import faiss
        info["faiss"] = faiss.__version__
    except ImportError:
        pass
    info["git"] = git_state()
    return info


def git_state() -> str | None:
    """The commit measured, with '+dirty' when the product's code has uncommitted changes."""
    import subprocess
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                              text=True, timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "cluster", "client", "protos"],
                               cwd=REPO, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return None
    return (head + ("+dirty" if dirty else "")) or None


def markdown_table(header: list[str], rows: list[list]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    out += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(out)


def write_results(name: str, payload: dict) -> pathlib.Path:
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": name, "when": _dt.datetime.now().isoformat(timespec="seconds"), **payload}
    path = RESULTS / f"{name}.json"
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(payload, indent=1) + "\n")
    tmp.replace(path)
    return path


def log(msg: str) -> None:
    print(msg, flush=True)


def free_port() -> int:
    """A free TCP port on loopback (for servers a benchmark starts)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
