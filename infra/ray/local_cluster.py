"""Hold a two-node Ray cluster on 127.0.0.1 until SIGTERM or SIGINT.

Started by infra/ray/local-cluster.sh. Each node is its own raylet process
with its own CPUs, so Ray schedules across them exactly as across machines.
Ray's `ray start` cannot do this on one machine without advertising the
machine's network address: it rewrites 127.0.0.1 to that address for
multi-node clusters. Ray's `ray.cluster_utils.Cluster` keeps every node on
loopback when multi-node mode is off (RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0),
so this script uses it.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

os.environ["RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"] = "0"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=6389, help="port of the head's GCS server")
    parser.add_argument("--cpus-per-node", type=int, default=1, help="CPUs each node offers to Ray")
    parser.add_argument("--temp-dir", required=True, help="Ray's temp folder for this cluster")
    parser.add_argument("--ready-file", required=True, help="file that receives the address once both nodes are up")
    args = parser.parse_args()

    from ray.cluster_utils import Cluster

    stop = threading.Event()
    for signal_number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signal_number, lambda *_: stop.set())

    cluster = Cluster(initialize_head=True, head_node_args={
        "num_cpus": args.cpus_per_node, "node_ip_address": "127.0.0.1", "include_dashboard": False,
        "gcs_server_port": args.port, "temp_dir": args.temp_dir,
        "resources": {"shoprec_head_node": 1},
    })
    try:
        cluster.add_node(num_cpus=args.cpus_per_node, node_ip_address="127.0.0.1",
                         resources={"shoprec_second_node": 1})
        cluster.wait_for_nodes()
        Path(args.ready_file).write_text(cluster.address + "\n", encoding="utf-8")
        print(f"Ray cluster with 2 nodes is up at {cluster.address}", flush=True)
        stop.wait()
    finally:
        cluster.shutdown()
        Path(args.ready_file).unlink(missing_ok=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
