"""Layer 1, the search core: pure numpy (plus optional FAISS / hnswlib kernels).

What a collection is (collection, limits), one shard's exact search (shard_engine),
its top-k and merge primitives (topk, funnel_rounds), low-precision copies (lowp),
kernels and the threaded scan (kernels, parallel), ANN graphs as data structures
(ann_index, ann_sq) and the funnel cost model (planner).

May import: numpy, faiss, hnswlib, `nestvec.errors`. Never Ray, gRPC, files, or
another layer (tests/test_layering.py enforces it). Internal: no stability promise.
"""
