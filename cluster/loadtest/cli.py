"""`nestvec loadtest`: flags, query loading, and the run (cluster/_ops/cli.py only hooks this in)."""
from __future__ import annotations

import json
import os
import pathlib
import sys

import numpy as np

from nestvec.cluster.loadtest import report, runner
from nestvec.cluster.loadtest.generator import Connection, Plan
from nestvec.cluster.loadtest.ramp import find_knee
from nestvec.cluster.loadtest.workload import QuerySet, Workload, load_queries


def add_parser(sub) -> None:
    p = sub.add_parser("loadtest", help="load-test a nestvec server (closed/open loop, ramp, soak)",
                       description="Drive a nestvec server with searches (and writes) from several "
                                   "generator processes or Ray actors; report throughput, latency "
                                   "percentiles, errors, recall. See docs/load-testing.md.")
    p.add_argument("--address", default="127.0.0.1:50051", help="the server (default %(default)s)")
    p.add_argument("--collection", required=True)
    p.add_argument("--api-key", default=os.environ.get("NESTVEC_API_KEY"),
                   help="API key (default: $NESTVEC_API_KEY)")
    p.add_argument("--ca", default=None, help="PEM CA of the server's TLS certificate")

    m = p.add_argument_group("how to drive")
    m.add_argument("--mode", choices=("closed", "open", "ramp"), default="closed",
                   help="closed: --clients concurrent clients; open: Poisson arrivals at --rate "
                        "(latency from intended send times); ramp: open-loop steps from --rate up "
                        "until p99 > --p99-bound-ms")
    m.add_argument("--clients", type=int, default=16, help="closed loop: concurrent clients")
    m.add_argument("--rate", type=float, default=100.0, help="open loop / ramp start: calls per second")
    m.add_argument("--max-in-flight", type=int, default=2000,
                   help="open loop: most calls in flight (later calls wait, still timed from "
                        "their intended time)")
    m.add_argument("--duration", type=float, default=10.0, help="seconds (per step when ramping)")
    m.add_argument("--workers", type=int, default=max(1, min(os.cpu_count() or 1, 4)),
                   help="generator processes (or Ray actors); default %(default)s")
    m.add_argument("--channels", type=int, default=1, help="gRPC connections per generator")
    m.add_argument("--window", type=float, default=None,
                   help="seconds per time-series window (default: duration/60, at least 1)")
    m.add_argument("--ray-address", default=None,
                   help="run the generators as Ray actors spread over this Ray cluster's nodes")
    m.add_argument("--generator-cpus", type=float, default=1.0,
                   help="with --ray-address: CPUs each generator actor reserves (default %(default)s)")
    m.add_argument("--timeout", type=float, default=30.0, help="per-call deadline, seconds")

    w = p.add_argument_group("workload")
    w.add_argument("--k", type=int, default=10)
    w.add_argument("--dim", type=int, default=0, help="prefix dim (0: full)")
    w.add_argument("--funnel", default="", help="stages as DIM:CANDIDATES[,DIM:CANDIDATES...]")
    w.add_argument("--batch", type=int, default=1, help="query rows per Search call")
    w.add_argument("--queries", default=None,
                   help=".npz with 'queries' (and 'gt_ids' for recall@k, corpusA's layout) or a .npy")
    w.add_argument("--sample-queries", type=int, default=0,
                   help="instead of --queries: this many stored vectors, fetched by ids drawn "
                        "from [0, vector count) (collections loaded with ids 0..n-1)")
    w.add_argument("--write-ratio", type=float, default=0.0, help="fraction of calls that are writes")
    w.add_argument("--delete-ratio", type=float, default=0.0, help="fraction of writes that are deletes")
    w.add_argument("--write-batch", type=int, default=1, help="ids per Upsert/Delete call")
    w.add_argument("--write-id-base", type=int, default=None,
                   help="first id writes use (default: 2**60 plus a random per-run offset, so "
                        "runs never reuse each other's ids)")
    w.add_argument("--seed", type=int, default=0)
    w.add_argument("--create-from", default=None,
                   help="if the collection does not exist, create it (cosine) and load this .npz's "
                        "'docs' with ids 0..n-1 first")
    w.add_argument("--shards", type=int, default=0, help="shards for --create-from (0: server default)")

    r = p.add_argument_group("ramp")
    r.add_argument("--p99-bound-ms", type=float, default=50.0)
    r.add_argument("--ramp-factor", type=float, default=1.5)
    r.add_argument("--max-rate", type=float, default=100_000.0)
    r.add_argument("--refine", type=int, default=2, help="bisection steps after the first failure")

    o = p.add_argument_group("output")
    o.add_argument("--json", default=None, help="write the result (or the ramp) as JSON here")
    o.add_argument("--plot", default=None, help="write the PNG here (latency over time + histogram; "
                                                "for a ramp, also PATH-ramp.png)")
    o.add_argument("--verify", action="store_true",
                   help="after the run, check every acknowledged write against the server")
    o.add_argument("--quiet", action="store_true", help="no live progress line")


def _funnel(text: str) -> list[tuple[int, int]]:
    out = []
    for part in filter(None, text.split(",")):
        d, _, c = part.partition(":")
        out.append((int(d), int(c)))
    return out


def _client(args):
    from nestvec.client import Client
    ca = pathlib.Path(args.ca).read_bytes() if args.ca else None
    return Client(args.address, timeout=600, api_key=args.api_key, root_certificates=ca)


def _prepare(args, client) -> tuple[QuerySet, int]:
    """Create/load the collection if asked; pick the queries. Returns (queries, vector count)."""
    from nestvec.errors import NotFound
    try:
        count = client.describe_collection(args.collection).vectors
    except NotFound:
        if not args.create_from:
            raise
        docs = np.load(args.create_from)["docs"].astype(np.float32)
        client.create_collection(args.collection, dim=docs.shape[1], shards=args.shards or None)
        step = 20_000
        for s in range(0, docs.shape[0], step):
            client.upsert(args.collection, np.arange(s, min(s + step, docs.shape[0])), docs[s: s + step])
        count = client.describe_collection(args.collection).vectors
        print(f"loaded {count} vectors into {args.collection!r} from {args.create_from}", file=sys.stderr)
    source = args.queries or (args.create_from if not args.sample_queries else None)
    if source:
        return load_queries(source), count
    n = args.sample_queries or 1000
    ids = np.random.default_rng(args.seed).integers(0, max(count, 1), size=n).astype(np.uint64)
    got = client.get(args.collection, np.unique(ids))
    if len(got) == 0:
        raise SystemExit(f"no stored vectors found among {n} ids drawn from [0, {count}): "
                         "pass --queries FILE")
    return QuerySet(got.vectors), count


def run(args) -> int:
    conn = Connection(args.address, args.api_key,
                      pathlib.Path(args.ca).read_bytes() if args.ca else None)
    workload = Workload(collection=args.collection, k=args.k, dim=args.dim, funnel=_funnel(args.funnel),
                        batch=args.batch, write_ratio=args.write_ratio, delete_ratio=args.delete_ratio,
                        write_batch=args.write_batch, write_id_base=args.write_id_base,
                        timeout=args.timeout, seed=args.seed)
    with _client(args) as client:
        queries, count_before = _prepare(args, client)
    window = args.window or max(1.0, args.duration / 60)
    plan = Plan(mode="open" if args.mode == "ramp" else args.mode,
                concurrency=args.clients if args.mode == "closed" else args.max_in_flight,
                rate=args.rate, duration=args.duration, window=window, channels=args.channels)
    progress = None if args.quiet else sys.stderr

    def run_once(p: Plan):
        if args.ray_address:
            return runner.run_ray(conn, workload, queries, p, args.workers, args.ray_address,
                                  progress=progress, cpus_per_generator=args.generator_cpus)
        return runner.run_local(conn, workload, queries, p, args.workers, progress)

    if args.mode == "ramp":
        ramp = find_knee(run_once, plan, args.rate, args.ramp_factor, args.p99_bound_ms,
                         args.max_rate, args.refine)
        print(_ramp_table(ramp))
        if ramp.knee is not None:
            print("\nat the knee:\n" + report.table(ramp.knee))
        if args.json:
            pathlib.Path(args.json).write_text(json.dumps(ramp.summary(), indent=1) + "\n")
        if args.plot:
            stem = pathlib.Path(args.plot)
            report.plot_ramp(ramp.steps, stem.with_name(stem.stem + "-ramp.png"), args.p99_bound_ms,
                             f"{args.collection}: open-loop ramp, dim {args.dim or 'full'}, batch {args.batch}")
            if ramp.knee is not None:
                report.plot(ramp.knee, stem)
        return 0 if ramp.knee_rate is not None else 1

    res = run_once(plan)
    print(report.table(res))
    extra = {}
    ok = True
    if args.verify:
        from nestvec.cluster.loadtest.verify import verify_ledger
        with _client(args) as client:
            v = verify_ledger(client, args.collection, res.ledger, count_before, args.seed)
        print(v.text())
        extra["verification"] = {**v.__dict__, "ok": v.ok}
        ok = v.ok
    if args.json:
        report.write_json(res, args.json, extra)
    if args.plot:
        report.plot(res, args.plot)
    return 0 if ok else 1


def _ramp_table(ramp) -> str:
    lines = [f"{'offered/s':>10} {'achieved/s':>11} {'p50 ms':>8} {'p99 ms':>8} {'errors':>7} {'gen CPU':>8}  result"]
    for s in ramp.steps:
        lines.append(f"{s['rate']:>10.1f} {s['throughput']:>11.1f} {s['p50_ms'] or 0:>8.2f} {s['p99_ms'] or 0:>8.2f} "
                     f"{s['error_fraction']:>7.2%} {s['generator_cpu']:>8.0%}  "
                     + ("ok" if s["passed"] else s["why_not"]))
    lines.append(f"knee (highest rate with p99 <= {ramp.bound_ms:g} ms): "
                 + (f"{ramp.knee_rate:.1f} calls/s" if ramp.knee_rate else "none: the first step already failed"))
    return "\n".join(lines)
