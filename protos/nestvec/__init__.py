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
    "AlreadyExists", "DeadlineExceeded", "FailedPrecondition", "InvalidArgument", "NestvecError", "NotFound",
    "PermissionDenied", "ResourceExhausted", "Unauthenticated", "Unavailable", "__version__",
]
