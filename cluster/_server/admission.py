"""Admission before a request body is read: API key and role from the call's metadata.

gRPC reads and parses a unary request before the servicer method runs, so a check
in the servicer (gateway.CallGuard) comes after the allocation: unauthenticated
200 MiB uploads raised a gateway by ~1.4 GiB. This interceptor runs on the
metadata alone. A refused call gets a request-streaming handler that aborts
without ever asking for the body, so at most gRPC's flow-control window of it is
buffered. The server-wide cap on concurrent calls is gRPC's own
`maximum_concurrent_rpcs` (serve.py), which also refuses before reading.
"""
from __future__ import annotations

import logging
import uuid

import grpc

from nestvec.cluster._server import auth

log = logging.getLogger("nestvec.gateway")

SERVICE_PREFIX = "/nestvec.v1.VectorSearch/"


def key_problem(keys: auth.KeyStore, call: str, metadata) -> tuple[grpc.StatusCode, str] | None:
    """(status, message) if a call with this metadata must be refused, else None."""
    header = dict(metadata or ()).get("authorization", "")
    scheme, _, key = header.partition(" ")
    if scheme.lower() != "bearer" or not key.strip():
        return grpc.StatusCode.UNAUTHENTICATED, "missing API key: send metadata 'authorization: Bearer <key>'"
    role = keys.role_for(key.strip())
    if role is None:
        return grpc.StatusCode.UNAUTHENTICATED, "unknown API key"
    if call in auth.CALL_ROLES and not auth.allows(role, call):
        return (grpc.StatusCode.PERMISSION_DENIED,
                f"{call} needs the {auth.CALL_ROLES[call]!r} role; this API key has {role!r}")
    return None


def _refusal(call: str, code: grpc.StatusCode, message: str) -> grpc.RpcMethodHandler:
    """A handler that refuses with a request id, like every other error the gateway returns."""
    request_id = uuid.uuid4().hex[:16]

    async def refuse(request_iterator, context):  # never iterates: the body stays unread
        log.info("request_id=%s method=%s code=%s error=%r", request_id, call, code.name, message)
        await context.abort(code, message, trailing_metadata=(("x-request-id", request_id),))
    return grpc.stream_unary_rpc_method_handler(refuse)


class Admission(grpc.aio.ServerInterceptor):
    """Refuses VectorSearch calls without a valid key for their role before their body is read.
    Health and reflection stay open (they carry no data)."""

    def __init__(self, keys: auth.KeyStore, metrics=None):
        self.keys = keys
        self.metrics = metrics

    async def intercept_service(self, continuation, details):
        if details.method.startswith(SERVICE_PREFIX):
            call = details.method[len(SERVICE_PREFIX):]
            problem = key_problem(self.keys, call, details.invocation_metadata)
            if problem is not None:
                if self.metrics is not None:
                    self.metrics.observe(call, problem[0].name, 0.0)
                return _refusal(call, *problem)
        return await continuation(details)
