"""`ray start` for several Ray nodes on one machine, all on 127.0.0.1.

Ray 2.60 turns a loopback address into the host's external one
(services.resolve_ip_for_localhost) unless RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0,
and with that setting it refuses to start worker nodes. Tests must talk over
loopback only. So the nodes' environment sets RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0
(drivers, job entrypoints and workers then all dial 127.0.0.1), and this runs
Ray's own CLI with the two checks that stand in the way switched off in this
process only: every node registers, and is dialled, as 127.0.0.1.
"""
import sys

from ray._private import ray_constants, services

services.resolve_ip_for_localhost = lambda host: host
ray_constants.ENABLE_RAY_CLUSTER = True  # allow `ray start --address` (a worker node)

from ray.scripts.scripts import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main())
