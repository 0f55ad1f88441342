"""Layer 2, durability: files, no Ray, no gRPC.

The write-ahead log (wal), the data directory's layout and atomic writes (datadir),
one durable shard = engine + log + snapshots (durable_shard), and an ANN graph's
background builds and persistence beside its shard (ann_shard).

May import: layer 1 (`_engine`). Internal: no stability promise.
"""
