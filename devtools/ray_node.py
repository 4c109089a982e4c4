"""`ray start`, kept on the loopback interface: the tests' Ray nodes listen on 127.0.0.1 only.

    python devtools/ray_node.py --head --block --node-ip-address=127.0.0.1 --port=P ...

Ray turns a loopback --node-ip-address into the machine's routable address so that other machines
can reach the node; a test cluster must not be reachable from elsewhere, so this keeps the address
given. (Drivers get the same effect from RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0, which
devtools.launcher.RayCluster.app_env sets for the app.) For tests and benchmarks only: a real cluster's
nodes are started with plain `ray start`.
"""

import sys

import ray._private.services as services

services.resolve_ip_for_localhost = lambda host: host

from ray.scripts.scripts import main  # noqa: E402

sys.argv = ["ray", "start", *sys.argv[1:]]
main()
