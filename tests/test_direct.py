"""The same-node search channel (cluster/_distributed/direct.py): shards answer searches on a
Unix socket; coordinators on their node use it and fall back to Ray when it fails.

Real sockets, real shard actors on the session's Ray cluster, real kill -9.
"""
from __future__ import annotations

import asyncio
import os
import socket
import stat
import struct
import time
import uuid

import numpy as np
import pytest
import ray

from nestvec.cluster._distributed import direct
from nestvec.cluster._engine.collection import SearchPlan
from nestvec.errors import DeadlineExceeded, InvalidArgument, NotFound
from oracle import assert_matches_oracle
from proc_util import kill9


# ----- the channel alone (a real socket, a numpy handler) ----------------------------
def _handler(calls: list):
    def handle(queries, plan, deadline, round_=None):
        calls.append((queries.copy(), plan, deadline))
        if plan.k == 99:
            raise InvalidArgument("k 99 is refused by this test handler")
        if plan.k == 98:
            raise ZeroDivisionError("boom")
        ids = np.arange(queries.shape[0] * plan.k, dtype=np.uint64).reshape(queries.shape[0], plan.k)
        keys = (queries.sum(axis=1, keepdims=True) + np.arange(plan.k)).astype(np.float32)
        return ids, keys
    return handle


@pytest.fixture
def server():
    calls: list = []
    srv = direct.DirectServer(_handler(calls))
    yield srv, calls
    srv.close()


def test_codec_round_trips_every_shape():
    plan = SearchPlan(10, 64, ((32, 400), (128, 50)), ann_candidates=80, ef=96)
    q = np.random.default_rng(0).standard_normal((3, 64)).astype(np.float32)
    q2, plan2, dl, rnd = direct.decode_request(b"".join(bytes(b) for b in direct.encode_request(q, plan, 12.5))[4:])
    assert plan2 == plan and dl == 12.5 and q2.dtype == np.float32 and np.array_equal(q2, q)
    assert rnd is None
    # a funnel round: stage 0 carries no ids; later stages carry survivors and counts
    _, _, _, rnd = direct.decode_request(b"".join(bytes(b) for b in direct.encode_request(q, plan, None, (0, None, None)))[4:])
    assert rnd == (0, None, None)
    ids, counts = np.arange(9, dtype=np.uint64).reshape(3, 3) + 2**63, np.array([3, 1, 0], np.int32)
    q3, _, _, rnd = direct.decode_request(b"".join(bytes(b) for b in direct.encode_request(q, plan, None, (2, ids, counts)))[4:])
    assert rnd[0] == 2 and np.array_equal(rnd[1], ids) and rnd[1].dtype == np.uint64
    assert np.array_equal(rnd[2], counts) and np.array_equal(q3, q)
    for ids, keys in [(np.zeros((0, 10), np.uint64), np.zeros((0, 10), np.float32)),
                      (np.arange(6, dtype=np.uint64).reshape(2, 3), np.ones((2, 3, 2), np.float64))]:
        got = direct.decode_reply(b"".join(bytes(b) for b in direct.encode_reply(ids, keys))[4:])
        assert [a.dtype for a in got] == [ids.dtype, keys.dtype]
        assert np.array_equal(got[0], ids) and np.array_equal(got[1], keys)
    err = b"".join(bytes(b) for b in direct.encode_error(NotFound("no such thing")))[4:]
    with pytest.raises(NotFound, match="no such thing"):
        direct.decode_reply(err)


def test_socket_is_private_and_token_checked(server):
    srv, calls = server
    assert stat.S_IMODE(os.stat(srv.dir).st_mode) == 0o700
    bad = socket.socket(socket.AF_UNIX)
    bad.connect(srv.path)
    bad.sendall(struct.pack("<I", 16) + b"x" * 16)  # a wrong token: the server hangs up
    bad.settimeout(10)
    try:
        bad.sendall(b"".join(bytes(b) for b in direct.encode_request(np.ones((1, 4), np.float32),
                                                                       SearchPlan(2, 4), None)))
        assert bad.recv(1) == b""  # hung up without a reply...
    except (ConnectionResetError, BrokenPipeError):
        pass  # ...or reset, since our request was left unread (or it hung up before we sent it)
    bad.close()
    assert calls == []  # nothing ran for the stranger
    client = direct.DirectClient(srv.path, srv.token.hex())
    ids, keys = client.receive(client.send(np.ones((1, 4), np.float32), SearchPlan(2, 4), None, 10))
    assert ids.tolist() == [[0, 1]] and keys.tolist() == [[4.0, 5.0]]


def _vmrss() -> int:
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) * 1024 for line in f if line.startswith("VmRSS:"))


def _hung_up(sock: socket.socket) -> bool:
    sock.settimeout(10)
    try:
        return sock.recv(1) == b""
    except (ConnectionResetError, BrokenPipeError):
        return True


def test_announced_lengths_are_capped_before_anything_is_read(server):
    """A stranger announcing a 3 GiB token frame, or a caller with the token announcing a
    frame over MAX_FRAME_BYTES, is hung up on without the server allocating it."""
    srv, calls = server
    before = _vmrss()
    for _ in range(8):
        s = socket.socket(socket.AF_UNIX)
        s.connect(srv.path)
        s.sendall(struct.pack("<I", 3 << 30) + b"x" * 4096)
        assert _hung_up(s)
        s.close()
    s = socket.socket(socket.AF_UNIX)
    s.connect(srv.path)
    s.sendall(struct.pack("<I", len(srv.token)) + srv.token + struct.pack("<I", direct.MAX_FRAME_BYTES + 1))
    assert _hung_up(s)
    s.close()
    assert _vmrss() - before < 16 << 20  # this process is the server: nothing was allocated
    assert calls == []
    client = direct.DirectClient(srv.path, srv.token.hex())  # and it serves on
    ids, _ = client.receive(client.send(np.ones((1, 4), np.float32), SearchPlan(2, 4), None, 10))
    assert ids.tolist() == [[0, 1]]


def test_connections_beyond_the_cap_are_refused(server, monkeypatch):
    srv, _ = server
    monkeypatch.setattr(direct, "MAX_SERVER_CONNECTIONS", 4)
    held = []
    for _ in range(4):
        s = socket.socket(socket.AF_UNIX)
        s.connect(srv.path)
        held.append(s)
    deadline = time.time() + 10
    while len(srv._conns) < 4 and time.time() < deadline:
        time.sleep(0.01)
    extra = socket.socket(socket.AF_UNIX)
    extra.connect(srv.path)
    assert _hung_up(extra)  # closed at once, unread
    for s in held:
        s.close()
    deadline = time.time() + 10
    while srv._conns and time.time() < deadline:
        time.sleep(0.01)
    client = direct.DirectClient(srv.path, srv.token.hex())
    ids, _ = client.receive(client.send(np.ones((1, 4), np.float32), SearchPlan(2, 4), None, 10))
    assert ids.tolist() == [[0, 1]]


def test_errors_reach_the_caller_and_the_channel_lives_on(server):
    srv, calls = server
    client = direct.DirectClient(srv.path, srv.token.hex())
    q = np.ones((2, 8), np.float32)
    with pytest.raises(InvalidArgument, match="refused by this test handler"):
        client.receive(client.send(q, SearchPlan(99, 8), None, 10))
    with pytest.raises(direct.Internal, match="ZeroDivisionError: boom"):
        client.receive(client.send(q, SearchPlan(98, 8), None, 10))
    ids, _ = client.receive(client.send(q, SearchPlan(3, 8), 123.0, 10))
    assert ids.shape == (2, 3) and calls[-1][2] == 123.0
    assert len(client._idle) == 1  # one connection served all three calls


def test_large_batches_and_async_callers(server):
    srv, calls = server
    client = direct.DirectClient(srv.path, srv.token.hex())
    big = np.random.default_rng(1).standard_normal((4096, 768)).astype(np.float32)  # 12 MB
    ids, keys = client.receive(client.send(big, SearchPlan(5, 768), None, 30))
    assert np.array_equal(calls[-1][0], big) and ids.shape == (4096, 5)
    np.testing.assert_allclose(keys[:, 0], big.sum(axis=1), rtol=1e-6)

    async def many():
        qs = [np.full((1, 16), i, np.float32) for i in range(200)]
        got = await asyncio.gather(*[client.asearch(q, SearchPlan(1, 16), None) for q in qs])
        return [float(k[0, 0]) for _, k in got]
    assert asyncio.run(many()) == [16.0 * i for i in range(200)]  # each caller its own answer


def test_dead_shards_folders_are_swept(tmp_path, monkeypatch):
    """A killed shard leaves its folder behind; the next shard to start removes it
    once it is a minute old and nobody listens on its socket."""
    import tempfile
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    folders = []
    for age in (3600, 0):
        folder = tmp_path / f"{direct._DIR_PREFIX}{age}"
        folder.mkdir(mode=0o700)
        s = socket.socket(socket.AF_UNIX)
        s.bind(str(folder / "search.sock"))
        s.close()  # bound, never listening: what a killed process leaves
        os.utime(folder, (time.time() - age, time.time() - age))
        folders.append(folder)
    live = direct.DirectServer(_handler([]))
    os.utime(live.dir, (time.time() - 3600, time.time() - 3600))
    try:
        direct.DirectServer(_handler([])).close()
        assert not folders[0].exists()          # old and dead: swept
        assert folders[1].exists()              # too young to judge
        assert os.path.exists(live.path)        # old but alive: kept
    finally:
        live.close()


def test_a_closed_server_gives_direct_unavailable(server):
    srv, _ = server
    client = direct.DirectClient(srv.path, srv.token.hex())
    conn = client.send(np.ones((1, 4), np.float32), SearchPlan(1, 4), None, 10)
    client.receive(conn)
    srv.close()
    with pytest.raises(direct.DirectUnavailable):
        client.receive(client.send(np.ones((1, 4), np.float32), SearchPlan(1, 4), None, 10))


# ----- through the coordinator, against real shard actors -----------------------------
def _shard_stats(coord, name):
    return coord.describe_collection(name)[1]


def test_direct_and_ray_paths_agree_and_direct_is_used(coordinator, corpus):
    from nestvec.cluster._distributed.coordinator import Coordinator

    name = f"direct-{uuid.uuid4().hex[:6]}"
    docs, queries = corpus["docs"][:20_000], corpus["queries"][:16]
    coordinator.create_collection(name, 384, "cosine", shards=2)
    try:
        coordinator.upsert(name, np.arange(docs.shape[0]), docs)
        via_ray = Coordinator(namespace=coordinator.namespace, direct=False)
        before = sum(s["direct_searches"] for s in _shard_stats(coordinator, name))
        for kwargs in [dict(dim=64), dict(dim=384), dict(funnel=[(64, 400)]), dict(dim=128, k=1000)]:
            a = coordinator.search(name, queries, **kwargs)
            b = via_ray.search(name, queries, **kwargs)
            assert np.array_equal(a.ids, b.ids) and np.array_equal(a.scores, b.scores)
            c = asyncio.run(coordinator.asearch(name, queries, **kwargs))
            assert np.array_equal(a.ids, c.ids) and np.array_equal(a.scores, c.scores)
        r = coordinator.search(name, queries, dim=64)
        assert_matches_oracle(r.ids, r.scores, np.arange(docs.shape[0]), docs, queries, "cosine", 64, 10)
        after = sum(s["direct_searches"] for s in _shard_stats(coordinator, name))
        # 2 shards x (sync + async per case, + oracle): the funnel (16 queries x 400
        # candidates x 384 dims) runs in rounds over the sockets, and its one stage
        # settles in one round (funnel_rounds.one_round); through Ray it is one fan-out
        assert after - before == 2 * (4 * 2 + 1)
        # A shard's own error comes back as the same error type over the socket.
        with pytest.raises(InvalidArgument):
            coordinator.search(name, queries, dim=64, funnel=[(64, 5)])
    finally:
        coordinator.drop_collection(name)


def test_acknowledged_writes_are_seen_by_the_next_direct_search(coordinator):
    name = f"direct-rw-{uuid.uuid4().hex[:6]}"
    rng = np.random.default_rng(3)
    coordinator.create_collection(name, 32, "dot", shards=2)
    try:
        coordinator.upsert(name, np.arange(1000), rng.standard_normal((1000, 32)).astype(np.float32))
        for i in range(50):
            v = rng.standard_normal((1, 32)).astype(np.float32) * 100  # dominates every dot product
            coordinator.upsert(name, [10_000 + i], v)
            assert coordinator.search(name, v, k=1).ids[0, 0] == 10_000 + i
            coordinator.delete(name, [10_000 + i])
            assert coordinator.search(name, v, k=1).ids[0, 0] != 10_000 + i
    finally:
        coordinator.drop_collection(name)


def test_expired_deadline_is_refused_by_the_shard(coordinator):
    name = f"direct-dl-{uuid.uuid4().hex[:6]}"
    coordinator.create_collection(name, 8, "l2", shards=1)
    try:
        coordinator.upsert(name, np.arange(10), np.eye(10, 8, dtype=np.float32))
        cfg, _ = coordinator.describe_collection(name)
        handle = coordinator._cache[name].shards[0]
        addr = ray.get(handle.direct_address.remote())
        assert addr["node_id"] == ray.get_runtime_context().get_node_id()
        client = direct.DirectClient(addr["path"], addr["token"])
        with pytest.raises(DeadlineExceeded):
            client.receive(client.send(np.ones((1, 8), np.float32), SearchPlan(3, 8), time.time() - 1, 10))
        ids, _ = client.receive(client.send(np.ones((1, 8), np.float32), SearchPlan(3, 8), time.time() + 30, 10))
        assert ids.shape == (1, 3)
    finally:
        coordinator.drop_collection(name)


def test_a_restarted_shard_is_found_again(ray_cluster, tmp_path, corpus):
    """kill -9 a durable shard: the next search falls back to Ray (which waits for the
    restart), then the coordinator finds the new incarnation's socket."""
    from nestvec.cluster._distributed.coordinator import Coordinator

    ns = f"{ray_cluster}-direct-{uuid.uuid4().hex[:6]}"
    coord = Coordinator(namespace=ns, create_catalog=True, data_dir=str(tmp_path / "data"))
    docs, queries = corpus["docs"][:5_000], corpus["queries"][:4]
    try:
        coord.create_collection("r", 384, "cosine", shards=1)
        coord.upsert("r", np.arange(docs.shape[0]), docs)
        want = coord.search("r", queries, dim=128)
        handle = coord._cache["r"].shards[0]
        old_path = coord._cache["r"].direct[0].path
        kill9([ray.get(handle.pid.remote())])
        got = coord.search("r", queries, dim=128, timeout=60)
        assert np.array_equal(got.ids, want.ids) and np.array_equal(got.scores, want.scores)
        got = coord.search("r", queries, dim=128, timeout=60)
        assert np.array_equal(got.ids, want.ids)
        assert coord._cache["r"].direct[0].path != old_path
        assert _shard_stats(coord, "r")[0]["direct_searches"] >= 1  # the new incarnation's socket
    finally:
        for cfg in coord.list_collections():
            coord.drop_collection(cfg.name)
        ray.kill(ray.get_actor("catalog", namespace=ns))
