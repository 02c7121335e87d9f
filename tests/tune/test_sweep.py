"""The probe sweep: search spaces from YAML (no Ray needed), and small real Ray Tune sweeps
on synthetic cached features with real MLflow (SQLite): trials are nested runs, never read
the test split, and the best configuration is scored on test once."""

from __future__ import annotations

import csv
import json

import numpy as np
import pyarrow as pa
import pytest
from ray import tune

from lvmae.config import ConfigError, TuneSection
from lvmae.labels import LabelSet
from lvmae.probes import Features, ProbeResult, ProbeTask
from tune.space import DEFAULT_SPACE, load_space, max_epochs, probe_config
from tune.sweep import run_tune

DIM = 16
CLASSES = ("cooking", "sports", "music")

# ------------------------------------------------------------------------------ spaces


def test_a_good_space_gives_tune_domains_and_constants(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text(
        "probe: {choice: [linear, attentive]}\n"
        "lr: {loguniform: [1.0e-5, 1.0e-2]}\n"
        "dropout: {uniform: [0, 0.3]}\n"
        "epochs: {randint: [2, 9]}\n"
        "batch_size: {grid: [8, 16]}\n"
        "weight_decay: 0.001\n"
    )
    space = load_space(str(path))
    assert isinstance(space["probe"], tune.search.sample.Categorical)
    assert space["probe"].categories == ["linear", "attentive"]
    assert (space["lr"].lower, space["lr"].upper) == (1e-5, 1e-2)
    assert isinstance(space["dropout"], tune.search.sample.Float)
    assert (space["epochs"].lower, space["epochs"].upper) == (2, 9)
    assert space["batch_size"] == {"grid_search": [8, 16]}
    assert space["weight_decay"] == 0.001
    assert max_epochs(space) == 9
    assert set(load_space(None)) == set(DEFAULT_SPACE) == {
        "probe", "lr", "weight_decay", "batch_size", "epochs", "dropout",
    }  # fmt: skip
    assert max_epochs(load_space(None)) == 30


@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("learning_rate: {uniform: [0, 1]}\n", "unknown parameter 'learning_rate'"),
        ("lr: {gaussian: [0, 1]}\n", "lr: expected one sampler of"),
        ("lr: {uniform: [0, 1], choice: [1]}\n", "expected one sampler"),
        ("lr: {uniform: [low, high]}\n", "lr: bad uniform arguments"),
        ("- lr\n", "expected a mapping"),
    ],
)
def test_search_space_errors_are_clear(tmp_path, text, match):
    bad = tmp_path / "s.yaml"
    bad.write_text(text)
    with pytest.raises(ConfigError, match=match):
        load_space(str(bad))


def test_a_missing_space_file_is_a_config_error(tmp_path):
    with pytest.raises(ConfigError, match="not found"):
        load_space(str(tmp_path / "none.yaml"))


def test_trial_params_become_probe_configs():
    config = probe_config({"probe": "attentive", "lr": np.float64(3e-4), "epochs": 5})
    assert (config.kind, config.lr, config.epochs, config.gamma) == ("attentive", 3e-4, 5, 0.9)
    assert probe_config({"batch_size": 8}).kind == "linear"
    with pytest.raises(ValueError, match="dropout"):
        probe_config({"dropout": 1.5})


# ------------------------------------------------------------------------------ sweeps


def _task(seed: int = 0) -> tuple[ProbeTask, Features]:
    """12 videos per class (8 train, 2 val, 2 test), 3–8 tokens each around the class's
    centre: a separable task."""
    rng = np.random.default_rng(seed)
    centres = 2.0 * rng.normal(size=(len(CLASSES), DIM))
    ids, names, splits, tokens = [], [], [], {}
    for c, name in enumerate(CLASSES):
        for k in range(12):
            vid = f"{name}/v{k:02d}.mp4"
            ids.append(vid)
            names.append(name)
            splits.append("train" if k < 8 else ("val" if k < 10 else "test"))
            L = int(rng.integers(3, 9))
            tokens[vid] = (centres[c] + rng.normal(size=(L, DIM))).astype(np.float32)
    table = pa.table({"video_id": ids, "label": names, "split": splits})
    labels = LabelSet.from_table(table, task="classification")
    features = Features(
        {v: t.mean(0) for v, t in tokens.items()}, {v: t[0] for v, t in tokens.items()}, tokens
    )
    return ProbeTask("genre", labels, 1), features


def test_small_sweep_logs_nested_trials_and_scores_the_best_on_test(ray_local, tmp_path):
    from mlflow.tracking import MlflowClient

    space = tmp_path / "space.yaml"
    space.write_text(
        "probe: {choice: [linear, attentive]}\nlr: {loguniform: [1e-3, 1e-2]}\n"
        "epochs: {choice: [2, 3]}\nbatch_size: 8\n"
    )
    task, features = _task()
    out = tmp_path / "sweep"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    section = TuneSection(num_samples=3, space=str(space), max_concurrent=2)
    (row,) = run_tune([task], features, str(out), section, tracking_uri=uri, verbose=0)

    assert isinstance(row, ProbeResult) and row.method == "lvmae-tuned"
    best = json.loads(row.best_config)
    assert best["probe"] in {"linear", "attentive"} and 1e-3 <= best["lr"] <= 1e-2
    assert row.probe == best["probe"] and row.task == "genre" and row.test == 6
    assert row.trials == 3 and 0.0 <= row.top1 <= 1.0
    task_dir = out / "tune" / "genre"
    with (task_dir / "trials.csv").open() as f:
        assert len(list(csv.DictReader(f))) == 3
    assert json.loads((task_dir / "best.json").read_text()) == row.as_row()
    assert (task_dir / row.confusion_matrix).is_file()
    with (out / "tune" / "results.csv").open() as f:
        assert [r["method"] for r in csv.DictReader(f)] == ["lvmae-tuned"]

    client = MlflowClient(tracking_uri=uri)
    exp = client.get_experiment_by_name("lvmae-tune")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("lvmae.stage") == "tune"]
    trials = [r for r in runs if r.data.tags.get("lvmae.stage") == "tune-trial"]
    assert len(parents) == 1 and len(trials) == 3
    assert all(t.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for t in trials)
    assert parents[0].data.metrics["best/top1"] == pytest.approx(row.top1)
    assert all("val_top1" in t.data.metrics for t in trials)


def test_trials_never_read_the_test_split(ray_local, tmp_path):
    """The test videos' features are unusable (another width): every trial still runs, and
    only the final retraining, which scores the test split, trips over them."""
    task, features = _task(1)
    for vid in task.labels.split("test")["video_id"].to_pylist():
        features.tokens[vid] = np.zeros((2, DIM + 1), np.float32)
        features.pooled[vid] = np.zeros(DIM + 1, np.float32)
    space = tmp_path / "space.yaml"
    space.write_text("probe: linear\nepochs: 2\nbatch_size: 8\nlr: {choice: [0.001, 0.01]}\n")
    section = TuneSection(num_samples=2, space=str(space), max_concurrent=2)
    out = tmp_path / "sweep"
    with pytest.raises(ValueError, match="width mismatch"):
        run_tune([task], features, str(out), section,
                 tracking_uri=f"sqlite:///{tmp_path / 'mlflow.db'}", verbose=0)  # fmt: skip
    with (out / "tune" / "genre" / "trials.csv").open() as f:
        trials = list(csv.DictReader(f))
    assert len(trials) == 2 and all(t["val_top1"] for t in trials)
