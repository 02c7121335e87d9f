"""The extraction on a local multi-node Ray cluster (`ray.cluster_utils.Cluster`: three nodes
of one CPU, one of them with a logical GPU, the head without):

- the ``tiny`` extraction spreads decoding over several nodes and writes the same segments
  as a one-node run on the same videos (run on the same cluster while it had only its head);
- real encoders ask for a GPU by default: LanguageBind's encoder actors land on the only node
  with a GPU (a worker, as on KubeRay), while other nodes have CPUs; at ``gpus_per_actor: 0``
  they ask for none and run on CPU. (Without any GPU it is refused:
  tests/pipelines/test_extract.py.)
- the heterogeneous preset (cluster/kuberay/raycluster-hetero.yaml): with
  ``decode_resources: {lvmae_decode: 1}`` every video is decoded on the one node that declares
  ``lvmae_decode``, and the encoder actors run on the GPU node;
- the NVDEC route (``decoder: auto`` where the encoder actors hold a GPU): the actors decode
  the videos themselves, on the GPU node, split in ranges, and write what the decode tasks
  write (NVDEC emulated on the host: ``LVMAE_NVDEC_EMULATE``); without PyNvVideoCodec,
  ``auto`` decodes on the CPU and records why, and ``nvdec`` stops before any work.

One subprocess (``extract_on_cluster``) and one Ray cluster serve every test here: each
Python start and Ray start costs seconds. ``conftest.py`` starts it beside the probe-placement
cluster.
"""

from __future__ import annotations

import json
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import pytest

from lvmae.storage import read_segments, read_videos
from lvmae.video.samples import Scene, make_video
from lvmae.video.segments import fixed_segments

pytestmark = pytest.mark.slow

CPU_NODES = 2  # CPU-only nodes, the head included; the cluster adds one node with a GPU
NODES = CPU_NODES + 1
SOURCES = ["testsrc2", "mandelbrot", "life", "smptebars", "gradients", "zoneplate", "perlin"]
DURATIONS = {f"v{i}_{s}.mp4": 3.0 + (i % 3) * 2.0 for i, s in enumerate(SOURCES)}
GPU_VIDEOS = "v[12]_*.mp4"  # two of them (5 s and 7 s) for the LanguageBind runs
KEY = ["video_id", "segment_index"]
EXACT = ["video_id", "segment_index", "start_s", "end_s", "frame_indices"]


def job_args(videos: Path, out: Path) -> list[str]:
    """The sample videos written to ``videos``; the arguments of ``extract_on_cluster``
    writing under ``out``."""
    for i, (video_id, seconds) in enumerate(DURATIONS.items()):
        make_video(videos / video_id, [Scene(SOURCES[i], seconds)], seed=i)
    return [str(videos), str(videos / GPU_VIDEOS), str(out), "--cpu-nodes", str(CPU_NODES)]


@pytest.fixture(scope="module")
def runs(cluster_jobs):
    """Every run (``tests/cluster_jobs/conftest.py`` started the script): the output
    directory and the JSON line of ``extract_on_cluster``."""
    job = cluster_jobs["multinode"]
    line, leftovers = job.result()
    assert not leftovers, f"the clusters left processes behind: {leftovers}"
    return job.out, json.loads(line)


def test_decoding_is_spread_over_several_nodes(runs):
    out, result = runs
    assert len(result["node_ids"]) == NODES
    videos = read_videos(str(out / "multi")).to_pylist()
    assert {v["video_id"] for v in videos} == set(DURATIONS)
    assert all(v["status"] == "ok" for v in videos), videos
    decoded_on = {v["node_id"] for v in videos}
    assert decoded_on <= set(result["node_ids"])
    assert len(decoded_on) >= 2, decoded_on


def test_multi_node_output_equals_the_single_node_output(runs):
    out, result = runs
    multi, single = out / "multi", out / "single"
    assert result["multi"]["videos_ok"] == result["single"]["videos_ok"] == len(DURATIONS)
    a = read_segments(str(multi)).sort_by([(k, "ascending") for k in KEY])
    b = read_segments(str(single)).sort_by([(k, "ascending") for k in KEY])
    assert a.num_rows == sum(len(fixed_segments(d)) for d in DURATIONS.values())
    assert a.select(EXACT).equals(b.select(EXACT))
    emb_a = np.stack(a["embedding"].to_numpy(zero_copy_only=False))
    emb_b = np.stack(b["embedding"].to_numpy(zero_copy_only=False))
    assert emb_a.shape == emb_b.shape
    assert np.allclose(emb_a, emb_b, atol=1e-5)
    # the single-node run decoded everything on its one node, the head
    assert result["head"] in result["node_ids"]
    assert {v["node_id"] for v in read_videos(str(single)).to_pylist()} == {result["head"]}


def test_real_encoder_actors_take_the_gpu_node_by_default_and_cpu_at_zero(runs):
    out, result = runs
    default, cpu, gpu_node = result["default"], result["cpu"], result["gpu_node"]
    assert gpu_node in result["node_ids"]
    assert set(result["node_ids"]) - {gpu_node}  # other nodes, with CPUs, were there to take
    expected = {v for v in DURATIONS if fnmatch(v, GPU_VIDEOS)}
    assert len(expected) == 2
    for name in ("default", "cpu", "hetero"):
        videos = read_videos(str(out / name)).to_pylist()
        assert {v["video_id"] for v in videos} == expected
        assert all(v["status"] == "ok" for v in videos), videos
        assert result[name]["summary"]["videos_ok"] == len(expected)
    assert default["actors"] and cpu["actors"]
    # the default run's encoder actors each ask for a GPU, and the only node with a GPU
    # hosts every one of them
    assert {a["gpus"] for a in default["actors"]} == {1.0}
    assert {a["node"] for a in default["actors"]} == {gpu_node}
    # at gpus_per_actor 0 they ask for none: the encoder runs on CPU
    assert {a["gpus"] for a in cpu["actors"]} == {0.0}


def test_decoding_stays_on_the_decode_group_and_embedding_on_the_gpu_group(runs):
    """The placement of the heterogeneous preset: decode tasks reserve ``lvmae_decode``,
    which only the decode node has (the head and the GPU node have CPUs free as well), and
    the encoder actors reserve the GPU."""
    out, result = runs
    decode_node, gpu_node = result["decode_node"], result["gpu_node"]
    assert decode_node in result["node_ids"] and decode_node != gpu_node
    videos = read_videos(str(out / "hetero")).to_pylist()
    assert videos and all(v["status"] == "ok" for v in videos), videos
    assert {v["node_id"] for v in videos} == {decode_node}
    # the runs without the resource decoded elsewhere too (the check above can fail)
    assert {v["node_id"] for v in read_videos(str(out / "multi")).to_pylist()} - {decode_node}
    actors = result["hetero"]["actors"]
    assert actors and {a["node"] for a in actors} == {gpu_node}
    assert {a["gpus"] for a in actors} == {1.0}


def test_nvdec_route_decodes_in_the_gpu_actors_and_writes_what_the_cpu_route_does(runs):
    out, result = runs
    assert result["nvdec"]["videos_ok"] == len(DURATIONS), result["nvdec"]
    videos = read_videos(str(out / "nvdec")).to_pylist()
    assert {v["decoder"] for v in videos} == {"nvdec"}
    assert {v["decoder_reason"] for v in videos} == {None}
    assert {v["node_id"] for v in videos} == {result["gpu_node"]}  # in the encoder actors
    nvdec = read_segments(str(out / "nvdec")).sort_by([(k, "ascending") for k in KEY])
    cpu = read_segments(str(out / "multi")).sort_by([(k, "ascending") for k in KEY])
    assert nvdec.select(EXACT).to_pylist() == cpu.select(EXACT).to_pylist()  # once each
    a = np.stack(nvdec["embedding"].to_numpy(zero_copy_only=False))
    b = np.stack(cpu["embedding"].to_numpy(zero_copy_only=False))
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() >= 0.999, cosine.min()  # resized on the device, not by libswscale


def test_nvdec_route_without_pynvvideocodec_falls_back_or_stops(runs):
    out, result = runs
    assert result["nvdec_missing"]["videos_ok"] == 2
    videos = read_videos(str(out / "nvdec_missing")).to_pylist()
    assert {v["decoder"] for v in videos} == {"pyav"}
    assert {v["decoder_reason"] for v in videos} == {"PyNvVideoCodec is not installed"}
    refused = result["nvdec_refused"]
    assert refused and "decoder nvdec cannot decode" in refused and "PyNvVideoCodec" in refused
    assert not (out / "nvdec_refused").exists()


def test_nvdec_a_file_that_crashes_the_decoder_fails_alone(runs):
    """Two 60-s videos decoded at once by one encoder actor, whose worker dies whenever it
    has ``crash.mp4`` open: both calls end with it (no retries here: Ray's retries meet in the
    restarted actor and end the same way, each an actor start). The driver then decodes the
    two again one at a time: the good video is whole (each segment once), and only the
    crashing file fails, saying it crashed alone too."""
    import pyarrow.parquet as pq

    out, result = runs
    crash = result["nvdec_crash"]
    assert crash["kills"] >= 2, crash  # one try together (task_retries: 0), one alone
    assert any(w.startswith("2 video(s) ended with an encoder actor that died") for w in
               crash["warnings"]), crash["warnings"]  # fmt: skip
    videos = {v["video_id"]: v for v in read_videos(str(out / "nvdec_crash")).to_pylist()}
    good, bad = videos["good.mp4"], videos["crash.mp4"]
    assert good["status"] == "ok" and good["decoder"] == "nvdec", good
    planned = len(fixed_segments(60.0))
    assert good["segments_planned"] == good["segments_written"] == planned
    rows = pq.read_table(str(out / "nvdec_crash" / "segments"))  # every file, no dedup
    assert sorted(rows["segment_index"].to_pylist()) == list(range(planned))
    assert set(rows["video_id"].to_pylist()) == {"good.mp4"}
    assert bad["status"] == "failed", bad
    assert "decoded again alone (nvdec_sessions = 1)" in bad["error"], bad["error"]
    assert crash["summary"]["videos_ok"] == 1
