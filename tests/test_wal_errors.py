"""Disk errors on the write path (cluster/_storage/wal.py, durable_shard.py): an
acknowledged write survives them, and a write the disk did not take is refused.

Real faults where the machine can make them: a file-size limit (`setrlimit`) in a
child process that then dies without closing anything (as kill -9 would), and a
real full file system (a small tmpfs, where mounting is allowed). Steps a disk
rarely fails at on cue (fsync, each step of a snapshot) fail through the storage
code's failpoints, which raise the OSError a failing disk would just before the
real call. Every test ends with a ledger check: each acknowledged id is recovered
with its exact vector; each refused one is absent.
"""
from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from nestvec.cluster._engine.collection import CollectionConfig
from nestvec.cluster._ops.cli import main as cli_main
from nestvec.cluster._storage import failpoints
from nestvec.cluster._storage.durable_shard import DurableShard, recover
from nestvec.cluster._storage.wal import WalCorruption, WalWriteError, encode_record, read_log

DIM, ROWS = 16, 50
CFG = CollectionConfig.create("disk", DIM, "l2", [8, 16])
RECORD = len(encode_record(1, np.zeros(ROWS), np.zeros((ROWS, DIM))))


def batch(b: int) -> tuple[np.ndarray, np.ndarray]:
    """Batch b: ids b*ROWS.., vectors fixed by b (the ledger recomputes them)."""
    ids = np.arange(b * ROWS, (b + 1) * ROWS, dtype=np.uint64)
    return ids, np.random.default_rng(b).standard_normal((ROWS, DIM)).astype(np.float32)


def ledger_check(directory: str, acked: list[int], refused: list[int] = ()) -> None:
    """Every acknowledged batch recovered exactly; every refused one absent."""
    engine = recover(CFG, directory)[0]
    for b in acked:
        ids, vectors = batch(b)
        found, got = engine.get(ids, DIM)
        assert found.all(), f"acknowledged batch {b} lost {int((~found).sum())} rows"
        np.testing.assert_array_equal(got, vectors)
    for b in refused:
        ids, _ = batch(b)
        assert not engine.get(ids, DIM)[0].any(), f"refused batch {b} was applied"
    assert len(engine) == ROWS * len(acked)


PRELUDE = textwrap.dedent(f"""
    import errno, json, os, resource, sys
    import numpy as np
    sys.path.insert(0, {os.path.dirname(__file__)!r})
    from test_wal_errors import CFG, batch, RECORD
    from nestvec.cluster._storage import failpoints
    from nestvec.cluster._storage.durable_shard import DurableShard
    from nestvec.cluster._storage.wal import WalWriteError
    out = {{"acked": [], "refused": [], "notes": {{}}}}
    def write(shard, b):
        try:
            shard.upsert(*batch(b))
            out["acked"].append(b)
        except WalWriteError as err:
            out["refused"].append(b)
            out["notes"].setdefault("first_refusal", str(err))
    def crash():  # no close, no snapshot, no flush: as kill -9
        sys.stdout.write(json.dumps(out)); sys.stdout.flush(); os._exit(0)
""")


def run_child(body: str, directory: str, env: dict | None = None) -> dict:
    code = PRELUDE + "d = sys.argv[1]\n" + textwrap.dedent(body)
    proc = subprocess.run([sys.executable, "-c", code, directory], capture_output=True, text=True,
                          timeout=120, env={**os.environ, **(env or {})})
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(proc.stdout)


def test_file_size_limit_mid_record_is_refused_rolled_back_and_retried(tmp_path):
    """The limit lands in the middle of a record: that write is refused (not acknowledged),
    the partial record is cut off, later writes are refused while the limit holds, and
    the first write after it is lifted succeeds and is appended after the last good record."""
    out = run_child("""
        shard = DurableShard(CFG, d, fsync="always", snapshot_bytes=1 << 40)
        for b in range(3):
            write(shard, b)
        soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
        good = shard.wal.bytes
        resource.setrlimit(resource.RLIMIT_FSIZE, (good + RECORD + RECORD // 2, hard))
        for b in range(3, 7):  # batch 3 fits; batch 4 hits the limit mid-record
            write(shard, b)
        out["notes"]["size_while_refused"] = os.path.getsize(shard.wal.path)
        out["notes"]["good_bytes"] = shard.wal.bytes
        out["notes"]["health"] = shard.health()
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))  # space comes back
        for b in range(7, 10):
            write(shard, b)
        out["notes"]["health_after"] = shard.health()
        crash()
    """, str(tmp_path / "s"))
    assert out["acked"] == [0, 1, 2, 3, 7, 8, 9] and out["refused"] == [4, 5, 6]
    notes = out["notes"]
    assert "File too large" in notes["first_refusal"] and "writes are refused" in notes["first_refusal"]
    assert notes["size_while_refused"] == notes["good_bytes"] == 4 * RECORD  # partial record cut off
    assert notes["health"]["write_error"] and notes["health"]["write_errors"] >= 3
    assert notes["health_after"]["write_error"] == ""
    records, torn = read_log(str(tmp_path / "s" / "wal-00000000.log"))
    assert len(records) == 7 and torn == 0  # no partial record between good ones
    ledger_check(str(tmp_path / "s"), out["acked"], out["refused"])


def full_tmpfs(tmp_path, size="1m"):
    mount = tmp_path / "small"
    mount.mkdir()
    proc = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        pytest.skip(f"cannot mount a small tmpfs here ({proc.stderr.strip()}): the full-disk "
                    "case is covered by the file-size-limit and failpoint tests")
    return mount


def test_a_full_file_system_refuses_writes_and_recovers_when_space_returns(tmp_path):
    mount = full_tmpfs(tmp_path)
    try:
        d = str(mount / "s")
        out = run_child(f"""
            shard = DurableShard(CFG, d, fsync="always", snapshot_bytes=1 << 40)
            filler = open({str(mount / "filler")!r}, "wb")
            for b in range(40):  # ~3.4 KiB a record: a 1 MiB disk fills well before 40 + filler
                write(shard, b)
            try:
                while True:
                    filler.write(b"x" * 65536); filler.flush()
            except OSError:
                pass
            for b in range(40, 44):
                write(shard, b)
            out["notes"]["health"] = shard.health()
            filler.close(); os.remove({str(mount / "filler")!r})  # space comes back
            for b in range(44, 48):
                write(shard, b)
            crash()
        """, d)
        assert set(out["refused"]) & set(range(40, 44)), out  # the full disk was noticed
        assert "No space left" in out["notes"]["first_refusal"]
        assert out["acked"][-4:] == [44, 45, 46, 47]
        ledger_check(d, out["acked"], out["refused"])
    finally:
        subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.parametrize("policy", ["always", "batch"])
def test_a_failed_fsync_is_not_acknowledged_and_unsynced_writes_are_rewritten(tmp_path, policy):
    """always: the write whose fsync failed is refused and cut off. batch: writes acknowledged
    since the last fsync are kept in memory and written again before the next write is taken
    (after an fsync error the kernel may have dropped their pages)."""
    d = str(tmp_path / "s")
    out = run_child(f"""
        shard = DurableShard(CFG, d, fsync={policy!r}, fsync_interval=3600, snapshot_bytes=1 << 40)
        for b in range(3):
            write(shard, b)
        failpoints.arm("wal.fsync", errno.EIO, times=1)
        if {policy!r} == "always":
            write(shard, 3)                   # its fsync fails: refused
        else:
            try:
                shard.wal.sync()              # the flusher's fsync fails
            except WalWriteError:
                pass
            write(shard, 3)                   # retries: rewrites batches 0-2, fsyncs, then 3
        out["notes"]["health"] = shard.health()
        for b in range(4, 6):
            write(shard, b)
        shard.wal.sync()
        crash()
    """, d)
    if policy == "always":
        assert out["refused"] == [3] and out["acked"] == [0, 1, 2, 4, 5]
        assert "fsync failed" in out["notes"]["first_refusal"]
    else:
        assert out["refused"] == [] and out["acked"] == [0, 1, 2, 3, 4, 5]
    assert out["notes"]["health"]["write_errors"] == 1
    ledger_check(d, out["acked"], out["refused"])


SNAPSHOT_STEPS = ["snapshot.write", "snapshot.open_log", "snapshot.rename", "snapshot.fsync_dir",
                  "snapshot.cleanup"]


@pytest.mark.parametrize("step", SNAPSHOT_STEPS)
def test_a_failure_at_any_snapshot_step_loses_no_acknowledged_write(tmp_path, step):
    """The write that triggers the snapshot stands (it is in the log) whatever step fails;
    writes after it are kept; a later snapshot succeeds; a crash at any point recovers all."""
    d = str(tmp_path / "s")
    err = "EMFILE" if step == "snapshot.open_log" else "EIO"
    out = run_child(f"""
        shard = DurableShard(CFG, d, fsync="always", snapshot_bytes=3 * RECORD)
        write(shard, 0); write(shard, 1)
        failpoints.arm({step!r}, errno.{err}, times=1)
        write(shard, 2)                       # reaches the threshold: the snapshot fails at {step}
        out["notes"]["health"] = shard.health()
        out["notes"]["files_after_failure"] = sorted(os.listdir(d))
        write(shard, 3)                       # not yet retried (a quarter more log first)
        for b in range(4, 8):                 # a later snapshot succeeds
            write(shard, b)
        out["notes"]["files_at_end"] = sorted(os.listdir(d))
        crash()
    """, d)
    assert out["refused"] == [] and out["acked"] == list(range(8))
    health = out["notes"]["health"]
    if step in ("snapshot.cleanup",):
        assert health["snapshot_error"] == ""  # leftovers only: the snapshot itself is current
    else:
        assert err in health["snapshot_error"] or os.strerror(getattr(errno, err)) in health["snapshot_error"]
    if step in ("snapshot.write", "snapshot.open_log", "snapshot.rename"):  # undone: old log current
        assert out["notes"]["files_after_failure"] == ["wal-00000000.log"], out["notes"]
    assert not any(f.endswith(".tmp") for f in out["notes"]["files_at_end"])
    ledger_check(d, out["acked"])
    # and once more after the recovery has cleaned up, through a reopened shard
    shard = DurableShard(CFG, d, snapshot_bytes=1 << 40)
    assert len(shard.engine) == 8 * ROWS
    shard.close()
    ledger_check(d, out["acked"])


def test_a_lost_snapshot_rename_replays_both_logs(tmp_path):
    """After a snapshot's rename, writes go to its new log. If the folder's fsync fails the
    old files stay; if the rename then does not survive a crash, recovery finds the old
    snapshot, the old log and the new one, and must replay both (the old rule, 'replay
    only the newest snapshot's log', dropped the new one)."""
    import shutil
    d = str(tmp_path / "s")
    shard = DurableShard(CFG, d, fsync="always", snapshot_bytes=1 << 40)
    for b in range(2):
        shard.upsert(*batch(b))
    shard.snapshot()                      # snapshot 1, log 1
    for b in range(2, 4):
        shard.upsert(*batch(b))
    failpoints.arm("snapshot.fsync_dir", errno.EIO, times=1)
    try:
        with pytest.raises(OSError):
            shard.snapshot()              # renamed, but the rename may not be durable
    finally:
        failpoints.disarm()
    assert sorted(os.listdir(d)) == ["snapshot-00000001", "snapshot-00000002", "wal-00000001.log",
                                     "wal-00000002.log"]
    for b in range(4, 6):
        shard.upsert(*batch(b))           # into log 2
    shard.close(snapshot=False)
    shutil.rmtree(os.path.join(d, "snapshot-00000002"))  # the crash lost the rename
    ledger_check(d, list(range(6)))


def test_a_flipped_bit_in_a_complete_last_record_is_corruption_and_repair_keeps_a_copy(tmp_path, capsys):
    d = tmp_path / "s"
    shard = DurableShard(CFG, str(d), fsync="always", snapshot_bytes=1 << 40)
    for b in range(4):
        shard.upsert(*batch(b))
    shard.close(snapshot=False)
    path = d / "wal-00000000.log"
    data = bytearray(path.read_bytes())
    last = 3 * RECORD
    data[last + RECORD - 100] ^= 0x10     # one bit, inside the last record's vectors
    path.write_bytes(bytes(data))
    with pytest.raises(WalCorruption) as err:
        DurableShard(CFG, str(d))
    assert err.value.path == str(path) and err.value.offset == last
    assert f"byte offset {last}" in str(err.value) and "nestvec repair-wal" in str(err.value)
    assert path.read_bytes() == bytes(data)  # the evidence is untouched
    assert cli_main(["repair-wal", str(path)]) == 0
    said = capsys.readouterr().out
    assert f"cut at byte offset {last}" in said and "kept 3 records" in said
    assert (d / f"wal-00000000.log.cut-{last}").read_bytes() == bytes(data[last:])
    assert path.stat().st_size == last
    ledger_check(str(d), [0, 1, 2], [3])  # the operator chose to lose batch 3; nothing else
    assert cli_main(["repair-wal", str(path)]) == 0
    assert "nothing cut" in capsys.readouterr().out


def test_repair_refuses_a_log_whose_shard_is_running(tmp_path, capsys):
    from nestvec.cluster._storage import datadir
    d = tmp_path / "s"
    held = datadir.lock_shard_dir(str(d))
    shard = DurableShard(CFG, str(d))
    shard.upsert(*batch(0))
    assert cli_main(["repair-wal", str(d / "wal-00000000.log")]) == 2
    assert "stop the server first" in capsys.readouterr().err
    shard.close()
    held.close()


def test_a_zero_filled_last_block_is_still_a_torn_tail(tmp_path):
    """A crash after the file grew but before its last block was written reads as zeros
    there: that record was never acknowledged, and is dropped (with a warning) as before."""
    d = tmp_path / "s"
    shard = DurableShard(CFG, str(d), fsync="always", snapshot_bytes=1 << 40)
    for b in range(3):
        shard.upsert(*batch(b))
    shard.close(snapshot=False)
    path = d / "wal-00000000.log"
    data = bytearray(path.read_bytes())
    end = len(data)
    cut = (end - 1) // 4096 * 4096
    assert cut > 2 * RECORD               # the zeroed block lies inside the last record
    data[cut:] = bytes(end - cut)
    path.write_bytes(bytes(data))
    ledger_check(str(d), [0, 1], [2])


def test_a_new_shard_folder_and_its_first_log_are_fsynced_with_their_parents(tmp_path):
    """A new name is durable only once its parent directory is fsync'd. Watched for real
    with strace: every folder the shard creates, and its first log, is followed by an
    fsync of the file and of the directory that holds the new name."""
    import re
    import shutil
    if shutil.which("strace") is None:
        pytest.skip("strace is not installed (.ci/run installs it): cannot watch the fsyncs")
    d = tmp_path / "a" / "b" / "s"
    trace = tmp_path / "trace"
    code = ("import sys; from test_wal_errors import CFG, batch; "
            "from nestvec.cluster._storage.durable_shard import DurableShard; "
            "s = DurableShard(CFG, sys.argv[1]); s.upsert(*batch(0))")
    proc = subprocess.run(["strace", "-f", "-qq", "-e", "trace=mkdir,openat,fsync,close", "-o", str(trace),
                           sys.executable, "-c", code, str(d)], capture_output=True, text=True,
                          cwd=os.path.dirname(__file__), timeout=120)
    if proc.returncode != 0 and "ptrace" in proc.stderr:
        pytest.skip(f"ptrace is not permitted here: {proc.stderr.strip()[:200]}")
    assert proc.returncode == 0, proc.stderr[-2000:]
    fds: dict[str, str] = {}
    created: list[str] = []       # new names, in order
    synced: list[str] = []        # paths fsync'd, in order
    for line in trace.read_text().splitlines():
        if m := re.search(r'mkdir\("([^"]+)", \d+\)\s+= 0', line):
            created.append(m.group(1))
        elif m := re.search(r'openat\(AT_FDCWD, "([^"]+)", ([A-Z_|]+)(?:, \d+)?\)\s+= (\d+)', line):
            fds[m.group(3)] = m.group(1)
            if "O_CREAT" in m.group(2) and m.group(1).endswith(".log"):
                created.append(m.group(1))
        elif m := re.search(r"fsync\((\d+)\)\s+= 0", line):
            synced.append(fds.get(m.group(1), "?"))
    log = str(d / "wal-00000000.log")
    for level in (tmp_path / "a", tmp_path / "a" / "b", d):
        assert str(level) in created, f"{level} was not created by the shard"
    assert log in created
    for name in [str(tmp_path / "a"), str(tmp_path / "a" / "b"), str(d), log]:
        parent = os.path.dirname(name)
        assert parent in synced, f"{parent} was never fsync'd after {name} was created"
    assert log in synced  # the new log itself, before anything is acknowledged in it


def test_failpoints_parse_from_the_environment():
    try:
        failpoints.arm_from_env("wal.write=ENOSPC*2@1, snapshot.rename=EIO")
        failpoints.hit("wal.write")            # the first passes
        for _ in range(2):
            with pytest.raises(OSError) as err:
                failpoints.hit("wal.write")
            assert err.value.errno == errno.ENOSPC
        failpoints.hit("wal.write")            # then it passes again
        with pytest.raises(OSError):
            failpoints.hit("snapshot.rename")
        with pytest.raises(ValueError):
            failpoints.arm("no.such.step")
    finally:
        failpoints.disarm()
