"""Labelled long videos: one labels format, and adapters from LVU, COIN and Breakfast.

**The format** the rest of the code reads (:func:`read_labels`, :func:`write_labels`): a CSV
file with a header, or a Parquet file, with columns

- ``video_id`` — the video's path relative to the extraction input root, POSIX form
  (``cooking/p03_cereals.mp4``; docs/design.md, "Data contracts");
- ``label`` — a class name (classification) or a number (regression);
- ``split`` (optional) — ``train`` / ``val`` / ``test``. Without it, :func:`read_labels`
  draws a seeded split, stratified by class (:func:`stratified_split`).

Other columns are ignored. :class:`LabelSet` is the loaded, validated result; its class index
is built over all splits, so a class missing from one split does not shift the others.

**Adapters** turn the public annotation formats into that table (write it with
:func:`write_labels`, or validate it with :meth:`LabelSet.from_table`); :func:`from_source`
picks the adapter by dataset name:

- :func:`lvu_labels` — LVU 1.0 (Wu & Krähenbühl, "Towards Long-Form Video Understanding",
  CVPR 2021): 7 classification and 2 regression tasks on movie clips, YouTube ids;
- :func:`coin_labels` — COIN (Tang et al., "COIN: A Large-scale Dataset for Comprehensive
  Instructional Video Analysis", CVPR 2019): task classification, YouTube ids;
- :func:`breakfast_labels` — Breakfast (Kuehne et al., "The Language of Actions: Recovering
  the Syntax and Semantics of Goal-Directed Human Activities", CVPR 2014): activity
  classification, file paths, participant splits.

These are the long-video benchmarks of LV-MAE (Naiman et al., ICCV 2025, Tables 6–8;
LVU in Table 8).

**Video ids.** The public formats name videos their own way (YouTube ids, Breakfast file
paths); :func:`match_video_ids` maps them to ours. With ``video_ids`` (the ids known to the
run, e.g. from the video table), a public id matches the known id with the same file stem
(name without extension) — and, for a public id that is a path, the same trailing
directories; public ids matching no known video are reported (logged, counted in the table's
metadata, see :func:`unknown_video_ids`) and skipped. Without ``video_ids``, ids are made
from the public id by replacing its extension with ``suffix`` (``abcdefghijk`` →
``abcdefghijk.mp4``), which matches a download named after the public ids.

Modules: :mod:`~lvmae.labels.format` (the format, :class:`LabelSet`, files, video ids),
:mod:`~lvmae.labels.splits` (seeded stratified splits), :mod:`~lvmae.labels.lvu`,
:mod:`~lvmae.labels.coin`, :mod:`~lvmae.labels.breakfast` (one adapter each), and
:mod:`~lvmae.labels.common` (names and the error they all share).

Bad input raises :class:`LabelsError` (an :class:`~lvmae.errors.LvmaeError` and a
``ValueError``), whose message says what to fix. No Ray, no torch.
"""

from __future__ import annotations

import os
from collections.abc import Sequence

import pyarrow as pa

from lvmae.labels.breakfast import (
    BREAKFAST_ACTIVITIES,
    BREAKFAST_EXTENSIONS,
    BREAKFAST_SPLITS,
    breakfast_labels,
)
from lvmae.labels.coin import coin_labels
from lvmae.labels.common import SPLITS, TASKS, LabelsError
from lvmae.labels.format import (
    LABEL_COLUMNS,
    UNKNOWN_IDS_KEY,
    LabelSet,
    match_video_ids,
    read_labels,
    unknown_video_ids,
    write_labels,
)
from lvmae.labels.lvu import LVU_CLASSIFICATION_TASKS, LVU_REGRESSION_TASKS, LVU_TASKS, lvu_labels
from lvmae.labels.splits import stratified_split

__all__ = [
    "BREAKFAST_ACTIVITIES",
    "BREAKFAST_EXTENSIONS",
    "BREAKFAST_SPLITS",
    "DATASETS",
    "LABEL_COLUMNS",
    "LVU_CLASSIFICATION_TASKS",
    "LVU_REGRESSION_TASKS",
    "LVU_TASKS",
    "SPLITS",
    "TASKS",
    "UNKNOWN_IDS_KEY",
    "LabelSet",
    "LabelsError",
    "breakfast_labels",
    "coin_labels",
    "from_source",
    "lvu_labels",
    "match_video_ids",
    "read_labels",
    "stratified_split",
    "unknown_video_ids",
    "write_labels",
]

# The benchmarks :func:`from_source` converts, by the name a config or the CLI gives them.
DATASETS = ("lvu", "coin", "breakfast")


def from_source(
    dataset: str,
    source: str | os.PathLike[str],
    *,
    task: str | None = None,
    split: str = "s1",
    video_ids: Sequence[str] | None = None,
    val_fraction: float = 0.15,
) -> pa.Table:
    """Convert one benchmark's public annotations into the labels table, by dataset name.

    Dispatches to the dataset's adapter with its other options at their defaults (seed 0;
    YouTube ids become ``<id>.mp4`` and Breakfast paths stay as they are when ``video_ids``
    is None):

    - ``"lvu"`` → :func:`lvu_labels` ``(source, task, video_ids=...)`` — LVU 1.0 (Wu &
      Krähenbühl, CVPR 2021); the three official splits, so ``split`` and ``val_fraction``
      are not used;
    - ``"coin"`` → :func:`coin_labels` ``(source, video_ids=..., val_fraction=...)`` — COIN
      (Tang et al., CVPR 2019); ``task`` and ``split`` are not used;
    - ``"breakfast"`` → :func:`breakfast_labels` ``(source, split=..., video_ids=...,
      val_fraction=...)`` — Breakfast (Kuehne et al., CVPR 2014); ``task`` is not used.

    Args:
        dataset: one of :data:`DATASETS` (``lvu``, ``coin``, ``breakfast``).
        source: the annotations: the LVU ``lvu_1.0`` directory (or its parent), the
            ``COIN.json`` file, or the Breakfast video root (searched for video files).
        task: the LVU task, one of :data:`LVU_TASKS` (``director``, ..., ``view_count``);
            required for ``lvu``.
        split: the Breakfast participant split, ``s1`` .. ``s4`` (:data:`BREAKFAST_SPLITS`).
        video_ids: the video ids known to the run (e.g. the extracted videos'), to match the
            public ids to (:func:`match_video_ids`); labelled videos not among them are
            skipped and listed in the table's metadata (:func:`unknown_video_ids`). None: ids
            are made from the public ids.
        val_fraction: COIN and Breakfast have no official val subset: this fraction of the
            train videos (in [0, 1)) moves to val, seeded and stratified by class.

    Returns:
        The adapter's table: ``video_id`` (string), ``label`` (string; float64 for an LVU
        regression task) and ``split`` (``train`` / ``val`` / ``test``), one row per labelled
        video — write it with :func:`write_labels`, validate it with
        :meth:`LabelSet.from_table`.

    Raises:
        LabelsError: an unknown ``dataset``; ``lvu`` without a ``task``; anything the adapter
            raises (unknown task or split, missing or malformed annotations).
    """
    if dataset == "lvu":
        if not task:
            raise LabelsError(
                f"an LVU labels source needs a task: one of {', '.join(LVU_TASKS)} "
                f"(source {os.fspath(source)!r})"
            )
        return lvu_labels(source, task, video_ids=video_ids)
    if dataset == "coin":
        return coin_labels(source, video_ids=video_ids, val_fraction=val_fraction)
    if dataset == "breakfast":
        return breakfast_labels(source, split=split, video_ids=video_ids, val_fraction=val_fraction)
    raise LabelsError(
        f"unknown labels dataset {dataset!r} (source {os.fspath(source)!r}); use one of "
        f"{', '.join(DATASETS)}"
    )
