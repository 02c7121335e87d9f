"""The probe stage's results: one :class:`ProbeResult` per method × task, written by the
probe and sweep jobs and read by the report (docs/design.md, "Data contracts").

A row holds the split sizes, the best validation epoch and its validation metric, and the
test scores at that epoch (LV-MAE §8's protocol): top-1 (top-5 with at least 5 classes) and
mean class accuracy for classification, MSE/MAE in target units for regression.
:func:`result_from_fit` makes a row from a :class:`~lvmae.probes.train.ProbeFit`.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from lvmae.labels import LabelSet
from lvmae.metrics import classification_report, confusion_matrix, plot_confusion_matrix
from lvmae.probes.train import ProbeFit

__all__ = ["ProbeResult", "TaskKind", "result_from_fit", "write_results"]

TaskKind = Literal["classification", "regression"]


class ProbeResult(BaseModel):
    """One results row: a method (LV-MAE probe, baseline or tuned probe) on one task.

    Attributes:
        method: ``lvmae`` (a probe on the frozen LV-MAE encoder), ``mean-pool`` /
            ``transformer`` (baselines on the raw segment embeddings) or ``lvmae-tuned``
            (the sweep's best configuration).
        probe: the probe kind (``linear``, ``attentive``, ``pooler``; ``scratch`` for the
            transformer baseline).
        task: the task's name (the labels file's stem).
        kind: ``classification`` or ``regression``.
        train, val, test: videos per split.
        best_epoch: 0-based epoch of the best validation metric.
        val_top1 / val_mse: that validation metric (one of the two, by ``kind``).
        top1, top5, mean_class_accuracy: test scores, fractions in [0, 1]
            (classification; ``top5`` only with at least 5 classes).
        mse, mae, n: test scores in target units and the number of test videos
            (regression).
        confusion_matrix: the test confusion-matrix PNG's file name, relative to the
            directory of the results (classification).
        skipped: labelled videos without embeddings, left out.
        trials, best_config: the sweep's trial count and chosen configuration (JSON), for
            ``lvmae-tuned`` rows.
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
    val_top1: float | None = None
    val_mse: float | None = None
    top1: float | None = None
    top5: float | None = None
    mean_class_accuracy: float | None = None
    mse: float | None = None
    mae: float | None = None
    n: int | None = None
    confusion_matrix: str | None = None
    skipped: int | None = None
    trials: int | None = None
    best_config: str | None = None

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
    def val_metric(self) -> tuple[str, float | None]:
        """The validation metric that picked the best epoch: ``val_top1`` or ``val_mse``."""
        if self.kind == "classification":
            return "val_top1", self.val_top1
        return "val_mse", self.val_mse

    def as_row(self) -> dict[str, Any]:
        """The row as a flat dict without unset fields (CSV, Markdown, MLflow)."""
        return self.model_dump(exclude_none=True)


def result_from_fit(
    method: str, probe: str, *, task: str, labels: LabelSet, fit: ProbeFit, out: str | Path
) -> ProbeResult:
    """The results row of one trained probe.

    Classification: the test split's classification report (top-1, top-5 with at least 5
    classes, mean class accuracy) from ``fit``'s test logits, and its confusion matrix
    drawn to ``<out>/confusion_<task>_<method>_<probe>.png`` (the row holds the file name).
    Regression: ``fit``'s test MSE, MAE (target units) and ``n``.

    Args:
        method, probe: the row's method and probe kind (see :class:`ProbeResult`).
        task: the task's name.
        labels: the task's labels (split sizes, classes, test targets).
        fit: what :func:`~lvmae.probes.train.train_probe` returned on those splits.
        out: the directory of the results (the confusion matrix goes there).
    """
    sizes = labels.split_sizes()
    fields: dict[str, Any] = {
        "method": method,
        "probe": probe,
        "task": task,
        "kind": labels.task,
        "train": sizes["train"],
        "val": sizes["val"],
        "test": sizes["test"],
        "best_epoch": fit.best_epoch,
        fit.metric: fit.val_metric,
    }
    if labels.task != "classification":
        return ProbeResult(**fields, **fit.test_metrics)
    y = labels.targets("test")
    report = classification_report(fit.test_scores, y, labels.classes)
    cm = confusion_matrix(fit.test_predictions, y, labels.num_classes)
    png = Path(out) / f"confusion_{task}_{method}_{probe}.png"
    plot_confusion_matrix(cm, labels.classes, png, title=f"{task}: {method} ({probe})")
    return ProbeResult(
        **fields,
        top1=report["top1"],
        top5=report.get("top5"),
        mean_class_accuracy=report["mean_class_accuracy"],
        confusion_matrix=png.name,
    )


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
