"""ANN at Matryoshka prefixes: nestvec (HNSW on a prefix + exact re-rank) vs hnswlib and FAISS HNSW.

One run, same vectors, same thread count (default 2) for every method:

- `hnswlib-384`: hnswlib HNSW (M=16, ef_construction=200) at the full dim, ef swept;
- `faiss-hnsw-384`: FAISS IndexHNSWFlat (M=16, efConstruction=200) at the full dim, efSearch swept;
- `nestvec-ann-P`: nestvec's shard ANN path at prefix P (32/64/128), in process:
  ShardEngine + ShardAnn (hnswlib graph on the P-dim prefix, same M and
  ef_construction) + ann_shard.search_keys (walk, then exact re-rank at the full
  dim) + the coordinator's merge; candidates swept (ef = candidates);
- `nestvec-ann-128-efcN` (with --low-efc N, default 100): the same at prefix 128 with a
  graph built at ef_construction N (the exact re-rank makes up for a cheaper graph);
- `nestvec-ann-160-sq8` (--sq8 P, default the type's default prefix, 160; 0 skips): the
  same with index type hnsw_sq8, FAISS's HNSW over 8-bit codes of the prefix
  (cluster/_engine/ann_sq.py), at that type's default ef_construction (128, --sq8-efc);
- `nestvec-e2e-P` (with --e2e): the same through the in-process Coordinator
  (Ray shard actor, one shard with the same thread count), index type --e2e-type
  (default hnsw_sq8) at its default prefix and ef_construction: single queries
  one after another, then throughput with --callers (128) concurrent
  single-query callers through the gateway's SearchBatcher, against hnswlib
  answering the query set as one batch on the same threads, in alternating
  rounds; nestvec at the type's default ef/candidates and at the in-process
  8-bit graph's cheapest setting at recall 0.95 (the same graph).

For each point: recall@10 against exact full-dim search and single-query QPS
(batch 1: queries one after another, total time over the query set or
the per-point budget). Then each in-process method's cheapest setting at recall
0.95 is re-timed interleaved with hnswlib's (--rounds rounds of 200 queries each,
after 60 untimed ones that warm the caches), so both see the same spell of this
shared machine: the headline ratio is the median of those rounds. Per method: build time (wall, --threads threads) and graph memory
(hnswlib's index_file_size / FAISS's serialized size: links plus the vectors
the graph stores; nestvec's graph stores only the P-dim prefix, and its full
vectors live in the engine for the re-rank, reported separately).

Datasets: corpusA (100k x 384), and a larger set made from it by the procedure
in `make_scaled` (noise-perturbed copies: --scale N vectors; 1,000,000 is the
issue's size, pass a smaller N on a small machine and say so).

    .venv/bin/python bench/bench_ann.py                       # corpusA, + e2e (~4 min)
    .venv/bin/python bench/bench_ann.py --scale 300000 --no-corpus --out bench_ann_300k
    .venv/bin/python bench/bench_ann.py --quick               # 20k docs, smoke (~1 min)
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _threads  # noqa: E402


from nestvec.cluster._engine.collection import DEFAULT_EF_CONSTRUCTION, DEFAULT_INDEX_DIM  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="embeddings.npz (default corpusA)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--prefixes", default="32,64,128")
    p.add_argument("-m", type=int, default=16)
    p.add_argument("--ef-construction", type=int, default=200)
    p.add_argument("--low-efc", type=int, default=100,
                   help="also build nestvec's graph at --low-efc-prefix with this ef_construction "
                        "(0: skip): a prefix graph feeding an exact re-rank needs less build effort")
    p.add_argument("--low-efc-prefix", type=int, default=128)
    p.add_argument("--queries", type=int, default=1000, help="queries per point (default 1000)")
    p.add_argument("--budget", type=float, default=3.0, help="max seconds timed per point")
    p.add_argument("--scale", type=int, default=0, help="also run a noise-perturbed set of N vectors")
    p.add_argument("--noise", type=float, default=0.5, help="perturbation size (see make_scaled)")
    p.add_argument("--no-corpus", action="store_true", help="skip the plain corpusA run")
    p.add_argument("--no-faiss", action="store_true",
                   help="skip the FAISS HNSW baseline (its build is the longest at 1M vectors)")
    p.add_argument("--e2e", action=argparse.BooleanOptionalAction, default=True,
                   help="also time the path through the in-process Coordinator (Ray)")
    p.add_argument("--e2e-type", default="hnsw_sq8", choices=["hnsw", "hnsw_sq8"],
                   help="the e2e collection's index type, at that type's default prefix and "
                        "ef_construction unless --e2e-prefix is given")
    p.add_argument("--e2e-prefix", type=int, default=None)
    p.add_argument("--callers", type=int, default=128,
                   help="e2e: concurrent single-query callers through SearchBatcher (0 skips)")
    p.add_argument("--max-rows", type=int, default=None,
                   help="e2e concurrent: the batcher's ann_max_rows (default: the gateway's)")
    p.add_argument("--conc-seconds", type=float, default=3.0, help="seconds per concurrent round")
    p.add_argument("--conc-rounds", type=int, default=3, help="alternating concurrent rounds")
    p.add_argument("--conc-setting", default=None, metavar="EF/CANDIDATES",
                   help="e2e concurrent: also this nestvec setting (default: the in-process "
                        "8-bit graph's cheapest at recall 0.95, when it ran)")
    p.add_argument("--sq8", type=int, default=DEFAULT_INDEX_DIM["hnsw_sq8"],
                   help="also the quantised graph (index type hnsw_sq8) at this prefix (0: skip)")
    p.add_argument("--sq8-efc", type=int, default=DEFAULT_EF_CONSTRUCTION["hnsw_sq8"],
                   help="the quantised graph's ef_construction (its default)")
    p.add_argument("--rounds", type=int, default=8,
                   help="rounds of the interleaved re-timing of each method's cheapest setting at "
                        "recall 0.95 against hnswlib's (0: skip)")
    p.add_argument("--docs", type=int, default=None, help="use only the first N docs")
    p.add_argument("--quick", action="store_true", help="20k docs, 200 queries, 1 s per point")
    p.add_argument("--out", default=None, help="results name under bench/results/")
    p.add_argument("--replot", nargs="+", default=None, metavar="NAME",
                   help="only plot these results files (names under bench/results/) side by side "
                        "into docs/img/<--out>.png")
    a = p.parse_args(argv)
    if a.quick:
        a.docs, a.queries, a.budget = a.docs or 20_000, min(a.queries, 200), min(a.budget, 1.0)
    a.prefixes = [int(x) for x in a.prefixes.split(",") if x]
    a.out = a.out or ("bench_ann_quick" if a.quick else "bench_ann")
    return a


ARGS = parse_args()
_threads.pin_env(ARGS.threads)

import faiss  # noqa: E402
import hnswlib  # noqa: E402
import numpy as np  # noqa: E402

from _common import (DEFAULT_DATA, load_corpus, log, machine,  # noqa: E402
                     markdown_table, recall, write_results)

from nestvec.cluster._storage.ann_shard import ShardAnn, search_keys  # noqa: E402
from nestvec.cluster._engine.collection import CollectionConfig, plan_search  # noqa: E402
from nestvec.cluster._distributed.coordinator import merge_shard_results  # noqa: E402
from nestvec.cluster._engine.shard_engine import ShardEngine  # noqa: E402

# Both sweeps step finely around where recall@10 crosses 0.95 on corpusA (hnswlib
# near ef 44, the 128-dim prefix graph near 60) and at a million vectors (hnswlib
# between ef 64 and 96, the graphs between 100 and 150 candidates), so neither
# side's best point at 0.95 is missed by a coarse step.
EF_SWEEP = (10, 16, 24, 32, 40, 44, 48, 56, 64, 80, 96, 128, 192, 256)
CAND_SWEEP = (20, 30, 40, 50, 56, 60, 64, 75, 100, 120, 150, 200, 300, 400, 600)
# The 8-bit graph also tries ef and candidates apart ("ef/candidates"): its walk finds
# good candidates, so re-ranking fewer than it walks for is often cheapest.
SPLIT_SWEEP = ("40/30", "48/30", "56/30", "40/40", "48/40", "56/40", "64/40")


def unit(x: np.ndarray) -> np.ndarray:
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def make_scaled(docs: np.ndarray, n: int, noise: float, seed: int = 0) -> np.ndarray:
    """n vectors from `docs`: copy c of row i is row i plus Gaussian noise scaled per
    dimension by that dimension's standard deviation over the docs (so the leading,
    high-variance dims stay the informative ones: the Matryoshka shape survives),
    times `noise`, then re-normalised. Copy 0 is the docs themselves."""
    rng = np.random.default_rng(seed)
    std = docs.std(axis=0).astype(np.float32)
    out = np.empty((n, docs.shape[1]), dtype=np.float32)
    for s in range(0, n, docs.shape[0]):
        m = min(docs.shape[0], n - s)
        block = docs[:m].copy()
        if s:
            block += noise * std * rng.standard_normal(block.shape, dtype=np.float32)
        out[s: s + m] = unit(block)
    return out


def timed_single(fn, queries: np.ndarray, budget: float) -> float:
    """Single-query QPS: queries one at a time until the set or the budget runs out."""
    fn(queries[:1])
    n, t0 = 0, time.perf_counter()
    while n < queries.shape[0]:
        fn(queries[n: n + 1])
        n += 1
        if time.perf_counter() - t0 > budget and n >= 50:
            break
    return n / (time.perf_counter() - t0)


def sweep(name: str, setter_search, values, queries, truth, budget) -> list[dict]:
    pts = []
    for v in values:
        search = setter_search(v)
        found = search(queries)
        rec = recall(found, truth, 10)
        qps = timed_single(search, queries, budget)
        pts.append({"param": v, "recall": round(rec, 4), "qps": round(qps, 1)})
        log(f"  {name:<16} {v:>5}  recall@10 {rec:.3f}  {qps:8.0f} q/s")
    return pts


def bench_hnswlib(x, queries, truth, a) -> dict:
    d = x.shape[1]
    g = hnswlib.Index("ip", d)
    t0 = time.perf_counter()
    g.init_index(x.shape[0], a.m, a.ef_construction, random_seed=100)
    g.add_items(unit(x), np.arange(x.shape[0]), num_threads=a.threads)
    build = time.perf_counter() - t0
    log(f"hnswlib-{d}: built in {build:.1f}s, {g.index_file_size() / 2**20:.0f} MiB")
    qn = unit(queries)

    def setter(ef):
        g.set_ef(max(ef, 10))
        return lambda q: g.knn_query(unit(q), k=10, num_threads=a.threads)[0].astype(np.int64)
    pts = sweep(f"hnswlib-{d}", setter, EF_SWEEP, qn, truth, a.budget)
    return {"method": f"hnswlib-{d}", "build_s": round(build, 2), "graph_bytes": g.index_file_size(),
            "param": "ef", "points": pts, "setter": setter, "graph": g}


def bench_faiss(x, queries, truth, a) -> dict:
    d = x.shape[1]
    idx = faiss.IndexHNSWFlat(d, a.m, faiss.METRIC_INNER_PRODUCT)
    idx.hnsw.efConstruction = a.ef_construction
    t0 = time.perf_counter()
    idx.add(unit(x))
    build = time.perf_counter() - t0
    size = int(faiss.serialize_index(idx).size)
    log(f"faiss-hnsw-{d}: built in {build:.1f}s, {size / 2**20:.0f} MiB")

    def setter(ef):
        idx.hnsw.efSearch = max(ef, 10)
        return lambda q: idx.search(unit(q), 10)[1]
    pts = sweep(f"faiss-hnsw-{d}", setter, EF_SWEEP, queries, truth, a.budget)
    return {"method": f"faiss-hnsw-{d}", "build_s": round(build, 2), "graph_bytes": size,
            "param": "efSearch", "points": pts, "setter": setter}


def ef_candidates(setting) -> tuple[int, int]:
    """A nestvec sweep value as (ef, candidates): a candidate count (ef the same) or "ef/candidates"."""
    if isinstance(setting, str):
        ef, cand = (int(v) for v in setting.split("/"))
        return ef, cand
    return setting, setting


def bench_nestvec(x, queries, truth, prefix: int, a, engine=None, efc: int | None = None,
                  kind: str = "hnsw") -> tuple[dict, ShardEngine]:
    efc = efc or a.ef_construction
    name = (f"nestvec-ann-{prefix}" + (f"-efc{efc}" if efc != a.ef_construction else "")
            + ("-sq8" if kind == "hnsw_sq8" else ""))
    cfg = CollectionConfig.create("bench", x.shape[1], "cosine",
                                  index={"type": kind, "dim": prefix, "m": a.m, "ef_construction": efc})
    if engine is None:
        engine = ShardEngine(cfg, initial_capacity=x.shape[0])
        engine.upsert(np.arange(x.shape[0], dtype=np.uint64), x)
    ann = ShardAnn(cfg.index, "cosine", threads=a.threads)
    t0 = time.perf_counter()
    ann.start_build(engine, "bench")
    last = -1.0
    while not ann.wait(5.0):
        prog = ann.status()["index_progress"]
        if prog - last >= 0.2:
            log(f"  {name}: building {prog:.0%}")
            last = prog
    build = time.perf_counter() - t0
    mem = ann.graph.memory_bytes()
    log(f"{name}: built in {build:.1f}s (graph {mem / 2**20:.0f} MiB)")

    def setter(cand):
        ef, cand = ef_candidates(cand)
        plan = plan_search(cfg, x.shape[1], 10, ann=True, candidates=max(cand, 10), ef=max(ef, 10))

        def search(q):
            ids, keys = search_keys(engine, ann, q, plan)
            return merge_shard_results("cosine", q, plan, [(ids, keys)]).ids.astype(np.int64)
        return search
    values = CAND_SWEEP + (SPLIT_SWEEP if kind == "hnsw_sq8" else ())
    pts = sweep(name, setter, values, queries, truth, a.budget)
    return ({"method": name, "kind": kind, "prefix": prefix, "ef_construction": efc,
             "build_s": round(build, 2), "graph_bytes": mem,
             "engine_vector_bytes": int(x.nbytes), "param": "candidates (= ef)", "points": pts,
             "setter": setter},
            engine)


def bench_e2e(x, queries, truth, a, baseline=None, cheapest=None) -> dict:
    """The same ANN searches through the in-process Coordinator and a Ray shard actor."""
    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    import ray

    from nestvec.cluster._distributed.coordinator import Coordinator
    from nestvec.cluster._server.serve import start_ray
    ns = f"bench-ann-{uuid.uuid4().hex[:6]}"
    start_ray(namespace=ns, num_cpus=2)
    try:
        coord = Coordinator(namespace=ns, create_catalog=True, shard_threads=a.threads)
        name, p = "bench-ann", a.e2e_prefix or DEFAULT_INDEX_DIM[a.e2e_type]
        coord.create_collection(name, x.shape[1], "cosine", shards=1)
        for s in range(0, x.shape[0], 20_000):
            coord.upsert(name, np.arange(s, min(s + 20_000, x.shape[0])), x[s: s + 20_000])
        t0 = time.perf_counter()  # CreateIndex on the loaded collection: a background build
        coord.create_index(name, {"type": a.e2e_type, "dim": p, "m": a.m,
                                  "ef_construction": DEFAULT_EF_CONSTRUCTION[a.e2e_type]})
        stats = coord.wait_index(name, 3600)
        log(f"nestvec-e2e-{p}: index ready {time.perf_counter() - t0:.1f}s after CreateIndex "
            f"(build {stats[0]['index_build_seconds']:.1f}s in the shard)")

        def setter(cand):
            return lambda q: coord.search(name, q, 10, ann=True, ef=cand, candidates=cand).ids.astype(np.int64)
        pts = sweep(f"nestvec-e2e-{p}", setter, CAND_SWEEP, queries, truth, a.budget)
        out = {"method": f"nestvec-e2e-{p}", "build_s": round(stats[0]["index_build_seconds"], 2),
               "graph_bytes": stats[0]["index_bytes"], "param": "candidates (= ef)", "points": pts}
        if a.callers and baseline is not None:
            settings = {"defaults": (0, 0)}
            if cheapest:  # the in-process sweep's cheapest setting at recall 0.95, same graph
                settings["cheapest"] = ef_candidates(cheapest)
            out["concurrent"] = bench_concurrent(coord, name, queries, truth, baseline, settings, a)
        coord.drop_collection(name)
        return out
    finally:
        ray.shutdown()


def bench_concurrent(coord, name: str, queries, truth, baseline, settings: dict, a) -> dict:
    """Throughput of --callers concurrent single-query callers through the in-process
    coordinator and the gateway's SearchBatcher (its defaults; --max-rows), against
    hnswlib answering the same queries as one batch on --threads threads, in
    alternating rounds (--conc-rounds of --conc-seconds each). `baseline`: (hnswlib
    index, its cheapest ef at recall 0.95). `settings`: label -> (ef, candidates)
    for nestvec (0, 0: the index type's defaults, as a client that names neither)."""
    import asyncio

    from nestvec.cluster._distributed.batcher import SearchBatcher
    graph, base_ef = baseline
    qn = unit(queries)
    n = queries.shape[0]

    def hnswlib_qps() -> float:
        graph.set_ef(base_ef)
        done, t0 = 0, time.perf_counter()
        while time.perf_counter() - t0 < a.conc_seconds:
            graph.knn_query(qn, k=10, num_threads=a.threads)
            done += n
        return done / (time.perf_counter() - t0)

    def nestvec_qps(ef: int, cand: int) -> tuple[float, float]:
        async def run():
            batcher = SearchBatcher(coord, **({"ann_max_rows": a.max_rows} if a.max_rows else {}))
            found = np.full((n, 10), -1, dtype=np.int64)
            done, end = 0, time.perf_counter() + a.conc_seconds

            async def caller(c: int) -> None:
                nonlocal done
                i = c
                while time.perf_counter() < end:
                    r = await batcher.search(name, queries[i % n: i % n + 1], 10, 0, [], False, None,
                                             ann=(True, ef, cand))
                    found[i % n] = r.ids[0]
                    done += 1
                    i += a.callers
            t0 = time.perf_counter()
            await asyncio.gather(*[caller(c) for c in range(a.callers)])
            seen = found[:, 0] >= 0
            return done / (time.perf_counter() - t0), recall(found[seen], truth[seen], 10)
        return asyncio.run(run())

    shard_pids = _shard_pids(name)
    rounds = []
    for r in range(a.conc_rounds):
        row = {"hnswlib_qps": round(hnswlib_qps())}
        msg = [f"hnswlib {row['hnswlib_qps']:6d} q/s (batch, ef {base_ef})"]
        for label, (ef, cand) in settings.items():
            cpu0, t0 = _cpu_seconds([os.getpid()] + shard_pids), time.perf_counter()
            qps, rec = nestvec_qps(ef, cand)
            wall = time.perf_counter() - t0
            cores = [round((c1 - c0) / wall, 2)
                     for c0, c1 in zip(cpu0, _cpu_seconds([os.getpid()] + shard_pids))]
            row[label] = {"qps": round(qps), "recall": round(rec, 4),
                          "ratio": round(qps / row["hnswlib_qps"], 3),
                          "cores_caller": cores[0], "cores_shards": round(sum(cores[1:]), 2)}
            msg.append(f"nestvec {label} {qps:6.0f} q/s (recall {rec:.3f}; cores: caller "
                       f"{cores[0]:.2f}, shard {sum(cores[1:]):.2f}) {qps / row['hnswlib_qps']:.2f}x")
        rounds.append(row)
        log(f"  concurrent round {r + 1}, {a.callers} callers: " + " | ".join(msg))
    out = {"callers": a.callers, "ann_max_rows": a.max_rows or SearchBatcher(coord).ann_max_rows,
           "hnswlib_ef": base_ef, "settings": {k: list(v) for k, v in settings.items()}, "rounds": rounds}
    for label in settings:
        out[f"median_ratio_{label}"] = round(float(np.median([x[label]["ratio"] for x in rounds])), 3)
        log(f"  concurrent, {label} {settings[label]}: median {out[f'median_ratio_{label}']:.2f}x hnswlib")
    return out


def _shard_pids(collection: str) -> list[int]:
    """The collection's shard actor processes (for the CPU split of a concurrent round)."""
    import ray
    found = [a for a in ray.util.list_named_actors(all_namespaces=True)
             if a["name"].startswith(f"{collection}.") and "/shard-" in a["name"]]
    return [ray.get(ray.get_actor(a["name"], namespace=a["namespace"]).pid.remote()) for a in found]


def _cpu_seconds(pids: list[int]) -> list[float]:
    """User + system CPU seconds of each process so far (Linux /proc; 0 where unreadable)."""
    out = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
            out.append((int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"))
        except (OSError, IndexError, ValueError):
            out.append(0.0)
    return out


def interleave(methods: list[dict], queries: np.ndarray, rounds: int, block: int = 200,
               warm: int = 60) -> None:
    """Re-time each method's cheapest setting at recall 0.95 in alternating blocks with
    hnswlib's (methods[0]), so a slow spell of the machine hits both alike. Each block
    first runs `warm` untimed queries: the method's graph back into the caches after
    the other's walk evicted it. Sets "interleaved_us" (median µs per query over the
    rounds) and "interleaved_ratio" (hnswlib's median / this method's)."""
    timed = [m for m in methods if m["best_at_0.95"] is not None]
    if not timed or timed[0] is not methods[0]:
        return
    fns = [m["setter"](m["best_at_0.95"]["param"]) for m in timed]
    per = [[] for _ in timed]
    n = queries.shape[0]
    log(f"interleaved re-timing: {len(timed)} methods x {rounds} rounds of {block} queries")
    for r in range(rounds):
        start = (r * block) % n
        for fn, out in zip(fns, per):
            for i in range(start + block, start + block + warm):
                fn(queries[i % n: i % n + 1])
            t0 = time.perf_counter()
            for i in range(start, start + block):
                fn(queries[i % n: i % n + 1])
            out.append((time.perf_counter() - t0) / block * 1e6)
    base = float(np.median(per[0]))
    for m, out in zip(timed, per):
        m["interleaved_us"] = round(float(np.median(out)), 1)
        m["interleaved_rounds_us"] = [round(v, 1) for v in out]
        m["interleaved_ratio"] = round(base / m["interleaved_us"], 2)
        log(f"  {m['method']:<26} {m['interleaved_us']:7.1f} µs/query  {m['interleaved_ratio']:.2f}x hnswlib")


def best_at(points: list[dict], target: float = 0.95) -> dict | None:
    ok = [p for p in points if p["recall"] >= target]
    return max(ok, key=lambda p: p["qps"]) if ok else None


def run_set(label: str, x: np.ndarray, queries: np.ndarray, truth: np.ndarray, a) -> dict:
    log(f"=== {label}: {x.shape[0]} x {x.shape[1]}, {queries.shape[0]} queries, {a.threads} threads ===")
    methods = [bench_hnswlib(x, queries, truth, a)]
    if not a.no_faiss:
        methods.append(bench_faiss(x, queries, truth, a))
    engine = None
    for p in a.prefixes:
        res, engine = bench_nestvec(x, queries, truth, p, a, engine)
        methods.append(res)
    if a.low_efc:
        res, engine = bench_nestvec(x, queries, truth, a.low_efc_prefix, a, engine, efc=a.low_efc)
        methods.append(res)
    if a.sq8:
        res, engine = bench_nestvec(x, queries, truth, a.sq8, a, engine, efc=a.sq8_efc, kind="hnsw_sq8")
        methods.append(res)
    for mth in methods:
        mth["best_at_0.95"] = best_at(mth["points"])
    if a.rounds:
        interleave(methods, queries, a.rounds)
    base_best = methods[0]["best_at_0.95"]
    baseline = (methods[0].pop("graph"), max(base_best["param"], 10)) if base_best else None
    for mth in methods:
        mth.pop("setter")
    del engine
    # The in-process 8-bit graph's cheapest setting at 0.95, when it is the e2e graph too.
    same = [m for m in methods if m.get("kind") == a.e2e_type and m["best_at_0.95"]
            and m["prefix"] == (a.e2e_prefix or DEFAULT_INDEX_DIM[a.e2e_type])
            and m["ef_construction"] == DEFAULT_EF_CONSTRUCTION[a.e2e_type]]
    if a.e2e:
        cheapest = a.conc_setting or (same[0]["best_at_0.95"]["param"] if same else None)
        methods.append(bench_e2e(x, queries, truth, a, baseline, cheapest))
        methods[-1]["best_at_0.95"] = best_at(methods[-1]["points"])
    base = methods[0]
    rows = []
    for mth in methods:
        b = mth["best_at_0.95"]
        ratio = (b["qps"] / base_best["qps"]) if b and base_best else None
        mth["qps_ratio_vs_hnswlib_full"] = round(ratio, 2) if ratio else None
        mth["build_ratio"] = round(mth["build_s"] / base["build_s"], 2)
        mth["memory_ratio"] = round(mth["graph_bytes"] / base["graph_bytes"], 2)
        inter = mth.get("interleaved_ratio")
        rows.append([mth["method"], f"{mth['build_s']:.1f}", f"{mth['build_ratio']:.2f}x",
                     f"{mth['graph_bytes'] / 2**20:.0f}", f"{mth['memory_ratio']:.2f}x",
                     f"{b['param']} → {b['recall']:.3f}" if b else "never ≥ 0.95",
                     f"{b['qps']:.0f}" if b else "-", f"{ratio:.2f}x" if ratio else "-",
                     f"{inter:.2f}x" if inter else "-"])
    table = markdown_table(["method", "build s", "build vs hnswlib", "graph MiB", "memory vs hnswlib",
                            "cheapest setting at recall@10 ≥ 0.95", "QPS (batch 1)", "QPS vs hnswlib",
                            "interleaved vs hnswlib"], rows)
    log(table)
    return {"label": label, "vectors": int(x.shape[0]), "dim": int(x.shape[1]), "threads": a.threads,
            "queries": int(queries.shape[0]), "methods": methods, "table": table}


def plot(sets: list[dict], path: str) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(sets), figsize=(6.5 * len(sets), 4.8), squeeze=False)
    style = {"hnswlib": ("tab:orange", "s--"), "faiss": ("tab:red", "^--"),
             "nestvec-ann-128-efc": ("tab:olive", "o-."), "nestvec-ann-32": ("tab:cyan", "o-"), "nestvec-ann-64": ("tab:blue", "o-"),
             "nestvec-ann-128-sq8": ("tab:brown", "s-"), "nestvec-ann-128": ("tab:green", "o-"),
             "nestvec-ann": ("tab:purple", "o-"),
             "nestvec-e2e": ("black", "D:")}
    for ax, s in zip(axes[0], sets):
        for mth in s["methods"]:
            kind = ("nestvec-ann-128-sq8" if mth["method"].endswith("-sq8")
                    else next(k for k in style if mth["method"].startswith(k)))
            color, fmt = style[kind]
            split = [p for p in mth["points"] if isinstance(p["param"], str)]  # ef/candidates apart
            if split:
                ax.plot([p["recall"] for p in split], [p["qps"] for p in split], "x", color=color, ms=5)
            pts = sorted((p for p in mth["points"] if not isinstance(p["param"], str)),
                         key=lambda p: p["recall"])
            ax.plot([p["recall"] for p in pts], [p["qps"] for p in pts], fmt, color=color,
                    label=f"{mth['method']} (build {mth['build_s']:.0f}s)", lw=1.6, ms=4)
        ax.axvline(0.95, color="grey", lw=0.8, ls=":")
        ax.set_yscale("log")
        ax.set_xlim(left=max(0.5, min(p["recall"] for m in s["methods"] for p in m["points"]) - 0.02),
                    right=1.001)
        ax.set_xlabel("recall@10 vs exact full-dim search")
        ax.set_ylabel("queries/s, batch 1 (log)")
        ax.set_title(f"{s['label']}: {s['vectors']:,} x {s['dim']}, {s.get('threads', ARGS.threads)} threads",
                     fontsize=10)
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7.5, loc="lower left")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    log(f"plot: {path}")


def main(a=ARGS) -> None:
    img = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "img",
                       f"{a.out}.png")
    if a.replot:
        import json

        from _common import RESULTS
        plot([s for name in a.replot for s in json.loads((RESULTS / f"{name}.json").read_text())["sets"]],
             img)
        return
    _threads.pin_loaded(a.threads)
    faiss.cvar.distance_compute_blas_threshold = 20
    c = load_corpus(a.data or DEFAULT_DATA, docs=a.docs, queries=a.queries)
    sets = []
    if not a.no_corpus:
        sets.append(run_set("corpusA" if a.docs is None else f"corpusA[:{a.docs}]",
                            c.docs, c.queries, c.gt_ids, a))
    if a.scale:
        log(f"making the scaled set: {a.scale} vectors (noise {a.noise})")
        x = make_scaled(c.docs, a.scale, a.noise)
        t0 = time.perf_counter()
        truth = exact_topk_chunked(x, c.queries, 10)
        log(f"exact ground truth in {time.perf_counter() - t0:.0f}s")
        sets.append(run_set(f"corpusA x{a.scale / c.docs.shape[0]:g} perturbed", x, c.queries, truth, a))
        del x
    plot(sets, img)
    path = write_results(a.out, {"config": {k: v for k, v in vars(a).items()}, "machine": machine(),
                                 "sets": sets, "plot": os.path.relpath(img)})
    log(f"results: {path}")


def exact_topk_chunked(x: np.ndarray, queries: np.ndarray, k: int, chunk: int = 200_000) -> np.ndarray:
    """Exact cosine top-k rows over a large unit-norm set, scanning it in chunks."""
    q = unit(queries)
    best_s = np.full((q.shape[0], k), -np.inf, dtype=np.float32)
    best_i = np.zeros((q.shape[0], k), dtype=np.int64)
    for s in range(0, x.shape[0], chunk):
        sc = q @ x[s: s + chunk].T
        part = np.argpartition(-sc, k, axis=1)[:, :k]
        cand_s = np.concatenate([best_s, np.take_along_axis(sc, part, 1)], axis=1)
        cand_i = np.concatenate([best_i, part + s], axis=1)
        order = np.lexsort((cand_i, -cand_s), axis=1)[:, :k]
        best_s = np.take_along_axis(cand_s, order, 1)
        best_i = np.take_along_axis(cand_i, order, 1)
    return best_i


if __name__ == "__main__":
    main()
