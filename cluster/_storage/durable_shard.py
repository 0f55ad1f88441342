"""DurableShard: a ShardEngine whose writes go through a write-ahead log first.

Folder of one shard:

    wal-<seq>.log       writes since snapshot <seq> (seq 0: since the start)
    snapshot-<seq>/     ids.npy, vectors.npy (live rows only), meta.json, and the
                        ANN graph if the collection has one (ann_shard.py)
    snapshot-<seq>.tmp/ a snapshot being written (ignored and removed on recovery)

A write is appended to the log (and fsync'd, under the default policy) before
it touches the engine, so an acknowledged write is on disk. A snapshot is
written under a temporary name, fsync'd, renamed into place, and only then
does a new empty log start and the old log and snapshot go. Recovery loads the
newest complete snapshot and replays its log. No Ray in here.
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
from nestvec.cluster._storage.datadir import fsync_dir
from nestvec.cluster._engine.shard_engine import ShardEngine
from nestvec.cluster._storage.wal import OP_DELETE, OP_UPSERT, WalWriter, read_log

log = logging.getLogger("nestvec.shard")

DEFAULT_SNAPSHOT_BYTES = 256 << 20  # snapshot once the log passes this size
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
        os.makedirs(directory, exist_ok=True)
        t = time.perf_counter()
        self.engine, self.seq, replayed = recover(config, directory, ann)
        self.recovery_seconds = time.perf_counter() - t
        self.wal = WalWriter(self._wal_path(self.seq), fsync, fsync_interval)
        log.info("shard %s recovered %d vectors (snapshot %d + %d log records) in %.2fs",
                 directory, len(self.engine), self.seq, replayed, self.recovery_seconds)

    def upsert(self, ids: np.ndarray, vectors: np.ndarray) -> int:
        self.wal.append(OP_UPSERT, ids, vectors)
        n = self.engine.upsert(ids, vectors)
        if self.ann is not None:  # before a snapshot, so the saved graph matches it
            self.ann.upsert(ids, vectors, self.engine)
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
        if self.wal.bytes >= self.snapshot_bytes:
            self.snapshot()

    def snapshot(self) -> None:
        """Write the live state as snapshot seq+1, then start an empty log for it."""
        new = self.seq + 1
        final = os.path.join(self.dir, f"snapshot-{new:08d}")
        write_snapshot(final, self.engine, self.ann)
        old_wal = self.wal
        self.wal = WalWriter(self._wal_path(new), self.fsync, self.fsync_interval)
        fsync_dir(self.dir)
        old_wal.close()
        old_seq, self.seq = self.seq, new
        _remove(self._wal_path(old_seq))
        shutil.rmtree(os.path.join(self.dir, f"snapshot-{old_seq:08d}"), ignore_errors=True)

    def close(self, snapshot: bool = True) -> None:
        """Clean shutdown: snapshot (so the next start replays nothing) and close the log."""
        if snapshot and self.wal.bytes > 0:
            self.snapshot()
        self.wal.close()

    def _wal_path(self, seq: int) -> str:
        return os.path.join(self.dir, f"wal-{seq:08d}.log")


def write_snapshot(final: str, engine: ShardEngine, ann=None) -> None:
    tmp = final + ".tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    ids, vectors = engine.live_arrays()
    for name, arr in (("ids.npy", ids), ("vectors.npy", vectors)):
        with open(os.path.join(tmp, name), "wb") as f:
            np.save(f, arr)
            f.flush()
            os.fsync(f.fileno())
    if ann is not None:
        ann.save(tmp)
    with open(os.path.join(tmp, "meta.json"), "w") as f:
        json.dump({"rows": int(ids.size), "dim": engine.dim}, f)
        f.flush()
        os.fsync(f.fileno())
    fsync_dir(tmp)
    os.replace(tmp, final)
    fsync_dir(os.path.dirname(final))


def recover(config: CollectionConfig, directory: str, ann=None) -> tuple[ShardEngine, int, int]:
    """(engine, snapshot seq, log records replayed) from the newest complete snapshot + its log.

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
        if ids.size:
            engine.upsert(ids, vectors)
        if ann is not None:
            ann.load_problem = ann.load(snap, int(ids.size))
    elif ann is not None:
        ann.load_problem = "no snapshot yet"
    replayed = 0
    wal = os.path.join(directory, f"wal-{seq:08d}.log")
    if os.path.exists(wal):
        records, torn = read_log(wal)
        _replay(engine, records, ann)
        replayed = len(records)
        if torn:
            log.warning("%s: dropped a torn last record (%d bytes) left by a crash", wal, torn)
            _truncate(wal, os.path.getsize(wal) - torn)
    for m in map(_WAL.match, names):  # logs older than the snapshot are fully inside it
        if m and int(m.group(1)) < seq:
            _remove(os.path.join(directory, m.group(0)))
    for old in snaps[:-1]:  # a crash between renaming a snapshot in and removing its predecessor
        shutil.rmtree(os.path.join(directory, f"snapshot-{old:08d}"), ignore_errors=True)
    return engine, seq, replayed


def _replay(engine: ShardEngine, records: list, ann=None) -> None:
    """Apply records in order, merging runs of the same op into one engine call.

    A merged run means the same as its records one by one: within an upsert
    batch the last occurrence of an id wins, and deletes commute with deletes.
    """
    i = 0
    while i < len(records):
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
