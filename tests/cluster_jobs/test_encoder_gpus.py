"""Real encoders ask for a GPU by default: on a cluster whose only (logical) GPU is on a
worker node, LanguageBind's encoder actors land there; at ``gpus_per_actor: 0`` they run on
CPU. (Without any GPU it is refused: tests/pipelines/test_extract.py.)"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from lvmae.encoders import save_tiny_checkpoint
from lvmae.samples import Scene, make_video

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


def test_real_encoder_actors_take_the_gpu_node_by_default_and_cpu_at_zero(tmp_path):
    videos = tmp_path / "videos"
    make_video(videos / "a.mp4", [Scene("testsrc2", 6.0)])
    make_video(videos / "b.mp4", [Scene("mandelbrot", 4.0)])
    checkpoint = save_tiny_checkpoint(tmp_path / "ckpt")
    ray_tmp = tempfile.mkdtemp(prefix="lvray-")  # this test's own Ray session directory
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env.update(RAY_TMPDIR=ray_tmp, RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(REPO))
    cmd = [sys.executable, "-m", "tests.cluster_jobs.encoder_gpus_on_cluster"]
    res = subprocess.run(
        [*cmd, str(videos), str(checkpoint), str(tmp_path / "out")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=400, check=False,
    )  # fmt: skip
    assert res.returncode == 0, res.stderr[-6000:]
    result = json.loads(res.stdout.strip().splitlines()[-1])
    default, cpu = result["default"], result["cpu"]
    assert default["summary"]["videos_ok"] == cpu["summary"]["videos_ok"] == 2
    assert default["actors"] and cpu["actors"]
    # the only node with a GPU hosts every encoder actor of the default run
    assert set(default["actors"]) == {result["gpu_node"]}
