"""`nestvec status`: every collection's shards (node, rows, memory, health) over gRPC."""
from __future__ import annotations

from nestvec.client import Client, CollectionInfo


def _mib(n: int) -> str:
    return f"{n / 2**20:,.1f} MiB"


def format_status(infos: list[CollectionInfo]) -> str:
    """A table per collection, then how many shards each node holds."""
    lines, per_node = [], {}
    for info in infos:
        down = sum(s.down for s in info.shard_info)
        lines.append(f"collection {info.name}: dim {info.dim}, {info.metric}, {info.shards} shards, "
                     f"{info.vectors} vectors" + (f", {down} shard(s) DOWN" if down else ""))
        lines.append(f"  {'shard':>5}  {'health':<9}  {'node':<14}  {'ip':<15}  {'vectors':>9}  "
                     f"{'memory':>11}  {'rss':>11}  restarts")
        for s in info.shard_info:
            health = s.health or ("DOWN" if s.down else "SERVING")
            if s.down:
                lines.append(f"  {s.shard:>5}  {health:<9}  {'?':<14}  {'?':<15}  {'?':>9}  {'?':>11}  "
                             f"{'?':>11}  ?")
                if s.down_reason:
                    lines.append(f"         why: {s.down_reason}")
                continue
            node = s.node_id[:12]
            per_node.setdefault((node, s.node_ip), 0)
            per_node[(node, s.node_ip)] += 1
            lines.append(f"  {s.shard:>5}  {health:<9}  {node:<14}  {s.node_ip:<15}  {s.vectors:>9}  "
                         f"{_mib(s.memory_bytes):>11}  {_mib(s.rss_bytes):>11}  {s.restarts}")
            if s.write_error:
                lines.append(f"         writes refused: {s.write_error} ({s.write_errors} disk errors)")
            if s.snapshot_error:
                lines.append(f"         last snapshot failed: {s.snapshot_error}")
    if per_node:
        lines.append(f"nodes holding shards: {len(per_node)}")
        for (node, ip), n in sorted(per_node.items()):
            lines.append(f"  {node} ({ip}): {n} shards")
    return "\n".join(lines)


def print_status(address: str, collection: str | None = None, api_key: str | None = None,
                 tls_ca: str | None = None) -> None:
    root = open(tls_ca, "rb").read() if tls_ca else None
    with Client(address, api_key=api_key, tls=root is not None, root_certificates=root) as c:
        names = [collection] if collection else [i.name for i in c.list_collections()]
        infos = [c.describe_collection(n) for n in names]
    print(format_status(infos) if infos else "no collections", flush=True)
