"""The `nestvec` command: `serve`, `status`, `ingest`, `batch-search`, `demo`, `keygen` and `loadtest`."""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import sys

from nestvec.cluster._server.auth import ROLES, KeyFileError
from nestvec.cluster._storage.datadir import DataDirError
from nestvec.cluster._engine.limits import Limits
from nestvec.cluster._server.security import DEFAULT_HOST, DEFAULT_PORT, ExposureRefused
from nestvec.cluster._storage.wal import FSYNC_POLICIES
from nestvec.errors import InvalidArgument, NestvecError

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
    s.add_argument("--gateways", type=int, default=1,
                   help="gateway replicas: N > 1 runs N gRPC gateways as Ray actors on this node, "
                        "all on --port (SO_REUSEPORT), for query throughput past one process")

    pl = s.add_argument_group("placement (see deploy/README.md)")
    pl.add_argument("--placement", default="default",
                    help="where shards run: default (Ray's scheduler), spread (over as many nodes "
                         "as possible), or resources:A,B,... (shard i needs custom resource i mod n, "
                         "so it always runs, and restarts, on the node started with it)")
    pl.add_argument("--shard-cpus", type=float, default=0.0,
                    help="Ray CPUs each shard actor reserves (default 0: no limit on shards per node)")
    pl.add_argument("--shard-memory", type=int, default=0,
                    help="Ray memory (bytes) each shard actor reserves (default 0: none)")

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
    s.add_argument("--http-port", type=int, default=None,
                   help="also serve the HTTP/JSON API (docs/http.md) on --host:PORT, with the same "
                        "keys, TLS and limits (0: any free port; default: off)")

    lim = s.add_argument_group("limits (see docs/security.md)")
    for f in dataclasses.fields(Limits):
        lim.add_argument("--" + f.name.replace("_", "-"), type=int, default=f.default,
                         help=f"default {f.default}")


def _client_args(p) -> None:
    p.add_argument("--address", default=f"{DEFAULT_HOST}:{DEFAULT_PORT}",
                   help="the nestvec gateway (default %(default)s)")
    p.add_argument("--api-key", default=os.environ.get("NESTVEC_API_KEY"),
                   help="API key (default: $NESTVEC_API_KEY)")
    p.add_argument("--tls-ca", default=None, help="PEM CA that signed the server's certificate (TLS)")


def _status_parser(sub) -> None:
    st = sub.add_parser("status", help="each collection's shards: node, rows, memory, health")
    _client_args(st)
    st.add_argument("--collection", default=None, help="only this collection")


def _ray_job_args(p) -> None:
    p.add_argument("--ray-address", default=None,
                   help="the Ray cluster (default: $RAY_ADDRESS, which `ray job submit` sets, else auto)")
    p.add_argument("--namespace", default="nestvec", help="Ray namespace of the nestvec cluster")
    p.add_argument("--collection", required=True)
    p.add_argument("--id-column", default="id", help="Parquet id column (default %(default)s)")
    p.add_argument("--vector-column", default="vector",
                   help="Parquet vector column, list or fixed-size list of floats (default %(default)s)")
    p.add_argument("--task-cpus", type=float, default=0.5,
                   help="Ray CPUs per Ray Data task (default %(default)s)")


def _bulk_parsers(sub) -> None:
    i = sub.add_parser("ingest", help="bulk-load Parquet or .npy files with Ray Data (a Ray job; no gRPC)")
    i.add_argument("path", help="a .parquet/.npy file or a directory of them")
    _ray_job_args(i)
    i.add_argument("--batch-rows", type=int, default=4096, help="rows per upsert (default %(default)s)")
    i.add_argument("--id-offset", type=int, default=0,
                   help=".npy inputs: id of the first row of the first file (default %(default)s)")
    i.add_argument("--metric", default=None,
                   help="create the collection if it does not exist, with this metric and the input's dim")
    i.add_argument("--shards", type=int, default=None, help="shards of a collection created here")

    b = sub.add_parser("batch-search", help="search query vectors from Parquet/.npy with Ray Data, "
                                            "write ids and scores to Parquet (a Ray job; no gRPC)")
    b.add_argument("queries", help="a .parquet/.npy file or a directory of them")
    b.add_argument("--output", required=True, help="directory to write Parquet results into")
    _ray_job_args(b)
    b.add_argument("-k", type=int, default=10)
    b.add_argument("--dim", type=int, default=0, help="prefix dim to rank at (0: full)")
    b.add_argument("--funnel", default=None, type=parse_funnel,
                   help="shortlist stages DIM:KEEP[,DIM:KEEP...], e.g. 64:400")
    b.add_argument("--batch-rows", type=int, default=256, help="queries per search (default %(default)s)")


def parse_funnel(text: str) -> list[tuple[int, int]]:
    """'64:400,128:200' -> [(64, 400), (128, 200)]."""
    try:
        return [tuple(int(x) for x in part.split(":")) for part in text.split(",") if part.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"funnel {text!r}: use DIM:KEEP[,DIM:KEEP...]") from None


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="nestvec", description=__doc__)
    p.add_argument("--log-level", default="INFO")
    sub = p.add_subparsers(dest="command", required=True)
    _serve_parser(sub)

    d = sub.add_parser("demo", help="load a WordNet sample and search it at several prefix dims")
    d.add_argument("--address", default=None,
                   help="a running nestvec server (host:port); default: start an embedded one")
    d.add_argument("--shards", type=int, default=2)

    _status_parser(sub)
    _bulk_parsers(sub)

    r = sub.add_parser("repair-wal", help="cut a corrupt write-ahead log at its first bad record, "
                       "keeping a copy of the cut bytes (docs/durability.md); the server must be stopped")
    r.add_argument("logs", nargs="+", metavar="WAL", help="a shard's wal-<seq>.log (from the error message)")

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
    from nestvec.cluster._server.auth import KeyStore
    from nestvec.cluster._server.security import TlsConfig
    from nestvec.cluster._distributed.placement import Placement
    from nestvec.cluster._server.serve import ServeOptions

    if args.gateways < 1:
        raise InvalidArgument(f"--gateways must be at least 1, got {args.gateways}")
    if args.http_port is not None and args.gateways > 1:
        raise InvalidArgument("--http-port needs a single gateway (--gateways 1)")
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
        insecure=args.insecure, metrics_port=args.metrics_port, http_port=args.http_port,
        batch_window=args.batch_window_ms / 1000, grace=args.grace,
        placement=Placement.parse(args.placement, args.shard_cpus, args.shard_memory),
        gateways=args.gateways)


def _run(args) -> int:
    if args.command == "serve":
        from nestvec.cluster._server.serve import serve
        serve(_serve_options(args))
    elif args.command == "status":
        from nestvec.cluster._ops.status import print_status
        print_status(args.address, args.collection, args.api_key, args.tls_ca)
    elif args.command == "ingest":
        from nestvec.cluster._ops import bulk
        _init_job_ray(args.namespace, args.ray_address)
        report = bulk.ingest(args.collection, args.path, namespace=args.namespace,
                             id_column=args.id_column, vector_column=args.vector_column,
                             batch_rows=args.batch_rows, id_offset=args.id_offset,
                             create_metric=args.metric, create_shards=args.shards,
                             task_cpus=args.task_cpus, progress=_say)
        _say(report.line())
    elif args.command == "batch-search":
        from nestvec.cluster._ops import bulk
        _init_job_ray(args.namespace, args.ray_address)
        report = bulk.batch_search(args.collection, args.queries, args.output,
                                   namespace=args.namespace, k=args.k, dim=args.dim or None,
                                   funnel=args.funnel, id_column=args.id_column,
                                   vector_column=args.vector_column, batch_rows=args.batch_rows,
                                   task_cpus=args.task_cpus, progress=_say)
        _say(report.line())
    elif args.command == "demo":
        from nestvec.cluster._ops.demo import run
        run(address=args.address, shards=args.shards)
    elif args.command == "loadtest":
        from nestvec.cluster.loadtest.cli import run as run_loadtest
        return run_loadtest(args)
    elif args.command == "repair-wal":
        from nestvec.cluster._storage import datadir
        from nestvec.cluster._storage.wal import repair_log
        for path in args.logs:
            if datadir.folder_locked(os.path.dirname(os.path.abspath(path))):
                raise DataDirError(f"{path}: its shard is running (the shard folder is locked): "
                                   "stop the server first")
            _say(repair_log(path).line())
    elif args.command == "keygen":
        from nestvec.cluster._server.auth import new_key
        key, line = new_key(args.role, args.name)
        print(f"# give this key to the client (shown once; only its digest is kept):\n{key}\n"
              f"# add this line to the server's --api-keys-file:\n{line}")
    return 0


def _say(line: str) -> None:
    print(line, flush=True)


def _init_job_ray(namespace: str, address: str | None = None) -> None:
    """Join the Ray cluster this runs on (inside `ray job submit`, $RAY_ADDRESS is set)."""
    import ray

    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if not ray.is_initialized():
        ray.init(address=address or os.environ.get("RAY_ADDRESS") or "auto", namespace=namespace,
                 log_to_driver=False)
    from ray.data import DataContext
    DataContext.get_current().enable_progress_bars = False  # our own progress lines instead


if __name__ == "__main__":
    sys.exit(main())
