"""Breakfast labels (Kuehne et al., "The Language of Actions: Recovering the Syntax and
Semantics of Goal-Directed Human Activities", CVPR 2014): activity classification from file
paths, participant splits — a long-video benchmark of LV-MAE (Naiman et al., ICCV 2025,
Tables 6–7)."""

from __future__ import annotations

import os
import posixpath
import re
from collections.abc import Iterable, Sequence
from pathlib import Path, PurePath

import pyarrow as pa

from lvmae.labels.common import LabelsError, some
from lvmae.labels.format import adapter_table, check_unique_videos
from lvmae.labels.splits import carve_val

__all__ = ["BREAKFAST_ACTIVITIES", "BREAKFAST_EXTENSIONS", "BREAKFAST_SPLITS", "breakfast_labels"]

BREAKFAST_ACTIVITIES = (
    "cereals",
    "coffee",
    "friedegg",
    "juice",
    "milk",
    "pancake",
    "salat",
    "sandwich",
    "scrambledegg",
    "tea",
)
# Standard Breakfast splits: the participants (inclusive range) of each split's test set.
BREAKFAST_SPLITS = {"s1": (3, 15), "s2": (16, 28), "s3": (29, 41), "s4": (42, 54)}
BREAKFAST_EXTENSIONS = (".avi", ".mp4", ".mkv", ".webm", ".mov")

_BREAKFAST_PERSON = re.compile(r"P(\d+)_", re.IGNORECASE)
_BREAKFAST_CHANNEL = re.compile(r"_ch\d+$", re.IGNORECASE)


def _breakfast_paths(
    paths_or_root: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    extensions: Sequence[str],
) -> list[str]:
    if isinstance(paths_or_root, str | os.PathLike):
        root = Path(paths_or_root)
        if not root.is_dir():
            raise LabelsError(
                f"{root} is not a directory; pass the Breakfast video root or a list of paths"
            )
        exts = tuple(e.lower() for e in extensions)
        paths = sorted(
            p.relative_to(root).as_posix()
            for p in root.rglob("*")
            if p.is_file() and p.suffix.lower() in exts
        )
        if not paths:
            raise LabelsError(f"no videos ({', '.join(exts)}) under {root}")
        return paths
    return [PurePath(p).as_posix() for p in paths_or_root]


def breakfast_labels(
    paths_or_root: str | os.PathLike[str] | Iterable[str | os.PathLike[str]],
    *,
    split: str | None = "s1",
    video_ids: Iterable[str] | None = None,
    suffix: str | None = None,
    val_fraction: float = 0.0,
    seed: int = 0,
    extensions: Sequence[str] = BREAKFAST_EXTENSIONS,
) -> pa.Table:
    """Activity labels of Breakfast (Kuehne et al., CVPR 2014) from its file naming scheme.

    Files are named like ``P03/cam01/P03_cereals.avi``, ``P03/stereo/P03_cereals_ch0.avi`` or
    ``P03_stereo01_P03_cereals.avi``: the participant is the number of the last ``P<nn>_``
    (case-insensitive), the activity the rest of the file stem, less a stereo ``_ch<k>``
    suffix — one of :data:`BREAKFAST_ACTIVITIES`. Each camera's file is its own video.

    Splits are by participant (:data:`BREAKFAST_SPLITS`): ``s1`` tests on P03–P15, ``s2`` on
    P16–P28, ``s3`` on P29–P41, ``s4`` on P42–P54; the others train. ``split=None`` writes no
    split column (:func:`~lvmae.labels.format.read_labels` then draws one — which mixes
    participants). ``val_fraction > 0`` moves that fraction of the train participants, with
    all their videos, to val (seeded; :func:`~lvmae.labels.splits.carve_val` with groups).

    Args:
        paths_or_root: a directory (searched recursively for ``extensions``; ids are paths
            relative to it) or video paths (taken as given, POSIX form).
        split: ``s1`` .. ``s4`` or None.
        video_ids, suffix: see :func:`~lvmae.labels.format.match_video_ids`; by default (both
            None) the paths are the video ids; ``suffix=".mp4"`` swaps the extension
            (transcoded copies).

    Returns:
        A table ``video_id``, ``label`` (activity), ``split`` (unless ``split=None``).

    Raises:
        LabelsError: not a directory, no videos, file names outside the naming scheme or with
            an unknown activity (the message lists them), unknown split.
    """
    if split is not None and split.lower() not in BREAKFAST_SPLITS:
        raise LabelsError(
            f"unknown Breakfast split {split!r}; use {', '.join(BREAKFAST_SPLITS)} or None"
        )
    paths = _breakfast_paths(paths_or_root, extensions)
    labels: list[object] = []
    splits: list[str] = []
    bad: list[str] = []
    test_lo, test_hi = BREAKFAST_SPLITS[split.lower()] if split is not None else (0, -1)
    for p in paths:
        stem = posixpath.splitext(posixpath.basename(p))[0]
        matches = list(_BREAKFAST_PERSON.finditer(stem))
        activity = _BREAKFAST_CHANNEL.sub("", stem[matches[-1].end() :]).lower() if matches else ""
        if activity not in BREAKFAST_ACTIVITIES:
            bad.append(p)
            continue
        person = int(matches[-1].group(1))
        labels.append(activity)
        splits.append("test" if test_lo <= person <= test_hi else "train")
    if bad:
        raise LabelsError(
            f"Breakfast file names outside the scheme P<nn>_<activity> (activities: "
            f"{', '.join(BREAKFAST_ACTIVITIES)}): {some(bad)}; rename or leave them out"
        )
    check_unique_videos(paths, labels, None, "Breakfast")
    table = adapter_table(
        paths,
        labels,
        splits if split is not None else None,
        video_ids=video_ids,
        suffix=suffix,
        regression=False,
        source="Breakfast",
    )
    if split is None:
        return table
    # val by participant, as the test split: each camera's file of a recording (and each
    # recording of a person) stays on one side. The table's ids keep the source's file stems.
    people = [
        list(_BREAKFAST_PERSON.finditer(posixpath.splitext(posixpath.basename(v))[0]))[-1].group(1)
        for v in table["video_id"].to_pylist()
    ]
    return carve_val(
        table, val_fraction, seed, "Breakfast", groups=[f"P{int(p):02d}" for p in people]
    )
