"""Same-node search channel: a shard answers searches on a Unix domain socket.

Why: a Ray actor call costs 0.5-1.4 ms here (task submission, scheduling,
serialising the arguments, waking the caller); a Unix-socket round trip from
Python costs ~15 us. Searches are the one latency-critical call, so each shard
also serves them on a socket, and a coordinator on the same Ray node sends its
searches there. Everything else (writes, admin calls, searches from another
node, and any search whose socket fails) stays on Ray, which keeps owning
placement, restarts and failure detection.

Who may connect: the socket lives in a fresh 0700 directory (only this OS user
can reach it), and a connection must first present the shard's random token,
which is handed out only through the shard's Ray actor (`direct_address`).

Frames are `[u32 length][payload]`, little-endian. A request payload is
`[u32 header length][header JSON][query bytes]`; the header holds the query
shape and dtype, the search plan and the wall-clock deadline. A reply is the
same shape: a JSON header (`ok`, array shapes and dtypes, or an error's code and
message) then the ids' and keys' bytes. No pickle: a peer can send only data.
"""
from __future__ import annotations

import asyncio
import hmac
import json
import os
import secrets
import shutil
import socket
import struct
import tempfile
import threading
import time
import weakref
from typing import Callable

import numpy as np

from nestvec.cluster._engine.collection import SearchPlan
from nestvec.errors import DeadlineExceeded, Internal, NestvecError

MAX_QUERY_BYTES = 16 << 20   # larger batches go through Ray (the object store shares them)
MAX_CONNECTIONS = 16         # per client (and event loop): more concurrent searches wait for one
# A server reads no frame longer than this (after the token; the token frame itself may
# be no longer than the token), and holds at most MAX_SERVER_CONNECTIONS connections:
# a peer that announces more is hung up on before anything is allocated.
MAX_FRAME_BYTES = 256 << 20
MAX_SERVER_CONNECTIONS = 256
_LEN = struct.Struct("<I")
_DIR_PREFIX = "nestvec-shard-"
_ERRORS = {cls.code: cls for cls in NestvecError.__subclasses__()}


class DirectUnavailable(Exception):
    """The socket failed (the shard restarted or died): the caller falls back to Ray."""


# ----- encoding -------------------------------------------------------------------
def _pack(header: dict, *arrays: np.ndarray) -> list[bytes]:
    head = json.dumps(header).encode()
    body = [_LEN.pack(len(head)), head, *(_raw(a) for a in arrays)]
    return [_LEN.pack(sum(len(b) for b in body)), *body]


def _raw(a: np.ndarray) -> memoryview:
    """An array's bytes without a copy (when it is contiguous), empty arrays included."""
    return memoryview(np.ascontiguousarray(a).reshape(-1).view(np.uint8))


def _unpack(payload: bytes) -> tuple[dict, memoryview]:
    (n,) = _LEN.unpack_from(payload)
    return json.loads(payload[4:4 + n]), memoryview(payload)[4 + n:]


def _arrays(header: dict, data: memoryview, names: tuple[str, ...]) -> list[np.ndarray]:
    out, pos = [], 0
    for name in names:
        shape, dtype = header[name]
        dt = np.dtype(dtype)
        size = int(np.prod(shape)) * dt.itemsize
        out.append(np.frombuffer(data[pos:pos + size], dtype=dt).reshape(shape))
        pos += size
    return out


def encode_request(queries: np.ndarray, plan: SearchPlan, deadline: float | None,
                   round_: tuple | None = None) -> list[bytes]:
    """A search; with `round_` = (stage, ids or None, counts or None), one round of a
    funnel run across shards (ShardActor.funnel_round)."""
    header = {"queries": [list(queries.shape), queries.dtype.str],
              "plan": {"k": plan.k, "dim": plan.dim, "stages": plan.stages,
                       "ann_candidates": plan.ann_candidates, "ef": plan.ef,
                       "filter": plan.filter},
              "deadline": deadline}
    arrays = [queries]
    if round_ is not None:
        stage, *extra = round_
        header["stage"] = int(stage)
        for name, a in zip(_ROUND_ARRAYS, extra):
            if a is not None:
                header[name] = [list(a.shape), a.dtype.str]
                arrays.append(a)
    return _pack(header, *arrays)


_ROUND_ARRAYS = ("ids", "counts")  # a round's optional arrays, in their order on the wire


def decode_request(payload: bytes) -> tuple[np.ndarray, SearchPlan, float | None, tuple | None]:
    header, data = _unpack(payload)
    present = tuple(n for n in _ROUND_ARRAYS if n in header)
    queries, *rest = _arrays(header, data, ("queries", *present))
    p = header["plan"]
    plan = SearchPlan(int(p["k"]), int(p["dim"]), tuple(tuple(int(x) for x in s) for s in p["stages"]),
                      int(p["ann_candidates"]), int(p["ef"]), str(p.get("filter", "")))
    round_ = None
    if "stage" in header:
        got = dict(zip(present, rest))
        round_ = (int(header["stage"]), *(got.get(n) for n in _ROUND_ARRAYS))
    return queries, plan, header["deadline"], round_


def encode_reply(ids: np.ndarray, keys: np.ndarray) -> list[bytes]:
    return _pack({"ok": True, "ids": [list(ids.shape), ids.dtype.str],
                  "keys": [list(keys.shape), keys.dtype.str]}, ids, keys)


def encode_error(err: BaseException) -> list[bytes]:
    if isinstance(err, NestvecError):
        return _pack({"ok": False, "code": err.code, "message": err.message})
    return _pack({"ok": False, "code": "INTERNAL", "message": f"{type(err).__name__}: {err}"})


def decode_reply(payload: bytes) -> tuple[np.ndarray, np.ndarray]:
    header, data = _unpack(payload)
    if not header["ok"]:
        raise _ERRORS.get(header["code"], Internal)(header["message"])
    ids, keys = _arrays(header, data, ("ids", "keys"))
    return ids, keys


# ----- shard side ------------------------------------------------------------------
Handler = Callable[[np.ndarray, SearchPlan, "float | None", "tuple | None"],
                   "tuple[np.ndarray, np.ndarray]"]


class DirectServer:
    """Serves `handler(queries, plan, deadline, round) -> (ids, keys)` on a private Unix socket.

    One thread accepts; one thread per connection reads requests and answers them
    in order. The handler must do its own locking against the shard's other calls.
    """

    def __init__(self, handler: Handler):
        self.handler = handler
        self.token = secrets.token_bytes(16)
        _sweep_stale()
        self.dir = tempfile.mkdtemp(prefix=_DIR_PREFIX)  # mode 0700
        self.path = os.path.join(self.dir, "search.sock")
        self._sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self._sock.bind(self.path)
        self._sock.listen(1024)
        self._closed = False
        self._conns: set[socket.socket] = set()
        threading.Thread(target=self._accept_loop, name="nestvec-direct-accept", daemon=True).start()

    def address(self) -> dict:
        return {"path": self.path, "token": self.token.hex()}

    def close(self) -> None:
        """Stop listening and hang up on every client (they fall back to Ray)."""
        self._closed = True
        try:
            self._sock.close()
            for conn in list(self._conns):
                conn.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        finally:
            shutil.rmtree(self.dir, ignore_errors=True)

    def _accept_loop(self) -> None:
        while not self._closed:
            try:
                conn, _ = self._sock.accept()
            except OSError:
                return  # closed
            if len(self._conns) >= MAX_SERVER_CONNECTIONS:
                conn.close()  # the client falls back to Ray
                continue
            self._conns.add(conn)
            threading.Thread(target=self._serve, args=(conn,), name="nestvec-direct", daemon=True).start()

    def _serve(self, conn: socket.socket) -> None:
        with conn:
            try:  # the token first, read into a buffer no longer than the token itself
                if not hmac.compare_digest(bytes(_recv_frame(conn, len(self.token))), self.token):
                    return  # wrong token: say nothing, hang up
                while True:
                    payload = _recv_frame(conn, MAX_FRAME_BYTES)
                    try:
                        ids, keys = self.handler(*decode_request(payload))
                        reply = encode_reply(ids, keys)
                    except Exception as err:  # the caller gets the error; the channel lives on
                        reply = encode_error(err)
                    _send_all(conn, reply)
            except (ConnectionError, OSError, EOFError):
                return  # the client went away
            finally:
                self._conns.discard(conn)


def _sweep_stale() -> None:
    """Remove the folders of shards that died without cleaning up (a killed actor
    runs no exit code): ours, and nobody listening on their socket."""
    root = tempfile.gettempdir()
    try:
        names = [n for n in os.listdir(root) if n.startswith(_DIR_PREFIX)]
    except OSError:
        return
    for name in names:
        folder = os.path.join(root, name)
        try:
            st = os.stat(folder)
            if st.st_uid != os.getuid() or time.time() - st.st_mtime < 60:
                continue  # not ours, or maybe a shard still starting up
            probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                probe.connect(os.path.join(folder, "search.sock"))
                continue  # alive
            finally:
                probe.close()
        except (ConnectionRefusedError, FileNotFoundError):
            shutil.rmtree(folder, ignore_errors=True)
        except OSError:
            continue


def _send_all(conn: socket.socket, buffers: list) -> None:
    """sendmsg, finishing with sendall if the kernel took only part (large batches)."""
    total = sum(len(b) for b in buffers)
    sent = conn.sendmsg(buffers)
    if sent < total:
        conn.sendall(b"".join(bytes(b) for b in buffers)[sent:])


def _recv_exact(conn: socket.socket, n: int) -> bytearray:
    buf = bytearray(n)
    view, got = memoryview(buf), 0
    while got < n:
        r = conn.recv_into(view[got:])
        if r == 0:
            raise EOFError("connection closed")
        got += r
    return buf


def _recv_frame(conn: socket.socket, limit: int | None = None) -> bytearray:
    """One length-prefixed frame; a length over `limit` ends the connection unread."""
    (n,) = _LEN.unpack(_recv_exact(conn, 4))
    if limit is not None and n > limit:
        raise ConnectionError(f"frame of {n} bytes announced; at most {limit} accepted")
    return _recv_exact(conn, n)


# ----- coordinator side -------------------------------------------------------------
class DirectClient:
    """A small pool of connections to one shard's socket, for sync and asyncio callers."""

    def __init__(self, path: str, token: str):
        self.path = path
        self.token = bytes.fromhex(token)
        self._lock = threading.Lock()
        self._slots = threading.BoundedSemaphore(MAX_CONNECTIONS)
        self._idle: list[socket.socket] = []
        # per event loop (a stream belongs to the loop that opened it): a semaphore
        # bounding its connections, and its idle (reader, writer) pairs
        self._aidle: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()

    # sync: two halves, so a fan-out can send to every shard before reading any reply
    def send(self, queries: np.ndarray, plan: SearchPlan, deadline: float | None,
             timeout: float | None, round_: tuple | None = None) -> socket.socket:
        if not self._slots.acquire(timeout=-1 if timeout is None else timeout):
            raise DeadlineExceeded("the request's deadline passed waiting for a connection to a shard")
        with self._lock:
            conn = self._idle.pop() if self._idle else None
        try:
            if conn is None:
                conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                conn.connect(self.path)
                conn.sendall(_LEN.pack(len(self.token)) + self.token)
            conn.settimeout(timeout)
            _send_all(conn, encode_request(queries, plan, deadline, round_))
            return conn
        except OSError as err:
            if conn is not None:
                conn.close()
            self._slots.release()
            raise DirectUnavailable(str(err)) from None

    def receive(self, conn: socket.socket) -> tuple[np.ndarray, np.ndarray]:
        """The reply to `send`'s request. Every `send` must be followed by `receive`
        or `abandon`, which give its connection slot back."""
        try:
            payload = _recv_frame(conn)
        except socket.timeout:
            self.abandon(conn)
            raise DeadlineExceeded("the request's deadline passed before the shards answered") from None
        except (OSError, EOFError) as err:
            self.abandon(conn)
            raise DirectUnavailable(str(err)) from None
        with self._lock:
            self._idle.append(conn)
        self._slots.release()
        return decode_reply(payload)

    def abandon(self, conn: socket.socket) -> None:
        """Close a connection whose reply will not be read (it would be out of step)."""
        conn.close()
        self._slots.release()

    async def asearch(self, queries: np.ndarray, plan: SearchPlan, deadline: float | None,
                      round_: tuple | None = None) -> tuple[np.ndarray, np.ndarray]:
        """One search; the caller bounds it with asyncio.wait_for (a cancelled call's
        connection is closed, never reused half-read)."""
        loop = asyncio.get_running_loop()
        if loop not in self._aidle:
            self._aidle[loop] = (asyncio.Semaphore(MAX_CONNECTIONS), [])
        slots, idle = self._aidle[loop]
        async with slots:
            return await self._asearch(idle, queries, plan, deadline, round_)

    async def _asearch(self, idle: list, queries: np.ndarray, plan: SearchPlan,
                       deadline: float | None, round_: tuple | None) -> tuple[np.ndarray, np.ndarray]:
        pair = idle.pop() if idle else None
        try:
            if pair is None:
                pair = await asyncio.open_unix_connection(self.path)
                pair[1].write(_LEN.pack(len(self.token)) + self.token)
            reader, writer = pair
            writer.writelines(encode_request(queries, plan, deadline, round_))
            (n,) = _LEN.unpack(await reader.readexactly(4))
            payload = await reader.readexactly(n)
        except (OSError, EOFError, asyncio.IncompleteReadError) as err:
            if pair is not None:
                pair[1].close()
            raise DirectUnavailable(str(err)) from None
        except BaseException:  # cancelled or timed out mid-call: the stream is out of step
            if pair is not None:
                pair[1].close()
            raise
        idle.append(pair)
        return decode_reply(payload)

    def close(self) -> None:
        with self._lock:
            conns, self._idle = self._idle, []
        for c in conns:
            c.close()
        for _, pairs in self._aidle.values():
            for _, writer in pairs:
                writer.close()
        self._aidle.clear()
