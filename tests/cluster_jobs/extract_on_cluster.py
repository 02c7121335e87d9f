"""Run the extraction on a local multi-node Ray cluster, then on one node, in this process.

Used by ``test_multinode.py`` as ``python -m tests.cluster_jobs.extract_on_cluster VIDEOS
MULTI_OUT SINGLE_OUT --nodes N``: the pytest process may already hold a Ray instance, and a
driver connects to one cluster at a time. Prints one JSON line: the multi-node cluster's
node ids and both runs' summaries.
"""

from __future__ import annotations

import argparse
import json

import ray
from ray.cluster_utils import Cluster

from lvmae.config import ExtractConfig
from pipelines.extract import run_extraction

# One CPU per decode task (the tiny encoder runs inside it), so no node decodes more than
# one video at a time and the videos spread over the nodes.
CONFIG = ExtractConfig(batch_size=4, rows_per_file=8, decode_cpus=1.0, decode_memory_mb=256)


def extract_multi_node(videos: str, out: str, nodes: int) -> tuple[list[str], dict]:
    """``nodes`` nodes of 1 CPU each (the head included); returns their ids and the summary."""
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 1, "include_dashboard": False},
    )
    try:
        for _ in range(nodes - 1):
            cluster.add_node(num_cpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        try:
            node_ids = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
            summary = run_extraction(videos, out, CONFIG, progress=False, track=False)
        finally:
            ray.shutdown()
    finally:
        cluster.shutdown()
    return node_ids, summary.to_dict()


def extract_single_node(videos: str, out: str) -> dict:
    """One local node with 2 CPUs: two decode tasks at a time."""
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:
        return run_extraction(videos, out, CONFIG, progress=False, track=False).to_dict()
    finally:
        ray.shutdown()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("videos")
    parser.add_argument("multi_out")
    parser.add_argument("single_out")
    parser.add_argument("--nodes", type=int, default=3)
    args = parser.parse_args()
    node_ids, multi = extract_multi_node(args.videos, args.multi_out, args.nodes)
    single = extract_single_node(args.videos, args.single_out)
    print(json.dumps({"node_ids": node_ids, "multi": multi, "single": single}))


if __name__ == "__main__":
    main()
