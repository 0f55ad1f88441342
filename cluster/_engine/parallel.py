"""Search a batch on several cores: parts on Python threads, one BLAS thread each.

A batch search is a matrix product (BLAS, multi-threaded) followed by work numpy
runs on one core: top-k selection, gathering candidates' rows, re-scoring. With
BLAS at two threads the second core idles through the rest, and while another
process holds a core OpenBLAS's threads wait on each other. Running the parts
on their own Python threads instead (numpy releases the GIL in all of these
kernels) with BLAS held to one thread keeps every core busy throughout and
never runs more math threads than `threads`. The engine splits a scan by row
ranges (each part streams its own rows once: a split by queries would stream
the whole matrix once per part) and a re-rank by queries. Measured numbers:
docs/benchmarks.md.

The thread budget is per process (BLAS pools are), set by whoever owns the
process: `set_threads` (the shard actor's --shard-threads, the benchmarks).
"""
from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager

# Smaller batches are not split: a part of a few queries does not amortise the
# hand-off (~50 us), and batch 1 must not pay for it at all.
MIN_BATCH = 16

_threads = 1
_pool: ThreadPoolExecutor | None = None
_pool_size = 0
_blas: list | None = None  # numpy's BLAS libraries (threadpoolctl controllers)
_active = 0                # parallel runs in progress (an actor may serve several at once)
_saved: list = []          # their thread counts before the first of those began
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
    return _threads if _blas_libs() else 1


@contextmanager
def on_calling_thread():
    """Searches inside run unsplit on the calling thread: inside a part of a split
    batch (the pool's threads are all taken), or beside another search (it is using
    the other cores: splitting would only add hand-offs)."""
    before = getattr(_local, "inside", False)
    _local.inside = True
    try:
        yield
    finally:
        _local.inside = before


def run(fn, items: list) -> list:
    """[fn(item) for item in items], the items on the pool's threads and the caller's."""
    pool = _enter()
    try:
        futures = [pool.submit(_part, fn, item) for item in items[1:]]
        first = _part(fn, items[0])
        return [first] + [f.result() for f in futures]
    finally:
        _leave()


def _part(fn, item):
    with on_calling_thread():
        return fn(item)


def _enter() -> ThreadPoolExecutor:
    # OpenBLAS's thread count is one per process (even its "_local" setter changes
    # it for every thread): held at 1 from the first run in to the last run out.
    global _pool, _pool_size, _active, _saved
    with _lock:
        if _pool is None or _pool_size < _threads - 1:
            _pool = ThreadPoolExecutor(max_workers=_threads - 1, thread_name_prefix="nestvec-search")
            _pool_size = _threads - 1
        if _active == 0:
            _saved = [lib.num_threads for lib in _blas_libs()]
            for lib in _blas_libs():
                _set(lib, 1)
        _active += 1
        return _pool


def _leave() -> None:
    global _active
    with _lock:
        _active -= 1
        if _active == 0:
            for lib, n in zip(_blas_libs(), _saved):
                _set(lib, n)


def _set(lib, n: int) -> None:
    # threadpoolctl's OpenBLAS setter silently ignores every thread but the first
    # that used it (it keeps Python threads from fighting over the count); this
    # module serialises its own changes under _lock, so it calls the library itself.
    getattr(lib, "_real_set_num_threads", lib.set_num_threads)(n)


def _blas_libs() -> list:
    """numpy's BLAS (OpenBLAS with its own pthreads pool), as threadpoolctl controllers.
    An OpenMP-built BLAS (FAISS's) keeps a count per thread and is left alone; with
    no pthreads BLAS found, batches are not split."""
    global _blas
    if _blas is None:
        import threadpoolctl  # a dependency; loaded here so the engine imports without it
        _blas = [lib for lib in threadpoolctl.ThreadpoolController().lib_controllers
                 if lib.user_api == "blas" and getattr(lib, "threading_layer", "") == "pthreads"]
    return _blas
