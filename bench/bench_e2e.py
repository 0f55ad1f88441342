"""End to end: gRPC client -> gateway -> coordinator -> shard actors, vs the engine in-process.

Starts an embedded Ray cluster (2 CPUs) and two gateways in this process (one
whose coordinator sends searches over the shards' same-node Unix sockets, the
default, and one that sends every search as a Ray actor call), creates a
cosine collection per shard count, ingests corpusA over gRPC (Client.upsert),
then times sequential searches (one request in flight), interleaved call by
call on the same query batches:

- `grpc`:      Client.search over loopback gRPC (the full product path, default settings);
- `grpc_ray`:  the same through the gateway whose searches are Ray actor calls;
- `coord`:     Coordinator.search from this driver (fan-out over the sockets and merge, no gRPC);
- `coord_ray`: the same with Ray actor calls;
- `actor`:     (1 shard) `ray.get(shard.search_keys.remote(...))`: one bare Ray actor call;
- `engine`:    ShardEngine.search in-process on the same vectors (the math alone),
               run with the same BLAS thread count the shard actors get.

Overhead = grpc p50 - engine p50 (and coord p50 - engine p50 for the part below gRPC).

Thread counts: Ray starts workers with OMP_NUM_THREADS=1 and nestvec's
ShardActor does not change it, so each shard computes with one BLAS thread.
This benchmark leaves that as it is (it is what a deployment gets) unless
--actor-threads is given, and measures the in-process engine at the actors'
count (plus, for reference, at --threads).

    .venv/bin/python bench/bench_e2e.py                 # full run, ~3-5 min
    .venv/bin/python bench/bench_e2e.py --quick         # smoke run, 20k docs, ~1 min
"""
from __future__ import annotations

import argparse
import os
import sys
import time
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import _threads  # noqa: E402


def parse_args(argv=None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default=None, help="embeddings.npz (default ../shared/data/corpusA/embeddings.npz)")
    p.add_argument("--shards", default="1,4", help="shard counts, one collection each (default 1,4)")
    p.add_argument("--dims", default="64,384", help="prefix dims to search at (default 64,384)")
    p.add_argument("--batches", default="1,32", help="query batch sizes (default 1,32)")
    p.add_argument("--calls", type=int, default=500, help="sequential calls at batch 1 (default 500)")
    p.add_argument("--batch-calls", type=int, default=100, help="sequential calls at batches > 1 (default 100)")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--threads", type=int, default=2,
                   help="reference thread count for the in-process engine (default 2)")
    p.add_argument("--actor-threads", type=int, default=None,
                   help="export OMP/OPENBLAS_NUM_THREADS=N to the Ray workers (default: Ray's own, 1)")
    p.add_argument("--num-cpus", type=int, default=2, help="Ray num_cpus (default 2)")
    p.add_argument("--docs", type=int, default=None, help="use only the first N docs")
    p.add_argument("--quick", action="store_true",
                   help="smoke run: 20k docs, 1 shard, 100 calls at batch 1, 20 at batch 32")
    p.add_argument("--out", default=None, help="results name under bench/results/ (default bench_e2e[_quick])")
    a = p.parse_args(argv)
    if a.quick:
        a.docs = a.docs or 20_000
        if a.shards == p.get_default("shards"):
            a.shards = "1"
        if a.calls == p.get_default("calls"):
            a.calls = 100
        if a.batch_calls == p.get_default("batch_calls"):
            a.batch_calls = 20
    a.shards = [int(x) for x in a.shards.split(",") if x]
    a.dims = [int(x) for x in a.dims.split(",") if x]
    a.batches = [int(x) for x in a.batches.split(",") if x]
    a.out = a.out or ("bench_e2e_quick" if a.quick else "bench_e2e")
    return a


ARGS = parse_args()
os.environ.setdefault("RAY_AUTH_MODE", "disabled")      # STACK-NOTES: local cluster, no token
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
if ARGS.actor_threads:
    # Set before Ray starts: workers inherit the driver's environment.
    _threads.pin_env(ARGS.actor_threads)
elif not _threads.has_threadpoolctl():
    # Without threadpoolctl the in-process engine's threads can only be set now, before
    # numpy loads, and Ray workers inherit them: use Ray's own worker default (1) for both.
    _threads.pin_env(1)

import numpy as np  # noqa: E402
import ray  # noqa: E402

import _common as C  # noqa: E402
from nestvec.client import Client  # noqa: E402
from nestvec.cluster._engine.collection import CollectionConfig, plan_search  # noqa: E402
from nestvec.cluster._distributed.coordinator import Coordinator  # noqa: E402
from nestvec.cluster._engine.shard_engine import ShardEngine  # noqa: E402
from nestvec.cluster._server.serve import GatewayThread, start_ray  # noqa: E402


@ray.remote(num_cpus=0)  # the same resources as ShardActor, so the same worker environment
class _Probe:
    def threads(self) -> dict:
        import numpy  # noqa: F401  (load BLAS before asking)
        env = {v: os.environ.get(v) for v in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS")}
        try:
            import threadpoolctl
        except ImportError:
            return {"env": env, "pools": []}
        return {"env": env, "pools": [{"lib": p["prefix"], "api": p["internal_api"], "version": p.get("version"),
                                       "threads": p["num_threads"]} for p in threadpoolctl.threadpool_info()]}


def actor_blas_threads(info: dict) -> int | None:
    blas = [p["threads"] for p in info.get("pools", []) if p["api"] == "openblas"]
    if blas:
        return int(blas[0])
    env = info["env"].get("OPENBLAS_NUM_THREADS") or info["env"].get("OMP_NUM_THREADS")
    return int(env) if env else None


def timed_calls(fns: dict, inputs: list[np.ndarray], calls: int, warmup: int = 10) -> tuple[dict, dict]:
    """Run `calls` sequential calls of each fn, interleaved call by call (order flips each call)."""
    names = list(fns)
    for i in range(warmup):
        for n in names:
            fns[n](inputs[i % len(inputs)])
    res = {n: C.Timing(inputs[0].shape[0]) for n in names}
    last = {}
    for i in range(calls):
        x = inputs[i % len(inputs)]
        for n in (names if i % 2 == 0 else names[::-1]):
            t0 = time.perf_counter()
            out = fns[n](x)
            res[n].times.append(time.perf_counter() - t0)
            if i < len(inputs):
                last.setdefault(n, []).append(np.asarray(out[0] if isinstance(out, tuple) else out.ids))
    return res, last


def main() -> None:
    a = ARGS
    t_start = time.perf_counter()
    corpus = C.load_corpus(a.data or C.DEFAULT_DATA, a.docs)
    docs, queries = corpus.docs, corpus.queries
    n, dim = docs.shape
    ids = np.arange(n, dtype=np.uint64)
    C.log(f"bench_e2e: {n} docs x {dim}, shards {a.shards}, dims {a.dims}, batches {a.batches}, k={a.k}")
    C.log(f"  load average {os.getloadavg()[0]:.2f} (2-core shared machine: compare within this run)")

    namespace = f"nestvec-bench-{uuid.uuid4().hex[:8]}"
    t0 = time.perf_counter()
    start_ray(namespace=namespace, num_cpus=a.num_cpus)
    ray_start = time.perf_counter() - t0
    coord = Coordinator(namespace=namespace, create_catalog=True)
    coord_ray = Coordinator(namespace=namespace, direct=False)
    gw = GatewayThread(coord, host="127.0.0.1", port=0)
    gw_ray = GatewayThread(coord_ray, host="127.0.0.1", port=0)
    client = Client(gw.address, timeout=300)
    client_ray = Client(gw_ray.address, timeout=300)
    C.log(f"  Ray up in {ray_start:.1f} s; gateway on {gw.address}")
    probe = ray.get(_Probe.remote().threads.remote())
    actor_threads = actor_blas_threads(probe) or 1
    C.log(f"  shard actors compute with {actor_threads} BLAS thread(s) (worker env {probe['env']})")

    # The in-process engine (the math alone), at the actors' thread count for the overhead.
    has_tpc = _threads.set_threads(actor_threads)
    if not has_tpc:
        C.log("  threadpoolctl not installed: threads pinned with env vars before numpy loaded "
              f"(driver and workers alike: {os.environ.get('OPENBLAS_NUM_THREADS')}); no reference run "
              f"at --threads {a.threads}")
    cfg = CollectionConfig.create("bench", dim, "cosine")
    engine = ShardEngine(cfg)
    t0 = time.perf_counter()
    engine.upsert(ids, docs)
    engine_ingest = n / (time.perf_counter() - t0)

    try:
        ping = C.Timing(1)
        for i in range(210):
            t0 = time.perf_counter()
            client.list_collections()
            if i >= 10:
                ping.times.append(time.perf_counter() - t0)
        C.log(f"  floor: ListCollections (gRPC + one Ray actor call) p50 {ping.pct(50)*1e3:.2f} ms, "
              f"p99 {ping.pct(99)*1e3:.2f} ms")
        runs, ingests = [], []
        for shards in a.shards:
            name = f"bench-{shards}sh-{uuid.uuid4().hex[:6]}"
            client.create_collection(name, dim, "cosine", shards=shards)
            t0 = time.perf_counter()
            written = client.upsert(name, ids, docs)
            dt = time.perf_counter() - t0
            info = client.describe_collection(name)
            ing = {"shards": shards, "vectors": int(written), "seconds": round(dt, 3),
                   "vectors_per_s": round(n / dt, 1), "stored": int(info.vectors)}
            ingests.append(ing)
            C.log(f"  ingest {shards} shard(s): {n} vectors in {dt:.2f} s = {n/dt:,.0f} vectors/s over gRPC "
                  f"(stored {info.vectors}; in-process engine upsert {engine_ingest:,.0f} vectors/s)")
            shard0 = ray.get_actor(info.shard_info[0].actor_name, namespace=namespace)
            floor = C.Timing(1)
            for i in range(210):
                t0 = time.perf_counter()
                ray.get(shard0.ready.remote())
                if i >= 10:
                    floor.times.append(time.perf_counter() - t0)
            ing["actor_ready_floor"] = floor.summary()
            C.log(f"  floor: empty ShardActor.ready() round trip p50 {floor.pct(50)*1e3:.2f} ms, "
                  f"p99 {floor.pct(99)*1e3:.2f} ms")
            for d in a.dims:
                plan = plan_search(cfg, dim, a.k, d)
                for b in a.batches:
                    qs = C.batches(queries, b)
                    calls = a.calls if b == 1 else a.batch_calls
                    fns = {"grpc": lambda q, d=d: client.search(name, q, a.k, d),
                           "grpc_ray": lambda q, d=d: client_ray.search(name, q, a.k, d),
                           "coord": lambda q, d=d: coord.search(name, q, a.k, d),
                           "coord_ray": lambda q, d=d: coord_ray.search(name, q, a.k, d),
                           "engine": lambda q, plan=plan: engine.search(q, plan)}
                    if shards == 1:  # the shard actor called directly: no coordinator, no gRPC
                        fns["actor"] = lambda q, plan=plan: ray.get(shard0.search_keys.remote(q, plan))
                    _threads.set_threads(actor_threads)
                    with C.OtherLoad() as load:
                        res, got = timed_calls(fns, qs, calls)
                    agree = {m: C.recall(np.concatenate(got[m]), np.concatenate(got["engine"]), a.k)
                             for m in fns if m != "engine"}
                    ref = None
                    if has_tpc and a.threads != actor_threads:
                        _threads.set_threads(a.threads)
                        ref = C.Timing(b)
                        for i in range(min(calls, 200)):
                            t0 = time.perf_counter()
                            engine.search(qs[i % len(qs)], plan)
                            ref.times.append(time.perf_counter() - t0)
                        _threads.set_threads(actor_threads)
                    g, r, e = res["grpc"], res["coord"], res["engine"]
                    gr, rr = res["grpc_ray"], res["coord_ray"]
                    pt = {"shards": shards, "dim": d, "batch": b, "calls": calls,
                          "grpc": g.summary(), "coord": r.summary(), "engine": e.summary(),
                          "grpc_ray": gr.summary(), "coord_ray": rr.summary(),
                          "engine_threads": actor_threads, "cpu_stall": load.stall,
                          "overhead_p50_ms": round((g.pct(50) - e.pct(50)) * 1e3, 3),
                          "coord_overhead_p50_ms": round((r.pct(50) - e.pct(50)) * 1e3, 3),
                          "grpc_overhead_p50_ms": round((g.pct(50) - r.pct(50)) * 1e3, 3),
                          "overhead_ray_calls_p50_ms": round((gr.pct(50) - e.pct(50)) * 1e3, 3),
                          "same_ids_as_engine": agree}
                    if ref is not None:
                        pt["engine_ref"] = {"threads": a.threads, **ref.summary()}
                    if "actor" in res:
                        pt["actor"] = res["actor"].summary()
                    runs.append(pt)
                    C.log(f"  {shards} shard(s) dim {d:>3} batch {b:>2}: gRPC p50 {g.pct(50)*1e3:6.2f} ms "
                          f"p99 {g.pct(99)*1e3:6.2f} ms ({g.qps_mean:7.1f} QPS) | coordinator p50 "
                          f"{r.pct(50)*1e3:6.2f} | with Ray calls: gRPC {gr.pct(50)*1e3:6.2f}, coordinator "
                          f"{rr.pct(50)*1e3:6.2f} | engine({actor_threads}t) p50 {e.pct(50)*1e3:6.2f} ms"
                          + (f", engine({a.threads}t) {ref.pct(50)*1e3:6.2f}" if ref else "")
                          + (f" | actor direct p50 {res['actor'].pct(50)*1e3:6.2f}" if "actor" in res else "")
                          + f" | overhead p50 {pt['overhead_p50_ms']:+.2f} ms"
                          + f" | ids agree {agree['grpc']:.4f}"
                          + (f" | CPU stall {100 * load.stall:.0f}%" if load.stall is not None else ""))
            client.drop_collection(name)
    finally:
        client.close()
        client_ray.close()
        gw.stop()
        gw_ray.stop()
        ray.shutdown()

    payload = {"config": {"docs": n, "dim": dim, "k": a.k, "shards": a.shards, "dims": a.dims,
                          "threads": a.threads,
                          "batches": a.batches, "calls": a.calls, "batch_calls": a.batch_calls,
                          "ray_num_cpus": a.num_cpus, "actor_threads_flag": a.actor_threads,
                          "data": str(a.data or C.DEFAULT_DATA)},
               "machine": C.machine(), "ray_start_s": round(ray_start, 2),
               "actor_threads": {"blas": actor_threads, **probe}, "driver_pools": _threads.pools(),
               "ping_list_collections": ping.summary(), "engine_ingest_vectors_per_s": round(engine_ingest, 1),
               "ingest": ingests, "points": runs,
               "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
               "wall_s": round(time.perf_counter() - t_start, 1)}
    path = C.write_results(a.out, payload)
    print()
    print(report(payload))
    C.log(f"\nwrote {path.relative_to(C.REPO)} in {payload['wall_s']:.0f} s")


def report(r: dict) -> str:
    rows = [[i["shards"], f"{i['vectors']:,}", f"{i['seconds']:.2f}", f"{i['vectors_per_s']:,.0f}",
             f"{i['actor_ready_floor']['p50_ms']:.2f}"] for i in r["ingest"]]
    out = [C.markdown_table(["shards", "vectors", "seconds", "vectors/s (gRPC Upsert)",
                             "empty actor call p50 ms"], rows)
           + f"\n\nIn-process ShardEngine.upsert: {r['engine_ingest_vectors_per_s']:,.0f} vectors/s. "
           f"ListCollections floor (gRPC + one Ray call): p50 {r['ping_list_collections']['p50_ms']:.2f} ms."]
    rows = []
    for p in r["points"]:
        g, co, e = p["grpc"], p["coord"], p["engine"]
        ref = p.get("engine_ref")
        rows.append([p["shards"], p["dim"], p["batch"], p["calls"],
                     f"{g['p50_ms']:.2f} / {g['p99_ms']:.2f}", f"{g['qps_mean']:,.0f}",
                     f"{co['p50_ms']:.2f}", f"{p['grpc_ray']['p50_ms']:.2f}", f"{p['coord_ray']['p50_ms']:.2f}",
                     f"{p['actor']['p50_ms']:.2f}" if "actor" in p else "-",
                     f"{e['p50_ms']:.2f} / {e['p99_ms']:.2f}",
                     f"{ref['p50_ms']:.2f}" if ref else "not run",
                     f"**{p['overhead_p50_ms']:+.2f}**", f"{p['coord_overhead_p50_ms']:+.2f}",
                     f"{p['overhead_ray_calls_p50_ms']:+.2f}",
                     f"{min(p['same_ids_as_engine'].values()):.4f}",
                     "n/a" if p.get("cpu_stall") is None else f"{100 * p['cpu_stall']:.0f}%"])
    t = r["actor_threads"]["blas"]
    out.append(C.markdown_table(
        ["shards", "dim", "batch", "calls", "gRPC p50 / p99 ms", "gRPC QPS", "coordinator p50 ms",
         "gRPC, Ray calls p50 ms", "coordinator, Ray calls p50 ms", "bare actor call p50 ms",
         f"engine ({t} thread{'s' if t > 1 else ''}) p50 / p99 ms",
         f"engine ({r['config'].get('threads', 2)} threads) p50 ms", "overhead p50 ms (gRPC - engine)",
         "of which below gRPC (coordinator - engine)", "overhead with Ray calls", "same ids (min)",
         "CPU stall"], rows))
    return "\n\n".join(out)


if __name__ == "__main__":
    main()
