"""Search a batch on several cores: parts on Python threads, one BLAS thread each.

A batch search is a matrix product (BLAS, multi-threaded) followed by work numpy
runs on one core: top-k selection, gathering candidates' rows, re-scoring. With
BLAS at two threads the second core idles through the rest, and while another
process holds a core OpenBLAS's threads wait on each other. Running the parts
on their own Python threads instead (numpy releases the GIL in all of these
kernels) with BLAS held to one thread in each keeps every core busy throughout
and never runs more math threads than `threads`. The engine splits a scan by row
ranges (each part streams its own rows once: a split by queries would stream
the whole matrix once per part) and a re-rank by queries. Measured numbers:
docs/benchmarks.md.

The thread budget is per process (BLAS pools are), set by whoever owns the
process: `set_threads` (the shard actor's --shard-threads, the benchmarks).
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor

# Smaller batches are not split: a part of a few queries does not amortise the
# hand-off (~50 us), and batch 1 must not pay for it at all.
MIN_BATCH = 16

_threads = 1
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_local_setters: list | None = None  # per BLAS library: set the calling thread's count
_lock = threading.Lock()
_local = threading.local()


def set_threads(n: int) -> None:
    """Cores one search may use; 1 (the default) runs every search on the caller's thread."""
    global _threads
    _threads = max(1, int(n))


def ways(batch: int) -> int:
    """How many parts a search of `batch` queries runs in (1: on the caller's thread)."""
    if _threads < 2 or batch < MIN_BATCH or getattr(_local, "inside", False):
        return 1  # inside a part: never nest (the pool's threads are all taken)
    return _threads if _blas_setters() else 1


def run(fn, items: list) -> list:
    """[fn(item) for item in items], the items on the pool's threads and the caller's."""
    with _lock:
        global _pool, _pool_size
        if _pool is None or _pool_size < _threads - 1:
            _pool = ThreadPoolExecutor(max_workers=_threads - 1, thread_name_prefix="nestvec-search")
            _pool_size = _threads - 1
        pool = _pool
    futures = [pool.submit(_part, fn, item) for item in items[1:]]
    first = _part(fn, items[0])
    return [first] + [f.result() for f in futures]


def _part(fn, item):
    # One BLAS thread for this thread only, restored after: other threads' searches
    # (and this thread's own later calls) keep the process's count.
    setters = _blas_setters()
    before = [set_local(1) for set_local in setters]
    _local.inside = True
    try:
        return fn(item)
    finally:
        _local.inside = False
        for set_local, n in zip(setters, before):
            set_local(n)


def _blas_setters() -> list:
    """`openblas_set_num_threads_local` of each pthreads OpenBLAS loaded (numpy's):
    OpenBLAS 0.3.27+ keeps a thread count per calling thread. Without one the
    batch is not split: a process-wide count would race between searches."""
    global _local_setters
    if _local_setters is None:
        import ctypes

        import threadpoolctl  # a dependency; loaded here so the engine imports without it
        found = []
        for lib in threadpoolctl.ThreadpoolController().lib_controllers:
            if lib.internal_api != "openblas" or getattr(lib, "threading_layer", "") != "pthreads":
                continue
            fn = getattr(ctypes.CDLL(lib.filepath), "openblas_set_num_threads_local", None)
            if fn is not None:
                fn.argtypes, fn.restype = [ctypes.c_int], ctypes.c_int
                found.append(fn)
        _local_setters = found
    return _local_setters
