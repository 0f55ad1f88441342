"""Where shard actors run, and what each one reserves (`nestvec serve --placement`).

Three strategies:
- `default`: Ray's scheduler picks (packs actors onto nodes with room);
- `spread`: Ray's SPREAD scheduling strategy: shards go to as many nodes as it can;
- `resources:A,B,C`: shard i asks for a sliver of the custom resource named
  `i mod n` in the list. Give each node its own resource (`ray start
  --resources '{"A": 1}'`) and shard i lives on that node, and, after a crash,
  comes back only there: where its data directory is. Nodes may come and go;
  a node id would change when the node restarts, a resource name does not.

Per-shard `num_cpus` and `memory` (bytes) are Ray's logical resources: they keep
the scheduler from stacking more shards on a node than it has room for. The
default (0 CPUs, no memory) lets any number of shards share a node
(STACK-NOTES: whole-CPU requests starve a small node of actors).
"""
from __future__ import annotations

from dataclasses import asdict, dataclass

from nestvec.errors import InvalidArgument

STRATEGIES = ("default", "spread", "resources")
RESOURCE_SLIVER = 0.001  # per shard: a node with {"A": 1} holds up to 1000 shards


class PlacementError(InvalidArgument):
    """A --placement the flag's syntax or the cluster cannot satisfy."""


@dataclass(frozen=True)
class Placement:
    strategy: str = "default"
    resources: tuple[str, ...] = ()
    num_cpus: float = 0.0
    memory: int = 0

    @staticmethod
    def parse(spec: str | None, num_cpus: float = 0.0, memory: int = 0) -> "Placement":
        """`default`, `spread` or `resources:A,B,...` (the --placement flag)."""
        spec = (spec or "default").strip()
        strategy, _, rest = spec.partition(":")
        strategy = strategy.lower()
        if strategy not in STRATEGIES:
            raise PlacementError(f"unknown placement {spec!r}: use default, spread, or "
                                 "resources:NAME[,NAME...] (custom resources given to `ray start`)")
        names = tuple(n.strip() for n in rest.split(",") if n.strip())
        if strategy == "resources" and not names:
            raise PlacementError("placement resources: needs at least one resource name, "
                                 "e.g. resources:node-a,node-b")
        if strategy != "resources" and rest:
            raise PlacementError(f"placement {strategy!r} takes no arguments, got {spec!r}")
        if num_cpus < 0 or memory < 0:
            raise PlacementError("per-shard num_cpus and memory must be >= 0")
        return Placement(strategy, names, float(num_cpus), int(memory))

    def to_dict(self) -> dict:
        d = asdict(self)
        d["resources"] = list(self.resources)
        return d

    @staticmethod
    def from_dict(d: dict | None) -> "Placement":
        if not d:
            return Placement()
        return Placement(d["strategy"], tuple(d.get("resources", ())), float(d.get("num_cpus", 0)),
                         int(d.get("memory", 0)))

    def actor_options(self, shard: int) -> dict:
        """Ray actor options for shard number `shard`."""
        opts: dict = {"num_cpus": self.num_cpus}
        if self.memory:
            opts["memory"] = self.memory
        if self.strategy == "spread":
            opts["scheduling_strategy"] = "SPREAD"
        elif self.strategy == "resources":
            opts["resources"] = {self.resources[shard % len(self.resources)]: RESOURCE_SLIVER}
        return opts

    def check_cluster(self, cluster_resources: dict) -> None:
        """Refuse a placement the cluster cannot satisfy (the shards would wait forever)."""
        missing = [r for r in self.resources if r not in cluster_resources]
        if missing:
            raise PlacementError(
                f"no node of this Ray cluster has the custom resource(s) {missing}: start the "
                "nodes with `ray start --resources '{\"NAME\": 1}'` or fix --placement")
