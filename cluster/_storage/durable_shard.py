"""DurableShard: a ShardEngine whose writes go through a write-ahead log first.

Folder of one shard:

    wal-<seq>.log       writes since snapshot <seq> (seq 0: since the start)
    snapshot-<seq>/     ids.npy, vectors.npy (live rows only), payload.bin (their
                        payload columns, if any), meta.json, and the ANN graph if
                        the collection has one (ann_shard.py)
    snapshot-<seq>.tmp/ a snapshot being written (ignored and removed on recovery)

A write is appended to the log (and fsync'd, under the default policy) before
it touches the engine, so an acknowledged write is on disk; a write the log
could not take is refused (wal.py) and the engine is not touched.

A snapshot, step by step (each a failpoint, failpoints.py):

    snapshot.write      the live state into snapshot-<new>.tmp/, each file fsync'd
    snapshot.open_log   a new empty wal-<new>.log, fsync'd with the folder
    snapshot.rename     snapshot-<new>.tmp -> snapshot-<new>: now current
    snapshot.fsync_dir  make the rename durable
    snapshot.cleanup    only then the old log and snapshot go

Writes switch to the new log only after the rename. A failure before it undoes
the attempt (the writes keep going to the old log, which stays current); a
failure after it keeps the new state but also the old files. Recovery loads the
newest snapshot and replays, in order, every log from that snapshot's number
on: a log newer than the newest snapshot (a rename that did not survive a
crash) only holds writes made after its predecessor ended, so nothing is ever
dropped for being "older than the snapshot" while it is still needed. A failed
snapshot never fails the write that triggered it (that write is in the log);
it is retried once the log has grown by another quarter of the threshold.
No Ray in here.
"""
from __future__ import annotations

import json
import logging
import os
import re
import shutil
import time

import numpy as np

from nestvec.cluster._engine.collection import CollectionConfig
from nestvec.cluster._storage import failpoints
from nestvec.cluster._storage.datadir import fsync_dir, makedirs_durable
from nestvec.cluster._engine.shard_engine import ShardEngine
from nestvec.cluster._engine.payload import decode_columns, encode_columns
from nestvec.cluster._storage.wal import (OP_DELETE, OP_SET_PAYLOAD, OP_UPSERT, OP_UPSERT_PAYLOAD,
                                          WalWriter, read_log)

log = logging.getLogger("nestvec.shard")

DEFAULT_SNAPSHOT_BYTES = 256 << 20  # snapshot once the log passes this size
PAYLOAD_FILE = "payload.bin"
_SNAP = re.compile(r"^snapshot-(\d{8})$")
_WAL = re.compile(r"^wal-(\d{8})\.log$")


class DurableShard:
    def __init__(self, config: CollectionConfig, directory: str, fsync: str = "always",
                 fsync_interval: float = 0.05, snapshot_bytes: int = DEFAULT_SNAPSHOT_BYTES,
                 ann=None):
        self.config = config
        self.ann = ann  # a ShardAnn: follows every write, saved with every snapshot
        self.dir = directory
        self.fsync, self.fsync_interval = fsync, fsync_interval
        self.snapshot_bytes = snapshot_bytes
        makedirs_durable(directory)
        t = time.perf_counter()
        self.engine, self.seq, replayed, self.log_seq = recover(config, directory, ann)
        self.recovery_seconds = time.perf_counter() - t
        self.wal = WalWriter(self._wal_path(self.log_seq), fsync, fsync_interval)
        self.snapshot_failure: str | None = None  # the last snapshot attempt's error, if it failed
        self._snapshot_at = snapshot_bytes         # log size that triggers the next attempt
        log.info("shard %s recovered %d vectors (snapshot %d + %d log records) in %.2fs",
                 directory, len(self.engine), self.seq, replayed, self.recovery_seconds)

    def upsert(self, ids: np.ndarray, vectors: np.ndarray, payload: dict | None = None) -> int:
        if payload:
            self.wal.append(OP_UPSERT_PAYLOAD, ids, vectors, encode_columns(payload, ids.size))
        else:
            self.wal.append(OP_UPSERT, ids, vectors)
        n = self.engine.upsert(ids, vectors, payload)
        if self.ann is not None:  # before a snapshot, so the saved graph matches it
            self.ann.upsert(ids, vectors, self.engine)
        self._maybe_snapshot()
        return n

    def set_payload(self, ids: np.ndarray, payload: dict) -> int:
        self.wal.append(OP_SET_PAYLOAD, ids, None, encode_columns(payload, ids.size))
        n = self.engine.set_payload(ids, payload)
        self._maybe_snapshot()
        return n

    def delete(self, ids: np.ndarray) -> int:
        self.wal.append(OP_DELETE, ids)
        n = self.engine.delete(ids)
        if self.ann is not None:
            self.ann.delete(ids, self.engine)
        self._maybe_snapshot()
        return n

    def _maybe_snapshot(self) -> None:
        if self.wal.bytes < self._snapshot_at:
            return
        try:
            self.snapshot()
        except OSError as err:  # the write that got here is in the log: it stands
            self._snapshot_at = self.wal.bytes + max(1, self.snapshot_bytes // 4)
            log.error("shard %s: snapshot failed (%s); writes continue in the log, next try "
                      "at %d log bytes", self.dir, self.snapshot_failure, self._snapshot_at)

    def snapshot(self) -> None:
        """Write the live state as the next snapshot and switch to an empty log for it
        (the steps and what a failure at each leaves: the module doc)."""
        new = self.log_seq + 1
        final = os.path.join(self.dir, f"snapshot-{new:08d}")
        tmp = final + ".tmp"
        try:
            self._snapshot_steps(new, final, tmp)
        except OSError as err:
            self.snapshot_failure = f"{err}"
            raise
        self.snapshot_failure = None
        self._snapshot_at = self.snapshot_bytes

    def _snapshot_steps(self, new: int, final: str, tmp: str) -> None:
        try:
            failpoints.hit("snapshot.write")
            write_snapshot(tmp, self.engine, self.ann)
            failpoints.hit("snapshot.open_log")
            new_wal = WalWriter(self._wal_path(new), self.fsync, self.fsync_interval, fresh=True)
        except OSError:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        try:
            failpoints.hit("snapshot.rename")
            os.replace(tmp, final)
        except OSError:  # the old snapshot and log stay current: undo the rest
            new_wal.close()
            _remove(new_wal.path)
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        # From here the new snapshot is current (or, if the rename is lost in a crash,
        # the old one plus both logs, replayed in order: the same state).
        old_wal, old_seq, old_log_seq = self.wal, self.seq, self.log_seq
        self.wal, self.seq, self.log_seq = new_wal, new, new
        old_wal.close()
        failpoints.hit("snapshot.fsync_dir")
        fsync_dir(self.dir)  # on failure the old files stay: a crash may still need them
        try:
            failpoints.hit("snapshot.cleanup")
            for seq in range(old_seq, old_log_seq + 1):
                _remove(self._wal_path(seq))
            shutil.rmtree(os.path.join(self.dir, f"snapshot-{old_seq:08d}"), ignore_errors=True)
        except OSError as err:  # left for the next recovery to remove
            log.warning("shard %s: old log or snapshot not removed (%s)", self.dir, err)

    def health(self) -> dict:
        """What status and metrics show: whether the shard takes writes, and why not."""
        return {"write_error": self.wal.failure or "", "write_errors": self.wal.failures,
                "snapshot_error": self.snapshot_failure or ""}

    def close(self, snapshot: bool = True) -> None:
        """Clean shutdown: snapshot (so the next start replays nothing) and close the log.
        A snapshot that fails leaves the log to replay; the shutdown goes on."""
        if snapshot and self.wal.bytes > 0 and self.wal.failure is None:
            try:
                self.snapshot()
            except OSError as err:
                log.error("shard %s: snapshot at shutdown failed (%s); the next start replays "
                          "the log", self.dir, err)
        self.wal.close()

    def _wal_path(self, seq: int) -> str:
        return os.path.join(self.dir, f"wal-{seq:08d}.log")


def write_snapshot(tmp: str, engine: ShardEngine, ann=None) -> None:
    """The live state into folder `tmp`, every file and the folder fsync'd (not yet current)."""
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    ids, vectors = engine.live_arrays()
    for name, arr in (("ids.npy", ids), ("vectors.npy", vectors)):
        with open(os.path.join(tmp, name), "wb") as f:
            np.save(f, arr)
            f.flush()
            os.fsync(f.fileno())
    if engine.payload.fields and ids.size:
        with open(os.path.join(tmp, PAYLOAD_FILE), "wb") as f:
            f.write(encode_columns(engine.read_payload(ids), int(ids.size)))
            f.flush()
            os.fsync(f.fileno())
    if ann is not None:
        ann.save(tmp)
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump({"rows": int(ids.size), "dim": engine.dim}, f)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(tmp)


def recover(config: CollectionConfig, directory: str, ann=None) -> tuple[ShardEngine, int, int, int]:
    """(engine, snapshot seq, log records replayed, seq of the log to go on writing) from
    the newest complete snapshot and every log from its number on.

    With `ann` (a ShardAnn), the snapshot's saved graph is loaded and the log
    replayed into it too; `ann.load_problem` says why a graph could not be used.
    """
    names = os.listdir(directory)
    for name in names:
        if name.endswith(".tmp"):  # a snapshot cut short by a crash
            shutil.rmtree(os.path.join(directory, name), ignore_errors=True)
    snaps = sorted(int(m.group(1)) for m in map(_SNAP.match, names) if m)
    seq = snaps[-1] if snaps else 0
    engine = ShardEngine(config)
    if snaps:
        snap = os.path.join(directory, f"snapshot-{seq:08d}")
        ids = np.load(os.path.join(snap, "ids.npy"))
        vectors = np.load(os.path.join(snap, "vectors.npy"))
        engine = ShardEngine(config, initial_capacity=max(1024, ids.size))
        payload = None
        if os.path.exists(os.path.join(snap, PAYLOAD_FILE)):
            with open(os.path.join(snap, PAYLOAD_FILE), "rb") as f:
                payload = decode_columns(f.read())[0]
        if ids.size:
            engine.upsert(ids, vectors, payload)
        if ann is not None:
            ann.load_problem = ann.load(snap, int(ids.size))
    elif ann is not None:
        ann.load_problem = "no snapshot yet"
    replayed, log_seq = 0, seq
    logs = sorted(int(m.group(1)) for m in map(_WAL.match, names) if m and int(m.group(1)) >= seq)
    for n in logs:
        wal = os.path.join(directory, f"wal-{n:08d}.log")
        records, torn = read_log(wal)  # WalCorruption: refuse to start (names file and offset)
        _replay(engine, records, ann)
        replayed += len(records)
        log_seq = n
        if torn:
            log.warning("%s: dropped a torn last record (%d bytes) left by a crash", wal, torn)
            _truncate(wal, os.path.getsize(wal) - torn)
    for m in map(_WAL.match, names):  # logs older than the snapshot are fully inside it
        if m and int(m.group(1)) < seq:
            _remove(os.path.join(directory, m.group(0)))
    for old in snaps[:-1]:  # a crash between renaming a snapshot in and removing its predecessor
        shutil.rmtree(os.path.join(directory, f"snapshot-{old:08d}"), ignore_errors=True)
    return engine, seq, replayed, log_seq


def _replay(engine: ShardEngine, records: list, ann=None) -> None:
    """Apply records in order, merging runs of the same op into one engine call.

    A merged run means the same as its records one by one: within an upsert
    batch the last occurrence of an id wins, and deletes commute with deletes.
    Records carrying payloads are applied one at a time.
    """
    i = 0
    while i < len(records):
        r = records[i]
        if r.op in (OP_UPSERT_PAYLOAD, OP_SET_PAYLOAD):
            columns = decode_columns(r.columns)[0]
            if r.op == OP_SET_PAYLOAD:
                engine.set_payload(r.ids, columns)
            else:
                engine.upsert(r.ids, r.vectors, columns)
                if ann is not None:
                    ann.upsert(r.ids, r.vectors, engine)
            i += 1
            continue
        j = i
        while j < len(records) and records[j].op == records[i].op:
            j += 1
        ids = np.concatenate([r.ids for r in records[i:j]])
        if records[i].op == OP_UPSERT:
            vectors = np.concatenate([r.vectors for r in records[i:j]])
            engine.upsert(ids, vectors)
            if ann is not None:
                ann.upsert(ids, vectors, engine)
        else:
            engine.delete(ids)
            if ann is not None:
                ann.delete(ids, engine)
        i = j


def _truncate(path: str, size: int) -> None:
    """Cut a torn tail off so new records are not appended after garbage."""
    with open(path, "r+b") as f:
        f.truncate(size)
        os.fsync(f.fileno())


def _remove(path: str) -> None:
    try:
        os.remove(path)
    except FileNotFoundError:
        pass
