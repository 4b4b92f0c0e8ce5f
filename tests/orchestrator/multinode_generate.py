"""Helper for test_ray_generate: generate on a two-node Ray cluster on this machine.

Run as ``python multinode_generate.py OUT CONFIG_JSON``; it starts its own
cluster (``ray.cluster_utils.Cluster``, two nodes of one CPU each), so it runs
in a subprocess, apart from the test session's Ray. It prints one JSON line:
the alive node ids and, per part made, the node it ran on.
"""

from __future__ import annotations

import json
import logging
import os
import sys


def main(out: str, config: dict) -> dict:
    from ray.cluster_utils import Cluster

    from orchestrator.generate.dataset import generate
    from orchestrator.runtime.ray import shutdown_ray

    os.environ.pop("RAY_ADDRESS", None)
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False},
    )
    try:
        cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        result = generate(out, workers=2, address=cluster.address, **config)
        import ray

        nodes = sorted(n["NodeID"] for n in ray.nodes() if n.get("Alive"))
        return {
            "cluster_nodes": nodes,
            "ran_on": {f"{p}:{k}": w["node_id"] for (p, k), w in result.ran_on.items()},
        }
    finally:
        shutdown_ray()
        cluster.shutdown()


if __name__ == "__main__":
    logging.basicConfig(level=logging.WARNING)
    report = main(sys.argv[1], json.loads(sys.argv[2]))
    sys.stdout.write("MULTINODE " + json.dumps(report) + "\n")
