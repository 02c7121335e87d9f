"""Where probe training runs on a Ray cluster: one Ray task per probe row and seed, with
declared resources, on the features held in the object store (never in the driver).

The probe stage (:func:`pipelines.probe.run_probe`) and the sweep's final retraining
(:func:`tune.sweep.run_tune`) both use :func:`fit_seeds`: each seed of a row is a task that
reserves ``cpus`` CPUs and ``gpus`` GPUs, trains on CUDA when it holds a GPU
(``device="auto"``, :func:`lvmae.probes.train.resolve_device`) and returns its
:class:`~lvmae.probes.ProbeFit` (without the weights) with the node and device it ran on.
:func:`load_features_remote` reads a feature table inside a task so that it lands in the
object store; the driver only holds its reference. Sources: LV-MAE §8 (the protocol).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import ray
import torch

from lvmae.config import ProbeConfig
from lvmae.labels import LabelSet
from lvmae.probes import (
    Features,
    ProbeFit,
    TransformerBaseline,
    evaluate,
    load_features,
    raw_features,
)
from lvmae.probes.train import resolve_device

__all__ = [
    "SeedFit",
    "fit_seeds",
    "gpus_per_task",
    "load_features_remote",
    "seed_configs",
]

SCRATCH = "transformer"
"""``baseline=`` value of :func:`fit_seeds` for the transformer trained from scratch."""


@dataclass
class SeedFit:
    """One seed's fit (``fit.model`` is None: the weights stay on the worker), and where it
    ran: the Ray node id and the torch device."""

    fit: ProbeFit
    node: str
    device: str


def gpus_per_task(requested: float | None, device: str) -> float:
    """GPUs one probe task reserves: ``requested`` when given; else 0.25 when ``device`` is
    ``auto`` or CUDA and the cluster has GPUs, else 0. Needs Ray to be initialised."""
    if requested is not None:
        return float(requested)
    if device == "cpu" or not ray.cluster_resources().get("GPU", 0):
        return 0.0
    return 0.25


def _read(kind: str, source: str) -> Features:
    return load_features(source) if kind == "cache" else raw_features(source)


_read_remote = ray.remote(num_cpus=1)(_read)


def load_features_remote(kind: str, source: str) -> ray.ObjectRef:
    """A reference to a feature table read inside a Ray task: ``kind="cache"`` reads an
    LV-MAE feature cache (:func:`lvmae.probes.load_features`), ``"raw"`` the raw segment
    embeddings under ``source`` (:func:`lvmae.probes.raw_features`). The table goes to the
    object store of the node that read it; the driver never deserialises it."""
    return _read_remote.remote(kind, source)


def _fit(
    features: Features, labels: LabelSet, config: ProbeConfig, options: dict[str, Any]
) -> SeedFit:
    """One seed in a Ray task; ``options``: ``device``, ``baseline``, ``use_test``,
    ``threads`` (see :func:`fit_seeds`)."""
    device, baseline = options["device"], options["baseline"]
    use_test, threads = options["use_test"], options["threads"]
    torch.set_num_threads(threads)
    dev = resolve_device(device, holds_gpu=bool(ray.get_gpu_ids()))
    model = None
    if baseline == SCRATCH:
        dim = next(iter(features.tokens.values())).shape[1]
        n_out = labels.num_classes if labels.task == "classification" else 1
        with torch.random.fork_rng():
            torch.manual_seed(config.seed)
            model = TransformerBaseline(dim, n_out)
    fit = evaluate(labels, features, config, model=model, device=dev, use_test=use_test)
    fit.model = None
    return SeedFit(fit, ray.get_runtime_context().get_node_id(), dev)


_fit_remote = ray.remote(_fit)


def seed_configs(config: ProbeConfig, seeds: int) -> list[ProbeConfig]:
    """``config`` with seeds ``config.seed``, ``config.seed + 1``, ... (``seeds`` of them)."""
    return [config.model_copy(update={"seed": config.seed + i}) for i in range(seeds)]


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
    (:func:`lvmae.probes.evaluate`) and returns a :class:`SeedFit`.

    Args:
        features: a reference to the :class:`~lvmae.probes.Features` (e.g. from
            :func:`load_features_remote`); each task reads it from the object store.
        labels: the task's labels.
        config: the recipe; seed ``i`` trains with ``config.seed + i``.
        seeds: how many seeds (tasks).
        device: ``auto`` (CUDA when the task holds a GPU), ``cpu`` or a CUDA device.
        cpus, gpus: what each task reserves (its torch uses ``max(1, int(cpus))`` threads).
        baseline: ``"transformer"`` trains a :class:`~lvmae.probes.TransformerBaseline`
            from scratch (seeded) instead of ``config.kind``'s probe.
        use_test: False lets validation stand in for test (sweeps never read test).

    Returns:
        The tasks' references, in seed order.
    """
    task = _fit_remote.options(num_cpus=cpus, num_gpus=gpus)
    options = {"device": device, "baseline": baseline, "use_test": use_test,
               "threads": max(1, int(cpus))}  # fmt: skip
    return [task.remote(features, labels, c, options) for c in seed_configs(config, seeds)]
