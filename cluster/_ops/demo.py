"""`nestvec demo`: a newcomer's first run, over real gRPC.

Starts an embedded cluster (or uses a running server given by --address),
loads the WordNet sample shipped in the package, searches it at several prefix
dims, a funnel and the full dim, and prints recall@10 against full-dim exact
search, latency, and what a few queries find at a small prefix and at full dim.
"""
from __future__ import annotations

import gzip
import json
import pathlib
import time
import uuid
from contextlib import contextmanager

import numpy as np

from nestvec.client import Client

SAMPLE = pathlib.Path(__file__).resolve().parent / "sample"
DIMS = (32, 64, 128, 256)


def load_sample() -> dict:
    z = np.load(SAMPLE / "corpusA_sample.npz")
    with gzip.open(SAMPLE / "corpusA_texts.json.gz", "rt") as f:
        texts = json.load(f)
    return {"doc_ids": z["doc_ids"], "docs": z["docs"].astype(np.float32),
            "query_ids": z["query_ids"], "queries": z["queries"].astype(np.float32),
            "doc_text": {int(k): v for k, v in texts["docs"].items()},
            "query_text": {int(k): v for k, v in texts["queries"].items()},
            "relevant": {int(k): v for k, v in texts["relevant_doc_id"].items()}}


@contextmanager
def _server(address: str | None, shards: int):
    """Yield the address of a nestvec server: the given one, or an embedded one."""
    if address:
        yield address
        return
    from nestvec.cluster._distributed.coordinator import Coordinator
    from nestvec.cluster._server.serve import GatewayThread, start_ray
    import ray

    print("starting an embedded Ray cluster and gateway on 127.0.0.1 ...", flush=True)
    start_ray()
    gateway = GatewayThread(Coordinator(default_shards=shards, create_catalog=True), port=0)
    try:
        yield gateway.address
    finally:
        gateway.stop()
        ray.shutdown()


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / len(t) for f, t in zip(found.tolist(), truth.tolist())]))


def _timed_searches(client: Client, name: str, queries: np.ndarray, **kw) -> tuple[np.ndarray, float]:
    """One search per query, as an application would send them; (ids, p50 latency ms)."""
    ids, lat = [], []
    for q in queries:
        t = time.perf_counter()
        ids.append(client.search(name, q, k=10, **kw).ids[0])
        lat.append(time.perf_counter() - t)
    return np.stack(ids), 1000 * float(np.median(lat))


def run(address: str | None = None, shards: int = 2, examples: int = 3) -> None:
    s = load_sample()
    with _server(address, shards) as addr, Client(addr) as client:
        name = f"demo-wordnet-{uuid.uuid4().hex[:6]}"
        client.create_collection(name, dim=384, metric="cosine", shards=shards)
        try:
            _ingest(client, name, s)
            _report(client, name, s, examples)
        finally:
            client.drop_collection(name)


def _ingest(client: Client, name: str, s: dict) -> None:
    n = len(s["doc_ids"])
    t = time.perf_counter()

    def batches(step=500):
        for i in range(0, n, step):
            yield s["doc_ids"][i: i + step], s["docs"][i: i + step]
            print(f"\r  ingesting {min(i + step, n):>5}/{n} vectors", end="", flush=True)

    res = client.upsert_stream(name, batches())
    print(f"\r  ingested {res.upserted} WordNet glosses (384-dim MiniLM, Matryoshka-ordered) in "
          f"{time.perf_counter() - t:.2f} s over gRPC")


def _report(client: Client, name: str, s: dict, examples: int) -> None:
    q = s["queries"]
    full_ids, full_ms = _timed_searches(client, name, q)
    rows = [(f"{d}", *_score(client, name, q, full_ids, dim=d)) for d in DIMS]
    rows.append(("64 -> 384 funnel (keep 100)", *_score(client, name, q, full_ids,
                                                         funnel=[(64, 100)])))
    rows.append(("384 (full)", 1.0, full_ms))
    print(f"\n{len(q)} queries, k=10, recall@10 against exact full-384 search:\n")
    print(f"  {'dim':<28} {'recall@10':>9} {'p50 latency':>12}")
    for label, rec, ms in rows:
        print(f"  {label:<28} {rec:>9.3f} {ms:>9.2f} ms")
    print("\nWhat a 32-dim prefix keeps (12x smaller) vs the full 384 dims:")
    small = client.search(name, q, k=3, dim=32).ids
    for i in _examples(s, full_ids[:, :3], small, examples):
        qid = int(s["query_ids"][i])
        print(f"\n  query: {s['query_text'][qid]!r}")
        for label, ids in (("dim 32 ", small[i]), ("dim 384", full_ids[i][:3])):
            for rank, doc in enumerate(ids):
                mark = "*" if int(doc) == s["relevant"][qid] else " "
                print(f"    {label if rank == 0 else '       '} {mark} {_short(s['doc_text'][int(doc)])}")
    print("\n  (* = the gloss of the synset the query sentence came from)")


def _examples(s: dict, full: np.ndarray, small: np.ndarray, n: int) -> list[int]:
    """Queries whose source gloss the full dims rank in the top 3, those the
    32-dim prefix misses first: they show what truncation loses."""
    rel = np.array([s["relevant"][int(q)] for q in s["query_ids"]], dtype=np.uint64)[:, None]
    in_full, in_small = (full == rel).any(axis=1), (small == rel).any(axis=1)
    picks = list(np.flatnonzero(in_full & ~in_small)) + list(np.flatnonzero(in_full & in_small))
    return [int(i) for i in picks[:n]]


def _score(client, name, queries, truth, **kw) -> tuple[float, float]:
    ids, ms = _timed_searches(client, name, queries, **kw)
    return _recall(ids, truth), ms


def _short(text: str, width: int = 88) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."
