"""The `nestvec` command: `serve` and `demo` (later issues add more subcommands)."""
from __future__ import annotations

import argparse
import logging
import sys

from nestvec.cluster.server import DEFAULT_HOST, DEFAULT_MAX_MESSAGE_BYTES, DEFAULT_PORT
from nestvec.cluster.datadir import DataDirError
from nestvec.cluster.wal import FSYNC_POLICIES
from nestvec.errors import NestvecError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nestvec", description=__doc__)
    p.add_argument("--log-level", default="INFO")
    sub = p.add_subparsers(dest="command", required=True)

    s = sub.add_parser("serve", help="run the shards and the gRPC gateway")
    s.add_argument("--host", default=DEFAULT_HOST,
                   help="address to listen on (default %(default)s: loopback only)")
    s.add_argument("--port", type=int, default=DEFAULT_PORT, help="gRPC port (default %(default)s)")
    s.add_argument("--shards", type=int, default=2,
                   help="default shard count for new collections (default %(default)s)")
    s.add_argument("--ray-address", default=None,
                   help="attach to this Ray cluster instead of starting an embedded one")
    s.add_argument("--namespace", default="nestvec", help="Ray namespace of the shard actors")
    s.add_argument("--data-dir", default="nestvec-data",
                   help="where shards keep their logs and snapshots (default ./%(default)s)")
    s.add_argument("--in-memory", action="store_true",
                   help="keep no data on disk: nothing survives a restart")
    s.add_argument("--fsync", choices=FSYNC_POLICIES, default="always",
                   help="always (default): a write is acknowledged once fsync'd; batch: fsync "
                        "every --fsync-interval, so a machine crash may lose that long of "
                        "acknowledged writes; none: leave it to the OS (benchmarks only)")
    s.add_argument("--fsync-interval", type=float, default=0.05,
                   help="seconds between fsyncs under --fsync batch (default %(default)s)")
    s.add_argument("--max-message-bytes", type=int, default=DEFAULT_MAX_MESSAGE_BYTES)
    s.add_argument("--grace", type=float, default=10.0,
                   help="seconds in-flight calls get to finish on SIGTERM/SIGINT")

    d = sub.add_parser("demo", help="load a WordNet sample and search it at several prefix dims")
    d.add_argument("--address", default=None,
                   help="a running nestvec server (host:port); default: start an embedded one")
    d.add_argument("--shards", type=int, default=2)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return _run(args)
    except (DataDirError, NestvecError) as err:  # a problem to report, not a bug to trace
        print(f"nestvec {args.command}: error: {err}", file=sys.stderr)
        return 2


def _run(args) -> int:
    if args.command == "serve":
        from nestvec.cluster.server import serve
        serve(host=args.host, port=args.port, shards=args.shards, ray_address=args.ray_address,
              namespace=args.namespace, data_dir=None if args.in_memory else args.data_dir,
              fsync=args.fsync, fsync_interval=args.fsync_interval, max_message_bytes=args.max_message_bytes, grace=args.grace)
    elif args.command == "demo":
        from nestvec.cluster.demo import run
        run(address=args.address, shards=args.shards)
    return 0


if __name__ == "__main__":
    sys.exit(main())
