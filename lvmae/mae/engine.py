"""One pre-training epoch and one validation pass of LV-MAE, without Ray (the engine of
MAE's ``engine_pretrain.py``): Ray Train's worker loop (:mod:`pipelines.pretrain`) wires
data shards, DDP, checkpoints and MLflow around these functions.

A batch is what the data pipeline yields per micro-batch: ``{"embedding": B flat float32
arrays [L_i * D], "length": [B] int}`` — each video's whole ordered sequence, optionally with
its planned windows (``start``, ``end`` [B]) and the step's loss normaliser (``denom``) under
token budgets (:func:`lvmae.mae.sequences.token_epoch_plan`); a step skipped on resume needs no
``embedding``. Training packs each micro-batch's windows
(:func:`lvmae.mae.packing.pack_windows`) and runs the fixed-shape step
(:class:`lvmae.mae.step.PackedStep`: mask, model and masked-token loss on the device, compiled
and replayed as a CUDA graph on GPUs); validation runs the ``[B, L]`` model path
(:func:`batch_loss`). Every random draw comes from the ``rng`` passed in, so a (seed, rank,
epoch) triple fixes the windows and masks.

No host synchronisation inside a training step: losses stay on the device until a step that
logs or checkpoints (``log_every_steps``, ``checkpoint_every_steps``, the epoch's last), where
they are read, checked for finiteness and handed to ``on_step`` in order.

Source: Naiman et al., "LV-MAE", ICCV 2025, §3.2 and §4 (docs/design.md, "Reference facts").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn

from lvmae.config import PretrainConfig
from lvmae.mae.losses import reconstruction_loss, token_errors
from lvmae.mae.masking import decoder_subset, make_mask
from lvmae.mae.packing import Capacity, draw_noise, pack_windows
from lvmae.mae.sequences import collate, sample_window
from lvmae.mae.step import PackedStep

Batch = Mapping[str, np.ndarray]


def window_bounds(
    batch: Batch, config: PretrainConfig, rng: np.random.Generator
) -> list[tuple[int, int]]:
    """One contiguous window ``(start, end)`` (token indices) per video of ``batch``, from
    its ``length`` alone: the planned ``start``/``end`` when the batch carries them, else a
    random one (``config.window`` mode, at most ``config.max_tokens`` tokens, from ``rng``)."""
    if "start" in batch:
        return [(int(s), int(e)) for s, e in zip(batch["start"], batch["end"], strict=True)]
    return [
        sample_window(int(length), config.max_tokens, rng, mode=config.window,
                      min_window_s=config.min_window_s, segment_s=config.segment_s)
        for length in batch["length"]
    ]  # fmt: skip


def batch_windows(
    batch: Batch, dim: int, config: PretrainConfig, rng: np.random.Generator
) -> list[np.ndarray]:
    """One contiguous window ``[n_i, D]`` per video of ``batch`` (:func:`window_bounds`)."""
    bounds = window_bounds(batch, config, rng)
    seqs = []
    for flat, length, (start, end) in zip(batch["embedding"], batch["length"], bounds,
                                          strict=True):  # fmt: skip
        seqs.append(np.asarray(flat, dtype=np.float32).reshape(int(length), dim)[start:end])
    return seqs


def window_batch(
    batch: Batch, dim: int, config: PretrainConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One random contiguous window per video (:func:`batch_windows`) → ``x`` float32
    ``[B, L, D]`` and ``real`` bool ``[B, L]`` (False at [PAD])."""
    return collate(batch_windows(batch, dim, config, rng), config.max_tokens)


def batch_loss(
    model: nn.Module, batch: Batch, config: PretrainConfig, rng: np.random.Generator, **how: Any
) -> tuple[Tensor, int]:
    """The masked-reconstruction loss of one batch and its number of real tokens (``how``:
    :func:`_predict`'s keywords ``dim``, ``device`` and ``train``).

    Windows, then the mask (``config.masking`` at ``config.mask_ratio`` of each window's real
    tokens), then the forward pass (bf16 autocast on CUDA). In training, with
    ``decoder_fraction < 1`` only a random subset of the masked tokens is scored.

    Returns:
        The scalar loss (float32) and the count of real tokens in the batch.

    Raises:
        ValueError: no token scored (every window of 1 token: nothing is masked).
    """
    pred, x, real, weight = _predict(model, batch, config, rng, **how)
    loss = reconstruction_loss(pred.float(), x, weight, kind=config.loss)
    return loss, int(real.sum())


def _predict(
    model: nn.Module,
    batch: Batch,
    config: PretrainConfig,
    rng: np.random.Generator,
    *,
    dim: int,
    device: torch.device,
    train: bool,
) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """Windows, mask and forward pass of :func:`batch_loss`: the predictions ``[B, L, D]``,
    the windows ``x`` ``[B, L, D]``, ``real`` and the scored tokens ``weight`` (bool
    ``[B, L]``)."""
    x_np, real_np = window_batch(batch, dim, config, rng)
    x = torch.from_numpy(x_np).to(device, non_blocking=True)
    real = torch.from_numpy(real_np).to(device, non_blocking=True)
    gen = torch.Generator(device="cpu").manual_seed(int(rng.integers(2**62)))
    mask = make_mask(config.masking, x.cpu(), real.cpu(), config.mask_ratio, gen).to(device)
    weight = mask
    if train and config.decoder_fraction < 1.0:
        weight = decoder_subset(mask.cpu(), config.decoder_fraction, gen).to(device)
    with torch.autocast(device.type, dtype=torch.bfloat16, enabled=device.type == "cuda"):
        pred = model(x, real, mask)
    return pred, x, real, weight


@dataclass
class EpochResult:
    """What :func:`train_one_epoch` did: the optimizer ``step`` reached, the per-step
    ``losses`` (this worker's mean over its scored tokens; NaN for a step in which it had no
    micro-batch) and the real ``tokens`` seen (this process only)."""

    step: int
    losses: list[float] = field(default_factory=list)
    tokens: int = 0


def _due(step: int, config: PretrainConfig) -> bool:
    """Whether ``step`` logs or checkpoints (its loss must be read now)."""
    return step % config.log_every_steps == 0 or step % config.checkpoint_every_steps == 0


def train_one_epoch(
    runner: PackedStep,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    steps: Iterable[Batch | list[Batch]],
    config: PretrainConfig,
    *,
    epoch: int,
    step: int,
    first_step: int,
    steps_in_epoch: int,
    rng: np.random.Generator,
    dim: int,
    capacities: list[Capacity] | None = None,
    on_step: Callable[[int, float, int, bool], None] | None = None,
) -> EpochResult:
    """Train one epoch: at most ``steps_in_epoch`` optimizer steps over ``steps`` (each a
    micro-batch or a list of micro-batches whose gradients add up before the step), skipping
    the steps already done when resuming mid-epoch (``step`` counts the steps of all epochs
    so far; the epoch starts at step ``first_step``).

    A skipped step computes nothing, but its windows and mask noise are drawn from ``rng`` as
    the uninterrupted run drew them (:func:`window_bounds`,
    :func:`lvmae.mae.packing.draw_noise`), so a resumed run trains its remaining steps on the
    same windows and masks: a skipped step's micro-batches need only their ``length`` (and
    planned ``start``/``end``), not their ``embedding``
    (:func:`lvmae.mae.sequences.epoch_batches` and
    :func:`lvmae.mae.sequences.step_batches` yield them so). The torch RNG is not replayed:
    only dropout and drop_path draw from it, both 0 by default; with them on, a resumed run
    draws other dropout masks than an uninterrupted one would.

    Per optimizer step: every micro-batch is packed (into the smallest of ``capacities``, or
    at its exact shape) and run by ``runner``, whose gradient buffer is then averaged over the
    workers, clipped (``clip_grad``), applied (AdamW) and zeroed. The loss normaliser is the
    step's scored tokens on this worker (DDP then averages the workers' means), or the
    batches' ``denom`` under token budgets (the mean over every worker's tokens).

    Args:
        on_step: called after every step with (step, loss, real tokens of the step, whether
            this was the epoch's last step) — where the caller logs metrics and checkpoints.
            Calls come in order, in bursts at steps that log or checkpoint (see the module
            docstring), so the model then holds exactly that step's weights.

    Returns:
        The :class:`EpochResult`.

    Raises:
        FloatingPointError: a non-finite loss; training stops loudly (as MAE does), at the
            first step that reads the losses (at most ``log_every_steps`` steps later).
    """
    runner.model.train()
    result = EpochResult(step=step)
    skip = step - first_step
    pending: list[tuple[int, Tensor | None, int, bool]] = []
    for i, item in enumerate(steps):
        if i >= steps_in_epoch:
            break
        micro = [item] if isinstance(item, Mapping) else list(item)
        if i < skip:  # done before the resume: the same draws, nothing computed
            for b in micro:
                bounds = window_bounds(b, config, rng)
                draw_noise([end - start for start, end in bounds], rng, ratio=config.mask_ratio,
                           capacities=capacities)  # fmt: skip
            continue
        packed = [
            pack_windows(batch_windows(b, dim, config, rng), rng, ratio=config.mask_ratio,
                         decoder_fraction=config.decoder_fraction, capacities=capacities)
            for b in micro
        ]  # fmt: skip
        denom = micro[0]["denom"] if micro and "denom" in micro[0] else None
        if denom is None:
            denom = sum(p.scored_tokens for p in packed)
        err = count = None
        for p in packed:
            e, c = runner(p, denom)
            err, count = (e, c) if err is None else (err + e, count + c)
        runner.all_reduce_grads()
        if config.clip_grad:
            nn.utils.clip_grad_norm_(runner.model.parameters(), config.clip_grad)
        optimizer.step()
        scheduler.step()
        runner.zero_grad()
        result.step += 1
        n_tokens = sum(p.real_tokens for p in packed)
        result.tokens += n_tokens
        last = i + 1 >= steps_in_epoch
        scored = sum(p.scored_tokens for p in packed)
        pending.append((result.step, err / count if scored else None, n_tokens, last))
        if last or _due(result.step, config):
            _flush(pending, result, on_step, epoch)
    _flush(pending, result, on_step, epoch)
    return result


def _flush(pending: list, result: EpochResult, on_step, epoch: int) -> None:
    """Read the pending steps' losses (one host sync), check them and report them in order."""
    if not pending:
        return
    device_losses = [loss for _, loss, _, _ in pending if loss is not None]
    values = iter(torch.stack(device_losses).tolist() if device_losses else [])
    for step, loss, n_tokens, last in pending:
        value = float("nan") if loss is None else next(values)
        if loss is not None and not np.isfinite(value):
            raise FloatingPointError(
                f"non-finite training loss ({value}) at step {step} (epoch {epoch}); lower the "
                "learning rate (blr/lr) or set clip_grad"
            )
        result.losses.append(value)
        if on_step is not None:
            on_step(step, value, n_tokens, last)
    pending.clear()


@torch.no_grad()
def evaluate(
    model: nn.Module,
    batches: Iterable[Batch],
    config: PretrainConfig,
    *,
    rng: np.random.Generator,
    dim: int,
    device: torch.device,
    keep: int = 0,
) -> tuple[float, int, list[np.ndarray]]:
    """Validation: the masked-token loss over ``batches`` (windows and masks from ``rng``;
    pass a fixed seed to see the same ones every epoch), as a sum over every masked token and
    their count, so a batch with no masked token (windows of 1 token) adds nothing.

    Returns:
        The summed reconstruction error (:func:`lvmae.mae.losses.token_errors`, float) over
        the masked tokens of all batches, their count (the caller averages, possibly across
        workers; 0 when nothing was masked), and up to ``keep`` of the sequences ``[L, D]``
        (L >= 2 tokens) for the reconstruction monitor.
    """
    model.eval()
    total, count, kept = 0.0, 0, []
    for batch in batches:
        pred, x, _, weight = _predict(model, batch, config, rng, dim=dim, device=device,
                                      train=False)  # fmt: skip
        total += float(token_errors(pred, x, weight, config.loss).sum(dtype=torch.float64))
        count += int(weight.sum())
        for flat, length in zip(batch["embedding"], batch["length"], strict=True):
            if len(kept) < keep and length >= 2:
                kept.append(np.asarray(flat, np.float32).reshape(int(length), -1))
    model.train()
    return total, count, kept
