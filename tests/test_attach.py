"""`nestvec serve --ray-address` on a Ray cluster started separately (`ray start --head`).

Shard actors are detached: they outlive the serve process, and a second serve
in the same namespace attaches to them; a Ray job reaches them with connect().
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import time

import numpy as np
import pytest

from nestvec.client import Client
from proc_util import descendants, free_port, kill9
from test_crash import _wait_serving

ENV = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
RAY = os.path.join(os.path.dirname(sys.executable), "ray")


@pytest.fixture
def ray_head(tmp_path):
    """A real head node on 127.0.0.1 (`ray start --head --block`), ours to kill."""
    port = free_port()
    temp = tempfile.mkdtemp(prefix="nvr", dir="/tmp")  # socket paths must stay short
    log = open(tmp_path / "ray.log", "wb")
    head = subprocess.Popen(
        [RAY, "start", "--head", "--block", f"--port={port}", "--node-ip-address=127.0.0.1",
         "--num-cpus=2", "--include-dashboard=false", f"--temp-dir={temp}",
         f"--ray-client-server-port={free_port()}", f"--dashboard-agent-listen-port={free_port()}",
         "--disable-usage-stats"],
        stdout=log, stderr=subprocess.STDOUT, env=ENV, start_new_session=True)
    address = f"127.0.0.1:{port}"
    try:
        end = time.monotonic() + 120
        while subprocess.run([RAY, "status", f"--address={address}"], env=ENV,
                             capture_output=True).returncode != 0:
            assert head.poll() is None and time.monotonic() < end, open(tmp_path / "ray.log").read()
            time.sleep(1)
        yield address
    finally:
        kill9([head.pid] + descendants(head.pid))


def _serve(address: str, port: int, log_path) -> subprocess.Popen:
    with open(log_path, "ab") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "nestvec.cluster._ops.cli", "serve", "--ray-address", address,
             "--namespace", "attach-test", "--in-memory", "--port", str(port)],
            stdout=log, stderr=subprocess.STDOUT, env=ENV, start_new_session=True)
    _wait_serving(f"127.0.0.1:{port}", proc, str(log_path))
    return proc


def test_serve_attaches_and_shards_outlive_it(ray_head, tmp_path, corpus):
    docs, queries = corpus["docs"][:2000], corpus["queries"][:5]
    port = free_port()
    server = _serve(ray_head, port, tmp_path / "serve.log")
    try:
        with Client(f"127.0.0.1:{port}") as c:
            c.create_collection("attached", 384, "cosine", shards=2)
            c.upsert("attached", np.arange(2000), docs)
            before = c.search("attached", queries, k=5)
        server.send_signal(signal.SIGTERM)
        assert server.wait(60) == 0

        # A Ray job on the cluster reaches the same shards without gRPC...
        job = subprocess.run(
            [sys.executable, "-c",
             "import numpy as np; from nestvec.cluster import connect; "
             f"c = connect(namespace='attach-test', address='{ray_head}'); "
             "print(c.describe_collection('attached')[0].name, "
             "sum(s['vectors'] for s in c.describe_collection('attached')[1]))"],
            env=ENV, capture_output=True, text=True, timeout=120)
        assert job.returncode == 0, job.stderr[-2000:]
        assert job.stdout.split()[-2:] == ["attached", "2000"]

        # ...and a new serve attaches to them: same collection, same answers.
        server = _serve(ray_head, port, tmp_path / "serve.log")
        with Client(f"127.0.0.1:{port}") as c:
            after = c.search("attached", queries, k=5)
            np.testing.assert_array_equal(after.ids, before.ids)
            c.drop_collection("attached")
    finally:
        if server.poll() is None:
            kill9([server.pid] + descendants(server.pid))
