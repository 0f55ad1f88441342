"""nestvec: distributed vector search for Matryoshka embeddings.

The public API in one place: the gRPC SDK (`Client`, `AsyncClient`), the error
family, and `connect()` for Ray jobs that talk to the shards without gRPC.
"""
from nestvec.errors import (AlreadyExists, DeadlineExceeded, FailedPrecondition, InvalidArgument,
                            NestvecError,
                            NotFound, PermissionDenied, ResourceExhausted, Unauthenticated,
                            Unavailable)

__version__ = "0.1.0"

__all__ = [
    "AsyncClient", "Client", "connect",
    "AlreadyExists", "DeadlineExceeded", "FailedPrecondition", "InvalidArgument", "NestvecError", "NotFound",
    "PermissionDenied", "ResourceExhausted", "Unauthenticated", "Unavailable", "__version__",
]


def __getattr__(name):
    """The SDK and connect() load on first use: `import nestvec.errors` stays free of
    gRPC and Ray (the engine layer imports it)."""
    if name in ("Client", "AsyncClient"):
        from nestvec import client
        return getattr(client, name)
    if name == "connect":
        from nestvec.cluster import connect
        return connect
    raise AttributeError(f"module 'nestvec' has no attribute {name!r}")
