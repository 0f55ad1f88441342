"""The server side of nestvec. Public here: what Ray jobs and embedding programs use.

    from nestvec.cluster import connect
    coord = connect(namespace="nestvec")     # attach to a running cluster's shards
    coord.search("docs", queries, k=10, dim=128)

Everything else lives in internal layer packages, bottom to top (imports run one
way only; tests/test_layering.py enforces it; docs/architecture.md maps them):
`_engine` (pure-numpy search core) <- `_storage` (WAL, snapshots, data directory)
<- `_distributed` (Ray actors, coordinator) <- `_server` (gRPC gateway) <- `_ops`
(CLI, demo, bulk jobs). `loadtest/` is the load tester, beside them.
Names are resolved lazily so that the engine can be imported without loading Ray.
"""
__all__ = ["ClusterSearchResult", "Coordinator", "DEFAULT_NAMESPACE", "GetResult", "ServeOptions",
           "connect", "serve"]

_HOME = {"ClusterSearchResult": "_distributed.coordinator", "Coordinator": "_distributed.coordinator",
         "DEFAULT_NAMESPACE": "_distributed.coordinator", "GetResult": "_distributed.coordinator",
         "connect": "_distributed.coordinator", "ServeOptions": "_server.serve", "serve": "_server.serve"}


def __getattr__(name):
    if name in _HOME:
        import importlib
        return getattr(importlib.import_module(f"nestvec.cluster.{_HOME[name]}"), name)
    raise AttributeError(f"module 'nestvec.cluster' has no attribute {name!r}")


def __dir__():
    return sorted(__all__)
