"""LV-MAE pre-training on Ray Train (stage 2 of Naiman et al., ICCV 2025, §3.2–§4).

::

    segments table (Parquet) ──Ray Data──▶ one row per video: its ordered sequence of
        segment embeddings (grouped on the workers, deduplicated, never collected on the
        driver), split train/val by video, written by Ray Data to Parquet under the run
        directory (``<out>/runs/<run_name>/sequences/{train,val}/``)
    TorchTrainer (DDP: gloo on CPU, NCCL on GPU), batch_size videos per worker per step
        (global batch = batch_size x workers, lr = blr x global / 256); every epoch a
        seeded permutation of ALL training videos, split across workers as PyTorch's
        DistributedSampler does after set_epoch (lvmae.mae.sequences.epoch_indices), each
        worker reading only its videos' rows from the Parquet store (no Ray tasks inside
        the workers): random contiguous window per video → [B, L, D] batch + [PAD] mask →
        masking (semantic or random) → LV-MAE → masked-token loss → AdamW with
        per-iteration warm-up + cosine
    checkpoints every N steps through Ray Train (kept k), automatic recovery
    (FailureConfig), resume by rerunning with the same run name; MLflow tracking (the run
    ends FINISHED or FAILED with the error), progress in epochs on the driver's stderr.

The model, masking, loss, data windows, sample order, optimiser and checkpoint format are
plain code in :mod:`lvmae`; this module only wires them to Ray.
"""

from __future__ import annotations

import bisect
import logging
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.dataset as pads
import torch
import torch.distributed as dist
from mlflow.entities import Metric
from mlflow.tracking import MlflowClient

from lvmae.config import PretrainConfig
from lvmae.errors import LvmaeError
from lvmae.mae.checkpoints import (
    CheckpointError,
    check_compatible,
    load_checkpoint,
    save_checkpoint,
)
from lvmae.mae.engine import evaluate, train_one_epoch
from lvmae.mae.model import LVMAE, LVMAEConfig, model_config
from lvmae.mae.monitor import reconstruct, retrieval_metrics
from lvmae.mae.optim import build_optimizer, build_scheduler
from lvmae.mae.packing import (
    Capacity,
    bucket_capacities,
    needed_capacity,
    token_budget_capacity,
)
from lvmae.mae.sequences import (
    SequenceStore,
    epoch_batches,
    split_of,
    step_batches,
    token_epoch_plan,
)
from lvmae.mae.step import PackedStep
from lvmae.progress import Progress
from lvmae.tracking import metric_key, resolve_tracking_uri, tracked_run, tracking_client
from pipelines.connect import Reservation, connect_ray
from pipelines.job_inputs import embedding_dim_of, video_sequences

log = logging.getLogger(__name__)

RUNS_DIR = "runs"  # Ray Train storage under the output directory
SEQUENCES_DIR = "sequences"  # per-video sequence stores under the run directory
ROWS_PER_GROUP = 32  # videos per Parquet row group of a sequence store: bounds one read
POLL_S = 3.0  # seconds between the driver's looks at the run's MLflow metrics


class PretrainError(LvmaeError, RuntimeError):
    """Pre-training cannot start; the message says what to fix."""


# --------------------------------------------------------------------------- pre-flight


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


def split_rows(batch: pa.Table, *, min_tokens: int, val_fraction: float, seed: int) -> pa.Table:
    """Per-video sequence rows of at least ``min_tokens`` segments, each with its ``split``
    (``"train"`` / ``"val"``: :func:`lvmae.mae.sequences.split_of` of its ``video_id``)."""
    batch = batch.filter(pc.greater_equal(batch["length"], min_tokens))
    splits = [split_of(v, val_fraction, seed) for v in batch["video_id"].to_pylist()]
    return batch.append_column("split", pa.array(splits, pa.string()))


def sequence_dataset(embeddings: str, config: PretrainConfig):
    """The lazy Ray Dataset of per-video sequences (``video_id``, ``length``, ``embedding``
    flattened, and ``split``; :func:`split_rows`), videos shorter than ``min_tokens``
    dropped. Grouping runs on the cluster."""
    return video_sequences(embeddings).map_batches(
        split_rows, batch_format="pyarrow", fn_kwargs={"min_tokens": config.min_tokens,
        "val_fraction": config.val_fraction, "seed": config.split_seed},
    )  # fmt: skip


def write_sequence_stores(ds, root: Path) -> dict[str, str]:
    """Write the rows of :func:`sequence_dataset` ``ds`` as the Parquet sequence stores
    ``root/split=train`` and ``root/split=val`` (replacing what a previous attempt left under
    ``root``), in row groups of :data:`ROWS_PER_GROUP` videos, with Ray Data on the cluster
    (nothing is collected on the driver). One Ray Data execution: a ``materialize()`` ends
    by checking the cluster's free CPUs while the view still counts the tasks that just
    finished, and warned that it had none (docs/design.md, "A quiet console").

    Returns:
        ``{"train": path, "val": path}`` for the splits that have rows.
    """
    shutil.rmtree(root, ignore_errors=True)
    ds.write_parquet(str(root), partition_cols=["split"], row_group_size=ROWS_PER_GROUP)
    stores = {split: root / f"split={split}" for split in ("train", "val")}
    return {split: str(path) for split, path in stores.items() if path.is_dir()}


# --------------------------------------------------------------------------- worker


@dataclass
class _Trainer:
    """One worker's model, its packed training step (which owns the flat gradient buffer that
    the workers all-reduce), optimizer, schedule and step."""

    core: Any
    runner: PackedStep
    optimizer: Any
    scheduler: Any
    step: int = 0
    resumed_from: int | None = None


def _build_trainer(
    config: PretrainConfig, mcfg: LVMAEConfig, epoch_starts: list[int], device, lr: float
):
    """Model, packed step, AdamW at peak ``lr`` and the warm-up + cosine schedule over the
    run's steps; restored from Ray Train's latest checkpoint when there is one (a resumed or
    restarted run). The model is not DDP-wrapped: :meth:`PackedStep.all_reduce_grads` does
    DDP's one job, averaging the gradients (one all-reduce of one flat buffer per step), which
    keeps the captured step free of DDP's hooks. Rank 0's weights are broadcast at start."""
    import ray.train  # heavy: Ray Train, only inside workers
    import ray.train.torch

    torch.manual_seed(config.seed)
    core = ray.train.torch.prepare_model(LVMAE(mcfg), parallel_strategy=None)
    settings = config.step_settings(device.type)
    if device.type == "cuda":  # TF32 for the matmuls autocast leaves in fp32
        torch.backends.cuda.matmul.allow_tf32 = True
        torch.backends.cudnn.allow_tf32 = True
    runner = PackedStep(
        core, kind=config.masking, ratio=config.mask_ratio,
        decoder_fraction=config.decoder_fraction, loss=config.loss, device=device,
        precision=settings["precision"], backend=settings["backend"],
        graphs=settings["graphs"], compile=settings["compile"],
    )  # fmt: skip
    optimizer = build_optimizer(core, lr=lr, weight_decay=config.weight_decay, betas=config.betas)
    scheduler = build_scheduler(
        optimizer,
        total_steps=epoch_starts[-1],
        warmup_steps=epoch_starts[config.warmup_epochs],
        min_lr=config.min_lr,
    )
    trainer = _Trainer(core, runner, optimizer, scheduler)
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
    if dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1:
        for tensor in core.state_dict().values():
            dist.broadcast(tensor, src=0)
    return trainer


def _capacities(config: PretrainConfig, per_worker_batch: int | None) -> list[Capacity]:
    """The step's capacity buckets (CUDA graphs): from the token budget, or from
    ``per_worker_batch`` full-length windows."""
    ratio = config.mask_ratio
    if config.batch_tokens is not None:
        largest = token_budget_capacity(config.batch_tokens, config.max_tokens, ratio)
    else:
        largest = needed_capacity([config.max_tokens] * per_worker_batch, ratio)
    return bucket_capacities(largest, config.capacity_buckets)


class _Reporter:
    """Rank 0's MLflow metrics and Ray Train reports with checkpoints."""

    def __init__(self, loop: TrainLoopConfig, trainer: _Trainer, rank: int) -> None:
        self.loop, self.trainer, self.rank = loop, trainer, rank
        self.client = self.run_id = None
        if rank == 0 and loop.mlflow_run_id:
            self.client = MlflowClient(tracking_uri=loop.tracking_uri)
            self.run_id = loop.mlflow_run_id
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
                model_config=self.loop.model_config.to_dict(),
                train_config=self.loop.config.model_dump(mode="json"),
                optimizer_state=t.optimizer.state_dict(),
                scheduler_state=t.scheduler.state_dict(),
                step=step,
                epoch=bisect.bisect_right(self.loop.plan.epoch_starts, step) - 1,
                extra={"metrics": {k: float(v) for k, v in metrics.items()}},
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


@dataclass(frozen=True)
class TrainLoopConfig:
    """What every Ray Train worker of a run gets, typed and validated once on the driver.

    Attributes:
        config: the pre-training settings.
        model_config: the model's architecture.
        plan: the run's :class:`BatchPlan` (micro-batch size, lr, epoch boundaries).
        n_train, n_val: videos in the training and validation sequence stores.
        train_path, val_path: the Parquet sequence stores (``val_path`` None: no validation).
        mlflow_run_id, tracking_uri: where rank 0 logs metrics.
    """

    config: PretrainConfig
    model_config: LVMAEConfig
    plan: BatchPlan
    n_train: int
    n_val: int
    train_path: str
    val_path: str | None
    mlflow_run_id: str | None
    tracking_uri: str


def train_loop_per_worker(loop_config: dict[str, TrainLoopConfig]) -> None:
    """Ray Train worker: data-parallel training of LV-MAE, one
    :func:`lvmae.mae.engine.train_one_epoch` per epoch over this rank's share of the epoch's
    steps — ``batch_size`` windows per micro-batch from the global permutation of the
    training videos (:func:`lvmae.mae.sequences.epoch_batches`), or token-budget micro-batches
    of the epoch plan every rank computes alike (:func:`lvmae.mae.sequences.token_epoch_plan`)
    — read from the Parquet store at ``TrainLoopConfig.train_path`` (``loop_config["loop"]``,
    Ray Train's dict holding the one typed config); validation every
    ``val_every_epochs``. On CUDA the step's capacities are compiled and captured before the
    first epoch (``perf/warmup_s``, ``perf/compiled_graphs`` in MLflow)."""
    import ray.train  # heavy: Ray Train, only inside workers
    import ray.train.torch

    loop = loop_config["loop"]
    config, mcfg = loop.config, loop.model_config
    epoch_starts, per_worker_batch = loop.plan.epoch_starts, loop.plan.per_worker_batch
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    train_store = SequenceStore(loop.train_path)
    if len(train_store) != loop.n_train:
        raise PretrainError(
            f"{loop.train_path} holds {len(train_store)} videos, expected {loop.n_train}: the "
            "sequence store changed during the run"
        )
    val_store = SequenceStore(loop.val_path) if loop.val_path else None
    trainer = _build_trainer(config, mcfg, epoch_starts, device, loop.plan.lr)
    reporter = _Reporter(loop, trainer, rank)
    capacities = None
    if trainer.runner.graphs:
        capacities = _capacities(config, per_worker_batch)
        trainer.runner.warmup(capacities)
        counts = trainer.runner.stats.compiled_after_warmup
        reporter.log({"perf/warmup_s": trainer.runner.stats.warmup_s,
                      "perf/compiled_graphs": counts.get("unique_graphs", 0)},
                     trainer.step)  # fmt: skip
    start_epoch = bisect.bisect_right(epoch_starts, trainer.step) - 1
    for epoch in range(start_epoch, config.epochs):
        first, n_steps = epoch_starts[epoch], epoch_starts[epoch + 1] - epoch_starts[epoch]
        skip = max(0, trainer.step - first)
        if config.batch_tokens is not None:
            plan, scored = token_epoch_plan(
                train_store.lengths, epoch=epoch, world=world, seed=config.seed,
                **_plan_settings(config),
            )  # fmt: skip
            steps = step_batches(train_store, plan, scored, rank=rank, world=world, skip=skip)
        else:
            videos = epoch_batches(
                train_store, epoch=epoch, rank=rank, world=world, batch_size=per_worker_batch,
                seed=config.seed, skip=skip * loop.plan.accumulate,
            )  # fmt: skip
            steps = step_batches(train_store, rank=rank, world=world, videos=videos,
                                 accumulate=loop.plan.accumulate)  # fmt: skip
        result = train_one_epoch(
            trainer.runner, trainer.optimizer, trainer.scheduler, steps, config,
            epoch=epoch, step=trainer.step, first_step=first, steps_in_epoch=n_steps,
            rng=np.random.default_rng([config.seed, rank, epoch]), dim=mcfg.input_dim,
            capacities=capacities, on_step=_StepLogger(reporter, config, epoch, world),
        )  # fmt: skip
        trainer.step = result.step
        metrics = {"step": trainer.step, "epoch": epoch + 1}
        losses = [v for v in result.losses if np.isfinite(v)]
        if losses:
            metrics["train/epoch_loss"] = float(np.mean(losses))
        if trainer.runner.graphs:
            metrics["perf/recompiles"] = trainer.runner.stats.recompiles_since_warmup()
        metrics |= _validation(trainer, val_store, config, epoch, rank=rank, device=device)
        reporter.log(metrics, trainer.step)
        reporter.report(metrics, trainer.step)


def _plan_settings(config: PretrainConfig) -> dict[str, Any]:
    """The :func:`lvmae.mae.sequences.token_epoch_plan` settings of ``config``."""
    return {
        "batch_tokens": config.batch_tokens, "accumulate": config.accumulate,
        "ratio": config.mask_ratio, "decoder_fraction": config.decoder_fraction,
        "max_tokens": config.max_tokens, "mode": config.window,
        "min_window_s": config.min_window_s, "segment_s": config.segment_s,
    }  # fmt: skip


def _validation(
    trainer: _Trainer,
    store: SequenceStore | None,
    config: PretrainConfig,
    epoch: int,
    *,
    rank: int,
    device,
) -> dict[str, float]:
    """``val/loss``, the mean over the masked tokens of all validation videos (fixed windows
    and masks every epoch; rank r reads videos r, r + world, ... of the store in order) when
    due (NaN when nothing was masked), and on rank 0 the reconstruction-retrieval monitor
    (LV-MAE §4.4) when due."""
    monitor_due = config.monitor_every_epochs and (epoch + 1) % config.monitor_every_epochs == 0
    if store is None or not ((epoch + 1) % config.val_every_epochs == 0 or monitor_due):
        return {}
    world = dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1
    mine = np.arange(rank, len(store), world)
    batches = (store.batch(mine[i : i + 16]) for i in range(0, len(mine), 16))
    total, count, kept = evaluate(  # the bare module: ranks may run unequal batch counts
        trainer.core, batches, config, rng=np.random.default_rng([config.seed, rank, 10**6]),
        dim=trainer.core.config.input_dim, device=device,
        keep=64 if monitor_due and rank == 0 else 0,
    )  # fmt: skip
    sums = torch.tensor([total, count], dtype=torch.float64)
    if world > 1:
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


@dataclass(frozen=True)
class BatchPlan:
    """How a run batches its training videos (logged at start and to MLflow).

    Attributes:
        per_worker_batch: windows per micro-batch per worker (None under token budgets).
        accumulate: micro-batches per optimizer step per worker (``config.accumulate``,
            lowered to what a worker's share of the videos fills without token budgets).
        global_batch: windows per optimizer step over all workers (under token budgets the
            mean over the run: training videos x epochs / steps).
        lr: the peak learning rate.
        epoch_starts: the optimizer step at which each epoch starts, and the run's total
            (``epochs + 1`` entries).
        lr_rule: how ``lr`` was set, in words.
    """

    per_worker_batch: int | None
    accumulate: int
    global_batch: float
    lr: float
    epoch_starts: list[int]
    lr_rule: str

    @property
    def steps_per_epoch(self) -> int:
        """Steps of the first epoch (all epochs alike without token budgets)."""
        return self.epoch_starts[1] - self.epoch_starts[0]


def batch_plan(
    config: PretrainConfig, n_train: int, lengths: np.ndarray | None = None
) -> BatchPlan:
    """The :class:`BatchPlan` of ``n_train`` training videos (``lengths``: their token
    counts in store order, needed with ``batch_tokens``).

    Windows per step (the paper's): ``batch_size`` is per worker (the reference code's and
    MAE's convention); each worker gets ``ceil(n_train / workers)`` videos an epoch
    (:func:`lvmae.mae.sequences.epoch_indices`) and drops its last incomplete step of
    ``accumulate`` micro-batches, so ``steps per epoch = ceil(n_train / workers) //
    (per-worker batch x accumulate)``. A data set too small for ``batch_size`` gets a smaller
    batch, and one too small for ``accumulate`` of those fewer micro-batches per step (as
    many as fill a worker's share), so every epoch has at least one step and every step it
    counts is taken; the log line says what was lowered. lr = ``blr x global batch / 256``
    with global batch = per-worker batch x workers x accumulate (MAE's rule).

    Token budgets (``batch_tokens``): every epoch's plan
    (:func:`lvmae.mae.sequences.token_epoch_plan`) is computed here to count its steps; the
    lr follows MAE's rule with the run's mean windows per optimizer step (training videos x
    epochs / total steps) as the global batch, so a budget that packs as many windows as
    ``batch_size`` would gets the same lr.

    Raises:
        ValueError: ``batch_tokens`` without ``lengths``.
        PretrainError: ``min_lr`` above the peak lr.
    """
    workers, accumulate, lowered = config.num_workers, config.accumulate, ""
    if config.batch_tokens is None:
        per_rank = -(-n_train // workers)  # videos per worker an epoch (epoch_indices)
        per_worker_batch = max(1, min(config.batch_size, per_rank))
        accumulate = max(1, min(accumulate, per_rank // per_worker_batch))
        changes = [f"{name} {asked} -> {got}" for name, asked, got in (
            ("batch_size", config.batch_size, per_worker_batch),
            ("accumulate", config.accumulate, accumulate)) if asked != got]  # fmt: skip
        if changes:
            lowered = f"; {per_rank} videos per worker an epoch: {', '.join(changes)}"
        global_batch = per_worker_batch * workers * accumulate
        steps = per_rank // (per_worker_batch * accumulate)  # >= 1: both fit per_rank
        starts = [steps * e for e in range(config.epochs + 1)]
        rule = (f"blr x {per_worker_batch} windows x {workers} workers x {accumulate} "
                "micro-batches / 256")  # fmt: skip
    else:
        if lengths is None:
            raise ValueError("batch_plan needs the videos' lengths with batch_tokens")
        per_worker_batch = None
        counts = [
            len(token_epoch_plan(lengths, epoch=e, world=workers, seed=config.seed,
                                 **_plan_settings(config))[0])
            for e in range(config.epochs)
        ]  # fmt: skip
        starts = [0, *np.cumsum(counts).tolist()]
        global_batch = n_train * config.epochs / starts[-1]
        rule = (
            f"blr x mean windows per step ({global_batch:.1f} = {n_train} videos x "
            f"{config.epochs} epochs / {starts[-1]} steps; {config.batch_tokens} visible "
            f"tokens x {workers} workers x {config.accumulate} micro-batches) / 256"
        )
    lr = config.effective_lr(global_batch)
    if config.lr is not None:
        rule = "lr set in the config"
    if config.min_lr > lr:  # the cosine would rise to min_lr instead of decaying
        raise PretrainError(
            f"min_lr ({config.min_lr:.3g}) exceeds this run's peak lr ({lr:.3g} = {rule}): "
            "lower min_lr, or raise blr or lr"
        )
    log.info(  # the run's plan: information (also in MLflow: train.lr_rule, train.lr)
        "pre-training %d videos on %d workers: %s per micro-batch, %d micro-batch(es) per "
        "step, %.1f windows per step, %d steps per epoch, peak lr %.3g (%s)%s",
        n_train, workers,
        f"{per_worker_batch} windows" if per_worker_batch else f"{config.batch_tokens} tokens",
        accumulate, global_batch, starts[1] - starts[0], lr, rule, lowered,
    )  # fmt: skip
    return BatchPlan(per_worker_batch, accumulate, global_batch, lr, [int(v) for v in starts], rule)


@dataclass
class PretrainResult:
    """What a pre-training run left: the latest ``checkpoint`` directory, the last reported
    ``metrics``, the MLflow run id, the run's name and its MLflow store."""

    checkpoint: str | None
    metrics: dict
    mlflow_run_id: str | None
    run_name: str
    tracking_uri: str = ""


def epoch_status(client: MlflowClient, run_id: str) -> tuple[int, dict[str, str]]:
    """What the workers' rank 0 has logged to ``run_id`` so far: the epochs done (the
    largest ``epoch`` metric; 0 when none) and the last ``train/epoch_loss`` and
    ``val/loss`` (by step) as ``{"train_loss": ..., "val_loss": ...}`` (4 significant
    digits; a key is absent until its metric appears)."""
    done = max((m.value for m in client.get_metric_history(run_id, "epoch")), default=0)
    shown = {}
    for key, label in (("train/epoch_loss", "train_loss"), ("val/loss", "val_loss")):
        history = client.get_metric_history(run_id, metric_key(key))
        if history:
            last = max(history, key=lambda m: (m.step, m.timestamp))
            shown[label] = f"{last.value:.4g}"
    return int(done), shown


def fit_with_progress(
    fit: Callable[[], Any],
    client: MlflowClient,
    run_id: str,
    bar: Progress,
    poll_s: float = POLL_S,
) -> Any:
    """Run ``fit`` (``TorchTrainer.fit``) in a thread and, every ``poll_s`` seconds until it
    ends and once after, move ``bar`` to :func:`epoch_status` of ``run_id`` (epochs done,
    last train and val loss): Ray workers' logs do not reach the driver's console, so the
    driver follows the metrics they log (a failed read of the store skips one update).
    Returns what ``fit`` returned; re-raises what it raised."""
    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["result"] = fit()
        except BaseException as exc:  # handed to the caller's thread
            outcome["error"] = exc

    thread = threading.Thread(target=target, name="pretrain-fit", daemon=True)
    thread.start()
    while True:
        thread.join(poll_s)
        try:
            done, shown = epoch_status(client, run_id)
        except Exception as exc:  # progress is best effort: a busy store must not stop training
            log.debug("could not read the run's metrics for progress: %s", exc)
        else:
            bar.update(max(0, done - bar.n), **shown)
        if not thread.is_alive():
            break
    if "error" in outcome:
        raise outcome["error"]
    return outcome["result"]


def preflight(
    embeddings: str, out: str, config: PretrainConfig, run_name: str
) -> tuple[int, LVMAEConfig, dict | None]:
    """The embedding width, the model config and the run's latest checkpoint (None if it
    has none), which must load and match the model config.

    Raises:
        StorageError: missing embeddings or mixed widths.
        CheckpointError: the run's checkpoint is corrupt or made with another model.
    """
    dim = embedding_dim_of(embeddings)
    mcfg = resolve_model_config(config, dim)
    previous = latest_run_checkpoint(out, run_name)
    state = None
    if previous is not None:
        state = load_checkpoint(previous)
        check_compatible(state, mcfg.to_dict())
    return dim, mcfg, state


def _finished(
    state: dict,
    config: PretrainConfig,
    client: MlflowClient,
    run_id: str,
    *,
    run_name: str,
    progress: bool,
    tracking_uri: str,
) -> PretrainResult:
    """The result of a run whose latest checkpoint (``state``) ends its last epoch,
    without starting Ray: what that checkpoint reported (``step``, ``epoch``, losses,
    monitor), ``resumed_from_step`` logged as a restarted run logs it, and the progress
    line of the epochs done."""
    metrics = (state.get("extra") or {}).get("metrics") or {}
    metrics = {**metrics, "step": state["step"], "epoch": state["epoch"]}
    client.log_metric(run_id, "resumed_from_step", state["step"], step=state["step"])
    with Progress(config.epochs, "pretrain", "epochs", enabled=progress) as bar:
        _, shown = epoch_status(client, run_id)  # the last losses, if this store has them
        bar.update(min(state["epoch"], config.epochs), **shown)
    log.warning("run %r already finished its %d epochs: nothing to train", run_name, config.epochs)
    return PretrainResult(str(state["path"]), metrics, run_id, run_name, tracking_uri)


def _prepare_data(
    embeddings: str, out: str, config: PretrainConfig, run_name: str
) -> dict[str, Any]:
    """Group, split and write the per-video sequence stores under the run directory (one Ray
    Data execution), and count their rows.

    Raises:
        PretrainError: fewer training videos than workers.
    """
    from ray.data import DataContext  # heavy: Ray Data, only on this path

    DataContext.get_current().enable_progress_bars = False
    stores = write_sequence_stores(
        sequence_dataset(embeddings, config), run_dir(out, run_name) / SEQUENCES_DIR
    )
    n_train, n_val = (
        pads.dataset(stores[s], format="parquet").count_rows() if s in stores else 0
        for s in ("train", "val")
    )
    workers = config.num_workers
    if n_train < workers:
        raise PretrainError(
            f"{n_train} training videos (of at least {config.min_tokens} segments) for "
            f"{workers} workers: extract more videos, lower min_tokens, or use fewer workers"
        )
    return {"n_train": n_train, "n_val": n_val, "train_path": stores["train"],
            "val_path": stores.get("val")}  # fmt: skip


def _log_missing_params(client: MlflowClient, run_id: str, params: dict[str, Any]) -> None:
    """Log the ``params`` the run does not have yet (a resumed run keeps its first values)."""
    have = client.get_run(run_id).data.params
    for key, value in params.items():
        if key not in have:
            client.log_param(run_id, key, value)


def pretrain_reservations(config: PretrainConfig) -> dict[str, Reservation]:
    """What pre-training reserves: ``num_workers`` Ray Train workers of one CPU and, with
    ``use_gpu``, one GPU each. :meth:`pipelines.stages.PretrainStage.resources` returns
    this and the trainer's scaling config reserves it."""
    return {"worker": Reservation(1.0, 1.0 if config.use_gpu else 0.0, count=config.num_workers)}


def _trainer(
    config: PretrainConfig,
    out: str,
    run_name: str,
    loop: TrainLoopConfig,
    *,
    reservations: dict[str, Reservation],
):
    """The :class:`ray.train.torch.TorchTrainer` of this run (no Ray Datasets: the workers
    read the Parquet sequence stores named in ``loop``), its workers reserving
    ``reservations["worker"]``."""
    import ray.train  # heavy: Ray Train, only on this path
    from ray.train.torch import TorchTrainer

    worker = reservations["worker"]
    per_worker = {"CPU": worker.cpus, **({"GPU": worker.gpus} if worker.gpus else {})}
    return TorchTrainer(
        train_loop_per_worker,
        train_loop_config={"loop": loop},
        scaling_config=ray.train.ScalingConfig(
            num_workers=worker.count or config.num_workers, use_gpu=bool(worker.gpus),
            resources_per_worker=per_worker,
        ),
        run_config=ray.train.RunConfig(
            name=run_name,
            storage_path=str(Path(out).absolute() / RUNS_DIR),
            failure_config=ray.train.FailureConfig(max_failures=config.max_failures),
            checkpoint_config=ray.train.CheckpointConfig(num_to_keep=config.keep_checkpoints),
        ),
    )


def run_pretrain(
    embeddings: str,
    out: str,
    config: PretrainConfig,
    *,
    progress: bool = True,
    run_name: str | None = None,
    tracking_uri: str | None = None,
    reservations: dict[str, Reservation] | None = None,
) -> PretrainResult:
    """Pre-train LV-MAE on the segment embeddings under ``embeddings``; write checkpoints,
    the per-video sequence stores and the MLflow store under ``out``.

    ``run_name`` and ``tracking_uri`` (what the main job resolved for its stage) win over the
    config's; otherwise ``config.run_name`` (default ``lvmae``) and
    :func:`lvmae.tracking.resolve_tracking_uri`. ``reservations``: what each worker reserves
    (the stage's ``resources()``; default :func:`pretrain_reservations`).

    Rerunning with the same ``run_name`` continues from its latest checkpoint (same step and
    learning rate). A run whose latest checkpoint ends its last epoch returns that
    checkpoint at once, without starting Ray (its MLflow run is reopened, logs
    ``resumed_from_step`` and ends FINISHED). The MLflow run ends FINISHED, or FAILED
    with the error as its ``lvmae.error`` tag (KILLED on Ctrl-C), and logs system metrics.
    With ``progress``, the epochs done and the last train / val loss go to stderr
    (:class:`lvmae.progress.Progress`: a bar on a TTY, else a line every 30 s). Joins Ray
    with :func:`pipelines.connect.connect_ray` unless it is already initialised.

    Raises:
        StorageError: missing/empty embeddings or mixed embedding widths (before any worker
            and before the MLflow run).
        CheckpointError: the run's latest checkpoint is corrupt or was made with another
            model configuration (before any worker and before the MLflow run).
        PretrainError: too few videos to train on, or ``min_lr`` above the run's peak lr
            (:func:`batch_plan`); before any worker, the MLflow run ends FAILED.
        ClusterError: the Ray cluster named by ``RAY_ADDRESS`` cannot be reached.
    """
    run_name = run_name or config.run_name or "lvmae"
    tracking_uri = resolve_tracking_uri(tracking_uri or config.tracking_uri, out)
    dim, mcfg, previous = preflight(embeddings, out, config, run_name)
    client = tracking_client(tracking_uri)  # a new store from the template
    done = previous is not None and previous["epoch"] >= config.epochs
    if not done:
        connect_ray()
    params = {
        **{f"pretrain.{k}": v for k, v in config.model_dump(mode="json").items()},
        **{f"model.{k}": v for k, v in mcfg.to_dict().items()},
        "data.embeddings": embeddings,
        "data.embedding_dim": dim,
    }
    with tracked_run(
        tracking_uri, config.experiment, run_name, out=out,
        tags={"lvmae.stage": "pretrain"}, params=params, with_system_metrics=not done,
    ) as mlflow_run_id:  # fmt: skip
        if done:
            return _finished(
                previous, config, client, mlflow_run_id, run_name=run_name, progress=progress,
                tracking_uri=tracking_uri,
            )
        data = _prepare_data(embeddings, out, config, run_name)
        lengths = SequenceStore(data["train_path"]).lengths if config.batch_tokens else None
        plan = batch_plan(config, data["n_train"], lengths)
        _log_missing_params(client, mlflow_run_id, {
            "data.train_videos": data["n_train"],
            "data.val_videos": data["n_val"],
            "train.per_worker_batch": plan.per_worker_batch,
            "train.accumulate": plan.accumulate,
            "train.global_batch": plan.global_batch,
            "train.steps_per_epoch": plan.steps_per_epoch,
            "train.total_steps": plan.epoch_starts[-1],
            "train.lr": plan.lr,
            "train.lr_rule": plan.lr_rule,
        })  # fmt: skip
        reserve = reservations or pretrain_reservations(config)
        trainer = _trainer(config, out, run_name, TrainLoopConfig(
            config=config, model_config=mcfg, plan=plan, n_train=data["n_train"],
            n_val=data["n_val"], train_path=data["train_path"], val_path=data["val_path"],
            mlflow_run_id=mlflow_run_id, tracking_uri=tracking_uri,
        ), reservations=reserve)  # fmt: skip
        with Progress(config.epochs, "pretrain", "epochs", enabled=progress) as bar:
            result = fit_with_progress(trainer.fit, client, mlflow_run_id, bar)
        checkpoint = result.checkpoint.path if result.checkpoint else None
        if checkpoint:
            client.set_tag(mlflow_run_id, "lvmae.checkpoint", checkpoint)
    return PretrainResult(
        checkpoint, dict(result.metrics or {}), mlflow_run_id, run_name, tracking_uri
    )


__all__ = [
    "CheckpointError",
    "PretrainError",
    "PretrainResult",
    "epoch_status",
    "fit_with_progress",
    "run_pretrain",
]
