"""Cached per-video features, the labelled splits probes train on, and :func:`evaluate`
(one probe on one labels set): the Ray-free part of the probe stage (LV-MAE §8).

Two kinds of features feed the probes, both per video:

- the frozen LV-MAE encoder's outputs (:func:`load_features`, the cache the probe stage
  writes once per checkpoint): ``pooled`` ``[W]`` (the mean of the token outputs over real
  tokens), ``cls`` ``[W]`` (the encoder's [CLS] output) and ``tokens`` ``[L, W]``;
- the raw segment embeddings (:func:`raw_features`, for the baselines): ``tokens``
  ``[L, D]`` in segment order and their mean ``[D]``, no [CLS].

A labels file is one task; its videos without embeddings are left out and counted
(:func:`load_tasks`). Sources: Naiman et al., "LV-MAE", ICCV 2025, §8 and Tables 6–8;
docs/design.md "Data contracts".
"""

from __future__ import annotations

import logging
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import numpy as np
import pyarrow.parquet as pq
import torch
from torch import nn

from lvmae.config import ProbeConfig
from lvmae.errors import LvmaeError
from lvmae.labels import SPLITS, LabelsError, LabelSet, read_labels
from lvmae.mae.sequences import sequences_from_table
from lvmae.probes.train import EpochCallback, ProbeData, ProbeFit, train_probe
from lvmae.storage import read_segments

__all__ = [
    "Features",
    "ProbeError",
    "ProbeTask",
    "evaluate",
    "load_features",
    "load_task",
    "load_tasks",
    "probe_data",
    "raw_features",
    "video_ids",
]

log = logging.getLogger(__name__)


class ProbeError(LvmaeError, ValueError):
    """A probe run cannot start (e.g. a split left empty once the videos without embeddings
    are dropped); the message says what to fix."""


@dataclass
class Features:
    """Per-video features, keyed by ``video_id``.

    Attributes:
        pooled: float32 ``[W]`` per video, the mean over its tokens.
        cls: float32 ``[W]`` per video, the encoder's [CLS] output; None for raw embeddings.
        tokens: float32 ``[L, W]`` per video, its token sequence (real tokens only).
    """

    pooled: dict[str, np.ndarray]
    cls: dict[str, np.ndarray] | None
    tokens: dict[str, np.ndarray]


def load_features(path: str | Path) -> Features:
    """Read a feature cache (Parquet: ``video_id``, ``num_tokens``, ``cls`` ``[W]``, ``mean``
    ``[W]``, ``tokens`` ``[L * W]``), as written by :func:`pipelines.probe.compute_features`."""
    table = pq.read_table(path)
    pooled, cls, tokens = {}, {}, {}
    for row in table.to_pylist():
        vid = row["video_id"]
        pooled[vid] = np.asarray(row["mean"], np.float32)
        cls[vid] = np.asarray(row["cls"], np.float32)
        tokens[vid] = np.asarray(row["tokens"], np.float32).reshape(row["num_tokens"], -1)
    return Features(pooled, cls, tokens)


def raw_features(embeddings: str) -> Features:
    """The raw segment embeddings under ``embeddings`` as features (for the baselines): per
    video its ordered ``[L, D]`` sequence and its mean ``[D]``.

    Raises:
        StorageError: no segments table under ``embeddings``.
    """
    table = read_segments(embeddings, columns=["video_id", "segment_index", "embedding"])
    tokens = dict(sequences_from_table(table))
    return Features({v: t.mean(0) for v, t in tokens.items()}, None, tokens)


def video_ids(embeddings: str) -> set[str]:
    """The ids of the videos with segment embeddings under ``embeddings``.

    Raises:
        StorageError: no segments table under ``embeddings``.
    """
    return set(read_segments(embeddings, columns=["video_id"])["video_id"].to_pylist())


def probe_data(labels: LabelSet, split: str, features: Features) -> ProbeData:
    """One split's :class:`~lvmae.probes.train.ProbeData` from cached features (every
    labelled video of the split must have features)."""
    ids = labels.split(split)["video_id"].to_pylist()
    return ProbeData(
        y=labels.targets(split),
        pooled=np.stack([features.pooled[v] for v in ids]),
        tokens=[features.tokens[v] for v in ids],
        cls=np.stack([features.cls[v] for v in ids]) if features.cls else None,
    )


def load_task(labels_path: str, available: Iterable[str]) -> tuple[LabelSet, list[str]]:
    """Read a labels file and keep the videos among ``available`` (those with embeddings).

    Returns:
        The kept labels, and the labelled video ids left out (for the caller to report).

    Raises:
        LabelsError: the labels file is unreadable or invalid.
        ProbeError: a split is empty once the videos without embeddings are dropped.
    """
    labels = read_labels(labels_path)
    kept, unknown = labels.restrict_to(available)
    try:
        for split in SPLITS:
            kept.split(split)
    except LabelsError as exc:
        raise ProbeError(
            f"{labels_path}: after dropping {len(unknown)} labelled videos without "
            f"embeddings: {exc}"
        ) from exc
    return kept, unknown


class ProbeTask(NamedTuple):
    """One task of a probe or sweep run: a labels file restricted to the embedded videos.

    Attributes:
        name: the task's name in the results (the labels file's stem).
        labels: the labels of the videos that have embeddings.
        skipped: labelled videos without embeddings, left out.
    """

    name: str
    labels: LabelSet
    skipped: int


def load_tasks(labels_paths: Sequence[str], available: Iterable[str]) -> list[ProbeTask]:
    """One :class:`ProbeTask` per labels file (see :func:`load_task`); a warning names the
    labelled videos without embeddings.

    Raises:
        LabelsError, ProbeError: see :func:`load_task`; raised before any training.
    """
    available = set(available)
    tasks = []
    for path in labels_paths:
        labels, unknown = load_task(path, available)
        if unknown:
            log.warning(
                "%s: %d labelled videos have no embeddings and are skipped (e.g. %s)",
                path, len(unknown), ", ".join(unknown[:3]),
            )  # fmt: skip
        tasks.append(ProbeTask(Path(path).stem, labels, len(unknown)))
    return tasks


def evaluate(
    labels: LabelSet,
    features: Features,
    config: ProbeConfig,
    *,
    model: nn.Module | None = None,
    device: str | torch.device = "cpu",
    on_epoch: EpochCallback | None = None,
    use_test: bool = True,
) -> ProbeFit:
    """Train one probe on ``labels``' splits with :func:`~lvmae.probes.train.train_probe`;
    test scores at the best validation epoch.

    Args:
        labels: the task; its ``task`` picks classification or regression.
        features: features of every labelled video.
        config: the probe's recipe.
        model: a probe to train instead of the one ``config.kind`` builds (e.g. a
            :class:`~lvmae.probes.heads.TransformerBaseline`).
        device: where to train.
        on_epoch: called after every epoch (see :func:`~lvmae.probes.train.train_probe`).
        use_test: with False the validation split stands in for the test split, so the
            test labels are never read (sweeps must not see them).
    """
    train = probe_data(labels, "train", features)
    val = probe_data(labels, "val", features)
    test = probe_data(labels, "test", features) if use_test else val
    return train_probe(
        train,
        val,
        test,
        config=config,
        task=labels.task,
        n_classes=labels.num_classes if labels.task == "classification" else None,
        device=device,
        on_epoch=on_epoch,
        model=model,
    )
