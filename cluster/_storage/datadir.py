"""The data directory: a versioned manifest, the catalog file, and shard folders.

    D/MANIFEST.json                       {"format_version": 2, ...}
    D/catalog.json                        the collections (atomically replaced)
    D/collections/<name>.<uid>/shard-<i>/ one folder per shard (see durable_shard.py)

The uid (fresh per CreateCollection) keeps a re-created collection from ever
reading an older one's files. docs/data-directory.md describes the format.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil

# 2: logs may hold payload records (ops 3 and 4) and snapshots payload.bin. A version-1
# directory is read as it is and marked 2 on open, so an older nestvec, which would
# misread those records, refuses it.
FORMAT_VERSION = 2
MANIFEST = "MANIFEST.json"
CATALOG = "catalog.json"
LOCK = "LOCK"


class DataDirError(Exception):
    pass


def open_data_dir(path: str) -> str:
    """Create or check a data directory; refuse one written by a newer format."""
    path = os.path.abspath(path)
    os.makedirs(path, exist_ok=True)
    manifest = os.path.join(path, MANIFEST)
    if os.path.exists(manifest):
        with open(manifest) as f:
            version = int(json.load(f).get("format_version", 0))
        if version > FORMAT_VERSION:
            raise DataDirError(
                f"data directory {path} has format version {version}, newer than this nestvec "
                f"understands ({FORMAT_VERSION}): upgrade nestvec, or point --data-dir elsewhere")
        if version < FORMAT_VERSION:
            write_json_atomic(manifest, {"format_version": FORMAT_VERSION, "software": "nestvec"})
        return path
    if any(name not in (MANIFEST, LOCK, "ray-auth-token") for name in os.listdir(path)):
        raise DataDirError(f"{path} is not empty and has no {MANIFEST}: it is not a nestvec data "
                           "directory (refusing to write into it)")
    write_json_atomic(manifest, {"format_version": FORMAT_VERSION, "software": "nestvec"})
    return path


def lock_data_dir(path: str, check_shards: bool = True):
    """Hold an exclusive lock on the data directory for the caller's lifetime.

    Two servers writing one directory would interleave their logs; the second
    is refused. The lock is an flock, so it goes away with the process that
    held it, however that process ends (kill -9 included).
    """
    f = _try_lock(path)
    if f is None:
        raise DataDirError(f"data directory {path} is in use by another nestvec server "
                           "(its LOCK file is held): stop that server or use another --data-dir")
    # A new server: the shards of one whose catalog died may still be writing here.
    # (A restarted catalog skips this: its own server's shards hold their folders.)
    busy = [d for d in shard_dirs(path) if folder_locked(d)] if check_shards else []
    if busy:
        f.close()
        raise DataDirError(f"data directory {path} is in use by another nestvec server: "
                           f"{len(busy)} shard folder(s), e.g. {busy[0]}, are held by running shards; "
                           "stop that server (its shards) or use another --data-dir")
    return f


def lock_shard_dir(path: str):
    """A shard's exclusive lock on its own folder, held for as long as its process may
    write (never released by hand: the kernel drops it when the process dies)."""
    makedirs_durable(path)
    f = _try_lock(path)
    if f is None:
        raise DataDirError(f"shard folder {path} is held by another running shard (another "
                           "nestvec server on the same data directory?): refusing to open it")
    return f


def folder_locked(path: str) -> bool:
    """Does some process hold `path`'s LOCK? (Probes, and lets go at once.)"""
    if not os.path.exists(os.path.join(path, LOCK)):
        return False
    f = _try_lock(path)
    if f is None:
        return True
    f.close()
    return False


def shard_dirs(data_dir: str) -> list[str]:
    root = os.path.join(data_dir, "collections")
    if not os.path.isdir(root):
        return []
    return sorted(os.path.join(root, c, s) for c in os.listdir(root) if os.path.isdir(os.path.join(root, c))
                  for s in os.listdir(os.path.join(root, c)) if s.startswith("shard-"))


def _try_lock(path: str):
    """An open file holding an exclusive flock on `path`/LOCK, or None if another holds it.
    An flock belongs to the open file: it goes when the holding process dies, kill -9 included."""
    f = open(os.path.join(path, LOCK), "a+")
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        return None
    return f


def shard_dir(data_dir: str, name: str, uid: str, shard: int) -> str:
    return os.path.join(data_dir, "collections", f"{name}.{uid}", f"shard-{shard}")


def collection_dir(data_dir: str, name: str, uid: str) -> str:
    return os.path.join(data_dir, "collections", f"{name}.{uid}")


def remove_orphans(data_dir: str, live: set[str]) -> None:
    """Delete collection folders the catalog no longer names (a drop cut short by a crash)."""
    root = os.path.join(data_dir, "collections")
    if not os.path.isdir(root):
        return
    for entry in os.listdir(root):
        if entry not in live:
            shutil.rmtree(os.path.join(root, entry), ignore_errors=True)


def write_json_atomic(path: str, obj) -> None:
    """Write to a temporary name, fsync, rename over `path`, fsync the folder."""
    tmp = f"{path}.tmp"
    with open(tmp, "w") as f:
        json.dump(obj, f, indent=1)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fsync_dir(os.path.dirname(path))


def makedirs_durable(path: str) -> None:
    """os.makedirs, and fsync the parent of every folder it creates: a new folder's
    name is only durable once its parent directory is (a crash could lose the shard's
    folder, and the acknowledged log inside it, otherwise)."""
    path = os.path.abspath(path)
    missing = []
    while not os.path.isdir(path):
        missing.append(path)
        path = os.path.dirname(path)
    for folder in reversed(missing):
        try:
            os.mkdir(folder)
        except FileExistsError:
            pass
        fsync_dir(os.path.dirname(folder))


def fsync_dir(path: str) -> None:
    """Make a rename or a new file in `path` durable."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
