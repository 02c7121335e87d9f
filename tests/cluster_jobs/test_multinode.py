"""The extraction on a local multi-node Ray cluster (`ray.cluster_utils.Cluster`: three nodes
of one CPU, one of them with a logical GPU, the head without):

- the ``tiny`` extraction spreads decoding over several nodes and writes the same segments
  as a one-node run on the same videos (run on the same cluster while it had only its head);
- real encoders ask for a GPU by default: LanguageBind's encoder actors land on the only node
  with a GPU (a worker, as on KubeRay), while other nodes have CPUs; at ``gpus_per_actor: 0``
  they ask for none and run on CPU. (Without any GPU it is refused:
  tests/pipelines/test_extract.py.)

One subprocess (``extract_on_cluster``) and one Ray cluster serve every test here: each
Python start and Ray start costs seconds.
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from fnmatch import fnmatch
from pathlib import Path

import numpy as np
import psutil
import pytest

from lvmae.samples import Scene, make_video
from lvmae.segments import fixed_segments
from lvmae.storage import read_segments, read_videos

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]
CPU_NODES = 2  # CPU-only nodes, the head included; the cluster adds one node with a GPU
NODES = CPU_NODES + 1
SOURCES = ["testsrc2", "mandelbrot", "life", "smptebars", "gradients", "zoneplate", "perlin"]
DURATIONS = {f"v{i}_{s}.mp4": 3.0 + (i % 3) * 2.0 for i, s in enumerate(SOURCES)}
GPU_VIDEOS = "v[12]_*.mp4"  # two of them (5 s and 7 s) for the LanguageBind runs
KEY = ["video_id", "segment_index"]
EXACT = ["video_id", "segment_index", "start_s", "end_s", "frame_indices"]


def own_processes(marker: str) -> list[psutil.Process]:
    """Live processes whose command line mentions ``marker`` (this test's Ray temp dir)."""
    found = []
    for p in psutil.process_iter(["cmdline"]):
        try:
            if marker in " ".join(p.info["cmdline"] or []) and p.status() != "zombie":
                found.append(p)
        except (psutil.NoSuchProcess, psutil.AccessDenied):
            continue
    return found


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every run, in a subprocess of its own (the pytest process may hold a Ray instance):
    the output directory and the JSON line of ``extract_on_cluster``."""
    videos = tmp_path_factory.mktemp("multinode_videos")
    for i, (video_id, seconds) in enumerate(DURATIONS.items()):
        make_video(videos / video_id, [Scene(SOURCES[i], seconds)], seed=i)
    out = tmp_path_factory.mktemp("multinode_out")
    # A private, short Ray temp dir: the Cluster writes its address file there instead of
    # /tmp/ray (where another user's plain `ray.init()` would find and join it), and the
    # teardown check below can tell this test's Ray processes from everybody else's.
    ray_tmp = tempfile.mkdtemp(prefix="lvray-")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
    env.update(
        RAY_TMPDIR=ray_tmp,
        # Token authentication on, with a fresh token for this cluster only.
        RAY_AUTH_MODE="token",
        RAY_AUTH_TOKEN=secrets.token_hex(32),
        RAY_USAGE_STATS_ENABLED="0",
        PYTHONPATH=str(REPO),
    )
    cmd = [sys.executable, "-m", "tests.cluster_jobs.extract_on_cluster", str(videos)]
    cmd += [str(videos / GPU_VIDEOS), str(out), "--cpu-nodes", str(CPU_NODES)]
    proc = subprocess.Popen(
        cmd,
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = proc.communicate(timeout=540)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
    leftovers = own_processes(ray_tmp)
    for p in leftovers:
        p.kill()
    shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, stderr[-6000:]
    assert not leftovers, f"the clusters left processes behind: {[p.pid for p in leftovers]}"
    return out, json.loads(stdout.strip().splitlines()[-1])


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
    for name in ("default", "cpu"):
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
