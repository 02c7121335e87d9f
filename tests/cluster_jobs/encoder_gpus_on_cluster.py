"""A real encoder on a local cluster whose only GPU is on a worker node (a logical GPU: the
head has none, as on KubeRay), in this process.

Used by ``test_encoder_gpus.py`` as ``python -m tests.cluster_jobs.encoder_gpus_on_cluster
VIDEOS CHECKPOINT OUT``. Runs LanguageBind (a tiny local checkpoint) twice: at the default
``gpus_per_actor`` and at ``0``. Prints one JSON line: the GPU node's id, and for each run
its summary and the nodes of its encoder actors.
"""

from __future__ import annotations

import argparse
import json

import ray
from ray.cluster_utils import Cluster

from lvmae.config import ExtractConfig
from pipelines.extract import run_extraction


def encoder_actors() -> dict[str, str]:
    """Ray Data's map workers (the encoder actors; tiny has none): actor id → node id. Read
    from the GCS (the state API needs the dashboard, which this cluster does not run)."""
    return {
        actor_id: info["Address"]["NodeID"]
        for actor_id, info in ray._private.state.actors().items()
        if "MapWorker" in info["ActorClassName"]
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("videos")
    parser.add_argument("checkpoint")
    parser.add_argument("out")
    args = parser.parse_args()
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 2, "include_dashboard": False}
    )
    try:
        gpu_node = cluster.add_node(num_cpus=1, num_gpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        result = {"gpu_node": gpu_node.node_id}
        try:
            for name, gpus in (("default", None), ("cpu", 0.0)):
                config = ExtractConfig(
                    encoder="languagebind-video-ft",
                    encoder_checkpoint=args.checkpoint,
                    gpus_per_actor=gpus,
                    decode_memory_mb=256,
                )
                before = encoder_actors()
                summary = run_extraction(
                    args.videos, f"{args.out}/{name}", config, progress=False, track=False
                )
                actors = [n for i, n in encoder_actors().items() if i not in before]
                result[name] = {"summary": summary.to_dict(), "actors": actors}
        finally:
            ray.shutdown()
    finally:
        cluster.shutdown()
    print(json.dumps(result))


if __name__ == "__main__":
    main()
