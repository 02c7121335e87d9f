"""Probe training on a Ray cluster: one Ray task per probe row and seed, with declared
resources, on the features held in the object store (never in the driver).

The probe stage (:func:`pipelines.probe.run_probe`) starts its rows with :func:`fit_seeds`,
and hands the same function to the sweep (:func:`tune.sweep.run_tune`) for its final
retraining, since ``tune/`` does not import ``pipelines/``. Each seed is a task that
reserves ``cpus`` CPUs and ``gpus`` GPUs, trains on CUDA when it holds a GPU
(``device="auto"``) and returns a :class:`~lvmae.probes.seeds.SeedFit` (without the weights)
with the node and device it ran on; the training itself is
:func:`lvmae.probes.seeds.fit_seed`, Ray-free. :func:`load_features_remote` reads a feature
table inside a task so that it lands in the object store; the driver only holds its
reference. Sources: LV-MAE §8 (the protocol).
"""

from __future__ import annotations

from typing import Any

import ray
import torch

from lvmae.config import ProbeConfig
from lvmae.labels import LabelSet
from lvmae.probes.features import Features
from lvmae.probes.seeds import (
    SCRATCH,
    SeedFit,
    fit_seed,
    read_features,
    seed_configs,
    task_gpus,
)

__all__ = [
    "SCRATCH",
    "SeedFit",
    "cluster_gpus",
    "fit_seeds",
    "gpus_per_task",
    "load_features_remote",
    "seed_configs",
]


def cluster_gpus() -> float:
    """GPUs of the Ray cluster (Ray must be initialised)."""
    return ray.cluster_resources().get("GPU", 0)


def gpus_per_task(requested: float | None, device: str) -> float:
    """GPUs one probe task reserves (:func:`lvmae.probes.seeds.task_gpus`): ``requested``
    when given; else 0.25 when ``device`` is ``auto`` or CUDA and the cluster has GPUs, else
    0. Needs Ray to be initialised."""
    return task_gpus(requested, device, cluster_gpus)


_read_remote = ray.remote(num_cpus=1)(read_features)


def load_features_remote(kind: str, source: str) -> ray.ObjectRef:
    """A reference to a feature table read inside a Ray task
    (:func:`lvmae.probes.seeds.read_features`: ``kind="cache"`` an LV-MAE feature cache,
    ``"raw"`` the raw segment embeddings under ``source``). The table goes to the object
    store of the node that read it; the driver never deserialises it."""
    return _read_remote.remote(kind, source)


def _fit(
    features: Features, labels: LabelSet, config: ProbeConfig, options: dict[str, Any]
) -> SeedFit:
    """One seed in a Ray task; ``options``: ``device``, ``baseline``, ``use_test``,
    ``threads`` (see :func:`fit_seeds`)."""
    torch.set_num_threads(options["threads"])
    return fit_seed(
        features, labels, config,
        device=options["device"], baseline=options["baseline"], use_test=options["use_test"],
        holds_gpu=bool(ray.get_gpu_ids()), node=ray.get_runtime_context().get_node_id(),
    )  # fmt: skip


_fit_remote = ray.remote(_fit)


def fit_seeds(
    features: ray.ObjectRef,
    labels: LabelSet,
    config: ProbeConfig,
    *,
    seeds: int,
    device: str = "auto",
    cpus: float = 1.0,
    gpus: float = 0.0,
    baseline: str | None = None,
    use_test: bool = True,
) -> list[ray.ObjectRef]:
    """Start one Ray task per seed that trains ``config`` on ``labels``' splits
    (:func:`lvmae.probes.seeds.fit_seed`) and returns a :class:`SeedFit`.

    Args:
        features: a reference to the :class:`~lvmae.probes.features.Features` (e.g. from
            :func:`load_features_remote`); each task reads it from the object store.
        labels: the task's labels.
        config: the recipe; seed ``i`` trains with ``config.seed + i``.
        seeds: how many seeds (tasks).
        device: ``auto`` (CUDA when the task holds a GPU), ``cpu`` or a CUDA device.
        cpus, gpus: what each task reserves (its torch uses ``max(1, int(cpus))`` threads).
        baseline: ``"transformer"`` (:data:`SCRATCH`) trains a
            :class:`~lvmae.probes.heads.TransformerBaseline` from scratch (seeded) instead of
            ``config.kind``'s probe.
        use_test: False lets validation stand in for test (sweeps never read test).

    Returns:
        The tasks' references, in seed order.
    """
    task = _fit_remote.options(num_cpus=cpus, num_gpus=gpus)
    options = {"device": device, "baseline": baseline, "use_test": use_test,
               "threads": max(1, int(cpus))}  # fmt: skip
    return [task.remote(features, labels, c, options) for c in seed_configs(config, seeds)]
