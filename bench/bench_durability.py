"""Durability costs: ingest throughput by fsync policy, and recovery time per million vectors.

    .venv/bin/python bench/bench_durability.py            # full run (~8 min)
    .venv/bin/python bench/bench_durability.py --quick    # smoke run

1. Ingest over real gRPC into a 2-shard cosine collection (384 dims, batches
   of 1,000 corpusA vectors), side by side in one run: in memory (no
   durability), `--fsync none` (log written, no fsync), `batch`, `always`.
2. Recovery of one shard holding 1M x 384 vectors (corpusA tiled with fresh
   ids): from the log alone, and from a snapshot.

Writes bench/results/bench_durability.json and prints a markdown table.
"""
from __future__ import annotations

import argparse
import json
import os
import pathlib
import shutil
import sys
import tempfile
import time
import uuid

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "corpusA" / "embeddings.npz"


def ingest_rate(mode: str, docs: np.ndarray, batch: int, tmp: str) -> float:
    from nestvec.client import Client
    from nestvec.cluster._distributed.coordinator import Coordinator
    from nestvec.cluster._server.serve import GatewayThread
    import ray

    ns = f"bench-{mode}-{uuid.uuid4().hex[:6]}"
    data_dir = None if mode == "memory" else os.path.join(tmp, ns)
    coord = Coordinator(namespace=ns, create_catalog=True, data_dir=data_dir,
                        fsync="always" if mode == "memory" else mode)
    gw = GatewayThread(coord)
    try:
        with Client(gw.address, timeout=120) as c:
            c.create_collection("ingest", dim=docs.shape[1], metric="cosine", shards=2)
            ids = np.arange(docs.shape[0], dtype=np.uint64)
            c.upsert("ingest", ids[:batch], docs[:batch])  # warm-up (first calls start workers)
            t = time.perf_counter()
            for s in range(0, docs.shape[0], batch):
                c.upsert("ingest", ids[s: s + batch], docs[s: s + batch])
                done = min(s + batch, docs.shape[0])
                print(f"\r  {mode:<7} {done:>7}/{docs.shape[0]}", end="", flush=True)
            rate = docs.shape[0] / (time.perf_counter() - t)
            print(f"\r  {mode:<7} {rate:>10,.0f} vectors/s")
            c.drop_collection("ingest")
    finally:
        gw.stop()
        ray.kill(ray.get_actor("catalog", namespace=ns))
        if data_dir:
            shutil.rmtree(data_dir, ignore_errors=True)
    return rate


def recovery_times(docs: np.ndarray, total: int, tmp: str) -> dict:
    from nestvec.cluster._engine.collection import CollectionConfig
    from nestvec.cluster._storage.durable_shard import DurableShard, recover

    cfg = CollectionConfig.create("recovery", docs.shape[1], "cosine")
    d = os.path.join(tmp, "recovery-shard")
    shard = DurableShard(cfg, d, fsync="none", snapshot_bytes=1 << 50)
    step = 10_000
    for s in range(0, total, step):
        rows = np.arange(s, s + step) % docs.shape[0]
        shard.upsert(np.arange(s, s + step, dtype=np.uint64), docs[rows])
        print(f"\r  writing the log {s + step:>8}/{total}", end="", flush=True)
    shard.wal.sync()
    log_bytes = shard.wal.bytes
    shard.wal.close()
    del shard
    t = time.perf_counter()
    engine, _, replayed, _ = recover(cfg, d)
    from_log = time.perf_counter() - t
    assert len(engine) == total
    print(f"\r  recovery from the log ({log_bytes / 2**30:.2f} GiB, {replayed} records): {from_log:.1f} s")
    shard = DurableShard(cfg, d, fsync="none")
    t = time.perf_counter()
    shard.snapshot()
    snap_write = time.perf_counter() - t
    shard.close(snapshot=False)
    del shard, engine
    t = time.perf_counter()
    engine, seq, replayed, _ = recover(cfg, d)
    from_snapshot = time.perf_counter() - t
    assert len(engine) == total and replayed == 0
    print(f"  snapshot write: {snap_write:.1f} s; recovery from the snapshot: {from_snapshot:.1f} s")
    shutil.rmtree(d, ignore_errors=True)
    per_m = 1e6 / total
    return {"vectors": total, "log_bytes": log_bytes, "from_log_s": from_log,
            "from_snapshot_s": from_snapshot, "snapshot_write_s": snap_write,
            "from_log_s_per_million": from_log * per_m,
            "from_snapshot_s_per_million": from_snapshot * per_m}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--quick", action="store_true", help="20k vectors ingest, 200k recovery")
    ap.add_argument("--batch", type=int, default=1000)
    ap.add_argument("--tmp", default=None, help="folder for data dirs (default: a temp dir)")
    ap.add_argument("--rounds", type=int, default=3, help="ingest rounds per mode (median reported)")
    args = ap.parse_args()
    docs = np.load(args.data)["docs"].astype(np.float32)
    n_ingest = 20_000 if args.quick else docs.shape[0]
    n_recover = 200_000 if args.quick else 1_000_000
    tmp = tempfile.mkdtemp(prefix="nestvec-bench-", dir=args.tmp)

    from nestvec.cluster._server.serve import start_ray
    start_ray(namespace="bench", num_cpus=2)
    print(f"ingest over gRPC: {n_ingest} x {docs.shape[1]} in batches of {args.batch}, 2 shards")
    # Rounds in rotated order after a warm-up, median per mode: the first mode of a
    # single pass also pays for warming Ray's workers, which skewed earlier runs.
    modes = ["memory", "none", "batch", "always"]
    ingest_rate("memory", docs[: min(n_ingest, 20_000)], args.batch, tmp)  # warm-up, not reported
    runs: dict[str, list[float]] = {m: [] for m in modes}
    for r in range(args.rounds):
        for m in modes[r % len(modes):] + modes[: r % len(modes)]:
            runs[m].append(ingest_rate(m, docs[:n_ingest], args.batch, tmp))
    rates = {m: float(np.median(v)) for m, v in runs.items()}
    print(f"recovery of one shard of {n_recover} x {docs.shape[1]}")
    rec = recovery_times(docs, n_recover, tmp)
    shutil.rmtree(tmp, ignore_errors=True)

    out = {"ingest_vectors_per_s": rates, "ingest_runs": runs, "batch": args.batch, "ingest_vectors": n_ingest,
           "recovery": rec, "when": time.strftime("%Y-%m-%d %H:%M"), "argv": sys.argv[1:]}
    res = REPO / "bench" / "results"
    res.mkdir(exist_ok=True)
    (res / ("bench_durability_quick.json" if args.quick else "bench_durability.json")).write_text(
        json.dumps(out, indent=1))
    print("\n| mode | vectors/s | vs in memory |\n|---|---|---|")
    for m, r in rates.items():
        print(f"| {m} | {r:,.0f} | {r / rates['memory']:.2f}x |")
    print(f"\nrecovery per million vectors: {rec['from_log_s_per_million']:.1f} s from the log, "
          f"{rec['from_snapshot_s_per_million']:.1f} s from a snapshot")


if __name__ == "__main__":
    main()
