"""The one labels format the rest of the code reads, and the mapping of public video ids.

**The format** (:func:`read_labels`, :func:`write_labels`): a CSV file with a header, or a
Parquet file, with columns

- ``video_id`` — the video's path relative to the extraction input root, POSIX form
  (``cooking/p03_cereals.mp4``; docs/design.md, "Data contracts");
- ``label`` — a class name (classification) or a number (regression);
- ``split`` (optional) — ``train`` / ``val`` / ``test``. Without it, :func:`read_labels`
  draws a seeded split, stratified by class (:func:`lvmae.labels.splits.stratified_split`).

Other columns are ignored. :class:`LabelSet` is the loaded, validated result; its class index
is built over all splits, so a class missing from one split does not shift the others.

**Video ids.** The public formats name videos their own way (YouTube ids, Breakfast file
paths); :func:`match_video_ids` maps them to ours. With ``video_ids`` (the ids known to the
run, e.g. from the video table), a public id matches the known id with the same file stem
(name without extension) — and, for a public id that is a path, the same trailing
directories; public ids matching no known video are reported (logged, counted in the table's
metadata, see :func:`unknown_video_ids`) and skipped (:func:`adapter_table`, the adapters'
common end). Without ``video_ids``, ids are made from the public id by replacing its
extension with ``suffix`` (``abcdefghijk`` → ``abcdefghijk.mp4``), which matches a download
named after the public ids.

Bad input raises :class:`LabelsError`, whose message says what to fix. No Ray, no torch.
"""

from __future__ import annotations

import csv
import io
import json
import logging
import os
import posixpath
from collections import Counter, defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.fs as pafs
import pyarrow.parquet as pq

from lvmae.labels.common import (
    INTEGER,
    SPLITS,
    TASKS,
    LabelsError,
    as_float,
    label_text,
    some,
)
from lvmae.labels.splits import regression_strata, stratified_split

__all__ = [
    "LABEL_COLUMNS",
    "SPLITS",
    "TASKS",
    "UNKNOWN_IDS_KEY",
    "LabelSet",
    "LabelsError",
    "adapter_table",
    "check_unique_videos",
    "labels_table",
    "match_video_ids",
    "read_labels",
    "unknown_video_ids",
    "write_labels",
]

log = logging.getLogger(__name__)

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
# read_labels infers regression for integer-like labels only past this many distinct values
# (and fewer than 2 rows per value on average); see _infer_task.
_MAX_INTEGER_CLASSES = 50


def _sort_classes(classes: Iterable[str]) -> list[str]:
    """Sorted; numerically when every class is an integer (``2`` before ``10``)."""
    classes = set(classes)
    if classes and all(INTEGER.fullmatch(c) for c in classes):
        return sorted(classes, key=lambda c: (int(c), c))
    return sorted(classes)


def _infer_task(labels: Sequence[str]) -> str:
    """``regression`` when every label is a finite number and either some label is not an
    integer, or there are more than ``_MAX_INTEGER_CLASSES`` distinct integers with fewer than
    two rows each on average (view counts, not class indices); else ``classification``."""
    parsed = [as_float(x) for x in labels]
    values = [v for v in parsed if v is not None]
    if len(values) < len(parsed):
        return "classification"
    if any(not v.is_integer() for v in values):
        return "regression"
    distinct = len(set(values))
    if distinct > _MAX_INTEGER_CLASSES and 2 * distinct > len(values):
        return "regression"
    return "classification"


def labels_table(
    video_ids: Sequence[str],
    labels: Sequence[object],
    splits: Sequence[str] | None,
    *,
    regression: bool,
) -> pa.Table:
    """A labels table: ``video_id`` (string), ``label`` (float64 when ``regression``, else
    string) and, unless ``splits`` is None, ``split`` (string); one row per given video."""
    columns = {
        "video_id": pa.array(video_ids, pa.string()),
        "label": pa.array(labels, pa.float64() if regression else pa.string()),
    }
    if splits is not None:
        columns["split"] = pa.array(splits, pa.string())
    return pa.table(columns)


# --------------------------------------------------------------------------- LabelSet


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
        _check_table(table, task=task, required_splits=required_splits, source=source)
        ids, labels = _ids_and_labels(table, source)
        splits = _given_splits(table, ids, source)
        given = splits is not None
        task = _task_of(table, task, labels)
        regression = task == "regression"
        values = _regression_values(ids, labels, source) if regression else []
        ids, labels, values, splits = _drop_repeats(ids, labels, values, splits, source)
        if not regression:
            _check_class_sizes(labels, min_examples_per_class, source)
        if splits is None:
            strata = regression_strata(values) if regression else labels
            splits = stratified_split(
                strata, val_fraction=val_fraction, test_fraction=test_fraction, seed=seed
            )
        _check_required_splits(splits, required_splits, given=given, source=source)
        classes = [] if regression else _class_index(labels, splits, source)
        out = labels_table(ids, values if regression else labels, splits, regression=regression)
        return cls(out, task, classes)

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


# --------------------------------------------------------------------------- validation


def _rows_named(rows: Sequence[int], ids: Sequence[str]) -> str:
    """``row 3 (video_id 'a.mp4')`` for each row (1-based data rows)."""
    named = [f"row {i + 1} ({ids[i]!r})" if ids[i] else f"row {i + 1}" for i in rows]
    return some(named)


def _check_table(
    table: pa.Table, *, task: str | None, required_splits: Sequence[str], source: str
) -> None:
    """The columns, the arguments and at least one row."""
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


def _ids_and_labels(table: pa.Table, source: str) -> tuple[list[str], list[str]]:
    """The ``video_id`` and ``label`` columns as text; every row must have both."""
    ids = [label_text(v) for v in table["video_id"].to_pylist()]
    labels = [label_text(v) for v in table["label"].to_pylist()]
    empty = [i for i in range(len(ids)) if not ids[i] or not labels[i]]
    if empty:
        raise LabelsError(
            f"{source}: {_rows_named(empty, ids)} lack a video_id or a label (rows counted from "
            f"1, header excluded); fill them in or delete those rows"
        )
    return ids, labels


def _given_splits(table: pa.Table, ids: Sequence[str], source: str) -> list[str] | None:
    """The ``split`` column, normalised to :data:`SPLITS` (aliases and case folded); None when
    the table has no split column or only empty values in it."""
    if "split" not in table.column_names:
        return None
    raw = [label_text(v) for v in table["split"].to_pylist()]
    if not any(raw):
        return None
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
            f"{source}: unknown split value(s) {some(values)} in {_rows_named(bad, ids)}; "
            f"use {', '.join(SPLITS)}"
        )
    return splits


def _task_of(table: pa.Table, task: str | None, labels: Sequence[str]) -> str:
    """``task`` if given; else regression for a floating-point label column, else
    :func:`_infer_task`."""
    if task is not None:
        return task
    if pa.types.is_floating(table.schema.field("label").type):
        return "regression"
    return _infer_task(labels)


def _regression_values(ids: Sequence[str], labels: Sequence[str], source: str) -> list[float]:
    """The labels as regression targets; every one must be a finite number."""
    parsed = [as_float(x) for x in labels]
    bad = [i for i, v in enumerate(parsed) if v is None]
    if bad:
        shown = some([f"row {i + 1} ({ids[i]!r}): {labels[i]!r}" for i in bad])
        raise LabelsError(
            f"{source}: regression targets must be finite numbers; not numbers: {shown}. "
            f"Fix or delete those rows (or pass task='classification' if the labels are "
            f"class names)"
        )
    return [v for v in parsed if v is not None]


def _drop_repeats(
    ids: list[str],
    labels: list[str],
    values: list[float],
    splits: list[str] | None,
    source: str,
) -> tuple[list[str], list[str], list[float], list[str] | None]:
    """One row per video: exact repeats are dropped (logged), contradictions are errors.
    ``values`` (regression targets) may be empty (classification)."""
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
            f"{some(sorted(set(conflicts)))}; keep one row per video_id"
        )
    if len(keep) == len(ids):
        return ids, labels, values, splits
    log.warning("%s: dropped %d repeated rows", source, len(ids) - len(keep))
    return (
        [ids[i] for i in keep],
        [labels[i] for i in keep],
        [values[i] for i in keep] if values else values,
        [splits[i] for i in keep] if splits is not None else None,
    )


def _check_class_sizes(labels: Sequence[str], min_examples_per_class: int, source: str) -> None:
    """Every class has at least ``min_examples_per_class`` rows (classification)."""
    counts = Counter(labels)
    small = sorted(c for c, k in counts.items() if k < min_examples_per_class)
    if not small:
        return
    shown = some([f"{c!r} ({counts[c]})" for c in small])
    hint = (
        " (these look like numeric targets: pass task='regression')"
        if all(as_float(c) is not None for c in counts)
        else ""
    )
    raise LabelsError(
        f"{source}: classes with fewer than {min_examples_per_class} examples: {shown}; "
        f"a class needs examples to train on and to evaluate with — merge such classes "
        f"into others or drop their rows (or give explicit splits and pass "
        f"min_examples_per_class=1 to keep them){hint}"
    )


def _check_required_splits(
    splits: Sequence[str], required_splits: Sequence[str], *, given: bool, source: str
) -> None:
    """Every required split has rows; ``given``: the splits came from the table (else they
    were drawn), which changes the advice."""
    sizes = Counter(splits)
    for name in required_splits:
        if sizes.get(name, 0) > 0:
            continue
        have = ", ".join(f"{s}: {sizes.get(s, 0)}" for s in SPLITS)
        if given:
            fix = (
                f"add rows with split={name}, or drop the split column to draw a seeded "
                f"stratified split"
            )
        else:
            fix = (
                f"the seeded stratified split of {len(splits)} rows left it empty; raise "
                f"{name}_fraction, add examples, or give explicit splits in a split column"
            )
        raise LabelsError(f"{source}: split {name!r} is empty ({have}); {fix}")


def _class_index(labels: Sequence[str], splits: Sequence[str], source: str) -> list[str]:
    """The sorted classes (:func:`_sort_classes`); classes with no train row are logged."""
    classes = _sort_classes(labels)
    in_train = {c for c, s in zip(labels, splits, strict=True) if s == "train"}
    untrained = [c for c in classes if c not in in_train]
    if untrained:
        log.warning(
            "%s: classes with no train example (a probe cannot learn them): %s",
            source,
            some(untrained),
        )
    return classes


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
            f"{source}: data rows {some(ragged)} do not have the header's {len(header)} fields "
            f"({','.join(header)}); quote values that contain commas"
        )
    columns = {h: [r[k] for r in rows[1:]] for k, h in enumerate(header)}
    return pa.table({h: pa.array(v, pa.string()) for h, v in columns.items()})


def read_labels(path: str | os.PathLike[str], **checks: Any) -> LabelSet:
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
    :func:`~lvmae.labels.splits.stratified_split` by class (regression: by quantile bin of the
    target), with ``val_fraction`` and ``test_fraction`` of the rows; every class keeps >= 1
    train example.

    Args:
        path: a local path or a pyarrow filesystem URI (``s3://...``).
        **checks: :meth:`LabelSet.from_table`'s keywords, with its defaults:
            ``task``: ``"classification"``, ``"regression"`` or None (infer);
            ``val_fraction``, ``test_fraction`` (0.15 each), ``seed`` (0): the split drawn
            when the file has none; ``min_examples_per_class`` (2): fewer examples in a
            class is an error (classification); ``required_splits``: splits that must not
            be empty (all three by default: probes pick the best epoch on val and report
            test accuracy there).

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
    return LabelSet.from_table(table, source=os.fspath(path), **checks)


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
            f"ids matching several videos: {some(ambiguous, 3)}; pass only the video_ids of "
            f"one copy of each video, or ids with more of their path"
        )
    return out


def unknown_video_ids(table: pa.Table) -> list[str]:
    """The source ids an adapter skipped because they matched none of its ``video_ids``
    (kept in the table's schema metadata; empty when none, or after a round trip)."""
    meta = table.schema.metadata or {}
    return json.loads(meta.get(UNKNOWN_IDS_KEY, b"[]"))


def check_unique_videos(
    ids: Sequence[str], labels: Sequence[object], splits: Sequence[str] | None, source: str
) -> None:
    """An adapter's check that no source id is listed twice with a different label or split
    (``splits`` None: labels only); ``source`` names the annotations in the message.

    Raises:
        LabelsError: such videos (the message lists them).
    """
    seen: dict[str, tuple[object, object]] = {}
    clash: set[str] = set()
    for i, v in enumerate(ids):
        value = (labels[i], None if splits is None else splits[i])
        if seen.setdefault(v, value) != value:
            clash.add(v)
    if clash:
        raise LabelsError(
            f"{source}: videos listed twice with different labels or splits: "
            f"{some(sorted(clash))}; fix the annotation files"
        )


def adapter_table(
    source_ids: Sequence[str],
    labels: Sequence[object],
    splits: Sequence[str] | None,
    *,
    video_ids: Iterable[str] | None,
    suffix: str | None,
    regression: bool,
    source: str,
) -> pa.Table:
    """The adapters' common end: map ids (:func:`match_video_ids`), skip (and report) unknown
    ones, build the table (:func:`labels_table`).

    Unknown source ids are logged with ``source`` (e.g. ``"LVU director"``) and kept in the
    table's schema metadata (:func:`unknown_video_ids`).
    """
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
            some(unknown),
        )
    table = labels_table(
        [v for v in mapped if v is not None],
        [labels[i] for i in keep],
        None if splits is None else [splits[i] for i in keep],
        regression=regression,
    )
    return table.replace_schema_metadata({UNKNOWN_IDS_KEY: json.dumps(unknown)})
