"""Server side: ShardEngine, shard actors, coordinator, gateway, CLI.

For Ray jobs: `nestvec.cluster.connect(namespace=...)` returns a Coordinator
attached to a running cluster's shards (no gRPC hop). Imported lazily so that
`nestvec.cluster._engine.shard_engine` (pure numpy) can be used without loading Ray.
"""
__all__ = ["Coordinator", "connect"]


def __getattr__(name):
    if name in __all__:
        from nestvec.cluster._distributed import coordinator
        return getattr(coordinator, name)
    raise AttributeError(f"module 'nestvec.cluster' has no attribute {name!r}")
