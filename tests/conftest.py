"""Shared fixtures: one real local Ray cluster per test session, a real gRPC
gateway on a loopback port, and corpusA from ../shared/data.

Ray 2.60 enables token auth by default; the embedded test cluster runs with it
off (RAY_AUTH_MODE=disabled), set before Ray is imported anywhere.
"""
from __future__ import annotations

import os
import pathlib
import uuid

os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")  # embedded Ray on loopback

import numpy as np  # noqa: E402
import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parent.parent
SHARED_DATA = REPO.parent / "shared" / "data"
CORPUS = SHARED_DATA / "corpusA" / "embeddings.npz"


@pytest.fixture(scope="session")
def corpus():
    """corpusA as float32: dict with docs [100000, 384], queries [1000, 384]."""
    if not CORPUS.exists():
        pytest.fail(f"test data missing: {CORPUS} (see ../shared/data/README.md)")
    z = np.load(CORPUS)
    return {"docs": z["docs"].astype(np.float32), "queries": z["queries"].astype(np.float32),
            "gt_ids": z["gt_ids"], "gt_scores": z["gt_scores"]}


@pytest.fixture(scope="session")
def ray_cluster():
    """A real local Ray cluster (2 CPUs), started once per session."""
    import ray

    from nestvec.cluster._server.serve import start_ray

    ns = f"nestvec-test-{uuid.uuid4().hex[:8]}"
    start_ray(namespace=ns, num_cpus=2)
    yield ns
    ray.shutdown()


@pytest.fixture(scope="session")
def coordinator(ray_cluster):
    from nestvec.cluster._distributed.coordinator import Coordinator

    return Coordinator(namespace=ray_cluster, create_catalog=True)


@pytest.fixture(scope="session")
def gateway(coordinator):
    """A real grpc.aio gateway on 127.0.0.1 (a free port), in a background thread."""
    from nestvec.cluster._server.serve import GatewayThread

    gw = GatewayThread(coordinator, host="127.0.0.1", port=0)
    yield gw
    gw.stop()


@pytest.fixture
def client(gateway):
    from nestvec.client import Client

    with Client(gateway.address, timeout=60) as c:
        yield c


@pytest.fixture
def collection_name(request):
    """A unique collection name; the collection is dropped after the test if it exists."""
    name = f"t-{request.node.name[:40]}-{uuid.uuid4().hex[:6]}".replace("[", "-").replace("]", "")
    name = "".join(ch if ch.isalnum() or ch in "_.-" else "-" for ch in name)
    gw = request.getfixturevalue("gateway")  # session-scoped; asked for now, not at teardown
    yield name
    from nestvec.client import Client
    from nestvec.errors import NotFound

    with Client(gw.address) as c:
        try:
            c.drop_collection(name)
        except NotFound:
            pass
