"""LV-MAE pre-training on real Ray Train (2 CPU workers, gloo DDP) over a real extraction,
tracked in a real SQLite MLflow store; recovery after a killed worker; per-video embeddings."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
from click.testing import CliRunner

from lvmae.checkpoints import CheckpointError, load_checkpoint
from lvmae.config import ExtractConfig, PretrainConfig
from lvmae.sequences import SequenceStore
from lvmae.storage import StorageError, read_segments
from pipelines.cli import cli
from pipelines.embed import run_embed
from pipelines.extract import run_extraction
from pipelines.pretrain import PretrainError, latest_run_checkpoint, run_pretrain

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def embeddings(tmp_path_factory, ray_local):
    """A real extraction of 12 generated videos (20–40 s, 2-s segments: 10–20 tokens)."""
    from lvmae.samples import make_samples

    root = tmp_path_factory.mktemp("pretrain")
    make_samples(root / "videos", videos_per_recipe=2, min_seconds=20, max_seconds=40, seed=1)
    out = root / "extract"
    run_extraction(str(root / "videos"), str(out), ExtractConfig(segment_s=2.0), progress=False)
    return out


def small_config(**overrides) -> PretrainConfig:
    base = {
        "preset": "tiny",
        "epochs": 3,
        "warmup_epochs": 1,
        "batch_size": 2,  # per worker: global 4
        "num_workers": 2,
        "max_tokens": 8,
        "min_window_s": 4.0,
        "segment_s": 2.0,
        "checkpoint_every_steps": 2,
        "log_every_steps": 1,
        "val_fraction": 0.25,
        "blr": 1e-2,
    }
    return PretrainConfig(**{**base, **overrides})


def mlflow_client(out: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")


@pytest.fixture(scope="module")
def trained(embeddings, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs")
    config = small_config(run_name="ddp", monitor_every_epochs=3)
    return out, config, run_pretrain(str(embeddings), str(out), config)


def test_two_worker_ddp_run_writes_checkpoints_and_mlflow_metrics(trained):
    out, config, result = trained
    state = load_checkpoint(result.checkpoint)  # weights_only=True inside
    steps_per_epoch = int(result.metrics["step"]) // config.epochs
    assert steps_per_epoch >= 1 and state["step"] == result.metrics["step"]
    assert state["epoch"] == config.epochs
    assert state["model_config"]["input_dim"] == 64 and state["model_config"]["max_tokens"] == 8
    assert "val/loss" in result.metrics and np.isfinite(result.metrics["val/loss"])
    deadline = time.monotonic() + 30  # Ray Train deletes old checkpoints in the background
    while len(list((out / "runs" / "ddp").glob("checkpoint_*/"))) > config.keep_checkpoints:
        assert time.monotonic() < deadline, "more checkpoints kept than keep_checkpoints"
        time.sleep(0.5)

    client = mlflow_client(out)
    run = client.get_run(result.mlflow_run_id)
    assert run.info.status == "FINISHED" and "lvmae.error" not in run.data.tags
    assert client.get_metric_history(result.mlflow_run_id, "system/cpu_utilization_percentage")
    n_train = int(run.data.params["data.train_videos"])
    store = SequenceStore(str(out / "runs" / "ddp" / "sequences" / "train"))
    assert len(store) == n_train  # the driver's Parquet store the workers read
    assert len(SequenceStore(str(out / "runs" / "ddp" / "sequences" / "val"))) == int(
        run.data.params["data.val_videos"]
    )
    per_rank = -(-n_train // config.num_workers)  # DistributedSampler: ceil(n / world) each
    assert steps_per_epoch == per_rank // config.batch_size
    assert run.data.params["train.steps_per_epoch"] == str(steps_per_epoch)
    assert [m.value for m in client.get_metric_history(result.mlflow_run_id, "epoch")] == [
        1.0, 2.0, 3.0
    ]  # fmt: skip
    assert run.data.params["pretrain.mask_ratio"] == "0.5"
    assert run.data.params["pretrain.masking"] == "semantic"
    assert run.data.params["model.width"] == "64"
    assert run.data.tags["lvmae.checkpoint"] == result.checkpoint
    losses = client.get_metric_history(result.mlflow_run_id, "train/loss")
    assert len(losses) == result.metrics["step"]  # logged every step
    lrs = [m.value for m in sorted(client.get_metric_history(result.mlflow_run_id, "lr"),
                                   key=lambda m: m.step)]  # fmt: skip
    assert max(lrs) == pytest.approx(config.effective_lr(), rel=0.05)  # warm-up then cosine
    assert lrs[-1] < max(lrs)
    assert client.get_metric_history(result.mlflow_run_id, "train/tokens_per_s")
    assert len(client.get_metric_history(result.mlflow_run_id, "val/loss")) == config.epochs
    (r1,) = client.get_metric_history(result.mlflow_run_id, "monitor/R_at_1")  # epoch 3 only
    assert 0.0 <= r1.value <= 1.0
    assert client.get_metric_history(result.mlflow_run_id, "monitor/median_rank")


def test_rerun_with_the_same_run_name_resumes_at_the_same_step(trained, embeddings, capsys):
    out, config, first = trained
    again = run_pretrain(str(embeddings), str(out), config)
    assert again.mlflow_run_id == first.mlflow_run_id
    assert again.metrics["step"] == first.metrics["step"]
    client = mlflow_client(out)
    resumed = client.get_metric_history(first.mlflow_run_id, "resumed_from_step")
    assert [m.value for m in resumed] == [first.metrics["step"]]
    assert client.get_run(first.mlflow_run_id).info.status == "FINISHED"
    err = capsys.readouterr().err  # no TTY: plain progress lines on stderr
    assert f"pretrain: {config.epochs}/{config.epochs} epochs (100%)" in err
    assert "train_loss=" in err and "val_loss=" in err


def test_a_run_that_fails_after_it_opened_ends_failed_with_the_error(embeddings, tmp_path):
    config = small_config(run_name="few", num_workers=64)  # more workers than videos
    with pytest.raises(PretrainError, match="64 workers"):
        run_pretrain(str(embeddings), str(tmp_path), config)
    client = mlflow_client(tmp_path)
    experiment = client.get_experiment_by_name(config.experiment)
    (run,) = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`lvmae.run_name` = 'few'"
    )
    assert run.info.status == "FAILED"
    assert run.data.tags["lvmae.error"].startswith("PretrainError: ")
    assert "64 workers" in run.data.tags["lvmae.error"]


def test_a_killed_worker_is_replaced_and_training_continues_from_the_checkpoint(
    embeddings, tmp_path
):
    import psutil

    config = small_config(run_name="crash", epochs=12, warmup_epochs=2, checkpoint_every_steps=1)
    result: dict = {}
    thread = threading.Thread(
        target=lambda: result.update(r=run_pretrain(str(embeddings), str(tmp_path), config))
    )
    thread.start()
    snapshot = tmp_path / "runs" / "crash" / "checkpoint_manager_snapshot.json"
    deadline = time.monotonic() + 300
    while not snapshot.is_file() or '"checkpoint_dir_name"' not in snapshot.read_text():
        assert time.monotonic() < deadline and thread.is_alive(), "no checkpoint registered"
        time.sleep(0.1)
    workers = [  # Ray titles worker processes "ray::RayTrainWorker..."
        p for p in psutil.process_iter(["cmdline"])
        if any("RayTrainWorker" in part for part in p.info["cmdline"] or [])
    ]  # fmt: skip
    assert workers
    os.kill(workers[-1].pid, signal.SIGKILL)
    thread.join(timeout=600)
    r = result["r"]
    total = r.metrics["step"]
    assert r.metrics["epoch"] == config.epochs
    resumed = mlflow_client(tmp_path).get_metric_history(r.mlflow_run_id, "resumed_from_step")
    assert resumed and all(0 < m.value < total for m in resumed)
    assert load_checkpoint(r.checkpoint)["step"] == total


def test_missing_or_empty_embeddings_stop_before_any_worker(tmp_path):
    with pytest.raises(StorageError, match="lvmae extract"):
        run_pretrain(str(tmp_path / "nothing"), str(tmp_path / "out"), small_config())
    (tmp_path / "empty" / "segments").mkdir(parents=True)
    with pytest.raises(StorageError, match="no Parquet files"):
        run_pretrain(str(tmp_path / "empty"), str(tmp_path / "out"), small_config())
    assert not (tmp_path / "out").exists()


def test_mixed_embedding_widths_are_refused(embeddings, tmp_path):
    import pyarrow as pa

    from lvmae.storage import segment_schema, write_table_atomic

    mixed = tmp_path / "mixed"
    shutil.copytree(embeddings / "segments", mixed / "segments")
    table = pa.table(
        {"video_id": ["x"], "segment_index": pa.array([0], pa.int32()), "start_s": [0.0],
         "end_s": [2.0], "frame_indices": [[0]], "frame_times_s": [[0.0]],
         "embedding": pa.FixedSizeListArray.from_arrays(pa.array(np.ones(32, np.float32)), 32),
         "encoder": ["other"], "config_id": ["c"]},
        schema=segment_schema(32),
    )  # fmt: skip
    write_table_atomic(table, str(mixed), "segments")
    with pytest.raises(StorageError, match="mixes embedding widths"):
        run_pretrain(str(mixed), str(tmp_path / "out"), small_config())


def test_resume_with_a_corrupt_or_incompatible_checkpoint_names_the_file(trained, embeddings):
    out, config, _ = trained
    with pytest.raises(CheckpointError, match="width"):
        run_pretrain(str(embeddings), str(out), small_config(run_name="ddp", width=32, heads=4))
    latest = latest_run_checkpoint(str(out), "ddp")
    model_file = latest / "model.pt"
    saved = model_file.read_bytes()
    try:
        model_file.write_bytes(saved[: len(saved) // 3])
        with pytest.raises(CheckpointError, match=r"model\.pt"):
            run_pretrain(str(embeddings), str(out), config)
    finally:
        model_file.write_bytes(saved)


def test_embed_covers_whole_videos_of_any_length(trained, embeddings, tmp_path):
    out, config, _ = trained
    res = run_embed(str(out / "runs" / "ddp"), str(embeddings), str(tmp_path))
    table = pq.read_table(res.path).sort_by("video_id")
    segments = read_segments(str(embeddings))
    n_videos = len(set(segments["video_id"].to_pylist()))
    assert res.videos == table.num_rows == n_videos
    tokens = dict(zip(table["video_id"].to_pylist(), table["num_tokens"].to_pylist(), strict=True))
    counts = {}
    for vid in segments["video_id"].to_pylist():
        counts[vid] = counts.get(vid, 0) + 1
    assert tokens == counts
    windows = table["num_windows"].to_numpy()
    assert np.all(windows == np.ceil(table["num_tokens"].to_numpy() / config.max_tokens))
    assert windows.max() > 1  # longer than the token cap: several windows
    cls = np.stack(table["cls"].to_numpy(zero_copy_only=False))
    mean = np.stack(table["mean"].to_numpy(zero_copy_only=False))
    assert cls.shape == mean.shape == (n_videos, 64) and np.isfinite(cls).all()
    assert not np.allclose(mean[0], mean[1])


def test_pretrain_command_rejects_a_bad_override_before_any_work(tmp_path, embeddings):
    res = subprocess.run(
        [sys.executable, "-m", "pipelines.cli", "pretrain", "--embeddings", str(embeddings),
         "--out", str(tmp_path / "o"), "--set", "pretrain.mask_ratio=1.5",
         "--set", "pretrain.epocs=3"],
        check=False, capture_output=True, text=True, timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )  # fmt: skip
    assert res.returncode == 1
    assert "--set pretrain.mask_ratio" in res.stderr and "--set pretrain.epocs" in res.stderr
    assert "Traceback" not in res.stderr
    assert not (tmp_path / "o").exists()
    bare = CliRunner().invoke(
        cli, ["pretrain", "--embeddings", str(embeddings), "--out", str(tmp_path / "o"),
              "--set", "epochs=3"],
    )  # fmt: skip
    assert bare.exit_code != 0 and "expected SECTION.FIELD=VALUE" in str(bare.exception)
    assert not (tmp_path / "o").exists()
