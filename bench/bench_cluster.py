"""Cluster-level throughput: gateway replicas, and bulk ingest through Ray Data vs gRPC.

    .venv/bin/python bench/bench_cluster.py                 # ~6 min on the 2-core machine
    .venv/bin/python bench/bench_cluster.py --quick         # a smoke run (~2 min)

Both parts run against a real Ray node started with `ray start` (tests/ray_nodes.py,
loopback only) and `nestvec serve --ray-address` attached to it, like a deployment.

1. Query QPS with `--gateways` 1, 2 and 4 at a fixed shard count: corpusA (100k x 384)
   in a cosine collection of `--shards` shards, single-query searches at dim 64, k=10,
   from `--procs` client processes, each with `--conns` connections (their own TCP
   connections, so SO_REUSEPORT spreads them over the replicas) and `--inflight`
   calls in flight per connection, for `--seconds` per setting. `--gateways 1` is
   the plain in-process gateway.
2. Bulk ingest of the same rows from Parquet files (8 files, fixed_size_list vectors)
   into a durable collection (--fsync always): Ray Data (`nestvec ingest`'s code,
   bulk.ingest, from this driver) vs the gRPC client reading the same files and
   streaming them with UpsertStream. Rounds alternate the order; each on a fresh
   collection; median reported.

Writes bench/results/bench_cluster.json and docs/img/bench_cluster.png.
"""
from __future__ import annotations

import argparse
import asyncio
import multiprocessing as mp
import os
import pathlib
import signal
import statistics
import subprocess
import sys
import tempfile
import time

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # drivers dial 127.0.0.1

import numpy as np  # noqa: E402

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent.parent / "tests"))
from _common import DEFAULT_DATA, REPO, log, machine, markdown_table, write_results  # noqa: E402


# ----- the server ---------------------------------------------------------------
def start_serve(head: str, ns: str, port: int, log_path: str, *extra: str) -> subprocess.Popen:
    from ray_nodes import ENV
    from test_crash import _wait_serving

    with open(log_path, "ab") as f:
        proc = subprocess.Popen([sys.executable, "-m", "nestvec.cluster._ops.cli", "serve", "--ray-address", head,
                                 "--namespace", ns, "--port", str(port), *extra],
                                stdout=f, stderr=subprocess.STDOUT, env=ENV, start_new_session=True)
    _wait_serving(f"127.0.0.1:{port}", proc, log_path, timeout=300)
    return proc


def stop_serve(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        from proc_util import descendants, kill9
        kill9([proc.pid] + descendants(proc.pid))


# ----- query load from separate processes -------------------------------------------
def _client_proc(address: str, queries: np.ndarray, seconds: float, conns: int, inflight: int, out):
    from nestvec.client import AsyncClient

    async def run():
        # a local subchannel pool: every client gets its own TCP connection
        clients = [AsyncClient(address, timeout=60, options=[("grpc.use_local_subchannel_pool", 1)])
                   for _ in range(conns)]
        lat: list[float] = []
        for c in clients:  # connect and warm up
            await c.search("bench", queries[0], k=10, dim=64)
        end = time.perf_counter() + seconds

        async def worker(c, j):
            i = j
            while time.perf_counter() < end:
                t = time.perf_counter()
                await c.search("bench", queries[i % len(queries)], k=10, dim=64)
                lat.append(time.perf_counter() - t)
                i += 7
        t0 = time.perf_counter()
        await asyncio.gather(*[worker(c, j) for j, c in enumerate(clients) for _ in range(inflight)])
        elapsed = time.perf_counter() - t0
        for c in clients:
            await c.close()
        return len(lat), elapsed, lat

    out.put(asyncio.run(run()))


def query_load(address: str, queries: np.ndarray, args) -> dict:
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    procs = [ctx.Process(target=_client_proc, args=(address, queries, args.seconds, args.conns,
                                                     args.inflight, q)) for _ in range(args.procs)]
    for p in procs:
        p.start()
    got = [q.get(timeout=args.seconds + 300) for _ in procs]
    for p in procs:
        p.join(60)
    calls = sum(g[0] for g in got)
    lat = np.concatenate([np.asarray(g[2]) for g in got])
    return {"qps": calls / max(g[1] for g in got), "calls": calls,
            "p50_ms": 1000 * float(np.median(lat)), "p99_ms": 1000 * float(np.percentile(lat, 99))}


def replica_calls(head: str, ns: str, n: int) -> list[int]:
    import ray
    if not ray.is_initialized():
        ray.init(address=head, log_to_driver=False)
    return [ray.get(ray.get_actor(f"gateway-{i}", namespace=ns).info.remote())["calls"] for i in range(n)]


def bench_gateways(head: str, docs, queries, args, tmp: str) -> dict:
    from nestvec.client import Client
    from proc_util import free_port

    out = {}
    for n in (1, 2, 4):
        port, ns = free_port(), f"bench-gw{n}"
        proc = start_serve(head, ns, port, os.path.join(tmp, "serve.log"), "--in-memory",
                           "--gateways", str(n), "--shards", str(args.shards))
        try:
            with Client(f"127.0.0.1:{port}", timeout=300) as c:
                c.create_collection("bench", docs.shape[1], "cosine", shards=args.shards)
                c.upsert("bench", np.arange(docs.shape[0]), docs)
                r = query_load(f"127.0.0.1:{port}", queries, args)
                if n > 1:
                    r["calls_per_replica"] = replica_calls(head, ns, n)
                c.drop_collection("bench")
        finally:
            stop_serve(proc)
        out[n] = r
        log(f"gateways {n}: {r['qps']:,.0f} QPS, p50 {r['p50_ms']:.1f} ms, p99 {r['p99_ms']:.1f} ms"
            + (f"; calls per replica {r['calls_per_replica']}" if n > 1 else ""))
    return out


# ----- bulk ingest ------------------------------------------------------------------
def write_parquet(path: pathlib.Path, docs: np.ndarray, files: int = 8) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    path.mkdir(parents=True, exist_ok=True)
    for i, part in enumerate(np.array_split(np.arange(docs.shape[0]), files)):
        vec = pa.FixedSizeListArray.from_arrays(pa.array(docs[part].reshape(-1)), docs.shape[1])
        pq.write_table(pa.table({"id": pa.array(part.astype(np.uint64)), "vector": vec}),
                       path / f"part-{i:02d}.parquet", row_group_size=4096)


def grpc_ingest(address: str, name: str, src: pathlib.Path, batch_rows: int) -> int:
    import pyarrow.parquet as pq

    from nestvec.client import Client
    from nestvec.cluster._ops.bulk import arrow_vectors

    def batches():
        for f in sorted(src.glob("*.parquet")):
            for b in pq.ParquetFile(f).iter_batches(batch_size=batch_rows):
                yield b.column("id").to_numpy(), arrow_vectors(b.column("vector"))

    with Client(address, timeout=600) as c:
        return c.upsert_stream(name, batches()).upserted


def bench_ingest(head: str, docs, args, tmp: str) -> dict:
    import ray

    from nestvec.client import Client
    from nestvec.cluster._ops import bulk
    from proc_util import free_port

    src = pathlib.Path(tmp) / "parquet"
    write_parquet(src, docs)
    port, ns = free_port(), "bench-ingest"
    proc = start_serve(head, ns, port, os.path.join(tmp, "serve.log"), "--data-dir",
                       os.path.join(tmp, "data"), "--fsync", "always", "--shards", str(args.shards))
    if not ray.is_initialized():
        ray.init(address=head, log_to_driver=False)
    from ray.data import DataContext
    DataContext.get_current().enable_progress_bars = False
    times: dict[str, list[float]] = {"ray_data": [], "grpc_stream": []}
    try:
        with Client(f"127.0.0.1:{port}", timeout=300) as c:
            for rnd in range(args.rounds):
                order = ["ray_data", "grpc_stream"] if rnd % 2 == 0 else ["grpc_stream", "ray_data"]
                for how in order:
                    name = f"ingest-{how}-{rnd}".replace("_", "-")
                    c.create_collection(name, docs.shape[1], "cosine", shards=args.shards)
                    t = time.perf_counter()
                    if how == "ray_data":
                        rows = bulk.ingest(name, str(src), namespace=ns, batch_rows=args.batch_rows,
                                           progress=lambda _: None).rows
                    else:
                        rows = grpc_ingest(f"127.0.0.1:{port}", name, src, args.batch_rows)
                    seconds = time.perf_counter() - t
                    assert rows == docs.shape[0] and c.describe_collection(name).vectors == rows
                    times[how].append(seconds)
                    log(f"round {rnd} {how}: {rows} rows in {seconds:.1f}s ({rows / seconds:,.0f} rows/s)")
                    c.drop_collection(name)
    finally:
        stop_serve(proc)
    return {how: {"seconds": ts, "median_rows_per_s": docs.shape[0] / statistics.median(ts)}
            for how, ts in times.items()}


def plot(gw: dict, ingest: dict, path: pathlib.Path) -> None:
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, (a, b) = plt.subplots(1, 2, figsize=(10, 4))
    ns = sorted(gw)
    a.bar([str(n) for n in ns], [gw[n]["qps"] for n in ns], color="tab:blue")
    a.set_xlabel("gateway replicas (--gateways)")
    a.set_ylabel("queries/s (single-query searches, dim 64)")
    a.set_title("Query throughput vs gateway replicas")
    hows = list(ingest)
    b.bar(hows, [ingest[h]["median_rows_per_s"] for h in hows], color=["tab:green", "tab:orange"])
    b.set_ylabel("rows/s (median of rounds)")
    b.set_title("Bulk ingest from Parquet (fsync always)")
    fig.suptitle("nestvec on a 2-core shared machine (one Ray node): compare within this run only",
                 fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", default=str(DEFAULT_DATA))
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--shards", type=int, default=2)
    ap.add_argument("--seconds", type=float, default=15.0)
    ap.add_argument("--procs", type=int, default=4)
    ap.add_argument("--conns", type=int, default=4)
    ap.add_argument("--inflight", type=int, default=4)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch-rows", type=int, default=4096)
    ap.add_argument("--quick", action="store_true")
    args = ap.parse_args()
    if args.quick:
        args.docs, args.seconds, args.rounds = 20_000, 5.0, 1

    from ray_nodes import RayNodes

    z = np.load(args.data)
    docs = z["docs"][: args.docs].astype(np.float32)
    queries = z["queries"].astype(np.float32)
    info = machine()
    tmp = tempfile.mkdtemp(prefix="nvbench")
    nodes = RayNodes(tmp, num_cpus=2)
    try:
        head = nodes.start_head({"bench-node": 1}, dashboard=False)
        log(f"Ray head at {head}; {docs.shape[0]} docs; {args.shards} shards")
        gw = bench_gateways(head, docs, queries, args, tmp)
        ingest = bench_ingest(head, docs, args, tmp)
    finally:
        import ray
        ray.shutdown()
        nodes.stop()
    rows = [[n, f"{gw[n]['qps']:,.0f}", f"{gw[n]['qps'] / gw[1]['qps']:.2f}x", f"{gw[n]['p50_ms']:.1f}",
             f"{gw[n]['p99_ms']:.1f}", gw[n].get("calls_per_replica", "-")] for n in sorted(gw)]
    log(markdown_table(["--gateways", "QPS", "vs 1", "p50 ms", "p99 ms", "calls per replica"], rows))
    irows = [[h, f"{v['median_rows_per_s']:,.0f}", " ".join(f"{s:.1f}" for s in v["seconds"])]
             for h, v in ingest.items()]
    log(markdown_table(["ingest path", "rows/s (median)", "seconds per round"], irows))
    png = REPO / "docs" / "img" / "bench_cluster.png"
    plot(gw, ingest, png)
    path = write_results("bench_cluster", {"machine": info, "args": vars(args),
                                           "gateways": {str(k): v for k, v in gw.items()},
                                           "ingest": ingest})
    log(f"wrote {path} and {png}")


if __name__ == "__main__":
    main()
