"""The `nestvec` command: `serve`, `demo`, `keygen` and `loadtest` (later issues add more subcommands)."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys

from nestvec.cluster.auth import ROLES, KeyFileError
from nestvec.cluster.datadir import DataDirError
from nestvec.cluster.limits import Limits
from nestvec.cluster.security import DEFAULT_HOST, DEFAULT_PORT, ExposureRefused
from nestvec.cluster.wal import FSYNC_POLICIES
from nestvec.errors import NestvecError

DEFAULT_SHARDS = max(1, min(os.cpu_count() or 1, 8))  # one shard per core, up to 8


def _serve_parser(sub) -> None:
    s = sub.add_parser("serve", help="run the shards and the gRPC gateway")
    s.add_argument("--host", default=DEFAULT_HOST,
                   help="address to listen on (default %(default)s: loopback only)")
    s.add_argument("--port", type=int, default=DEFAULT_PORT, help="gRPC port (default %(default)s)")
    s.add_argument("--shards", type=int, default=DEFAULT_SHARDS,
                   help="default shard count for new collections (default: one per core, "
                        "up to 8; here %(default)s)")
    s.add_argument("--shard-threads", type=int, default=1,
                   help="BLAS/OpenMP threads per shard (default %(default)s: scale with shards, "
                        "see docs/benchmarks.md)")
    s.add_argument("--ray-address", default=None,
                   help="attach to this Ray cluster instead of starting an embedded one")
    s.add_argument("--namespace", default="nestvec", help="Ray namespace of the shard actors")
    s.add_argument("--grace", type=float, default=10.0,
                   help="seconds in-flight calls get to finish on SIGTERM/SIGINT")
    s.add_argument("--batch-window-ms", type=float, default=1.0,
                   help="while a search is in flight, stack same-shaped searches arriving "
                        "within this window into one shard call (0 turns it off; default %(default)s)")

    d = s.add_argument_group("durability")
    d.add_argument("--data-dir", default="nestvec-data",
                   help="where shards keep their logs and snapshots (default ./%(default)s)")
    d.add_argument("--in-memory", action="store_true",
                   help="keep no data on disk: nothing survives a restart")
    d.add_argument("--fsync", choices=FSYNC_POLICIES, default="always",
                   help="always (default): a write is acknowledged once fsync'd; batch: fsync "
                        "every --fsync-interval, so a machine crash may lose that long of "
                        "acknowledged writes; none: leave it to the OS (benchmarks only)")
    d.add_argument("--fsync-interval", type=float, default=0.05,
                   help="seconds between fsyncs under --fsync batch (default %(default)s)")

    sec = s.add_argument_group("security (see docs/security.md)")
    sec.add_argument("--api-keys-file", default=None,
                     help="file of '<role> sha256:<digest> [name]' lines (from `nestvec keygen`); "
                          "keys can also come from the NESTVEC_API_KEYS environment variable")
    sec.add_argument("--tls-cert", default=None, help="PEM certificate chain of the server")
    sec.add_argument("--tls-key", default=None, help="PEM private key of the server")
    sec.add_argument("--tls-client-ca", default=None,
                     help="PEM CA: require client certificates it signed (mutual TLS)")
    sec.add_argument("--insecure", action="store_true",
                     help="allow a non-loopback --host without API keys or TLS")
    sec.add_argument("--metrics-port", type=int, default=None,
                     help="serve Prometheus metrics on 127.0.0.1:PORT/metrics (0: any free port)")

    lim = s.add_argument_group("limits (see docs/security.md)")
    for f in dataclasses.fields(Limits):
        lim.add_argument("--" + f.name.replace("_", "-"), type=int, default=f.default,
                         help=f"default {f.default}")


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nestvec", description=__doc__)
    p.add_argument("--log-level", default="INFO")
    sub = p.add_subparsers(dest="command", required=True)
    _serve_parser(sub)

    d = sub.add_parser("demo", help="load a WordNet sample and search it at several prefix dims")
    d.add_argument("--address", default=None,
                   help="a running nestvec server (host:port); default: start an embedded one")
    d.add_argument("--shards", type=int, default=2)

    k = sub.add_parser("keygen", help="make a new API key and the key-file line that admits it")
    k.add_argument("--role", choices=ROLES, required=True)
    k.add_argument("--name", default="", help="a label for the key-file line")

    from nestvec.cluster.loadtest.cli import add_parser as add_loadtest_parser
    add_loadtest_parser(sub)
    return p


def main(argv: list[str] | None = None) -> int:
    args = _parser().parse_args(argv)
    logging.basicConfig(level=args.log_level.upper(),
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        return _run(args)
    except (DataDirError, NestvecError, ExposureRefused, KeyFileError, OSError) as err:
        # a problem to report, not a bug to trace
        print(f"nestvec {args.command}: error: {err}", file=sys.stderr)
        return 2


def _serve_options(args):
    from nestvec.cluster.auth import KeyStore
    from nestvec.cluster.security import TlsConfig
    from nestvec.cluster.server import ServeOptions

    if bool(args.tls_cert) != bool(args.tls_key):
        raise ExposureRefused("--tls-cert and --tls-key go together")
    return ServeOptions(
        host=args.host, port=args.port, shards=args.shards, shard_threads=args.shard_threads,
        ray_address=args.ray_address,
        namespace=args.namespace, data_dir=None if args.in_memory else args.data_dir,
        fsync=args.fsync, fsync_interval=args.fsync_interval,
        limits=Limits(**{f.name: getattr(args, f.name) for f in dataclasses.fields(Limits)}),
        keys=KeyStore.load(args.api_keys_file),
        tls=TlsConfig.from_files(args.tls_cert, args.tls_key, args.tls_client_ca) if args.tls_cert else None,
        insecure=args.insecure, metrics_port=args.metrics_port,
        batch_window=args.batch_window_ms / 1000, grace=args.grace)


def _run(args) -> int:
    if args.command == "serve":
        from nestvec.cluster.server import serve
        serve(_serve_options(args))
    elif args.command == "demo":
        from nestvec.cluster.demo import run
        run(address=args.address, shards=args.shards)
    elif args.command == "loadtest":
        from nestvec.cluster.loadtest.cli import run as run_loadtest
        return run_loadtest(args)
    elif args.command == "keygen":
        from nestvec.cluster.auth import new_key
        key, line = new_key(args.role, args.name)
        print(f"# give this key to the client (shown once; only its digest is kept):\n{key}\n"
              f"# add this line to the server's --api-keys-file:\n{line}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
