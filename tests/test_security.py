"""Hostile clients over real gRPC: keys and roles, TLS and mTLS, limits, metrics, request ids."""
from __future__ import annotations

import asyncio
import re
import subprocess
import sys
import time
import urllib.request
import uuid

import grpc
import numpy as np
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from certs import issue, make_ca
from nestvec.client import AsyncClient, Client
from nestvec.cluster._server.auth import CALL_ROLES, ROLES, KeyStore, new_key
from nestvec.cluster._engine.limits import Limits
from nestvec.cluster._server.security import ExposureRefused, TlsConfig, check_exposure
from nestvec.errors import NestvecError
from nestvec.v1 import nestvec_pb2 as pb
from nestvec.v1 import nestvec_pb2_grpc as pb_grpc
from oracle import assert_matches_oracle
from proc_util import free_port

DIM = 16
KEYS = {role: f"key-{role}-{uuid.uuid4().hex}" for role in ROLES}


def _gateway(coordinator, **kwargs):
    from nestvec.cluster._server.serve import GatewayThread
    return GatewayThread(coordinator, host="127.0.0.1", port=0, **kwargs)


@pytest.fixture(scope="module")
def keyed(coordinator):
    keys = KeyStore.load(environ={"NESTVEC_API_KEYS": ",".join(f"{r}:{k}" for r, k in KEYS.items())})
    gw = _gateway(coordinator, keys=keys)
    name = f"sec-{uuid.uuid4().hex[:6]}"
    with Client(gw.address, api_key=KEYS["admin"]) as c:
        c.create_collection(name, DIM, "dot")
        c.upsert(name, np.arange(100), np.random.default_rng(0).standard_normal((100, DIM)))
    yield gw, name
    with Client(gw.address, api_key=KEYS["admin"]) as c:
        c.drop_collection(name)
    gw.stop()


def _request(call: str, name: str):
    """A valid request for each call (create/drop use a fresh name so every role can try)."""
    vec = pb.Matrix(rows=1, dim=DIM, dtype=pb.FLOAT32, data=np.ones(DIM, np.float32).tobytes())
    fresh = f"sec-new-{uuid.uuid4().hex[:8]}"
    return {
        "CreateCollection": pb.CreateCollectionRequest(name=fresh, dim=DIM, metric=pb.DOT),
        "DescribeCollection": pb.DescribeCollectionRequest(name=name),
        "ListCollections": pb.ListCollectionsRequest(),
        "DropCollection": pb.DropCollectionRequest(name=fresh),
        "Upsert": pb.UpsertRequest(collection=name, ids=[5], vectors=vec),
        "UpsertStream": iter([pb.UpsertRequest(collection=name, ids=[6], vectors=vec)]),
        "Delete": pb.DeleteRequest(collection=name, ids=[999_999]),
        "Get": pb.GetRequest(collection=name, ids=[1]),
        "Search": pb.SearchRequest(collection=name, queries=vec, k=3),
        "CreateIndex": pb.CreateIndexRequest(collection=name, index=pb.IndexSpec(dim=8)),
        "SetPayload": pb.SetPayloadRequest(collection=name, ids=[7], payload=[
            pb.PayloadColumn(name="color", type=pb.KEYWORD, keywords=["red"])]),
        "Count": pb.CountRequest(collection=name),
    }[call]


def _code(fn) -> str:
    try:
        fn()
        return "OK"
    except grpc.RpcError as err:
        return err.code().name


@pytest.mark.parametrize("role", ROLES + ("none", "wrong"))
def test_every_role_against_every_call(keyed, role):
    gw, name = keyed
    key = {"none": None, "wrong": "not-a-key"}.get(role, KEYS.get(role))
    md = (("authorization", f"Bearer {key}"),) if key else ()
    with grpc.insecure_channel(gw.address) as ch:
        stub = pb_grpc.VectorSearchStub(ch)
        for call in CALL_ROLES:
            if call == "DropCollection" and role == "admin":
                # make the collection first so the allowed drop succeeds
                create = _request("CreateCollection", name)
                stub.CreateCollection(create, metadata=md, timeout=30)
                req = pb.DropCollectionRequest(name=create.name)
            else:
                req = _request(call, name)
            code = _code(lambda: getattr(stub, call)(req, metadata=md, timeout=30))
            if role in ("none", "wrong"):
                assert code == "UNAUTHENTICATED", (role, call, code)
            elif ROLES.index(role) >= ROLES.index(CALL_ROLES[call]):
                # allowed: succeeds (CreateCollection leaves a collection: clean it up)
                assert code == "OK", (role, call, code)
                if call == "CreateCollection":
                    stub.DropCollection(pb.DropCollectionRequest(name=req.name),
                                        metadata=(("authorization", f"Bearer {KEYS['admin']}"),))
            else:
                assert code == "PERMISSION_DENIED", (role, call, code)
        # Health checks stay open, and the server still answers after all of it.
        health = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(), timeout=10)
        assert health.status == health_pb2.HealthCheckResponse.SERVING
    with Client(gw.address, api_key=KEYS["read"]) as c:
        assert c.search(name, np.ones(DIM), k=3).ids.shape == (1, 3)


def test_sdk_errors_say_what_is_wrong(keyed):
    gw, name = keyed
    with Client(gw.address) as c, pytest.raises(NestvecError) as err:
        c.search(name, np.ones(DIM))
    assert err.value.code == "UNAUTHENTICATED" and "Bearer" in err.value.message
    assert re.fullmatch(r"[0-9a-f]{16}", err.value.request_id)
    with Client(gw.address, api_key=KEYS["read"]) as c, pytest.raises(NestvecError) as err:
        c.upsert(name, [1], np.ones((1, DIM)))
    assert err.value.code == "PERMISSION_DENIED" and "'write'" in err.value.message


def test_key_file_and_keygen(tmp_path):
    key, line = new_key("write", "ci")
    (tmp_path / "keys").write_text(f"# comment\n{line}\n")
    store = KeyStore.load(str(tmp_path / "keys"), environ={})
    assert store.role_for(key) == "write" and store.role_for(key + "x") is None
    assert key not in (tmp_path / "keys").read_text()  # only the digest is stored
    out = subprocess.run([sys.executable, "-m", "nestvec.cluster._ops.cli", "keygen", "--role", "read"],
                         capture_output=True, text=True, timeout=60)
    lines = [ln for ln in out.stdout.splitlines() if not ln.startswith("#")]
    assert lines[0].startswith("nv_") and lines[1].startswith("read sha256:")


# ----- TLS --------------------------------------------------------------------------
@pytest.fixture(scope="module")
def pki():
    ca = make_ca()
    return {"ca": ca, "server": issue(ca, "localhost", server=True),
            "client": issue(ca, "client", server=False),
            "expired_client": issue(ca, "old client", server=False, expired=True),
            "expired_server": issue(ca, "localhost", server=True, expired=True),
            "other_ca": make_ca("someone else")}


@pytest.fixture(scope="module")
def tls_collection(coordinator):
    name = f"tls-{uuid.uuid4().hex[:6]}"
    coordinator.create_collection(name, DIM, "dot")
    coordinator.upsert(name, np.arange(10), np.eye(10, DIM, dtype=np.float32))
    yield name
    coordinator.drop_collection(name)


def test_tls_server(coordinator, pki, tls_collection):
    gw = _gateway(coordinator, tls=TlsConfig(pki["server"].cert, pki["server"].key))
    try:
        with Client(gw.address, root_certificates=pki["ca"].cert) as c:
            assert c.search(tls_collection, np.eye(1, DIM), k=1).ids[0, 0] == 0
        with Client(gw.address, timeout=5) as plain, pytest.raises(NestvecError) as err:
            plain.list_collections()  # plaintext client to a TLS server
        assert err.value.code == "UNAVAILABLE"
        with Client(gw.address, timeout=5, root_certificates=pki["other_ca"].cert) as wrong, \
                pytest.raises(NestvecError) as err:
            wrong.list_collections()  # a server certificate the client does not trust
        assert err.value.code == "UNAVAILABLE"
        with Client(gw.address, root_certificates=pki["ca"].cert) as c:  # still serving
            assert [x.name for x in c.list_collections()]
    finally:
        gw.stop()


def test_expired_server_certificate_is_refused(coordinator, pki):
    gw = _gateway(coordinator, tls=TlsConfig(pki["expired_server"].cert, pki["expired_server"].key))
    try:
        with Client(gw.address, timeout=5, root_certificates=pki["ca"].cert) as c, \
                pytest.raises(NestvecError) as err:
            c.list_collections()
        assert err.value.code == "UNAVAILABLE"
    finally:
        gw.stop()


def test_mutual_tls(coordinator, pki, tls_collection):
    gw = _gateway(coordinator, tls=TlsConfig(pki["server"].cert, pki["server"].key, pki["ca"].cert))
    try:
        ok = dict(root_certificates=pki["ca"].cert)
        with Client(gw.address, client_certificate=pki["client"].cert, client_key=pki["client"].key,
                    **ok) as c:
            assert c.search(tls_collection, np.eye(1, DIM), k=1).ids[0, 0] == 0
        for cert in (None, pki["expired_client"]):  # no client certificate; an expired one
            kw = dict(client_certificate=cert.cert, client_key=cert.key) if cert else {}
            with Client(gw.address, timeout=5, **ok, **kw) as c, pytest.raises(NestvecError) as err:
                c.list_collections()
            assert err.value.code == "UNAVAILABLE"
        with Client(gw.address, client_certificate=pki["client"].cert, client_key=pki["client"].key,
                    **ok) as c:  # and the server keeps serving
            assert c.search(tls_collection, np.eye(1, DIM), k=1).ids[0, 0] == 0
    finally:
        gw.stop()


# ----- exposure rules ----------------------------------------------------------------
def test_exposure_rules():
    assert check_exposure("127.0.0.1", False, None, False)  # allowed, with a warning
    assert check_exposure("::1", True, None, False) == []
    for has_keys, tls in ((False, None), (True, None), (False, object())):
        with pytest.raises(ExposureRefused, match="--insecure"):
            check_exposure("0.0.0.0", has_keys, tls, False)
    assert check_exposure("0.0.0.0", False, None, True)  # allowed with --insecure, warned
    assert check_exposure("10.1.2.3", True, object(), False) == []


def test_serve_refuses_a_public_address_without_keys_or_tls():
    out = subprocess.run([sys.executable, "-m", "nestvec.cluster._ops.cli", "serve", "--in-memory",
                          "--host", "0.0.0.0", "--port", str(free_port())],
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 2
    assert "refusing to listen on 0.0.0.0 without API keys and TLS" in out.stderr


# ----- limits and back-pressure ------------------------------------------------------
def test_limits_are_enforced_with_resource_exhausted(coordinator):
    from nestvec.cluster._distributed.coordinator import Coordinator

    limits = Limits(max_queries=4, max_vectors=5, max_ids=6, max_k=7)
    coord = Coordinator(namespace=coordinator.namespace, limits=limits)
    gw = _gateway(coord, limits=limits)
    name = f"lim-{uuid.uuid4().hex[:6]}"
    try:
        with Client(gw.address) as c:
            c.create_collection(name, DIM, "dot")
            c.upsert(name, np.arange(5), np.ones((5, DIM)))
            for fn, code, word in [
                (lambda: c.search(name, np.ones((5, DIM))), "RESOURCE_EXHAUSTED", "queries"),
                (lambda: c.upsert(name, np.arange(6), np.ones((6, DIM)), batch_bytes=1 << 20),
                 "RESOURCE_EXHAUSTED", "vectors"),
                (lambda: c.get(name, np.arange(7)), "RESOURCE_EXHAUSTED", "ids"),
                (lambda: c.delete(name, np.arange(7)), "RESOURCE_EXHAUSTED", "ids"),
                (lambda: c.search(name, np.ones(DIM), k=8), "INVALID_ARGUMENT", "k must be"),
            ]:
                with pytest.raises(NestvecError) as err:
                    fn()
                assert err.value.code == code and word in err.value.message
            assert c.describe_collection(name).vectors == 5  # nothing was half-done
            c.drop_collection(name)
    finally:
        gw.stop()


def test_500_concurrent_clients_over_the_limit(coordinator, corpus):
    limits = Limits(max_concurrent=8)
    gw = _gateway(coordinator, limits=limits)
    name = f"conc-{uuid.uuid4().hex[:6]}"
    docs, queries = corpus["docs"][:20_000], corpus["queries"][:32]
    ids = np.arange(docs.shape[0], dtype=np.uint64)
    coordinator.create_collection(name, 384, "cosine", shards=2)
    coordinator.upsert(name, ids, docs)
    rss_before = _rss_bytes()

    async def one(client):
        try:
            return await client.search(name, queries, k=10)
        except NestvecError as err:
            return err

    async def storm():
        clients = [AsyncClient(gw.address, timeout=60) for _ in range(50)]
        try:
            return await asyncio.gather(*[one(clients[i % 50]) for i in range(500)])
        finally:
            await asyncio.gather(*[c.close() for c in clients])

    try:
        results = asyncio.run(storm())
        grown = _rss_bytes() - rss_before
        ok = [r for r in results if not isinstance(r, NestvecError)]
        refused = [r for r in results if isinstance(r, NestvecError)]
        assert {e.code for e in refused} == {"RESOURCE_EXHAUSTED"}
        assert all("concurrent calls" in e.message for e in refused)
        assert len(refused) > 100 and len(ok) >= limits.max_concurrent
        for r in ok:  # admitted calls still get the exact answer
            assert_matches_oracle(r.ids, r.scores, ids, docs, queries, "cosine", 384, 10)
        guard = gw.gateway.metrics
        assert guard.rejected._value.get() == len(refused)
        # Memory stays bounded: refusals hold nothing (clients and server share this
        # process, and together grew by well under 200 MiB).
        assert grown < 200 << 20, grown
        with Client(gw.address) as c:  # and the gateway serves normally afterwards
            assert c.search(name, queries[:1], k=1).ids.shape == (1, 1)
    finally:
        coordinator.drop_collection(name)
        gw.stop()


def _rss_bytes() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * 4096


def test_deadline_reaches_the_caller(coordinator, corpus):
    gw = _gateway(coordinator)
    name = f"dl-{uuid.uuid4().hex[:6]}"
    coordinator.create_collection(name, 384, "cosine", shards=2)
    coordinator.upsert(name, np.arange(20_000), corpus["docs"][:20_000])
    try:
        with Client(gw.address) as c:
            with pytest.raises(NestvecError) as err:
                c.search(name, corpus["queries"], k=10, timeout=0.001)
            assert err.value.code == "DEADLINE_EXCEEDED"
            assert c.search(name, corpus["queries"][:2], k=10).ids.shape == (2, 10)
    finally:
        coordinator.drop_collection(name)
        gw.stop()


# ----- metrics and request ids -------------------------------------------------------
def test_metrics_count_what_was_served(coordinator):
    from nestvec.cluster._server.metrics import GatewayMetrics

    metrics = GatewayMetrics(coordinator)
    port = metrics.serve(0)
    gw = _gateway(coordinator, metrics=metrics)
    name = f"met-{uuid.uuid4().hex[:6]}"
    try:
        with Client(gw.address) as c:
            c.create_collection(name, DIM, "dot", shards=2)
            c.upsert(name, np.arange(50), np.ones((50, DIM)))
            for _ in range(7):
                c.search(name, np.ones(DIM), k=3)
            for _ in range(3):
                with pytest.raises(NestvecError):
                    c.search(name, np.ones(DIM), k=0)
            with grpc.insecure_channel(gw.address) as ch:
                _, call = pb_grpc.VectorSearchStub(ch).ListCollections.with_call(pb.ListCollectionsRequest())
                assert re.fullmatch(r"[0-9a-f]{16}", dict(call.trailing_metadata())["x-request-id"])
        text = urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=30).read().decode()
        assert 'nestvec_requests_total{code="OK",method="Search"} 7.0' in text
        assert 'nestvec_requests_total{code="INVALID_ARGUMENT",method="Search"} 3.0' in text
        assert 'nestvec_request_seconds_count{code="OK",method="Search"} 7.0' in text
        counts = re.findall(rf'nestvec_shard_vectors{{collection="{name}",shard="\d"}} (\d+)', text)
        assert sorted(map(float, counts)) and sum(map(float, counts)) == 50
        assert f'nestvec_shard_up{{collection="{name}",shard="0"}} 1.0' in text
        for gauge in ("nestvec_shard_wal_bytes", "nestvec_shard_restarts", "nestvec_shard_tombstones"):
            assert f'{gauge}{{collection="{name}",shard="1"}} 0.0' in text  # in-memory, never restarted
    finally:
        with Client(gw.address) as c:
            c.drop_collection(name)
        gw.stop()


def test_a_write_queued_past_its_deadline_is_not_applied(coordinator, corpus):
    """A shard busy with a long search; an upsert queued behind it with a short deadline
    fails with DEADLINE_EXCEEDED, and the shard, reaching it late, skips it."""
    import threading

    name = f"dlq-{uuid.uuid4().hex[:6]}"
    coordinator.create_collection(name, 384, "cosine", shards=1)
    coordinator.upsert(name, np.arange(20_000), corpus["docs"][:20_000])
    busy = threading.Thread(target=lambda: coordinator.search(
        name, np.tile(corpus["queries"], (3, 1)), k=10, timeout=120))
    try:
        busy.start()
        time.sleep(0.3)  # the long search (~1 s of work) is in the shard's queue first
        with pytest.raises(NestvecError) as err:
            coordinator.upsert(name, [123_456], corpus["docs"][:1], timeout=0.05)
        assert err.value.code == "DEADLINE_EXCEEDED"
        busy.join(120)
        assert coordinator.get(name, [123_456]).missing_ids.tolist() == [123_456]
        assert coordinator.describe_collection(name)[1][0]["vectors"] == 20_000
    finally:
        busy.join(120)
        coordinator.drop_collection(name)


def test_sdk_warns_before_sending_a_key_over_plaintext_to_another_host():
    import warnings
    from nestvec.client._channel import PlaintextKeyWarning
    with pytest.warns(PlaintextKeyWarning, match="without TLS"):
        Client("search.example:50051", api_key="k").close()  # no connection is made
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        for address in ("127.0.0.1:50051", "localhost:1", "[::1]:50051"):
            Client(address, api_key="k").close()   # loopback: allowed, as on the server
        Client("search.example:50051").close()    # no key: nothing to leak
        Client("search.example:50051", api_key="k", tls=True).close()
