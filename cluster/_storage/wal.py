"""Write-ahead log: length-prefixed, checksummed records of upsert/delete batches.

Record layout (little-endian):

    header  16 bytes: magic u32 | payload length u32 | crc32(payload) u32 | crc32(first 12 bytes) u32
    payload op u8 | rows u64 | dim u32 | ids (rows x u64) | vectors (rows x dim x f32, upserts only)
            | payload columns (ops 3 and 4: the rest of the record, payload.encode_columns)

Ops: 1 upsert, 2 delete, 3 upsert with payloads, 4 set payload (ids + columns).

Reading tells a torn tail from corruption. A crash mid-append leaves a prefix
of the last record: a header cut short, a payload cut short, or (on file
systems that allocate blocks before their data lands) a last record whose
final blocks read as zeros. Those are dropped. Any other bad record is
corruption and raises `WalCorruption` naming file and offset: a complete last
record that fails its checksum was acknowledged (its bytes all reached the
file), so dropping it would silently lose a write; `nestvec repair-wal` cuts
it off deliberately and keeps a copy.

Writing: an append is acknowledged only when the whole record is in the file
(and fsync'd, under the default policy). A failed write or fsync rolls the
file back to the end of the last good record and puts the writer in a failed
state: appends are refused with `WalWriteError` (UNAVAILABLE) until one
succeeds, each append first retrying the rollback and the fsync.

Pure Python and numpy; no Ray.
"""
from __future__ import annotations

import errno
import os
import struct
import threading
import zlib
from dataclasses import dataclass
import logging

import numpy as np

from nestvec.cluster._storage import failpoints
from nestvec.errors import Unavailable

log = logging.getLogger("nestvec.shard")

MAGIC = 0x4E565731  # "NVW1"
_HEADER = struct.Struct("<IIII")
_PAYLOAD_HEAD = struct.Struct("<BQI")
OP_UPSERT, OP_DELETE, OP_UPSERT_PAYLOAD, OP_SET_PAYLOAD = 1, 2, 3, 4
_WITH_VECTORS = (OP_UPSERT, OP_UPSERT_PAYLOAD)
_OPS = (OP_UPSERT, OP_DELETE, OP_UPSERT_PAYLOAD, OP_SET_PAYLOAD)
FSYNC_POLICIES = ("always", "batch", "none")


_PAGE = 4096  # a file system block: what a crash can leave allocated but unwritten


class WalCorruption(Exception):
    """A complete record fails its checksum: the log was damaged after it was written."""

    def __init__(self, path: str, offset: int, why: str):
        super().__init__(f"write-ahead log {path} is corrupt at byte offset {offset}: {why}. "
                         "The shard refuses to start rather than drop acknowledged writes. Restore "
                         "the shard folder from a backup, or accept the loss of this record and "
                         f"everything after it with `nestvec repair-wal {path}` (it keeps a copy "
                         "of the bytes it cuts).")
        self.path, self.offset, self.why = path, offset, why

    def __reduce__(self):  # Ray ships a shard's start error to the caller by pickling it
        return WalCorruption, (self.path, self.offset, self.why)


class WalWriteError(Unavailable):
    """The log could not take a record (disk full, file too large, I/O error): not acknowledged."""


@dataclass
class WalRecord:
    op: int
    ids: np.ndarray
    vectors: np.ndarray | None  # [rows, dim] float32 for upserts
    columns: memoryview | None = None  # encoded payload columns (ops 3 and 4)


def encode_record(op: int, ids: np.ndarray, vectors: np.ndarray | None = None,
                  columns: bytes = b"") -> bytes:
    ids = np.ascontiguousarray(ids, dtype="<u8")
    dim = 0 if vectors is None else vectors.shape[1]
    parts = [_PAYLOAD_HEAD.pack(op, ids.size, dim), ids.tobytes()]
    if vectors is not None:
        parts.append(np.ascontiguousarray(vectors, dtype="<f4").tobytes())
    parts.append(columns)
    payload = b"".join(parts)
    head = struct.pack("<III", MAGIC, len(payload), zlib.crc32(payload))
    return head + struct.pack("<I", zlib.crc32(head)) + payload


def _decode_payload(payload) -> WalRecord:
    """Read-only views into the log's bytes (the engine copies what it keeps)."""
    op, rows, dim = _PAYLOAD_HEAD.unpack_from(payload)
    at = _PAYLOAD_HEAD.size
    ids = np.frombuffer(payload, dtype="<u8", count=rows, offset=at)
    vectors, at = None, at + 8 * rows
    if op in _WITH_VECTORS:
        vectors = np.frombuffer(payload, dtype="<f4", count=rows * dim, offset=at).reshape(rows, dim)
        at += 4 * rows * dim
    columns = payload[at:] if op in (OP_UPSERT_PAYLOAD, OP_SET_PAYLOAD) else None
    return WalRecord(op, ids, vectors, columns)


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
            if body + length < end or not _unwritten_tail(data, off):
                raise WalCorruption(path, off, "a complete record fails its checksum")
            break  # its last blocks never landed: a crash during the append
        if data[body] not in _OPS:  # a checksummed record this code cannot read
            raise WalCorruption(path, off, f"unknown record op {data[body]} (written by a newer nestvec?)")
        records.append(_decode_payload(data[body: body + length]))
        off = body + length
    return records, end - off


def _unwritten_tail(data: memoryview, off: int) -> bool:
    """Does the record at `off` (the file's last) end in blocks that read as zeros,
    from a block boundary inside it to EOF? That is what a crash leaves where the
    file's size was extended before its data was written; a flipped bit is not."""
    end = len(data)
    cut = max(off, (end - 1) // _PAGE * _PAGE)
    return not np.frombuffer(data[cut:], np.uint8).any()


class WalWriter:
    """Appends records; `append` returns once the record is as durable as the policy says.

    always: fsync before returning (no acknowledged write is lost on a crash).
    batch:  fsync at most every `interval` seconds (a crash may lose the last
            interval's acknowledged writes; a background thread bounds the window).
    none:   leave it to the OS (tests and benchmarks of the engine only).

    Offsets: `bytes` ends the last complete record; `synced` ends what an fsync
    made durable. Records between them (batch policy) are kept in memory until
    synced, so a failed fsync can rewrite them: after an fsync error Linux may
    drop the dirty pages and report the next fsync clean, so the only safe
    retry writes the bytes again.
    """

    def __init__(self, path: str, fsync: str = "always", interval: float = 0.05, fresh: bool = False):
        """fresh: a new, empty log (a snapshot's): created or emptied, then fsync'd with its folder."""
        if fsync not in FSYNC_POLICIES:
            raise ValueError(f"fsync policy {fsync!r}: use one of {FSYNC_POLICIES}")
        self.path, self.policy, self.interval = path, fsync, interval
        existed = os.path.exists(path)
        failpoints.hit("wal.create")
        self._fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND | (os.O_TRUNC if fresh else 0), 0o644)
        try:
            if fresh or not existed:  # the file and its name must both survive a crash
                os.fsync(self._fd)
                _fsync_dir(os.path.dirname(path) or ".")
        except OSError:
            os.close(self._fd)
            raise
        self.bytes = self.synced = os.fstat(self._fd).st_size
        self._unsynced: list[bytes] = []  # records past `synced` (batch policy)
        self.failure: str | None = None   # why appends are refused; None: taking writes
        self.failures = 0                 # write or fsync errors since opened
        self.closed = False
        self._lock = threading.Lock()
        self._stop = threading.Event()
        if fsync == "batch":
            threading.Thread(target=self._flusher, daemon=True, name="wal-fsync").start()

    def append(self, op: int, ids: np.ndarray, vectors: np.ndarray | None = None,
               columns: bytes = b"") -> None:
        rec = encode_record(op, ids, vectors, columns)
        with self._lock:
            if self.failure is not None:
                self._resume_locked()  # raises WalWriteError while the disk still fails
            try:
                failpoints.hit("wal.write")
                _write_all(self._fd, rec)
            except OSError as err:
                self._fail_locked("write", err)  # cuts the partial record off
            self.bytes += len(rec)
            if self.policy == "always":
                try:
                    failpoints.hit("wal.fsync")
                    os.fsync(self._fd)
                except OSError as err:
                    self.bytes -= len(rec)  # not acknowledged: cut it off too
                    self._fail_locked("fsync", err)
                self.synced = self.bytes
            elif self.policy == "batch":
                self._unsynced.append(rec)
            else:
                self.synced = self.bytes

    def sync(self) -> None:
        """fsync what was appended; a failure puts the writer in its failed state (and raises)."""
        with self._lock:
            self._sync_locked()

    def _sync_locked(self) -> None:
        if self.closed or self.failure is not None or not self._unsynced:
            return
        try:
            failpoints.hit("wal.fsync")
            os.fsync(self._fd)
        except OSError as err:
            self._fail_locked("fsync", err)
        self.synced, self._unsynced = self.bytes, []

    def _fail_locked(self, step: str, err: OSError) -> None:
        """Roll the file back to the last good record, refuse appends, raise WalWriteError."""
        self.failures += 1
        self.failure = f"{step} failed: {err}"
        try:
            os.ftruncate(self._fd, self.bytes)
        except OSError:
            pass  # the next append retries the rollback before anything else
        log.error("write-ahead log %s: %s; the shard refuses writes until one succeeds "
                  "(reads are served)", self.path, self.failure)
        raise WalWriteError(self._refusal()) from err

    def _resume_locked(self) -> None:
        """Undo what the failure may have left and make the unsynced records durable again."""
        try:
            os.ftruncate(self._fd, self.synced)
            if self._unsynced:
                _write_all(self._fd, b"".join(self._unsynced))
            if self.policy != "none":
                failpoints.hit("wal.fsync")
                os.fsync(self._fd)
        except OSError as err:
            self.failures += 1
            self.failure = f"retry failed: {err}"
            raise WalWriteError(self._refusal()) from err
        self.bytes = self.synced = self.synced + sum(map(len, self._unsynced))
        self._unsynced = []
        log.warning("write-ahead log %s takes writes again (after %s)", self.path, self.failure)
        self.failure = None

    def _refusal(self) -> str:
        return (f"this shard cannot write its log {self.path} ({self.failure}): the write was not "
                "applied; writes are refused until one succeeds (free disk space, then retry); "
                "reads are served")

    def _flusher(self) -> None:
        while not self._stop.wait(self.interval):
            try:
                self.sync()
            except WalWriteError:
                pass  # logged; appends are refused until a retry succeeds

    def close(self) -> None:
        """fsync and close; an fsync error is logged (a clean close must not mask why it failed)."""
        self._stop.set()
        with self._lock:
            if self.closed:
                return
            try:
                self._sync_locked()
            except WalWriteError:
                pass
            self.closed = True
            os.close(self._fd)


def _write_all(fd: int, data: bytes) -> None:
    """Write every byte: a write may land only part (a file-size limit reached mid-record)."""
    view, done = memoryview(data), 0
    while done < len(view):
        n = os.write(fd, view[done:])
        if n <= 0:
            raise OSError(errno.ENOSPC, "write wrote nothing")
        done += n


def _fsync_dir(path: str) -> None:
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


@dataclass
class Repair:
    path: str
    records_kept: int
    offset: int | None      # where the log was cut (None: nothing was wrong)
    bytes_cut: int
    copy: str | None        # the cut bytes, kept beside the log

    def line(self) -> str:
        if self.offset is None:
            return f"{self.path}: no corruption found ({self.records_kept} records); nothing cut"
        return (f"{self.path}: cut at byte offset {self.offset}: kept {self.records_kept} records, "
                f"cut {self.bytes_cut} bytes (the record that failed its checksum and everything "
                f"after it), kept a copy in {self.copy}")


def repair_log(path: str) -> Repair:
    """Cut a corrupt log at its first bad record, copying the cut bytes to
    `<log>.cut-<offset>` first (fsync'd): the operator's deliberate choice to
    lose that record and what follows it, with the evidence kept."""
    try:
        records, _ = read_log(path)
        return Repair(path, len(records), None, 0, None)
    except WalCorruption as err:
        offset = err.offset
    with open(path, "rb") as f:
        f.seek(offset)
        cut = f.read()
    kept, _ = read_log_prefix(path, offset)
    copy = f"{path}.cut-{offset}"
    with open(copy, "wb") as f:
        f.write(cut)
        f.flush()
        os.fsync(f.fileno())
    _fsync_dir(os.path.dirname(path) or ".")
    with open(path, "r+b") as f:
        f.truncate(offset)
        os.fsync(f.fileno())
    return Repair(path, kept, offset, len(cut), copy)


def read_log_prefix(path: str, end: int) -> tuple[int, int]:
    """(complete records, bytes) in the first `end` bytes of a log: what a cut there keeps."""
    with open(path, "rb") as f:
        data = memoryview(f.read(end))
    count, off = 0, 0
    while off + _HEADER.size <= len(data):
        _, length, _, _ = _HEADER.unpack_from(data, off)
        off += _HEADER.size + length
        count += 1
    return count, off
