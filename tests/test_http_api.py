"""The HTTP/JSON API (cluster/_server/http_api.py, docs/http.md) against real `nestvec serve`
processes: no mocks. One plaintext server without keys (congruence with the gRPC SDK call by
call, the oracle, the spec, the docs walkthrough run with curl) and one with API keys, TLS and
small limits (auth, HTTPS, oversize bodies). HTTP goes through urllib on 127.0.0.1 only."""
from __future__ import annotations

import base64
import http.client
import json
import pathlib
import re
import shutil
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
import uuid

import numpy as np
import pytest
from google.protobuf import json_format

from nestvec.client import Client
from nestvec.client import _messages as msgs
from nestvec.cluster._server import openapi
from nestvec.cluster._server.auth import new_key
from nestvec.cluster._server.http_api import HTTP_STATUS, ROUTES, SERVICE
from nestvec.errors import NestvecError
from nestvec.v1 import nestvec_pb2 as pb
from oracle import assert_matches_oracle
from proc_util import free_port

REPO = pathlib.Path(__file__).resolve().parent.parent
DIM, NESTED, N = 64, [16, 32, 64], 3000
LIMIT_BYTES = 256 << 10    # the keyed server's --max-message-bytes
MAX_VECTORS = 500          # the keyed server's --max-vectors


# ----- servers --------------------------------------------------------------------
def _start(tmp, name: str, extra: list[str], http_port: int | str, env_extra=None):
    port = free_port()
    out, err = open(tmp / f"{name}.out", "w"), open(tmp / f"{name}.err", "w")
    proc = subprocess.Popen([sys.executable, "-m", "nestvec.cluster._ops.cli", "serve", "--in-memory",
                             "--port", str(port), "--http-port", str(http_port), "--shards", "2",
                             "--namespace", f"http-{name}-{uuid.uuid4().hex[:8]}", *extra],
                            stdout=out, stderr=err)
    return proc, port


def _stop(proc) -> None:
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(10)


def _wait_for(proc, probe, what: str, timeout: float = 180):
    deadline = time.time() + timeout
    while True:
        try:
            got = probe()
            if got:
                return got
        except (OSError, NestvecError, ValueError):
            pass
        if time.time() > deadline or proc.poll() is not None:
            _stop(proc)
            raise RuntimeError(f"nestvec serve did not start ({what})")
        time.sleep(0.3)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """Plaintext, no keys, --http-port 0: the bound port is read from what serve prints."""
    tmp = tmp_path_factory.mktemp("http")
    proc, port = _start(tmp, "plain", [], 0)

    def bound():
        m = re.search(r"HTTP API on http://127\.0\.0\.1:(\d+)/v1", (tmp / "plain.out").read_text())
        return int(m.group(1)) if m else None
    http_port = _wait_for(proc, bound, "no HTTP API line")
    address = f"127.0.0.1:{port}"
    _wait_for(proc, lambda: Client(address, timeout=5).list_collections() is not None, "gRPC")
    yield {"address": address, "base": f"http://127.0.0.1:{http_port}", "log": tmp / "plain.err",
           "ctx": None}
    _stop(proc)


@pytest.fixture(scope="module")
def pki(tmp_path_factory):
    from certs import issue, make_ca
    tmp = tmp_path_factory.mktemp("pki")
    ca = make_ca()
    srv = issue(ca, "localhost", server=True)
    (tmp / "ca.pem").write_bytes(ca.cert)
    (tmp / "server.pem").write_bytes(srv.cert)
    (tmp / "server.key").write_bytes(srv.key)
    (tmp / "other.pem").write_bytes(make_ca("someone else").cert)
    client = issue(ca, "client", server=False)
    (tmp / "client.pem").write_bytes(client.cert)
    (tmp / "client.key").write_bytes(client.key)
    return tmp


@pytest.fixture(scope="module")
def keyed(tmp_path_factory, pki):
    """API keys (read, write, admin), mutual TLS on both doors, small message and row limits."""
    tmp = tmp_path_factory.mktemp("keyed")
    keys = {role: new_key(role, role) for role in ("read", "write", "admin")}
    (tmp / "keys").write_text("\n".join(line for _, line in keys.values()) + "\n")
    http_port = free_port()
    proc, port = _start(tmp, "keyed", ["--api-keys-file", str(tmp / "keys"),
                                       "--tls-cert", str(pki / "server.pem"),
                                       "--tls-key", str(pki / "server.key"),
                                       "--tls-client-ca", str(pki / "ca.pem"),
                                       "--max-message-bytes", str(LIMIT_BYTES),
                                       "--max-vectors", str(MAX_VECTORS)], http_port)
    tls = {"root_certificates": (pki / "ca.pem").read_bytes(),
           "client_certificate": (pki / "client.pem").read_bytes(),
           "client_key": (pki / "client.key").read_bytes()}
    address = f"127.0.0.1:{port}"
    admin = keys["admin"][0]
    _wait_for(proc, lambda: Client(address, timeout=5, api_key=admin, **tls)
              .list_collections() is not None, "gRPC over TLS")
    ctx = ssl.create_default_context(cafile=str(pki / "ca.pem"))
    ctx.load_cert_chain(str(pki / "client.pem"), str(pki / "client.key"))
    info = {"address": address, "base": f"https://127.0.0.1:{http_port}", "http_port": http_port,
            "ctx": ctx, "tls": tls, **{role: k for role, (k, _) in keys.items()}}
    _wait_for(proc, lambda: call(info, "GET", "/healthz")[0] == 200, "HTTPS")
    yield info
    _stop(proc)


# ----- HTTP and comparisons ----------------------------------------------------------
def call(srv, method: str, path: str, body=None, *, raw: bytes | None = None, headers=None):
    """(status, parsed JSON body, headers) of one request."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(srv["base"] + path, data=data, method=method,
                                 headers={"content-type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=120, context=srv.get("ctx")) as r:
            return r.status, json.loads(r.read()), r.headers
    except urllib.error.HTTPError as err:
        return err.code, json.loads(err.read()), err.headers


def ok(srv, method, path, body=None, **kw):
    status, got, headers = call(srv, method, path, body, **kw)
    assert status == 200, got
    assert re.fullmatch(r"[0-9a-f]{16}", headers["x-request-id"])
    return got


def sdk(srv, key: str | None = None) -> Client:
    return Client(srv["address"], timeout=120, api_key=key, **srv.get("tls", {}))


def sdk_error(fn) -> NestvecError:
    with pytest.raises(NestvecError) as err:
        fn()
    return err.value


def http_error(srv, method, path, body=None, **kw) -> dict:
    status, got, headers = call(srv, method, path, body, **kw)
    e = got["error"]
    assert set(got) == {"error"} and set(e) == {"code", "message", "request_id"}, got
    assert status == HTTP_STATUS[e["code"]] or (status == 413 and e["code"] == "RESOURCE_EXHAUSTED")
    assert e["request_id"] == headers["x-request-id"] and e["request_id"]
    return dict(e, status=status)


def same_error(sdk_fn, srv, method, path, body=None, **kw) -> dict:
    """The SDK's and HTTP's error for the same request: same code, same message."""
    want = sdk_error(sdk_fn)
    got = http_error(srv, method, path, body, **kw)
    assert (got["code"], got["message"]) == (want.code, want.message)
    assert want.request_id and got["request_id"] != want.request_id  # two calls, two ids
    return got


def info(d: dict) -> msgs.CollectionInfo:
    return msgs.read_info(json_format.ParseDict(d, pb.CollectionInfo()))


def comparable(ci: msgs.CollectionInfo, name: str | None = None) -> msgs.CollectionInfo:
    """Info with what differs between two calls or twin collections blanked."""
    ci.name = name or ci.name
    for s in ci.shard_info:
        s.rss_bytes = 0
        s.actor_name = ""
    return ci


def packed(m: np.ndarray, dtype: str = "FLOAT32") -> dict:
    arr = np.ascontiguousarray(m, dtype="<f2" if dtype == "FLOAT16" else "<f4")
    return {"rows": arr.shape[0], "dim": arr.shape[1], "dtype": dtype,
            "data": base64.b64encode(arr.tobytes()).decode()}


def search_result(d: dict) -> msgs.SearchResult:
    return msgs.read_search(json_format.ParseDict(d, pb.SearchResponse()))


def same_search(a: msgs.SearchResult, b: msgs.SearchResult) -> None:
    np.testing.assert_array_equal(a.ids, b.ids)
    np.testing.assert_array_equal(a.scores, b.scores)
    assert (a.funnel_used, a.calibrated_recall, a.ann_used, a.missing_shards) == \
        (b.funnel_used, b.calibrated_recall, b.ann_used, b.missing_shards)


@pytest.fixture(scope="module")
def data():
    rng = np.random.default_rng(7)
    docs = rng.standard_normal((N, DIM)).astype(np.float32)
    docs[:, :16] *= 3  # leading dims carry more, as in Matryoshka embeddings
    return {"ids": np.arange(N, dtype=np.uint64) * 7 + 3, "docs": docs,
            "queries": rng.standard_normal((12, DIM)).astype(np.float32)}


# ----- congruence, call by call ------------------------------------------------------
def test_every_call_is_congruent_with_the_grpc_sdk(server, data):
    """Twin collections, one driven through the SDK and one through HTTP, and reads of one
    collection through both doors: the same results and the same errors."""
    g, h = f"cg-{uuid.uuid4().hex[:6]}", f"ch-{uuid.uuid4().hex[:6]}"
    ids, docs, q = data["ids"], data["docs"], data["queries"]
    with sdk(server) as c:
        # CreateCollection
        made = c.create_collection(g, dim=DIM, metric="cosine", nested_dims=NESTED)
        got = ok(server, "POST", "/v1/collections", {"name": h, "dim": DIM, "metric": "COSINE",
                                                     "nested_dims": NESTED})
        assert comparable(info(got["collection"]), g) == comparable(made)
        same_error(lambda: c.create_collection(g, dim=DIM, metric="cosine"), server,
                   "POST", "/v1/collections", {"name": g, "dim": DIM, "metric": "COSINE"})
        e = same_error(lambda: c.create_collection("x-bad", dim=0, metric="cosine"), server,
                       "POST", "/v1/collections", {"name": "x-bad", "dim": 0, "metric": 1})
        assert e["status"] == 400
        # Upsert: plain arrays for the first half, the packed Matrix for the second
        half = N // 2
        assert c.upsert(g, ids[:half], docs[:half]) == half
        assert ok(server, "POST", f"/v1/collections/{h}/upsert",
                  {"ids": ids[:half].tolist(), "vectors": docs[:half].tolist()})["upserted"] == str(half)
        # UpsertStream: the rest, as NDJSON (three batches) through HTTP
        rest = [(ids[s: s + 500], docs[s: s + 500]) for s in range(half, N, 500)]
        streamed = c.upsert_stream(g, rest)
        ndjson = "\n".join(json.dumps({"ids": i.tolist(), "vectors": packed(v)}) for i, v in rest)
        got = ok(server, "POST", f"/v1/collections/{h}/upsert-stream", raw=ndjson.encode(),
                 headers={"content-type": "application/x-ndjson"})
        assert (int(got["upserted"]), int(got["batches"])) == (streamed.upserted, streamed.batches)
        # ... and a JSON array of messages, replacing rows with themselves
        arr = [{"ids": i[:5].tolist(), "vectors": v[:5].tolist()} for i, v in rest]
        got = ok(server, "POST", f"/v1/collections/{h}/upsert-stream?form=plain", arr)
        again = c.upsert_stream(g, [(i[:5], v[:5]) for i, v in rest])
        assert got == {"upserted": again.upserted, "batches": again.batches} == {"upserted": 15, "batches": 3}
        bad = [(ids[:2], docs[:2]), (ids[:2], docs[:2, :8])]
        same_error(lambda: c.upsert_stream(g, bad), server, "POST", f"/v1/collections/{g}/upsert-stream",
                   raw="\n".join(json.dumps({"ids": i.tolist(), "vectors": v.tolist()})
                                 for i, v in bad).encode())
        same_error(lambda: c.upsert(g, ids[:3], docs[:3, :10]), server, "POST",
                   f"/v1/collections/{g}/upsert", {"ids": ids[:3].tolist(), "vectors": docs[:3, :10].tolist()})
        same_error(lambda: c.upsert(g, ids[:3], docs[:2]), server, "POST", f"/v1/collections/{g}/upsert",
                   {"ids": ids[:3].tolist(), "vectors": packed(docs[:2])})
        # DescribeCollection and ListCollections: the twins match, one collection matches itself
        want = comparable(c.describe_collection(g))
        assert comparable(info(ok(server, "GET", f"/v1/collections/{h}")["collection"]), g) == want
        assert comparable(info(ok(server, "GET", f"/v1/collections/{g}")["collection"])) == want
        same_error(lambda: c.describe_collection("nope"), server, "GET", "/v1/collections/nope")
        listed = {x.name: comparable(x) for x in c.list_collections()}
        got = ok(server, "GET", "/v1/collections")["collections"]
        assert {x["name"]: comparable(info(x)) for x in got} == listed
        # Get, proto JSON and plain
        ask = [int(ids[5]), 999_999_999, int(ids[N - 1])]
        want = c.get(g, ask, dim=32)
        got = msgs.read_get(json_format.ParseDict(ok(server, "POST", f"/v1/collections/{h}/get",
                                                     {"ids": ask, "dim": 32}), pb.GetResponse()))
        for a, b in zip((want.ids, want.vectors, want.missing_ids), (got.ids, got.vectors, got.missing_ids)):
            np.testing.assert_array_equal(a, b)
        plain = ok(server, "POST", f"/v1/collections/{g}/get?form=plain", {"ids": ask, "dim": 32})
        assert plain["ids"] == want.ids.tolist() and plain["missing_ids"] == [999_999_999]
        np.testing.assert_array_equal(np.array(plain["vectors"], dtype=np.float32), want.vectors)
        same_error(lambda: c.get("nope", [1]), server, "POST", "/v1/collections/nope/get", {"ids": [1]})
        same_error(lambda: c.get(g, [1], dim=100), server, "POST", f"/v1/collections/{g}/get",
                   {"ids": [1], "dim": 100})

        # Search: every form, on the SDK's collection and on the HTTP twin
        def both(body: dict, **kw):
            want = c.search(g, q, **kw)
            for coll in (g, h):
                for queries in (q.tolist(), packed(q)):
                    same_search(search_result(ok(server, "POST", f"/v1/collections/{coll}/search",
                                                 dict(body, queries=queries))), want)
            plain = ok(server, "POST", f"/v1/collections/{g}/search?form=plain", dict(body, queries=q.tolist()))
            assert plain["ids"] == want.ids.tolist()
            np.testing.assert_array_equal(np.array(plain["scores"], dtype=np.float32), want.scores)
            return want
        both({"k": 10}, k=10)
        both({"k": 7, "dim": 32}, k=7, dim=32)
        both({"k": 10, "funnel": [{"dim": 16, "candidates": 200}, {"dim": 32, "candidates": 50}]},
             k=10, funnel=[(16, 200), (32, 50)])
        c.search(g, q[:1], k=10, target_recall=0.9)  # calibrate both twins once
        c.search(h, q[:1], k=10, target_recall=0.9)
        planned = both({"k": 10, "target_recall": 0.9}, k=10, target_recall=0.9)
        assert planned.calibrated_recall is not None
        half16 = c.search(g, q, k=5, dtype="float16")
        same_search(search_result(ok(server, "POST", f"/v1/collections/{g}/search",
                                     {"queries": packed(q, "FLOAT16"), "k": 5})), half16)
        for kw, body in (({"k": 0}, {"k": 0}), ({"k": 5, "dim": 100}, {"k": 5, "dim": 100}),
                         ({"k": 5, "funnel": [(32, 50), (16, 20)]},
                          {"k": 5, "funnel": [{"dim": 32, "candidates": 50}, {"dim": 16, "candidates": 20}]}),
                         ({"k": 5, "target_recall": 1.5}, {"k": 5, "target_recall": 1.5}),
                         ({"k": 5, "ann": True}, {"k": 5, "ann": True})):
            e = same_error(lambda: c.search(g, q, **kw), server, "POST", f"/v1/collections/{g}/search",
                           dict(body, queries=q.tolist()))
            assert e["status"] == HTTP_STATUS[e["code"]]
        same_error(lambda: c.search("nope", q, k=3), server, "POST", "/v1/collections/nope/search",
                   {"queries": packed(q), "k": 3})
        same_error(lambda: c.search(g, q[:, :8], k=3), server, "POST", f"/v1/collections/{g}/search",
                   {"queries": q[:, :8].tolist(), "k": 3})
        # Delete
        gone = [int(x) for x in ids[10:20]] + [5]
        assert c.delete(g, gone) == 10
        assert ok(server, "POST", f"/v1/collections/{h}/delete?form=plain", {"ids": gone}) == {"deleted": 10}
        same_error(lambda: c.delete(g, []), server, "POST", f"/v1/collections/{g}/delete", {"ids": []})
        same_search(search_result(ok(server, "POST", f"/v1/collections/{h}/search",
                                     {"queries": packed(q), "k": 10})), c.search(g, q, k=10))
        # CreateIndex
        made = c.create_index(g, {"type": "hnsw", "dim": 32, "m": 8, "ef_construction": 40})
        got = ok(server, "POST", f"/v1/collections/{h}/index",
                 {"index": {"type": "hnsw", "dim": 32, "m": 8, "ef_construction": 40}})
        a, b = comparable(info(got["collection"]), g), comparable(made)
        assert (a.index, a.dim, a.nested_dims) == (b.index, b.dim, b.nested_dims)
        same_error(lambda: c.create_index(g, {"dim": 1000}), server, "POST", f"/v1/collections/{g}/index",
                   {"index": {"dim": 1000}})
        same_error(lambda: c.create_index("nope", {}), server, "POST", "/v1/collections/nope/index", {})
        # DropCollection
        c.drop_collection(g)
        assert ok(server, "DELETE", f"/v1/collections/{h}") == {}
        same_error(lambda: c.drop_collection(g), server, "DELETE", f"/v1/collections/{g}")
        assert not {g, h} & {x.name for x in c.list_collections()}


def test_error_request_id_is_the_gateways(server):
    """The id in an HTTP error body is the one the gRPC gateway logged for that call."""
    e = http_error(server, "GET", "/v1/collections/no-such-thing")
    assert e["code"] == "NOT_FOUND"
    deadline = time.time() + 10
    while True:
        log = server["log"].read_text()
        if f"request_id={e['request_id']} method=DescribeCollection code=NOT_FOUND" in log:
            break
        assert time.time() < deadline, "the gateway did not log the HTTP call's request id"
        time.sleep(0.2)


# ----- against the oracle ----------------------------------------------------------
@pytest.fixture(scope="module")
def loaded(server, data):
    name = f"or-{uuid.uuid4().hex[:6]}"
    ok(server, "POST", "/v1/collections", {"name": name, "dim": DIM, "metric": "COSINE", "nested_dims": NESTED})
    for s in range(0, N, 1000):
        ok(server, "POST", f"/v1/collections/{name}/upsert",
           {"ids": data["ids"][s: s + 1000].tolist(), "vectors": data["docs"][s: s + 1000].tolist()})
    yield name
    ok(server, "DELETE", f"/v1/collections/{name}")


@pytest.mark.parametrize("form", ["plain", "packed"])
@pytest.mark.parametrize("dim,funnel", [(16, ()), (32, ()), (64, ((16, 300),)), (64, ((16, 400), (32, 60)))])
def test_search_matches_brute_force(server, data, loaded, form, dim, funnel):
    q = data["queries"]
    body = {"queries": q.tolist() if form == "plain" else packed(q), "k": 10, "dim": dim,
            "funnel": [{"dim": d, "candidates": c} for d, c in funnel]}
    got = ok(server, "POST", f"/v1/collections/{loaded}/search?form=plain", body)
    assert (got["queries"], got["k"]) == (len(q), 10)
    assert_matches_oracle(np.array(got["ids"], dtype=np.uint64), np.array(got["scores"]), data["ids"],
                          data["docs"], q, "cosine", dim, 10, funnel)


# ----- bad input changes nothing ---------------------------------------------------------
def _state(srv, name: str, headers=None) -> tuple:
    d = ok(srv, "GET", f"/v1/collections/{name}", headers=headers)["collection"]
    g = ok(srv, "POST", f"/v1/collections/{name}/get?form=plain", {"ids": list(range(12))}, headers=headers)
    return d["vectors"], g["ids"], g["vectors"], g["missing_ids"]


def test_bad_requests_are_refused_and_change_nothing(server):
    name = f"bad-{uuid.uuid4().hex[:6]}"
    ok(server, "POST", "/v1/collections", {"name": name, "dim": 4, "metric": "DOT"})
    ok(server, "POST", f"/v1/collections/{name}/upsert", {"ids": [0, 1, 2], "vectors": np.eye(3, 4).tolist()})
    before = _state(server, name)
    up, search = f"/v1/collections/{name}/upsert", f"/v1/collections/{name}/search"
    cases = [
        ("POST", up, b'{"ids": [5], "vectors": [[1, 2, 3, 4]', "not valid JSON"),
        ("POST", up, b"\xff\xfe", "not valid JSON"),
        ("POST", up, b'[{"ids": [5]}]', "must be a JSON object"),
        ("POST", up, {"ids": [5], "vectors": [[1, 2, 3, 4]], "colour": "red"}, 'no field named "colour"'),
        ("POST", up, {"ids": ["five"], "vectors": [[1, 2, 3, 4]]}, "ids"),
        ("POST", up, {"ids": [-5], "vectors": [[1, 2, 3, 4]]}, "ids"),
        ("POST", up, {"ids": [5], "vectors": [["1", 2, 3, 4]]}, "only numbers"),
        ("POST", up, {"ids": [5], "vectors": [[1, None, 3, 4]]}, "only numbers"),
        ("POST", up, {"ids": [5, 6], "vectors": [[1, 2, 3, 4], [1, 2]]}, "same length"),
        ("POST", up, {"ids": [5], "vectors": [[[1, 2, 3, 4]]]}, "levels of nesting"),
        ("POST", up, {"ids": [5], "vectors": {"rows": 1, "dim": 4, "data": "not base64!"}}, "vectors"),
        ("POST", up, {"ids": [5], "vectors": {"rows": 1, "dim": 4, "data": "AAAA"}}, "bytes"),
        ("POST", up, {"ids": [5], "vectors": "1,2,3,4"}, "vectors"),
        ("POST", up, {"collection": "other", "ids": [5], "vectors": [[1, 2, 3, 4]]}, "differs from the path"),
        ("POST", up + "?forms=plain", {"ids": [5], "vectors": [[1, 2, 3, 4]]}, "unknown query parameters"),
        ("POST", up + "?form=xml", {"ids": [5], "vectors": [[1, 2, 3, 4]]}, "form must be"),
        ("POST", up + "?timeout=soon", {"ids": [5], "vectors": [[1, 2, 3, 4]]}, "timeout"),
        ("POST", search, {"queries": [[1, 0, 0, 0]], "k": "ten"}, "k"),
        ("POST", search, {"queries": [[1, 0, 0, 0]], "k": 2.5}, "k"),
        ("POST", search, {"queries": [[1, 0, 0, 0]], "k": 1, "funnel": {"dim": 2}}, "funnel"),
        ("POST", f"/v1/collections/{name}/upsert-stream", b'{"ids": [5], "vectors": [[1,2,3,4]]}\n{"ids":',
         "not valid JSON"),
    ]
    for method, path, body, needle in cases:
        raw = body if isinstance(body, bytes) else None
        e = http_error(server, method, path, None if raw else body, raw=raw)
        assert (e["status"], e["code"]) == (400, "INVALID_ARGUMENT"), (path, body, e)
        assert needle in e["message"], (needle, e["message"])
    # the stream's first, good line was written; nothing else was
    assert ok(server, "POST", f"/v1/collections/{name}/get?form=plain", {"ids": [5]})["ids"] == [5]
    ok(server, "POST", f"/v1/collections/{name}/delete", {"ids": [5]})
    assert _state(server, name) == before
    e = http_error(server, "POST", search + "?timeout=0.000001", {"queries": [[1, 0, 0, 0]], "k": 1})
    assert (e["status"], e["code"]) == (504, "DEADLINE_EXCEEDED")
    for method, path, code in (("PUT", up, 405), ("GET", up, 405), ("POST", "/v2/collections", 404),
                               ("GET", f"/v1/collections/{name}/nothing", 404)):
        status, got, _ = call(server, method, path, {})
        assert status == code and got["error"]["request_id"], got
    assert _state(server, name) == before
    ok(server, "DELETE", f"/v1/collections/{name}")


# ----- keys, TLS, limits ------------------------------------------------------------------
@pytest.fixture(scope="module")
def keyed_collection(keyed):
    name = f"k-{uuid.uuid4().hex[:6]}"
    admin = {"authorization": f"Bearer {keyed['admin']}"}
    ok(keyed, "POST", "/v1/collections", {"name": name, "dim": 8, "metric": "COSINE"}, headers=admin)
    ok(keyed, "POST", f"/v1/collections/{name}/upsert", {"ids": list(range(6)), "vectors": np.eye(6, 8).tolist()},
       headers={"api-key": keyed["write"]})
    return name


def test_keys_roles_and_their_errors_match_grpc(keyed, keyed_collection):
    name = keyed_collection
    read = {"authorization": f"Bearer {keyed['read']}"}
    before = _state(keyed, name, read)
    body = {"ids": [7], "vectors": [np.ones(8).tolist()]}
    up = f"/v1/collections/{name}/upsert"
    e = http_error(keyed, "POST", up, body)
    assert (e["status"], e["code"]) == (401, "UNAUTHENTICATED") and e["message"].startswith("missing API key")
    with sdk(keyed) as c:
        assert sdk_error(lambda: c.upsert(name, [7], np.ones((1, 8)))).code == "UNAUTHENTICATED"
    with sdk(keyed, "nv_wrong") as c:
        e = same_error(lambda: c.upsert(name, [7], np.ones((1, 8))), keyed, "POST", up, body,
                       headers={"authorization": "Bearer nv_wrong"})
        assert e["status"] == 401
        same_error(lambda: c.list_collections(), keyed, "GET", "/v1/collections", headers={"api-key": "nv_wrong"})
    with sdk(keyed, keyed["read"]) as c:
        for headers in (read, {"api-key": keyed["read"]}):
            e = same_error(lambda: c.upsert(name, [7], np.ones((1, 8))), keyed, "POST", up, body, headers=headers)
            assert e["status"] == 403 and "'write' role" in e["message"]
        same_error(lambda: c.drop_collection(name), keyed, "DELETE", f"/v1/collections/{name}", headers=read)
        same_error(lambda: c.create_index(name, {}), keyed, "POST", f"/v1/collections/{name}/index", {},
                   headers=read)
        # the key is checked before the body is read: an oversize body without a key is still 401
        e = http_error(keyed, "POST", up, raw=b"x" * (LIMIT_BYTES * 2))
        assert e["status"] == 401
        assert ok(keyed, "GET", f"/v1/collections/{name}", headers=read)["collection"]["vectors"] == "6"
        assert c.describe_collection(name).vectors == 6
    assert _state(keyed, name, read) == before
    assert ok(keyed, "GET", "/healthz") == {"status": "SERVING"}  # open, as gRPC health is


def test_limits_oversize_bodies_and_too_many_rows(keyed, keyed_collection):
    name = keyed_collection
    write = {"authorization": f"Bearer {keyed['write']}"}
    before = _state(keyed, name, write)
    rows = np.random.default_rng(0).standard_normal((MAX_VECTORS + 1, 8)).astype(np.float32)
    # a body over --max-message-bytes: 413 before the gateway sees it
    big = {"ids": list(range(100, 100 + 10_000)), "vectors": np.ones((10_000, 8)).tolist()}
    raw = json.dumps(big).encode()
    assert len(raw) > LIMIT_BYTES
    for body in (raw, iter([raw[:100_000], raw[100_000:]])):  # with a Content-Length; chunked
        e = http_error(keyed, "POST", f"/v1/collections/{name}/upsert", raw=body, headers=write)
        assert (e["status"], e["code"]) == (413, "RESOURCE_EXHAUSTED") and "--max-message-bytes" in e["message"]
    e = http_error(keyed, "POST", f"/v1/collections/{name}/upsert-stream", [big], headers=write)
    assert e["status"] == 413 and "NDJSON" in e["message"]
    e = http_error(keyed, "POST", f"/v1/collections/{name}/upsert-stream", raw=json.dumps(big).encode(),
                   headers=write)
    assert e["status"] == 413 and "batch 0 of the stream" in e["message"]
    # within the body limit, over --max-vectors: the gateway's own refusal, as over gRPC
    body = {"ids": list(range(100, 101 + MAX_VECTORS)), "vectors": packed(rows)}
    with sdk(keyed, keyed["write"]) as c:
        e = same_error(lambda: c.upsert(name, np.arange(100, 101 + MAX_VECTORS), rows), keyed, "POST",
                       f"/v1/collections/{name}/upsert", body, headers=write)
    assert (e["status"], e["code"]) == (429, "RESOURCE_EXHAUSTED")
    assert _state(keyed, name, write) == before
    # an NDJSON stream may total more than the limit: each line is one message
    lines = "\n".join(json.dumps({"ids": list(range(1000 + s, 1000 + s + 500)), "vectors": packed(
        np.ones((500, 8)))}) for s in range(0, 10_000, 500))
    assert len(lines) > LIMIT_BYTES
    got = ok(keyed, "POST", f"/v1/collections/{name}/upsert-stream?form=plain", raw=lines.encode(), headers=write)
    assert got == {"upserted": 10_000, "batches": 20}
    assert ok(keyed, "GET", f"/v1/collections/{name}", headers=write)["collection"]["vectors"] == "10006"
    ok(keyed, "POST", f"/v1/collections/{name}/delete", {"ids": list(range(1000, 11_000))}, headers=write)
    assert _state(keyed, name, write) == before


def test_https_with_the_servers_certificate_and_client_certificates(keyed, keyed_collection, pki):
    read = {"authorization": f"Bearer {keyed['read']}"}
    got = ok(keyed, "POST", f"/v1/collections/{keyed_collection}/search?form=plain",
             {"queries": [np.eye(1, 8)[0].tolist()], "k": 1}, headers=read)
    assert got["ids"] == [[0]]
    plain = dict(keyed, base=f"http://127.0.0.1:{keyed['http_port']}", ctx=None)
    with pytest.raises((urllib.error.URLError, ConnectionError, http.client.HTTPException)):
        call(plain, "GET", "/healthz")  # plaintext HTTP to the HTTPS port
    untrusting = dict(keyed, ctx=ssl.create_default_context(cafile=str(pki / "other.pem")))
    with pytest.raises(urllib.error.URLError) as err:
        call(untrusting, "GET", "/healthz")  # a server certificate the client does not trust
    assert isinstance(err.value.reason, ssl.SSLCertVerificationError)
    no_cert = dict(keyed, ctx=ssl.create_default_context(cafile=str(pki / "ca.pem")))
    with pytest.raises((urllib.error.URLError, ConnectionError, ssl.SSLError, http.client.HTTPException)):
        call(no_cert, "GET", "/healthz")  # mutual TLS: no client certificate
    assert ok(keyed, "GET", "/healthz") == {"status": "SERVING"}  # and it keeps serving


# ----- the spec and the docs -------------------------------------------------------------
def test_openapi_covers_every_rpc_and_field(server):
    status, spec, headers = call(server, "GET", "/openapi.json")
    assert status == 200 and headers["content-type"].startswith("application/json")
    assert spec == openapi.build_spec()
    committed = json.loads((REPO / "docs" / "openapi.json").read_text())
    assert committed == spec, ("docs/openapi.json is stale: regenerate it with "
                               "`python -m nestvec.cluster._server.openapi > docs/openapi.json`")
    ops = {op["x-grpc-method"]: op for path in spec["paths"].values() for op in path.values()
           if "x-grpc-method" in op}
    assert set(ops) == {f"/{SERVICE.full_name}/{m.name}" for m in SERVICE.methods}
    assert len(ROUTES) == len(SERVICE.methods)
    schemas = spec["components"]["schemas"]
    for m in pb.DESCRIPTOR.message_types_by_name.values():
        props = schemas[m.full_name]["properties"]
        assert set(props) == {f.name for f in m.fields}, m.full_name
        for f in m.fields:
            assert props[f.name]["x-proto-field"] == f.number
    for e in pb.DESCRIPTOR.enum_types_by_name.values():
        assert schemas[e.full_name]["anyOf"][0]["enum"] == [v.name for v in e.values]
    for m in SERVICE.methods:
        op = ops[f"/{SERVICE.full_name}/{m.name}"]
        assert (op["x-grpc-request"], op["x-grpc-response"]) == (m.input_type.full_name, m.output_type.full_name)
        if "requestBody" in op:
            body = next(iter(op["requestBody"]["content"].values()))["schema"]
            assert set(body["properties"]) == {f.name for f in m.input_type.fields}
    # the spec generator refuses an RPC without a route
    assert subprocess.run([sys.executable, "-m", "nestvec.cluster._server.openapi", "--check",
                           str(REPO / "docs" / "openapi.json")]).returncode == 0


def test_docs_page_renders_offline(server):
    req = urllib.request.Request(server["base"] + "/docs")
    with urllib.request.urlopen(req, timeout=30) as r:
        assert r.status == 200 and r.headers["content-type"].startswith("text/html")
        assert "default-src 'none'" in r.headers["content-security-policy"]
        page = r.read().decode()
    for route in ROUTES:
        assert route.path in page and route.rpc in page
    assert not re.search(r"""(src|href)=["']?https?://""", page), "the page must not fetch anything"


def _walkthrough() -> list[tuple[str, str | None]]:
    """(bash block, the json block shown after it or None) of docs/http.md's walkthrough."""
    text = (REPO / "docs" / "http.md").read_text()
    section = text.split("## Walkthrough", 1)[1].split("\n## ", 1)[0]
    blocks = re.findall(r"```(bash|json)\n(.*?)```", section, re.S)
    out = []
    for i, (kind, body) in enumerate(blocks):
        if kind == "bash":
            nxt = blocks[i + 1] if i + 1 < len(blocks) else None
            out.append((body, nxt[1] if nxt and nxt[0] == "json" else None))
    return out


def _json_values(text: str) -> list:
    dec, out, i = json.JSONDecoder(), [], 0
    while i < len(text):
        if text[i].isspace():
            i += 1
            continue
        value, i = dec.raw_decode(text, i)
        out.append(value)
    return out


def _scrub(v):
    if isinstance(v, dict):
        return {k: _scrub(x) for k, x in v.items() if k != "request_id"}
    if isinstance(v, list):
        return [_scrub(x) for x in v]
    return v


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_the_docs_curl_walkthrough_runs_as_written(server):
    blocks = _walkthrough()
    assert len(blocks) >= 6 and sum(e is not None for _, e in blocks) >= 5
    port = server["base"].rsplit(":", 1)[1]
    exports = ""  # each block runs on its own, after the walkthrough's `export` lines so far
    for script, expected in blocks:
        script = script.replace("127.0.0.1:8080", f"127.0.0.1:{port}")
        run = subprocess.run(["bash", "-euo", "pipefail", "-c", exports + script],
                             capture_output=True, text=True, timeout=120)
        exports += "".join(line + "\n" for line in script.splitlines() if line.startswith("export "))
        assert run.returncode == 0, (script, run.stdout, run.stderr)
        if expected is not None:
            assert _scrub(_json_values(run.stdout)) == _scrub(_json_values(expected)), (script, run.stdout)


def _readme_block() -> str:
    text = (REPO / "README.md").read_text()
    start = text.index("```bash\nnestvec serve --http-port 8080 &")
    return text[start + len("```bash\n"): text.index("```", start + 8)]


def _cosine_top(docs: np.ndarray, query: np.ndarray, dim: int, k: int) -> list[int]:
    d = docs[:, :dim] / np.linalg.norm(docs[:, :dim], axis=1, keepdims=True)
    q = query[:dim] / np.linalg.norm(query[:dim])
    return [int(i) + 1 for i in np.argsort(-(d @ q), kind="stable")[:k]]  # ids are 1-based rows


@pytest.mark.skipif(shutil.which("curl") is None, reason="needs curl")
def test_the_readme_curl_block_runs_as_written(server):
    """README's "Two doors" block, with the test's server standing in for its `nestvec
    serve` line: every call succeeds, and each search is the brute-force answer."""
    lines = _readme_block().splitlines()
    assert lines[0].startswith("nestvec serve --http-port 8080")
    port = server["base"].rsplit(":", 1)[1]
    script = "\n".join(lines[1:]).replace("127.0.0.1:8080", f"127.0.0.1:{port}")
    try:
        run = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True,
                             timeout=120)
        assert run.returncode == 0, run.stderr
        created, upserted, at_prefix, funnel, planned = _json_values(run.stdout)
        assert created["collection"]["name"] == "songs", created
        curls = [line for line in lines if line.startswith("curl ")]
        body = json.loads(re.search(r"-d '(.*)'$", curls[1]).group(1))
        docs = np.asarray(body["vectors"], dtype=np.float64)
        assert int(upserted["upserted"]) == len(docs) == 3, upserted
        query = np.asarray(json.loads(re.search(r"-d '(.*)'$", curls[2]).group(1))["queries"][0])
        assert at_prefix["ids"] == [_cosine_top(docs, query, 4, 2)]
        # the funnel: shortlist 2 at dim 2, re-rank those at the full 8 dims
        shortlist = _cosine_top(docs, query, 2, 2)
        full = _cosine_top(docs, query, 8, 3)
        assert funnel["ids"] == [[i for i in full if i in shortlist]]
        assert planned["ids"] == [full[:2]]  # recall 0.95 on 3 rows: the exact answer
        d = docs / np.linalg.norm(docs, axis=1, keepdims=True)
        np.testing.assert_allclose(planned["scores"][0], d[np.array(full[:2]) - 1] @ (query / np.linalg.norm(query)),
                                   rtol=1e-5)
    finally:
        with Client(server["address"]) as c:
            if "songs" in [i.name for i in c.list_collections()]:
                c.drop_collection("songs")


def test_payloads_and_filters_over_http_match_grpc(server):
    """Upsert with payload columns, SetPayload, Count, a filtered search with payloads and
    Delete by filter over HTTP/JSON: the same answers as the SDK over gRPC."""
    name = f"hf-{uuid.uuid4().hex[:6]}"
    rng = np.random.default_rng(2)
    docs = rng.standard_normal((300, 8)).astype(np.float32)
    colors = [("red", "green", "blue")[i % 3] for i in range(300)]
    with sdk(server) as c:
        c.create_collection(name, 8, "cosine", shards=2)
        try:
            ok(server, "POST", f"/v1/collections/{name}/upsert?form=plain", {
                "ids": list(range(300)), "vectors": docs.tolist(),
                "payload": [{"name": "color", "type": "KEYWORD", "keywords": colors},
                            {"name": "n", "type": "INTEGER", "integers": list(range(300))}]})
            assert c.describe_collection(name).payload_schema == {"color": "keyword", "n": "int"}
            got = ok(server, "POST", f"/v1/collections/{name}/set-payload", {
                "ids": [0, 3, 999], "payload": [{"name": "color", "type": "KEYWORD",
                                                 "keywords": ["green", "green", "green"]}]})
            assert int(got["updated"]) == 2
            flt = {"allOf": {"filters": [{"match": {"field": "color", "keyword": "red"}},
                                         {"range": {"field": "n", "lt": 150}}]}}
            assert int(ok(server, "POST", f"/v1/collections/{name}/count", {"filter": flt})["count"]) == \
                c.count(name, {"color": "red", "n": {"$lt": 150}}) == 48
            q = docs[:2]
            http = search_result(ok(server, "POST", f"/v1/collections/{name}/search",
                                    {"queries": packed(q), "k": 5, "filter": flt, "withPayload": True}))
            grpc_res = c.search(name, q, k=5, filter={"color": "red", "n": {"$lt": 150}}, with_payload=True)
            same_search(http, grpc_res)
            assert http.payloads == grpc_res.payloads
            assert all(p["color"] == "red" and p["n"] < 150 for row in http.payloads for p in row)
            bad = http_error(server, "POST", f"/v1/collections/{name}/count",
                             {"filter": {"match": {"field": "nope", "keyword": "x"}}})
            assert bad["status"] == 400 and "unknown payload field" in bad["message"]
            got = ok(server, "POST", f"/v1/collections/{name}/delete",
                     {"filter": {"match": {"field": "color", "keyword": "blue"}}})
            assert int(got["deleted"]) == 100 and c.count(name) == 200
        finally:
            c.drop_collection(name)
