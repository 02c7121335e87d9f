"""Results rows from trained probes: classification rows carry the test report and a
confusion-matrix PNG, regression rows MSE/MAE in target units; the tables list every row."""

from __future__ import annotations

import csv

import numpy as np
import pyarrow as pa
import pytest

from lvmae.labels import LabelSet
from lvmae.probes.results import ProbeResult, result_from_fit, result_from_fits, write_results
from lvmae.probes.train import ProbeFit


def _labels(task: str) -> LabelSet:
    splits = ["train"] * 6 + ["val"] * 3 + ["test"] * 3
    classification = task == "classification"
    label = (
        pa.array(["x", "y", "z"] * 4, pa.string())
        if classification
        else pa.array([float(i) for i in range(12)], pa.float64())
    )
    table = pa.table(
        {"video_id": [f"v{i}.mp4" for i in range(12)], "label": label, "split": splits}
    )
    return LabelSet.from_table(table, task=task)


def test_classification_row_has_the_report_and_a_confusion_matrix(tmp_path):
    labels = _labels("classification")
    scores = np.array([[2.0, 0, 0], [0, 1.0, 1.0], [0, 0, 3.0]], dtype=np.float32)
    fit = ProbeFit(
        best_epoch=4, val_metric=0.5, test_metrics={"top1": 2 / 3, "loss": 1.0, "n": 3},
        history=[], test_predictions=scores.argmax(1), test_scores=scores, metric="val_top1",
    )  # fmt: skip
    row = result_from_fit("lvmae", "linear", task="genre", labels=labels, fit=fit, out=tmp_path)
    # By hand: the test videos are x, y, z; the scores pick x, a tie of y and z, z: 2 of 3
    # right (a tie counts against), per class 1, 0, 1.
    assert labels.targets("test").tolist() == [0, 1, 2]
    assert row.top1 == pytest.approx(2 / 3) and row.top5 is None
    assert row.mean_class_accuracy == pytest.approx(2 / 3)
    assert (row.train, row.val, row.test, row.best_epoch, row.val_top1) == (6, 3, 3, 4, 0.5)
    assert row.confusion_matrix == "confusion_genre_lvmae_linear.png"
    assert (tmp_path / row.confusion_matrix).read_bytes()[:4] == b"\x89PNG"
    assert list(row.as_row()) == [
        "method", "probe", "task", "kind", "train", "val", "test", "best_epoch", "seeds",
        "val_top1", "top1", "mean_class_accuracy", "confusion_matrix",
    ]  # fmt: skip
    assert row.main_metric == ("top1", row.top1, "max")


def test_regression_row_has_target_unit_errors(tmp_path):
    labels = _labels("regression")
    fit = ProbeFit(
        best_epoch=0, val_metric=2.5, test_metrics={"mse": 4.0, "mae": 2.0, "n": 3},
        history=[], test_predictions=np.zeros(3), metric="val_mse",
    )  # fmt: skip
    row = result_from_fit("mean-pool", "linear", task="views", labels=labels, fit=fit,
                          out=tmp_path)  # fmt: skip
    assert (row.kind, row.val_mse, row.mse, row.mae, row.n) == ("regression", 2.5, 4.0, 2.0, 3)
    assert row.confusion_matrix is None and not list(tmp_path.iterdir())
    assert row.val_metric == ("val_mse", 2.5)


def test_results_tables_list_every_row(tmp_path):
    rows = [
        ProbeResult(method="lvmae", probe="linear", task="t", kind="classification", train=6,
                    val=3, test=3, best_epoch=1, val_top1=0.5, top1=float("nan"), skipped=2),
        ProbeResult(method="lvmae-tuned", probe="attentive", task="t", kind="classification",
                    train=6, val=3, test=3, best_epoch=0, val_top1=1.0, top1=1.0, trials=4),
    ]  # fmt: skip
    csv_path, md_path = write_results(rows, tmp_path / "r")
    with csv_path.open() as f:
        read = list(csv.DictReader(f))
    assert [r["method"] for r in read] == ["lvmae", "lvmae-tuned"]
    assert read[0]["skipped"] == "2" and read[1]["trials"] == "4" and read[0]["trials"] == ""
    md = md_path.read_text().splitlines()
    assert md[0].startswith("| method | probe | task | kind |") and "| – |" in md[2]


def test_several_seeds_give_mean_and_sample_std(tmp_path):
    labels = _labels("classification")
    y = labels.targets("test")
    right = np.eye(3, dtype=np.float32)[y] * 3.0  # every test video correct
    wrong = np.eye(3, dtype=np.float32)[(y + 1) % 3] * 3.0  # every test video wrong
    fits = [
        ProbeFit(best_epoch=e, val_metric=v, test_metrics={}, history=[],
                 test_predictions=s.argmax(1), test_scores=s, metric="val_top1")
        for e, v, s in ((2, 0.5, right), (3, 1.0, wrong), (1, 0.75, right))
    ]  # fmt: skip
    row = result_from_fits("lvmae", "attentive", task="genre", labels=labels, fits=fits,
                           out=tmp_path, nodes=["n1", "n1", "n2"], devices=["cpu"] * 3)  # fmt: skip
    assert row.seeds == 3 and row.best_epoch == 2
    assert row.top1 == pytest.approx(2 / 3) and row.top1_std == pytest.approx(
        np.std([1, 0, 1], ddof=1)
    )
    assert row.val_top1 == pytest.approx(0.75) and row.val_top1_std == pytest.approx(0.25)
    assert (row.node, row.device) == ("n1,n2", "cpu")
    assert row.main_std == row.top1_std
    one = result_from_fits("lvmae", "linear", task="genre", labels=labels, fits=fits[:1],
                           out=tmp_path)  # fmt: skip
    assert one.seeds == 1 and one.top1_std is None and one.val_top1_std is None
    with pytest.raises(ValueError, match="at least one"):
        result_from_fits("lvmae", "linear", task="genre", labels=labels, fits=[], out=tmp_path)


def test_every_test_metric_of_several_seeds_has_its_spread(tmp_path):
    """top-1, top-5 and mean class accuracy: mean and sample std over the seeds."""
    names = ["a", "b", "c", "d", "e"]
    labels = LabelSet.from_table(pa.table({
        "video_id": [f"v{i}.mp4" for i in range(15)], "label": names * 3,
        "split": ["train"] * 5 + ["val"] * 5 + ["test"] * 5,
    }))  # fmt: skip
    y = labels.targets("test")
    right = np.eye(5, dtype=np.float32)[y] * 3.0
    wrong = np.eye(5, dtype=np.float32)[(y + 1) % 5] * 3.0
    fits = [ProbeFit(best_epoch=0, val_metric=0.5, test_metrics={}, history=[],
                     test_predictions=s.argmax(1), test_scores=s, metric="val_top1")
            for s in (right, wrong)]  # fmt: skip
    row = result_from_fits("lvmae", "linear", task="t", labels=labels, fits=fits, out=tmp_path)
    spread = np.std([1.0, 0.0], ddof=1)
    assert (row.top1, row.mean_class_accuracy) == (0.5, 0.5)
    assert row.top1_std == row.mean_class_accuracy_std == pytest.approx(spread)
    assert row.top5 == 1.0 and row.top5_std == 0.0  # the true class is in the top 5 of 5
