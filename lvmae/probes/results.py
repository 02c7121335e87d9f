"""The probe stage's results: one :class:`ProbeResult` per method × task, written by the
probe and sweep jobs and read by the report (docs/design.md, "Data contracts").

A row holds the split sizes, the best validation epoch and its validation metric, and the
test scores at that epoch (LV-MAE §8's protocol): top-1 (top-5 with at least 5 classes) and
mean class accuracy for classification, MSE/MAE in target units for regression. A row
trained with several seeds holds the mean over them and the sample standard deviation
(``*_std``), so a reader sees how much of a difference between rows is noise.
:func:`result_from_fits` makes a row from the :class:`~lvmae.probes.train.ProbeFit` of
each seed (:func:`result_from_fit`: one seed).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from lvmae.labels import LabelSet
from lvmae.probes.metrics import classification_report, confusion_matrix, plot_confusion_matrix

if TYPE_CHECKING:  # torch: not for a driver that only reads results
    from lvmae.probes.train import ProbeFit

__all__ = ["ProbeResult", "TaskKind", "result_from_fit", "result_from_fits", "write_results"]

TaskKind = Literal["classification", "regression"]


class ProbeResult(BaseModel):
    """One results row: a method (LV-MAE probe, baseline or tuned probe) on one task.

    Attributes:
        method: ``lvmae`` (a probe on the frozen LV-MAE encoder), ``mean-pool`` /
            ``transformer`` (baselines on the raw segment embeddings) or ``lvmae-tuned``
            (the sweep's best configuration).
        probe: the probe (:attr:`lvmae.config.ProbeConfig.name`): ``linear``,
            ``attentive`` (the paper's: the encoder's [CLS] adapted by one block),
            ``attentive-learned`` (a learned [CLS]), ``pooler``; ``scratch`` for the
            transformer baseline.
        task: the task's name (the labels file's stem).
        kind: ``classification`` or ``regression``.
        train, val, test: videos per split.
        best_epoch: 0-based epoch of the best validation metric (the first seed's).
        seeds: how many seeds the row was trained with; every score below is their mean.
        val_top1 / val_mse: that validation metric (one of the two, by ``kind``).
        val_top1_std / val_mse_std: its standard deviation over seeds (None with one seed).
        top1, top5, mean_class_accuracy: test scores, fractions in [0, 1]
            (classification; ``top5`` only with at least 5 classes).
        top1_std: the standard deviation of the test top-1 over seeds.
        mse, mae, n: test scores in target units and the number of test videos
            (regression); ``mse_std``, ``mae_std`` their standard deviations over seeds.
        node, device: the Ray node id(s) and torch device(s) the seeds trained on
            (comma-separated when they differ).
        confusion_matrix: the test confusion-matrix PNG's file name, relative to the
            directory of the results (classification).
        skipped: labelled videos without embeddings, left out.
        trials, best_config: the sweep's trial count and chosen configuration (JSON), for
            ``lvmae-tuned`` rows.
        sweep_val, recipe_val: for ``lvmae-tuned`` rows, the validation metric of the
            chosen trial and of the recipe's own configuration (the sweep's first trial),
            both measured inside the sweep: tuning helped on val when ``sweep_val`` is at
            least ``recipe_val`` (at most, for MSE).
    """

    model_config = ConfigDict(extra="forbid")

    method: str
    probe: str
    task: str
    kind: TaskKind
    train: int = Field(ge=0)
    val: int = Field(ge=0)
    test: int = Field(ge=0)
    best_epoch: int = Field(ge=0)
    seeds: int = Field(1, ge=1)
    val_top1: float | None = None
    val_top1_std: float | None = None
    val_mse: float | None = None
    val_mse_std: float | None = None
    top1: float | None = None
    top1_std: float | None = None
    top5: float | None = None
    top5_std: float | None = None
    mean_class_accuracy: float | None = None
    mean_class_accuracy_std: float | None = None
    mse: float | None = None
    mse_std: float | None = None
    mae: float | None = None
    mae_std: float | None = None
    n: int | None = None
    confusion_matrix: str | None = None
    skipped: int | None = None
    node: str | None = None
    device: str | None = None
    trials: int | None = None
    best_config: str | None = None
    sweep_val: float | None = None
    recipe_val: float | None = None

    @property
    def name(self) -> str:
        """``method (probe)``, e.g. ``lvmae (linear)``."""
        return f"{self.method} ({self.probe})"

    @property
    def main_metric(self) -> tuple[str, float | None, Literal["max", "min"]]:
        """The test metric that ranks methods: ``("top1", value, "max")`` or
        ``("mse", value, "min")``."""
        if self.kind == "classification":
            return "top1", self.top1, "max"
        return "mse", self.mse, "min"

    @property
    def main_std(self) -> float | None:
        """The standard deviation over seeds of :attr:`main_metric` (None with one seed)."""
        return self.top1_std if self.kind == "classification" else self.mse_std

    @property
    def val_metric(self) -> tuple[str, float | None]:
        """The validation metric that picked the best epoch: ``val_top1`` or ``val_mse``."""
        if self.kind == "classification":
            return "val_top1", self.val_top1
        return "val_mse", self.val_mse

    def as_row(self) -> dict[str, Any]:
        """The row as a flat dict without unset fields (CSV, Markdown, MLflow)."""
        return self.model_dump(exclude_none=True)


def _mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (ddof 1; None for a single value)."""
    arr = np.asarray(values, dtype=np.float64)
    return float(arr.mean()), (float(arr.std(ddof=1)) if arr.size > 1 else None)


def _joined(values: Sequence[str] | None) -> str | None:
    return ",".join(dict.fromkeys(values)) if values else None


def result_from_fits(
    method: str,
    probe: str,
    *,
    task: str,
    labels: LabelSet,
    fits: Sequence[ProbeFit],
    out: str | Path,
    nodes: Sequence[str] | None = None,
    devices: Sequence[str] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> ProbeResult:
    """The results row of one probe trained with one seed per element of ``fits``.

    Every score is the mean over the seeds, with its sample standard deviation (``*_std``,
    ddof 1; None with one seed). Classification: each seed's test classification report
    (top-1, top-5 with at least 5 classes, mean class accuracy, ties counted against the
    prediction: :func:`lvmae.probes.metrics.top_k_accuracy`) from its test logits, and one
    confusion matrix summed over the seeds drawn to
    ``<out>/confusion_<task>_<method>_<probe>.png`` (the row holds the file name).
    Regression: the seeds' test MSE, MAE (target units) and ``n``.

    Args:
        method, probe: the row's method and probe name (see :class:`ProbeResult`).
        task: the task's name.
        labels: the task's labels (split sizes, classes, test targets).
        fits: what :func:`~lvmae.probes.train.train_probe` returned for each seed, on the
            same splits (at least one).
        out: the directory of the results (the confusion matrix goes there).
        nodes, devices: where each seed trained (Ray node id, torch device), if known.
        extra: more fields of the row (e.g. ``trials``, ``best_config``).

    Raises:
        ValueError: ``fits`` is empty.
    """
    if not fits:
        raise ValueError("result_from_fits needs at least one fit")
    sizes = labels.split_sizes()
    val_mean, val_std = _mean_std([f.val_metric for f in fits])
    fields: dict[str, Any] = {
        "method": method,
        "probe": probe,
        "task": task,
        "kind": labels.task,
        "train": sizes["train"],
        "val": sizes["val"],
        "test": sizes["test"],
        "best_epoch": fits[0].best_epoch,
        "seeds": len(fits),
        fits[0].metric: val_mean,
        f"{fits[0].metric}_std": val_std,
        "node": _joined(nodes),
        "device": _joined(devices),
        **(extra or {}),
    }
    if labels.task != "classification":
        mse, mse_std = _mean_std([f.test_metrics["mse"] for f in fits])
        mae, mae_std = _mean_std([f.test_metrics["mae"] for f in fits])
        n = int(fits[0].test_metrics["n"])
        return ProbeResult(**fields, mse=mse, mse_std=mse_std, mae=mae, mae_std=mae_std, n=n)
    y = labels.targets("test")
    reports = [classification_report(f.test_scores, y, labels.classes) for f in fits]
    top1, top1_std = _mean_std([r["top1"] for r in reports])
    top5, top5_std = (None, None)
    if "top5" in reports[0]:
        top5, top5_std = _mean_std([r["top5"] for r in reports])
    mca, mca_std = _mean_std([r["mean_class_accuracy"] for r in reports])
    cm = sum(confusion_matrix(f.test_predictions, y, labels.num_classes) for f in fits)
    png = Path(out) / f"confusion_{task}_{method}_{probe}.png"
    title = f"{task}: {method} ({probe})" + (f", {len(fits)} seeds summed" if len(fits) > 1 else "")
    plot_confusion_matrix(cm, labels.classes, png, title=title)
    return ProbeResult(
        **fields,
        top1=top1,
        top1_std=top1_std,
        top5=top5,
        top5_std=top5_std,
        mean_class_accuracy=mca,
        mean_class_accuracy_std=mca_std,
        confusion_matrix=png.name,
    )


def result_from_fit(
    method: str, probe: str, *, task: str, labels: LabelSet, fit: ProbeFit, out: str | Path
) -> ProbeResult:
    """The results row of one probe trained with one seed: :func:`result_from_fits` with
    ``fits=[fit]``."""
    return result_from_fits(method, probe, task=task, labels=labels, fits=[fit], out=out)


def write_results(results: Sequence[ProbeResult], out: str | Path) -> tuple[Path, Path]:
    """Write ``results.csv`` and ``results.md`` (one row per method × task) under ``out``.

    Returns:
        The two paths.
    """
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    rows = [r.as_row() for r in results]
    columns = list(dict.fromkeys(k for row in rows for k in row))
    csv_path, md_path = out / "results.csv", out / "results.md"
    with csv_path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| " + " | ".join(columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(_cell(r.get(c)) for c in columns) + " |" for r in rows]
    md_path.write_text("\n".join(lines) + "\n")
    return csv_path, md_path


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return "–" if math.isnan(value) else f"{value:.4f}"
    return "" if value is None else str(value)
