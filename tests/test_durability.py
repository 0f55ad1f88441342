"""The write-ahead log, snapshots and recovery, on real files (no Ray)."""
from __future__ import annotations

import json
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nestvec.cluster._storage import datadir
from nestvec.cluster._engine.collection import CollectionConfig, plan_search
from nestvec.cluster._storage.durable_shard import DurableShard, recover
from nestvec.cluster._storage.wal import OP_DELETE, OP_UPSERT, WalCorruption, WalWriter, read_log

CFG = CollectionConfig.create("dur", 8, "l2", [4, 8])


def _vecs(rng, n):
    return rng.standard_normal((n, 8)).astype(np.float32)


def _state(engine):
    ids, vecs = engine.live_arrays()
    return ids, vecs


def _drop(shard):
    """Let go of the shard's log as a killed process would: no fsync, no snapshot."""
    shard.wal._stop.set()
    shard.wal.closed = True
    os.close(shard.wal._fd)


def _write_log(path, n_records=5, rows=10):
    rng = np.random.default_rng(1)
    w = WalWriter(path, "always")
    written = []
    for i in range(n_records):
        ids = np.arange(i * rows, (i + 1) * rows, dtype=np.uint64)
        v = _vecs(rng, rows)
        w.append(OP_UPSERT, ids, v)
        written.append((ids, v))
    w.close()
    return written


def test_log_round_trip(tmp_path):
    path = str(tmp_path / "wal.log")
    written = _write_log(path)
    records, torn = read_log(path)
    assert torn == 0 and len(records) == len(written)
    for rec, (ids, v) in zip(records, written):
        assert rec.op == OP_UPSERT
        np.testing.assert_array_equal(rec.ids, ids)
        np.testing.assert_array_equal(rec.vectors, v)


@pytest.mark.parametrize("cut", [1, 7, 15, 16, 17, 100])
def test_truncated_last_record_is_dropped_and_the_rest_recovered(tmp_path, cut):
    path = str(tmp_path / "wal.log")
    written = _write_log(path)
    size = os.path.getsize(path)
    with open(path, "r+b") as f:
        f.truncate(size - cut)  # a crash mid-append: the last record is a prefix of itself
    records, torn = read_log(path)
    assert len(records) == len(written) - 1
    assert torn > 0
    np.testing.assert_array_equal(records[-1].ids, written[-2][0])


def test_flipped_byte_in_the_middle_names_file_and_offset(tmp_path):
    path = str(tmp_path / "wal.log")
    _write_log(path)
    record_size = os.path.getsize(path) // 5
    offset = 2 * record_size + 40  # inside the third record's payload
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ 0x01]))
    with pytest.raises(WalCorruption) as err:
        read_log(path)
    assert path in str(err.value)
    assert err.value.offset == 2 * record_size  # the start of the damaged record
    assert f"offset {2 * record_size}" in str(err.value)


def test_flipped_byte_in_a_header_is_corruption_not_a_torn_tail(tmp_path):
    path = str(tmp_path / "wal.log")
    _write_log(path)
    record_size = os.path.getsize(path) // 5
    with open(path, "r+b") as f:
        f.seek(record_size + 5)  # the length field of the second record
        f.write(b"\xff")
    with pytest.raises(WalCorruption) as err:
        read_log(path)
    assert err.value.offset == record_size


def test_recovery_after_a_crash_keeps_every_acknowledged_write(tmp_path):
    rng = np.random.default_rng(2)
    shard = DurableShard(CFG, str(tmp_path / "s"))
    v = _vecs(rng, 100)
    shard.upsert(np.arange(100, dtype=np.uint64), v)
    shard.delete(np.arange(10, dtype=np.uint64))
    # No close(): as after kill -9, only the log holds the writes.
    _drop(shard)
    engine, seq, replayed, _ = recover(CFG, str(tmp_path / "s"))
    assert (seq, replayed) == (0, 2)
    ids, vecs = _state(engine)
    np.testing.assert_array_equal(ids, np.arange(10, 100, dtype=np.uint64))
    np.testing.assert_array_equal(vecs, v[10:])


def test_a_torn_tail_is_truncated_so_later_writes_are_readable(tmp_path):
    d = str(tmp_path / "s")
    shard = DurableShard(CFG, d)
    rng = np.random.default_rng(3)
    shard.upsert(np.arange(5, dtype=np.uint64), _vecs(rng, 5))
    _drop(shard)
    wal = os.path.join(d, "wal-00000000.log")
    with open(wal, "ab") as f:
        f.write(b"\x31\x57\x56\x4e\x00\x01")  # half a header: a crash mid-append
    shard = DurableShard(CFG, d)           # recovers, truncates the torn bytes
    shard.upsert(np.arange(5, 8, dtype=np.uint64), _vecs(rng, 3))
    _drop(shard)
    engine, _, _, _ = recover(CFG, d)
    assert len(engine) == 8


def test_snapshot_then_log_and_clean_close(tmp_path):
    d = str(tmp_path / "s")
    rng = np.random.default_rng(4)
    shard = DurableShard(CFG, d, snapshot_bytes=2_000)  # tiny: snapshots every few writes
    expect = {}
    for i in range(30):
        ids = rng.integers(0, 200, 8).astype(np.uint64)
        v = _vecs(rng, 8)
        shard.upsert(ids, v)
        expect.update({int(a): b for a, b in zip(ids, v)})
        if i % 5 == 4:
            dead = rng.integers(0, 200, 5).astype(np.uint64)
            shard.delete(dead)
            for x in dead.tolist():
                expect.pop(x, None)
    assert shard.seq > 1
    names = sorted(os.listdir(d))
    assert names == [f"snapshot-{shard.seq:08d}", f"wal-{shard.seq:08d}.log"]  # old ones removed
    shard.close()
    engine, seq, replayed, _ = recover(CFG, d)
    assert replayed == 0  # a clean close leaves nothing to replay
    ids, vecs = _state(engine)
    assert ids.tolist() == sorted(expect)
    np.testing.assert_array_equal(vecs, np.stack([expect[i] for i in sorted(expect)]))


def test_an_unfinished_snapshot_is_ignored(tmp_path):
    d = str(tmp_path / "s")
    rng = np.random.default_rng(5)
    shard = DurableShard(CFG, d)
    shard.upsert(np.arange(20, dtype=np.uint64), _vecs(rng, 20))
    _drop(shard)
    os.makedirs(os.path.join(d, "snapshot-00000001.tmp"))  # crash while writing a snapshot
    engine, seq, _, _ = recover(CFG, d)
    assert seq == 0 and len(engine) == 20
    assert not os.path.exists(os.path.join(d, "snapshot-00000001.tmp"))


ops = st.lists(
    st.tuples(st.sampled_from(["upsert", "delete", "snapshot"]),
              st.lists(st.integers(0, 40), min_size=1, max_size=12)),
    min_size=1, max_size=25)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(ops=ops, seed=st.integers(0, 2**16))
def test_snapshot_plus_log_equals_log_alone(tmp_path_factory, ops, seed):
    """Property: recovering from (snapshots + log) gives the state the log alone gives."""
    rng = np.random.default_rng(seed)
    with_snaps = DurableShard(CFG, str(tmp_path_factory.mktemp("a")), fsync="none")
    log_only = DurableShard(CFG, str(tmp_path_factory.mktemp("b")), fsync="none",
                            snapshot_bytes=1 << 40)
    for op, raw in ops:
        ids = np.array(raw, dtype=np.uint64)
        if op == "upsert":
            v = _vecs(rng, ids.size)
            with_snaps.upsert(ids, v)
            log_only.upsert(ids, v)
        elif op == "delete":
            with_snaps.delete(ids)
            log_only.delete(ids)
        else:
            with_snaps.snapshot()
    for s in (with_snaps, log_only):
        s.wal.close()
    a, _, _, _ = recover(CFG, with_snaps.dir)
    b, seq_b, _, _ = recover(CFG, log_only.dir)
    assert seq_b == 0
    for x, y in zip(_state(a), _state(b)):
        np.testing.assert_array_equal(x, y)
    # ...and both answer searches like the live engine did.
    q = rng.standard_normal((3, 8)).astype(np.float32)
    if len(a):
        plan = plan_search(CFG, 8, 5, 8)
        ra, rb = a.search(q, plan), b.search(q, plan)
        np.testing.assert_array_equal(ra.ids, rb.ids)


def test_delete_log_record_round_trip(tmp_path):
    path = str(tmp_path / "wal.log")
    w = WalWriter(path, "batch", interval=0.01)
    w.append(OP_DELETE, np.array([3, 2**64 - 1], dtype=np.uint64))
    w.close()
    (rec,), _ = read_log(path)
    assert rec.op == OP_DELETE and rec.vectors is None
    assert rec.ids.tolist() == [3, 2**64 - 1]


def test_data_dir_of_a_newer_format_is_refused(tmp_path):
    d = tmp_path / "data"
    datadir.open_data_dir(str(d))
    assert json.loads((d / "MANIFEST.json").read_text())["format_version"] == datadir.FORMAT_VERSION
    datadir.open_data_dir(str(d))  # reopening the same format is fine
    (d / "MANIFEST.json").write_text(json.dumps({"format_version": datadir.FORMAT_VERSION + 1}))
    with pytest.raises(datadir.DataDirError, match="newer than this nestvec"):
        datadir.open_data_dir(str(d))


def test_a_foreign_non_empty_directory_is_refused(tmp_path):
    (tmp_path / "somefile").write_text("not ours")
    with pytest.raises(datadir.DataDirError, match="not a nestvec data directory"):
        datadir.open_data_dir(str(tmp_path))


def test_crash_between_snapshot_rename_and_cleanup(tmp_path):
    """Both snapshots and both logs on disk: the newer pair wins, the older is removed."""
    d = str(tmp_path / "s")
    rng = np.random.default_rng(6)
    shard = DurableShard(CFG, d)
    first = _vecs(rng, 10)
    shard.upsert(np.arange(10, dtype=np.uint64), first)
    shard.snapshot()                                   # snapshot 1 + wal-1
    shard.upsert(np.arange(10, 15, dtype=np.uint64), _vecs(rng, 5))
    shard.wal.close()
    # Recreate the older generation, as if the cleanup after snapshot 1 never ran.
    import shutil
    shutil.copytree(os.path.join(d, "snapshot-00000001"), os.path.join(d, "snapshot-00000000"))
    open(os.path.join(d, "wal-00000000.log"), "wb").close()
    engine, seq, replayed, _ = recover(CFG, d)
    assert (seq, replayed, len(engine)) == (1, 1, 15)
    assert sorted(os.listdir(d)) == ["snapshot-00000001", "wal-00000001.log"]
