"""Gateway replicas (`nestvec serve --gateways N`): N grpc.aio gateways, each in its own Ray actor.

One Python process tops out at what one core can decode, encode and merge; N
replicas are N processes. They all bind the same host:port with SO_REUSEPORT
(Linux), so the kernel spreads incoming connections over them, and each has its
own Coordinator attached to the same catalog and shard actors (no state of
their own: any replica answers any call the same way).

Replicas listen where the operator said (loopback by default, security.py), so
they must run on the node that `serve` runs on: they are pinned to it.
"""
from __future__ import annotations

import os

import ray
from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

from nestvec.cluster._server.auth import KeyStore
from nestvec.cluster._engine.limits import Limits
from nestvec.cluster._server.security import TlsConfig

REPLICA_NAME = "gateway-{}"


@ray.remote(num_cpus=0)  # like shards: a whole-CPU request would starve small nodes
class GatewayReplica:
    def __init__(self, namespace: str, host: str, port: int, limits: Limits,
                 keys: KeyStore | None, tls: TlsConfig | None, batch_window: float,
                 metrics_port: int | None = None):
        import logging
        logging.basicConfig(level=logging.INFO,
                            format="%(asctime)s %(levelname)s %(name)s: %(message)s")
        from nestvec.cluster._distributed.coordinator import Coordinator
        from nestvec.cluster._server.metrics import GatewayMetrics
        from nestvec.cluster._server.serve import Gateway

        self.coordinator = Coordinator(namespace=namespace)  # attaches to the server's catalog
        self.metrics = GatewayMetrics(self.coordinator)
        self.metrics_port = self.metrics.serve(metrics_port) if metrics_port is not None else None
        self.gateway = Gateway(self.coordinator, host, port, limits, keys, tls, self.metrics,
                               batch_window, reuse_port=True)

    async def start(self) -> int:
        return await self.gateway.start()

    async def stop(self, grace: float = 10.0) -> None:
        await self.gateway.stop(grace)

    def info(self) -> dict:
        """pid, port and calls finished: which process served how much."""
        calls = sum(s.value for m in self.metrics.requests.collect() for s in m.samples
                    if s.name.endswith("_total"))
        return {"pid": os.getpid(), "port": self.gateway.port, "calls": int(calls),
                "metrics_port": self.metrics_port}


def start_replicas(n: int, namespace: str, host: str, port: int, limits: Limits,
                   keys: KeyStore | None, tls: TlsConfig | None, batch_window: float,
                   metrics_port: int | None = None) -> tuple[list, int]:
    """Start n replicas on this node, all on one port; returns (handles, bound port).

    With port 0 the first replica picks a free port and the others join it.
    """
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    handles = []
    for i in range(n):
        mport = None if metrics_port is None else (metrics_port + i if metrics_port else 0)
        h = GatewayReplica.options(name=REPLICA_NAME.format(i), namespace=namespace,
                                   scheduling_strategy=here).remote(
            namespace, host, port, limits, keys, tls, batch_window, mport)
        port = ray.get(h.start.remote())
        handles.append(h)
    return handles, port


def stop_replicas(handles: list, grace: float) -> None:
    """Let every replica finish its calls in flight, then end them."""
    ray.get([h.stop.remote(grace) for h in handles], timeout=grace + 30)
    for h in handles:
        ray.kill(h)
