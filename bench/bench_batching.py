"""Gateway micro-batching under load: many concurrent single-query clients, window off vs on.

    .venv/bin/python bench/bench_batching.py            # ~1 min
    .venv/bin/python bench/bench_batching.py --requests 5000 --concurrency 200

corpusA (100k x 384) in a 2-shard cosine collection, searched at dim 64, k=10,
one query per request, `--concurrency` requests in flight from 10 AsyncClients
in this process (so the client side shares the machine and is part of the cost).
Same run, same data: batching window 0 (off) and `--window-ms` (on).
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import pathlib
import time

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")

import numpy as np  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "corpusA" / "embeddings.npz"


async def _load(address: str, queries: np.ndarray, n: int, concurrency: int):
    from nestvec.client import AsyncClient

    clients = [AsyncClient(address, timeout=120) for _ in range(10)]
    gate, lat = asyncio.Semaphore(concurrency), []

    async def one(i):
        async with gate:
            t = time.perf_counter()
            await clients[i % 10].search("bench", queries[i % len(queries)], k=10, dim=64)
            lat.append(time.perf_counter() - t)

    start = time.perf_counter()
    await asyncio.gather(*[one(i) for i in range(n)])
    seconds = time.perf_counter() - start
    await asyncio.gather(*[c.close() for c in clients])
    return {"qps": n / seconds, "p50_ms": 1000 * float(np.median(lat)),
            "p99_ms": 1000 * float(np.percentile(lat, 99))}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DATA))
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--concurrency", type=int, default=100)
    ap.add_argument("--window-ms", type=float, default=1.0)
    args = ap.parse_args()

    from nestvec.cluster._distributed.coordinator import Coordinator
    from nestvec.cluster._server.metrics import GatewayMetrics
    from nestvec.cluster._server.serve import GatewayThread, start_ray

    z = np.load(args.data)
    docs, queries = z["docs"].astype(np.float32), z["queries"].astype(np.float32)
    start_ray(namespace="bench-batching", num_cpus=2)
    coord = Coordinator(namespace="bench-batching", create_catalog=True)
    coord.create_collection("bench", docs.shape[1], "cosine", shards=2)
    coord.upsert("bench", np.arange(docs.shape[0]), docs)
    out = {}
    for window in (0.0, args.window_ms / 1000):
        metrics = GatewayMetrics()
        gw = GatewayThread(coord, metrics=metrics, batch_window=window)
        r = asyncio.run(_load(gw.address, queries, args.requests, args.concurrency))
        r["shard_calls_stacked"] = metrics.search_batches._value.get()
        r["rows_in_stacked_calls"] = metrics.batched_queries._value.get()
        out[f"window_{window * 1000:g}ms"] = r
        print(f"window {window * 1000:g} ms: {r['qps']:,.0f} QPS, p50 {r['p50_ms']:.1f} ms, "
              f"p99 {r['p99_ms']:.1f} ms; {r['rows_in_stacked_calls']:.0f} of {args.requests} "
              f"queries went in {r['shard_calls_stacked']:.0f} stacked calls", flush=True)
        gw.stop()
    coord.drop_collection("bench")
    res = REPO / "bench" / "results"
    res.mkdir(exist_ok=True)
    (res / "bench_batching.json").write_text(json.dumps(
        {"args": vars(args), "when": time.strftime("%Y-%m-%d %H:%M"), "results": out}, indent=1))


if __name__ == "__main__":
    main()
