"""Ingest with payloads vs without, on one server, in one run (issue 20's ingest target:
three payload fields at >= 0.8x the rate without).

Starts one `nestvec serve --data-dir <tmp>` (durable, --fsync always, 2 shards), then
upserts corpusA over gRPC in batches of 4,096, alternating, collection by collection:
`plain` (vectors only) and `payload` (vectors + pos, lexname and gloss_chars from
../shared/data/corpusA/payload.jsonl.gz: a keyword, a keyword with 45 values, an int),
each into a fresh collection, `--rounds` times. Reports rows/s per path (median over
rounds) and the ratio.

    .venv/bin/python bench/bench_payload_ingest.py            # ~1-2 min on 2 cores
    .venv/bin/python bench/bench_payload_ingest.py --docs 20000 --rounds 1   # smoke
"""
from __future__ import annotations

import argparse
import gzip
import json
import os
import pathlib
import socket
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

REPO = pathlib.Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "corpusA"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main(argv=None) -> dict:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--docs", type=int, default=100_000)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--batch", type=int, default=4096)
    p.add_argument("--out", default=None)
    args = p.parse_args(argv)
    from nestvec.client import Client

    docs = np.load(DATA / "embeddings.npz")["docs"][: args.docs].astype(np.float32)
    with gzip.open(DATA / "payload.jsonl.gz", "rt") as f:
        rows = [json.loads(line) for _, line in zip(range(args.docs), f)]
    columns = {k: [r[k] for r in rows] for k in ("pos", "lexname", "gloss_chars")}
    ids = np.arange(docs.shape[0])
    port = free_port()
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    with tempfile.TemporaryDirectory() as tmp:
        server = subprocess.Popen([sys.executable, "-m", "nestvec.cluster._ops.cli", "serve", "--port",
                                   str(port), "--data-dir", tmp, "--shards", "2",
                                   "--namespace", f"bench-pi-{port}"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
        try:
            address = f"127.0.0.1:{port}"
            end = time.monotonic() + 120
            while True:
                try:
                    with Client(address, timeout=5) as c:
                        c.list_collections()
                    break
                except Exception:
                    if time.monotonic() > end:
                        raise
                    time.sleep(0.5)
            rates: dict[str, list[float]] = {"plain": [], "payload": []}
            with Client(address, timeout=300) as c:
                for r in range(args.rounds):
                    for path in ("plain", "payload"):
                        name = f"{path}-{r}"
                        c.create_collection(name, docs.shape[1], "cosine", shards=2)
                        t = time.perf_counter()
                        for s in range(0, docs.shape[0], args.batch):
                            sl = slice(s, s + args.batch)
                            payload = {k: v[sl] for k, v in columns.items()} if path == "payload" else None
                            c.upsert(name, ids[sl], docs[sl], payload=payload)
                        rates[path].append(docs.shape[0] / (time.perf_counter() - t))
                        if path == "payload":  # what went in is there
                            assert c.count(name, {"pos": "noun"}) == columns["pos"].count("noun")
                        c.drop_collection(name)
                        print(f"round {r + 1}/{args.rounds} {path:8s} {rates[path][-1]:10,.0f} rows/s",
                              flush=True)
        finally:
            server.terminate()
            server.wait(60)
    med = {k: statistics.median(v) for k, v in rates.items()}
    result = {"docs": int(docs.shape[0]), "batch": args.batch, "rows_per_s": med,
              "ratio": med["payload"] / med["plain"], "rounds": rates}
    print(f"\nplain {med['plain']:,.0f} rows/s, with 3 payload fields {med['payload']:,.0f} rows/s: "
          f"{result['ratio']:.2f}x")
    if args.out:
        pathlib.Path(args.out).write_text(json.dumps(result, indent=2))
    return result


if __name__ == "__main__":
    main()
