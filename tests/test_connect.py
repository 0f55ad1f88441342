"""The Ray-job path: a Coordinator attached to the running cluster, no gRPC hop.

(a) in this process, a second Coordinator beside the gateway's;
(b) a real second Ray driver process, as a Ray job would be.
Both must see what the gateway sees, and their searches must equal the oracle.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from nestvec.errors import Unavailable
from oracle import assert_matches_oracle

DIM = 384
N = 3000


def connect_fn():
    """nestvec.cluster.connect if it is re-exported yet, else the coordinator's."""
    try:
        from nestvec.cluster import connect
    except ImportError:
        from nestvec.cluster._distributed.coordinator import connect
    return connect


@pytest.fixture
def loaded(client, collection_name, corpus):
    """A cosine collection with 2 shards and N documents, created through gRPC."""
    ids = np.arange(N, dtype=np.uint64) * np.uint64(31) + np.uint64(2**63 + 1)
    docs = corpus["docs"][:N]
    client.create_collection(collection_name, DIM, "cosine", shards=2)
    assert client.upsert(collection_name, ids, docs) == N
    return collection_name, ids, docs


def test_in_process_coordinator_sees_grpc_collection(ray_cluster, coordinator, client, loaded, corpus):
    name, ids, docs = loaded
    coord = connect_fn()(namespace=ray_cluster)   # Ray is up already: attaches, no re-init
    assert coord is not coordinator and coord.namespace == ray_cluster
    assert name in {c.name for c in coord.list_collections()}
    cfg, stats = coord.describe_collection(name)
    assert (cfg.dim, cfg.metric, cfg.shards) == (DIM, "cosine", 2)
    assert sum(s["vectors"] for s in stats) == N

    q = corpus["queries"][:20]
    for dim, funnel in ((None, None), (64, None), (None, [(32, 300)])):
        direct = coord.search(name, q, k=10, dim=dim, funnel=funnel)
        over_grpc = client.search(name, q, k=10, dim=dim, funnel=funnel)
        np.testing.assert_array_equal(direct.ids, over_grpc.ids)
        np.testing.assert_array_equal(direct.scores, over_grpc.scores)
        assert_matches_oracle(direct.ids, direct.scores, ids, docs, q, "cosine", dim or DIM, 10,
                              funnel or ())
    got = coord.get(name, ids[[9, 2]], dim=32)
    np.testing.assert_array_equal(got.vectors, docs[[9, 2], :32])


def test_unknown_namespace_is_unavailable(ray_cluster):
    from nestvec.cluster._distributed.coordinator import Coordinator

    with pytest.raises(Unavailable, match="no nestvec cluster"):
        Coordinator(namespace=ray_cluster + "-nobody-here")


# A Ray job: attach to the cluster by its GCS address, write, then search.
JOB = textwrap.dedent("""
    import json, sys
    import numpy as np
    try:
        from nestvec.cluster import connect
    except ImportError:
        from nestvec.cluster._distributed.coordinator import connect

    ns, address, name, data = sys.argv[1:5]
    z = np.load(data)
    coord = connect(namespace=ns, address=address)
    written = coord.upsert(name, z["ids"], z["vectors"])
    res = coord.search(name, z["queries"], k=10, funnel=[(64, 200)])
    print("RESULT " + json.dumps({"written": written, "ids": res.ids.tolist(),
                                  "scores": res.scores.tolist()}), flush=True)
""")


def test_second_driver_process_writes_and_searches(ray_cluster, client, loaded, corpus, tmp_path):
    import ray

    name, ids, docs = loaded
    new_ids = np.arange(500, dtype=np.uint64) + np.uint64(10**12)
    new_docs = corpus["docs"][N: N + 500]
    q = corpus["queries"][:15]
    data = tmp_path / "job.npz"
    np.savez(data, ids=new_ids, vectors=new_docs, queries=q)

    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    address = ray.get_runtime_context().gcs_address
    proc = subprocess.run([sys.executable, "-c", JOB, ray_cluster, address, name, str(data)],
                          env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
    assert len(lines) == 1, proc.stdout[-3000:]
    out = json.loads(lines[0][len("RESULT "):])
    assert out["written"] == 500

    # The job's writes are visible over gRPC, exactly.
    got = client.get(name, new_ids)
    np.testing.assert_array_equal(got.ids, new_ids)
    np.testing.assert_array_equal(got.vectors, new_docs)
    assert client.describe_collection(name).vectors == N + 500

    all_ids = np.concatenate([ids, new_ids])
    all_docs = np.concatenate([docs, new_docs])
    job_ids = np.array(out["ids"], dtype=np.uint64)
    job_scores = np.array(out["scores"], dtype=np.float32)
    assert_matches_oracle(job_ids, job_scores, all_ids, all_docs, q, "cosine", DIM, 10, [(64, 200)])
    assert np.isin(job_ids, new_ids).any()     # the new documents do take part in the answer
    over_grpc = client.search(name, q, k=10, funnel=[(64, 200)])
    np.testing.assert_array_equal(over_grpc.ids, job_ids)
