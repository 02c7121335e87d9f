"""LV-MAE pre-training on real Ray Train (2 CPU workers, gloo DDP) over a real extraction,
tracked in a real SQLite MLflow store; recovery after a killed worker; per-video embeddings.

The extraction and the 3-epoch run are the session's (``tests/pipelines/conftest.py``),
shared read-only: tests that resume or damage the run work on a copy. Every test here runs
with the conftest's :func:`quick_small_runs` Ray settings, and a new run's output directory
starts from the session's empty MLflow store."""

from __future__ import annotations

import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import torch

from lvmae.mae.checkpoints import CheckpointError, load_checkpoint
from lvmae.mae.engine import evaluate
from lvmae.mae.model import LVMAE, LVMAEConfig
from lvmae.mae.monitor import reconstruct
from lvmae.mae.sequences import (
    SequenceStore,
    scored_count,
    sequences_from_table,
    windows_for_inference,
)
from lvmae.storage import StorageError, read_segments
from pipelines.cli import main
from pipelines.embed import run_embed
from pipelines.job_inputs import resolve_checkpoint
from pipelines.pretrain import PretrainError, latest_run_checkpoint, run_pretrain
from tests.pipelines.conftest import (
    brute_force_ranks,
    copy_outputs,
    quick_small_runs,
    recall_summary,
    seed_store,
    small_pretrain_config,
)

pytestmark = pytest.mark.slow


@pytest.fixture(autouse=True)
def _quick_small_runs():
    with quick_small_runs():
        yield


def mlflow_client(out: Path):
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=f"sqlite:///{out / 'mlflow.db'}")


def load_model(checkpoint: str) -> LVMAE:
    state = load_checkpoint(checkpoint)
    model = LVMAE(LVMAEConfig.from_dict(state["model_config"]))
    model.load_state_dict(state["model_state"])
    return model.eval()


def test_two_worker_ddp_run_writes_checkpoints_and_mlflow_metrics(pretrained):
    out, config, result = pretrained.out, pretrained.config, pretrained.result
    state = load_checkpoint(result.checkpoint)  # weights_only=True inside
    steps_per_epoch = int(result.metrics["step"]) // config.epochs
    assert steps_per_epoch >= 1 and state["step"] == result.metrics["step"]
    assert state["epoch"] == config.epochs
    assert state["model_config"]["input_dim"] == 64 and state["model_config"]["max_tokens"] == 8
    deadline = time.monotonic() + 30  # Ray Train deletes old checkpoints in the background
    while len(list(pretrained.run_dir.glob("checkpoint_*/"))) > config.keep_checkpoints:
        assert time.monotonic() < deadline, "more checkpoints kept than keep_checkpoints"
        time.sleep(0.5)

    client = mlflow_client(out)
    run_id = result.mlflow_run_id
    run = client.get_run(run_id)
    assert run.info.status == "FINISHED" and "lvmae.error" not in run.data.tags
    assert client.get_metric_history(run_id, "system/cpu_utilization_percentage")
    n_train = int(run.data.params["data.train_videos"])
    store = SequenceStore(str(pretrained.run_dir / "sequences" / "split=train"))
    assert len(store) == n_train  # the driver's Parquet store the workers read
    val = SequenceStore(str(pretrained.run_dir / "sequences" / "split=val"))
    assert len(val) == int(run.data.params["data.val_videos"]) > 0
    per_rank = -(-n_train // config.num_workers)  # DistributedSampler: ceil(n / world) each
    assert steps_per_epoch == per_rank // config.batch_size
    assert run.data.params["train.steps_per_epoch"] == str(steps_per_epoch)
    assert [m.value for m in client.get_metric_history(run_id, "epoch")] == [1.0, 2.0, 3.0]
    assert run.data.params["pretrain.mask_ratio"] == "0.5"
    assert run.data.params["pretrain.masking"] == "semantic"
    assert run.data.params["model.width"] == "64"
    assert run.data.tags["lvmae.checkpoint"] == result.checkpoint
    losses = client.get_metric_history(run_id, "train/loss")
    assert sorted(m.step for m in losses) == list(range(1, int(result.metrics["step"]) + 1))
    lrs = [m.value for m in sorted(client.get_metric_history(run_id, "lr"), key=lambda m: m.step)]
    assert max(lrs) == pytest.approx(config.effective_lr(), rel=0.05)  # warm-up then cosine
    assert lrs[-1] < max(lrs)
    speeds = client.get_metric_history(run_id, "train/tokens_per_s")
    assert len(speeds) == len(losses) and all(m.value > 0 for m in speeds)
    assert len(client.get_metric_history(run_id, "val/loss")) == config.epochs

    # The last epoch's validation and monitor, recomputed here from the final checkpoint
    # (the weights they ran with): val/loss over BOTH ranks' shares of the validation
    # videos (rank r reads videos r, r + 2, ...), the monitor on rank 0's, its ranks counted
    # by brute force.
    model = load_model(result.checkpoint)
    totals, counts, kept = [], [], []
    for rank in range(config.num_workers):
        mine = np.arange(rank, len(val), config.num_workers)
        batches = (val.batch(mine[i : i + 16]) for i in range(0, len(mine), 16))
        total, count, keep = evaluate(
            model, batches, config, rng=np.random.default_rng([config.seed, rank, 10**6]),
            dim=64, device=torch.device("cpu"), keep=64 if rank == 0 else 0,
        )  # fmt: skip
        totals.append(total)
        counts.append(count)
        kept += keep
    windows = np.minimum(val.lengths, config.max_tokens)  # cap windows: all masked tokens
    assert sum(counts) == int(scored_count(windows, config.mask_ratio, 1.0).sum())
    (logged_val,) = [m.value for m in client.get_metric_history(run_id, "val/loss")
                     if m.step == result.metrics["step"]]  # fmt: skip
    assert logged_val == pytest.approx(sum(totals) / sum(counts), rel=1e-4)
    rec = reconstruct(model.eval(), kept, mask_ratio=config.mask_ratio, masking=config.masking,
                      seed=config.seed)  # fmt: skip
    candidates = np.concatenate([s[: config.max_tokens] for s in kept])  # its first windows
    ranks = brute_force_ranks(rec.preds, candidates, rec.target_index)
    expected = {**recall_summary(ranks), "queries": len(ranks), "candidates": len(candidates)}
    for name, value in expected.items():
        key = name.replace("@", "_at_")
        (logged,) = client.get_metric_history(run_id, f"monitor/{key}")  # epoch 3 only
        assert (logged.step, logged.value) == (result.metrics["step"], pytest.approx(value)), name


def tree(root: Path) -> dict[str, int]:
    """Every file under ``root`` with its modification time (ns)."""
    return {str(p.relative_to(root)): p.stat().st_mtime_ns for p in root.rglob("*") if p.is_file()}


def test_a_finished_run_rerun_returns_its_checkpoint_without_training(
    pretrained, sample_extraction, tmp_path, capsys
):
    out = copy_outputs(pretrained.out, tmp_path / "out")
    first, config = pretrained.result, pretrained.config
    before = tree(out / "runs")
    again = run_pretrain(str(sample_extraction), str(out), config)
    assert tree(out / "runs") == before  # Ray Train never ran: no file written or rewritten
    assert again.mlflow_run_id == first.mlflow_run_id  # the copied store's run, reopened
    assert Path(again.checkpoint).name == Path(first.checkpoint).name
    assert again.metrics == pytest.approx(first.metrics)  # what its last checkpoint reported
    client = mlflow_client(out)
    resumed = client.get_metric_history(first.mlflow_run_id, "resumed_from_step")
    assert [m.value for m in resumed] == [first.metrics["step"]]
    assert client.get_run(first.mlflow_run_id).info.status == "FINISHED"
    err = capsys.readouterr().err  # no TTY: plain progress lines on stderr
    assert f"pretrain: {config.epochs}/{config.epochs} epochs (100%)" in err
    assert "train_loss=" in err and "val_loss=" in err
    # the shared run itself was not touched: its store never saw the resume
    assert not mlflow_client(pretrained.out).get_metric_history(
        first.mlflow_run_id, "resumed_from_step"
    )


def test_a_run_that_fails_after_it_opened_ends_failed_with_the_error(
    sample_extraction, mlflow_store, tmp_path
):
    config = small_pretrain_config(run_name="few", num_workers=64)  # more workers than videos
    seed_store(mlflow_store, tmp_path)
    with pytest.raises(PretrainError, match="64 workers"):
        run_pretrain(str(sample_extraction), str(tmp_path), config)
    client = mlflow_client(tmp_path)
    experiment = client.get_experiment_by_name(config.experiment)
    (run,) = client.search_runs(
        [experiment.experiment_id], filter_string="tags.`lvmae.run_name` = 'few'"
    )
    assert run.info.status == "FAILED"
    assert run.data.tags["lvmae.error"].startswith("PretrainError: ")
    assert "64 workers" in run.data.tags["lvmae.error"]


def own_train_workers() -> list[int]:
    """PIDs of the live Ray Train workers of THIS driver's job, from the actor table of the
    Ray instance this process started, kept only when they are this process's own
    descendants: never another run's workers, on this machine or in another Ray session."""
    import psutil
    import ray
    from ray._private import state  # the GCS actor table; the state API needs a dashboard

    job = ray.get_runtime_context().get_job_id()
    pids = [
        a["Pid"] for a in state.actors().values()
        if a["ActorClassName"] == "RayTrainWorker" and a["State"] == "ALIVE"
        and a["JobID"] == job and a["Pid"]
    ]  # fmt: skip
    mine = {p.pid for p in psutil.Process().children(recursive=True)}
    return [pid for pid in pids if pid in mine]


def test_a_rerun_continues_from_its_checkpoint_and_a_killed_worker_is_replaced(
    pretrained, sample_extraction, tmp_path
):
    """The session's finished 3-epoch run, rerun for 7 epochs: Ray Train restores its last
    checkpoint (``resumed_from_step`` = its step); one of the new workers is then killed
    after a new checkpoint, and the run goes on from the latest one to the end."""
    out = copy_outputs(pretrained.out, tmp_path / "out")
    start = int(pretrained.result.metrics["step"])
    config = pretrained.config.model_copy(update={"epochs": 7, "checkpoint_every_steps": 1})
    result: dict = {}
    thread = threading.Thread(
        target=lambda: result.update(r=run_pretrain(str(sample_extraction), str(out), config))
    )
    thread.start()
    snapshot = out / "runs" / "ddp" / "checkpoint_manager_snapshot.json"
    deadline = time.monotonic() + 300
    while True:  # Ray Train has registered a checkpoint of this rerun (restores start there)
        try:
            latest = json.loads(snapshot.read_text())["latest_checkpoint_result"]["metrics"]
        except ValueError:  # caught while Ray Train rewrites it
            latest = {"step": 0}
        if latest["step"] > start:
            break
        assert time.monotonic() < deadline and thread.is_alive(), "no new checkpoint"
        time.sleep(0.1)
    workers = own_train_workers()
    assert len(workers) == config.num_workers, workers
    os.kill(workers[-1], signal.SIGKILL)
    thread.join(timeout=600)
    r = result["r"]
    total = r.metrics["step"]
    assert r.metrics["epoch"] == config.epochs and total == start * 7 // 3
    resumed = sorted(m.value for m in mlflow_client(out).get_metric_history(
        r.mlflow_run_id, "resumed_from_step"))  # fmt: skip
    assert resumed[0] == start and len(resumed) >= 2
    assert all(start < step < total for step in resumed[1:]), (start, total, resumed)
    assert load_checkpoint(r.checkpoint)["step"] == total


def test_missing_or_empty_embeddings_stop_before_any_worker(tmp_path):
    with pytest.raises(StorageError, match="lvmae extract"):
        run_pretrain(str(tmp_path / "nothing"), str(tmp_path / "out"), small_pretrain_config())
    (tmp_path / "empty" / "segments").mkdir(parents=True)
    with pytest.raises(StorageError, match="no Parquet files"):
        run_pretrain(str(tmp_path / "empty"), str(tmp_path / "out"), small_pretrain_config())
    assert not (tmp_path / "out").exists()


def test_mixed_embedding_widths_are_refused(sample_extraction, tmp_path):
    import pyarrow as pa

    from lvmae.storage import segment_schema, write_table_atomic

    mixed = tmp_path / "mixed"
    shutil.copytree(sample_extraction / "segments", mixed / "segments")
    table = pa.table(
        {"video_id": ["x"], "segment_index": pa.array([0], pa.int32()), "start_s": [0.0],
         "end_s": [2.0], "frame_indices": [[0]], "frame_times_s": [[0.0]],
         "embedding": pa.FixedSizeListArray.from_arrays(pa.array(np.ones(32, np.float32)), 32),
         "encoder": ["other"], "config_id": ["c"]},
        schema=segment_schema(32),
    )  # fmt: skip
    write_table_atomic(table, str(mixed), "segments")
    with pytest.raises(StorageError, match="mixes embedding widths"):
        run_pretrain(str(mixed), str(tmp_path / "out"), small_pretrain_config())


def test_resume_with_a_corrupt_or_incompatible_checkpoint_names_the_file(
    pretrained, sample_extraction, tmp_path
):
    config = pretrained.config
    with pytest.raises(CheckpointError, match="width"):  # checked before anything is written
        run_pretrain(str(sample_extraction), str(pretrained.out),
                     small_pretrain_config(run_name="ddp", width=32, heads=4))  # fmt: skip
    out = copy_outputs(pretrained.out, tmp_path / "out")
    model_file = latest_run_checkpoint(str(out), "ddp") / "model.pt"
    model_file.write_bytes(model_file.read_bytes()[: model_file.stat().st_size // 3])
    with pytest.raises(CheckpointError, match=r"model\.pt"):
        run_pretrain(str(sample_extraction), str(out), config)


def test_embed_covers_whole_videos_of_any_length(pretrained, sample_extraction, tmp_path):
    """Every video's [CLS] and mean equal a second path: each of its windows (the fewest of
    at most max_tokens tokens, balanced) encoded ALONE by ``model.encode`` on the dense
    path, the [CLS] outputs averaged weighted by window length, the tokens averaged."""
    cap = pretrained.config.max_tokens
    res = run_embed(str(pretrained.run_dir), str(sample_extraction), str(tmp_path))
    assert resolve_checkpoint(str(pretrained.run_dir)) == Path(pretrained.result.checkpoint)
    table = pq.read_table(res.path).sort_by("video_id").to_pylist()
    seqs = dict(sequences_from_table(read_segments(str(sample_extraction))))
    assert res.videos == len(table) == len(seqs)
    assert [r["video_id"] for r in table] == sorted(seqs)
    model = load_model(pretrained.result.checkpoint)
    several = 0
    for row in table:
        seq = seqs[row["video_id"]]
        windows = windows_for_inference(len(seq), cap)
        sizes = [end - start for start, end in windows]
        assert len(windows) == -(-len(seq) // cap) and max(sizes) - min(sizes) <= 1
        assert [s for s, _ in windows[1:]] == [e for _, e in windows[:-1]]  # contiguous
        cls, tokens = np.zeros(64), np.zeros(64)
        for start, end in windows:
            x = torch.from_numpy(np.array(seq[start:end]))[None]  # a writable copy
            with torch.no_grad():
                c, t = model.encode(x, torch.ones(x.shape[:2], dtype=torch.bool), packed=False)
            cls += (end - start) * c[0].double().numpy()
            tokens += t[0].double().sum(0).numpy()
        assert (row["num_tokens"], row["num_windows"]) == (len(seq), len(windows))
        np.testing.assert_allclose(row["cls"], cls / len(seq), atol=1e-5)
        np.testing.assert_allclose(row["mean"], tokens / len(seq), atol=1e-5)
        several += len(windows) > 1
    assert several  # videos longer than the token cap: several windows


def test_pretrain_command_rejects_a_bad_override_before_any_work(
    tmp_path, sample_extraction, capsys
):
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "--embeddings", str(sample_extraction), "--out", str(tmp_path / "o"),
              "--set", "pretrain.mask_ratio=1.5", "--set", "pretrain.epocs=3"])  # fmt: skip
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "--set pretrain.mask_ratio" in err and "--set pretrain.epocs" in err
    assert not (tmp_path / "o").exists()
    with pytest.raises(SystemExit) as exit_info:
        main(["pretrain", "--embeddings", str(sample_extraction), "--out", str(tmp_path / "o"),
              "--set", "epochs=3"])  # fmt: skip
    assert exit_info.value.code == 1
    assert "expected SECTION.FIELD=VALUE" in capsys.readouterr().err
    assert not (tmp_path / "o").exists()


def test_token_budget_run_with_accumulation_logs_its_lr_rule_and_resumes_on_schedule(
    sample_extraction, tmp_path
):
    """``batch_tokens`` with 2 micro-batches per step on 2 gloo workers: the run logs its lr
    rule and step plan, every step's lr is the warm-up + cosine schedule over the planned
    steps, and a rerun for one more epoch resumes at the checkpoint's step and lr."""
    from lvmae.mae.optim import lr_schedule

    config = small_pretrain_config(run_name="tokens", batch_tokens=8, accumulate=2, epochs=2,
                                   warmup_epochs=1)  # fmt: skip
    out = tmp_path / "out"
    first = run_pretrain(str(sample_extraction), str(out), config)
    client = mlflow_client(out)
    params = client.get_run(first.mlflow_run_id).data.params
    assert params["train.lr_rule"].startswith("blr x mean windows per step")
    total = int(params["train.total_steps"])
    assert first.metrics["step"] == total == load_checkpoint(first.checkpoint)["step"]
    peak, warmup = float(params["train.lr"]), int(params["train.steps_per_epoch"])
    for m in client.get_metric_history(first.mlflow_run_id, "lr"):
        expected = lr_schedule(m.step, total_steps=total, warmup_steps=warmup, base_lr=peak)
        assert m.value == pytest.approx(expected, rel=1e-6), m.step
    state = load_checkpoint(first.checkpoint)
    assert state["scheduler_state"] and state["optimizer_state"]

    second = run_pretrain(str(sample_extraction), str(out), config.model_copy(update={"epochs": 3}))
    resumed = client.get_metric_history(second.mlflow_run_id, "resumed_from_step")
    assert [int(m.value) for m in resumed] == [total]
    assert second.metrics["epoch"] == 3 and second.metrics["step"] > total


def test_the_pretrain_command_runs_the_pretrain_stage(
    sample_extraction, mlflow_store, tmp_path, capsys
):
    """``lvmae pretrain`` is the pre-training stage run alone: the same follow-up steps as
    in ``lvmae run`` (the embeddings logged as the run's input, the encoder registered), its
    run named by --run-name, tracked under --out."""
    out = seed_store(mlflow_store, tmp_path / "out")
    main(["pretrain", "--embeddings", str(sample_extraction), "--out", str(out),
          "--preset", "tiny", "--epochs", "1", "--num-workers", "1", "--run-name", "cli",
          "--set", "pretrain.max_tokens=8", "--set", "pretrain.warmup_epochs=0",
          "--set", "pretrain.min_window_s=4", "--set", f"pretrain.segment_s={2.0}"])  # fmt: skip
    printed = capsys.readouterr().out
    assert "run cli:" in printed and "registered models:/lvmae-encoder/" in printed
    client = mlflow_client(out)
    run = next(r for r in client.search_runs(
        [client.get_experiment_by_name("lvmae-pretrain").experiment_id]
    ) if r.info.run_name == "cli")  # fmt: skip
    assert run.info.status == "FINISHED" and run.inputs.dataset_inputs
    assert (out / "runs" / "cli").is_dir()
