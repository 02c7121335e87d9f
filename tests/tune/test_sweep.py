"""The probe sweep: search spaces from YAML (no Ray needed), and two small real Ray Tune
sweeps on synthetic cached features with real MLflow (SQLite), one of them shared READ-ONLY
by the tests that only read its results: trials are nested runs, never read the test split,
the recipe is the first trial, and the best configuration is scored on test once."""

from __future__ import annotations

import csv
import json
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from ray import tune

from lvmae.config import ConfigError, ProbeConfig, TuneSection
from lvmae.labels import LabelSet
from lvmae.probes.features import Features, ProbeTask
from lvmae.probes.results import ProbeResult
from pipelines.probe_tasks import fit_seeds
from tune.space import default_space_spec, load_space, max_epochs, probe_config, recipe_point
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
    # The default space is centred on the recipe and sweeps the kind only when asked.
    assert set(load_space(None)) == {"lr", "weight_decay", "batch_size", "epochs", "dropout"}
    assert max_epochs(load_space(None)) == 45  # the paper's linear recipe: 30 epochs × 1.5


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


def test_the_default_space_is_centred_on_the_recipe_which_is_a_point_of_it():
    recipe = ProbeConfig("linear", lr=1e-2, epochs=100, batch_size=8, weight_decay=1e-2)
    spec = default_space_spec({"linear": recipe})
    assert spec["lr"] == {"loguniform": [pytest.approx(1e-3), pytest.approx(1e-1)]}
    assert spec["epochs"] == {"choice": [50, 100, 150]}
    assert spec["batch_size"] == {"choice": [4, 8, 16]}
    assert "probe" not in spec
    space = load_space(None, recipes={"linear": recipe})
    point = recipe_point(space, recipe)
    assert point == {"lr": 1e-2, "epochs": 100, "batch_size": 8, "weight_decay": 1e-2,
                     "dropout": 0.0}  # fmt: skip
    assert probe_config(point, {"linear": recipe}) == recipe
    both = default_space_spec({"linear": recipe, "attentive": ProbeConfig("attentive")})
    assert both["probe"] == {"choice": ["linear", "attentive"]}


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


@dataclass(frozen=True)
class Sweep:
    """A finished sweep: its output directory, MLflow store, the row :func:`run_tune`
    returned and its ``trials.csv`` rows in the order the trials were created."""

    out: Path
    uri: str
    row: ProbeResult
    trials: tuple[dict[str, str], ...]


RECIPE = ProbeConfig("linear", lr=3e-3, epochs=6, batch_size=8)
"""The shared sweep's first recipe: its first trial and the centre of its default space."""


@pytest.fixture(scope="module")
def empty_store(tmp_path_factory) -> Path:
    """An empty SQLite MLflow store, its schema created once (seconds of migrations): each
    sweep below tracks into its own copy (:func:`_store_in`). Read-only."""
    from mlflow.tracking import MlflowClient

    path = tmp_path_factory.mktemp("store") / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{path}").search_experiments(max_results=1)
    return path


def _store_in(empty_store: Path, directory: Path) -> str:
    """The URI of a copy of ``empty_store`` in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    return f"sqlite:///{shutil.copy(empty_store, directory / 'mlflow.db')}"


@pytest.fixture(scope="module")
def sweep(ray_local, tmp_path_factory, empty_store) -> Sweep:
    """ONE real sweep, shared READ-ONLY by the tests below (each asserts its own part): 3
    trials in the default space centred on :data:`RECIPE`, over both probe kinds (so the kind
    is swept too), ASHA's grace period half of each trial's epochs; the best configuration
    retrained with 2 seeds and scored on test."""
    tmp = tmp_path_factory.mktemp("sweep")
    task, features = _task(2)
    recipes = {"linear": RECIPE, "attentive": ProbeConfig("attentive")}
    section = TuneSection(num_samples=3, max_concurrent=2, seeds=2, grace_period=0.5,
                          probes=["linear", "attentive"])  # fmt: skip
    out, uri = tmp / "sweep", _store_in(empty_store, tmp)
    (row,) = run_tune([task], features, str(out), section, recipes=recipes, tracking_uri=uri,
                      fit_seeds=fit_seeds, verbose=0)  # fmt: skip
    with (out / "tune" / "genre" / "trials.csv").open() as f:
        trials = tuple(csv.DictReader(f))
    return Sweep(out, uri, row, trials)


@pytest.mark.slow
def test_small_sweep_logs_nested_trials_and_scores_the_best_on_test(sweep):
    from mlflow.tracking import MlflowClient

    row, out = sweep.row, sweep.out
    assert isinstance(row, ProbeResult) and row.method == "lvmae-tuned"
    best = json.loads(row.best_config)
    assert best["probe"] in {"linear", "attentive"}
    assert RECIPE.lr / 10 <= best["lr"] <= RECIPE.lr * 10
    assert row.probe == best["probe"] and row.task == "genre" and row.test == 6
    assert row.trials == 3 and 0.0 <= row.top1 <= 1.0
    assert row.seeds == 2 and row.top1_std is not None and row.device == "cpu"
    task_dir = out / "tune" / "genre"
    assert len(sweep.trials) == 3
    assert json.loads((task_dir / "best.json").read_text()) == row.as_row()
    assert (task_dir / row.confusion_matrix).is_file()
    with (out / "tune" / "results.csv").open() as f:
        assert [r["method"] for r in csv.DictReader(f)] == ["lvmae-tuned"]

    client = MlflowClient(tracking_uri=sweep.uri)
    exp = client.get_experiment_by_name("lvmae-tune")
    runs = client.search_runs([exp.experiment_id])
    parents = [r for r in runs if r.data.tags.get("lvmae.stage") == "tune"]
    trials = [r for r in runs if r.data.tags.get("lvmae.stage") == "tune-trial"]
    assert len(parents) == 1 and len(trials) == 3
    assert all(t.data.tags["mlflow.parentRunId"] == parents[0].info.run_id for t in trials)
    assert parents[0].data.metrics["best/top1"] == pytest.approx(row.top1)
    assert all("val_top1" in t.data.metrics for t in trials)
    # a trial the scheduler stops early is KILLED with that reason, never FAILED
    for t in trials:
        assert t.info.status in ("FINISHED", "KILLED"), t.data.tags.get("lvmae.error")
        if t.info.status == "KILLED":
            assert t.data.tags["lvmae.error"] == "stopped by the Tune scheduler"


@pytest.mark.slow
def test_the_recipe_is_the_first_trial_and_tuning_can_only_help_on_val(sweep):
    """The default space is centred on the first recipe, whose configuration (its kind
    included) is trial 0; the tuned row's val (its chosen trial's) is at least the recipe
    trial's; ASHA stops no trial before the grace period (a fraction of each trial's OWN
    epochs)."""
    first, row = sweep.trials[0], sweep.row  # trials in the order they were created
    assert first["config/probe"] == "linear"
    assert float(first["config/lr"]) == pytest.approx(RECIPE.lr)
    assert (int(first["config/epochs"]), int(first["config/batch_size"])) == (6, 8)
    assert float(first["config/weight_decay"]) == 0.0 and float(first["config/dropout"]) == 0.0
    assert row.recipe_val is not None and row.sweep_val is not None
    assert row.sweep_val >= row.recipe_val
    assert all(float(t["progress"]) >= 50.0 for t in sweep.trials)


@pytest.mark.slow
def test_trials_never_read_the_test_split(ray_local, tmp_path, empty_store, capfd):
    """The test videos' features are unusable (another width): every trial (drawn from the
    space file) still runs, and only the final retraining, which scores the test split,
    trips over them. At ``verbose=0`` Ray Tune prints nothing to the console."""
    task, features = _task(1)
    for vid in task.labels.split("test")["video_id"].to_pylist():
        features.tokens[vid] = np.zeros((2, DIM + 1), np.float32)
        features.pooled[vid] = np.zeros(DIM + 1, np.float32)
    space = tmp_path / "space.yaml"
    space.write_text("probe: linear\nepochs: 2\nbatch_size: 8\nlr: {choice: [0.001, 0.01]}\n")
    section = TuneSection(num_samples=2, space=str(space), max_concurrent=2)
    out = tmp_path / "sweep"
    with pytest.raises(ValueError, match="width mismatch"):
        run_tune([task], features, str(out), section, fit_seeds=fit_seeds,
                 tracking_uri=_store_in(empty_store, tmp_path), verbose=0)  # fmt: skip
    printed = capfd.readouterr()
    assert "Configuration for experiment" not in printed.out + printed.err
    assert "tensorboard" not in (printed.out + printed.err).lower()
    with (out / "tune" / "genre" / "trials.csv").open() as f:
        trials = list(csv.DictReader(f))
    assert len(trials) == 2 and all(t["val_top1"] for t in trials)
    assert all(float(t["config/lr"]) in {0.001, 0.01} and t["config/epochs"] == "2"
               for t in trials)  # fmt: skip


def test_a_trial_that_ended_in_an_error_is_never_chosen():
    """A probe that diverged after a good epoch reports a good val, then fails: its
    configuration is not a candidate (Ray Tune's own result objects)."""
    import pandas as pd
    from ray.tune import Result

    from tune.sweep import _trial_vals

    def result(lr: float, vals: list[float], error: Exception | None) -> Result:
        frame = pd.DataFrame({"val_top1": vals})
        return Result(metrics={"config": {"lr": lr}}, checkpoint=None, error=error,
                      path="/nowhere", metrics_dataframe=frame)  # fmt: skip

    grid = [result(1e-4, [0.4, 0.6], None), result(1e-2, [0.7, 0.9], FloatingPointError("nan"))]
    assert _trial_vals(grid, "val_top1", "max") == [({"lr": 1e-4}, 0.6)]
