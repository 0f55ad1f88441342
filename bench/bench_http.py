"""HTTP/JSON API vs gRPC on the same server and data: single-query latency, batched throughput.

Starts one `nestvec serve --in-memory --http-port` process (2 shards by default),
loads corpusA (../shared/data/corpusA/embeddings.npz; random vectors if absent)
over gRPC, then times sequential searches (one request in flight), interleaved
call by call so drift hits every path alike:

- `grpc`:        nestvec.client.Client.search (packed float32 Matrix, packed results);
- `http_packed`: POST /v1/collections/{c}/search with the proto3 JSON Matrix (base64
                 little-endian float32), reply in proto JSON (ids/scores base64), decoded
                 with numpy;
- `http_json`:   the same with plain number arrays (`"queries": [[...]]`) and `?form=plain`
                 (ids/scores as nested numbers).

HTTP goes over one persistent http.client connection (as gRPC keeps one channel).
Every path's ids are checked equal to gRPC's before timing.

    .venv/bin/python bench/bench_http.py                   # ~2-3 min on 2 cores
    .venv/bin/python bench/bench_http.py --docs 20000 --calls 100 --batch-calls 20   # smoke
"""
from __future__ import annotations

import argparse
import base64
import http.client
import json
import os
import pathlib
import socket
import subprocess
import sys
import time
import uuid

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
DEFAULT_DATA = REPO.parent / "shared" / "data" / "corpusA" / "embeddings.npz"


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--data", default=str(DEFAULT_DATA))
    p.add_argument("--docs", type=int, default=None, help="use only the first N docs")
    p.add_argument("--shards", type=int, default=2)
    p.add_argument("--dim", type=int, default=0, help="prefix dim to rank at (0: full)")
    p.add_argument("-k", type=int, default=10)
    p.add_argument("--calls", type=int, default=300, help="sequential single-query calls per path")
    p.add_argument("--batch", type=int, default=32, help="queries per batched call")
    p.add_argument("--batch-calls", type=int, default=60, help="sequential batched calls per path")
    p.add_argument("--out", default=None, help="also write the results as JSON to this file")
    return p.parse_args(argv)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load(args):
    path = pathlib.Path(args.data)
    if path.exists():
        z = np.load(path)
        docs, queries, source = z["docs"].astype(np.float32), z["queries"].astype(np.float32), str(path)
    else:
        rng = np.random.default_rng(0)
        docs = rng.standard_normal((100_000, 384), dtype=np.float32)
        queries = rng.standard_normal((1000, 384), dtype=np.float32)
        source = "random normal [100000, 384] (corpusA not found)"
    if args.docs:
        docs = docs[: args.docs]
    return docs, queries, source


def start_server(args):
    grpc_port, http_port = free_port(), free_port()
    env = dict(os.environ, RAY_AUTH_MODE=os.environ.get("RAY_AUTH_MODE", "disabled"),
               RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.Popen([sys.executable, "-m", "nestvec.cluster._ops.cli", "--log-level", "WARNING",
                             "serve", "--in-memory",
                             "--port", str(grpc_port), "--http-port", str(http_port),
                             "--shards", str(args.shards), "--namespace", f"bench-http-{uuid.uuid4().hex[:8]}"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    from nestvec.client import Client
    from nestvec.errors import NestvecError
    deadline = time.time() + 180
    while True:
        try:
            with Client(f"127.0.0.1:{grpc_port}", timeout=5) as c:
                c.list_collections()
            conn = http.client.HTTPConnection("127.0.0.1", http_port, timeout=60)
            conn.request("GET", "/healthz")
            ok = conn.getresponse().status == 200
            conn.close()
            if ok:
                break
        except (NestvecError, OSError):
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                sys.exit("nestvec serve did not start")
            time.sleep(0.5)
    return proc, grpc_port, http_port


class HttpSearch:
    def __init__(self, port: int, collection: str, packed: bool, k: int, dim: int):
        self.conn = http.client.HTTPConnection("127.0.0.1", port, timeout=120)
        self.packed, self.k, self.dim = packed, k, dim
        self.path = f"/v1/collections/{collection}/search" + ("" if packed else "?form=plain")

    def __call__(self, q: np.ndarray) -> np.ndarray:
        if self.packed:
            q32 = np.ascontiguousarray(q, dtype="<f4")
            queries = {"rows": q32.shape[0], "dim": q32.shape[1], "dtype": "FLOAT32",
                       "data": base64.b64encode(q32.tobytes()).decode()}
        else:
            queries = q.tolist()
        body = json.dumps({"queries": queries, "k": self.k, "dim": self.dim}).encode()
        self.conn.request("POST", self.path, body, {"content-type": "application/json"})
        resp = self.conn.getresponse()
        data = resp.read()
        if resp.status != 200:
            raise RuntimeError(f"HTTP {resp.status}: {data[:300]!r}")
        r = json.loads(data)
        if self.packed:
            ids = np.frombuffer(base64.b64decode(r["ids"]), dtype="<u8").reshape(r["queries"], r["k"])
            np.frombuffer(base64.b64decode(r["scores"]), dtype="<f4")
            return ids
        np.asarray(r["scores"], dtype=np.float32)
        return np.asarray(r["ids"], dtype=np.uint64)


def run(paths: dict, batches: list[np.ndarray]) -> dict:
    """Interleaved sequential calls: each batch goes to every path in turn. Seconds per call."""
    times = {name: [] for name in paths}
    for q in batches:
        for name, fn in paths.items():
            t = time.perf_counter()
            fn(q)
            times[name].append(time.perf_counter() - t)
    return {n: np.array(t) for n, t in times.items()}


def main(argv=None) -> int:
    args = parse_args(argv)
    docs, queries, source = load(args)
    from nestvec.client import Client
    proc, grpc_port, http_port = start_server(args)
    try:
        client = Client(f"127.0.0.1:{grpc_port}", timeout=120)
        name = "bench-http"
        client.create_collection(name, dim=docs.shape[1], metric="cosine")
        t = time.perf_counter()
        client.upsert(name, np.arange(docs.shape[0]), docs)
        print(f"loaded {docs.shape[0]} x {docs.shape[1]} from {source} in {time.perf_counter() - t:.1f}s "
              f"({args.shards} shards); searching k={args.k} at dim {args.dim or docs.shape[1]}", flush=True)
        paths = {
            "grpc": lambda q: client.search(name, q, k=args.k, dim=args.dim or None).ids,
            "http_packed": HttpSearch(http_port, name, True, args.k, args.dim),
            "http_json": HttpSearch(http_port, name, False, args.k, args.dim),
        }
        # same answers on every path
        check = queries[: args.batch]
        want = paths["grpc"](check)
        for n, fn in paths.items():
            assert np.array_equal(fn(check), want), f"{n} returned other ids than gRPC"
        run(paths, [queries[i: i + 1] for i in range(20)])  # warm-up
        rng = np.random.default_rng(1)
        singles = [queries[i: i + 1] for i in rng.integers(0, queries.shape[0], args.calls)]
        lat = run(paths, singles)
        starts = rng.integers(0, queries.shape[0] - args.batch, args.batch_calls)
        batched = run(paths, [queries[s: s + args.batch] for s in starts])
    finally:
        proc.terminate()
        try:
            proc.wait(60)
        except subprocess.TimeoutExpired:
            proc.kill()

    rows = {}
    for n in paths:
        p50, p99 = np.percentile(lat[n], [50, 99]) * 1000
        qps = args.batch * len(batched[n]) / batched[n].sum()
        rows[n] = {"p50_ms": p50, "p99_ms": p99, "batch_p50_ms": float(np.median(batched[n]) * 1000),
                   "batch_qps": qps}
    g = rows["grpc"]
    print(f"\n{args.calls} single-query calls and {args.batch_calls} calls of {args.batch} queries per "
          f"path, interleaved; {docs.shape[0]} docs, dim {args.dim or docs.shape[1]}, k={args.k}, "
          f"{args.shards} shards, {os.cpu_count()} cores\n")
    head = (f"{'path':<12} {'p50 ms':>8} {'p99 ms':>8} {'p50/grpc':>9} {'batch p50 ms':>13} "
            f"{'queries/s':>10} {'qps/grpc':>9}")
    print(head)
    print("-" * len(head))
    for n, r in rows.items():
        print(f"{n:<12} {r['p50_ms']:8.2f} {r['p99_ms']:8.2f} {r['p50_ms'] / g['p50_ms']:8.2f}x "
              f"{r['batch_p50_ms']:13.2f} {r['batch_qps']:10.0f} {r['batch_qps'] / g['batch_qps']:8.2f}x")
    if args.out:
        with open(args.out, "w") as f:
            json.dump({"args": vars(args), "source": source, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
