"""One seed of a probe results row, Ray-free: what a Ray task of the probe stage or of the
sweep's final retraining runs (:mod:`pipelines.probe_tasks` wraps it), and the rule for the
GPUs such a task reserves.

Every results row is trained with several seeds (``config.seed``, ``config.seed + 1``, ...,
:func:`seed_configs`) and reports their mean and standard deviation
(:func:`lvmae.probes.results.result_from_fits`). Sources: LV-MAE §8 (the protocol).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from lvmae.config import ProbeConfig
from lvmae.labels import LabelSet
from lvmae.probes.features import Features, evaluate, load_features, raw_features
from lvmae.probes.heads import TransformerBaseline
from lvmae.probes.train import ProbeFit, resolve_device

__all__ = [
    "SCRATCH",
    "SeedFit",
    "fit_seed",
    "read_features",
    "seed_configs",
    "task_gpus",
]

SCRATCH = "transformer"
"""``baseline=`` value of :func:`fit_seed` for the transformer trained from scratch."""

DEFAULT_GPU_SHARE = 0.25
"""GPUs a probe task reserves by default on a cluster with GPUs: four tiny heads share one."""


@dataclass
class SeedFit:
    """One seed's fit (``fit.model`` is None: the weights stay where they were trained), and
    where it ran: the Ray node id (empty outside Ray) and the torch device."""

    fit: ProbeFit
    node: str
    device: str


def seed_configs(config: ProbeConfig, seeds: int) -> list[ProbeConfig]:
    """``config`` with seeds ``config.seed``, ``config.seed + 1``, ... (``seeds`` of them)."""
    return [config.model_copy(update={"seed": config.seed + i}) for i in range(seeds)]


def task_gpus(requested: float | None, device: str, cluster_gpus: Callable[[], float]) -> float:
    """GPUs one probe task (or trial) reserves: ``requested`` when given; else
    :data:`DEFAULT_GPU_SHARE` when ``device`` is ``auto`` or CUDA and ``cluster_gpus()``
    (called only then) is non-zero, else 0."""
    if requested is not None:
        return float(requested)
    if device == "cpu" or not cluster_gpus():
        return 0.0
    return DEFAULT_GPU_SHARE


def read_features(kind: str, source: str) -> Features:
    """A feature table: ``kind="cache"`` reads an LV-MAE feature cache
    (:func:`~lvmae.probes.features.load_features`), ``"raw"`` the raw segment embeddings under
    ``source`` (:func:`~lvmae.probes.features.raw_features`)."""
    return load_features(source) if kind == "cache" else raw_features(source)


def fit_seed(
    features: Features,
    labels: LabelSet,
    config: ProbeConfig,
    *,
    device: str = "cpu",
    baseline: str | None = None,
    use_test: bool = True,
    holds_gpu: bool = False,
    node: str = "",
) -> SeedFit:
    """Train ``config`` (one seed) on ``labels``' splits (:func:`lvmae.probes.features.evaluate`)
    and return the fit without its weights.

    Args:
        features, labels, config: as for :func:`~lvmae.probes.features.evaluate`.
        device: ``auto`` (CUDA when ``holds_gpu``), ``cpu`` or a CUDA device
            (:func:`~lvmae.probes.train.resolve_device`).
        baseline: :data:`SCRATCH` trains a :class:`~lvmae.probes.heads.TransformerBaseline`
            (its init seeded with ``config.seed``) instead of ``config.kind``'s probe.
        use_test: False lets validation stand in for test (sweeps never read test).
        holds_gpu: the caller reserved a GPU (a Ray task's ``ray.get_gpu_ids()``).
        node: where this runs (a Ray node id), recorded in the result.
    """
    dev = resolve_device(device, holds_gpu=holds_gpu)
    model = None
    if baseline == SCRATCH:
        dim = next(iter(features.tokens.values())).shape[1]
        n_out = labels.num_classes if labels.task == "classification" else 1
        with torch.random.fork_rng():
            torch.manual_seed(config.seed)
            model = TransformerBaseline(dim, n_out)
    fit = evaluate(labels, features, config, model=model, device=dev, use_test=use_test)
    fit.model = None
    return SeedFit(fit, node, dev)
