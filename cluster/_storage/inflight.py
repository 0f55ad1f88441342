"""Which searches a shard was running when its process died: a small flight recorder.

A search that exhausts a shard's memory kills the process; Ray restarts it and
the coordinator, seeing only "actor died", would send the same search again and
kill the new process too. Ray's errors cannot say whether the search was running
when the process died (a call sent to an already-dead process reads the same),
so the shard keeps the record itself: each search's fingerprint sits in a slot
of a small memory-mapped file in the shard's folder while it runs. The file
outlives the process (the page cache keeps it; no fsync: a machine crash is not
a search's doing), so the next incarnation reads what was running at the death
and refuses those searches once, which is the coordinator's resend.

No Ray, no gRPC; one mmap write per search start and end.
"""
from __future__ import annotations

import hashlib
import mmap
import os
import threading

import numpy as np

SLOTS = 64           # searches running at once (socket threads + Ray's); more go unrecorded
_SLOT = 16           # a blake2b-128 digest
FILE = "inflight"
_SAMPLE_BYTES = 64 << 10  # hash at most about this much of an array (a batch of queries)


def fingerprint(*parts) -> bytes:
    """A digest of a search's arguments (arrays by their bytes, the rest by repr)."""
    h = hashlib.blake2b(digest_size=_SLOT)
    for p in parts:
        if isinstance(p, np.ndarray):
            h.update(str((p.dtype.str, p.shape)).encode())
            if p.nbytes > _SAMPLE_BYTES and p.ndim:  # a big batch: every n-th row is enough
                p = p[:: -(-p.nbytes // _SAMPLE_BYTES)]
            h.update(np.ascontiguousarray(p).data)
        elif isinstance(p, (tuple, list)):
            h.update(fingerprint(*p))
        else:
            h.update(repr(p).encode())
    return h.digest()


class FlightRecorder:
    def __init__(self, directory: str):
        path = os.path.join(directory, FILE)
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            os.ftruncate(fd, SLOTS * _SLOT)
            self._map = mmap.mmap(fd, SLOTS * _SLOT)
        finally:
            os.close(fd)
        empty = bytes(_SLOT)
        # What the previous process was running when it died (a clean stop leaves none).
        self.died_running = {bytes(self._map[i * _SLOT:(i + 1) * _SLOT]) for i in range(SLOTS)} - {empty}
        self._map[:] = bytes(SLOTS * _SLOT)
        self._free = list(range(SLOTS))
        self._lock = threading.Lock()

    def was_running_at_death(self, fp: bytes) -> bool:
        """True once for each search the previous process died running (its resend)."""
        with self._lock:
            if fp in self.died_running:
                self.died_running.discard(fp)
                return True
        return False

    def begin(self, fp: bytes) -> int:
        with self._lock:
            if not self._free:
                return -1
            slot = self._free.pop()
        self._map[slot * _SLOT:(slot + 1) * _SLOT] = fp
        return slot

    def end(self, slot: int) -> None:
        if slot < 0:
            return
        self._map[slot * _SLOT:(slot + 1) * _SLOT] = bytes(_SLOT)
        with self._lock:
            self._free.append(slot)
