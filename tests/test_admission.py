"""Admission before the body is read (cluster/_server/admission.py): a keyless or
wrong-role call is refused on its metadata, and concurrent oversized uploads
without a key do not grow the gateway. The server is a real `nestvec serve`
process; its RSS is read from /proc."""
from __future__ import annotations

import concurrent.futures
import os
import subprocess
import sys
import time

import grpc
import numpy as np
import pytest

from nestvec.client import Client
from nestvec.cluster._server.auth import new_key
from nestvec.errors import NestvecError
from nestvec.v1 import nestvec_pb2 as pb
from proc_util import free_port

UPLOAD_BYTES = 48 << 20   # under the 64 MiB message limit: only the key check can stop it
UPLOADS = 100             # concurrent attempts
RSS_BOUND = 64 << 20      # docs/security.md: growth over idle with 100 such attempts


def _rss(pid: int) -> int:
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS")


@pytest.fixture(scope="module")
def keyed_server(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("adm")
    write_key, write_line = new_key("write", "w")
    read_key, read_line = new_key("read", "r")
    admin_key, admin_line = new_key("admin", "a")
    keys = tmp / "keys"
    keys.write_text("\n".join([write_line, read_line, admin_line]) + "\n")
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-m", "nestvec.cluster._ops.cli", "serve", "--in-memory",
                             "--port", str(port), "--shards", "1", "--api-keys-file", str(keys),
                             "--namespace", f"adm{port}"],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    address = f"127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            with Client(address, api_key=admin_key, timeout=5) as c:
                c.list_collections()
            break
        except NestvecError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError("nestvec serve did not start")
            time.sleep(0.5)
    with Client(address, api_key=admin_key) as c:
        c.create_collection("adm", dim=8, metric="dot")
    yield {"address": address, "pid": proc.pid, "write": write_key, "read": read_key, "admin": admin_key}
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def _raw_upsert(address: str, body: bytes, metadata=()):
    """One Upsert with a pre-encoded body (identity serializer: no copy per call here)."""
    with grpc.insecure_channel(address, options=[("grpc.max_send_message_length", 256 << 20)]) as ch:
        call = ch.unary_unary("/nestvec.v1.VectorSearch/Upsert", request_serializer=None,
                              response_deserializer=None)
        try:
            call(body, metadata=metadata, timeout=60)
            return "OK"
        except grpc.RpcError as err:
            return err.code().name


def test_oversized_unauthenticated_uploads_do_not_grow_the_gateway(keyed_server):
    rows = UPLOAD_BYTES // (8 * 4)
    body = pb.UpsertRequest(collection="adm", ids=list(range(8)),
                            vectors=pb.Matrix(rows=rows, dim=8, dtype=pb.FLOAT32,
                                              data=bytes(rows * 8 * 4))).SerializeToString()
    pid = keyed_server["pid"]
    idle = _rss(pid)
    peak = [idle]
    done = False

    def sample():
        while not done:
            peak[0] = max(peak[0], _rss(pid))
            time.sleep(0.01)

    with concurrent.futures.ThreadPoolExecutor(UPLOADS + 1) as pool:
        sampler = pool.submit(sample)
        codes = list(pool.map(lambda i: _raw_upsert(keyed_server["address"], body,
                                                    () if i % 2 else (("authorization", "Bearer nope"),)),
                              range(UPLOADS)))
        done = True
        sampler.result()
    assert set(codes) == {"UNAUTHENTICATED"}
    grown = peak[0] - idle
    print(f"gateway RSS grew {grown / 2**20:.1f} MiB over idle for {UPLOADS} refused uploads")
    assert grown <= RSS_BOUND, f"gateway grew {grown / 2**20:.0f} MiB for {UPLOADS} refused uploads"
    with Client(keyed_server["address"], api_key=keyed_server["write"]) as c:  # still serving
        assert c.upsert("adm", np.arange(3), np.ones((3, 8))) == 3


def test_wrong_role_is_refused_before_the_body_and_nothing_is_written(keyed_server):
    with Client(keyed_server["address"], api_key=keyed_server["read"]) as c:
        with pytest.raises(NestvecError) as err:
            c.upsert("adm", np.array([1000]), np.ones((1, 8)))
        assert err.value.code == "PERMISSION_DENIED" and "'write' role" in err.value.message
        assert c.get("adm", [1000]).missing_ids.tolist() == [1000]


def test_health_stays_open_without_a_key(keyed_server):
    from grpc_health.v1 import health_pb2, health_pb2_grpc
    with grpc.insecure_channel(keyed_server["address"]) as ch:
        resp = health_pb2_grpc.HealthStub(ch).Check(health_pb2.HealthCheckRequest(service=""), timeout=10)
    assert resp.status == health_pb2.HealthCheckResponse.SERVING
