"""Real Ray nodes on this machine: a head and workers, each its own `ray start --block` process tree.

Used by tests/test_multinode.py and bench/bench_cluster.py. Every node listens on
127.0.0.1 with ports picked here (never Ray's fixed defaults, which other
clusters on the machine may hold); each node is killed by its own process tree
(`ray stop` would stop every Ray cluster on the host).
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

from proc_util import descendants, free_port, kill9

BIN = os.path.dirname(sys.executable)
RAY = os.path.join(BIN, "ray")
# `ray start` through tests/ray_loopback.py, so every node stays on 127.0.0.1.
RAY_START = [sys.executable, os.path.join(os.path.dirname(os.path.abspath(__file__)), "ray_loopback.py"),
             "start"]
# The project's Python first on PATH: `ray job submit` entrypoints run `python` from it.
ENV = dict(os.environ, RAY_AUTH_MODE="disabled", RAY_USAGE_STATS_ENABLED="0",
           RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER="0",  # loopback addresses stay loopback (ray_loopback.py)
           PATH=BIN + os.pathsep + os.environ.get("PATH", ""),
           # Notice a dead node in ~3 s instead of Ray's default ~30 s.
           RAY_health_check_initial_delay_ms="1000", RAY_health_check_period_ms="1000",
           RAY_health_check_timeout_ms="1000", RAY_health_check_failure_threshold="3")


# Every port a node binds, picked here: two nodes starting at once on one host
# otherwise race for the same one ("bind: Address already in use").
_PORT_FLAGS = ("node-manager-port", "object-manager-port", "metrics-export-port",
               "runtime-env-agent-port", "dashboard-agent-grpc-port", "dashboard-agent-listen-port")


class RayNodes:
    """Start, kill and restart the nodes of one Ray cluster; `stop()` kills them all."""

    def __init__(self, log_dir: str, num_cpus: int = 2):
        self.log_dir = log_dir
        self.num_cpus = num_cpus
        self.temp = tempfile.mkdtemp(prefix="nvm", dir="/tmp")  # socket paths must stay short
        self.procs: dict[str, subprocess.Popen] = {}
        self.resources: dict[str, dict] = {}
        self.address = ""
        self.dashboard = ""

    def _popen(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(os.path.join(self.log_dir, f"ray-{name}.log"), "ab")
        proc = subprocess.Popen([*RAY_START, "--block", "--node-ip-address=127.0.0.1",
                                 f"--num-cpus={self.num_cpus}", f"--temp-dir={self.temp}",
                                 *[f"--{flag}={free_port()}" for flag in _PORT_FLAGS],
                                 "--disable-usage-stats", *args],
                                stdout=log, stderr=subprocess.STDOUT, env=ENV, start_new_session=True)
        self.procs[name] = proc
        return proc

    def start_head(self, resources: dict, dashboard: bool = True) -> str:
        port = free_port()
        args = [f"--port={port}", f"--resources={json.dumps(resources)}",
                f"--ray-client-server-port={free_port()}"]
        if dashboard:  # the job server (`ray job submit`) lives in the dashboard
            dport = free_port()
            args += ["--include-dashboard=true", "--dashboard-host=127.0.0.1", f"--dashboard-port={dport}"]
            self.dashboard = f"http://127.0.0.1:{dport}"
        else:
            args += ["--include-dashboard=false"]
        self.address = f"127.0.0.1:{port}"
        self.resources["head"] = resources
        self._popen("head", ["--head", *args])
        self.wait_nodes(list(resources))  # workers join a running head only
        return self.address

    def start_worker(self, name: str, resources: dict | None = None) -> None:
        resources = resources if resources is not None else self.resources[name]
        self.resources[name] = resources
        self._popen(name, [f"--address={self.address}", f"--resources={json.dumps(resources)}"])

    def wait_nodes(self, resources: list[str], timeout: float = 180) -> None:
        """Until every named custom resource is in the cluster (its node has joined)."""
        end = time.monotonic() + timeout
        while True:
            try:
                out = subprocess.run([sys.executable, "-c", _PROBE, self.address], env=ENV,
                                     capture_output=True, text=True, timeout=60)
            except subprocess.TimeoutExpired:
                out = subprocess.CompletedProcess([], 1, "", "")
            have = set(json.loads(out.stdout.strip().splitlines()[-1])) if out.returncode == 0 else set()
            if set(resources) <= have:
                return
            dead = [n for n, p in self.procs.items() if p.poll() is not None]
            if dead or time.monotonic() > end:
                raise AssertionError(f"Ray nodes not up (dead: {dead}; have {sorted(have)}); logs: "
                                     + self.logs())
            time.sleep(1)

    def kill(self, name: str) -> None:
        """SIGKILL a node's whole process tree: raylet, workers (with their actors), agents."""
        proc = self.procs.pop(name)
        kill9([proc.pid] + descendants(proc.pid))

    def stop(self) -> None:
        for name in list(self.procs)[::-1]:
            try:
                self.kill(name)
            except AssertionError:
                pass
        shutil.rmtree(self.temp, ignore_errors=True)  # Ray's session files and sockets

    def logs(self, tail: int = 3000) -> str:
        out = []
        for f in sorted(os.listdir(self.log_dir)):
            if f.startswith("ray-"):
                with open(os.path.join(self.log_dir, f), errors="replace") as fh:
                    out.append(f"--- {f}\n{fh.read()[-tail:]}")
        return "\n".join(out)


# Prints the custom resources of the live nodes (as a JSON list), from a throwaway driver.
_PROBE = """
import json, sys, ray
ray.init(address=sys.argv[1], log_to_driver=False)
names = {r for n in ray.nodes() if n["Alive"] for r in n["Resources"]}
print(json.dumps(sorted(names)))
"""
