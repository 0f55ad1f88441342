"""Pin BLAS/OpenMP thread counts. Import and call this BEFORE numpy or faiss.

Two mechanisms, both used:
- environment variables (OMP_NUM_THREADS, OPENBLAS_NUM_THREADS, MKL_NUM_THREADS),
  which the BLAS and OpenMP runtimes read once, when they are loaded: they only
  work if set before `import numpy` / `import faiss`;
- threadpoolctl (optional), which changes the pools of libraries already loaded.

Measured on this stack (numpy 2.4 with scipy-openblas, faiss-cpu 1.15.1 with its
own OpenBLAS 0.3.15 and libgomp): either mechanism alone sets all three pools.
"""
from __future__ import annotations

import os

_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


def pin_env(threads: int) -> None:
    """Set the thread env vars (before numpy is imported) and a passive OpenMP wait policy."""
    for var in _VARS:
        os.environ[var] = str(threads)
    # STACK-NOTES: on a shared machine, spinning OpenMP threads distort FAISS timings.
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")


def pin_loaded(threads: int) -> dict:
    """After numpy/faiss are imported: apply threadpoolctl if present, and FAISS's own setter.

    Returns what is in force, for the results file.
    """
    info: dict = {"requested": threads, "env": {v: os.environ.get(v) for v in _VARS + ("OMP_WAIT_POLICY",)}}
    try:
        import faiss
        faiss.omp_set_num_threads(threads)
        info["faiss_omp_max_threads"] = faiss.omp_get_max_threads()
    except ImportError:
        pass
    try:
        import threadpoolctl
    except ImportError:
        info["method"] = "env vars (threadpoolctl not installed)"
        return info
    threadpoolctl.threadpool_limits(threads)
    _engine_threads(threads)
    info["method"] = "env vars + threadpoolctl"
    info["pools"] = pools()
    return info


def has_threadpoolctl() -> bool:
    try:
        import threadpoolctl  # noqa: F401  (does not import numpy)
    except ImportError:
        return False
    return True


def pools() -> list[dict]:
    """The BLAS/OpenMP pools loaded in this process and their thread counts (needs threadpoolctl)."""
    try:
        import threadpoolctl
    except ImportError:
        return []
    return [{"lib": p["prefix"], "api": p["internal_api"], "version": p.get("version"),
             "threads": p["num_threads"]} for p in threadpoolctl.threadpool_info()]


def set_threads(threads: int) -> bool:
    """Change the thread count of loaded pools now (threadpoolctl only); False if unavailable."""
    try:
        import threadpoolctl
    except ImportError:
        return False
    threadpoolctl.threadpool_limits(threads)
    _engine_threads(threads)
    try:
        import faiss
        faiss.omp_set_num_threads(threads)
    except ImportError:
        pass
    return True


def _engine_threads(threads: int) -> None:
    """The engine's own batch split (nestvec.cluster._engine.parallel) gets the same budget."""
    try:
        from nestvec.cluster._engine import parallel
    except ImportError:
        return
    parallel.set_threads(threads)
