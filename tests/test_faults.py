"""A shard that is down: UNAVAILABLE, or partial results when asked; data dir guards."""
from __future__ import annotations

import json
import uuid

import numpy as np
import pytest
import ray

from nestvec.client import Client
from nestvec.cluster._storage import datadir
from nestvec.errors import Unavailable
from oracle import assert_matches_oracle
from proc_util import kill9
from test_crash import actor_name, shard_pid


def test_search_with_a_shard_down_is_unavailable_or_partial(ray_cluster, gateway, corpus, monkeypatch):
    from nestvec.cluster._engine import funnel_rounds

    # The session gateway keeps shards in memory: a killed shard stays down
    # (it must not come back empty), which is what this test needs.
    docs, queries = corpus["docs"][:4000], corpus["queries"][:10]
    ids = np.arange(docs.shape[0], dtype=np.uint64)
    name = f"down-{uuid.uuid4().hex[:6]}"
    with Client(gateway.address, timeout=30) as c:
        c.create_collection(name, dim=384, metric="cosine", shards=3)
        c.upsert(name, ids, docs)
        kill9([shard_pid(ray_cluster, actor_name(gateway.address, name, 1))])

        with pytest.raises(Unavailable) as err:
            c.search(name, queries, k=10)
        assert "shard" in err.value.message

        res = c.search(name, queries, k=10, allow_partial=True)
        assert res.missing_shards == [1]
        # The answer is exact over the shards that did answer.
        from nestvec.cluster._distributed.routing import shard_of
        live = shard_of(ids, 3) != 1
        assert_matches_oracle(res.ids, res.scores, ids[live], docs[live], queries, "cosine", 384, 10)
        # A funnel big enough to run in rounds (search_rounds.in_rounds; the dead shard
        # has no socket, so the Ray threshold applies) skips the dead shard in every
        # round, and is the exact funnel over the live ones.
        cuts = []
        monkeypatch.setattr(funnel_rounds, "cut", lambda *a, _cut=funnel_rounds.cut: cuts.append(1) or _cut(*a))
        for funnel in ([(32, 3000)], [(32, 3000), (128, 300)]):
            res = c.search(name, queries, k=10, funnel=funnel, allow_partial=True)
            assert res.missing_shards == [1]
            assert_matches_oracle(res.ids, res.scores, ids[live], docs[live], queries, "cosine", 384, 10,
                                  funnel)
        assert len(cuts) == 3  # one cut after each shortlist stage: the rounds ran

        info = c.describe_collection(name)
        assert [s.down for s in info.shard_info] == [False, True, False]
        assert info.vectors == int(live.sum())
        c.drop_collection(name)


def test_a_data_dir_in_use_is_refused(ray_cluster, tmp_path):
    from nestvec.cluster._distributed.coordinator import Coordinator

    d = str(tmp_path / "data")
    ns = [f"{ray_cluster}-lock-{i}-{uuid.uuid4().hex[:4]}" for i in range(2)]
    Coordinator(namespace=ns[0], create_catalog=True, data_dir=d)
    try:
        with pytest.raises(Unavailable, match="in use by another nestvec server"):
            Coordinator(namespace=ns[1], create_catalog=True, data_dir=d)
    finally:
        for n in ns:
            try:
                ray.kill(ray.get_actor("catalog", namespace=n))
            except ValueError:
                pass


def test_a_newer_data_dir_format_is_refused_before_anything_starts(ray_cluster, tmp_path):
    from nestvec.cluster._distributed.coordinator import Coordinator

    d = tmp_path / "data"
    d.mkdir()
    (d / "MANIFEST.json").write_text(json.dumps({"format_version": datadir.FORMAT_VERSION + 1}))
    with pytest.raises(datadir.DataDirError, match="upgrade nestvec"):
        Coordinator(namespace=f"{ray_cluster}-newer", create_catalog=True, data_dir=str(d))


def test_a_second_server_with_another_data_dir_in_the_same_namespace_is_refused(ray_cluster, tmp_path):
    from nestvec.cluster._distributed.coordinator import Coordinator

    ns = f"{ray_cluster}-two-{uuid.uuid4().hex[:4]}"
    Coordinator(namespace=ns, create_catalog=True)  # in memory
    try:
        with pytest.raises(Unavailable, match="already holds a nestvec catalog"):
            Coordinator(namespace=ns, create_catalog=True, data_dir=str(tmp_path / "d"))
        Coordinator(namespace=ns, create_catalog=True)  # the same settings attach fine
    finally:
        ray.kill(ray.get_actor("catalog", namespace=ns))
