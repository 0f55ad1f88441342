"""Disk errors seen from a client: a real `nestvec serve` on a real data directory.

1. The shard's log stops taking writes (ENOSPC through the storage failpoint, armed
   for the server's processes by $NESTVEC_FAILPOINTS): upserts get UNAVAILABLE
   saying why, reads keep answering exactly, `describe` and `nestvec status` show
   WRITES_REFUSED, and the first upsert after the disk recovers succeeds.
2. A flipped bit in the complete last record of a shard's log: the shard refuses
   to start, and the client's error and the status name the file and offset;
   after `nestvec repair-wal`, a restarted server serves every other write.
Both end with a ledger check against a restarted server.
"""
from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from nestvec.client import Client
from nestvec.cluster._ops.cli import main as cli_main
from nestvec.cluster._ops.status import format_status
from nestvec.errors import NestvecError, Unavailable
from oracle import assert_matches_oracle
from proc_util import descendants, free_port, kill9
from test_crash import _wait_serving

DIM, ROWS, NAME = 16, 40, "disk"


def batch(b: int):
    ids = np.arange(b * ROWS, (b + 1) * ROWS, dtype=np.uint64)
    return ids, np.random.default_rng(b).standard_normal((ROWS, DIM)).astype(np.float32)


class Server:
    def __init__(self, tmp, failpoints: str = ""):
        self.data, self.log = str(tmp / "data"), str(tmp / "serve.log")
        self.port = free_port()
        self.address = f"127.0.0.1:{self.port}"
        env = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
                   NESTVEC_FAILPOINTS=failpoints)
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "nestvec.cluster._ops.cli", "serve", "--port", str(self.port),
                 "--data-dir", self.data, "--shards", "1", "--namespace", f"disk{self.port}"],
                stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True)
        _wait_serving(self.address, self.proc, self.log)

    def stop(self):
        self.proc.send_signal(signal.SIGTERM)
        assert self.proc.wait(90) == 0, open(self.log).read()[-3000:]

    def kill(self):
        kill9([self.proc.pid] + descendants(self.proc.pid))
        self.proc.wait(10)


def ledger_check(c: Client, acked: list[int], refused: list[int]):
    for b in acked:
        ids, vectors = batch(b)
        got = c.get(NAME, ids)
        assert got.missing_ids.size == 0, f"acknowledged batch {b} lost {got.missing_ids.size} rows"
        np.testing.assert_array_equal(got.vectors, vectors)
    for b in refused:
        assert c.get(NAME, batch(b)[0]).missing_ids.size == ROWS, f"refused batch {b} was applied"


def assert_search_exact(c: Client, acked: list[int]):
    ids = np.concatenate([batch(b)[0] for b in acked])
    docs = np.concatenate([batch(b)[1] for b in acked])
    queries = np.random.default_rng(99).standard_normal((5, DIM)).astype(np.float32)
    res = c.search(NAME, queries, k=7)
    assert_matches_oracle(res.ids, res.scores, ids, docs, queries, "dot", DIM, 7)


@pytest.fixture
def cleanup():
    servers = []
    yield servers
    for s in servers:
        if s.proc.poll() is None:
            s.kill()


def test_a_failing_disk_refuses_writes_serves_reads_and_recovers(tmp_path, cleanup):
    # the shard's first 3 appends land, the next 2 fail as a full disk would, then space is back
    server = Server(tmp_path, "wal.write=ENOSPC*2@3")
    cleanup.append(server)
    acked, refused = [], []
    with Client(server.address, timeout=60) as c:
        c.create_collection(NAME, dim=DIM, metric="dot", shards=1)
        for b in range(3):
            c.upsert(NAME, *batch(b))
            acked.append(b)
        with pytest.raises(Unavailable) as err:
            c.upsert(NAME, *batch(3))
        refused.append(3)
        assert "No space left on device" in err.value.message
        assert "writes are refused until one succeeds" in err.value.message
        ledger_check(c, acked, refused)          # reads keep answering, exactly
        assert_search_exact(c, acked)
        shard = c.describe_collection(NAME).shard_info[0]
        assert shard.health == "WRITES_REFUSED" and "No space left" in shard.write_error
        assert shard.write_errors == 1
        assert "writes refused: write failed" in format_status([c.describe_collection(NAME)])
        with pytest.raises(Unavailable):
            c.upsert(NAME, *batch(4))            # still failing: the retry is refused too
        refused.append(4)
        c.upsert(NAME, *batch(5))                # the disk is back: the retry succeeds
        acked.append(5)
        shard = c.describe_collection(NAME).shard_info[0]
        assert shard.health == "SERVING" and shard.write_error == "" and shard.write_errors == 2
        ledger_check(c, acked, refused)
    server.stop()
    server = Server(tmp_path)
    cleanup.append(server)
    with Client(server.address, timeout=60) as c:
        ledger_check(c, acked, refused)
        assert_search_exact(c, acked)
    server.stop()


def test_a_corrupt_last_record_stops_the_shard_until_repaired(tmp_path, cleanup, capsys):
    server = Server(tmp_path)
    cleanup.append(server)
    with Client(server.address, timeout=60) as c:
        c.create_collection(NAME, dim=DIM, metric="dot", shards=1)
        for b in range(4):
            c.upsert(NAME, *batch(b))
    server.kill()                                # the log keeps every write (no snapshot)
    (shard_dir,) = [os.path.join(r, d) for r, ds, _ in os.walk(server.data) for d in ds
                    if d.startswith("shard-")]
    wal = os.path.join(shard_dir, "wal-00000000.log")
    data = bytearray(open(wal, "rb").read())
    record = len(data) // 4
    data[-50] ^= 0x01                            # one bit of the last record's vectors
    open(wal, "wb").write(bytes(data))

    server = Server(tmp_path)
    cleanup.append(server)
    with Client(server.address, timeout=60) as c:
        with pytest.raises(NestvecError) as err:
            c.get(NAME, batch(0)[0])
        assert err.value.code == "UNAVAILABLE"
        assert f"{wal} is corrupt at byte offset {3 * record}" in err.value.message
        info = c.describe_collection(NAME)
        assert info.shard_info[0].down and f"byte offset {3 * record}" in info.shard_info[0].down_reason
        assert "repair-wal" in format_status([info])
    server.stop()
    assert open(wal, "rb").read() == bytes(data)  # nothing was cut without the operator

    assert cli_main(["repair-wal", wal]) == 0
    assert "kept 3 records" in capsys.readouterr().out
    server = Server(tmp_path)
    cleanup.append(server)
    with Client(server.address, timeout=60) as c:
        ledger_check(c, [0, 1, 2], [3])
        assert_search_exact(c, [0, 1, 2])
    server.stop()
