"""Distributed load generation on a multi-node Ray cluster, simulated on one machine.

On demand: `.venv/bin/python bench/loadtest_ray_nodes.py`

Starts a Ray cluster of three nodes on this host (a head and two worker
raylets, `ray.cluster_utils.Cluster`, loopback only), a nestvec coordinator and
gateway on it with corpusA's first 20,000 docs, and runs `nestvec loadtest`'s
Ray mode: two generator actors, one CPU each, spread over the nodes. Checks
that they ran on different nodes and that the merged call count equals the
gateway's Prometheus counter. Writes bench/results/loadtest_ray_nodes.json.
"""
from __future__ import annotations

import os
import pathlib
import sys
import uuid

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")

import numpy as np  # noqa: E402
import ray  # noqa: E402
from ray.cluster_utils import Cluster  # noqa: E402

from nestvec.client import Client  # noqa: E402
from nestvec.cluster._distributed.coordinator import Coordinator  # noqa: E402
from nestvec.cluster.loadtest import report, runner  # noqa: E402
from nestvec.cluster.loadtest.generator import Connection, Plan  # noqa: E402
from nestvec.cluster.loadtest.workload import QuerySet, Workload  # noqa: E402
from nestvec.cluster._server.serve import GatewayThread  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent
DATA = REPO.parent / "shared" / "data" / "corpusA" / "embeddings.npz"

sys.path.insert(0, str(REPO / "bench"))
from _common import free_port  # noqa: E402


def main() -> int:
    import argparse
    argparse.ArgumentParser(description=__doc__.split("\n\n")[0]).parse_args()  # --help, no options
    cluster = Cluster(initialize_head=True, connect=False,
                      head_node_args={"num_cpus": 1, "gcs_server_port": free_port(), "include_dashboard": False,
                                      "node_ip_address": "127.0.0.1"})
    gw = None
    try:
        for _ in range(2):
            cluster.add_node(num_cpus=1, node_ip_address="127.0.0.1")
        ns = f"ray-nodes-{uuid.uuid4().hex[:6]}"
        ray.init(address=cluster.address, namespace=ns, log_to_driver=False)
        print(f"Ray cluster: {len(ray.nodes())} nodes at {cluster.address}", flush=True)
        coord = Coordinator(namespace=ns, create_catalog=True)
        gw = GatewayThread(coord, "127.0.0.1", 0)
        z = np.load(DATA)
        docs = z["docs"][:20_000].astype(np.float32)
        with Client(gw.address, timeout=300) as c:
            c.create_collection("docs", 384, "cosine", shards=2)
            c.upsert("docs", np.arange(docs.shape[0]), docs)
        reg = gw.gateway.metrics.registry
        count = lambda: reg.get_sample_value("nestvec_requests_total", {"method": "Search", "code": "OK"}) or 0  # noqa: E731
        before = count()
        res = runner.run_ray(Connection(gw.address), Workload(collection="docs", k=10, dim=64),
                             QuerySet(z["queries"].astype(np.float32)),
                             Plan(mode="closed", concurrency=16, duration=10), workers=2,
                             ray_address=cluster.address)
        print(report.table(res))
        nodes = res.settings["generator_nodes"]
        server_counted = count() - before
        print(f"generators ran on {len(nodes)} distinct Ray nodes; calls counted by the generators "
              f"{res.calls()}, by the gateway's metrics {server_counted:.0f}")
        out = REPO / "bench" / "results" / "loadtest_ray_nodes.json"
        report.write_json(res, out, {"ray_nodes": len(ray.nodes()), "server_counted": server_counted})
        ok = len(nodes) == 2 and res.calls() == server_counted and not res.errors
        print(f"wrote {out}; {'OK' if ok else 'FAILED'}")
        return 0 if ok else 1
    finally:
        if gw is not None:
            gw.stop()
        ray.shutdown()
        cluster.shutdown()


if __name__ == "__main__":
    sys.exit(main())
