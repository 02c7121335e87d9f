"""The probe stage on a cluster shaped like the documented one (``cluster/README.md``):
the head holds the driver (``lvmae_driver``) and no GPU, a worker declares a GPU. Every
probe row and seed trains in a Ray task on the worker (``device: auto`` falls back to the
CPU: there is no CUDA here), and the feature table reaches the tasks through the object
store of the worker that read it, never through the driver."""

from __future__ import annotations

import json

import pytest

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def placement(cluster_jobs):
    """The JSON line of ``probe_on_cluster`` (``tests/cluster_jobs/conftest.py`` started it)."""
    line, _ = cluster_jobs["probe"].result(timeout_s=480)
    return json.loads(line)


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
