"""A collection's shards as the coordinator sees them: handles, sockets, start and stop.

Shard actors are detached: a non-detached actor dies when the last handle to it
goes away, so evicting a cache entry in one gateway would kill a shard every
other gateway and Ray job still uses. They end when their collection is
dropped, or with the Ray cluster.
"""
from __future__ import annotations

from dataclasses import dataclass

import ray

from nestvec.cluster._distributed.direct import DirectClient
from nestvec.cluster._distributed.fanout import Fanout
from nestvec.cluster._distributed.placement import Placement
from nestvec.cluster._distributed.shard_actor import ShardActor, shard_actor_name
from nestvec.cluster._engine.collection import CollectionConfig
from nestvec.cluster._storage import datadir
from nestvec.errors import Unavailable


@dataclass
class ShardSet:
    config: CollectionConfig
    shards: list  # ShardActor handles, index = shard number
    direct: list | None = None  # per shard, a DirectClient or None (not on this node); None: ask


def direct_clients(c: ShardSet, node_id: str):
    """Sub-plan: the shards' direct channels (None for shards on other nodes), asked once."""
    if c.direct is None:
        try:
            addrs = yield Fanout([(h.direct_address, ()) for h in c.shards], partial_ok=True, retry=False)
        except Exception:  # e.g. a shard from an older nestvec without the call: use Ray
            addrs = [None] * len(c.shards)
        clients = [DirectClient(a["path"], a["token"]) if a and a["node_id"] == node_id else None
                   for a in addrs]
        if all(a is not None for a in addrs):  # a shard that did not answer is asked again later
            c.direct = clients
        return clients
    return c.direct


def forget_direct(c: ShardSet) -> None:
    """A socket failed (its shard restarted, or died): ask the shards again next time."""
    old, c.direct = c.direct, None
    for client in old or ():
        if client is not None:
            client.close()


def spawn_shards(namespace: str, settings: dict, cfg: CollectionConfig, reuse: bool) -> list:
    """Start the shard actors (`reuse`: attach to any already running under the name)."""
    return [spawn_shard(namespace, settings, cfg, i, reuse) for i in range(cfg.shards)]


def spawn_shard(namespace: str, settings: dict, cfg: CollectionConfig, i: int, reuse: bool):
    data_dir = settings["data_dir"]
    opts = dict(name=shard_actor_name(cfg, i), namespace=namespace,
                lifetime="detached", get_if_exists=reuse,
                # A durable shard restarts and recovers from disk; an in-memory one
                # must not come back empty and pretend nothing was lost.
                max_restarts=-1 if data_dir else 0,
                **Placement.from_dict(settings.get("placement")).actor_options(i))
    args = (cfg.to_dict(), i,
            datadir.shard_dir(data_dir, cfg.name, cfg.uid, i) if data_dir else None,
            settings["fsync"], settings["fsync_interval"], settings.get("shard_threads", 1))
    return ShardActor.options(**opts).remote(*args)


def named_handles(namespace: str, cfg: CollectionConfig, missing_ok: bool = False) -> list:
    handles = []
    for i in range(cfg.shards):
        try:
            handles.append(ray.get_actor(shard_actor_name(cfg, i), namespace=namespace))
        except ValueError:
            if not missing_ok:
                raise Unavailable(f"shard {i} of collection {cfg.name!r} is not running") from None
            handles.append(None)
    return handles


def kill(handles: list) -> None:
    for h in handles:
        if h is None:
            continue
        try:
            ray.kill(h, no_restart=True)
        except Exception:  # already gone is fine: we wanted it gone
            pass
