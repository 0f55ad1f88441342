"""The HTTP API's OpenAPI 3.1 spec, generated from the .proto descriptors, and the /docs page.

Nothing here is written by hand per call: paths come from http_api.ROUTES (one per
VectorSearch RPC; a method without a route is an error), and every schema from
walking nestvec_pb2's DESCRIPTOR under the proto3 JSON mapping:

    string -> string          bytes -> base64 string         bool -> boolean
    (u)int32 -> integer       (u)int64 -> string or integer  float/double -> number
    enum -> its value names (numbers accepted)   message -> object   repeated -> array

Property names are the .proto field names (what the API returns; lowerCamelCase
is accepted too, as json_format does). Each message also gets a `plain.` variant:
the `?form=plain` replies, where packed arrays are nested numbers and 64-bit
integers are JSON numbers.

    python -m nestvec.cluster._server.openapi > docs/openapi.json   # regenerate
    python -m nestvec.cluster._server.openapi --check docs/openapi.json
"""
from __future__ import annotations

import html
import json
import sys

from google.protobuf.descriptor import FieldDescriptor

from nestvec.cluster._server.http_api import (HTTP_STATUS, PACKED_ARRAYS, PLAIN_MATRIX_FIELDS,
                                              ROUTES, SERVICE)
from nestvec.v1 import nestvec_pb2 as pb

F = FieldDescriptor
_SCALARS = {
    F.TYPE_STRING: {"type": "string"},
    F.TYPE_BYTES: {"type": "string", "contentEncoding": "base64"},
    F.TYPE_BOOL: {"type": "boolean"},
    F.TYPE_FLOAT: {"type": "number", "format": "float"},
    F.TYPE_DOUBLE: {"type": "number", "format": "double"},
    F.TYPE_INT32: {"type": "integer", "format": "int32"},
    F.TYPE_SINT32: {"type": "integer", "format": "int32"},
    F.TYPE_SFIXED32: {"type": "integer", "format": "int32"},
    F.TYPE_UINT32: {"type": "integer", "format": "uint32", "minimum": 0, "maximum": 2**32 - 1},
    F.TYPE_FIXED32: {"type": "integer", "format": "uint32", "minimum": 0, "maximum": 2**32 - 1},
    # proto3 JSON writes 64-bit integers as decimal strings and reads strings or numbers
    F.TYPE_INT64: {"type": ["string", "integer"], "format": "int64"},
    F.TYPE_SINT64: {"type": ["string", "integer"], "format": "int64"},
    F.TYPE_SFIXED64: {"type": ["string", "integer"], "format": "int64"},
    F.TYPE_UINT64: {"type": ["string", "integer"], "format": "uint64"},
    F.TYPE_FIXED64: {"type": ["string", "integer"], "format": "uint64"},
}
_PLAIN_INT64 = {"type": "integer"}
_DTYPES = {"<u8": {"type": "integer", "format": "uint64", "minimum": 0},
           "<f4": {"type": "number", "format": "float"}}
PLAIN_MATRIX = "nestvec.http.PlainMatrix"
ERROR = "nestvec.http.Error"


def _ref(name: str) -> dict:
    return {"$ref": f"#/components/schemas/{name}"}


def _field_schema(fd, plain: bool) -> dict:
    if fd.enum_type is not None:
        item = _ref(fd.enum_type.full_name)
    elif fd.message_type is not None:
        if plain and fd.message_type is pb.Matrix.DESCRIPTOR:
            item = _ref(PLAIN_MATRIX)
        else:
            item = _ref(("plain." if plain else "") + fd.message_type.full_name)
    elif plain and fd.type in (F.TYPE_INT64, F.TYPE_SINT64, F.TYPE_SFIXED64):
        item = dict(_PLAIN_INT64, format="int64")
    elif plain and fd.type in (F.TYPE_UINT64, F.TYPE_FIXED64):
        item = dict(_PLAIN_INT64, format="uint64", minimum=0)
    else:
        item = dict(_SCALARS[fd.type])
    if fd.is_repeated:
        return {"type": "array", "items": item, "x-proto-field": fd.number}
    return {**item, "x-proto-field": fd.number}  # OpenAPI 3.1: $ref may have siblings


def message_schema(desc, plain: bool = False) -> dict:
    props = {fd.name: _field_schema(fd, plain) for fd in desc.fields}
    for name, (dtype, shape) in (PACKED_ARRAYS.get(desc.name, {}).items() if plain else ()):
        props[name] = {"type": "array", "items": {"type": "array", "items": _DTYPES[dtype]},
                       "description": f"[{shape[0]}][{shape[1]}]",
                       "x-proto-field": desc.fields_by_name[name].number}
    return {"type": "object", "title": desc.full_name, "properties": props,
            "additionalProperties": False}


def enum_schema(desc) -> dict:
    return {"title": desc.full_name,
            "anyOf": [{"type": "string", "enum": [v.name for v in desc.values]},
                      {"type": "integer", "enum": [v.number for v in desc.values]}]}


def _messages(desc, seen: dict) -> None:
    """Every message reachable from `desc` (itself included), into `seen`."""
    if desc.full_name in seen:
        return
    seen[desc.full_name] = desc
    for fd in desc.fields:
        if fd.message_type is not None:
            _messages(fd.message_type, seen)


def _request_body_schema(route, method) -> dict:
    """The route's body: the request message without its path fields (they may be repeated in
    the body if equal), with plain arrays allowed for the fields PLAIN_MATRIX_FIELDS names."""
    base = message_schema(method.input_type)
    props = {k: v for k, v in base["properties"].items() if k not in route.path_fields}
    for name in PLAIN_MATRIX_FIELDS.get(method.input_type.name, ()):
        props[name] = {"oneOf": [_ref(pb.Matrix.DESCRIPTOR.full_name), _ref(PLAIN_MATRIX)],
                       "x-proto-field": props[name]["x-proto-field"]}
    for name in route.path_fields:
        field = base["properties"][name]
        props[name] = dict(field, description="optional: the path's value (if given, must equal it)")
    return {"type": "object", "title": f"{method.input_type.full_name} (HTTP body)",
            "properties": props, "additionalProperties": False}


def build_spec() -> dict:
    routed = {r.rpc for r in ROUTES}
    missing = [m.name for m in SERVICE.methods if m.name not in routed]
    if missing:
        raise RuntimeError(f"VectorSearch methods without an HTTP route: {missing} (http_api.ROUTES)")
    schemas: dict = {}
    for enum in pb.DESCRIPTOR.enum_types_by_name.values():
        schemas[enum.full_name] = enum_schema(enum)
    for msg in pb.DESCRIPTOR.message_types_by_name.values():
        schemas[msg.full_name] = message_schema(msg)
    replies: dict = {}
    for m in SERVICE.methods:
        _messages(m.output_type, replies)
    for name, desc in sorted(replies.items()):
        schemas["plain." + name] = message_schema(desc, plain=True)
    schemas[PLAIN_MATRIX] = {
        "title": "plain-array matrix", "type": "array",
        "items": {"type": "array", "items": {"type": "number"}},
        "description": "[rows][dim] numbers, sent as a float32 Matrix (one flat array is one row)"}
    schemas[ERROR] = {
        "type": "object", "title": "error", "required": ["error"], "additionalProperties": False,
        "properties": {"error": {"type": "object", "additionalProperties": False,
                                 "required": ["code", "message", "request_id"],
                                 "properties": {"code": {"type": "string", "enum": sorted(HTTP_STATUS)},
                                                "message": {"type": "string"},
                                                "request_id": {"type": "string"}}}}}
    paths: dict = {}
    for route in ROUTES:
        method = SERVICE.methods_by_name[route.rpc]
        op = {
            "operationId": route.rpc,
            "summary": f"gRPC {SERVICE.full_name}/{route.rpc}",
            "x-grpc-method": f"/{SERVICE.full_name}/{route.rpc}",
            "x-grpc-request": method.input_type.full_name,
            "x-grpc-response": method.output_type.full_name,
            "parameters": [
                *({"name": f, "in": "path", "required": True, "schema": {"type": "string"},
                   "description": f"the request's {f} field"} for f in route.path_fields),
                {"name": "form", "in": "query", "required": False,
                 "schema": {"type": "string", "enum": ["proto", "plain"], "default": "proto"},
                 "description": "reply as proto3 JSON (packed bytes as base64, 64-bit integers as "
                                "strings) or plain (nested number arrays, integers as numbers)"},
                {"name": "timeout", "in": "query", "required": False,
                 "schema": {"type": "number", "exclusiveMinimum": 0},
                 "description": "the call's deadline in seconds (gRPC's timeout); none by default"},
            ],
            "responses": {
                "200": {"description": "OK", "content": {"application/json": {"schema": {
                    "oneOf": [_ref(method.output_type.full_name),
                              _ref("plain." + method.output_type.full_name)]}}}},
                "default": {"description": "an error; HTTP status from the gRPC code (docs/http.md)",
                            "content": {"application/json": {"schema": _ref(ERROR)}}},
            },
        }
        if route.has_body:
            body = _request_body_schema(route, method)
            content = {"application/json": {"schema": body}}
            if method.client_streaming:
                content = {"application/x-ndjson": {"schema": body, "description":
                                                     "one message per line, streamed"},
                           "application/json": {"schema": {"type": "array", "items": body}}}
            op["requestBody"] = {"required": False, "content": content}
        paths.setdefault(route.path, {})[route.method.lower()] = op
    paths["/healthz"] = {"get": {"operationId": "Health", "summary": "the gRPC health check "
                                 "(no key needed)", "responses": {
                                     "200": {"description": "SERVING"},
                                     "503": {"description": "not serving"}}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "nestvec HTTP/JSON API", "version": "v1",
                 "description": "Every VectorSearch RPC over HTTP/JSON, transcoded to the gRPC "
                                "gateway (docs/http.md). Generated from nestvec/v1/nestvec.proto."},
        "components": {
            "schemas": dict(sorted(schemas.items())),
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"},
                                "apiKey": {"type": "apiKey", "in": "header", "name": "api-key"}}},
        "security": [{"bearer": []}, {"apiKey": []}, {}],
        "paths": paths,
    }


def spec_json() -> str:
    return json.dumps(build_spec(), indent=1, sort_keys=False) + "\n"


def docs_html(spec: dict | None = None) -> str:
    """A self-contained page of the spec: every route, its parameters, body and reply schemas."""
    spec = spec or build_spec()
    schemas = spec["components"]["schemas"]
    esc = html.escape

    def link(ref: str) -> str:
        name = ref.rsplit("/", 1)[-1]
        return f'<a href="#schema-{esc(name)}">{esc(name)}</a>'

    def refs_in(node) -> list[str]:
        out: list[str] = []
        if isinstance(node, dict):
            if "$ref" in node:
                out.append(node["$ref"])
            for v in node.values():
                out += refs_in(v)
        elif isinstance(node, list):
            for v in node:
                out += refs_in(v)
        return out

    def block(node) -> str:
        text = esc(json.dumps(node, indent=2))
        used = list(dict.fromkeys(refs_in(node)))
        see = f'<p class="refs">see: {", ".join(link(r) for r in used)}</p>' if used else ""
        return f"<pre>{text}</pre>{see}"

    parts = ["<!doctype html><html><head><meta charset='utf-8'><title>nestvec HTTP API</title>",
             "<style>body{font-family:sans-serif;max-width:70em;margin:auto;padding:1em}"
             "pre{background:#f4f4f4;padding:.5em;overflow:auto;font-size:85%}"
             ".m{font-weight:bold;text-transform:uppercase;padding:0 .3em;background:#dde}"
             "h3{margin-bottom:.2em}.refs{font-size:85%}</style></head><body>",
             f"<h1>{esc(spec['info']['title'])}</h1><p>{esc(spec['info']['description'])}</p>",
             "<p>The machine-readable spec: <a href='/openapi.json'>/openapi.json</a>. Auth: "
             "<code>Authorization: Bearer &lt;key&gt;</code> or <code>api-key: &lt;key&gt;</code>."
             "</p><h2>Routes</h2><ul>"]
    for path, ops in spec["paths"].items():
        for verb, op in ops.items():
            parts.append(f"<li><a href='#op-{esc(op['operationId'])}'><span class='m'>{esc(verb)}"
                         f"</span> {esc(path)}</a> ({esc(op['operationId'])})</li>")
    parts.append("</ul>")
    for path, ops in spec["paths"].items():
        for verb, op in ops.items():
            parts.append(f"<h3 id='op-{esc(op['operationId'])}'><span class='m'>{esc(verb)}</span> "
                         f"{esc(path)}</h3><p>{esc(op.get('summary', ''))}</p>")
            if op.get("parameters"):
                parts.append("<p>Parameters:</p><ul>" + "".join(
                    f"<li><code>{esc(p['name'])}</code> ({esc(p['in'])}"
                    f"{', required' if p.get('required') else ''}): {esc(p.get('description', ''))}</li>"
                    for p in op["parameters"]) + "</ul>")
            for ctype, c in op.get("requestBody", {}).get("content", {}).items():
                parts.append(f"<p>Request body ({esc(ctype)}):</p>{block(c['schema'])}")
            for status, r in op["responses"].items():
                for ctype, c in r.get("content", {}).items():
                    parts.append(f"<p>Response {esc(status)} ({esc(ctype)}):</p>{block(c['schema'])}")
    parts.append("<h2>Schemas</h2>")
    for name, schema in schemas.items():
        parts.append(f"<h3 id='schema-{esc(name)}'>{esc(name)}</h3>{block(schema)}")
    parts.append("</body></html>\n")
    return "".join(parts)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--check"]:
        with open(argv[1]) as f:
            if f.read() != spec_json():
                print(f"{argv[1]} differs from the spec the .proto gives: regenerate it with\n"
                      f"  python -m nestvec.cluster._server.openapi > {argv[1]}", file=sys.stderr)
                return 1
        return 0
    sys.stdout.write(spec_json())
    return 0


if __name__ == "__main__":
    sys.exit(main())
