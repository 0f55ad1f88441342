"""SharedLock: many readers at once, or one writer; a waiting writer goes first.

Why a shard needs it: graph searches over the 8-bit index only read, and on a
2-core node one search at a time leaves a core idle between batches (the batch
returns, its callers resubmit) and makes a batch's OpenMP threads wait on each
other whenever anything else runs. Letting searches overlap keeps the cores busy;
writes still run alone, so a search never sees half a write.

Writers are preferred: once a writer waits, new readers queue behind it, so a
steady stream of searches cannot starve an upsert.
"""
from __future__ import annotations

import threading
from contextlib import contextmanager


class SharedLock:
    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._writers_waiting = 0

    @property
    def readers(self) -> int:
        """Readers inside now (a hint: it may change at once)."""
        return self._readers

    @contextmanager
    def shared(self):
        """Hold the lock with other readers; yields how many readers were inside
        on entry, this one included (1: it runs alone)."""
        with self._cond:
            while self._writer or self._writers_waiting:
                self._cond.wait()
            self._readers += 1
            inside = self._readers
        try:
            yield inside
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def exclusive(self):
        """Hold the lock alone (no reader, no other writer)."""
        with self._cond:
            self._writers_waiting += 1
            try:
                while self._writer or self._readers:
                    self._cond.wait()
            finally:
                self._writers_waiting -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()
