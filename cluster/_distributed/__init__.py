"""Layer 3, the Ray cluster: shard and catalog actors, and the coordinator.

shard_actor (a ShardActor around one DurableShard), shared_lock (its reader/writer
lock), direct (the same-node search socket), catalog (the collection catalog actor),
placement and routing (where shards run, which shard owns an id), fanout (running
a plan's actor calls: retries, deadlines, partial answers, sync and async), shard_set
(a collection's shard handles), coordinator (the operations, written once as plans),
search_rounds (funnels across shards in rounds), calibration (target_recall curves),
batcher (concurrent searches stacked into shared shard calls).

May import: layers 1-2. Never gRPC. Internal: no stability promise.
"""
