"""The extraction on one local Ray cluster (`ray.cluster_utils.Cluster`), in this process,
first while it has one node, then grown to several.

Used by ``test_multinode.py`` as ``python -m tests.cluster_jobs.extract_on_cluster VIDEOS
GPU_VIDEOS OUT --cpu-nodes N``: the pytest process may already hold a Ray instance, and a
driver connects to one cluster at a time. One cluster serves every check (each Ray start
costs seconds), in this order:

1. the head alone (one CPU, no GPU): the ``tiny`` extraction of ``VIDEOS`` (``OUT/single``);
2. ``N - 1`` more nodes of one CPU and one of one CPU and a logical GPU join (the only GPU is
   on a worker, as on KubeRay): the same extraction again (``OUT/multi``);
3. LanguageBind (a tiny local checkpoint, written to ``OUT/ckpt``) on ``GPU_VIDEOS`` at the
   default ``gpus_per_actor`` (``OUT/default``) and at ``0`` (``OUT/cpu``);
4. the heterogeneous preset's placement (cluster/kuberay/raycluster-hetero.yaml): one of the
   CPU nodes declares the ``lvmae_decode`` resource, and LanguageBind runs with
   ``decode_resources: {lvmae_decode: 1}`` (``OUT/hetero``): decoding only there, the encoder
   on the GPU node;
5. the NVDEC route (:func:`nvdec_runs`);
6. the NVDEC route with a file that crashes the decoder beside a good one
   (:func:`nvdec_crash_run`).

Prints one JSON line: the head's id, the grown cluster's node ids, its GPU node's and its
decode node's ids,
every run's summary, and for the LanguageBind runs their encoder actors (node, GPUs asked
for).
"""

from __future__ import annotations

import argparse
import json
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import ray
from ray.cluster_utils import Cluster

from lvmae.config import ExtractConfig
from lvmae.encoders.models import save_tiny_checkpoint
from lvmae.video.nvdec import EMULATE_ENV
from pipelines.extract import ExtractError, run_extraction

# One CPU per decode task (the tiny encoder runs inside it), so no node decodes more than
# one video at a time and the videos spread over the nodes.
CONFIG = ExtractConfig(batch_size=4, rows_per_file=8, decode_cpus=1.0, decode_memory_mb=256)
DECODE = "lvmae_decode"
"""The custom resource of the decode worker group (cluster/kuberay/raycluster-hetero.yaml)."""


def encoder_actors() -> dict[str, dict]:
    """Ray Data's map workers (the encoder actors; tiny has none): actor id → its node and
    the GPUs it asked for. Read from the GCS (the state API needs the dashboard, which this
    cluster does not run; ``ray._private.state.actors()`` leaves out the resources)."""
    from ray._private.state import state  # the GCS's actor table, as ray.util.state reads it
    from ray.core.generated.gcs_pb2 import ActorTableData

    table = state._connect_and_get_accessor().get_actor_table(None, None)
    actors = {}
    for raw in table:
        actor = ActorTableData.FromString(raw)
        if "MapWorker" in actor.class_name:
            actors[actor.actor_id.hex()] = {
                "node": actor.address.node_id.hex(),
                "gpus": actor.required_resources.get("GPU", 0.0),
            }
    return actors


def on_cluster(args: argparse.Namespace, out: Path) -> dict:
    """Every run, in the order of the module's docstring; returns what ``main`` prints."""
    cluster = Cluster(
        initialize_head=True, head_node_args={"num_cpus": 1, "include_dashboard": False}
    )
    try:
        ray.init(address=cluster.address, log_to_driver=False)
        try:
            result = {"head": cluster.head_node.node_id}
            result["single"] = run_extraction(args.videos, str(out / "single"), CONFIG,
                                              progress=False, track=False).to_dict()  # fmt: skip
            # The LanguageBind checkpoint is written while the nodes start and the tiny runs.
            writer = ThreadPoolExecutor(1).submit(save_tiny_checkpoint, out / "ckpt")
            decode_node = None
            for i in range(args.cpu_nodes - 1):
                node = cluster.add_node(num_cpus=1, resources={DECODE: 1} if i == 0 else {})
                decode_node = decode_node or node
            gpu_node = cluster.add_node(num_cpus=1, num_gpus=1)
            cluster.wait_for_nodes()
            result["node_ids"] = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
            result["gpu_node"] = gpu_node.node_id
            result["decode_node"] = decode_node.node_id if decode_node else None
            result["multi"] = run_extraction(args.videos, str(out / "multi"), CONFIG,
                                             progress=False, track=False).to_dict()  # fmt: skip
            runs = (("default", None, {}), ("cpu", 0.0, {}), ("hetero", None, {DECODE: 1.0}))
            for name, gpus, decode_resources in runs:
                config = ExtractConfig(
                    encoder="languagebind-video-ft",
                    encoder_checkpoint=str(writer.result()),
                    gpus_per_actor=gpus,
                    decode_memory_mb=256,
                    decode_resources=decode_resources,
                )
                before = encoder_actors()
                summary = run_extraction(
                    args.gpu_videos, str(out / name), config, progress=False, track=False
                )
                actors = [a for i, a in encoder_actors().items() if i not in before]
                result[name] = {"summary": summary.to_dict(), "actors": actors}
            result.update(nvdec_runs(args, out))
            result["nvdec_crash"] = nvdec_crash_run(out)
        finally:
            ray.shutdown()
    finally:
        cluster.shutdown()
    return result


def nvdec_runs(args: argparse.Namespace, out: Path) -> dict:
    """Step 5: the NVDEC route on the GPU node's logical GPU, with the ``tiny`` encoder in
    actors that hold it and ranges of 5 s (the 7-s videos split in two): NVDEC emulated
    (``LVMAE_NVDEC_EMULATE``: PyAV on the host, the rest as on a GPU) on ``VIDEOS``
    (``OUT/nvdec``); then without emulation, where this machine has no PyNvVideoCodec:
    ``auto`` on ``GPU_VIDEOS`` (``OUT/nvdec_missing``) and ``nvdec``, whose refusal is
    returned."""
    common = {"batch_size": 4, "gpus_per_actor": 1.0, "decode_memory_mb": 256, "range_s": 5.0}
    result = {}
    os.environ[EMULATE_ENV] = "1"
    try:
        result["nvdec"] = run_extraction(
            args.videos, str(out / "nvdec"), ExtractConfig(decoder="auto", **common),
            progress=False, track=False,
        ).to_dict()  # fmt: skip
    finally:
        del os.environ[EMULATE_ENV]
    result["nvdec_missing"] = run_extraction(
        args.gpu_videos, str(out / "nvdec_missing"), ExtractConfig(decoder="auto", **common),
        progress=False, track=False,
    ).to_dict()  # fmt: skip
    try:
        config = ExtractConfig(decoder="nvdec", **common)
        run_extraction(
            args.gpu_videos, str(out / "nvdec_refused"), config, progress=False, track=False
        )
        result["nvdec_refused"] = None
    except ExtractError as exc:
        result["nvdec_refused"] = str(exc)
    return result


def nvdec_crash_run(out: Path) -> dict:
    """Step 6: the NVDEC route (emulated, as in step 5) on two 60-s videos, two at a time in
    one encoder actor (``nvdec_sessions: 2``, ``task_retries: 0``), whose worker is SIGKILLed
    whenever it has ``crash.mp4`` open (:class:`tests.crash.KillWhoOpens`), as a native
    crash in the GPU decoder would end it (``OUT/nvdec_crash``). Returns the summary, the
    kills and the driver's warnings."""
    import logging

    from lvmae.video.samples import Scene, make_video
    from tests.crash import KillWhoOpens

    videos = out / "nvdec_crash_in"
    videos.mkdir()
    for name in ("good.mp4", "crash.mp4"):
        make_video(videos / name, [Scene("testsrc2", 60.0)], width=64, height=48, fps=10)
    config = ExtractConfig(
        decoder="nvdec", nvdec_sessions=2, task_retries=0, range_s=None, batch_size=4,
        gpus_per_actor=1.0, decode_memory_mb=256,
    )  # fmt: skip
    warnings: list[str] = []
    handler = logging.Handler(logging.WARNING)
    handler.emit = lambda record: warnings.append(record.getMessage())
    logging.getLogger("pipelines.extract").addHandler(handler)
    killer = KillWhoOpens(videos / "crash.mp4")
    killer.start()
    os.environ[EMULATE_ENV] = "1"
    try:
        summary = run_extraction(
            str(videos), str(out / "nvdec_crash"), config, progress=False, track=False
        )
    finally:
        del os.environ[EMULATE_ENV]
        killer.stop.set()
        logging.getLogger("pipelines.extract").removeHandler(handler)
    return {"summary": summary.to_dict(), "kills": killer.kills, "warnings": warnings}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("videos")
    parser.add_argument("gpu_videos")
    parser.add_argument("out")
    parser.add_argument("--cpu-nodes", type=int, default=2)
    args = parser.parse_args()
    print(json.dumps(on_cluster(args, Path(args.out))))


if __name__ == "__main__":
    main()
