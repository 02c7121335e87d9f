"""Seeded, stratified train / val / test splits.

- :func:`stratified_split` — a split per row, stratified by class; what
  :func:`lvmae.labels.read_labels` draws for a labels file without a ``split`` column;
- :func:`regression_strata` — quantile bins of a regression target, the strata for a split of
  regression labels;
- :func:`carve_val` — moves a seeded, stratified fraction of an adapter table's train rows to
  val (COIN and Breakfast have no official val subset).
"""

from __future__ import annotations

import math
import zlib
from collections import defaultdict
from collections.abc import Sequence

import numpy as np
import pyarrow as pa

from lvmae.labels.common import LabelsError

__all__ = ["carve_val", "regression_strata", "stratified_split"]


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


def regression_strata(values: Sequence[float]) -> list[str]:
    """Quantile bins (up to 10, ~10 rows each) so a random split keeps the target's spread.

    Returns:
        One bin name (``"0"`` .. ``"9"``) per value, in the order of ``values``.
    """
    n = len(values)
    bins = max(1, min(10, n // 10))
    ranks = np.empty(n, dtype=np.int64)
    ranks[np.argsort(np.asarray(values), kind="stable")] = np.arange(n)
    return [str(int(r) * bins // n) for r in ranks]


def carve_val(
    table: pa.Table,
    val_fraction: float,
    seed: int,
    source: str,
    *,
    groups: Sequence[str] | None = None,
) -> pa.Table:
    """Move a seeded, stratified ``val_fraction`` of the train rows to ``val``.

    With ``groups`` (one name per row, e.g. a participant), whole groups move instead:
    ``round(val_fraction · train groups)`` of them (at least one, and at least one group
    stays in train: a single group stays whole in train, as a class of one row does), drawn
    by a permutation seeded by ``seed`` over the sorted group names. Rows of one group (the
    camera views of one recording, one person's recordings) never end up on both sides,
    which would let best-epoch and sweep selection see near-copies of training videos.

    Args:
        table: an adapter's table with ``label`` and ``split`` columns.
        val_fraction: the fraction of train rows (or groups) to move; ``<= 0`` returns
            ``table`` as is.
        seed: seeds :func:`stratified_split` over the train rows' labels (or the groups'
            permutation).
        source: names the annotations in error messages.
        groups: optional, one group name per row of ``table``.

    Returns:
        ``table`` with its ``split`` column changed (same rows, same order).

    Raises:
        LabelsError: no train rows, or ``val_fraction`` not below 1.
    """
    if val_fraction <= 0:
        return table
    splits = table["split"].to_pylist()
    train = [i for i, s in enumerate(splits) if s == "train"]
    if not train:
        raise LabelsError(f"{source}: no train videos to carve a val split from")
    if groups is not None:
        drawn = _carve_groups([str(groups[i]) for i in train], val_fraction, seed)
    else:
        labels = table["label"].to_pylist()
        drawn = stratified_split(
            [labels[i] for i in train], val_fraction=val_fraction, test_fraction=0.0, seed=seed
        )
    for i, s in zip(train, drawn, strict=True):
        splits[i] = s
    index = table.column_names.index("split")
    return table.set_column(index, "split", pa.array(splits, pa.string()))


def _carve_groups(groups: list[str], val_fraction: float, seed: int) -> list[str]:
    """``train`` / ``val`` per row, whole groups at a time (:func:`carve_val`)."""
    _check_fractions(val_fraction, 0.0)
    if seed < 0:
        raise LabelsError(f"seed must be a non-negative integer, got {seed}")
    names = sorted(set(groups))
    n_val = min(max(1, round(val_fraction * len(names))), len(names) - 1)  # 0 for one group
    order = np.random.default_rng(seed).permutation(len(names))
    val = {names[k] for k in order[:n_val]}
    return ["val" if g in val else "train" for g in groups]
