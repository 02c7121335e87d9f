"""Probes on frozen long-video features (LV-MAE §8), Ray-free.

After pre-training, the LV-MAE encoder is frozen and its outputs are cached once per video
(:meth:`lvmae.mae.model.LVMAE.encode`): the token sequence ``[L, W]`` with its [CLS] ``[W]``,
and the mean of the tokens over the real positions ``[W]``. Probes are small heads trained on
those cached features, so the encoder never runs inside the probe's epochs.

- :mod:`lvmae.probes.heads`: the heads (linear, attentive, pooler) and the transformer
  baseline trained from scratch on raw segment embeddings.
- :mod:`lvmae.probes.train`: :func:`train_probe`, the paper's protocol (Adam, per-epoch
  validation, test scores at the best validation epoch).
- :mod:`lvmae.probes.features`: cached per-video features, labels → splits, and
  :func:`evaluate` (one probe on one labels set).
- :mod:`lvmae.probes.results`: the typed results row :class:`ProbeResult` (mean ± std
  over seeds, :func:`result_from_fits`).

The recipes (:class:`ProbeConfig`, the paper's values in
:data:`lvmae.config.PAPER_PROBE_RECIPES`) live in :mod:`lvmae.config`.

Sources: Naiman et al., "LV-MAE", ICCV 2025, §8 and Tables 6–8; Bardes et al., "V-JEPA",
2024 (attentive pooler); docs/design.md "Reference facts".
"""

from __future__ import annotations

from lvmae.config import CLS_SOURCES, PROBE_KINDS, ProbeConfig
from lvmae.labels import TASKS
from lvmae.probes.features import (
    Features,
    ProbeError,
    ProbeTask,
    evaluate,
    load_features,
    load_task,
    load_tasks,
    probe_data,
    raw_features,
    video_ids,
)
from lvmae.probes.heads import (
    AttentiveProbe,
    LinearProbe,
    PoolerProbe,
    TransformerBaseline,
    build_probe,
    mean_pool,
)
from lvmae.probes.results import ProbeResult, result_from_fit, result_from_fits, write_results
from lvmae.probes.train import VAL_METRIC, ProbeData, ProbeFit, resolve_device, train_probe

__all__ = [
    "CLS_SOURCES",
    "PROBE_KINDS",
    "TASKS",
    "VAL_METRIC",
    "AttentiveProbe",
    "Features",
    "LinearProbe",
    "PoolerProbe",
    "ProbeConfig",
    "ProbeData",
    "ProbeError",
    "ProbeFit",
    "ProbeResult",
    "ProbeTask",
    "TransformerBaseline",
    "build_probe",
    "evaluate",
    "load_features",
    "load_task",
    "load_tasks",
    "mean_pool",
    "probe_data",
    "raw_features",
    "resolve_device",
    "result_from_fit",
    "result_from_fits",
    "train_probe",
    "video_ids",
    "write_results",
]
