"""Cached features → labelled splits → :func:`evaluate`, without Ray: splits follow the
labels file, videos without features are left out and counted, and a sweep's evaluation
never reads the test split."""

from __future__ import annotations

import csv

import numpy as np
import pytest

from lvmae.config import ProbeConfig
from lvmae.labels import LabelsError
from lvmae.probes.features import (
    Features,
    ProbeError,
    evaluate,
    load_task,
    load_tasks,
    probe_data,
)

DIM = 8
CLASSES = ("a", "b")


def _features(ids, *, with_cls: bool = True) -> Features:
    """Per video 2–4 tokens around its class's centre (the class is the id's first letter)."""
    rng = np.random.default_rng(0)
    centres = {"a": np.ones(DIM), "b": -np.ones(DIM)}
    tokens = {
        v: (centres[v[0]] + 0.3 * rng.normal(size=(int(rng.integers(2, 5)), DIM))).astype(
            np.float32
        )
        for v in ids
    }
    pooled = {v: t.mean(0) for v, t in tokens.items()}
    cls = {v: t[0] for v, t in tokens.items()} if with_cls else None
    return Features(pooled, cls, tokens)


@pytest.fixture
def labels_file(tmp_path):
    """12 videos per class (8 train, 2 val, 2 test each), and one video without features."""
    path = tmp_path / "genre.csv"
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["video_id", "label", "split"])
        for c in CLASSES:
            for k in range(12):
                split = "train" if k < 8 else ("val" if k < 10 else "test")
                writer.writerow([f"{c}/{k:02d}.mp4", c, split])
        writer.writerow(["a/missing.mp4", "a", "train"])
    ids = {f"{c}/{k:02d}.mp4" for c in CLASSES for k in range(12)}
    return str(path), ids


def test_tasks_keep_the_videos_with_features_and_count_the_others(labels_file, caplog):
    path, ids = labels_file
    (task,) = load_tasks([path], ids)
    assert task.name == "genre" and task.skipped == 1
    assert task.labels.split_sizes() == {"train": 16, "val": 4, "test": 4}
    assert "a/missing.mp4" in caplog.text
    name, labels, skipped = task  # a plain (name, labels, skipped) tuple too
    assert (name, skipped) == ("genre", 1)

    data = probe_data(labels, "val", _features(ids))
    val_ids = labels.split("val")["video_id"].to_pylist()
    np.testing.assert_array_equal(data.y, labels.targets("val"))
    assert data.pooled.shape == (4, DIM) and data.cls.shape == (4, DIM)
    assert [len(t) for t in data.tokens] == [len(_features(ids).tokens[v]) for v in val_ids]
    assert probe_data(labels, "val", _features(ids, with_cls=False)).cls is None


def test_a_split_emptied_by_missing_features_is_a_probe_error(labels_file):
    path, ids = labels_file
    no_test = {v for v in ids if int(v.split("/")[1][:2]) < 10}
    with pytest.raises(ProbeError, match="split 'test' has no labelled videos") as err:
        load_task(path, no_test)
    assert isinstance(err.value, ValueError) and isinstance(err.value.__cause__, LabelsError)


def test_evaluate_trains_on_the_splits_and_can_leave_test_unseen(labels_file):
    path, ids = labels_file
    labels, _ = load_task(path, ids)
    features = _features(ids)
    config = ProbeConfig("linear", lr=1e-2, epochs=5, batch_size=4)
    fit = evaluate(labels, features, config)
    assert fit.test_metrics["n"] == 4 and fit.test_metrics["top1"] == 1.0
    # Without test: validation stands in, so the "test" scores are the validation ones.
    blind = evaluate(labels, features, config, use_test=False)
    assert blind.test_metrics["n"] == 4
    assert blind.test_metrics["top1"] == blind.history[blind.best_epoch]["val_top1"]
    assert blind.test_metrics["loss"] == pytest.approx(blind.history[blind.best_epoch]["val_loss"])
