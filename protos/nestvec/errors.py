"""The one exception family nestvec raises, on the server, in Ray jobs and in the SDK.

Each error carries `code`, the name of the gRPC status it maps to (plain strings,
so this module and the engine stay free of gRPC). The SDK turns a gRPC error
into the matching subclass, so `except nestvec.NotFound` works the same whether
the call went over the wire or through `nestvec.cluster.connect()`.
"""
from __future__ import annotations


class NestvecError(Exception):
    """Base class. `code` is a gRPC status name such as "INVALID_ARGUMENT"."""

    code = "UNKNOWN"

    def __init__(self, message: str, *, code: str | None = None, request_id: str = ""):
        super().__init__(message)
        self.message = message
        self.request_id = request_id  # the server's id for the call (its logs name it too)
        if code is not None:
            self.code = code

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class InvalidArgument(NestvecError):
    code = "INVALID_ARGUMENT"


class NotFound(NestvecError):
    code = "NOT_FOUND"


class AlreadyExists(NestvecError):
    code = "ALREADY_EXISTS"


class ResourceExhausted(NestvecError):
    code = "RESOURCE_EXHAUSTED"


class Unavailable(NestvecError):
    code = "UNAVAILABLE"


class DeadlineExceeded(NestvecError):
    code = "DEADLINE_EXCEEDED"


class FailedPrecondition(NestvecError):
    code = "FAILED_PRECONDITION"


class Internal(NestvecError):
    code = "INTERNAL"


class Unauthenticated(NestvecError):
    code = "UNAUTHENTICATED"


class PermissionDenied(NestvecError):
    code = "PERMISSION_DENIED"


BY_CODE: dict[str, type[NestvecError]] = {
    cls.code: cls
    for cls in (InvalidArgument, NotFound, AlreadyExists, ResourceExhausted, Unavailable,
                DeadlineExceeded, FailedPrecondition, Internal, Unauthenticated, PermissionDenied)
}


def from_code(code: str, message: str, request_id: str = "") -> NestvecError:
    """The subclass for a status name (NestvecError itself for codes without one)."""
    cls = BY_CODE.get(code)
    if cls:
        return cls(message, request_id=request_id)
    return NestvecError(message, code=code, request_id=request_id)
