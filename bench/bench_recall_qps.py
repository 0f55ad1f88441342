"""Recall vs QPS on corpusA: nestvec flat prefixes and funnels, FAISS flat, hnswlib.

One run, same threads for everything (default 2), queries in batches of 1 and 32,
recall@10 against the exact full-384 ground truth:

- nestvec ShardEngine, exact flat search at each nested prefix dim;
- nestvec funnels: shortlist at 32/64/128 dims, re-rank at 384, with float32
  shortlists and with an int8 first stage (`first_stage="int8"`, cluster/_engine/lowp.py),
  and three-stage funnels (64 dims -> 128 dims -> 384);
- FAISS IndexFlatIP at each prefix dim (384 is the exact baseline);
- hnswlib HNSW at 384 (M=16, ef_construction=200) over a range of ef;
- end to end: a few of the nestvec points again through gRPC -> gateway ->
  coordinator -> Ray shard actors (embedded local cluster), in each `--e2e-layouts`
  layout of shards x BLAS threads per shard: default "2x1,1x2", the server's own
  default here (one single-threaded shard per core) and the in-process engine's
  layout (one engine, 2 threads); `--no-e2e` skips.

    .venv/bin/pip install -e '.[bench]'     # faiss-cpu, matplotlib, hnswlib (compiles)
    .venv/bin/python bench/bench_recall_qps.py          # ~8 min (hnswlib build ~50 s)
    .venv/bin/python bench/bench_recall_qps.py --quick  # 20k docs

Prints a progress line per point, then a table (recall, QPS and p50/p99 at batch 1 and
32); then times the funnels that reach recall 0.95 again, interleaved with nestvec's and
FAISS's flat 384 (issue 4's target (b), same moments of machine load), and prints their
ratios; then the gRPC points interleaved with their in-process twins at batch 32
(target (c)); writes bench/results/bench_recall_qps.json and docs/img/recall_vs_qps.png.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _threads  # noqa: E402  (thread env vars must be set before numpy loads)

FUNNELS = [(32, 400), (32, 1000), (64, 100), (64, 200), (64, 400), (128, 50), (128, 100)]
# Three stages: the wide shortlist is re-scored at 128 dims, only the narrow one at 384.
FUNNELS3 = [[(64, 300), (128, 50)], [(64, 400), (128, 50)], [(64, 400), (128, 100)]]
INT8_FUNNELS = [(64, 200), (64, 400), (128, 50), (128, 100)]
EFS = [16, 32, 64, 128, 256]
E2E = ["flat 384", "funnel 64:400", "int8 funnel 128:50"]  # points repeated over gRPC


def parse_args():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=None)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--seconds", type=float, default=1.5, help="timed seconds per method and batch")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--out", default="bench_recall_qps")
    p.add_argument("--no-e2e", action="store_true", help="skip the gRPC end-to-end points")
    p.add_argument("--replot", action="store_true", help="redraw the PNG from the last results, no run")
    p.add_argument("--e2e-layouts", default="2x1,1x2",
                   help="SHARDSxTHREADS layouts of the gRPC collections (default 2x1,1x2)")
    a = p.parse_args()
    a.e2e_layouts = [tuple(int(x) for x in lay.split("x")) for lay in a.e2e_layouts.split(",") if lay]
    return a


def main() -> None:
    a = parse_args()
    if a.replot:
        import json

        import _common as C
        r = json.loads((C.REPO / "bench" / "results" / f"{a.out}.json").read_text())
        plot(r["points"], C.REPO / "docs" / "img" / "recall_vs_qps.png", r["docs"], a.threads)
        return
    _threads.pin_env(a.threads)
    import numpy as np

    import _common as C
    import faiss
    threads_info = _threads.pin_loaded(a.threads)
    try:
        import hnswlib
    except ImportError:
        sys.exit("hnswlib is not installed: .venv/bin/pip install hnswlib")
    from nestvec.cluster._engine.collection import CollectionConfig, plan_search
    from nestvec.cluster._engine.shard_engine import ShardEngine

    corpus = C.load_corpus(a.data or C.DEFAULT_DATA, docs=20_000 if a.quick else None)
    docs, queries, gt = corpus.docs, corpus.queries, corpus.gt_ids
    dim, k = docs.shape[1], 10
    C.log(f"{docs.shape[0]} docs x {dim}, {queries.shape[0]} queries, {a.threads} threads")

    engine = ShardEngine(CollectionConfig.create("bench", dim, "cosine"))
    engine.upsert(np.arange(docs.shape[0], dtype=np.uint64), docs)
    int8 = ShardEngine(CollectionConfig.create("bench8", dim, "cosine", first_stage="int8"))
    int8.upsert(np.arange(docs.shape[0], dtype=np.uint64), docs)
    faiss.cvar.distance_compute_blas_threshold = 20  # STACK-NOTES: else no BLAS below 128000
    prefix_flat = {}  # FAISS IndexFlatIP on the unit-normalised prefix, per nested dim
    for d in engine.config.nested_dims:
        sub = np.ascontiguousarray(docs[:, :d])
        prefix_flat[d] = faiss.IndexFlatIP(d)
        prefix_flat[d].add(sub / np.linalg.norm(sub, axis=1, keepdims=True))
    unit = docs / np.linalg.norm(docs, axis=1, keepdims=True)
    t = time.perf_counter()
    hnsw = hnswlib.Index(space="ip", dim=dim)
    hnsw.init_index(max_elements=docs.shape[0], M=16, ef_construction=200)
    hnsw.set_num_threads(a.threads)
    hnsw.add_items(unit, np.arange(docs.shape[0]))
    hnsw_build = time.perf_counter() - t
    C.log(f"hnswlib build (M=16, ef_construction=200): {hnsw_build:.1f} s")

    def normed(q):
        return q / np.linalg.norm(q, axis=1, keepdims=True)

    methods = []  # (family, label, search(q) -> [Q, k] row ids)
    for d in engine.config.nested_dims:
        plan = plan_search(engine.config, dim, k, d)
        methods.append(("nestvec flat", f"flat {d}", lambda q, p=plan: engine.search(q, p).ids))
    for fd, keep in FUNNELS:
        plan = plan_search(engine.config, dim, k, dim, [(fd, keep)])
        methods.append(("nestvec funnel", f"funnel {fd}:{keep}",
                        lambda q, p=plan: engine.search(q, p).ids))
    for stages in FUNNELS3:
        plan = plan_search(engine.config, dim, k, dim, stages)
        methods.append(("nestvec funnel", "funnel " + ",".join(f"{d}:{c}" for d, c in stages),
                        lambda q, p=plan: engine.search(q, p).ids))
    for fd, keep in INT8_FUNNELS:
        plan = plan_search(int8.config, dim, k, dim, [(fd, keep)])
        methods.append(("nestvec funnel int8", f"int8 funnel {fd}:{keep}",
                        lambda q, p=plan: int8.search(q, p).ids))
    for d, index in prefix_flat.items():
        methods.append(("FAISS flat", f"faiss flat {d}",
                        lambda q, d=d, ix=index: ix.search(normed(np.ascontiguousarray(q[:, :d])), k)[1]))
    for ef in EFS:
        def hnsw_search(q, ef=ef):
            hnsw.set_ef(max(ef, k))
            return hnsw.knn_query(normed(q), k=k)[0]
        methods.append(("hnswlib", f"hnsw ef={ef}", hnsw_search))

    points = []

    def measure(family, label, search, n, total):
        rec = C.recall(search(queries), gt, k)
        pt = {"family": family, "label": label, "recall": round(rec, 4)}
        for b in (1, 32):
            timing = C.interleaved({label: search}, C.batches(queries, b), a.seconds)[label]
            pt[f"qps_b{b}"] = round(timing.qps, 1)
            pt[f"p50_ms_b{b}"] = round(timing.pct(50) * 1e3, 3)
            pt[f"p99_ms_b{b}"] = round(timing.pct(99) * 1e3, 3)
        points.append(pt)
        bar = "#" * (20 * n // total)
        C.log(f"[{bar:<20}] {n}/{total} {label:<22} recall@10 {rec:.3f}  "
              f"QPS batch 1 {pt['qps_b1']:>8,.0f}  batch 32 {pt['qps_b32']:>8,.0f}")

    layouts = [] if a.no_e2e else a.e2e_layouts
    total = len(methods) + len(layouts) * len(E2E)
    for n, (family, label, search) in enumerate(methods, 1):
        measure(family, label, search, n, total)
    # End to end, one embedded cluster per layout (threads per shard are a cluster
    # setting); each gRPC point also timed interleaved with its in-process twin at
    # batch 32: issue 4's target (c).
    by_label = {m[1]: m[2] for m in methods}
    target_c = {}
    n = len(methods)
    for shards, threads in layouts:
        e2e = E2eCluster(docs, {"bench": engine.config, "bench8": int8.config}, shards, threads)
        try:
            fns_c = {}
            for label in E2E:
                coll = ("bench8" if label.startswith("int8") else "bench")
                funnel = [tuple(map(int, label.split()[-1].split(":")))] if "funnel" in label else None
                e2e_label = f"gRPC {label} ({shards}x{threads})"
                search = (lambda q, c=coll, f=funnel: e2e.client.search(c, q, k=k, funnel=f).ids)
                n += 1
                measure("nestvec e2e gRPC", e2e_label, search, n, total)
                fns_c[label], fns_c[e2e_label] = by_label[label], search
            timing = C.interleaved(fns_c, C.batches(queries, 32), 2 * a.seconds)
            for label in E2E:
                e2e_label = f"gRPC {label} ({shards}x{threads})"
                t, twin = timing[e2e_label], timing[label]
                target_c[e2e_label] = {"qps": round(t.qps, 1), "in_process_qps": round(twin.qps, 1),
                                       "x_in_process": round(t.qps / twin.qps, 3)}
        finally:
            e2e.close()
    if target_c:
        C.log("target (c), gRPC at batch 32 timed together with the in-process engine:")
        print(C.markdown_table(["method", "QPS b32", "in-process QPS b32", "x in-process"],
                               [[lab, f"{t['qps']:,.0f}", f"{t['in_process_qps']:,.0f}",
                                 f"{t['x_in_process']:.2f}"] for lab, t in target_c.items()]))
    # Issue 4's target (b) compares funnels with the flat baselines: time those
    # together, interleaved, so a burst of load from elsewhere hits all alike.
    fns = {p["label"]: search for family, p, search in
           ((m[0], next(p for p in points if p["label"] == m[1]), m[2]) for m in methods)
           if p["label"] in ("flat 384", "faiss flat 384")
           or (family.startswith("nestvec funnel") and p["recall"] >= 0.95)}
    targets = {}
    for b in (1, 32):
        timing = C.interleaved(fns, C.batches(queries, b), a.seconds)
        own, fx = timing["flat 384"].qps, timing["faiss flat 384"].qps
        targets[f"b{b}"] = {label: {"qps": round(t.qps, 1), "x_own_flat_384": round(t.qps / own, 2),
                                    "x_faiss_flat_384": round(t.qps / fx, 2)}
                            for label, t in timing.items()}
    C.log("target (b), funnels at recall >= 0.95 timed together with the flat baselines:")
    print(C.markdown_table(
        ["method", "recall@10", "QPS b1", "x own / FAISS flat 384, b1", "QPS b32",
         "x own / FAISS flat 384, b32"],
        [[lab, f"{next(p['recall'] for p in points if p['label'] == lab):.3f}"]
         + sum(([f"{targets[b][lab]['qps']:,.0f}", f"{targets[b][lab]['x_own_flat_384']:.2f} / "
                 f"{targets[b][lab]['x_faiss_flat_384']:.2f}"] for b in ("b1", "b32")), [])
         for lab in fns]))
    path = C.write_results(a.out + ("_quick" if a.quick else ""), {
        "docs": int(docs.shape[0]), "threads": threads_info, "hnsw_build_s": round(hnsw_build, 1),
        "machine": C.machine(), "points": points, "targets_interleaved": targets,
        "target_c_interleaved": target_c})
    C.log(f"wrote {path}")
    rows = [[p["label"], f"{p['recall']:.3f}",
             f"{p['qps_b1']:,.0f}", f"{p['p50_ms_b1']:.2f} / {p['p99_ms_b1']:.2f}",
             f"{p['qps_b32']:,.0f}", f"{p['p50_ms_b32']:.2f} / {p['p99_ms_b32']:.2f}"]
            for p in points]
    print(C.markdown_table(["method", "recall@10", "QPS batch 1", "p50 / p99 ms batch 1",
                            "QPS batch 32", "p50 / p99 ms batch 32"], rows))
    if not a.quick:
        plot(points, C.REPO / "docs" / "img" / "recall_vs_qps.png", docs.shape[0], a.threads)


class E2eCluster:
    """An embedded local Ray cluster whose shards run `threads` BLAS threads each, a
    gateway on loopback and a Client: the same collections as the in-process
    engines, `shards` shards each, ingested over gRPC."""

    def __init__(self, docs, configs, shards, threads):
        import uuid

        import numpy as np

        from nestvec.client import Client
        from nestvec.cluster._distributed.coordinator import Coordinator
        from nestvec.cluster._server.serve import GatewayThread, start_ray
        os.environ.setdefault("RAY_AUTH_MODE", "disabled")
        ns = f"bench-{uuid.uuid4().hex[:6]}"
        start_ray(namespace=ns, num_cpus=2)
        self.coord = Coordinator(namespace=ns, create_catalog=True, shard_threads=threads)
        self.gateway = GatewayThread(self.coord, host="127.0.0.1", port=0)
        self.client = Client(self.gateway.address, timeout=300)
        ids = np.arange(docs.shape[0], dtype=np.uint64)
        for name, cfg in configs.items():
            self.client.create_collection(name, cfg.dim, cfg.metric, shards=shards,
                                          first_stage=cfg.first_stage)
            self.client.upsert(name, ids, docs)

    def close(self):
        import ray
        self.client.close()
        self.gateway.stop()
        ray.shutdown()


def plot(points, out, n_docs, threads) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no plot (pip install -e '.[bench]')")
        return
    styles = {"nestvec flat": ("o-", "tab:blue"), "nestvec funnel": ("*", "tab:green"),
              "nestvec funnel int8": ("P", "tab:olive"), "nestvec e2e gRPC": ("D", "tab:purple"),
              "FAISS flat": ("s-", "tab:orange"), "hnswlib": ("^-", "tab:red")}
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8))
    for ax, b in zip(axes, (1, 32)):
        for family, (marker, color) in styles.items():
            pts = [p for p in points if p["family"] == family]
            ax.plot([p["recall"] for p in pts], [p[f"qps_b{b}"] for p in pts], marker,
                    color=color, label=family, markersize=8 if marker == "*" else 6)
            for p in pts:
                if family != "FAISS flat":
                    short = p["label"].replace("funnel ", "").replace("flat ", "").replace("hnsw ", "")
                    ax.annotate(short, (p["recall"], p[f"qps_b{b}"]),
                                fontsize=7, xytext=(3, 3), textcoords="offset points")
        ax.set_yscale("log")
        ax.set_xlabel("recall@10 vs exact full-384 search")
        ax.set_ylabel("queries / second (higher is better)")
        ax.set_title(f"batch {b}")
        ax.grid(True, which="both", alpha=0.3)
    axes[0].legend(loc="lower left", fontsize=8)
    fig.suptitle(f"corpusA ({n_docs:,} x 384), {threads} threads, one run: recall vs QPS")
    fig.tight_layout()
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110)
    print(f"wrote {out}")


if __name__ == "__main__":
    main()
