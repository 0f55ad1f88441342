"""Running a plan's actor calls: the one place that knows how to wait, retry and give up.

Every coordinator operation is written once, as a generator "plan" that yields a
`Fanout` (the actor calls it needs at once) and receives their results. Two thin
drivers run plans: `run_sync` (Ray jobs: `ray.get`) and `run_async` (the gateway:
awaits, never blocks the event loop). They differ only in how they wait; fault
handling is shared (`_settle`, `_translate`): a call whose shard actor died is
re-issued (durable shards restart and recover before answering) until the
request's deadline or the retry window ends; then the request fails with
UNAVAILABLE or, for a search that allows partial results, the dead shard's
result is None and the plan names it.

Searches to shards on this node go over the shard's Unix socket first
(direct.py); a socket that fails falls back to Ray for that call.
"""
from __future__ import annotations

import asyncio
import functools
import time
from dataclasses import dataclass, field
from typing import Any, Callable, Generator

import ray
from ray import exceptions as ray_errors

from nestvec.cluster._distributed.direct import DirectUnavailable
from nestvec.errors import DeadlineExceeded, NestvecError, Unavailable

class ShardMissing(Exception):
    """The shard's actor is not registered at all (it died and will not restart)."""


class MissingShard:
    """Stands in for the handle of a shard that is not running: every call fails fast."""

    def __init__(self, name: str):
        self.name = name

    def __getattr__(self, method):
        return self

    def remote(self, *args, **kwargs):
        raise ShardMissing(f"shard actor {self.name!r} is not running")


ACTOR_DOWN = (ray_errors.RayActorError, ray_errors.ActorUnavailableError, ShardMissing)


@dataclass
class Fanout:
    """Actor calls to run at once: each a (bound remote method, args) pair."""

    calls: list[tuple[Any, tuple]]
    partial_ok: bool = False   # a call whose actor stays down yields None instead of failing
    retry: bool = True         # re-issue calls whose actor died (durable shards restart)
    deadline: bool = False     # pass the request's wall-clock deadline (shard data calls)
    # Searches only: per call, the shard's DirectClient (None: use Ray) and the
    # (queries, plan, round or None) to send it; and what to do when a socket fails.
    direct: list | None = None
    direct_args: list = field(default_factory=list)
    on_direct_down: Callable[[], None] | None = None
    # partial_ok: why each call that yielded None failed (index -> message), for status.
    errors: dict = field(default_factory=dict)


Plan = Generator[Fanout, list, Any]


def both(plan_method: Callable[..., Plan]):
    """Expose a plan as a sync method (for Ray jobs); `a<name>` is the async twin."""

    @functools.wraps(plan_method)
    def sync(self, *args, timeout: float | None = None, **kwargs):
        try:
            return _run_sync(plan_method(self, *args, **kwargs), timeout, self._retry)
        except Unavailable:
            self._cache.clear()  # handles may be stale (a shard died, or a drop elsewhere)
            raise

    async def run_async(self, *args, timeout: float | None = None, **kwargs):
        try:
            return await _run_async(plan_method(self, *args, **kwargs), timeout, self._retry)
        except Unavailable:
            self._cache.clear()
            raise

    sync._async = run_async  # collected into the class by add_async_twins
    return sync


def add_async_twins(cls):
    for name, member in list(vars(cls).items()):
        twin = getattr(member, "_async", None)
        if twin is not None:
            twin.__name__ = twin.__qualname__ = "a" + name
            twin.__doc__ = member.__doc__
            setattr(cls, "a" + name, twin)
    return cls


# ----- plan drivers ------------------------------------------------------------
class _Deadline:
    def __init__(self, timeout: float | None, retry_window: float):
        now = time.monotonic()
        self.end = None if timeout is None else now + timeout
        # The shards compare against the wall clock (another process, maybe another node).
        self.wall_end = None if timeout is None else time.time() + timeout
        self.retry_end = now + retry_window if self.end is None else min(self.end, now + retry_window)

    def remaining(self) -> float | None:
        return None if self.end is None else max(0.0, self.end - time.monotonic())

    def may_retry(self, backoff: float) -> bool:
        return time.monotonic() + backoff < self.retry_end


def _start_failed(err: BaseException) -> bool:
    """Did the shard's constructor raise? Ray does not restart it: retrying cannot help."""
    return isinstance(err, ray_errors.ActorDiedError) and bool(getattr(err, "actor_init_failed", False))


def _start_error(err: BaseException) -> str:
    """The constructor's own message: the last line of Ray's report, less the class name."""
    lines = [ln.strip() for ln in str(getattr(err, "error_msg", "") or err).splitlines() if ln.strip()]
    last = lines[-1] if lines else str(err)
    head, sep, rest = last.partition(": ")
    return rest if sep and head.replace(".", "").replace("_", "").isalnum() else last


def _translate(err: BaseException) -> BaseException:
    """Ray's errors as nestvec errors; an engine's own error passes through unwrapped."""
    if isinstance(err, ray_errors.RayTaskError) and isinstance(err.cause, NestvecError):
        return err.cause
    if _start_failed(err):
        return Unavailable(f"a shard failed to start and stays down: {_start_error(err)}")
    if isinstance(err, ACTOR_DOWN):
        return Unavailable(f"a shard is down ({err.__class__.__name__}) and did not come back "
                           "in time; retry later")
    if isinstance(err, (ray_errors.GetTimeoutError, asyncio.TimeoutError, TimeoutError)):
        return DeadlineExceeded("the request's deadline passed before the shards answered")
    return err


def _settle(fan: Fanout, results: list, down: list[int], deadline: _Deadline, backoff: float) -> bool:
    """After a round: True to retry the `down` calls; else fill them in or fail."""
    if not down:
        return False
    start_failed = any(_start_failed(results[i]) for i in down)
    if fan.retry and not fan.partial_ok and not start_failed and deadline.may_retry(backoff):
        return True
    if fan.partial_ok:
        for i in down:
            err = _translate(results[i])
            fan.errors[i] = getattr(err, "message", str(err))
            results[i] = None
        return False
    raise _translate(results[down[0]])


def _issue(call: tuple[Any, tuple], wall_deadline: float | None = None):
    """Submit one actor call; a shard that is not running gives its error instead of a ref."""
    method, args = call
    try:
        return method.remote(*args, deadline=wall_deadline) if wall_deadline else method.remote(*args)
    except ACTOR_DOWN as err:  # not running, or Ray refuses the call at once (its node died)
        return err


async def _failed(err: BaseException):
    raise err


def _run_sync(plan: Plan, timeout: float | None, retry_window: float) -> Any:
    deadline = _Deadline(timeout, retry_window)
    try:
        fan = next(plan)
        while True:
            try:
                results = _gather_sync(fan, deadline)
            except Exception as err:  # hand the error to the plan (it may clean up)
                fan = plan.throw(_translate(err))
                continue
            fan = plan.send(results)
    except StopIteration as stop:
        return stop.value


def _direct_sync(fan: Fanout, deadline: _Deadline, results: list) -> list[int]:
    """Run the calls that have a direct channel (send all, then read all); returns the
    indices left for Ray: those without a channel and those whose socket failed."""
    todo, sent, failed = [], [], False
    try:
        for i, client in enumerate(fan.direct):
            if client is None:
                todo.append(i)
                continue
            queries, plan, round_ = fan.direct_args[i]
            try:
                sent.append((i, client, client.send(queries, plan, deadline.wall_end,
                                                    deadline.remaining(), round_)))
            except DirectUnavailable:
                todo.append(i)
                failed = True
        while sent:
            i, client, conn = sent.pop(0)
            try:
                results[i] = client.receive(conn)
            except DirectUnavailable:
                todo.append(i)
                failed = True
    finally:
        for _, client, conn in sent:  # a shard's error ended the round: drop the unread replies
            client.abandon(conn)
    if failed and fan.on_direct_down:
        fan.on_direct_down()
    return sorted(todo)


async def _direct_async(fan: Fanout, deadline: _Deadline, results: list) -> list[int]:
    """The asyncio twin of _direct_sync."""
    idx = [i for i, client in enumerate(fan.direct) if client is not None]
    todo = [i for i, client in enumerate(fan.direct) if client is None]
    calls = []
    for i in idx:
        queries, plan, round_ = fan.direct_args[i]
        calls.append(fan.direct[i].asearch(queries, plan, deadline.wall_end, round_))
    if len(calls) == 1:  # the common single-shard case: no gather task
        try:
            got = [await asyncio.wait_for(calls[0], deadline.remaining())]
        except DirectUnavailable as err:
            got = [err]
    else:
        got = await asyncio.wait_for(asyncio.gather(*calls, return_exceptions=True), deadline.remaining())
    failed = False
    for i, r in zip(idx, got):
        if isinstance(r, DirectUnavailable):
            todo.append(i)
            failed = True
        elif isinstance(r, BaseException):
            raise r
        else:
            results[i] = r
    if failed and fan.on_direct_down:
        fan.on_direct_down()
    return sorted(todo)


def _gather_sync(fan: Fanout, deadline: _Deadline) -> list:
    results: list = [None] * len(fan.calls)
    todo, backoff = list(range(len(fan.calls))), 0.05
    if fan.direct:
        todo = _direct_sync(fan, deadline, results)
        if not todo:
            return results
    while True:
        refs = [_issue(fan.calls[i], fan.deadline and deadline.wall_end) for i in todo]
        if not any(isinstance(r, ACTOR_DOWN) for r in refs):
            try:  # the common case: one wait for all of them
                for i, r in zip(todo, ray.get(refs, timeout=deadline.remaining())):
                    results[i] = r
                return results
            except ACTOR_DOWN:
                pass  # sort out below which calls failed; the rest are done already
        down = []
        for i, ref in zip(todo, refs):
            try:
                if isinstance(ref, ACTOR_DOWN):
                    raise ref
                results[i] = ray.get(ref, timeout=deadline.remaining())
            except ACTOR_DOWN as err:
                results[i] = err
                down.append(i)
        if not _settle(fan, results, down, deadline, backoff):
            return results
        time.sleep(backoff)
        todo, backoff = down, min(1.0, backoff * 2)


async def _run_async(plan: Plan, timeout: float | None, retry_window: float) -> Any:
    deadline = _Deadline(timeout, retry_window)
    try:
        fan = next(plan)
        while True:
            try:
                results = await _gather_async(fan, deadline)
            except Exception as err:
                fan = plan.throw(_translate(err))
                continue
            fan = plan.send(results)
    except StopIteration as stop:
        return stop.value


async def _gather_async(fan: Fanout, deadline: _Deadline) -> list:
    results: list = [None] * len(fan.calls)
    todo, backoff = list(range(len(fan.calls))), 0.05
    if fan.direct:
        todo = await _direct_async(fan, deadline, results)
        if not todo:
            return results
    while True:
        refs = [_issue(fan.calls[i], fan.deadline and deadline.wall_end) for i in todo]
        gathered = asyncio.gather(*[_failed(r) if isinstance(r, ACTOR_DOWN) else r for r in refs],
                                  return_exceptions=True)
        # If the wait is abandoned, its outcome is still read, so asyncio logs nothing.
        gathered.add_done_callback(lambda f: f.cancelled() or f.exception())
        try:
            got = await asyncio.wait_for(gathered, deadline.remaining())
        except (asyncio.TimeoutError, asyncio.CancelledError):
            # Deadline passed, or the client went away. Shard calls still queued see
            # their deadline when they start and return without working (ShardActor);
            # we do not ray.cancel actor tasks: in tests a cancelled call left the
            # next call to the same actor waiting until its own deadline.
            raise
        down = []
        for i, r in zip(todo, got):
            if isinstance(r, ACTOR_DOWN):
                down.append(i)
            elif isinstance(r, BaseException):
                raise r
            results[i] = r
        if not _settle(fan, results, down, deadline, backoff):
            return results
        await asyncio.sleep(backoff)
        todo, backoff = down, min(1.0, backoff * 2)
