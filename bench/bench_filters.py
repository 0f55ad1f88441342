"""Filtered search on corpusA, one run, same threads: nestvec's paths against hnswlib
with a filter function, FAISS HNSW with an IDSelector, and an exact scan of only the
matching rows (issue 20's benchmark).

Filters on corpusA's real WordNet payloads (../shared/data/corpusA/payload.jsonl.gz),
picked to match about 50%, 10%, 1% and 0.1% of the docs. Truth: the exact filtered
top-10 at full dim (numpy, float64). Per filter and method: recall@10 and queries/s
at batch 1 and batch 32. Methods:

- nestvec-flat:    ShardEngine exact search with the filter (mask or gather, shard_engine.py)
- nestvec-funnel:  the same through a 64 -> 384 funnel keeping 100
- nestvec-ann:     ann_shard.search_keys with the filter: its planner walks the 128-dim
                   prefix graph (oversampled by 1/selectivity) or scans the matching rows;
                   `-walk` / `-scan` force each side, to check the planner picks the faster
- hnswlib:         full-dim HNSW, knn_query(filter=callable), cheapest ef of 64/128/256/512
                   reaching recall 0.95 (else the best)
- faiss-hnsw:      IndexHNSWFlat (inner product, normalised), SearchParametersHNSW with an
                   IDSelectorBitmap, same ef choice
- exact-subset:    numpy: gather the matching rows, one product, argpartition (the
                   matching rows are computed once per filter, outside the timing: a
                   lower bound, which pays nothing to evaluate the filter)

    .venv/bin/python bench/bench_filters.py                 # ~10 min on 2 cores (builds 3 graphs)
    .venv/bin/python bench/bench_filters.py --docs 20000 --queries 100   # smoke
"""
from __future__ import annotations

import argparse
import dataclasses
import gzip
import json
import pathlib
import sys
import time

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
import _threads  # noqa: E402

p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
p.add_argument("--docs", type=int, default=100_000)
p.add_argument("--queries", type=int, default=200)
p.add_argument("--threads", type=int, default=2)
p.add_argument("--m", type=int, default=16)
p.add_argument("--ef-construction", type=int, default=100)
p.add_argument("--budget", type=float, default=1.5, help="seconds per timed point")
p.add_argument("--out", default="bench_filters")
ARGS = p.parse_args()
_threads.pin_env(ARGS.threads)

import faiss  # noqa: E402
import hnswlib  # noqa: E402
import numpy as np  # noqa: E402

from _common import DEFAULT_DATA, load_corpus, log, machine, markdown_table, write_results  # noqa: E402

from nestvec.cluster._engine import payload as pl  # noqa: E402
from nestvec.cluster._engine.collection import CollectionConfig, plan_search  # noqa: E402
from nestvec.cluster._engine.shard_engine import ShardEngine  # noqa: E402
from nestvec.cluster._storage import ann_shard  # noqa: E402
from nestvec.cluster._storage.ann_shard import ShardAnn, search_keys  # noqa: E402
from nestvec.cluster._distributed.coordinator import merge_shard_results  # noqa: E402

K = 10
EFS = (64, 128, 256, 512)


def load_payloads(n: int) -> list[dict]:
    path = pathlib.Path(DEFAULT_DATA).parent / "payload.jsonl.gz"
    with gzip.open(path, "rt") as f:
        return [json.loads(line) for _, line in zip(range(n), f)]


def pick_filters(rows: list[dict]) -> list[tuple[str, dict]]:
    counts: dict[str, int] = {}
    for r in rows:
        counts[r["lexname"]] = counts.get(r["lexname"], 0) + 1
    n = len(rows)
    gl = sorted(r["gloss_chars"] for r in rows)
    out = [("~50%", {"gloss_chars": {"$lt": gl[n // 2]}})]
    for label, target in (("~10%", 0.10), ("~1%", 0.01), ("~0.1%", 0.001)):
        name = min(counts, key=lambda k: abs(counts[k] / n - target))
        out.append((label, {"lexname": name}))
    return out


def timed(fn, queries: np.ndarray, batch: int, budget: float) -> tuple[float, np.ndarray]:
    """(queries/s, [Q, K] ids) over repeated passes within `budget` seconds."""
    chunks = [queries[i:i + batch] for i in range(0, len(queries), batch)]
    out = np.concatenate([fn(c) for c in chunks])  # warm-up pass, also the answer
    done, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < budget:
        for c in chunks:
            fn(c)
            done += len(c)
    return done / (time.perf_counter() - t0), out


def recall(found: np.ndarray, truth: np.ndarray) -> float:
    hits = sum(len(set(a[:K].tolist()) & set(b[:K].tolist())) for a, b in zip(found, truth))
    return hits / truth[:, :K].size


def main() -> None:
    corpus = load_corpus(DEFAULT_DATA, ARGS.docs, ARGS.queries)
    x, queries = corpus.docs, corpus.queries
    n = x.shape[0]
    rows = load_payloads(n)
    ids = np.arange(n, dtype=np.uint64)
    xn = x / np.linalg.norm(x, axis=1, keepdims=True)
    qn = queries / np.linalg.norm(queries, axis=1, keepdims=True)

    cfg = CollectionConfig.create("bench", x.shape[1], "cosine",
                                  index={"type": "hnsw", "dim": 128, "m": ARGS.m,
                                         "ef_construction": ARGS.ef_construction})
    engine = ShardEngine(cfg, initial_capacity=n)
    cols = pl.columns_from_python([{k: r[k] for k in ("pos", "lexname", "gloss_chars")} for r in rows], n)
    engine.upsert(ids, x, cols)
    schema = engine.payload.fields
    ann = ShardAnn(cfg.index, "cosine", threads=ARGS.threads)
    t0 = time.perf_counter()
    ann.start_build(engine, "bench")
    ann.wait()
    log(f"nestvec 128-dim graph built in {time.perf_counter() - t0:.1f}s")

    t0 = time.perf_counter()
    hn = hnswlib.Index(space="ip", dim=x.shape[1])
    hn.init_index(max_elements=n, M=ARGS.m, ef_construction=ARGS.ef_construction)
    hn.set_num_threads(ARGS.threads)
    hn.add_items(xn, np.arange(n))
    log(f"hnswlib full-dim graph built in {time.perf_counter() - t0:.1f}s")
    t0 = time.perf_counter()
    fh = faiss.IndexHNSWFlat(x.shape[1], ARGS.m, faiss.METRIC_INNER_PRODUCT)
    fh.hnsw.efConstruction = ARGS.ef_construction
    fh.add(np.ascontiguousarray(xn, dtype=np.float32))
    log(f"FAISS HNSW full-dim graph built in {time.perf_counter() - t0:.1f}s")
    faiss.omp_set_num_threads(ARGS.threads)

    results = []
    for label, f in pick_filters(rows):
        canon = pl.filter_key(pl.check_filter(pl.from_mongo(f), schema))
        match = engine.filter_rows(canon)
        sel = match.size / n
        sub = xn[match]
        truth = match[np.argsort(-(qn.astype(np.float64) @ sub.T.astype(np.float64)), axis=1)[:, :K]]
        allowed = np.zeros(n, dtype=bool)
        allowed[match] = True
        bitmap = np.packbits(allowed, bitorder="little")
        selector = faiss.IDSelectorBitmap(n, faiss.swig_ptr(bitmap))
        log(f"{label}: {f} matches {match.size} rows ({sel:.3%})")

        def plan_for(**kw):
            return dataclasses.replace(plan_search(cfg, x.shape[1], K, **kw), filter=canon)

        def nv(plan):
            def run(q):
                if plan.ann_candidates:
                    i, k = search_keys(engine, ann, q, plan)
                    return merge_shard_results("cosine", q, plan, [(i, k)]).ids.astype(np.int64)
                return engine.search(q, plan).ids.astype(np.int64)
            return run

        def exact_subset(q):
            s = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ xn[match].T
            top = np.argpartition(-s, min(K, s.shape[1] - 1), axis=1)[:, :K]
            order = np.argsort(-np.take_along_axis(s, top, axis=1), axis=1)
            return match[np.take_along_axis(top, order, axis=1)]

        def hnsw_fn(ef):
            def run(q):
                hn.set_ef(max(ef, K))
                lab, _ = hn.knn_query(q / np.linalg.norm(q, axis=1, keepdims=True), k=min(K, match.size),
                                      filter=lambda i: allowed[i])
                return lab.astype(np.int64)
            return run

        def faiss_fn(ef):
            params = faiss.SearchParametersHNSW(sel=selector, efSearch=ef)

            def run(q):
                qq = np.ascontiguousarray(q / np.linalg.norm(q, axis=1, keepdims=True), dtype=np.float32)
                _, lab = fh.search(qq, min(K, match.size), params=params)
                return lab
            return run

        ann_plan = plan_for(ann=True)
        methods = {"nestvec-flat": nv(plan_for()),
                   "nestvec-funnel": nv(plan_for(funnel=[(64, 100)])),
                   "nestvec-ann": nv(ann_plan),
                   "exact-subset": exact_subset}
        saved = (ann_shard.FILTER_EXACT_ROWS, ann_shard.FILTER_MAX_WALK, ann_shard.WALK_COST_PER_SCANNED_ROW)
        row = {"filter": label, "where": f, "rows": int(match.size), "selectivity": sel,
               "planner": "walk" if ann_shard.filtered_plan(match.size, n, ann_plan.ann_candidates) else "scan"}
        for name, fn in methods.items():
            r1, found = timed(fn, queries, 1, ARGS.budget)
            r32, _ = timed(fn, queries, 32, ARGS.budget)
            row[name] = {"recall": recall(found, truth), "qps1": r1, "qps32": r32}
        for side, limits in (("walk", (0, 10**9, 0)), ("scan", (10**12, 0, 10**9))):
            (ann_shard.FILTER_EXACT_ROWS, ann_shard.FILTER_MAX_WALK,
             ann_shard.WALK_COST_PER_SCANNED_ROW) = limits
            r1, found = timed(nv(ann_plan), queries, 1, ARGS.budget)
            row[f"nestvec-ann-{side}"] = {"recall": recall(found, truth), "qps1": r1}
        ann_shard.FILTER_EXACT_ROWS, ann_shard.FILTER_MAX_WALK, ann_shard.WALK_COST_PER_SCANNED_ROW = saved
        for name, make in (("hnswlib", hnsw_fn), ("faiss-hnsw", faiss_fn)):
            best = None
            for ef in EFS:
                r1, found = timed(make(ef), queries, 1, ARGS.budget / 2)
                rec = recall(found, truth)
                best = {"ef": ef, "recall": rec, "qps1": r1}
                if rec >= 0.95:
                    break
            r32, _ = timed(make(best["ef"]), queries, 32, ARGS.budget)
            row[name] = {**best, "qps32": r32}
        results.append(row)
        log("  " + "  ".join(f"{m} {row[m]['recall']:.3f}/{row[m]['qps1']:.0f}" for m in
                             ("nestvec-flat", "nestvec-ann", "hnswlib", "faiss-hnsw", "exact-subset")))

    names = ["nestvec-flat", "nestvec-funnel", "nestvec-ann", "hnswlib", "faiss-hnsw", "exact-subset"]
    table = markdown_table(
        ["filter", "rows", "planner"] + [f"{m} recall / qps@1 / qps@32" for m in names],
        [[r["filter"], r["rows"], r["planner"]] +
         [f"{r[m]['recall']:.3f} / {r[m]['qps1']:.0f} / {r[m]['qps32']:.0f}" for m in names]
         for r in results])
    sides = markdown_table(["filter", "rows", "planner", "walk recall / qps@1", "scan recall / qps@1"],
                           [[r["filter"], r["rows"], r["planner"],
                             f"{r['nestvec-ann-walk']['recall']:.3f} / {r['nestvec-ann-walk']['qps1']:.0f}",
                             f"{r['nestvec-ann-scan']['recall']:.3f} / {r['nestvec-ann-scan']['qps1']:.0f}"]
                            for r in results])
    print(table + "\n\n" + sides)
    write_results(ARGS.out, {"machine": machine(), "args": vars(ARGS), "results": results,
                             "table": table, "sides": sides})
    plot(results)


def plot(results) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        log("matplotlib missing: no plot")
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    sel = [r["selectivity"] * 100 for r in results]
    for m in ("nestvec-flat", "nestvec-funnel", "nestvec-ann", "hnswlib", "faiss-hnsw", "exact-subset"):
        ax.plot(sel, [r[m]["qps1"] for r in results], marker="o", label=m)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlabel("share of rows matching the filter (%)")
    ax.set_ylabel("queries/s at batch 1")
    ax.set_title(f"Filtered search, corpusA {ARGS.docs:,} x 384, {ARGS.threads} threads")
    ax.grid(True, which="both", alpha=0.3)
    ax.legend(fontsize=8)
    out = pathlib.Path(__file__).resolve().parent.parent / "docs" / "img" / "bench_filters.png"
    fig.tight_layout()
    fig.savefig(out, dpi=120)
    log(f"plot: {out}")


if __name__ == "__main__":
    main()
