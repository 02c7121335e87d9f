"""LV-MAE pre-training on Ray Train (stage 2 of Naiman et al., ICCV 2025, §3.2–§4).

::

    segments table (Parquet) ──Ray Data──▶ one row per video: its ordered sequence of
        segment embeddings (grouped on the workers, deduplicated, never collected on the
        driver), split train/val by video, materialised once
    TorchTrainer (DDP: gloo on CPU, NCCL on GPU), each worker reading its Ray Data shard:
        random contiguous window per video → [B, L, D] batch + [PAD] mask → masking
        (semantic or random) → LV-MAE → masked-token loss → AdamW with per-iteration
        warm-up + cosine
    checkpoints every N steps through Ray Train (kept k), automatic recovery
    (FailureConfig), resume by rerunning with the same run name; MLflow tracking.

The model, masking, loss, data windows, optimiser and checkpoint format are plain code in
:mod:`lvmae`; this module only wires them to Ray.
"""

from __future__ import annotations

import logging
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow.dataset as pads
import torch
import torch.distributed as dist
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from lvmae.checkpoints import CheckpointError, check_compatible, load_checkpoint, save_checkpoint
from lvmae.config import PretrainConfig
from lvmae.engine import evaluate, train_one_epoch
from lvmae.errors import LvmaeError
from lvmae.model import LVMAE, LVMAEConfig, model_config
from lvmae.monitor import reconstruct, retrieval_metrics
from lvmae.optim import build_optimizer, build_scheduler
from lvmae.sequences import sequence_table, split_of
from lvmae.storage import SEGMENTS_DIR, StorageError
from lvmae.tracking import default_tracking_uri, metric_key, open_run

log = logging.getLogger(__name__)

RUNS_DIR = "runs"  # Ray Train storage under the output directory


class PretrainError(LvmaeError, RuntimeError):
    """Pre-training cannot start; the message says what to fix."""


# --------------------------------------------------------------------------- pre-flight


def embedding_dim_of(embeddings: str) -> int:
    """The embedding width D of the segments table under ``embeddings``, read from every
    Parquet file's footer (no data read).

    Raises:
        StorageError: no segments, or files with different embedding widths.
    """
    seg_dir = f"{embeddings.rstrip('/')}/{SEGMENTS_DIR}"
    if "://" not in seg_dir and not Path(seg_dir).is_dir():
        raise StorageError(
            f"no segment embeddings under {embeddings!r}: expected Parquet files in {seg_dir}/ "
            f"(run `lvmae extract INPUT --out {embeddings}` first)"
        )
    dataset = pads.dataset(seg_dir, format="parquet")
    if not dataset.files:
        raise StorageError(f"{seg_dir}/ holds no Parquet files (an empty or failed extraction?)")
    dims: dict[int, str] = {}
    for fragment in dataset.get_fragments():
        field = fragment.physical_schema.field("embedding")
        dims.setdefault(field.type.list_size, fragment.path)
    if len(dims) > 1:
        listing = ", ".join(f"D={d} (e.g. {p})" for d, p in sorted(dims.items()))
        raise StorageError(
            f"{seg_dir}/ mixes embedding widths: {listing}. Pre-train on one encoder's "
            f"output: extract each encoder into its own --out directory."
        )
    return next(iter(dims))


def resolve_model_config(config: PretrainConfig, input_dim: int) -> LVMAEConfig:
    """The model config of ``config.preset`` with ``config``'s overrides and ``input_dim``.
    The ``paper`` preset's width follows the embedding width (1024 for LanguageBind Huge)."""
    overrides = {
        k: getattr(config, k)
        for k in ("width", "depth", "heads", "decoder_width", "decoder_depth", "decoder_heads")
        if getattr(config, k) is not None
    }
    if config.preset == "paper" and config.width is None:
        overrides["width"] = input_dim
    return model_config(
        config.preset,
        input_dim=input_dim,
        max_tokens=config.max_tokens,
        dropout=config.dropout,
        drop_path=config.drop_path,
        **overrides,
    )


def run_dir(out: str, run_name: str) -> Path:
    return Path(out).absolute() / RUNS_DIR / run_name


def latest_run_checkpoint(out: str, run_name: str) -> Path | None:
    """The newest checkpoint Ray Train kept for ``run_name`` under ``out`` (None if none)."""
    root = run_dir(out, run_name)
    if not root.is_dir():
        return None
    candidates = sorted(
        (p for p in root.glob("checkpoint_*") if (p / "config.json").is_file()),
        key=lambda p: p.stat().st_mtime,
    )
    return candidates[-1] if candidates else None


# --------------------------------------------------------------------------- data


def sequence_datasets(embeddings: str, config: PretrainConfig):
    """``(train, val)`` Ray Datasets of per-video sequences (``video_id``, ``length``,
    ``embedding`` flattened), videos shorter than ``min_tokens`` dropped, split by
    :func:`lvmae.sequences.split_of`. Grouping runs on the cluster."""
    import ray

    ds = ray.data.read_parquet(
        f"{embeddings.rstrip('/')}/{SEGMENTS_DIR}",
        columns=["video_id", "segment_index", "embedding"],
    )
    seqs = ds.groupby("video_id").map_groups(sequence_table, batch_format="pyarrow")
    seqs = seqs.filter(lambda row: row["length"] >= config.min_tokens).materialize()
    frac, seed = config.val_fraction, config.split_seed
    train = seqs.filter(lambda row: split_of(row["video_id"], frac, seed) == "train")
    val = seqs.filter(lambda row: split_of(row["video_id"], frac, seed) == "val")
    return train.materialize(), val.materialize()


# --------------------------------------------------------------------------- worker


@dataclass
class _Trainer:
    """One worker's model (DDP-wrapped and bare), optimizer, schedule and step."""

    model: Any
    core: Any
    optimizer: Any
    scheduler: Any
    step: int = 0
    resumed_from: int | None = None


def _build_trainer(config: PretrainConfig, mcfg: LVMAEConfig, steps_per_epoch: int, device):
    """Model, AdamW and the warm-up + cosine schedule; restored from Ray Train's latest
    checkpoint when there is one (a resumed or restarted run)."""
    import ray.train  # heavy: Ray Train, only inside workers
    import ray.train.torch

    torch.manual_seed(config.seed)
    model = ray.train.torch.prepare_model(LVMAE(mcfg))
    core = model.module if hasattr(model, "module") else model
    optimizer = build_optimizer(
        core, lr=config.effective_lr(), weight_decay=config.weight_decay, betas=config.betas
    )
    scheduler = build_scheduler(
        optimizer,
        total_steps=steps_per_epoch * config.epochs,
        warmup_steps=steps_per_epoch * config.warmup_epochs,
        min_lr=config.min_lr,
    )
    trainer = _Trainer(model, core, optimizer, scheduler)
    checkpoint = ray.train.get_checkpoint()
    if checkpoint is not None:
        with checkpoint.as_directory() as directory:
            state = load_checkpoint(directory, map_location=device)
            check_compatible(state, mcfg.to_dict())
            core.load_state_dict(state["model_state"])
            if state["optimizer_state"]:
                optimizer.load_state_dict(state["optimizer_state"])
            if state["scheduler_state"]:
                scheduler.load_state_dict(state["scheduler_state"])
            trainer.step = trainer.resumed_from = int(state["step"])
    return trainer


class _Reporter:
    """Rank 0's MLflow metrics and Ray Train reports with checkpoints."""

    def __init__(self, loop_config: dict, trainer: _Trainer, rank: int) -> None:
        self.loop_config, self.trainer, self.rank = loop_config, trainer, rank
        self.client = self.run_id = None
        if rank == 0 and loop_config.get("mlflow_run_id"):
            self.client = MlflowClient(tracking_uri=loop_config["tracking_uri"])
            self.run_id = loop_config["mlflow_run_id"]
            if trainer.resumed_from is not None:
                self.log({"resumed_from_step": trainer.resumed_from}, trainer.resumed_from)

    def log(self, metrics: dict[str, float], step: int) -> None:
        if self.client is not None:
            ts = int(time.time() * 1000)
            batch = [Metric(metric_key(k), float(v), ts, step) for k, v in metrics.items()]
            self.client.log_batch(self.run_id, metrics=batch)

    def report(self, metrics: dict, step: int) -> None:
        """Report to Ray Train with a checkpoint (written by rank 0)."""
        import ray.train  # heavy: Ray Train, only inside workers

        with tempfile.TemporaryDirectory() as tmp:
            if self.rank != 0:
                ray.train.report(metrics)
                return
            t = self.trainer
            save_checkpoint(
                tmp,
                model_state=t.core.state_dict(),
                model_config=self.loop_config["model_config"],
                train_config=self.loop_config["config"],
                optimizer_state=t.optimizer.state_dict(),
                scheduler_state=t.scheduler.state_dict(),
                step=step,
                epoch=step // self.loop_config["steps_per_epoch"],
            )
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))


class _StepLogger:
    """After each step of one epoch: train loss, lr and tokens/s every
    ``log_every_steps``, a checkpoint every ``checkpoint_every_steps`` (the epoch's last
    step is reported with the epoch's metrics instead)."""

    def __init__(self, reporter: _Reporter, config: PretrainConfig, epoch: int, world: int):
        self.reporter, self.config, self.epoch, self.world = reporter, config, epoch, world
        self.t0, self.losses, self.tokens = time.perf_counter(), [], 0

    def __call__(self, step: int, loss: float, n_tokens: int, last: bool) -> None:
        c = self.config
        self.losses.append(loss)
        self.tokens += n_tokens
        if step % c.log_every_steps == 0:
            elapsed = max(time.perf_counter() - self.t0, 1e-9)
            self.reporter.log({
                "train/loss": float(np.mean(self.losses[-c.log_every_steps :])),
                "lr": self.reporter.trainer.optimizer.param_groups[0]["lr"],
                "train/tokens_per_s": self.tokens * self.world / elapsed,
            }, step)  # fmt: skip
        if step % c.checkpoint_every_steps == 0 and not last:
            self.reporter.report({"step": step, "epoch": self.epoch, "train/loss": loss}, step)


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train worker: DDP training of LV-MAE on this worker's data shard, one
    :func:`lvmae.engine.train_one_epoch` per epoch, validation every ``val_every_epochs``."""
    import ray.train  # heavy: Ray Train, only inside workers
    import ray.train.torch

    config = PretrainConfig.model_validate(loop_config["config"])
    mcfg = LVMAEConfig.from_dict(loop_config["model_config"])
    steps_per_epoch = loop_config["steps_per_epoch"]
    per_worker_batch = loop_config["per_worker_batch"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    trainer = _build_trainer(config, mcfg, steps_per_epoch, device)
    reporter = _Reporter(loop_config, trainer, rank)
    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val") if loop_config["has_val"] else None
    for epoch in range(trainer.step // steps_per_epoch, config.epochs):
        on_step = _StepLogger(reporter, config, epoch, world)
        batches = train_shard.iter_batches(
            batch_size=per_worker_batch,
            batch_format="numpy",
            drop_last=True,
            local_shuffle_buffer_size=max(per_worker_batch * 4, 16),
            local_shuffle_seed=config.seed + epoch * 1000 + rank,
        )
        result = train_one_epoch(
            trainer.model, trainer.optimizer, trainer.scheduler, batches, config,
            epoch=epoch, step=trainer.step, steps_per_epoch=steps_per_epoch,
            rng=np.random.default_rng([config.seed, rank, epoch]), dim=mcfg.input_dim,
            device=device, on_step=on_step,
        )  # fmt: skip
        trainer.step = result.step
        metrics = {"step": trainer.step, "epoch": epoch + 1}
        if result.losses:
            metrics["train/epoch_loss"] = float(np.mean(result.losses))
        metrics |= _validation(trainer, val_shard, config, epoch, rank=rank, device=device)
        reporter.log(metrics, trainer.step)
        reporter.report(metrics, trainer.step)


def _validation(trainer: _Trainer, shard, config: PretrainConfig, epoch: int, *, rank, device):
    """``val/loss`` averaged over workers (fixed windows and masks every epoch) when due,
    and on rank 0 the reconstruction-retrieval monitor (LV-MAE §4.4) when due."""
    monitor_due = config.monitor_every_epochs and (epoch + 1) % config.monitor_every_epochs == 0
    if shard is None or not ((epoch + 1) % config.val_every_epochs == 0 or monitor_due):
        return {}
    batches = shard.iter_batches(batch_size=16, batch_format="numpy")
    total, count, kept = evaluate(
        trainer.model, batches, config, rng=np.random.default_rng([config.seed, rank, 10**6]),
        dim=trainer.core.config.input_dim, device=device,
        keep=64 if monitor_due and rank == 0 else 0,
    )  # fmt: skip
    sums = torch.tensor([total, count], dtype=torch.float64)
    if dist.is_available() and dist.is_initialized():
        on_device = sums.to(device)
        dist.all_reduce(on_device)
        sums = on_device.cpu()
    metrics = {"val/loss": float(sums[0] / sums[1]) if sums[1] > 0 else float("nan")}
    if kept:
        rec = reconstruct(
            trainer.core, kept, mask_ratio=config.mask_ratio, masking=config.masking,
            seed=config.seed,
        )  # fmt: skip
        metrics |= {f"monitor/{k}": v for k, v in retrieval_metrics(rec).items()}
    return metrics


# --------------------------------------------------------------------------- driver


@dataclass
class PretrainResult:
    """What a pre-training run left: the latest ``checkpoint`` directory, the last reported
    ``metrics``, and the MLflow run id."""

    checkpoint: str | None
    metrics: dict
    mlflow_run_id: str | None
    run_name: str


def run_pretrain(embeddings: str, out: str, config: PretrainConfig) -> PretrainResult:
    """Pre-train LV-MAE on the segment embeddings under ``embeddings``; write checkpoints and
    the MLflow store under ``out``.

    Rerunning with the same ``run_name`` continues from its latest checkpoint (same step and
    learning rate); a finished run returns at once.

    Raises:
        StorageError: missing/empty embeddings or mixed embedding widths (before any worker).
        CheckpointError: the run's latest checkpoint is corrupt or was made with another
            model configuration (before any worker).
        PretrainError: too few videos to train on.
    """
    import ray
    import ray.train
    from ray.train.torch import TorchTrainer

    dim = embedding_dim_of(embeddings)
    mcfg = resolve_model_config(config, dim)
    run_name = config.run_name or "lvmae"
    previous = latest_run_checkpoint(out, run_name)
    if previous is not None:
        state = load_checkpoint(previous)
        check_compatible(state, mcfg.to_dict())

    if not ray.is_initialized():
        ray.init(configure_logging=True, logging_level=logging.WARNING)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    train_ds, val_ds = sequence_datasets(embeddings, config)
    n_train, n_val = train_ds.count(), val_ds.count()
    workers = config.num_workers
    if n_train < workers:
        raise PretrainError(
            f"{n_train} training videos (of at least {config.min_tokens} segments) for "
            f"{workers} workers: extract more videos, lower min_tokens, or use fewer workers"
        )
    per_worker_batch = max(1, min(config.batch_size // workers, n_train // workers))
    steps_per_epoch = max(1, (n_train // workers) // per_worker_batch)

    tracking_uri = config.tracking_uri or default_tracking_uri(out)
    params = {
        **{f"pretrain.{k}": v for k, v in config.model_dump(mode="json").items()},
        **{f"model.{k}": v for k, v in mcfg.to_dict().items()},
        "data.embeddings": embeddings,
        "data.train_videos": n_train,
        "data.val_videos": n_val,
        "data.embedding_dim": dim,
        "train.per_worker_batch": per_worker_batch,
        "train.steps_per_epoch": steps_per_epoch,
        "train.lr": config.effective_lr(),
    }
    mlflow_run_id = open_run(
        tracking_uri,
        config.experiment,
        run_name,
        out=out,
        tags={"lvmae.stage": "pretrain"},
        params=params,
    )
    datasets = {"train": train_ds}
    if n_val:
        datasets["val"] = val_ds
    trainer = TorchTrainer(
        train_loop_per_worker,
        train_loop_config={
            "config": config.model_dump(mode="json"),
            "model_config": mcfg.to_dict(),
            "steps_per_epoch": steps_per_epoch,
            "per_worker_batch": per_worker_batch,
            "has_val": bool(n_val),
            "mlflow_run_id": mlflow_run_id,
            "tracking_uri": tracking_uri,
        },
        scaling_config=ray.train.ScalingConfig(num_workers=workers, use_gpu=config.use_gpu),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=str(Path(out).absolute() / RUNS_DIR),
            failure_config=ray.train.FailureConfig(max_failures=config.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=config.keep_checkpoints),
        ),
        datasets=datasets,
    )
    result = trainer.fit()
    checkpoint = result.checkpoint.path if result.checkpoint else None
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    if checkpoint:
        client.set_tag(mlflow_run_id, "lvmae.checkpoint", checkpoint)
    return PretrainResult(checkpoint, dict(result.metrics or {}), mlflow_run_id, run_name)


__all__ = [
    "CheckpointError",
    "PretrainError",
    "PretrainResult",
    "embedding_dim_of",
    "run_pretrain",
]
