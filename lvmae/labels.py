"""Labelled long videos: one labels format, and adapters from LVU, COIN and Breakfast.

**The format** the rest of the code reads (:func:`read_labels`, :func:`write_labels`): a CSV
file with a header, or a Parquet file, with columns

- ``video_id`` — the video's path relative to the extraction input root, POSIX form
  (``cooking/p03_cereals.mp4``; DESIGN.md, "Data contracts");
- ``label`` — a class name (classification) or a number (regression);
- ``split`` (optional) — ``train`` / ``val`` / ``test``. Without it, :func:`read_labels`
  draws a seeded split, stratified by class (:func:`stratified_split`).

Other columns are ignored. :class:`LabelSet` is the loaded, validated result; its class index
is built over all splits, so a class missing from one split does not shift the others.

**Adapters** turn the public annotation formats into that table (write it with
:func:`write_labels`, or validate it with :meth:`LabelSet.from_table`):

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

Bad input raises :class:`LabelsError`, whose message says what to fix. No Ray, no torch.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import os
import posixpath
import re
import zlib
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path, PurePath

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

__all__ = [
    "BREAKFAST_ACTIVITIES",
    "BREAKFAST_SPLITS",
    "LVU_CLASSIFICATION_TASKS",
    "LVU_REGRESSION_TASKS",
    "LVU_TASKS",
    "SPLITS",
    "TASKS",
    "LabelSet",
    "LabelsError",
    "breakfast_labels",
    "coin_labels",
    "lvu_labels",
    "match_video_ids",
    "read_labels",
    "stratified_split",
    "unknown_video_ids",
    "write_labels",
]

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")
TASKS = ("classification", "regression")

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

LABEL_COLUMNS = ("video_id", "label", "split")
UNKNOWN_IDS_KEY = b"lvmae.unknown_video_ids"

_SPLIT_ALIASES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}
_YOUTUBE_ID = re.compile(r"[A-Za-z0-9_-]{11}")
_INTEGER = re.compile(r"[+-]?\d+")
_BREAKFAST_PERSON = re.compile(r"P(\d+)_", re.IGNORECASE)
_BREAKFAST_CHANNEL = re.compile(r"_ch\d+$", re.IGNORECASE)
# read_labels infers regression for integer-like labels only past this many distinct values
# (and fewer than 2 rows per value on average); see _infer_task.
_MAX_INTEGER_CLASSES = 50


class LabelsError(ValueError):
    """Labels are missing, malformed or inconsistent; the message says what to fix."""


def _some(items: Sequence[object], k: int = 5) -> str:
    """``a, b, c`` or ``a, b, c, ... (12 in all)``."""
    shown = ", ".join(str(x) for x in items[:k])
    return shown if len(items) <= k else f"{shown}, ... ({len(items)} in all)"


def _label_text(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if math.isnan(value):
            return ""
        return str(int(value)) if value.is_integer() else repr(value)
    return str(value).strip()


def _as_float(text: str) -> float | None:
    try:
        value = float(text)
    except ValueError:
        return None
    return value if math.isfinite(value) else None


def _sort_classes(classes: Iterable[str]) -> list[str]:
    """Sorted; numerically when every class is an integer (``2`` before ``10``)."""
    classes = set(classes)
    if classes and all(_INTEGER.fullmatch(c) for c in classes):
        return sorted(classes, key=lambda c: (int(c), c))
    return sorted(classes)


def _infer_task(labels: Sequence[str]) -> str:
    """``regression`` when every label is a finite number and either some label is not an
    integer, or there are more than ``_MAX_INTEGER_CLASSES`` distinct integers with fewer than
    two rows each on average (view counts, not class indices); else ``classification``."""
    parsed = [_as_float(x) for x in labels]
    values = [v for v in parsed if v is not None]
    if len(values) < len(parsed):
        return "classification"
    if any(not v.is_integer() for v in values):
        return "regression"
    distinct = len(set(values))
    if distinct > _MAX_INTEGER_CLASSES and 2 * distinct > len(values):
        return "regression"
    return "classification"


# --------------------------------------------------------------------------- splits


def _check_fractions(val_fraction: float, test_fraction: float) -> None:
    if not (0.0 <= val_fraction < 1.0 and 0.0 <= test_fraction < 1.0):
        raise LabelsError(
            f"val_fraction and test_fraction must be in [0, 1), got {val_fraction} and "
            f"{test_fraction}"
        )
    if val_fraction + test_fraction >= 1.0:
        raise LabelsError(
            f"val_fraction + test_fraction must be < 1 to leave a train split, got "
            f"{val_fraction} + {test_fraction}"
        )


def _allocate(
    sizes: dict[str, int], fraction: float, caps: dict[str, int], order: dict[str, int]
) -> dict[str, int]:
    """How many of each class to draw so the total is ``round(total · fraction)`` (at least 1
    when ``fraction > 0``), each class near its share, none above its cap: floors first,
    then the largest remainders (ties in the seeded ``order``)."""
    total = sum(sizes.values())
    target = math.floor(total * fraction + 0.5)
    if fraction > 0:
        target = max(target, 1)
    target = min(target, sum(caps.values()))
    share = {c: sizes[c] * fraction for c in sizes}
    counts = {c: min(math.floor(share[c]), caps[c]) for c in sizes}
    left = target - sum(counts.values())
    ranked = sorted(sizes, key=lambda c: (-(share[c] - math.floor(share[c])), order[c]))
    while left > 0:
        for c in ranked:
            if left > 0 and counts[c] < caps[c]:
                counts[c] += 1
                left -= 1
    return counts


def stratified_split(
    labels: Sequence[str], *, val_fraction: float, test_fraction: float, seed: int
) -> list[str]:
    """Assign ``train`` / ``val`` / ``test`` to each row, stratified by label.

    The val and test sizes are ``round(n · fraction)`` (at least 1 when the fraction is
    positive and the data allow it), spread over classes in proportion to their size
    (largest remainders); every class keeps at least one train example, so a class with a
    single example is always ``train``. Which rows of a class are drawn is a permutation seeded
    by ``seed`` and the class name (not by the class's position among the others).
    Deterministic for the same ``labels`` (in the same order) and ``seed``.

    Args:
        labels: one class name per row (for regression, a bin per row).
        val_fraction, test_fraction: fractions of rows, each in [0, 1), summing to < 1.
        seed: a non-negative integer.

    Returns:
        One split name per row, in the order of ``labels``.

    Raises:
        LabelsError: fractions out of range, or a negative seed.
    """
    _check_fractions(val_fraction, test_fraction)
    if seed < 0:
        raise LabelsError(f"seed must be a non-negative integer, got {seed}")
    groups: dict[str, list[int]] = defaultdict(list)
    for i, label in enumerate(labels):
        groups[str(label)].append(i)
    classes = sorted(groups)
    sizes = {c: len(groups[c]) for c in classes}
    rank = np.random.default_rng(seed).permutation(len(classes))
    order = {c: int(r) for c, r in zip(classes, rank, strict=True)}
    n_test = _allocate(sizes, test_fraction, {c: sizes[c] - 1 for c in classes}, order)
    val_caps = {c: sizes[c] - 1 - n_test[c] for c in classes}
    n_val = _allocate(sizes, val_fraction, val_caps, order)
    out = ["train"] * len(labels)
    for c in classes:
        rng = np.random.default_rng([seed, zlib.crc32(c.encode())])
        rows = np.asarray(groups[c])[rng.permutation(sizes[c])]
        for i in rows[: n_test[c]]:
            out[i] = "test"
        for i in rows[n_test[c] : n_test[c] + n_val[c]]:
            out[i] = "val"
    return out


def _regression_strata(values: Sequence[float]) -> list[str]:
    """Quantile bins (up to 10, ~10 rows each) so a random split keeps the target's spread."""
    n = len(values)
    bins = max(1, min(10, n // 10))
    ranks = np.empty(n, dtype=np.int64)
    ranks[np.argsort(np.asarray(values), kind="stable")] = np.arange(n)
    return [str(int(r) * bins // n) for r in ranks]


# --------------------------------------------------------------------------- LabelSet


def _labels_table(
    video_ids: Sequence[str],
    labels: Sequence[object],
    splits: Sequence[str] | None,
    *,
    regression: bool,
) -> pa.Table:
    columns = {
        "video_id": pa.array(video_ids, pa.string()),
        "label": pa.array(labels, pa.float64() if regression else pa.string()),
    }
    if splits is not None:
        columns["split"] = pa.array(splits, pa.string())
    return pa.table(columns)


@dataclass(frozen=True)
class LabelSet:
    """Loaded, validated labels.

    Attributes:
        table: columns ``video_id`` (string), ``label`` (string for classification, float64
            for regression) and ``split`` (``train`` / ``val`` / ``test``), one row per video.
        task: ``"classification"`` or ``"regression"``.
        classes: the class index, over ALL splits, sorted (numerically when every class is an
            integer); empty for regression. Class ``classes[i]`` has index ``i``.
    """

    table: pa.Table
    task: str
    classes: list[str]

    @classmethod
    def from_table(
        cls,
        table: pa.Table,
        *,
        task: str | None = None,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        seed: int = 0,
        min_examples_per_class: int = 2,
        required_splits: Sequence[str] = SPLITS,
        source: str = "labels",
    ) -> LabelSet:
        """Validate a table with ``video_id``, ``label`` and optional ``split`` columns.

        See :func:`read_labels` for the arguments and the checks; ``source`` names the table
        in error messages.
        """
        return _validate(
            table,
            task=task,
            val_fraction=val_fraction,
            test_fraction=test_fraction,
            seed=seed,
            min_examples_per_class=min_examples_per_class,
            required_splits=required_splits,
            source=source,
        )

    @property
    def num_classes(self) -> int:
        return len(self.classes)

    def class_index(self) -> dict[str, int]:
        """``{class name: index}`` over all splits; empty for regression."""
        return {c: i for i, c in enumerate(self.classes)}

    def split_sizes(self) -> dict[str, int]:
        """Rows per split, every split of :data:`SPLITS` included (0 when empty)."""
        counts = Counter(self.table["split"].to_pylist())
        return {s: counts.get(s, 0) for s in SPLITS}

    def split(self, name: str) -> pa.Table:
        """The rows of split ``name``, in file order.

        Raises:
            LabelsError: ``name`` is not a split, or that split has no rows.
        """
        if name not in SPLITS:
            raise LabelsError(f"unknown split {name!r}; splits are {', '.join(SPLITS)}")
        mask = pc.equal(self.table["split"], name)
        rows = self.table.filter(mask)
        if rows.num_rows == 0:
            sizes = ", ".join(f"{s}: {k}" for s, k in self.split_sizes().items())
            raise LabelsError(
                f"split {name!r} has no labelled videos ({sizes}); give it rows in the labels "
                f"file's split column, or drop that column to draw a seeded stratified split"
            )
        return rows

    def targets(self, name: str) -> np.ndarray:
        """Targets of split ``name`` in :meth:`split` order: class indices ``[N]`` int64
        (classification) or values ``[N]`` float64 (regression)."""
        labels = self.split(name)["label"].to_pylist()
        if self.task == "regression":
            return np.asarray(labels, dtype=np.float64)
        index = self.class_index()
        return np.asarray([index[x] for x in labels], dtype=np.int64)

    def restrict_to(self, video_ids: Iterable[str]) -> tuple[LabelSet, list[str]]:
        """Keep the labelled videos that are among ``video_ids`` (e.g. those extracted).

        The class index is kept as is, so indices stay comparable with the full set.

        Returns:
            The restricted set, and the labelled video ids that are not among ``video_ids``
            (in table order) — for the caller to report; they are skipped.
        """
        known = set(video_ids)
        ids = self.table["video_id"].to_pylist()
        keep = [v in known for v in ids]
        unknown = [v for v, k in zip(ids, keep, strict=True) if not k]
        table = self.table.filter(pa.array(keep, pa.bool_()))
        return LabelSet(table, self.task, list(self.classes)), unknown


def _rows_named(rows: Sequence[int], ids: Sequence[str]) -> str:
    """``row 3 (video_id 'a.mp4')`` for each row (1-based data rows)."""
    named = [f"row {i + 1} ({ids[i]!r})" if ids[i] else f"row {i + 1}" for i in rows]
    return _some(named)


def _validate(
    table: pa.Table,
    *,
    task: str | None,
    val_fraction: float,
    test_fraction: float,
    seed: int,
    min_examples_per_class: int,
    required_splits: Sequence[str],
    source: str,
) -> LabelSet:
    names = table.column_names
    missing = [c for c in ("video_id", "label") if c not in names]
    if missing:
        raise LabelsError(
            f"{source}: no {' or '.join(missing)} column (columns: {', '.join(names) or 'none'})"
            f"; a labels file needs columns video_id,label and optionally split"
        )
    if task is not None and task not in TASKS:
        raise LabelsError(f"task must be one of {', '.join(TASKS)} or None, got {task!r}")
    bad_required = [s for s in required_splits if s not in SPLITS]
    if bad_required:
        raise LabelsError(f"required_splits must name splits of {SPLITS}, got {bad_required}")
    if table.num_rows == 0:
        raise LabelsError(f"{source}: no labelled videos; add rows video_id,label[,split]")

    ids = [_label_text(v) for v in table["video_id"].to_pylist()]
    labels = [_label_text(v) for v in table["label"].to_pylist()]
    empty = [i for i in range(len(ids)) if not ids[i] or not labels[i]]
    if empty:
        raise LabelsError(
            f"{source}: {_rows_named(empty, ids)} lack a video_id or a label (rows counted from "
            f"1, header excluded); fill them in or delete those rows"
        )

    has_split = "split" in names and any(_label_text(v) for v in table["split"].to_pylist())
    splits: list[str] | None = None
    if has_split:
        raw = [_label_text(v) for v in table["split"].to_pylist()]
        blank = [i for i, s in enumerate(raw) if not s]
        if blank:
            raise LabelsError(
                f"{source}: {_rows_named(blank, ids)} have no split; give every row one of "
                f"{', '.join(SPLITS)}, or drop the split column to draw a seeded stratified split"
            )
        splits = [_SPLIT_ALIASES.get(s.lower(), "") for s in raw]
        bad = [i for i, s in enumerate(splits) if not s]
        if bad:
            values = [repr(v) for v in sorted({raw[i] for i in bad})]
            raise LabelsError(
                f"{source}: unknown split value(s) {_some(values)} in {_rows_named(bad, ids)}; "
                f"use {', '.join(SPLITS)}"
            )

    if task is None:
        floating = pa.types.is_floating(table.schema.field("label").type)
        task = "regression" if floating else _infer_task(labels)
    values: list[float] = []
    if task == "regression":
        parsed = [_as_float(x) for x in labels]
        bad = [i for i, v in enumerate(parsed) if v is None]
        if bad:
            shown = _some([f"row {i + 1} ({ids[i]!r}): {labels[i]!r}" for i in bad])
            raise LabelsError(
                f"{source}: regression targets must be finite numbers; not numbers: {shown}. "
                f"Fix or delete those rows (or pass task='classification' if the labels are "
                f"class names)"
            )
        values = [v for v in parsed if v is not None]

    # One row per video: exact repeats are dropped, contradictions are errors.
    first: dict[str, int] = {}
    keep: list[int] = []
    conflicts: list[str] = []
    for i, v in enumerate(ids):
        j = first.setdefault(v, i)
        if j == i:
            keep.append(i)
        elif labels[i] != labels[j] or (splits is not None and splits[i] != splits[j]):
            conflicts.append(v)
    if conflicts:
        raise LabelsError(
            f"{source}: videos labelled twice with different labels or splits: "
            f"{_some(sorted(set(conflicts)))}; keep one row per video_id"
        )
    if len(keep) < len(ids):
        log.warning("%s: dropped %d repeated rows", source, len(ids) - len(keep))
        ids = [ids[i] for i in keep]
        labels = [labels[i] for i in keep]
        values = [values[i] for i in keep] if values else values
        splits = [splits[i] for i in keep] if splits is not None else None

    if task == "classification":
        counts = Counter(labels)
        small = sorted(c for c, k in counts.items() if k < min_examples_per_class)
        if small:
            shown = _some([f"{c!r} ({counts[c]})" for c in small])
            hint = (
                " (these look like numeric targets: pass task='regression')"
                if all(_as_float(c) is not None for c in counts)
                else ""
            )
            raise LabelsError(
                f"{source}: classes with fewer than {min_examples_per_class} examples: {shown}; "
                f"a class needs examples to train on and to evaluate with — merge such classes "
                f"into others or drop their rows (or give explicit splits and pass "
                f"min_examples_per_class=1 to keep them){hint}"
            )

    if splits is None:
        strata = labels if task == "classification" else _regression_strata(values)
        splits = stratified_split(
            strata, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed
        )

    sizes = Counter(splits)
    for name in required_splits:
        if sizes.get(name, 0) == 0:
            have = ", ".join(f"{s}: {sizes.get(s, 0)}" for s in SPLITS)
            if has_split:
                fix = (
                    f"add rows with split={name}, or drop the split column to draw a seeded "
                    f"stratified split"
                )
            else:
                fix = (
                    f"the seeded stratified split of {len(ids)} rows left it empty; raise "
                    f"{name}_fraction, add examples, or give explicit splits in a split column"
                )
            raise LabelsError(f"{source}: split {name!r} is empty ({have}); {fix}")

    classes: list[str] = []
    if task == "classification":
        classes = _sort_classes(labels)
        in_train = {c for c, s in zip(labels, splits, strict=True) if s == "train"}
        untrained = [c for c in classes if c not in in_train]
        if untrained:
            log.warning(
                "%s: classes with no train example (a probe cannot learn them): %s",
                source,
                _some(untrained),
            )

    out = _labels_table(
        ids, values if task == "regression" else labels, splits, regression=task == "regression"
    )
    return LabelSet(out, task, classes)


# --------------------------------------------------------------------------- files


def _filesystem(path: str | os.PathLike[str]) -> tuple[pafs.FileSystem, str]:
    text = os.fspath(path)
    if "://" in text:
        return pafs.FileSystem.from_uri(text)
    return pafs.LocalFileSystem(), str(Path(text).absolute())


def _format_of(path: str) -> str:
    suffix = posixpath.splitext(path)[1].lower()
    if suffix == ".csv":
        return "csv"
    if suffix in (".parquet", ".pq"):
        return "parquet"
    raise LabelsError(
        f"{path}: unknown labels format {suffix or '(no extension)'!r}; use a .csv or .parquet file"
    )


def _read_csv(data: bytes, source: str) -> pa.Table:
    rows = [r for r in csv.reader(io.StringIO(data.decode("utf-8-sig"))) if r]
    if not rows:
        raise LabelsError(f"{source}: empty file; write a header video_id,label[,split] and rows")
    header = [h.strip() for h in rows[0]]
    ragged = [i + 1 for i, r in enumerate(rows[1:]) if len(r) != len(header)]
    if ragged:
        raise LabelsError(
            f"{source}: data rows {_some(ragged)} do not have the header's {len(header)} fields "
            f"({','.join(header)}); quote values that contain commas"
        )
    columns = {h: [r[k] for r in rows[1:]] for k, h in enumerate(header)}
    return pa.table({h: pa.array(v, pa.string()) for h, v in columns.items()})


def read_labels(
    path: str | os.PathLike[str],
    *,
    task: str | None = None,
    val_fraction: float = 0.15,
    test_fraction: float = 0.15,
    seed: int = 0,
    min_examples_per_class: int = 2,
    required_splits: Sequence[str] = SPLITS,
) -> LabelSet:
    """Read and validate a labels file (CSV with a header, or Parquet; by suffix).

    Columns: ``video_id``, ``label``, optional ``split`` (others are ignored). Values are
    stripped; split names are case-insensitive, and ``training`` / ``validation`` / ``valid``
    / ``dev`` / ``testing`` are read as ``train`` / ``val`` / ``test``. A video listed twice
    with the same label and split is kept once.

    The task is ``task`` if given, else inferred: ``regression`` when the label column is of
    a floating-point type (Parquet), or every label is a finite number and either some label
    is not an integer, or there are more than 50 distinct integers with fewer than two rows
    each on average; otherwise ``classification`` (class indices like ``0``..``9`` or years
    stay classes). Pass ``task=`` to be sure.

    Without a split column (or with an empty one) rows get a seeded split,
    :func:`stratified_split` by class (regression: by quantile bin of the target), with
    ``val_fraction`` and ``test_fraction`` of the rows; every class keeps >= 1 train example.

    Args:
        path: a local path or a pyarrow filesystem URI (``s3://...``).
        task: ``"classification"``, ``"regression"`` or None (infer).
        val_fraction, test_fraction, seed: the split drawn when the file has none.
        min_examples_per_class: fewer examples in a class is an error (classification).
        required_splits: splits that must not be empty (all three by default: probes pick the
            best epoch on val and report test accuracy there).

    Returns:
        The :class:`LabelSet`.

    Raises:
        LabelsError: the file is missing, empty, of unknown format, or lacks a ``video_id`` /
            ``label`` column; rows lack a video_id, label or split, or name an unknown split;
            a video has two different labels or splits; a regression target is not a number
            (the message names the rows); a class has fewer than ``min_examples_per_class``
            examples; a required split is empty (the message names it).
    """
    fmt = _format_of(os.fspath(path))
    fs, where = _filesystem(path)
    if fs.get_file_info(where).type != pafs.FileType.File:
        raise LabelsError(f"no labels file at {os.fspath(path)!r}")
    if fmt == "csv":
        with fs.open_input_stream(where) as f:
            table = _read_csv(f.read(), os.fspath(path))
    else:
        table = pq.read_table(where, filesystem=fs)
    return LabelSet.from_table(
        table,
        task=task,
        val_fraction=val_fraction,
        test_fraction=test_fraction,
        seed=seed,
        min_examples_per_class=min_examples_per_class,
        required_splits=required_splits,
        source=os.fspath(path),
    )


def _csv_cell(value: object) -> object:
    if value is None:
        return ""
    return repr(value) if isinstance(value, float) else value


def write_labels(labels: LabelSet | pa.Table, path: str | os.PathLike[str]) -> Path:
    """Write labels as CSV (header ``video_id,label[,split]``) or Parquet, by the suffix of
    ``path`` (``.csv``, ``.parquet`` / ``.pq``); atomically (temporary file, then rename).

    ``labels`` is a :class:`LabelSet` or a table with ``video_id``, ``label`` and optional
    ``split`` columns (an adapter's output); other columns are not written. CSV numbers are
    written with ``repr`` so they read back exactly.

    Returns:
        The path written (parent directories are created).

    Raises:
        LabelsError: unknown suffix, or no ``video_id`` / ``label`` column.
    """
    table = labels.table if isinstance(labels, LabelSet) else labels
    out = Path(path)
    fmt = _format_of(str(out))
    missing = [c for c in ("video_id", "label") if c not in table.column_names]
    if missing:
        raise LabelsError(f"cannot write labels without a {' or '.join(missing)} column")
    table = table.select([c for c in LABEL_COLUMNS if c in table.column_names])
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f".{out.name}.tmp")
    if fmt == "parquet":
        pq.write_table(table.replace_schema_metadata(None), tmp)
    else:
        with tmp.open("w", newline="", encoding="utf-8") as f:
            writer = csv.writer(f, lineterminator="\n")
            writer.writerow(table.column_names)
            for row in zip(*(table[c].to_pylist() for c in table.column_names), strict=True):
                writer.writerow([_csv_cell(v) for v in row])
    tmp.replace(out)
    return out


# --------------------------------------------------------------------------- video ids


def match_video_ids(
    source_ids: Sequence[str],
    video_ids: Iterable[str] | None = None,
    *,
    suffix: str | None = ".mp4",
) -> list[str | None]:
    """Map public-dataset ids (YouTube ids, Breakfast paths) to this project's video_ids.

    - ``video_ids`` given: a source id matches the known id whose file stem (name without
      extension) equals the source's, and whose directories end with the source's directories
      (``P03/cam01/P03_cereals.avi`` matches ``breakfast/P03/cam01/P03_cereals.mp4``; a bare
      YouTube id matches any ``.../<id>.<ext>``). No match gives None (unknown video).
    - ``video_ids`` None: the source id with its extension replaced by ``suffix``
      (``abcdefghijk`` → ``abcdefghijk.mp4``); ``suffix=None`` keeps the id as is.

    Returns:
        One video_id (or None) per source id.

    Raises:
        LabelsError: a source id matches several known ids (the message lists them).
    """
    if video_ids is None:
        if suffix is None:
            return list(source_ids)
        return [posixpath.splitext(s)[0] + suffix for s in source_ids]
    by_stem: dict[str, list[tuple[list[str], str]]] = defaultdict(list)
    for v in video_ids:
        parts = posixpath.splitext(v)[0].split("/")
        by_stem[parts[-1]].append((parts, v))
    out: list[str | None] = []
    ambiguous: list[str] = []
    for s in source_ids:
        parts = posixpath.splitext(s)[0].strip("/").split("/")
        found = [v for p, v in by_stem.get(parts[-1], []) if p[-len(parts) :] == parts]
        if len(found) > 1:
            ambiguous.append(f"{s} -> {', '.join(sorted(found))}")
        out.append(found[0] if len(found) == 1 else None)
    if ambiguous:
        raise LabelsError(
            f"ids matching several videos: {_some(ambiguous, 3)}; pass only the video_ids of "
            f"one copy of each video, or ids with more of their path"
        )
    return out


def unknown_video_ids(table: pa.Table) -> list[str]:
    """The source ids an adapter skipped because they matched none of its ``video_ids``
    (kept in the table's schema metadata; empty when none, or after a round trip)."""
    meta = table.schema.metadata or {}
    return json.loads(meta.get(UNKNOWN_IDS_KEY, b"[]"))


def _known_only(
    source_ids: Sequence[str],
    labels: Sequence[object],
    splits: Sequence[str] | None,
    *,
    video_ids: Iterable[str] | None,
    suffix: str | None,
    regression: bool,
    source: str,
) -> pa.Table:
    """The adapters' common end: map ids, skip (and report) unknown ones, build the table."""
    known = None if video_ids is None else list(video_ids)
    mapped = match_video_ids(source_ids, known, suffix=suffix)
    keep = [i for i, v in enumerate(mapped) if v is not None]
    unknown = [source_ids[i] for i, v in enumerate(mapped) if v is None]
    if unknown:
        log.warning(
            "%s: %d of %d labelled videos are not among the %d given video_ids and were "
            "skipped: %s",
            source,
            len(unknown),
            len(source_ids),
            len(known or []),
            _some(unknown),
        )
    table = _labels_table(
        [v for v in mapped if v is not None],
        [labels[i] for i in keep],
        None if splits is None else [splits[i] for i in keep],
        regression=regression,
    )
    return table.replace_schema_metadata({UNKNOWN_IDS_KEY: json.dumps(unknown)})


def _carve_val(table: pa.Table, val_fraction: float, seed: int, source: str) -> pa.Table:
    """Move a seeded, stratified ``val_fraction`` of the train rows to ``val``."""
    if val_fraction <= 0:
        return table
    splits = table["split"].to_pylist()
    train = [i for i, s in enumerate(splits) if s == "train"]
    if not train:
        raise LabelsError(f"{source}: no train videos to carve a val split from")
    labels = table["label"].to_pylist()
    drawn = stratified_split(
        [labels[i] for i in train], val_fraction=val_fraction, test_fraction=0.0, seed=seed
    )
    for i, s in zip(train, drawn, strict=True):
        splits[i] = s
    index = table.column_names.index("split")
    return table.set_column(index, "split", pa.array(splits, pa.string()))


# --------------------------------------------------------------------------- LVU


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
    values = [v for v in (_as_float(x) for x in numbers[:need]) if v is not None]
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

    Video ids: see :func:`match_video_ids` (``video_ids`` known to the run, else
    ``<youtube_id><suffix>``); labelled videos not among ``video_ids`` are logged, listed in
    the table's metadata (:func:`unknown_video_ids`) and skipped.

    Returns:
        A table ``video_id``, ``label`` (string, or float64 for regression), ``split``.

    Raises:
        LabelsError: unknown task; missing directory or split file; a line without a YouTube
            id, a non-integer class index, or a non-numeric / invalid regression target (the
            message gives file and line); a class index with two different names; a video
            labelled twice differently.
    """
    if task not in LVU_TASKS:
        raise LabelsError(
            f"unknown LVU task {task!r}; classification tasks: "
            f"{', '.join(LVU_CLASSIFICATION_TASKS)}; regression tasks: "
            f"{', '.join(LVU_REGRESSION_TASKS)}"
        )
    if label_from not in ("name", "index"):
        raise LabelsError(f"label_from must be 'name' or 'index', got {label_from!r}")
    regression = task in LVU_REGRESSION_TASKS
    directory = _lvu_dir(root, task)
    ids: list[str] = []
    labels: list[object] = []
    splits: list[str] = []
    names: dict[str, set[str]] = defaultdict(set)
    for split in SPLITS:
        path = directory / f"{split}.csv"
        if not path.is_file():
            raise LabelsError(f"missing LVU split file {path}; the release has train, val, test")
        lines = path.read_text(encoding="utf-8").splitlines()
        header = lines[0].split() if lines else []
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
            if regression:
                labels.append(_lvu_target(task, tokens[:pos], where))
            else:
                if not _INTEGER.fullmatch(tokens[0]):
                    raise LabelsError(
                        f"{where}: LVU {task} lines start with an integer class index, got "
                        f"{tokens[0]!r}; fix or delete the line"
                    )
                index = str(int(tokens[0]))
                name = " ".join(tokens[1:pos])
                names[index].add(name)
                labels.append(name if label_from == "name" and name else index)
            ids.append(tokens[pos])
            splits.append(split)
    clashes = sorted(f"{k}: {' / '.join(sorted(v))}" for k, v in names.items() if len(v) > 1)
    if clashes and label_from == "name":
        raise LabelsError(
            f"{directory}: class indices with several names ({_some(clashes, 3)}); pass "
            f"label_from='index' to label by index"
        )
    _check_unique(ids, labels, splits, str(directory))
    return _known_only(
        ids,
        labels,
        splits,
        video_ids=video_ids,
        suffix=suffix,
        regression=regression,
        source=f"LVU {task}",
    )


def _check_unique(
    ids: Sequence[str], labels: Sequence[object], splits: Sequence[str] | None, source: str
) -> None:
    seen: dict[str, tuple[object, object]] = {}
    clash: set[str] = set()
    for i, v in enumerate(ids):
        value = (labels[i], None if splits is None else splits[i])
        if seen.setdefault(v, value) != value:
            clash.add(v)
    if clash:
        raise LabelsError(
            f"{source}: videos listed twice with different labels or splits: "
            f"{_some(sorted(clash))}; fix the annotation files"
        )


# --------------------------------------------------------------------------- COIN


_COIN_SUBSETS = {"training": "train", "validation": "val", "testing": "test"}


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
    the (known) train videos to val, seeded and stratified by task (:func:`stratified_split`).

    Video ids: see :func:`match_video_ids` (``video_ids`` known to the run, else
    ``<youtube_id><suffix>``); unknown videos are logged, listed in the metadata
    (:func:`unknown_video_ids`) and skipped. Rows are in YouTube id order.

    Returns:
        A table ``video_id``, ``label``, ``split``.

    Raises:
        LabelsError: unreadable JSON, no ``database`` object, entries without a ``class`` or
            with an unknown ``subset`` (the message lists them), bad ``val_fraction``.
    """
    path = Path(coin_json)
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
    ids: list[str] = []
    labels: list[object] = []
    splits: list[str] = []
    bad: list[str] = []
    for youtube_id in sorted(database):
        entry = database[youtube_id]
        entry = entry if isinstance(entry, dict) else {}
        label = _label_text(entry.get("class"))
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
            f"{_some(bad, 3)}; fix or delete them"
        )
    table = _known_only(
        ids, labels, splits, video_ids=video_ids, suffix=suffix, regression=False, source="COIN"
    )
    return _carve_val(table, val_fraction, seed, str(path))


# --------------------------------------------------------------------------- Breakfast


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
    split column (:func:`read_labels` then draws one — which mixes participants).
    ``val_fraction > 0`` moves that fraction of train videos to val, seeded, stratified.

    Args:
        paths_or_root: a directory (searched recursively for ``extensions``; ids are paths
            relative to it) or video paths (taken as given, POSIX form).
        split: ``s1`` .. ``s4`` or None.
        video_ids, suffix: see :func:`match_video_ids`; by default (both None) the paths are
            the video ids; ``suffix=".mp4"`` swaps the extension (transcoded copies).

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
            f"{', '.join(BREAKFAST_ACTIVITIES)}): {_some(bad)}; rename or leave them out"
        )
    _check_unique(paths, labels, None, "Breakfast")
    table = _known_only(
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
    return _carve_val(table, val_fraction, seed, "Breakfast")
