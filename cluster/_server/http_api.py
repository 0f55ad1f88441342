"""The HTTP/JSON API (docs/http.md): a thin transcoder in front of the gRPC gateway.

Like grpc-gateway or Envoy's gRPC-JSON transcoding, it holds no semantics of its
own. Each route turns its JSON body (plus the path's collection name) into the
RPC's request message with protobuf's `json_format.ParseDict` (unknown fields
refused), sends it to the *same* gRPC server over a private Unix socket (so the
servicer's validation, limits, batcher, metrics and role checks all apply
unchanged), and returns `json_format.MessageToDict` of the reply. gRPC status
codes map to HTTP ones (`HTTP_STATUS`); error bodies carry the gateway's message
and its `x-request-id`.

What this layer adds, and only this:
- routes (`ROUTES`, one per VectorSearch RPC; openapi.py documents them from the
  same table and the .proto descriptors);
- plain number arrays for `vectors` (Upsert) and `queries` (Search), converted to
  the proto's packed float32 Matrix, beside the proto3 JSON form (base64 bytes,
  float32 or float16); `?form=plain` returns packed arrays as nested numbers;
- the API key from `Authorization: Bearer <key>` or `api-key: <key>`, checked on
  the headers before the body is read (admission.key_problem, as gRPC's
  interceptor does), then forwarded as `authorization` metadata;
- a body limit of --max-message-bytes (413 past it), except upsert-stream's NDJSON
  form, which is streamed and limited per line like gRPC limits each message;
- TLS with the gRPC server's certificate (and client CA, for mutual TLS).
"""
from __future__ import annotations

import asyncio
import json
import logging
import os
import re
import shutil
import socket
import ssl
import tempfile
import uuid
from dataclasses import dataclass

import grpc
import numpy as np
from aiohttp import web
from google.protobuf import json_format
from google.protobuf.descriptor import FieldDescriptor
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nestvec import wire
from nestvec.cluster._server import admission, auth
from nestvec.cluster._engine.limits import DEFAULT_LIMITS, Limits
from nestvec.cluster._server.security import TlsConfig
from nestvec.errors import InvalidArgument, NestvecError, Unauthenticated, from_code
from nestvec.v1 import nestvec_pb2 as pb

log = logging.getLogger("nestvec.http")
SERVICE = pb.DESCRIPTOR.services_by_name["VectorSearch"]

# gRPC status -> HTTP status (the table in docs/http.md; grpc-gateway's mapping).
HTTP_STATUS = {
    "OK": 200, "CANCELLED": 499, "UNKNOWN": 500, "INVALID_ARGUMENT": 400, "DEADLINE_EXCEEDED": 504,
    "NOT_FOUND": 404, "ALREADY_EXISTS": 409, "PERMISSION_DENIED": 403, "RESOURCE_EXHAUSTED": 429,
    "FAILED_PRECONDITION": 400, "ABORTED": 409, "OUT_OF_RANGE": 400, "UNIMPLEMENTED": 501,
    "INTERNAL": 500, "UNAVAILABLE": 503, "DATA_LOSS": 500, "UNAUTHENTICATED": 401,
}


@dataclass(frozen=True)
class Route:
    rpc: str      # the VectorSearch method
    method: str   # HTTP method
    path: str     # {field} segments fill the request message's field of that name

    @property
    def path_fields(self) -> tuple[str, ...]:
        return tuple(re.findall(r"{(\w+)}", self.path))

    @property
    def has_body(self) -> bool:
        return self.method in ("POST", "PUT", "PATCH")


ROUTES = (
    Route("CreateCollection", "POST", "/v1/collections"),
    Route("ListCollections", "GET", "/v1/collections"),
    Route("DescribeCollection", "GET", "/v1/collections/{name}"),
    Route("DropCollection", "DELETE", "/v1/collections/{name}"),
    Route("Upsert", "POST", "/v1/collections/{collection}/upsert"),
    Route("UpsertStream", "POST", "/v1/collections/{collection}/upsert-stream"),
    Route("Delete", "POST", "/v1/collections/{collection}/delete"),
    Route("Get", "POST", "/v1/collections/{collection}/get"),
    Route("Search", "POST", "/v1/collections/{collection}/search"),
    Route("CreateIndex", "POST", "/v1/collections/{collection}/index"),
    Route("SetPayload", "POST", "/v1/collections/{collection}/set-payload"),
    Route("Count", "POST", "/v1/collections/{collection}/count"),
)

# Request fields that may also be sent as plain number arrays (-> a float32 Matrix).
PLAIN_MATRIX_FIELDS = {"UpsertRequest": ("vectors",), "SearchRequest": ("queries",)}
# Packed result arrays outside a Matrix: field -> (dtype, the fields giving its shape).
PACKED_ARRAYS = {"SearchResponse": {"ids": ("<u8", ("queries", "k")),
                                    "scores": ("<f4", ("queries", "k"))}}
FORMS = ("proto", "plain")
QUERY_PARAMS = ("form", "timeout")
_INT64 = {FieldDescriptor.TYPE_INT64, FieldDescriptor.TYPE_UINT64, FieldDescriptor.TYPE_SINT64,
          FieldDescriptor.TYPE_FIXED64, FieldDescriptor.TYPE_SFIXED64}
NDJSON_CHUNK = 1 << 16


def _request_id() -> str:
    return uuid.uuid4().hex[:16]


class HttpError(NestvecError):
    """A nestvec error answered with a specific HTTP status (413, 405)."""

    def __init__(self, status: int, code: str, message: str):
        super().__init__(message, code=code)
        self.status = status


# ----- JSON <-> messages ----------------------------------------------------------
def plain_matrix(values, what: str) -> pb.Matrix:
    """Nested number arrays ([rows][dim]; one flat row is one row) as a float32 Matrix."""
    try:
        arr = np.asarray(values)
    except ValueError:
        raise InvalidArgument(f"{what}: every row of a plain-array matrix must have the same "
                              "length") from None
    if arr.ndim == 1:  # one row, as the SDK reads a 1-D array
        arr = arr[None, :]
    if arr.ndim != 2:
        raise InvalidArgument(f"{what} must be a [rows][dim] array of numbers, got {arr.ndim} "
                              "levels of nesting")
    if arr.size and arr.dtype.kind not in "iuf":
        raise InvalidArgument(f"{what} must hold only numbers (or be a packed Matrix object "
                              "{rows, dim, dtype, data})")
    return wire.encode_matrix(arr.astype(np.float32))


def parse_request(route: Route, body, path: dict):
    """A JSON body (plus the path's fields) as the RPC's request message; InvalidArgument if not."""
    method = SERVICE.methods_by_name[route.rpc]
    cls = getattr(pb, method.input_type.name)
    if not isinstance(body, dict):
        raise InvalidArgument(f"the request body must be a JSON object (a {cls.DESCRIPTOR.full_name}), "
                              f"got a JSON {type(body).__name__}")
    body = dict(body)
    plain = {f: plain_matrix(body.pop(f), f) for f in PLAIN_MATRIX_FIELDS.get(cls.__name__, ())
             if isinstance(body.get(f), list)}
    for f, value in path.items():
        given = body.get(f)
        if given not in (None, "", value):
            raise InvalidArgument(f"the body's {f} {given!r} differs from the path's {value!r}")
        body[f] = value
    msg = cls()
    try:
        json_format.ParseDict(body, msg, ignore_unknown_fields=False)
    except json_format.ParseError as err:
        raise InvalidArgument(f"the request body is not a valid {cls.DESCRIPTOR.full_name}: "
                              f"{err}") from None
    for f, m in plain.items():
        getattr(msg, f).CopyFrom(m)
    return msg


def render(msg, form: str) -> dict:
    """A reply as proto3 JSON (field names as in the .proto, zero values included), or
    with `form="plain"`: packed arrays as nested numbers and 64-bit integers as numbers."""
    d = json_format.MessageToDict(msg, preserving_proto_field_name=True,
                                  always_print_fields_with_no_presence=True)
    return _plain(msg, d) if form == "plain" else d


def _plain(msg, d: dict) -> dict:
    for fd in msg.DESCRIPTOR.fields:
        if fd.name not in d:
            continue
        repeated = fd.is_repeated
        value = getattr(msg, fd.name)
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            continue
        if fd.message_type is pb.Matrix.DESCRIPTOR:
            d[fd.name] = ([wire.decode_matrix(m, fd.name).tolist() for m in value] if repeated
                          else wire.decode_matrix(value, fd.name).tolist())
        elif fd.message_type is not None:
            d[fd.name] = ([_plain(m, x) for m, x in zip(value, d[fd.name])] if repeated
                          else _plain(value, d[fd.name]))
        elif fd.type in _INT64:
            d[fd.name] = list(value) if repeated else int(value)
    for name, (dtype, shape) in PACKED_ARRAYS.get(msg.DESCRIPTOR.name, {}).items():
        dims = tuple(getattr(msg, s) for s in shape)
        d[name] = np.frombuffer(getattr(msg, name), dtype=dtype).reshape(dims).tolist()
    return d


def error_body(code: str, message: str, request_id: str) -> dict:
    return {"error": {"code": code, "message": message, "request_id": request_id}}


def _json_response(body: dict, status: int, request_id: str) -> web.Response:
    return web.Response(body=json.dumps(body, separators=(",", ":")).encode(), status=status,
                        content_type="application/json", headers={"x-request-id": request_id})


def _from_rpc_error(err: grpc.aio.AioRpcError) -> NestvecError:
    trailer = dict(err.trailing_metadata() or ())
    return from_code(err.code().name, err.details() or "", trailer.get("x-request-id", ""))


def ssl_context(tls: TlsConfig) -> ssl.SSLContext:
    """The gRPC server's certificate (and client CA) as a server-side SSLContext."""
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    folder = tempfile.mkdtemp(prefix="nestvec-tls-")  # mode 0700; the key is on disk only here
    try:
        cert, key = os.path.join(folder, "cert.pem"), os.path.join(folder, "key.pem")
        for path, data in ((cert, tls.cert_chain), (key, tls.private_key)):
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            with os.fdopen(fd, "wb") as f:
                f.write(data)
        ctx.load_cert_chain(cert, key)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
    if tls.client_ca:
        ctx.load_verify_locations(cadata=tls.client_ca.decode())
        ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


# ----- the server ----------------------------------------------------------------
class HttpApi:
    """aiohttp server transcoding to the gRPC server listening on `grpc_socket`.

    Make it before the gateway (`grpc_socket` is where the gateway must also listen,
    a Unix socket in a fresh 0700 folder), `await start()` after the gateway started,
    `await stop()` before stopping the gateway."""

    def __init__(self, host: str, port: int, limits: Limits = DEFAULT_LIMITS,
                 keys: auth.KeyStore | None = None, tls: TlsConfig | None = None,
                 grace: float = 10.0):
        self.host, self.port = host, port
        self.limits = limits
        self.keys = keys if keys is not None and len(keys) else None
        self.tls = tls
        self.grace = grace
        self._folder = tempfile.mkdtemp(prefix="nestvec-http-")
        self.grpc_socket = os.path.join(self._folder, "gateway.sock")
        self._runner: web.AppRunner | None = None
        self._channel: grpc.aio.Channel | None = None
        self._calls: dict = {}

    @property
    def scheme(self) -> str:
        return "https" if self.tls else "http"

    async def start(self) -> int:
        # No client-side size caps: the gateway applies its own, with its own messages.
        self._channel = grpc.aio.insecure_channel(
            f"unix:{self.grpc_socket}", options=[("grpc.max_send_message_length", -1),
                                                 ("grpc.max_receive_message_length", -1)])
        for m in SERVICE.methods:
            req, resp = getattr(pb, m.input_type.name), getattr(pb, m.output_type.name)
            make = self._channel.stream_unary if m.client_streaming else self._channel.unary_unary
            self._calls[m.name] = make(f"/{SERVICE.full_name}/{m.name}",
                                       request_serializer=req.SerializeToString,
                                       response_deserializer=resp.FromString)
        self._health = health_pb2_grpc.HealthStub(self._channel)
        app = web.Application(client_max_size=self.limits.max_message_bytes,
                              middlewares=[self._errors])
        for route in ROUTES:
            app.router.add_route(route.method, route.path, self._handler(route))
        from nestvec.cluster._server import openapi  # the spec is built from ROUTES
        spec = openapi.spec_json().encode()
        page = openapi.docs_html().encode()

        async def spec_handler(request):
            return web.Response(body=spec, content_type="application/json")

        async def docs_handler(request):  # self-contained: the policy forbids fetching anything
            return web.Response(body=page, content_type="text/html", charset="utf-8", headers={
                "content-security-policy": "default-src 'none'; style-src 'unsafe-inline'"})
        app.router.add_get("/openapi.json", spec_handler)
        app.router.add_get("/docs", docs_handler)
        app.router.add_get("/healthz", self._healthz)
        self._runner = web.AppRunner(app, access_log=None, handle_signals=False)
        await self._runner.setup()
        family = socket.AF_INET6 if ":" in self.host else socket.AF_INET
        sock = socket.socket(family, socket.SOCK_STREAM)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((self.host.strip("[]"), self.port))
        except OSError as err:
            sock.close()
            raise OSError(f"could not bind the HTTP API to {self.host}:{self.port}: "
                          f"{err.strerror or err}") from None
        self.port = sock.getsockname()[1]
        site = web.SockSite(self._runner, sock, shutdown_timeout=self.grace,
                            ssl_context=ssl_context(self.tls) if self.tls else None)
        await site.start()
        return self.port

    async def stop(self) -> None:
        """Stop taking requests; in-flight ones get `grace` seconds (the gateway is still up)."""
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        if self._channel is not None:
            await self._channel.close()
            self._channel = None
        shutil.rmtree(self._folder, ignore_errors=True)

    # -- per request --
    @web.middleware
    async def _errors(self, request: web.Request, handler):
        try:
            return await handler(request)
        except NestvecError as err:
            rid = err.request_id or _request_id()
            status = getattr(err, "status", None) or HTTP_STATUS.get(err.code, 500)
            log.info("request_id=%s http=%s %s code=%s error=%r", rid, request.method, request.path,
                     err.code, err.message)
            return _json_response(error_body(err.code, err.message, rid), status, rid)
        except web.HTTPRequestEntityTooLarge:
            return self._error_response(request, HttpError(413, "RESOURCE_EXHAUSTED", self._too_big()))
        except web.HTTPNotFound:
            return self._error_response(request, HttpError(
                404, "NOT_FOUND", f"no route {request.path!r}: see /docs for the API's routes"))
        except web.HTTPMethodNotAllowed as err:
            return self._error_response(request, HttpError(
                405, "UNIMPLEMENTED", f"{request.method} is not allowed on {request.path!r}: use "
                f"{', '.join(sorted(err.allowed_methods))}"))
        except web.HTTPException:
            raise
        except asyncio.CancelledError:
            raise
        except Exception:  # a bug, not bad input
            rid = _request_id()
            log.exception("request_id=%s http=%s %s code=INTERNAL", rid, request.method, request.path)
            return _json_response(error_body("INTERNAL", f"internal error (request id {rid}); see "
                                             "the server log", rid), 500, rid)

    def _error_response(self, request, err: HttpError) -> web.Response:
        rid = _request_id()
        log.info("request_id=%s http=%s %s code=%s error=%r", rid, request.method, request.path,
                 err.code, err.message)
        return _json_response(error_body(err.code, err.message, rid), err.status, rid)

    def _too_big(self) -> str:
        return (f"the request body is over the server's limit of {self.limits.max_message_bytes} "
                "bytes (--max-message-bytes): send fewer rows per request, the packed (base64) "
                "form, or stream rows with upsert-stream's NDJSON form")

    def _metadata(self, request: web.Request, rpc: str) -> tuple:
        """The key as gRPC metadata, after the same check gRPC's Admission makes."""
        header = request.headers.get("authorization")
        if header is None and request.headers.get("api-key"):
            header = f"Bearer {request.headers['api-key'].strip()}"
        if self.keys is None:
            return ()
        if header is None:
            raise Unauthenticated("missing API key: send the header 'Authorization: Bearer <key>' "
                                  "or 'api-key: <key>'")
        problem = admission.key_problem(self.keys, rpc, (("authorization", header),))
        if problem is not None:
            raise from_code(problem[0].name, problem[1])
        return (("authorization", header),)

    def _options(self, request: web.Request) -> tuple[str, float | None]:
        unknown = sorted(set(request.query) - set(QUERY_PARAMS))
        if unknown:
            raise InvalidArgument(f"unknown query parameters {unknown}: use {', '.join(QUERY_PARAMS)}")
        form = request.query.get("form", "proto")
        if form not in FORMS:
            raise InvalidArgument(f"form must be one of {', '.join(FORMS)}, got {form!r}")
        timeout = None
        if "timeout" in request.query:
            try:
                timeout = float(request.query["timeout"])
            except ValueError:
                timeout = -1.0
            if not 0 < timeout < float("inf"):
                raise InvalidArgument(f"timeout must be a positive number of seconds, got "
                                      f"{request.query['timeout']!r}")
        return form, timeout

    async def _read_json(self, request: web.Request):
        length = request.content_length
        if length is not None and length > self.limits.max_message_bytes:
            raise HttpError(413, "RESOURCE_EXHAUSTED", self._too_big())
        data = await request.read()
        if not data.strip():
            return {}
        try:
            return json.loads(data)
        except (UnicodeDecodeError, json.JSONDecodeError) as err:
            raise InvalidArgument(f"the request body is not valid JSON: {err}") from None

    def _handler(self, route: Route):
        call_name = route.rpc

        async def handle(request: web.Request) -> web.Response:
            form, timeout = self._options(request)
            md = self._metadata(request, call_name)
            path = dict(request.match_info)
            if call_name == "UpsertStream":
                return await self._upsert_stream(request, route, path, md, timeout, form)
            body = await self._read_json(request) if route.has_body else {}
            msg = parse_request(route, body, path)
            call = self._calls[call_name](msg, metadata=md, timeout=timeout)
            try:
                reply = await call
            except grpc.aio.AioRpcError as err:
                raise _from_rpc_error(err) from None
            rid = dict(await call.trailing_metadata() or ()).get("x-request-id", "")
            return _json_response(render(reply, form), 200, rid)
        handle.__name__ = call_name
        return handle

    async def _upsert_stream(self, request, route, path, md, timeout, form) -> web.Response:
        """An NDJSON body (one UpsertRequest body per line, streamed) or a JSON array of them,
        sent as one UpsertStream call."""
        state = {"batches": 0, "error": None}

        async def messages():
            try:
                async for body in self._stream_bodies(request):
                    msg = parse_request(route, body, path)
                    yield msg
                    state["batches"] += 1
            except NestvecError as err:  # end the stream; the gateway says what landed
                state["error"] = err

        call = self._calls["UpsertStream"](messages(), metadata=md, timeout=timeout)
        try:
            reply = await call
        except grpc.aio.AioRpcError as err:
            raise _from_rpc_error(err) from None
        rid = dict(await call.trailing_metadata() or ()).get("x-request-id", "")
        err = state["error"]
        if err is not None:  # worded like the gateway's own mid-stream failures
            n = state["batches"]
            message = (f"batch {n} of the stream: {err.message} ({n} earlier batches, "
                       f"{reply.upserted} rows, were written)")
            failure = (HttpError(err.status, err.code, message) if isinstance(err, HttpError)
                       else type(err)(message))
            failure.request_id = rid
            raise failure
        return _json_response(render(reply, form), 200, rid)

    async def _stream_bodies(self, request: web.Request):
        """Each message of an upsert-stream body, parsed as JSON, as it arrives."""
        limit = self.limits.max_message_bytes
        buf = bytearray()
        array = None  # decided by the first non-blank byte: '[' is a JSON array
        async for chunk in request.content.iter_chunked(NDJSON_CHUNK):
            buf += chunk
            if array is None and buf.strip():
                array = buf.lstrip()[:1] == b"["
            if array:
                if len(buf) > limit:
                    raise HttpError(413, "RESOURCE_EXHAUSTED", "a JSON-array upsert-stream body is "
                                    f"over the {limit}-byte limit (--max-message-bytes): send "
                                    "NDJSON (one message per line) to stream without a total limit")
                continue
            *lines, rest = bytes(buf).split(b"\n")
            buf = bytearray(rest)
            for line in lines:
                if line.strip():
                    yield _json_line(line)
            if len(buf) > limit:
                raise HttpError(413, "RESOURCE_EXHAUSTED", f"an NDJSON line is over the {limit}-byte "
                                "limit per message (--max-message-bytes): split it")
        if array:
            try:
                items = json.loads(bytes(buf))
            except (UnicodeDecodeError, json.JSONDecodeError) as err:
                raise InvalidArgument(f"the request body is not valid JSON: {err}") from None
            if not isinstance(items, list):
                raise InvalidArgument("an upsert-stream body is NDJSON or a JSON array of messages")
            for item in items:
                yield item
        elif buf.strip():
            yield _json_line(bytes(buf))

    async def _healthz(self, request: web.Request) -> web.Response:
        try:
            resp = await self._health.Check(health_pb2.HealthCheckRequest(service=""), timeout=5)
            status = health_pb2.HealthCheckResponse.ServingStatus.Name(resp.status)
        except grpc.aio.AioRpcError as err:
            status = err.code().name
        rid = _request_id()
        return _json_response({"status": status}, 200 if status == "SERVING" else 503, rid)


def _json_line(line: bytes):
    try:
        return json.loads(line)
    except (UnicodeDecodeError, json.JSONDecodeError) as err:
        raise InvalidArgument(f"the line is not valid JSON: {err}") from None


__all__ = ["HttpApi", "ROUTES", "Route", "HTTP_STATUS", "parse_request", "render", "plain_matrix"]
