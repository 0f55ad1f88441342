"""Cut the demo sample shipped in the package from ../shared/data/corpusA.

    python cluster/_ops/sample/make_sample.py [path/to/shared/data/corpusA]

Keeps 300 queries and 4,000 documents: each kept query's relevant document
plus a seeded random fill, so the demo's example searches have a right answer
in the sample. Vectors stay float16 (as in corpusA); texts go to a gzip'd JSON.
"""
from __future__ import annotations

import gzip
import json
import pathlib
import sys

import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
N_DOCS, N_QUERIES, SEED = 4000, 300, 7


def main(src: pathlib.Path) -> None:
    z = np.load(src / "embeddings.npz")
    with gzip.open(src / "docs.jsonl.gz", "rt") as f:
        docs = [json.loads(line) for line in f]
    with gzip.open(src / "queries.jsonl.gz", "rt") as f:
        queries = [json.loads(line) for line in f]
    rng = np.random.default_rng(SEED)
    q_rows = np.sort(rng.choice(len(queries), N_QUERIES, replace=False))
    relevant = {queries[i]["relevant_doc_id"] for i in q_rows}
    rest = np.setdiff1d(np.arange(len(docs)), sorted(relevant))
    fill = rng.choice(rest, N_DOCS - len(relevant), replace=False)
    d_rows = np.sort(np.concatenate([sorted(relevant), fill]).astype(np.int64))
    np.savez_compressed(HERE / "corpusA_sample.npz",
                        doc_ids=d_rows.astype(np.uint64), docs=z["docs"][d_rows],
                        query_ids=q_rows.astype(np.uint64), queries=z["queries"][q_rows])
    texts = {"docs": {int(i): docs[i]["text"] for i in d_rows},
             "queries": {int(i): queries[i]["text"] for i in q_rows},
             "relevant_doc_id": {int(i): queries[i]["relevant_doc_id"] for i in q_rows}}
    with gzip.open(HERE / "corpusA_texts.json.gz", "wt") as f:
        json.dump(texts, f)


if __name__ == "__main__":
    default = pathlib.Path(__file__).resolve().parents[2].parent / "shared" / "data" / "corpusA"
    main(pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else default)
