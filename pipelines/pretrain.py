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

import numpy as np
import pyarrow as pa
import pyarrow.dataset as pads

from lvmae.checkpoints import CheckpointError, check_compatible, load_checkpoint
from lvmae.config import PretrainConfig
from lvmae.model import LVMAEConfig, model_config
from lvmae.storage import SEGMENTS_DIR, StorageError
from pipelines.tracking import default_tracking_uri, metric_key, open_run

log = logging.getLogger(__name__)

RUNS_DIR = "runs"  # Ray Train storage under the output directory


class PretrainError(RuntimeError):
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


def _group_to_sequence(group: pa.Table) -> pa.Table:
    """Ray Data ``map_groups``: one video's segment rows → one row with its ordered,
    deduplicated sequence (``embedding`` flattened ``[L * D]`` float32, ``length`` L)."""
    from lvmae.sequences import sequences_from_table

    ids, lengths, flats = [], [], []
    for video_id, seq in sequences_from_table(group):
        ids.append(video_id)
        lengths.append(seq.shape[0])
        flats.append(pa.array(seq.ravel(), pa.float32()))
    return pa.table(
        {
            "video_id": pa.array(ids, pa.string()),
            "length": pa.array(lengths, pa.int32()),
            "embedding": pa.array([f.to_numpy() for f in flats], pa.list_(pa.float32())),
        }
    )


def sequence_datasets(embeddings: str, config: PretrainConfig):
    """``(train, val)`` Ray Datasets of per-video sequences (``video_id``, ``length``,
    ``embedding`` flattened), videos shorter than ``min_tokens`` dropped, split by
    :func:`lvmae.sequences.split_of`. Grouping runs on the cluster."""
    import ray

    from lvmae.sequences import split_of

    ds = ray.data.read_parquet(
        f"{embeddings.rstrip('/')}/{SEGMENTS_DIR}",
        columns=["video_id", "segment_index", "embedding"],
    )
    seqs = ds.groupby("video_id").map_groups(_group_to_sequence, batch_format="pyarrow")
    seqs = seqs.filter(lambda row: row["length"] >= config.min_tokens).materialize()
    frac, seed = config.val_fraction, config.split_seed
    train = seqs.filter(lambda row: split_of(row["video_id"], frac, seed) == "train")
    val = seqs.filter(lambda row: split_of(row["video_id"], frac, seed) == "val")
    return train.materialize(), val.materialize()


def window_batch(
    batch: dict[str, np.ndarray], dim: int, config: PretrainConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """Numpy batch of sequences → ``x`` ``[B, L, D]`` float32 and ``real`` ``[B, L]`` bool,
    one random contiguous window per video (``config.window`` mode)."""
    from lvmae.sequences import collate, sample_window

    min_tokens = config.min_window_tokens()
    seqs = []
    for flat, length in zip(batch["embedding"], batch["length"], strict=True):
        seq = np.asarray(flat, dtype=np.float32).reshape(int(length), dim)
        start, end = sample_window(
            len(seq), config.max_tokens, rng, mode=config.window, min_tokens=min_tokens
        )
        seqs.append(seq[start:end])
    return collate(seqs, config.max_tokens)


# --------------------------------------------------------------------------- worker


def train_loop_per_worker(loop_config: dict) -> None:
    """Ray Train worker: DDP training of LV-MAE on this worker's data shard."""
    import ray.train
    import ray.train.torch
    import torch

    from lvmae.checkpoints import save_checkpoint
    from lvmae.losses import reconstruction_loss
    from lvmae.masking import decoder_subset, make_mask
    from lvmae.model import LVMAE
    from lvmae.optim import build_optimizer, build_scheduler

    config = PretrainConfig.model_validate(loop_config["config"])
    mcfg = LVMAEConfig.from_dict(loop_config["model_config"])
    steps_per_epoch = loop_config["steps_per_epoch"]
    total_steps = steps_per_epoch * config.epochs
    per_worker_batch = loop_config["per_worker_batch"]
    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    use_bf16 = device.type == "cuda"

    torch.manual_seed(config.seed)
    model = ray.train.torch.prepare_model(LVMAE(mcfg))
    core = model.module if hasattr(model, "module") else model
    optimizer = build_optimizer(
        core, lr=config.effective_lr(), weight_decay=config.weight_decay, betas=config.betas
    )
    scheduler = build_scheduler(
        optimizer,
        total_steps=total_steps,
        warmup_steps=steps_per_epoch * config.warmup_epochs,
        min_lr=config.min_lr,
    )
    step = 0
    resumed_from = None
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
            step = resumed_from = int(state["step"])

    client = run_id = None
    if rank == 0 and loop_config.get("mlflow_run_id"):
        from mlflow.tracking import MlflowClient

        client = MlflowClient(tracking_uri=loop_config["tracking_uri"])
        run_id = loop_config["mlflow_run_id"]
        if resumed_from is not None:
            client.log_metric(run_id, "resumed_from_step", resumed_from, step=resumed_from)

    def log_metrics(metrics: dict[str, float]) -> None:
        if client is not None:
            ts = int(time.time() * 1000)
            from mlflow.entities import Metric

            client.log_batch(
                run_id,
                metrics=[Metric(metric_key(k), float(v), ts, step) for k, v in metrics.items()],
            )

    def report(metrics: dict, with_checkpoint: bool) -> None:
        if not with_checkpoint:
            ray.train.report(metrics)
            return
        with tempfile.TemporaryDirectory() as tmp:
            if rank == 0:
                save_checkpoint(
                    tmp,
                    model_state=core.state_dict(),
                    model_config=mcfg.to_dict(),
                    train_config=loop_config["config"],
                    optimizer_state=optimizer.state_dict(),
                    scheduler_state=scheduler.state_dict(),
                    step=step,
                    epoch=step // steps_per_epoch,
                )
                ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(tmp))
            else:
                ray.train.report(metrics)

    def run_batch(batch, rng, train: bool) -> tuple[torch.Tensor, int]:
        x_np, real_np = window_batch(batch, mcfg.input_dim, config, rng)
        x = torch.from_numpy(x_np).to(device, non_blocking=True)
        real = torch.from_numpy(real_np).to(device, non_blocking=True)
        gen = torch.Generator(device="cpu").manual_seed(int(rng.integers(2**62)))
        mask = make_mask(config.masking, x.cpu(), real.cpu(), config.mask_ratio, gen).to(device)
        weight = mask
        if train and config.decoder_fraction < 1.0:
            weight = decoder_subset(mask.cpu(), config.decoder_fraction, gen).to(device)
        with torch.autocast(device.type, dtype=torch.bfloat16, enabled=use_bf16):
            pred = model(x, real, mask)
        loss = reconstruction_loss(pred.float(), x, weight, kind=config.loss)
        return loss, int(real.sum())

    train_shard = ray.train.get_dataset_shard("train")
    val_shard = ray.train.get_dataset_shard("val") if loop_config["has_val"] else None
    first_epoch = step // steps_per_epoch
    for epoch in range(first_epoch, config.epochs):
        model.train()
        rng = np.random.default_rng([config.seed, rank, epoch])
        skip = step - epoch * steps_per_epoch  # batches already done when resuming mid-epoch
        tokens, t0, losses = 0, time.perf_counter(), []
        batches = train_shard.iter_batches(
            batch_size=per_worker_batch,
            batch_format="numpy",
            drop_last=True,
            local_shuffle_buffer_size=max(per_worker_batch * 4, 16),
            local_shuffle_seed=config.seed + epoch * 1000 + rank,
        )
        for i, batch in enumerate(batches):
            if i >= steps_per_epoch:
                break
            if i < skip:
                continue
            loss, n_tokens = run_batch(batch, rng, train=True)
            if not torch.isfinite(loss):
                raise FloatingPointError(
                    f"non-finite training loss ({loss.item()}) at step {step} (epoch {epoch}); "
                    f"lower the learning rate (blr/lr) or set clip_grad"
                )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            if config.clip_grad:
                torch.nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
            optimizer.step()
            scheduler.step()
            step += 1
            tokens += n_tokens
            losses.append(loss.item())
            if step % config.log_every_steps == 0:
                elapsed = max(time.perf_counter() - t0, 1e-9)
                log_metrics(
                    {
                        "train/loss": float(np.mean(losses[-config.log_every_steps :])),
                        "lr": optimizer.param_groups[0]["lr"],
                        "train/tokens_per_s": tokens * world / elapsed,
                    }
                )
            end_of_epoch = i + 1 >= steps_per_epoch  # the epoch-end report checkpoints then
            if step % config.checkpoint_every_steps == 0 and not end_of_epoch:
                report({"step": step, "epoch": epoch, "train/loss": losses[-1]}, True)
        metrics = {"step": step, "epoch": epoch + 1}
        if losses:
            metrics["train/epoch_loss"] = float(np.mean(losses))
        monitor_due = config.monitor_every_epochs and (epoch + 1) % config.monitor_every_epochs == 0
        if val_shard is not None and ((epoch + 1) % config.val_every_epochs == 0 or monitor_due):
            metrics["val/loss"], kept = _validate(
                model, val_shard, run_batch=run_batch, config=config, rank=rank,
                keep=64 if monitor_due and rank == 0 else 0,
            )  # fmt: skip
            if kept:  # rank 0: the reconstruction-retrieval monitor (LV-MAE §4.4)
                from lvmae.monitor import reconstruct, retrieval_metrics

                rec = reconstruct(
                    core, kept, mask_ratio=config.mask_ratio, masking=config.masking,
                    seed=config.seed,
                )  # fmt: skip
                for key, value in retrieval_metrics(rec).items():
                    metrics[f"monitor/{key}"] = value
        log_metrics(metrics)
        report(metrics, True)


def _validate(model, shard, *, run_batch, config, rank, keep: int = 0):
    """Mean masked-token loss over this worker's validation shard, averaged over workers
    (fixed seeds: the same windows and masks every epoch). Also returns up to ``keep`` of
    this worker's validation sequences ``[L, D]`` (for the reconstruction monitor)."""
    import torch
    import torch.distributed as dist

    model.eval()
    rng = np.random.default_rng([config.seed, rank, 10**6])
    total = torch.zeros(2, dtype=torch.float64)
    kept: list[np.ndarray] = []
    with torch.no_grad():
        for batch in shard.iter_batches(batch_size=16, batch_format="numpy"):
            loss, _ = run_batch(batch, rng, train=False)
            total += torch.tensor([loss.item() * len(batch["length"]), len(batch["length"])])
            for flat, length in zip(batch["embedding"], batch["length"], strict=True):
                if len(kept) < keep and length >= 2:
                    kept.append(np.asarray(flat, np.float32).reshape(int(length), -1))
    if dist.is_available() and dist.is_initialized():
        device_total = total.to(next(model.parameters()).device)
        dist.all_reduce(device_total)
        total = device_total.cpu()
    model.train()
    return (float(total[0] / total[1]) if total[1] > 0 else float("nan")), kept


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
