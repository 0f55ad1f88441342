"""The `nestvec` command as a user runs it: real processes, real ports."""
from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from nestvec.client import Client
from proc_util import descendants, free_port, kill9
from test_crash import _wait_serving

NESTVEC = [sys.executable, "-m", "nestvec.cluster._ops.cli"]
ENV = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0")


def test_demo_runs_and_reports_recall():
    out = subprocess.run(NESTVEC + ["demo"], env=ENV, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stdout[-2000:] + out.stderr[-2000:]
    rows = dict(re.findall(r"^  (\d+(?: \(full\)| -> 384 funnel \(keep \d+\))?)\s+([01]\.\d{3})\s+[0-9.]+ ms$",
                           out.stdout, flags=re.M))
    assert rows["384 (full)"] == "1.000"                 # full dim is the exact answer
    recalls = [float(rows[d]) for d in ("32", "64", "128", "256")]
    assert recalls == sorted(recalls) and 0 < recalls[0] < 1  # longer prefixes recall more
    assert float(rows["64 -> 384 funnel (keep 100)"]) > float(rows["64"])  # the funnel recovers quality
    assert "query: " in out.stdout and "dim 32" in out.stdout


def test_serve_sigterm_finishes_the_call_in_flight(tmp_path):
    port = free_port()
    log = str(tmp_path / "serve.log")
    with open(log, "wb") as f:
        server = subprocess.Popen(NESTVEC + ["serve", "--port", str(port), "--in-memory",
                                             "--namespace", "sigterm-test", "--grace", "30"],
                                  stdout=f, stderr=subprocess.STDOUT, env=ENV,
                                  start_new_session=True)
    try:
        address = f"127.0.0.1:{port}"
        _wait_serving(address, server, log)
        rng = np.random.default_rng(0)
        sent = threading.Event()
        result = {}

        def batches():  # a bulk load that is still streaming when SIGTERM arrives
            for i in range(6):
                yield np.arange(i * 10, (i + 1) * 10), rng.standard_normal((10, 8))
                if i == 2:
                    sent.set()
                    time.sleep(1.0)

        with Client(address, timeout=60) as c:
            c.create_collection("inflight", dim=8, metric="dot")
            t = threading.Thread(target=lambda: result.update(r=c.upsert_stream("inflight", batches())))
            t.start()
            sent.wait(30)
            server.send_signal(signal.SIGTERM)
            t.join(60)
        assert result["r"].upserted == 60 and result["r"].batches == 6
        assert server.wait(60) == 0
        assert "shutting down" in open(log).read()
    finally:
        if server.poll() is None:
            kill9([server.pid] + descendants(server.pid))


def test_serve_refuses_a_data_dir_of_a_newer_format(tmp_path):
    d = tmp_path / "data"
    d.mkdir()
    (d / "MANIFEST.json").write_text('{"format_version": 999}')
    out = subprocess.run(NESTVEC + ["serve", "--port", str(free_port()), "--data-dir", str(d)],
                         env=ENV, capture_output=True, text=True, timeout=120)
    assert out.returncode == 2
    assert "nestvec serve: error: data directory" in out.stderr
    assert "format version 999" in out.stderr and "upgrade nestvec" in out.stderr
    assert "Traceback" not in out.stderr
