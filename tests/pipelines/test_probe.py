"""Probes, baselines and the probe sweep on a real segments table and a real checkpoint,
with real Ray, real MLflow (SQLite) and real Parquet (the sweep itself: tests/tune)."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
import ray
import torch
from click.testing import CliRunner

from lvmae.config import ProbeConfig, ProbeSection, TuneSection
from lvmae.mae.checkpoints import save_checkpoint
from lvmae.mae.model import LVMAE, model_config
from lvmae.probes.results import ProbeResult
from lvmae.storage import StorageError, segment_schema, write_table_atomic
from pipelines.cli import cli
from pipelines.probe import _track, feature_cache_dir, run_probe, run_sweep
from tests.pipelines.conftest import copy_outputs, quick_small_runs, seed_store

DIM = 64
CLASSES = ("cooking", "sports", "music")
LINEAR_RECIPE = {"lr": 3e-3, "epochs": 15}
"""The probe stage's linear recipe (over the paper's)."""


def segments_table(rng) -> tuple[pa.Table, list[tuple[str, str, str]]]:
    """12 videos per class; each video's 6–12 segment embeddings scatter around its class
    centroid (a separable task). Returns the table and (video_id, label, split) rows."""
    centroids = rng.normal(size=(len(CLASSES), DIM))
    rows, labels = [], []
    for c, name in enumerate(CLASSES):
        for k in range(12):
            vid = f"{name}/v{k:02d}.mp4"
            split = "train" if k < 8 else ("val" if k < 10 else "test")
            labels.append((vid, name, split))
            for i in range(int(rng.integers(6, 13))):
                e = centroids[c] + 0.5 * rng.normal(size=DIM)
                rows.append((vid, i, e / np.linalg.norm(e)))
    table = pa.table(
        {
            "video_id": [r[0] for r in rows],
            "segment_index": pa.array([r[1] for r in rows], pa.int32()),
            "start_s": [5.0 * r[1] for r in rows],
            "end_s": [5.0 * r[1] + 5 for r in rows],
            "frame_indices": [[0]] * len(rows),
            "frame_times_s": [[0.0]] * len(rows),
            "embedding": pa.FixedSizeListArray.from_arrays(
                pa.array(np.stack([r[2] for r in rows]).astype(np.float32).ravel()), DIM
            ),
            "encoder": ["tiny"] * len(rows),
            "config_id": ["c"] * len(rows),
        },
        schema=segment_schema(DIM),
    )
    return table, labels


def probe_inputs(root: Path, extra_labels: tuple = ()) -> tuple[str, str, str]:
    """:func:`segments_table` (seed 0) written under ``root/emb``, its labels file (plus
    ``extra_labels`` rows) and a tiny checkpoint (weights seed 0): their paths."""
    table, rows = segments_table(np.random.default_rng(0))
    write_table_atomic(table, str(root / "emb"), "segments")
    labels = root / "labels.csv"
    with labels.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["video_id", "label", "split"])
        writer.writerows([*rows, *extra_labels])
    cfg = model_config("tiny", input_dim=DIM, max_tokens=8)
    torch.manual_seed(0)  # the frozen encoder's weights, whatever ran before
    ckpt = save_checkpoint(
        root / "ckpt", model_state=LVMAE(cfg).state_dict(), model_config=cfg.to_dict(), step=1
    )
    return str(root / "emb"), str(labels), str(ckpt)


@pytest.fixture(scope="module")
def setup(tmp_path_factory, ray_local):
    """A segments table, its labels file (with one video that has no embeddings) and a
    tiny checkpoint; read-only (a test that runs a probe writes under its own directory)."""
    root = tmp_path_factory.mktemp("probe")
    missing = ("unknown/missing.mp4", "music", "train")  # no embeddings
    return (root, *probe_inputs(root, (missing,)))


@pytest.fixture(scope="module")
def linear_run(setup, mlflow_store):
    """The linear probe and both baselines, 2 seeds each, tracked into ``out/mlflow.db`` (a
    copy of the session's empty store); the encoder's features computed with the pipeline
    tests' :func:`quick_small_runs` Ray settings. Read-only: copy ``out`` to add to it."""
    root, emb, labels, ckpt = setup
    out = seed_store(mlflow_store, root / "linear")
    section = ProbeSection(
        probes=["linear"], baselines=["mean-pool", "transformer"],
        recipes={"linear": LINEAR_RECIPE}, seeds=2,
    )  # fmt: skip
    with quick_small_runs():
        rows = run_probe(ckpt, emb, [labels], str(out), section)
    return out, rows


@pytest.mark.slow
def test_results_table_has_a_row_per_method_and_the_probe_learns(linear_run):
    out, rows = linear_run
    assert all(isinstance(r, ProbeResult) for r in rows)
    assert [(r.method, r.probe) for r in rows] == [
        ("lvmae", "linear"), ("mean-pool", "linear"), ("transformer", "scratch"),
    ]  # fmt: skip
    by = {r.method: r for r in rows}
    assert by["lvmae"].top1 >= 0.8  # chance is 1/3
    assert by["mean-pool"].top1 >= 0.8
    assert by["lvmae"].skipped == 1  # the labelled video without embeddings
    assert by["mean-pool"].skipped is None
    assert all(r.test == 6 and r.train == 24 and r.kind == "classification" for r in rows)
    # Two seeds per row, trained in Ray tasks on this node's CPU: mean ± std and placement.
    node = ray.get_runtime_context().get_node_id()
    assert all(r.seeds == 2 and r.top1_std is not None and r.val_top1_std is not None
               for r in rows)  # fmt: skip
    assert all((r.node, r.device) == (node, "cpu") for r in rows)
    with (out / "results.csv").open() as f:
        assert [r["method"] for r in csv.DictReader(f)] == ["lvmae", "mean-pool", "transformer"]
    md = (out / "results.md").read_text()
    assert md.startswith("| method | probe | task |") and "mean-pool" in md
    for r in rows:
        png = out / r.confusion_matrix
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.slow
def test_rows_are_logged_to_mlflow(linear_run):
    from mlflow.tracking import MlflowClient

    out, rows = linear_run
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("lvmae-probe")
    runs = client.search_runs([exp.experiment_id])
    assert len(runs) == len(rows)
    lv = next(r for r in runs if r.data.params["method"] == "lvmae")
    assert lv.data.metrics["top1"] == pytest.approx(rows[0].top1)
    assert lv.data.metrics["skipped"] == 1
    assert lv.data.params["probe.lr"] == "0.003"
    names = {a.path for a in client.list_artifacts(lv.info.run_id)}
    assert {"results.csv", "results.md", rows[0].confusion_matrix} <= names
    scratch = next(r for r in runs if r.data.params["method"] == "transformer")
    assert scratch.data.params["probe.kind"] == "attentive"  # the recipe it trained with


def test_the_feature_cache_is_keyed_by_the_embeddings_too(tmp_path):
    """Another --embeddings into the same --out (same checkpoint) gets features of its own;
    more segments written into the same embeddings too."""
    cfg = model_config("tiny", input_dim=4, max_tokens=8)
    ckpt = save_checkpoint(tmp_path / "c", model_state=LVMAE(cfg).state_dict(),
                           model_config=cfg.to_dict())  # fmt: skip
    rng = np.random.default_rng(0)
    keys = []
    for name in ("a", "b"):
        table, _ = segments_table(rng)
        write_table_atomic(table, str(tmp_path / name), "segments")
        keys.append(feature_cache_dir(str(tmp_path / "out"), Path(ckpt), str(tmp_path / name)))
    assert keys[0] != keys[1]
    assert feature_cache_dir(str(tmp_path / "out"), Path(ckpt), str(tmp_path / "a")) == keys[0]
    write_table_atomic(segments_table(rng)[0], str(tmp_path / "a"), "segments")
    assert feature_cache_dir(str(tmp_path / "out"), Path(ckpt), str(tmp_path / "a")) != keys[0]


def test_probe_jobs_with_other_recipes_or_outputs_get_runs_of_their_own(tmp_path):
    """Two probe jobs on one store (as beside a checkpoint): each row's run holds its own
    job's recipe and numbers; the same job run again reuses its run."""
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"

    def job(out: str, lr: float, top1: float) -> None:
        row = ProbeResult(
            method="lvmae", probe="linear", task="genre", kind="classification",
            train=10, val=3, test=3, best_epoch=0, val_top1=0.5, top1=top1,
        )  # fmt: skip
        (tmp_path / out).mkdir(exist_ok=True)
        table = tmp_path / out / "results.csv"
        table.write_text("method\nlvmae\n")
        _track([(row, ProbeConfig("linear", lr=lr))], [table], out=str(tmp_path / out),
               tracking_uri=uri)  # fmt: skip

    job("a", 1e-4, 0.4)
    job("b", 1e-2, 0.9)  # another recipe and output
    job("a", 1e-4, 0.4)  # the first job again
    client = MlflowClient(tracking_uri=uri)
    runs = client.search_runs([client.get_experiment_by_name("lvmae-probe").experiment_id])
    got = sorted((r.data.params["probe.lr"], r.data.metrics["top1"], r.info.status) for r in runs)
    assert got == [("0.0001", 0.4, "FINISHED"), ("0.01", 0.9, "FINISHED")]


@pytest.mark.slow
def test_attentive_probe_reuses_the_cached_features(setup, linear_run, tmp_path):
    _, emb, labels, ckpt = setup
    out = str(copy_outputs(linear_run[0], tmp_path / "probe"))  # the linear run's features
    cache = feature_cache_dir(out, Path(ckpt), emb)
    stamp = (cache / "_SUCCESS").stat().st_mtime_ns
    section = ProbeSection(probes=["attentive"], baselines=[], seeds=1,
                           recipes={"attentive": {"epochs": 8}})  # fmt: skip
    rows = run_probe(ckpt, emb, [labels], out, section)
    assert [(r.method, r.probe) for r in rows] == [("lvmae", "attentive")]  # encoder [CLS]
    assert rows[0].top1 >= 0.8
    learned = {"attentive": {"epochs": 1, "cls_source": "learned"}}
    section = ProbeSection(probes=["attentive"], baselines=[], seeds=1, recipes=learned)
    rows = run_probe(ckpt, emb, [labels], out, section)
    assert [(r.method, r.probe) for r in rows] == [("lvmae", "attentive-learned")]
    assert (cache / "_SUCCESS").stat().st_mtime_ns == stamp  # computed once, then reused


@pytest.mark.slow
def test_checkpoint_of_another_width_is_refused(setup, tmp_path):
    _, emb, labels, _ = setup
    cfg = model_config("tiny", input_dim=32, max_tokens=8)
    other = save_checkpoint(tmp_path / "c", model_state=LVMAE(cfg).state_dict(),
                            model_config=cfg.to_dict())  # fmt: skip
    with pytest.raises(StorageError, match="32-d"):
        run_probe(str(other), emb, [labels], str(tmp_path / "o"), ProbeSection())


@pytest.mark.slow
def test_sweep_shares_the_probe_feature_cache_and_returns_tuned_rows(setup, linear_run, tmp_path):
    from mlflow.tracking import MlflowClient

    _, emb, labels, ckpt = setup
    out = copy_outputs(linear_run[0], tmp_path / "probe")  # the probe stage's output, copied
    cache = feature_cache_dir(str(out), Path(ckpt), emb)
    stamp = (cache / "_SUCCESS").stat().st_mtime_ns
    space = tmp_path / "space.yaml"
    space.write_text("probe: linear\nlr: {loguniform: [1e-3, 1e-2]}\nepochs: 15\nbatch_size: 8\n")
    # One trial: the probe stage's recipe, the sweep's first (the search itself, its trials
    # and their MLflow runs are tested in tests/tune).
    section = TuneSection(num_samples=1, space=str(space), seeds=1)
    probe = ProbeSection(recipes={"linear": LINEAR_RECIPE})
    (row,) = run_sweep(ckpt, emb, [labels], str(out), section, probe=probe, verbose=0)
    assert (cache / "_SUCCESS").stat().st_mtime_ns == stamp  # the probe stage's features
    assert isinstance(row, ProbeResult) and (row.method, row.probe) == ("lvmae-tuned", "linear")
    assert row.trials == 1 and row.task == "labels"
    assert json.loads(row.best_config)["lr"] == pytest.approx(LINEAR_RECIPE["lr"])
    # Scored once on the 6 test videos of the separable task (chance 1/3): a whole number
    # of them, and the tuned probe learns it as the recipe's did.
    assert (row.test, row.seeds) == (6, 1) and row.top1 * 6 == pytest.approx(round(row.top1 * 6))
    assert row.top1 >= 0.8
    with (out / "tune" / "results.csv").open() as f:
        assert [r["method"] for r in csv.DictReader(f)] == ["lvmae-tuned"]
    client = MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")
    exp = client.get_experiment_by_name("lvmae-tune")
    runs = client.search_runs([exp.experiment_id])
    (parent,) = [r for r in runs if r.data.tags.get("lvmae.stage") == "tune"]
    trials = [r for r in runs if r.data.tags.get("lvmae.stage") == "tune-trial"]
    assert len(trials) == 1
    assert parent.data.metrics["best/top1"] == pytest.approx(row.top1)


@pytest.mark.slow
def test_a_bad_search_space_stops_the_sweep_before_any_work(setup, tmp_path):
    from lvmae.config import ConfigError

    _, emb, labels, ckpt = setup
    bad = tmp_path / "space.yaml"
    bad.write_text("learning_rate: {uniform: [0, 1]}\n")
    with pytest.raises(ConfigError, match="unknown parameter 'learning_rate'"):
        run_sweep(ckpt, emb, [labels], str(tmp_path / "o"), TuneSection(space=str(bad)))
    assert not (tmp_path / "o").exists()


def test_labels_command_converts_coin(tmp_path):
    coin = tmp_path / "COIN.json"
    coin.write_text(json.dumps({"database": {
        f"vid{i:08d}ab": {"recipe_type": i % 2, "class": ["MakeTea", "ChangeTire"][i % 2],
                          "subset": "testing" if i >= 8 else "training", "duration": 60.0,
                          "annotation": []}
        for i in range(12)}}))  # fmt: skip
    res = CliRunner().invoke(
        cli, ["labels", "coin", str(coin), "--out", str(tmp_path / "coin.csv")]
    )
    assert res.exit_code == 0, res.output
    with (tmp_path / "coin.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 12 and {r["label"] for r in rows} == {"MakeTea", "ChangeTire"}
    assert {r["split"] for r in rows} == {"train", "val", "test"}


def test_probes_track_into_the_pretraining_store_above_the_checkpoint(tmp_path, monkeypatch):
    from lvmae.tracking import resolve_tracking_uri

    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    ckpt = tmp_path / "pre" / "runs" / "lvmae" / "checkpoint_1"
    ckpt.mkdir(parents=True)
    out = str(tmp_path / "o")
    assert resolve_tracking_uri(None, out, near=ckpt) == f"sqlite:///{tmp_path / 'o' / 'mlflow.db'}"
    (tmp_path / "pre" / "mlflow.db").touch()
    assert (
        resolve_tracking_uri(None, str(tmp_path / "o"), near=ckpt)
        == f"sqlite:///{tmp_path / 'pre' / 'mlflow.db'}"
    )
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:5000")
    assert resolve_tracking_uri(None, out, near=ckpt) == "http://127.0.0.1:5000"
    assert resolve_tracking_uri("sqlite:///given.db", out, near=ckpt) == "sqlite:///given.db"


@pytest.mark.slow
def test_the_probe_command_runs_the_probe_stage(setup, mlflow_store, tmp_path, capsys):
    """``lvmae probe`` is the probe stage run alone (pipelines.run.run_alone): its labels are
    checked first, its rows written to --out and printed."""
    from pipelines.cli import main

    _, emb, labels, ckpt = setup
    out = seed_store(mlflow_store, tmp_path / "cli")
    with quick_small_runs():
        main(["probe", "--checkpoint", ckpt, "--embeddings", emb, "--labels", labels,
              "--out", str(out), "--set", "probe.seeds=1",
              "--set", "probe.recipes.linear.epochs=2"])  # fmt: skip
    printed = capsys.readouterr().out
    with (out / "results.csv").open() as f:
        rows = list(csv.DictReader(f))
    assert [(r["method"], r["probe"]) for r in rows] == [("lvmae", "linear")]
    assert f"1 rows: {out / 'results.csv'}" in printed
    with pytest.raises(SystemExit) as exit_info:  # a labels file that does not read
        main(["probe", "--checkpoint", ckpt, "--embeddings", emb, "--labels",
              str(tmp_path / "missing.csv"), "--out", str(tmp_path / "o2")])  # fmt: skip
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert err == f"error: no labels file at {str(tmp_path / 'missing.csv')!r}\n", err
    assert not (tmp_path / "o2").exists()  # before any work
