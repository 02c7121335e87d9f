"""Probe metrics match brute-force counts: top-k, per-class accuracy, confusion matrix,
the classification / regression reports and the confusion-matrix plot (LV-MAE §8,
Tables 6–8)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from lvmae.probes.metrics import (
    classification_report,
    confusion_matrix,
    per_class_accuracy,
    plot_confusion_matrix,
    predicted_classes,
    regression_report,
    top_k_accuracy,
)


def test_top_k_accuracy_matches_brute_force():
    rng = np.random.default_rng(0)
    scores, y = rng.normal(size=(50, 7)), rng.integers(0, 7, size=50)
    for k in range(1, 8):
        hits = [y[i] in np.argsort(-scores[i])[:k] for i in range(50)]
        assert top_k_accuracy(scores, y, k) == pytest.approx(np.mean(hits))
    assert top_k_accuracy(torch.from_numpy(scores), torch.from_numpy(y), 7) == 1.0
    assert top_k_accuracy(np.zeros((3, 4)), [0, 1, 2], 1) == 0.0  # ties count against
    with pytest.raises(ValueError, match="k must be"):
        top_k_accuracy(scores, y, 8)
    with pytest.raises(ValueError, match="outside"):
        top_k_accuracy(scores, np.full(50, 7), 1)
    with pytest.raises(ValueError, match="at least one"):
        top_k_accuracy(np.zeros((0, 3)), np.zeros(0, dtype=int), 1)


def _brute_top_k(scores: np.ndarray, y: np.ndarray, k: int) -> float:
    """Correct when fewer than k OTHER classes score at least as high as the true one."""
    hits = [
        sum(1 for j in range(scores.shape[1]) if j != t and scores[i, j] >= scores[i, t]) < k
        for i, t in enumerate(y)
    ]
    return float(np.mean(hits))


def test_ties_count_against_the_prediction_as_a_brute_force_count_says():
    rng = np.random.default_rng(3)
    # Scores on a coarse grid: many exact ties, including with the true class.
    scores = rng.integers(0, 3, size=(200, 5)).astype(np.float64)
    y = rng.integers(0, 5, size=200)
    for k in range(1, 6):
        assert top_k_accuracy(scores, y, k) == pytest.approx(_brute_top_k(scores, y, k))
    # Constant logits (a collapsed probe) are wrong for every sample, at any k < C.
    const = np.full((8, 4), 0.7)
    assert top_k_accuracy(const, np.arange(8) % 4, 1) == 0.0
    assert top_k_accuracy(const, np.arange(8) % 4, 3) == 0.0
    assert top_k_accuracy(const, np.arange(8) % 4, 4) == 1.0  # every class is in the top 4
    # A two-way tie at the top: wrong at k=1, right at k=2.
    tied = np.array([[2.0, 2.0, 0.0]])
    assert top_k_accuracy(tied, [0], 1) == 0.0 and top_k_accuracy(tied, [0], 2) == 1.0
    report = classification_report(const[:4], [0, 1, 2, 3], ["a", "b", "c", "d"])
    assert report["top1"] == 0.0 and report["mean_class_accuracy"] == 0.0


def test_predicted_classes_follow_the_tie_rule_of_top_1():
    rng = np.random.default_rng(4)
    scores = rng.integers(0, 3, size=(300, 4)).astype(np.float64)  # many ties
    y = rng.integers(0, 4, size=300)
    pred = predicted_classes(scores, y)
    assert np.mean(pred == y) == pytest.approx(top_k_accuracy(scores, y, 1))
    rows = np.arange(300)
    assert np.all(scores[rows, pred] == scores.max(axis=1))  # always a top-scoring class
    cm = confusion_matrix(pred, y, 4)
    assert np.trace(cm) / cm.sum() == pytest.approx(top_k_accuracy(scores, y, 1))
    # a tie with the true class at the top: another of the tied classes, never the true one
    assert predicted_classes(np.array([[1.0, 2.0, 2.0]]), [2]).tolist() == [1]
    assert predicted_classes(np.array([[1.0, 2.0, 2.0]]), [1]).tolist() == [2]
    assert predicted_classes(np.array([[3.0, 2.0, 2.0]]), [1]).tolist() == [0]
    assert predicted_classes(np.full((2, 3), 0.5), [0, 2]).tolist() == [1, 0]


@pytest.mark.parametrize("bad", [np.nan, np.inf, -np.inf])
def test_non_finite_scores_raise(bad):
    scores = np.zeros((3, 4))
    scores[2, 1] = bad
    with pytest.raises(ValueError, match=r"non-finite.*row 2"):
        top_k_accuracy(scores, [0, 1, 2], 1)
    with pytest.raises(ValueError, match="non-finite"):
        classification_report(scores, [0, 1, 2], ["a", "b", "c", "d"])


def test_per_class_accuracy_and_confusion_matrix_match_brute_force():
    rng = np.random.default_rng(1)
    C = 5
    y = rng.choice([0, 1, 2, 4], size=60)  # class 3 absent
    pred = rng.integers(0, C, size=60)
    acc = per_class_accuracy(pred, y, C)
    assert np.isnan(acc[3])
    for c in (0, 1, 2, 4):
        assert acc[c] == pytest.approx(np.mean(pred[y == c] == c))
    cm = confusion_matrix(pred, y, C)
    brute = np.zeros((C, C), dtype=np.int64)
    for t, p in zip(y, pred, strict=True):
        brute[t, p] += 1
    np.testing.assert_array_equal(cm, brute)
    assert cm.dtype == np.int64 and cm.sum() == 60
    np.testing.assert_array_equal(cm.sum(axis=1), np.bincount(y, minlength=C))
    assert np.trace(cm) == np.sum(pred == y)
    with pytest.raises(ValueError, match="entries"):
        confusion_matrix(pred[:-1], y, C)
    with pytest.raises(ValueError, match="outside"):
        per_class_accuracy(pred, y, 4)


def _brute_per_class(scores: np.ndarray, y: np.ndarray, n_classes: int) -> list[float]:
    """Per true class: the fraction of its samples whose true class strictly beats every
    other class (a tie for the top score is wrong); nan for a class with no sample."""
    out = []
    for c in range(n_classes):
        rows = [i for i in range(len(y)) if y[i] == c]
        right = [all(scores[i, c] > scores[i, j] for j in range(n_classes) if j != c) for i in rows]
        out.append(sum(right) / len(rows) if rows else float("nan"))
    return out


def test_reports_on_a_hand_built_case():
    # By hand: rows 0, 3 and 5 are right; row 1 is wrong; rows 2 and 4 tie their true class
    # with another for the top score (wrong, though argmax would pick the true class).
    # top-1 3/6; per class 1/3, 1/2, 1/1; mean class accuracy (1/3 + 1/2 + 1) / 3 = 11/18.
    logits = np.array([[3, 1, 0], [1, 2, 0], [2, 2, 0], [0, 5, 1], [0, 1, 1], [0, 0, 9]], float)
    y = np.array([0, 0, 0, 1, 1, 2])
    report = classification_report(logits, y, ["a", "b", "c"])
    assert report["top1"] == pytest.approx(0.5)
    assert report["per_class"] == pytest.approx({"a": 1 / 3, "b": 1 / 2, "c": 1.0})
    assert report["mean_class_accuracy"] == pytest.approx(11 / 18)
    assert report["n"] == 6 and "top5" not in report  # fewer than 5 classes


def test_reports_match_brute_force_counts():
    rng = np.random.default_rng(2)
    # Scores on a coarse grid (many exact ties), 6 classes, class 5 absent from y.
    logits, y = rng.integers(0, 4, size=(40, 6)).astype(float), rng.integers(0, 5, size=40)
    names = [f"c{i}" for i in range(6)]
    report = classification_report(logits, y, names)
    assert report["top1"] == pytest.approx(_brute_top_k(logits, y, 1))
    assert report["top5"] == pytest.approx(_brute_top_k(logits, y, 5))
    per_class = _brute_per_class(logits, y, 6)
    assert report["n"] == 40 and np.isnan(report["per_class"]["c5"])
    for name, expected in zip(names[:5], per_class[:5], strict=True):
        assert report["per_class"][name] == pytest.approx(expected), name
    assert report["mean_class_accuracy"] == pytest.approx(sum(per_class[:5]) / 5)
    assert "top5" not in classification_report(logits[:, :4], y % 4, names[:4])
    reg = regression_report(np.array([1.0, 2.0, 4.0]), np.array([1.0, 3.0, 1.0]))
    assert reg == {"mse": pytest.approx(10 / 3), "mae": pytest.approx(4 / 3), "n": 3}


@pytest.mark.parametrize("n_classes", [12, 50])
def test_confusion_matrix_plot_writes_png(tmp_path, n_classes):
    C = n_classes
    rng = np.random.default_rng(3)
    y = rng.integers(0, C, size=400)
    pred = np.where(rng.random(400) < 0.7, y, rng.integers(0, C, size=400))
    cm = confusion_matrix(pred, y, C)
    names = [f"class_{i}" for i in range(C)]
    path = plot_confusion_matrix(cm, names, tmp_path / "plots" / "cm.png", title="test")
    assert path == tmp_path / "plots" / "cm.png"
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 1000
    with pytest.raises(ValueError, match="class names"):
        plot_confusion_matrix(cm, names[:-1], tmp_path / "bad.png")
