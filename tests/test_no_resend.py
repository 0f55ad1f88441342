"""A search whose shard dies while running it is not sent again (shard_actor.py, inflight.py).

A search that exhausts a shard's memory kills it; resending it to the restarted
shard would kill that one too. Here the shard's worker is kill -9'd for real in
the middle of a long exact search, through the gateway (asyncio, same-node
socket) and through the coordinator as a Ray job calls it (sync; over the socket,
and over Ray's own actor calls): the search
fails with UNAVAILABLE saying it was not resent, the shard restarts, the next
search equals a brute-force scan, and every acknowledged write is there.
"""
from __future__ import annotations

import threading
import time

import numpy as np
import pytest
import ray

from nestvec.client import Client
from nestvec.errors import NestvecError
from oracle import assert_matches_oracle
from proc_util import kill9
from test_crash import actor_name, durable_gateway, shard_pid  # noqa: F401 (fixture)

ROWS, DIM, QUERIES = 60_000, 128, 6_000   # one exact search: seconds of work on one shard


def _start(search) -> tuple[threading.Thread, dict]:
    """Run `search` in a thread; its outcome lands in the dict ("result" or "error")."""
    out = {}

    def run():
        try:
            out["result"] = search()
        except NestvecError as err:
            out["error"] = err

    t = threading.Thread(target=run)
    t.start()
    return t, out


def _search_then_kill(search, ns: str, shard: str):
    """Run `search` in a thread, kill the shard's worker once it is busy with it;
    return (the search's outcome, the victim pid)."""
    victim = shard_pid(ns, shard)
    t, out = _start(search)
    time.sleep(1.0)   # the search is on the shard by now (it takes several seconds)
    assert t.is_alive(), "the search finished before the kill: make it bigger"
    kill9([victim])
    t.join(120)
    assert not t.is_alive()
    return out, victim


def _pid_once_restarted(handle, timeout: float = 60.0) -> int:
    end = time.monotonic() + timeout
    while True:
        try:
            return ray.get(handle.pid.remote(), timeout=timeout)
        except ray.exceptions.ActorUnavailableError:  # still restarting
            if time.monotonic() > end:
                raise
            time.sleep(0.2)


@pytest.mark.parametrize("path", ["gateway", "ray-job", "ray-only"])
def test_a_search_that_killed_its_shard_is_not_resent(durable_gateway, path):  # noqa: F811
    ns, coord, gw = durable_gateway
    rng = np.random.default_rng(7)
    docs = rng.standard_normal((ROWS, DIM), dtype=np.float32)
    ids = np.arange(ROWS, dtype=np.uint64)
    big = rng.standard_normal((QUERIES, DIM), dtype=np.float32)
    name = f"noresend-{path}"
    with Client(gw.address, timeout=120) as c:
        c.create_collection(name, dim=DIM, metric="dot", shards=1)
        assert c.upsert(name, ids, docs) == ROWS
        shard = actor_name(gw.address, name, 0)
        if path == "gateway":
            out, victim = _search_then_kill(lambda: c.search(name, big, k=10), ns, shard)
        else:  # a Ray job's coordinator: the same-node socket, or Ray's own calls only
            from nestvec.cluster._distributed.coordinator import Coordinator
            job = coord if path == "ray-job" else Coordinator(namespace=ns, direct=False)
            out, victim = _search_then_kill(lambda: job.search(name, big, k=10, timeout=120), ns, shard)
        assert "result" not in out, "the search was answered: it was resent to the restarted shard"
        err = out["error"]
        assert err.code == "UNAVAILABLE" and "was not run again" in err.message, err
        assert f"shard 0 of collection {name!r}" in err.message, err
        assert _pid_once_restarted(ray.get_actor(shard, namespace=ns)) != victim
        queries = big[:5]
        res = c.search(name, queries, k=10)
        assert_matches_oracle(res.ids, res.scores, ids, docs, queries, "dot", DIM, 10)
        got = c.get(name, ids)
        assert got.missing_ids.size == 0
        np.testing.assert_array_equal(got.vectors, docs)


def test_a_search_waiting_behind_the_killer_is_answered(durable_gateway):  # noqa: F811
    """Only what was running is refused: a search that had reached the shard over the
    same-node socket but was still waiting for the shard's lock (it cannot have killed
    the process) is sent again by the coordinator and answered by the restarted shard,
    while the search that was running is refused; writes all there afterwards."""
    ns, coord, gw = durable_gateway
    rng = np.random.default_rng(11)
    docs = rng.standard_normal((ROWS, DIM), dtype=np.float32)
    ids = np.arange(ROWS, dtype=np.uint64)
    big = rng.standard_normal((QUERIES, DIM), dtype=np.float32)
    small = rng.standard_normal((5, DIM), dtype=np.float32)
    name = "noresend-queued"
    with Client(gw.address, timeout=120) as c:
        c.create_collection(name, dim=DIM, metric="dot", shards=1)
        assert c.upsert(name, ids, docs) == ROWS
        shard = actor_name(gw.address, name, 0)
        coord.search(name, small[:1], k=10, timeout=60)  # the coordinator has the shard's socket now
        victim = shard_pid(ns, shard)
        running, running_out = _start(lambda: coord.search(name, big, k=10, timeout=120))
        time.sleep(0.6)   # the big search holds the shard's lock by now
        waiting, waiting_out = _start(lambda: coord.search(name, small, k=10, timeout=120))
        time.sleep(0.5)   # the small one is on the shard's socket, waiting for the lock
        assert running.is_alive() and waiting.is_alive(), "a search finished before the kill"
        kill9([victim])
        for t in (running, waiting):
            t.join(120)
            assert not t.is_alive()
        assert "result" not in running_out, "the running search was answered: it was run again"
        err = running_out["error"]
        assert err.code == "UNAVAILABLE" and "was not run again" in err.message, err
        assert "error" not in waiting_out, f"the waiting search was refused: {waiting_out.get('error')}"
        res = waiting_out["result"]
        assert_matches_oracle(res.ids, res.scores, ids, docs, small, "dot", DIM, 10)
        assert _pid_once_restarted(ray.get_actor(shard, namespace=ns)) != victim
        got = c.get(name, ids)
        assert got.missing_ids.size == 0
        np.testing.assert_array_equal(got.vectors, docs)
