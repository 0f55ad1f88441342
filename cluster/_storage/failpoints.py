"""Failpoints: named places in the storage code where a test can make a real call fail.

Disk errors (a full disk, EIO, EMFILE) are rare and hard to cause at one exact
step, so the log and snapshot code call `hit(name)` just before the real
operation at each step; an armed failpoint raises the OSError a failing disk
would. Nothing is stubbed: the files stay real, and what happens after the
error (rollback, refusal, recovery) is the production code's own. Unarmed,
`hit` is one dict lookup.

Armed in-process with `arm()`, or for a whole server (its Ray workers inherit
the environment) with

    NESTVEC_FAILPOINTS="wal.write=ENOSPC*3@2,snapshot.rename=EIO"

meaning: the first 2 hits of wal.write pass, the next 3 fail with ENOSPC, later
ones pass; every snapshot.rename fails with EIO. For tests and drills only
(docs/durability.md lists the names).
"""
from __future__ import annotations

import errno
import os
import threading

ENV = "NESTVEC_FAILPOINTS"
NAMES = ("wal.write", "wal.fsync", "wal.create", "snapshot.write", "snapshot.open_log",
         "snapshot.rename", "snapshot.fsync_dir", "snapshot.cleanup")

_lock = threading.Lock()
_armed: dict[str, list[int]] = {}  # name -> [errno, failures left (-1: forever), passes left]


def arm(name: str, err: int = errno.EIO, times: int = -1, after: int = 0) -> None:
    """Make `hit(name)` raise OSError(err) `times` times (-1: until disarmed), after `after` passes."""
    if name not in NAMES:
        raise ValueError(f"unknown failpoint {name!r}: one of {NAMES}")
    with _lock:
        _armed[name] = [err, times, after]


def disarm(name: str | None = None) -> None:
    with _lock:
        if name is None:
            _armed.clear()
        else:
            _armed.pop(name, None)


def hit(name: str) -> None:
    if not _armed:
        return
    with _lock:
        spec = _armed.get(name)
        if spec is None:
            return
        err, left, passes = spec
        if passes > 0:
            spec[2] -= 1
            return
        if left == 0:
            return
        if left > 0:
            spec[1] -= 1
    raise OSError(err, f"{os.strerror(err)} (failpoint {name})")


def arm_from_env(value: str | None = None) -> None:
    """Arm what $NESTVEC_FAILPOINTS names (see the module doc)."""
    value = os.environ.get(ENV, "") if value is None else value
    for item in filter(None, (s.strip() for s in value.split(","))):
        name, _, spec = item.partition("=")
        after = 0
        if "@" in spec:
            spec, _, a = spec.partition("@")
            after = int(a)
        times = -1
        if "*" in spec:
            spec, _, t = spec.partition("*")
            times = int(t)
        arm(name.strip(), getattr(errno, spec.strip() or "EIO"), times, after)


arm_from_env()
