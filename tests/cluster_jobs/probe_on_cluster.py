"""Run the probe stage on a local multi-node Ray cluster shaped like the documented one: a
head with no GPU and the ``lvmae_driver`` resource, a worker with a (logical) GPU.

Used by ``test_probe_placement.py`` as ``python -m tests.cluster_jobs.probe_on_cluster
WORKDIR`` (the pytest process may already hold a Ray instance, and a driver connects to one
cluster at a time). Prints one JSON line: the node ids, the results rows' placement, and
where the feature table lives once a task has read it.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import ray
from ray.cluster_utils import Cluster

from lvmae.config import ProbeSection
from pipelines.probe import compute_features, run_probe
from pipelines.probe_tasks import load_features_remote
from tests.pipelines.test_probe import probe_inputs


def inputs(root: Path) -> tuple[str, str, str]:
    """A segments table, its labels file and a tiny checkpoint under ``root``."""
    return probe_inputs(root)


def token_bytes(cache: str) -> int:
    """Bytes of the cache's float32 token outputs (read from two small columns only)."""
    table = pq.read_table(cache, columns=["num_tokens", "mean"])
    width = len(table["mean"][0])
    return int(np.sum(table["num_tokens"].to_numpy())) * width * 4


def main() -> None:
    root = Path(sys.argv[1])
    emb, labels, ckpt = inputs(root)
    cluster = Cluster(
        initialize_head=True,
        head_node_args={"num_cpus": 0, "num_gpus": 0, "resources": {"lvmae_driver": 1},
                        "include_dashboard": False},
    )  # fmt: skip
    try:
        worker = cluster.add_node(num_cpus=2, num_gpus=1)
        cluster.wait_for_nodes()
        ray.init(address=cluster.address, log_to_driver=False)
        try:
            head_id = next(n["NodeID"] for n in ray.nodes() if n["Resources"].get("lvmae_driver"))
            section = ProbeSection(probes=["linear"], baselines=["mean-pool"], seeds=2,
                                   device="auto", recipes={"linear": {"epochs": 3}})  # fmt: skip
            rows = run_probe(ckpt, emb, [labels], str(root / "out"), section)
            cache = compute_features(ckpt, emb, str(root / "out"))  # the finished cache
            ref = load_features_remote("cache", str(cache))
            ray.wait([ref], fetch_local=False)
            # the owner learns where a finished task's output lives asynchronously: a busy
            # machine reported no node yet (a clean-clone CI run)
            deadline = time.monotonic() + 60
            while True:
                where = ray.experimental.get_object_locations([ref])[ref]
                if where["node_ids"] or time.monotonic() > deadline:
                    break
                time.sleep(0.2)
            print(json.dumps({
                "head": head_id,
                "worker": worker.node_id,
                "rows": [{"method": r.method, "node": r.node, "device": r.device,
                          "seeds": r.seeds} for r in rows],
                "features_on": where["node_ids"],
                "features_bytes": where["object_size"],
                "token_bytes": token_bytes(str(cache)),
            }))  # fmt: skip
        finally:
            ray.shutdown()
    finally:
        cluster.shutdown()


if __name__ == "__main__":
    main()
