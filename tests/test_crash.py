"""Crash tests with real processes and real disk: no acknowledged write is lost.

1. kill -9 one shard actor's worker process during a continuous ingest over
   gRPC; Ray restarts it, it recovers from its log, the coordinator retries.
2. kill -9 the whole server (gateway process and its Ray cluster) during an
   ingest; a new server on the same data dir serves every acknowledged write.
"""
from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
import uuid

import grpc
import numpy as np
import pytest
import ray
from grpc_health.v1 import health_pb2, health_pb2_grpc

from nestvec.client import Client
from nestvec.errors import NestvecError
from oracle import assert_matches_oracle
from proc_util import descendants, free_port, kill9

BATCH = 100


class Ingest(threading.Thread):
    """Upserts fresh ids in batches (and deletes some acknowledged ones) until stopped.

    Keeps the ledger a client can trust: what was acknowledged, and what failed
    (a failed call may or may not have landed).
    """

    def __init__(self, address: str, name: str, docs: np.ndarray, max_batches: int):
        super().__init__(daemon=True)
        self.address, self.name, self.docs, self.max_batches = address, name, docs, max_batches
        self.acked: dict[int, int] = {}       # id -> doc row
        self.unsure: dict[int, int] = {}
        self.deleted: set[int] = set()        # acknowledged deletes
        self.maybe_deleted: set[int] = set()  # deletes whose call failed: may have landed
        self.errors: list[str] = []
        self.stop_after = None                # monotonic time to stop at
        self.batches = 0

    def run(self):
        with Client(self.address, timeout=60) as c:
            for b in range(self.max_batches):
                if self.stop_after and time.monotonic() > self.stop_after:
                    break
                rows = np.arange(b * BATCH, (b + 1) * BATCH) % len(self.docs)
                ids = np.arange(b * BATCH, (b + 1) * BATCH, dtype=np.uint64) * 3 + 1
                target = self.acked
                try:
                    c.upsert(self.name, ids, self.docs[rows])
                except (NestvecError, grpc.RpcError) as err:
                    self.errors.append(str(err))
                    target = self.unsure
                target.update(zip(ids.tolist(), rows.tolist()))
                if b % 4 == 3 and self.acked:
                    victims = list(self.acked)[-BATCH // 2: -BATCH // 2 + 10]
                    try:
                        c.delete(self.name, victims)
                        self.deleted.update(victims)
                    except (NestvecError, grpc.RpcError) as err:
                        self.errors.append(str(err))
                        self.maybe_deleted.update(victims)
                self.batches += 1


def verify(client: Client, name: str, ing: Ingest, docs: np.ndarray, queries: np.ndarray):
    """Every acknowledged write is there, exactly; no acknowledged delete came back;
    searches equal a brute-force scan of what is stored."""
    live = sorted(set(ing.acked) - ing.deleted - ing.maybe_deleted)
    got = client.get(name, live)
    assert got.missing_ids.size == 0, (
        f"{got.missing_ids.size} acknowledged ids lost: {got.missing_ids[:10]}; "
        f"client errors seen: {ing.errors[:3]}")
    np.testing.assert_array_equal(got.vectors, docs[[ing.acked[i] for i in got.ids.tolist()]])
    assert ing.deleted, "the ingest should have deleted some ids"
    gone = client.get(name, sorted(ing.deleted))
    assert len(gone) == 0, f"deleted ids came back: {gone.ids[:5]}"
    # The stored set: acknowledged live ids plus whichever unsure writes landed
    # (an unsure write, or an id whose delete failed, is either absent or exact).
    unsure = sorted((set(ing.unsure) | ing.maybe_deleted) - ing.deleted)
    landed = client.get(name, unsure).ids.tolist() if unsure else []
    row_of = {**ing.acked, **ing.unsure}
    stored = np.array(sorted(set(live) | set(landed)), dtype=np.uint64)
    if landed:
        maybe = client.get(name, landed)
        np.testing.assert_array_equal(maybe.vectors, docs[[row_of[i] for i in maybe.ids.tolist()]])
    assert client.describe_collection(name).vectors == stored.size
    vecs = docs[[row_of[i] for i in stored.tolist()]]
    for dim in (64, 384):
        r = client.search(name, queries, k=10, dim=dim)
        assert_matches_oracle(r.ids, r.scores, stored, vecs, queries, "cosine", dim, 10)


def actor_name(address: str, collection: str, shard: int) -> str:
    """A shard's Ray actor name, as DescribeCollection reports it."""
    with Client(address) as c:
        return c.describe_collection(collection).shard_info[shard].actor_name


def shard_pid(namespace: str, actor_name: str) -> int:
    """The worker PID of a named actor, from Ray's actor table in the GCS."""
    from ray._private import state  # the public state API needs the dashboard, which we don't run

    pids = [a["Pid"] for a in state.actors().values()
            if a["Name"] == actor_name and a["State"] == "ALIVE"
            and a.get("RayNamespace", namespace) == namespace]
    assert len(pids) == 1, pids
    return pids[0]


@pytest.fixture
def durable_gateway(ray_cluster, tmp_path):
    from nestvec.cluster._distributed.coordinator import Coordinator
    from nestvec.cluster._server.serve import GatewayThread

    ns = f"{ray_cluster}-durable-{uuid.uuid4().hex[:6]}"
    coord = Coordinator(namespace=ns, create_catalog=True, data_dir=str(tmp_path / "data"))
    gw = GatewayThread(coord)
    yield ns, coord, gw
    gw.stop()
    for cfg in coord.list_collections():
        coord.drop_collection(cfg.name)
    ray.kill(ray.get_actor("catalog", namespace=ns))


def test_kill9_shard_actor_during_ingest(durable_gateway, corpus):
    ns, coord, gw = durable_gateway
    docs, queries = corpus["docs"][:20_000], corpus["queries"][:20]
    name = "crash-actor"
    with Client(gw.address, timeout=60) as c:
        c.create_collection(name, dim=384, metric="cosine", shards=2)
        ing = Ingest(gw.address, name, docs, max_batches=400)
        ing.start()
        while ing.batches < 10:
            time.sleep(0.05)
        shard0 = actor_name(gw.address, name, 0)
        victim = shard_pid(ns, shard0)
        handle = ray.get_actor(shard0, namespace=ns)
        assert ray.get(handle.pid.remote()) == victim
        kill9([victim])
        killed_at = ing.batches
        ing.stop_after = time.monotonic() + 3.0  # keep writing while the shard restarts
        ing.join(120)
        assert not ing.is_alive()
        assert ing.batches > killed_at + 5, "ingest did not go on after the crash"
        assert ray.get(handle.pid.remote(), timeout=60) != victim  # it was restarted
        stats = ray.get(handle.stats.remote())
        assert stats["restarted"] and stats["restarts"] >= 1  # what the restarts metric reports
        assert c.describe_collection(name).shard_info[0].wal_bytes > 0
        verify(c, name, ing, docs, queries)


def _start_server(data_dir: str, port: int, log_path: str) -> subprocess.Popen:
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nestvec.cluster._ops.cli", "serve", "--port", str(port),
             "--data-dir", data_dir, "--shards", "2", "--namespace", "crash-test"],
            stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    _wait_serving(f"127.0.0.1:{port}", proc, log_path)
    return proc


def _wait_serving(address: str, proc: subprocess.Popen, log_path: str, timeout: float = 120):
    end = time.monotonic() + timeout
    with grpc.insecure_channel(address) as ch:
        stub = health_pb2_grpc.HealthStub(ch)
        while time.monotonic() < end:
            if proc.poll() is not None:
                raise AssertionError(f"server exited: {open(log_path).read()[-3000:]}")
            try:
                if stub.Check(health_pb2.HealthCheckRequest(), timeout=1).status == 1:
                    return
            except grpc.RpcError:
                time.sleep(0.2)
    raise AssertionError(f"server not serving after {timeout}s: {open(log_path).read()[-3000:]}")


def test_kill9_whole_server_during_ingest_then_restart(tmp_path, corpus):
    docs, queries = corpus["docs"][:20_000], corpus["queries"][:20]
    data_dir, port, log = str(tmp_path / "data"), free_port(), str(tmp_path / "server.log")
    address = f"127.0.0.1:{port}"
    server = _start_server(data_dir, port, log)
    try:
        with Client(address, timeout=60) as c:
            c.create_collection("crash-server", dim=384, metric="cosine")
        ing = Ingest(address, "crash-server", docs, max_batches=400)
        ing.start()
        while ing.batches < 15:
            time.sleep(0.05)
        tree = [server.pid] + descendants(server.pid)  # gateway, raylet, GCS, shard workers
        assert len(tree) > 3, tree
        kill9(tree)
        ing.join(120)
        assert ing.errors, "the ingest should have seen the server die"
        server.wait(10)

        server = _start_server(data_dir, port, log)
        with Client(address, timeout=60) as c:
            assert [col.name for col in c.list_collections()] == ["crash-server"]
            verify(c, "crash-server", ing, docs, queries)
        # A clean stop snapshots every shard: the next start replays no log.
        server.terminate()
        assert server.wait(60) == 0
        shard_dirs = [os.path.join(r, d) for r, ds, _ in os.walk(data_dir) for d in ds
                      if d.startswith("shard-")]
        assert len(shard_dirs) == 2
        for d in shard_dirs:
            wal = [f for f in os.listdir(d) if f.startswith("wal-")]
            assert len(wal) == 1 and os.path.getsize(os.path.join(d, wal[0])) == 0, os.listdir(d)
    finally:
        if server.poll() is None:
            kill9([server.pid] + descendants(server.pid))
