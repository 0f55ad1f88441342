"""The load tester behind `nestvec loadtest` (docs/load-testing.md).

histogram: mergeable log-bucketed latency histogram; workload: what to send;
generator: one asyncio gRPC load generator (closed or open loop); runner: many
generators in processes or Ray actors; results: the exact merge; report: table,
JSON, PNG; ramp: knee finding; verify: acknowledged writes against the server;
cli: the subcommand's flags.
"""
from nestvec.cluster.loadtest.generator import Connection, Plan
from nestvec.cluster.loadtest.histogram import Histogram
from nestvec.cluster.loadtest.results import LoadResult
from nestvec.cluster.loadtest.workload import QuerySet, Workload

__all__ = ["Connection", "Histogram", "LoadResult", "Plan", "QuerySet", "Workload"]
