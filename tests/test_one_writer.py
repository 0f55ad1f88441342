"""One writer per data directory (issue 17): with the first server's catalog actor
killed, a second `nestvec serve` on the same directory is refused, and no write the
first one acknowledged is lost. Real servers, real kill -9, a ledger check at the end."""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np

from nestvec.client import Client
from proc_util import descendants, free_port, kill9
from test_crash import _start_server


def _catalog_pid(server_pid: int) -> int | None:
    for pid in descendants(server_pid):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                if b"CatalogActor" in f.read():
                    return pid
        except OSError:
            continue
    return None


def _second_serve(data_dir: str) -> str:
    """Start a second server on the directory; it must exit refusing (its output is
    returned). One still running after 90 s took the directory: stopped, and a failure."""
    env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")
    proc = subprocess.Popen([sys.executable, "-m", "nestvec.cluster._ops.cli", "serve", "--port",
                             str(free_port()), "--data-dir", data_dir, "--namespace", "second"],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, env=env,
                            start_new_session=True)
    try:
        out, _ = proc.communicate(timeout=90)
    except subprocess.TimeoutExpired:
        kill9([proc.pid] + descendants(proc.pid))
        raise AssertionError("a second server opened the data directory while the first ran")
    assert proc.returncode != 0, out
    return out


def test_second_serve_is_refused_after_the_catalog_is_killed(tmp_path, corpus):
    docs = corpus["docs"][:3000]
    data_dir, port, log = str(tmp_path / "data"), free_port(), str(tmp_path / "server.log")
    address = f"127.0.0.1:{port}"
    server = _start_server(data_dir, port, log)
    acked: dict[int, int] = {}  # id -> row of docs, for every acknowledged write
    try:
        with Client(address, timeout=60) as c:
            c.create_collection("one", dim=384, metric="cosine")
            c.upsert("one", np.arange(1000), docs[:1000])
            acked.update({i: i for i in range(1000)})
            victim = _catalog_pid(server.pid)
            assert victim is not None, "no catalog actor process found"
            kill9([victim])
            # At once, while it restarts, and again once it is back: refused both times.
            for attempt in range(2):
                out = _second_serve(data_dir)
                assert "in use by another nestvec server" in out, out
                c.upsert("one", np.arange(1000 + attempt * 1000, 2000 + attempt * 1000),
                         docs[1000 + attempt * 1000:2000 + attempt * 1000])  # still acknowledging
                acked.update({i: i for i in range(1000 + attempt * 1000, 2000 + attempt * 1000)})
                end = time.monotonic() + 60
                while (_catalog_pid(server.pid) in (None, victim)) and time.monotonic() < end:
                    time.sleep(0.2)
            assert _catalog_pid(server.pid) not in (None, victim), "the catalog did not restart"
            c.list_collections()  # the restarted catalog serves
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(120)
    server = _start_server(data_dir, port, log)  # the ledger, after a clean restart
    try:
        with Client(address, timeout=60) as c:
            ids = np.array(sorted(acked), dtype=np.uint64)
            got = c.get("one", ids)
            assert got.missing_ids.size == 0, f"{got.missing_ids.size} acknowledged writes lost"
            np.testing.assert_array_equal(got.vectors, docs[[acked[int(i)] for i in got.ids]])
    finally:
        server.send_signal(signal.SIGTERM)
        server.wait(120)
