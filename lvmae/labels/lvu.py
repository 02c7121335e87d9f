"""LVU 1.0 labels (Wu & Krähenbühl, "Towards Long-Form Video Understanding", CVPR 2021):
7 classification and 2 regression tasks on movie clips, YouTube ids — a long-video benchmark
of LV-MAE (Naiman et al., ICCV 2025, Table 8)."""

from __future__ import annotations

import math
import os
import re
from collections import defaultdict
from collections.abc import Iterable
from pathlib import Path

import pyarrow as pa

from lvmae.labels.common import INTEGER, SPLITS, LabelsError, as_float, some
from lvmae.labels.format import adapter_table, check_unique_videos

__all__ = ["LVU_CLASSIFICATION_TASKS", "LVU_REGRESSION_TASKS", "LVU_TASKS", "lvu_labels"]

LVU_CLASSIFICATION_TASKS = (
    "director",
    "genre",
    "writer",
    "year",
    "scene",
    "way_speaking",
    "relationship",
)
LVU_REGRESSION_TASKS = ("like_ratio", "view_count")
LVU_TASKS = LVU_CLASSIFICATION_TASKS + LVU_REGRESSION_TASKS

_YOUTUBE_ID = re.compile(r"[A-Za-z0-9_-]{11}")


def _lvu_dir(root: str | os.PathLike[str], task: str) -> Path:
    root = Path(root)
    for candidate in (root / task, root / "lvu_1.0" / task):
        if candidate.is_dir():
            return candidate
    raise LabelsError(
        f"no LVU task directory {task!r} under {root} (looked for {root / task} and "
        f"{root / 'lvu_1.0' / task}); pass the lvu_1.0 directory of the LVU release"
    )


def _lvu_youtube_pos(tokens: list[str], header: list[str]) -> int | None:
    """Index of the YouTube id among a row's tokens (see :func:`lvu_labels`)."""
    if "youtube_id" in header:
        pos = len(tokens) - (len(header) - header.index("youtube_id"))
        if 0 < pos < len(tokens) and _YOUTUBE_ID.fullmatch(tokens[pos]):
            return pos
    if len(tokens) >= 2 and _YOUTUBE_ID.fullmatch(tokens[-2]):
        return len(tokens) - 2
    found = [i for i in range(1, len(tokens)) if _YOUTUBE_ID.fullmatch(tokens[i])]
    return found[-1] if found else None


def _lvu_target(task: str, numbers: list[str], where: str) -> float:
    need = 2 if task == "like_ratio" else 1
    values = [v for v in (as_float(x) for x in numbers[:need]) if v is not None]
    if len(values) < need:
        what = "like and dislike counts" if task == "like_ratio" else "a view count"
        raise LabelsError(
            f"{where}: LVU {task} needs {what} before the YouTube id, got {numbers!r}; "
            f"fix or delete the line"
        )
    if task == "like_ratio":
        like, dislike = values
        if like < 0 or dislike < 0 or like + dislike <= 0:
            raise LabelsError(
                f"{where}: like/dislike counts {numbers[:2]} give no like ratio; "
                f"fix or delete the line"
            )
        return 10.0 * like / (like + dislike)
    if values[0] <= 0:
        raise LabelsError(
            f"{where}: view count {numbers[0]!r} must be positive (its log is the target); "
            f"fix or delete the line"
        )
    return math.log(values[0])


def _check_lvu_args(task: str, label_from: str) -> None:
    if task not in LVU_TASKS:
        raise LabelsError(
            f"unknown LVU task {task!r}; classification tasks: "
            f"{', '.join(LVU_CLASSIFICATION_TASKS)}; regression tasks: "
            f"{', '.join(LVU_REGRESSION_TASKS)}"
        )
    if label_from not in ("name", "index"):
        raise LabelsError(f"label_from must be 'name' or 'index', got {label_from!r}")


def _lvu_class(
    tokens: list[str],
    pos: int,
    *,
    task: str,
    label_from: str,
    names: dict[str, set[str]],
    where: str,
) -> str:
    """A classification line's label; records the index's name in ``names``."""
    if not INTEGER.fullmatch(tokens[0]):
        raise LabelsError(
            f"{where}: LVU {task} lines start with an integer class index, got "
            f"{tokens[0]!r}; fix or delete the line"
        )
    index = str(int(tokens[0]))
    name = " ".join(tokens[1:pos])
    names[index].add(name)
    return name if label_from == "name" and name else index


def _lvu_split_file(
    path: Path, task: str, label_from: str, names: dict[str, set[str]]
) -> list[tuple[str, object]]:
    """``(youtube_id, label)`` for each non-blank line of one split file after its header."""
    if not path.is_file():
        raise LabelsError(f"missing LVU split file {path}; the release has train, val, test")
    lines = path.read_text(encoding="utf-8").splitlines()
    header = lines[0].split() if lines else []
    rows: list[tuple[str, object]] = []
    for lineno, line in enumerate(lines[1:], start=2):
        tokens = line.split()
        if not tokens:
            continue
        where = f"{path}:{lineno}"
        pos = _lvu_youtube_pos(tokens, header)
        if pos is None:
            raise LabelsError(
                f"{where}: no YouTube id (11 characters of A-Z a-z 0-9 _ -) in {line!r}; "
                f"fix or delete the line"
            )
        if task in LVU_REGRESSION_TASKS:
            label: object = _lvu_target(task, tokens[:pos], where)
        else:
            label = _lvu_class(
                tokens, pos, task=task, label_from=label_from, names=names, where=where
            )
        rows.append((tokens[pos], label))
    return rows


def lvu_labels(
    root: str | os.PathLike[str],
    task: str,
    *,
    video_ids: Iterable[str] | None = None,
    suffix: str | None = ".mp4",
    label_from: str = "name",
) -> pa.Table:
    """Labels of one LVU 1.0 task (Wu & Krähenbühl, CVPR 2021), all three official splits.

    Layout: ``<root>/<task>/{train,val,test}.csv`` (``root`` may also be the directory that
    holds ``lvu_1.0``). Each file is space-separated; its first line is a header naming the
    columns (e.g. ``director_id director_name youtube_id imdb_id``). Parsing assumptions,
    after the LVU authors' loader (``line.split()``, label ``[0]``, YouTube id ``[-2]``):

    - the YouTube id is the column the header names ``youtube_id`` (counted from the end of
      the row, so multi-word names before it are fine) if that token looks like a YouTube id
      (11 characters of ``A-Z a-z 0-9 _ -``); else the second-to-last token if it looks like
      one; else the LAST token after the first that looks like one. A line with none is an
      error.
    - classification (:data:`LVU_CLASSIFICATION_TASKS`): the first token is the class index
      (an integer); the tokens between it and the YouTube id, joined by spaces, are the class
      name. ``label_from="name"`` (default) labels with the name (the index where a task has
      no name column); ``label_from="index"`` with the index, as the LVU loader does.
    - regression (:data:`LVU_REGRESSION_TASKS`), targets as in the LVU loader (float64),
      without its dataset-mean centring: ``view_count`` → ln(first token);
      ``like_ratio`` → 10 · like / (like + dislike) from the first two tokens.

    Video ids: see :func:`~lvmae.labels.format.match_video_ids` (``video_ids`` known to the
    run, else ``<youtube_id><suffix>``); labelled videos not among ``video_ids`` are logged,
    listed in the table's metadata (:func:`~lvmae.labels.format.unknown_video_ids`) and
    skipped.

    Returns:
        A table ``video_id``, ``label`` (string, or float64 for regression), ``split``.

    Raises:
        LabelsError: unknown task; missing directory or split file; a line without a YouTube
            id, a non-integer class index, or a non-numeric / invalid regression target (the
            message gives file and line); a class index with two different names; a video
            labelled twice differently.
    """
    _check_lvu_args(task, label_from)
    directory = _lvu_dir(root, task)
    ids: list[str] = []
    labels: list[object] = []
    splits: list[str] = []
    names: dict[str, set[str]] = defaultdict(set)
    for split in SPLITS:
        for youtube_id, label in _lvu_split_file(
            directory / f"{split}.csv", task, label_from, names
        ):
            ids.append(youtube_id)
            labels.append(label)
            splits.append(split)
    clashes = sorted(f"{k}: {' / '.join(sorted(v))}" for k, v in names.items() if len(v) > 1)
    if clashes and label_from == "name":
        raise LabelsError(
            f"{directory}: class indices with several names ({some(clashes, 3)}); pass "
            f"label_from='index' to label by index"
        )
    check_unique_videos(ids, labels, splits, str(directory))
    return adapter_table(
        ids,
        labels,
        splits,
        video_ids=video_ids,
        suffix=suffix,
        regression=task in LVU_REGRESSION_TASKS,
        source=f"LVU {task}",
    )
