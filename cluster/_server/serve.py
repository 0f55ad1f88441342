"""Server assembly: Ray, the coordinator, the gRPC gateway, health and reflection.

Small named steps (as in gRPC's health-checking example) so the CLI, the demo
and the tests all start the same server:
- `start_ray`: embedded local cluster, or attach to one;
- `Gateway`: the grpc.aio server with VectorSearch, health and reflection;
- `GatewayThread`: a Gateway on its own event loop in a thread (tests, demo);
- `serve`: the blocking `nestvec serve` main loop with graceful signal handling;
  with `http_port`, the HTTP/JSON API (http_api.py) beside the gateway, in the same
  process and event loop, transcoding to it over a private Unix socket.
"""
from __future__ import annotations

import asyncio
import logging
import os
import secrets
import signal
import sys
import tempfile
import threading
from dataclasses import dataclass, field

import grpc
import ray
from ray._private import ray_constants
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from nestvec.cluster._storage import datadir
from nestvec.cluster._server.admission import Admission
from nestvec.cluster._server.auth import KeyStore
from nestvec.cluster._distributed.coordinator import DEFAULT_NAMESPACE, Coordinator
from nestvec.cluster._server.gateway import add_to_server, make_servicer
from nestvec.cluster._engine.limits import DEFAULT_LIMITS, Limits
from nestvec.cluster._server.metrics import GatewayMetrics
from nestvec.cluster._distributed.placement import Placement
from nestvec.cluster._server.security import DEFAULT_HOST, DEFAULT_PORT, TlsConfig, check_exposure
from nestvec.v1 import nestvec_pb2

log = logging.getLogger("nestvec.server")

SERVICE_NAME = nestvec_pb2.DESCRIPTOR.services_by_name["VectorSearch"].full_name


RAY_TOKEN_FILE = "ray-auth-token"  # in the data directory: the embedded cluster's Ray token


def start_ray(address: str | None = None, namespace: str = DEFAULT_NAMESPACE,
              num_cpus: int | None = None, data_dir: str | None = None) -> None:
    """Start an embedded single-machine Ray cluster, or attach to `address`.

    The embedded cluster runs with Ray's token authentication: without it any local
    process could join it and read, write and run code in the shards with no API key.
    The token is made once per data directory (mode 0600; a private temporary folder
    for --in-memory). An explicit RAY_AUTH_MODE in the environment wins (the tests
    and CI disable it for their own clusters)."""
    if ray.is_initialized():
        return
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    if address:  # a real cluster: its operator gives us its token, as Ray documents
        ray.init(address=address, namespace=namespace, log_to_driver=False)
        return
    if "RAY_AUTH_MODE" not in os.environ:
        os.environ["RAY_AUTH_MODE"] = "token"
        os.environ["RAY_AUTH_TOKEN_PATH"] = _ray_token(data_dir)
        # Ray read its config when imported; refresh it as Ray's own token set-up does
        # (ray._private.authentication.authentication_token_setup._enable_token_auth).
        from ray._raylet import AuthenticationTokenLoader, Config
        Config.initialize("")
        AuthenticationTokenLoader.instance().reset_cache()
    # A one-machine cluster should talk over loopback only. Ray otherwise binds
    # and dials the host's external address; its single-node mode (the default
    # on macOS) uses 127.0.0.1. Workers inherit the variable; this process read
    # Ray's constants at import, so set the constant too.
    os.environ.setdefault("RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER", "0")
    ray_constants.ENABLE_RAY_CLUSTER = os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] != "0"
    ray.init(address="local", namespace=namespace, num_cpus=num_cpus,
             include_dashboard=False, log_to_driver=False)


def _ray_token(data_dir: str | None) -> str:
    """The path of a 0600 file holding this cluster's Ray token, made if missing."""
    folder = data_dir or tempfile.mkdtemp(prefix="nestvec-ray-")  # mkdtemp: mode 0700
    path = os.path.join(folder, RAY_TOKEN_FILE)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        os.chmod(path, 0o600)
        return path
    with os.fdopen(fd, "w") as f:
        f.write(secrets.token_hex(32))
        f.flush()
        os.fsync(f.fileno())
    return path


class Gateway:
    """The grpc.aio server. `start()` binds and returns the bound port."""

    def __init__(self, coordinator: Coordinator, host: str = DEFAULT_HOST, port: int = DEFAULT_PORT,
                 limits: Limits = DEFAULT_LIMITS, keys: KeyStore | None = None,
                 tls: TlsConfig | None = None, metrics: GatewayMetrics | None = None,
                 batch_window: float = 0.001, reuse_port: bool = False,
                 internal_socket: str | None = None):
        self.coordinator = coordinator
        # Also listen, in plaintext, on this Unix socket (in a 0700 folder): the HTTP API's
        # way in (http_api.py), through the same servicer, interceptors and limits.
        self.internal_socket = internal_socket
        # reuse_port: gateway replicas share one port (replicas.py); a lone gateway
        # refuses a port already taken rather than silently sharing it.
        self.reuse_port = reuse_port
        self.batch_window = batch_window
        self.host, self.port = host, port
        self.limits, self.keys, self.tls = limits, keys, tls
        self.metrics = metrics or GatewayMetrics()
        self.health = health.aio.HealthServicer()
        self.server: grpc.aio.Server | None = None

    async def start(self) -> int:
        opts = [("grpc.max_receive_message_length", self.limits.max_message_bytes),
                ("grpc.max_send_message_length", self.limits.max_message_bytes),
                ("grpc.so_reuseport", int(self.reuse_port)),
                # A fixed window per call (limits.py): what a caller can park here unread.
                ("grpc.http2.bdp_probe", 0),
                ("grpc.http2.lookahead_bytes", self.limits.stream_window_bytes)]
        # Both refuse before a request body is read (admission.py): the key check on the
        # metadata, and gRPC's own cap on calls in progress, server-wide.
        interceptors = [Admission(self.keys, self.metrics)] if self.keys is not None and len(self.keys) else []
        self.server = grpc.aio.server(options=opts, interceptors=interceptors,
                                      maximum_concurrent_rpcs=self.limits.max_concurrent + _CALL_HEADROOM)
        add_to_server(make_servicer(self.coordinator, self.keys, self.limits, self.metrics,
                                    self.batch_window), self.server)
        # Health checks and reflection (the schema only) stay open without a key.
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        reflection.enable_server_reflection(
            [SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME], self.server)
        bind = f"{_host_for_bind(self.host)}:{self.port}"
        self.port = (self.server.add_secure_port(bind, self.tls.server_credentials()) if self.tls
                     else self.server.add_insecure_port(bind))
        if self.port == 0:
            raise OSError(f"could not bind {self.host}:{self.port}")
        if self.internal_socket and not self.server.add_insecure_port(f"unix:{self.internal_socket}"):
            raise OSError(f"could not bind unix:{self.internal_socket}")
        await self.server.start()
        for name in ("", SERVICE_NAME):
            await self.health.set(name, health_pb2.HealthCheckResponse.SERVING)
        return self.port

    async def stop(self, grace: float = 10.0) -> None:
        """Stop accepting calls, let in-flight calls finish within `grace` seconds."""
        if self.server is None:
            return
        await self.health.enter_graceful_shutdown()
        await self.server.stop(grace)
        self.server = None


# gRPC's hard cap sits above the gateway's own limit (CallGuard, whose refusal says what
# to do): room for health checks, reflection and calls on their way out.
_CALL_HEADROOM = 64


def _host_for_bind(host: str) -> str:
    return f"[{host}]" if ":" in host and not host.startswith("[") else host


class GatewayThread:
    """A Gateway running on its own asyncio loop in a daemon thread."""

    def __init__(self, coordinator: Coordinator, host: str = DEFAULT_HOST, port: int = 0, **kwargs):
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, name="nestvec-gateway",
                                        daemon=True)
        self._thread.start()
        self.gateway = Gateway(coordinator, host, port, **kwargs)
        self.port = self._call(self.gateway.start())
        self.address = f"{host}:{self.port}"

    def _call(self, coro, timeout: float = 60):
        return asyncio.run_coroutine_threadsafe(coro, self._loop).result(timeout)

    def stop(self, grace: float = 5.0) -> None:
        if self._loop.is_running():
            self._call(self.gateway.stop(grace))
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(10)


@dataclass
class ServeOptions:
    """Everything `nestvec serve` takes (the CLI fills it from flags and the environment)."""

    host: str = DEFAULT_HOST
    port: int = DEFAULT_PORT
    shards: int = 1
    shard_threads: int = 1
    ray_address: str | None = None
    namespace: str = DEFAULT_NAMESPACE
    data_dir: str | None = None
    fsync: str = "always"
    fsync_interval: float = 0.05
    limits: Limits = field(default_factory=Limits)
    keys: KeyStore | None = None
    tls: TlsConfig | None = None
    insecure: bool = False
    metrics_port: int | None = None
    http_port: int | None = None  # the HTTP/JSON API on host:PORT (0: any free port); None: off
    batch_window: float = 0.001
    grace: float = 10.0
    placement: Placement = field(default_factory=Placement)
    gateways: int = 1


def serve(opts: ServeOptions) -> None:
    """Run Ray (embedded or attached), the coordinator and the gateway until SIGTERM/SIGINT.

    Refuses an unsafe binding before starting anything (security.check_exposure).
    With a data dir, every collection in it is reopened (shards recover from
    their snapshots and logs) before the gateway starts taking calls, and every
    shard snapshots on a clean shutdown.
    """
    has_keys = opts.keys is not None and len(opts.keys) > 0
    if opts.http_port is not None and opts.gateways > 1:
        raise ValueError("--http-port needs a single gateway (--gateways 1)")
    for warning in check_exposure(opts.host, has_keys, opts.tls, opts.insecure):
        print(f"nestvec serve: warning: {warning}", file=sys.stderr, flush=True)
    data_dir = datadir.open_data_dir(opts.data_dir) if opts.data_dir else None
    start_ray(opts.ray_address, opts.namespace, data_dir=data_dir)
    coordinator = Coordinator(namespace=opts.namespace, default_shards=opts.shards,
                              create_catalog=True, data_dir=data_dir, fsync=opts.fsync,
                              fsync_interval=opts.fsync_interval, limits=opts.limits,
                              shard_threads=opts.shard_threads, placement=opts.placement)
    opened = coordinator.open_collections()
    if opened:
        log.info("reopened %d collections from %s", len(opened), data_dir)
    if opts.gateways > 1:
        _serve_replicas(opts, coordinator)
        if data_dir:
            coordinator.checkpoint(timeout=600)
        ray.shutdown()
        return
    metrics = GatewayMetrics(coordinator)
    if opts.metrics_port is not None:
        bound = metrics.serve(opts.metrics_port)
        print(f"metrics on http://127.0.0.1:{bound}/metrics", flush=True)
    http = None
    if opts.http_port is not None:
        from nestvec.cluster._server.http_api import HttpApi  # aiohttp only when asked for
        http = HttpApi(opts.host, opts.http_port, opts.limits, opts.keys, opts.tls, opts.grace)
    gateway = Gateway(coordinator, opts.host, opts.port, opts.limits, opts.keys, opts.tls, metrics,
                      opts.batch_window, internal_socket=http.grpc_socket if http else None)
    asyncio.run(_serve_async(gateway, opts.grace, http))
    if data_dir:
        coordinator.checkpoint(timeout=600)
    ray.shutdown()


def _serve_replicas(opts: ServeOptions, coordinator: Coordinator) -> None:
    """`--gateways N`: N gateway actors on this node share the port; this process waits."""
    from nestvec.cluster._server import gateway_replicas as replicas

    handles, bound = replicas.start_replicas(
        opts.gateways, opts.namespace, opts.host, opts.port, opts.limits, opts.keys, opts.tls,
        opts.batch_window, opts.metrics_port)
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    settings = coordinator.settings
    durability = (f"data in {settings['data_dir']}, fsync {settings['fsync']}" if settings["data_dir"]
                  else "in memory only: nothing survives a restart")
    print(f"nestvec serving on {opts.host}:{bound} with {opts.gateways} gateway replicas "
          f"({'TLS' if opts.tls else 'plaintext'}; Ray namespace {opts.namespace!r}; {durability}); "
          "Ctrl-C or SIGTERM stops it", flush=True)
    while not stop.wait(1.0):
        pass
    log.info("shutting down %d gateway replicas (grace %.0fs)", len(handles), opts.grace)
    replicas.stop_replicas(handles, opts.grace)


async def _serve_async(gateway: Gateway, grace: float, http=None) -> None:
    bound = await gateway.start()
    if http is not None:
        try:
            http_bound = await http.start()
        except BaseException:
            await gateway.stop(0)
            await http.stop()
            raise
        print(f"HTTP API on {http.scheme}://{_host_for_bind(gateway.host)}:{http_bound}/v1 "
              f"(docs: /docs, spec: /openapi.json)", flush=True)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    settings = gateway.coordinator.settings
    durability = (f"data in {settings['data_dir']}, fsync {settings['fsync']}" if settings["data_dir"]
                  else "in memory only: nothing survives a restart")
    print(f"nestvec serving on {gateway.host}:{bound} ({'TLS' if gateway.tls else 'plaintext'}; "
          f"Ray namespace {gateway.coordinator.namespace!r}; {durability}); "
          "Ctrl-C or SIGTERM stops it", flush=True)
    await stop.wait()
    log.info("shutting down: finishing in-flight calls (grace %.0fs)", grace)
    if http is not None:  # HTTP first: its in-flight requests still need the gateway
        await http.stop()
    await gateway.stop(grace)
