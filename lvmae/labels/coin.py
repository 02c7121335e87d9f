"""COIN labels (Tang et al., "COIN: A Large-scale Dataset for Comprehensive Instructional
Video Analysis", CVPR 2019): task classification, YouTube ids — a long-video benchmark of
LV-MAE (Naiman et al., ICCV 2025, Tables 6–7)."""

from __future__ import annotations

import json
import os
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa

from lvmae.labels.common import LabelsError, label_text, some
from lvmae.labels.format import adapter_table
from lvmae.labels.splits import carve_val

__all__ = ["coin_labels"]

_COIN_SUBSETS = {"training": "train", "validation": "val", "testing": "test"}


def _coin_database(path: Path) -> dict[str, object]:
    """The ``database`` object of ``COIN.json``."""
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError) as e:
        raise LabelsError(f"cannot read COIN annotations {path}: {e}") from e
    database = data.get("database") if isinstance(data, dict) else None
    if not isinstance(database, dict):
        raise LabelsError(
            f"{path}: no 'database' object; expected COIN.json with "
            f'{{"database": {{"<youtube_id>": {{"class": ..., "subset": ...}}}}}}'
        )
    return database


def coin_labels(
    coin_json: str | os.PathLike[str],
    *,
    video_ids: Iterable[str] | None = None,
    val_fraction: float = 0.0,
    seed: int = 0,
    suffix: str | None = ".mp4",
) -> pa.Table:
    """Task labels of COIN (Tang et al., CVPR 2019): 180 tasks, official subsets.

    Format: ``COIN.json`` = ``{"database": {"<youtube_id>": {"recipe_type": int, "class":
    "<task name>", "subset": "training" | "testing", "duration": float, "annotation":
    [...]}}}``. Label = the task name (``class``); split = ``subset`` (``training`` → train,
    ``testing`` → test). COIN has no val subset: ``val_fraction > 0`` moves that fraction of
    the (known) train videos to val, seeded and stratified by task
    (:func:`~lvmae.labels.splits.stratified_split`).

    Video ids: see :func:`~lvmae.labels.format.match_video_ids` (``video_ids`` known to the
    run, else ``<youtube_id><suffix>``); unknown videos are logged, listed in the metadata
    (:func:`~lvmae.labels.format.unknown_video_ids`) and skipped. Rows are in YouTube id
    order.

    Returns:
        A table ``video_id``, ``label``, ``split``.

    Raises:
        LabelsError: unreadable JSON, no ``database`` object, entries without a ``class`` or
            with an unknown ``subset`` (the message lists them), bad ``val_fraction``.
    """
    path = Path(coin_json)
    database = _coin_database(path)
    ids: list[str] = []
    labels: list[object] = []
    splits: list[str] = []
    bad: list[str] = []
    for youtube_id in sorted(database):
        entry = database[youtube_id]
        entry = entry if isinstance(entry, dict) else {}
        label = label_text(entry.get("class"))
        split = _COIN_SUBSETS.get(str(entry.get("subset", "")).lower())
        if not label or split is None:
            bad.append(
                f"{youtube_id} (class={entry.get('class')!r}, subset={entry.get('subset')!r})"
            )
            continue
        ids.append(youtube_id)
        labels.append(label)
        splits.append(split)
    if bad:
        raise LabelsError(
            f"{path}: entries without a class or with a subset other than training/testing: "
            f"{some(bad, 3)}; fix or delete them"
        )
    table = adapter_table(
        ids, labels, splits, video_ids=video_ids, suffix=suffix, regression=False, source="COIN"
    )
    return carve_val(table, val_fraction, seed, str(path))
