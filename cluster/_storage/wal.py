"""Write-ahead log: length-prefixed, checksummed records of upsert/delete batches.

Record layout (little-endian):

    header  16 bytes: magic u32 | payload length u32 | crc32(payload) u32 | crc32(first 12 bytes) u32
    payload op u8 | rows u64 | dim u32 | ids (rows x u64) | vectors (rows x dim x f32, upserts only)

Reading tells a torn tail from corruption. A crash mid-append leaves a prefix
of the last record: a header cut short, a payload cut short, or (on file
systems that zero-fill) a last record whose bytes end at EOF but fail their
checksum. Those are dropped. Any other bad record (a bad checksum with more
data after it) is corruption and raises `WalCorruption` naming file and offset:
guessing past it would silently lose or invent writes.

Pure Python and numpy; no Ray.
"""
from __future__ import annotations

import os
import struct
import threading
import zlib
from dataclasses import dataclass
import numpy as np

MAGIC = 0x4E565731  # "NVW1"
_HEADER = struct.Struct("<IIII")
_PAYLOAD_HEAD = struct.Struct("<BQI")
OP_UPSERT, OP_DELETE = 1, 2
FSYNC_POLICIES = ("always", "batch", "none")


class WalCorruption(Exception):
    """A record in the middle of a log fails its checksum."""

    def __init__(self, path: str, offset: int, why: str):
        super().__init__(f"write-ahead log {path} is corrupt at byte offset {offset}: {why}. "
                         "Records after it cannot be trusted; restore the shard from a replica "
                         "or backup, or truncate the log at this offset to accept the loss.")
        self.path, self.offset = path, offset


@dataclass
class WalRecord:
    op: int
    ids: np.ndarray
    vectors: np.ndarray | None  # [rows, dim] float32 for upserts


def encode_record(op: int, ids: np.ndarray, vectors: np.ndarray | None = None) -> bytes:
    ids = np.ascontiguousarray(ids, dtype="<u8")
    dim = 0 if vectors is None else vectors.shape[1]
    parts = [_PAYLOAD_HEAD.pack(op, ids.size, dim), ids.tobytes()]
    if vectors is not None:
        parts.append(np.ascontiguousarray(vectors, dtype="<f4").tobytes())
    payload = b"".join(parts)
    head = struct.pack("<III", MAGIC, len(payload), zlib.crc32(payload))
    return head + struct.pack("<I", zlib.crc32(head)) + payload


def _decode_payload(payload) -> WalRecord:
    """Read-only views into the log's bytes (the engine copies what it keeps)."""
    op, rows, dim = _PAYLOAD_HEAD.unpack_from(payload)
    at = _PAYLOAD_HEAD.size
    ids = np.frombuffer(payload, dtype="<u8", count=rows, offset=at)
    vectors = None
    if op == OP_UPSERT:
        vectors = np.frombuffer(payload, dtype="<f4", count=rows * dim,
                                offset=at + 8 * rows).reshape(rows, dim)
    return WalRecord(op, ids, vectors)


def read_log(path: str) -> tuple[list[WalRecord], int]:
    """(every complete record in order, bytes dropped as a torn tail); see module doc."""
    with open(path, "rb") as f:
        data = memoryview(f.read())  # slices of a memoryview are views, not copies
    records: list[WalRecord] = []
    end, off = len(data), 0
    while off < end:
        if end - off < _HEADER.size:
            break  # a header cut short: the last append never completed
        magic, length, crc, head_crc = _HEADER.unpack_from(data, off)
        if magic != MAGIC or zlib.crc32(data[off: off + 12]) != head_crc:
            if np.frombuffer(data[off:], np.uint8).any():  # not a zero-filled tail: real damage
                raise WalCorruption(path, off, "record header fails its checksum")
            break
        body = off + _HEADER.size
        if body + length > end:
            break  # the payload was cut short by a crash
        if zlib.crc32(data[body: body + length]) != crc:
            if np.frombuffer(data[body + length:], np.uint8).any():  # more records follow: not a torn tail
                raise WalCorruption(path, off, "record payload fails its checksum")
            break
        records.append(_decode_payload(data[body: body + length]))
        off = body + length
    return records, end - off


class WalWriter:
    """Appends records; `append` returns once the record is as durable as the policy says.

    always: fsync before returning (no acknowledged write is lost on a crash).
    batch:  fsync at most every `interval` seconds (a crash may lose the last
            interval's acknowledged writes; a background thread bounds the window).
    none:   leave it to the OS (tests and benchmarks of the engine only).
    """

    def __init__(self, path: str, fsync: str = "always", interval: float = 0.05):
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync policy {fsync!r}: use one of {FSYNC_POLICIES}")
        self.path, self.policy, self.interval = path, fsync, interval
        self._f = open(path, "ab", buffering=0)
        self.bytes = self._f.tell()
        self._dirty = False
        self._lock = threading.Lock()
        self._closed = threading.Event()
        if fsync == "batch":
            threading.Thread(target=self._flusher, daemon=True, name="wal-fsync").start()

    def append(self, op: int, ids: np.ndarray, vectors: np.ndarray | None = None) -> None:
        rec = encode_record(op, ids, vectors)
        with self._lock:
            self._f.write(rec)
            self.bytes += len(rec)
            self._dirty = True
            if self.policy == "always":
                self._sync_locked()

    def sync(self) -> None:
        with self._lock:
            self._sync_locked()

    def _sync_locked(self) -> None:
        if self._dirty and not self._f.closed:
            os.fsync(self._f.fileno())
            self._dirty = False

    def _flusher(self) -> None:
        while not self._closed.wait(self.interval):
            self.sync()

    def close(self) -> None:
        self._closed.set()
        with self._lock:
            if not self._f.closed:
                self._sync_locked()
                self._f.close()

