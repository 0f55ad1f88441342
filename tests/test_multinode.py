"""nestvec on a real 3-node Ray cluster on this machine (issue 6).

One module-scoped cluster: a head (with the dashboard, for `ray job submit`) and
two workers started with `ray start --address`, each its own process tree, each
with its own custom resource (nv-head, nv-w1, nv-w2). `nestvec serve` attaches
with `--placement resources:nv-head,nv-w1,nv-w2` (shard i on node i mod 3),
`--gateways 2` and a data directory. Then, in order:

1. shards landed on all three nodes (two each), as the placement says;
2. the Ray Data ingest job (`ray job submit`, deploy/jobs/ingest.py) loads 20,000
   rows of corpusA (a subset, to keep CI time down) from Parquet; the job ends
   SUCCEEDED, its log shows the count; counts and exact search equal the oracle;
3. both gateway replicas serve on the one port;
4. the batch-search job writes ids and scores to Parquet that equal the oracle;
5. worker node w2 is killed (its raylet, workers and agents): searches with
   allow_partial return the live shards' exact answer and name shards 2 and 5;
   without it they fail with UNAVAILABLE; `nestvec status` shows them DOWN;
6. w2 is started again: shards 2 and 5 come back on it, recover from their data
   directories, and every row is there (exact search over all 20,000 again).
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from ray.job_submission import JobStatus, JobSubmissionClient

from nestvec.client import Client
from nestvec.cluster._ops import bulk
from nestvec.cluster._distributed.routing import shard_of
from nestvec.errors import Unavailable
from oracle import assert_matches_oracle
from proc_util import descendants, free_port, kill9
from ray_nodes import ENV, RAY, RayNodes
from test_crash import _wait_serving

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
N, SHARDS, NAME = 20_000, 6, "corpus-a"
RESOURCES = ["nv-head", "nv-w1", "nv-w2"]


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    tmp = tmp_path_factory.mktemp("multinode")
    nodes = RayNodes(str(tmp))
    serve = None
    try:
        nodes.start_head({"nv-head": 1})
        for name in ("w1", "w2"):  # one at a time: each joins a running cluster
            nodes.start_worker(name, {f"nv-{name}": 1})
            nodes.wait_nodes([f"nv-{name}"])
        ns, port = f"mn-{uuid.uuid4().hex[:6]}", free_port()
        with open(tmp / "serve.log", "ab") as log:
            serve = subprocess.Popen(
                [sys.executable, "-m", "nestvec.cluster._ops.cli", "serve", "--ray-address", nodes.address,
                 "--namespace", ns, "--data-dir", str(tmp / "data"), "--port", str(port),
                 "--placement", "resources:" + ",".join(RESOURCES), "--gateways", "2",
                 "--shards", str(SHARDS)],
                stdout=log, stderr=subprocess.STDOUT, env=ENV, start_new_session=True)
        _wait_serving(f"127.0.0.1:{port}", serve, str(tmp / "serve.log"))
        yield {"nodes": nodes, "ns": ns, "address": f"127.0.0.1:{port}", "tmp": tmp, "serve": serve}
    finally:
        if serve is not None and serve.poll() is None:
            kill9([serve.pid] + descendants(serve.pid))
        nodes.stop()


@pytest.fixture(scope="module")
def data(corpus):
    return {"ids": np.arange(N, dtype=np.uint64) + 1000, "docs": corpus["docs"][:N],
            "queries": corpus["queries"][:100]}


def _probe(cluster) -> dict:
    """From a separate driver: each live node's nv-* resource, and each gateway replica's info."""
    code = """
import json, sys, ray
ray.init(address=sys.argv[1], namespace=sys.argv[2], log_to_driver=False)
nodes = {n["NodeID"]: [r for r in n["Resources"] if r.startswith("nv-")] for n in ray.nodes() if n["Alive"]}
gws = [ray.get(ray.get_actor(f"gateway-{i}").info.remote()) for i in range(2)]
from ray._private import state
catalog = state.actors(ray.get_actor("catalog")._actor_id.hex())["Address"]["NodeID"]
print(json.dumps({"nodes": {k: v[0] for k, v in nodes.items() if v}, "gateways": gws, "catalog": catalog}))
"""
    out = subprocess.run([sys.executable, "-c", code, cluster["nodes"].address, cluster["ns"]],
                         env=ENV, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


def _submit(cluster, script: str, *args: str) -> str:
    """`ray job submit` a deploy/jobs script; returns its logs after checking it SUCCEEDED."""
    nodes, sid = cluster["nodes"], f"nestvec-{uuid.uuid4().hex[:8]}"
    sub = subprocess.run(
        [RAY, "job", "submit", f"--address={nodes.dashboard}", f"--submission-id={sid}",
         f"--working-dir={os.path.join(REPO, 'deploy', 'jobs')}", "--",
         "python", script, *args, "--namespace", cluster["ns"]],
        env=ENV, capture_output=True, text=True, timeout=600)
    jobs = JobSubmissionClient(nodes.dashboard)  # the job server's REST API
    logs = jobs.get_job_logs(sid)
    assert jobs.get_job_status(sid) == JobStatus.SUCCEEDED, (sub.stdout[-3000:], sub.stderr[-3000:],
                                                             logs[-3000:])
    assert sub.returncode == 0
    print(logs)  # shown when a later assertion fails
    return logs


def test_shards_are_placed_on_all_three_nodes(cluster):
    with Client(cluster["address"], timeout=120) as c:
        c.create_collection(NAME, 384, "cosine", shards=SHARDS)
        info = c.describe_collection(NAME)
    probe = _probe(cluster)
    node_resource = probe["nodes"]
    assert sorted(node_resource.values()) == RESOURCES
    assert node_resource[probe["catalog"]] == "nv-head"  # with serve and the gateways, not on a worker
    placed = [node_resource[s.node_id] for s in info.shard_info]
    assert placed == [RESOURCES[i % 3] for i in range(SHARDS)]  # resources:A,B,C → shard i on i mod 3
    assert all(s.health == "SERVING" and s.node_ip == "127.0.0.1" and s.memory_bytes > 0
               and s.rss_bytes > 0 for s in info.shard_info)


def test_ray_data_ingest_job(cluster, data):
    src = cluster["tmp"] / "parquet"
    src.mkdir()
    for i, part in enumerate(np.array_split(np.arange(N), 4)):
        vec = pa.FixedSizeListArray.from_arrays(pa.array(data["docs"][part].reshape(-1)), 384)
        pq.write_table(pa.table({"id": pa.array(data["ids"][part]), "vector": vec}),
                       src / f"part-{i}.parquet", row_group_size=2500)
    logs = _submit(cluster, "ingest.py", str(src), "--collection", NAME, "--batch-rows", "2500")
    assert f"ingest done: {N} rows from 4 files" in logs and f"collection now holds {N} vectors" in logs, logs
    assert f"{N}/{N} rows (100%" in logs  # the progress lines
    with Client(cluster["address"], timeout=120) as c:
        info = c.describe_collection(NAME)
        assert info.vectors == N
        per_shard = np.bincount(shard_of(data["ids"], SHARDS), minlength=SHARDS)
        assert [s.vectors for s in info.shard_info] == per_shard.tolist()
        q = data["queries"][:20]
        for dim in (384, 64):
            res = c.search(NAME, q, k=10, dim=dim)
            assert_matches_oracle(res.ids, res.scores, data["ids"], data["docs"], q, "cosine", dim, 10)


def test_gateway_replicas_share_the_port(cluster, data):
    for _ in range(32):  # a fresh connection each: the kernel spreads connections over replicas
        with Client(cluster["address"], timeout=60) as c:
            assert c.search(NAME, data["queries"][:1], k=3).ids.shape == (1, 3)
    gws = _probe(cluster)["gateways"]
    port = int(cluster["address"].rsplit(":", 1)[1])
    assert len({g["pid"] for g in gws}) == 2 and {g["port"] for g in gws} == {port}
    # Each of 32 connections lands on either replica (SO_REUSEPORT hashing): both
    # serve unless all 32 hashed to one (chance 2**-31).
    assert all(g["calls"] > 0 for g in gws), gws
    assert sum(g["calls"] for g in gws) >= 32


def test_batch_search_job(cluster, data):
    np.save(cluster["tmp"] / "queries.npy", data["queries"])
    out = cluster["tmp"] / "results"
    logs = _submit(cluster, "batch_search.py", str(cluster["tmp"] / "queries.npy"), "--output", str(out),
                   "--collection", NAME, "-k", "10", "--funnel", "64:400", "--batch-rows", "32")
    assert "batch search done: 100 queries" in logs, logs
    qid, ids, scores = bulk.read_results(str(out))
    np.testing.assert_array_equal(qid, np.arange(100))
    assert_matches_oracle(ids, scores, data["ids"], data["docs"], data["queries"], "cosine", 384, 10,
                          funnel=[(64, 400)])


def test_ingest_cli_reports_a_user_error_with_exit_code_2(cluster, data):
    np.save(cluster["tmp"] / "few.npy", data["docs"][:10])
    out = subprocess.run([sys.executable, "-m", "nestvec.cluster._ops.cli", "ingest",
                          str(cluster["tmp"] / "few.npy"), "--collection", "no-such-collection",
                          "--ray-address", cluster["nodes"].address, "--namespace", cluster["ns"]],
                         env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 2, out.stderr[-3000:]
    assert "nestvec ingest: error: NOT_FOUND: collection 'no-such-collection' does not exist" in out.stderr


def test_node_loss_then_recovery_from_data_dirs(cluster, data):
    lost = [i for i in range(SHARDS) if RESOURCES[i % 3] == "nv-w2"]
    cluster["nodes"].kill("w2")
    q = data["queries"][:10]
    live = ~np.isin(shard_of(data["ids"], SHARDS), lost)
    with Client(cluster["address"], timeout=120) as c:
        res = c.search(NAME, q, k=10, allow_partial=True)
        assert res.missing_shards == lost
        assert_matches_oracle(res.ids, res.scores, data["ids"][live], data["docs"][live], q, "cosine", 384, 10)
        with pytest.raises(Unavailable, match="shard is down"):
            c.search(NAME, q, k=10)  # fails after the coordinator's retry window (15 s)
        info = c.describe_collection(NAME)
        assert [s.shard for s in info.shard_info if s.down] == lost
        assert {s.health for s in info.shard_info if s.down} == {"DOWN"}
    status = subprocess.run([sys.executable, "-m", "nestvec.cluster._ops.cli", "status", "--address",
                             cluster["address"]], env=ENV, capture_output=True, text=True, timeout=120)
    assert status.returncode == 0, status.stderr
    assert f"{len(lost)} shard(s) DOWN" in status.stdout and "nodes holding shards: 2" in status.stdout

    cluster["nodes"].start_worker("w2")  # a new node (new id), same resource: the shards go back there
    with Client(cluster["address"], timeout=120) as c:
        end = time.monotonic() + 180
        while True:
            try:
                res = c.search(NAME, q, k=10, timeout=30)
                break
            except Unavailable:
                assert time.monotonic() < end, cluster["nodes"].logs()
        assert_matches_oracle(res.ids, res.scores, data["ids"], data["docs"], q, "cosine", 384, 10)
        info = c.describe_collection(NAME)
        assert info.vectors == N
        got = c.get(NAME, data["ids"])
        assert got.missing_ids.size == 0
        np.testing.assert_array_equal(got.vectors, data["docs"])
    node_resource = _probe(cluster)["nodes"]
    for s in info.shard_info:
        assert node_resource[s.node_id] == RESOURCES[s.shard % 3]
        assert s.health == ("RECOVERED" if s.shard in lost else "SERVING"), s
        assert (s.restarts >= 1) == (s.shard in lost)


def test_sigterm_drains_the_replicas_and_snapshots(cluster):
    serve = cluster["serve"]
    serve.send_signal(signal.SIGTERM)
    assert serve.wait(120) == 0, (cluster["tmp"] / "serve.log").read_text()[-3000:]
    log = (cluster["tmp"] / "serve.log").read_text()
    assert "shutting down 2 gateway replicas" in log
    # a clean shutdown snapshots every shard: no write-ahead log left to replay
    shard_dirs = sorted((cluster["tmp"] / "data" / "collections").glob("*/shard-*"))
    assert len(shard_dirs) == SHARDS
    assert all(any(d.glob("snapshot-*")) and all(w.stat().st_size == 0 for w in d.glob("wal-*.log"))
               for d in shard_dirs)
