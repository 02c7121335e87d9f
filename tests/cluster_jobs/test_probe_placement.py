"""The probe stage on a cluster shaped like the documented one (``cluster/README.md``):
the head holds the driver (``lvmae_driver``) and no GPU, a worker declares a GPU. Every
probe row and seed trains in a Ray task on the worker (``device: auto`` falls back to the
CPU: there is no CUDA here), and the feature table reaches the tasks through the object
store of the worker that read it, never through the driver."""

from __future__ import annotations

import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.cluster_jobs.test_multinode import own_processes

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def placement(tmp_path_factory):
    root = tmp_path_factory.mktemp("probe_cluster")
    ray_tmp = tempfile.mkdtemp(prefix="lvray-")  # this test's own Ray processes
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "RAY_AUTH_TOKEN_PATH")}
    env.update(RAY_TMPDIR=ray_tmp, RAY_AUTH_MODE="token", RAY_AUTH_TOKEN=secrets.token_hex(32),
               RAY_USAGE_STATS_ENABLED="0", PYTHONPATH=str(REPO))  # fmt: skip
    cmd = [sys.executable, "-m", "tests.cluster_jobs.probe_on_cluster", str(root)]
    proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True, start_new_session=True)  # fmt: skip
    try:
        stdout, stderr = proc.communicate(timeout=480)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        stdout, stderr = proc.communicate()
    for p in own_processes(ray_tmp):
        p.kill()
    shutil.rmtree(ray_tmp, ignore_errors=True)
    assert proc.returncode == 0, stderr[-6000:]
    return json.loads(stdout.strip().splitlines()[-1])


def test_every_probe_row_trains_on_the_gpu_worker_and_on_cpu_without_cuda(placement):
    rows = placement["rows"]
    assert [r["method"] for r in rows] == ["lvmae", "mean-pool"]
    assert placement["head"] != placement["worker"]
    for row in rows:
        assert row["seeds"] == 2
        assert row["node"] == placement["worker"]  # not the head, which holds no GPU
        assert row["device"] == "cpu"  # device: auto, a logical GPU but no CUDA


def test_the_feature_table_lives_in_the_workers_object_store(placement):
    # The table a task read sits in the worker's object store (at least as big as its
    # float32 token outputs, so it is the table, not a handle): tasks get it from there,
    # the driver holds only a reference.
    assert placement["features_on"] == [placement["worker"]]
    assert placement["features_bytes"] >= placement["token_bytes"] > 0
