"""Scores for probes on frozen long-video features: accuracy, confusion, regression error.

Classification tasks (LVU's director / genre / writer / year / scene / way_speaking /
relationship, COIN, Breakfast) report top-1 accuracy (and top-5 where there are at least 5
classes); LVU's like_ratio and view_count are regression tasks scored by mean squared error
(Naiman et al., "LV-MAE", ICCV 2025, §8 and Tables 6–8; docs/design.md "Reference facts").

Inputs are numpy arrays or CPU/GPU torch tensors (converted with ``detach().cpu()``); class
ids are integers in ``[0, n_classes)``. Pure numpy + matplotlib (Agg, no display); no Ray.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

__all__ = [
    "check_finite",
    "classification_report",
    "confusion_matrix",
    "per_class_accuracy",
    "plot_confusion_matrix",
    "predicted_classes",
    "regression_report",
    "top_k_accuracy",
]


def _numpy(a: Any) -> np.ndarray:
    """``a`` as a numpy array (torch tensors are detached and moved to the CPU)."""
    if hasattr(a, "detach"):
        a = a.detach().cpu().numpy()
    return np.asarray(a)


def _class_ids(a: Any, name: str, n_classes: int | None = None) -> np.ndarray:
    """1-D int64 class ids; ValueError on other shapes, non-integers or ids out of range."""
    arr = _numpy(a)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D [N] class ids; got shape {arr.shape}")
    integral = np.issubdtype(arr.dtype, np.integer) or (
        np.issubdtype(arr.dtype, np.floating) and bool(np.all(np.mod(arr, 1) == 0))
    )
    if arr.size and not integral:
        raise ValueError(f"{name} must hold integer class ids; got dtype {arr.dtype}")
    arr = arr.astype(np.int64, copy=False)
    if n_classes is not None and arr.size and (arr.min() < 0 or arr.max() >= n_classes):
        raise ValueError(
            f"{name} holds class ids outside [0, {n_classes}): min {arr.min()}, max {arr.max()}"
        )
    return arr


def _check_n_classes(n_classes: int) -> int:
    if isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)):
        raise ValueError(f"n_classes must be an int; got {n_classes!r}")
    if n_classes < 1:
        raise ValueError(f"n_classes must be >= 1; got {n_classes}")
    return int(n_classes)


def top_k_accuracy(scores: Any, y: Any, k: int = 1) -> float:
    """Fraction of samples whose true class is among the ``k`` highest scores, ties counted
    against the prediction.

    A sample is correct when fewer than ``k`` *other* classes score at least as high as its
    true class: ``#{j != y: s_j >= s_y} < k``. A tie therefore never helps: constant scores
    give top-1 = 0 (with C >= 2), so a collapsed probe cannot win a best-epoch selection
    (LV-MAE §8 picks the best validation epoch by this number).

    Args:
        scores: float ``[N, C]`` logits, probabilities or any per-class scores.
        y: int ``[N]`` true class ids in ``[0, C)``.
        k: ``1 <= k <= C``.

    Returns:
        Accuracy in ``[0, 1]``.

    Raises:
        ValueError: ``N == 0``, shapes that do not match, ``k`` outside ``[1, C]``, class
            ids outside ``[0, C)``, or a NaN / infinite score (named with its row).
    """
    s = _numpy(scores)
    if s.ndim != 2:
        raise ValueError(f"scores must be [N, C]; got shape {s.shape}")
    N, C = s.shape
    labels = _class_ids(y, "y", C)
    if labels.shape[0] != N:
        raise ValueError(f"scores has {N} rows but y has {labels.shape[0]} labels")
    if N == 0:
        raise ValueError("top_k_accuracy needs at least one sample")
    if isinstance(k, bool) or not 1 <= k <= C:
        raise ValueError(f"k must be in [1, C={C}]; got {k!r}")
    check_finite(s, "scores")
    true_score = s[np.arange(N), labels]
    # >= counts the true class itself once: subtract it.
    n_at_least = (s >= true_score[:, None]).sum(axis=1) - 1
    return float(np.mean(n_at_least < k))


def check_finite(a: np.ndarray, name: str) -> None:
    """Raise ValueError naming the first row of ``a`` that holds a NaN or infinite value.

    Scores that are not finite cannot be ranked (a NaN compares false with everything and
    would silently count as correct or wrong); a diverged probe must fail loudly instead.
    """
    bad = ~np.isfinite(a)
    if bad.any():
        row = int(np.argwhere(bad)[0][0])
        raise ValueError(
            f"{name} holds {int(bad.sum())} non-finite values (NaN or inf), first in row {row}; "
            "a diverged model cannot be scored"
        )


def _paired_ids(pred: Any, y: Any, n_classes: int) -> tuple[int, np.ndarray, np.ndarray]:
    """``(C, pred ids, true ids)`` validated: same length, integer ids in ``[0, C)``."""
    C = _check_n_classes(n_classes)
    p = _class_ids(pred, "pred", C)
    t = _class_ids(y, "y", C)
    if p.shape != t.shape:
        raise ValueError(f"pred has {p.shape[0]} entries but y has {t.shape[0]}")
    return C, p, t


def per_class_accuracy(pred: Any, y: Any, n_classes: int) -> np.ndarray:
    """Accuracy of the predictions within each true class (recall per class).

    Args:
        pred: int ``[N]`` predicted class ids in ``[0, n_classes)``.
        y: int ``[N]`` true class ids in ``[0, n_classes)``.
        n_classes: ``C``.

    Returns:
        float64 ``[C]``: entry ``c`` is the fraction of samples of true class ``c`` predicted
        as ``c``; ``nan`` for classes absent from ``y``.

    Raises:
        ValueError: different lengths, non-integer ids or ids outside ``[0, C)``.
    """
    C, p, t = _paired_ids(pred, y, n_classes)
    support = np.bincount(t, minlength=C).astype(np.float64)
    correct = np.bincount(t[p == t], minlength=C).astype(np.float64)
    out = np.full(C, np.nan)
    present = support > 0
    out[present] = correct[present] / support[present]
    return out


def confusion_matrix(pred: Any, y: Any, n_classes: int) -> np.ndarray:
    """Counts of (true, predicted) class pairs.

    Args:
        pred: int ``[N]`` predicted class ids in ``[0, n_classes)``.
        y: int ``[N]`` true class ids in ``[0, n_classes)``.
        n_classes: ``C``.

    Returns:
        int64 ``[C, C]``: entry ``[i, j]`` counts samples of true class ``i`` predicted as
        ``j`` (rows = true, columns = predicted); it sums to ``N``.

    Raises:
        ValueError: different lengths, non-integer ids or ids outside ``[0, C)``.
    """
    C, p, t = _paired_ids(pred, y, n_classes)
    return np.bincount(t * C + p, minlength=C * C).reshape(C, C).astype(np.int64)


def plot_confusion_matrix(
    cm: Any, class_names: Sequence[str], path: str | Path, *, title: str | None = None
) -> Path:
    """Write a confusion matrix as a PNG heat map.

    Colours are row-normalised (the fraction of each true class that went to each predicted
    class, so rare and frequent classes read alike); each non-zero cell is annotated with its
    count. The figure and fonts scale with the number of classes so that up to ~50 classes
    stay readable. Uses matplotlib's Agg canvas directly: no display, no pyplot global state.

    Args:
        cm: int ``[C, C]`` counts from :func:`confusion_matrix` (rows = true class).
        class_names: ``C`` labels for the axes.
        path: the PNG to write; parent directories are created.
        title: optional figure title.

    Returns:
        ``path`` as a :class:`~pathlib.Path`.

    Raises:
        ValueError: ``cm`` not square, negative counts, or ``len(class_names) != C``.
    """
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    counts = _numpy(cm)
    if counts.ndim != 2 or counts.shape[0] != counts.shape[1] or counts.shape[0] == 0:
        raise ValueError(f"cm must be a non-empty square [C, C] matrix; got shape {counts.shape}")
    if np.any(counts < 0):
        raise ValueError("cm holds negative counts")
    C = counts.shape[0]
    names = [str(n) for n in class_names]
    if len(names) != C:
        raise ValueError(f"got {len(names)} class names for a {C}x{C} confusion matrix")
    rows = counts.sum(axis=1, keepdims=True).astype(np.float64)
    frac = np.divide(counts, rows, out=np.zeros(counts.shape), where=rows > 0)

    side = min(max(5.0, 0.4 * C + 3.0), 24.0)  # inches
    cell_pt = 72.0 * (side - 3.0) / C  # approximate cell edge, points
    label_size = max(5.0, min(10.0, 0.6 * cell_pt))
    cell_size = max(4.0, min(9.0, 0.4 * cell_pt))
    fig = Figure(figsize=(side + 1.2, side), dpi=100)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot(1, 1, 1)
    image = ax.imshow(frac, cmap="Blues", vmin=0.0, vmax=1.0, interpolation="nearest")
    colorbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    colorbar.set_label("fraction of true class", fontsize=label_size)
    ax.set_xticks(range(C))
    ax.set_yticks(range(C))
    ax.set_xticklabels(names, rotation=90, fontsize=label_size)
    ax.set_yticklabels(names, fontsize=label_size)
    ax.set_xlabel("predicted class")
    ax.set_ylabel("true class")
    if title:
        ax.set_title(title)
    for i, j in zip(*np.nonzero(counts), strict=True):
        ax.text(
            j,
            i,
            str(int(counts[i, j])),
            ha="center",
            va="center",
            fontsize=cell_size,
            color="white" if frac[i, j] > 0.5 else "black",
        )
    fig.tight_layout()
    out = Path(path)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, format="png")
    return out


def predicted_classes(scores: Any, y: Any) -> np.ndarray:
    """The class each sample is predicted as, under :func:`top_k_accuracy`'s tie rule: the
    true class only when it scores strictly higher than every other class; otherwise the
    highest-scoring other class (a tie for the top score is a wrong prediction, whatever
    ``argmax`` would pick). What the confusion matrix and the per-class accuracies count, so
    that they agree with top-1.

    Args:
        scores: float ``[N, C]`` per-class scores.
        y: int ``[N]`` true class ids in ``[0, C)``.

    Returns:
        int64 ``[N]`` class ids in ``[0, C)``.

    Raises:
        ValueError: shapes that do not match, or class ids outside ``[0, C)``.
    """
    s = _numpy(scores).astype(np.float64, copy=False)
    if s.ndim != 2:
        raise ValueError(f"scores must be [N, C]; got shape {s.shape}")
    labels = _class_ids(y, "y", s.shape[1])
    if labels.shape[0] != s.shape[0]:
        raise ValueError(f"scores has {s.shape[0]} rows but y has {labels.shape[0]} labels")
    rows = np.arange(s.shape[0])
    true_score = s[rows, labels]
    correct = (s >= true_score[:, None]).sum(axis=1) == 1
    others = s.copy()
    others[rows, labels] = -np.inf
    return np.where(correct, labels, others.argmax(axis=1)).astype(np.int64)


def classification_report(logits: Any, y: Any, class_names: Sequence[str]) -> dict[str, Any]:
    """Top-1 / top-5 accuracy and per-class accuracy of a classifier's scores.

    Args:
        logits: float ``[N, C]`` scores.
        y: int ``[N]`` true class ids in ``[0, C)``.
        class_names: ``C`` names, keys of ``per_class``.

    Returns:
        ``{"top1": float, "top5": float (only when C >= 5), "mean_class_accuracy": float
        (mean of the per-class accuracies over classes present in y), "per_class":
        {name: accuracy, nan for classes absent from y}, "n": N}``.

    Raises:
        ValueError: as :func:`top_k_accuracy`, or ``len(class_names) != C``.
    """
    s = _numpy(logits)
    if s.ndim != 2:
        raise ValueError(f"logits must be [N, C]; got shape {s.shape}")
    C = s.shape[1]
    names = [str(n) for n in class_names]
    if len(names) != C:
        raise ValueError(f"got {len(names)} class names for {C} logit columns")
    report: dict[str, Any] = {"top1": top_k_accuracy(s, y, 1)}
    if C >= 5:
        report["top5"] = top_k_accuracy(s, y, 5)
    # Per-class accuracy with the same tie rule as top-1
    labels = _class_ids(y, "y", C)
    per_class = per_class_accuracy(predicted_classes(s, labels), labels, C)
    present = per_class[~np.isnan(per_class)]
    report["mean_class_accuracy"] = float(present.mean()) if present.size else math.nan
    report["per_class"] = {name: float(a) for name, a in zip(names, per_class, strict=True)}
    report["n"] = int(s.shape[0])
    return report


def regression_report(pred: Any, y: Any) -> dict[str, Any]:
    """Mean squared and mean absolute error, in the targets' own units.

    Args:
        pred: float ``[N]`` (or ``[N, 1]``) predictions.
        y: float ``[N]`` targets.

    Returns:
        ``{"mse": float, "mae": float, "n": N}``.

    Raises:
        ValueError: ``N == 0`` or different lengths.
    """
    p = _numpy(pred).astype(np.float64)
    if p.ndim == 2 and p.shape[1] == 1:
        p = p[:, 0]
    t = _numpy(y).astype(np.float64)
    if p.ndim != 1 or t.ndim != 1:
        raise ValueError(f"pred and y must be [N]; got shapes {p.shape} and {t.shape}")
    if p.shape != t.shape:
        raise ValueError(f"pred has {p.shape[0]} entries but y has {t.shape[0]}")
    if p.size == 0:
        raise ValueError("regression_report needs at least one sample")
    err = p - t
    return {"mse": float(np.mean(err**2)), "mae": float(np.mean(np.abs(err))), "n": int(p.size)}
