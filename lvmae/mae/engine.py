"""One pre-training epoch and one validation pass of LV-MAE, without Ray (the engine of
MAE's ``engine_pretrain.py``): Ray Train's worker loop (:mod:`pipelines.pretrain`) wires
data shards, DDP, checkpoints and MLflow around these functions.

A batch is what the data pipeline yields per step: ``{"embedding": B flat float32 arrays
[L_i * D], "length": [B] int}`` — each video's whole ordered sequence. The engine cuts one
random training window per video (:func:`lvmae.mae.sequences.sample_window`), builds the mask
(:func:`lvmae.mae.masking.make_mask`), runs the model and scores the reconstruction of the
masked, non-pad tokens (:func:`lvmae.mae.losses.reconstruction_loss`). Every random draw comes
from the ``rng`` passed in, so a (seed, rank, epoch) triple fixes the windows and masks.

Source: Naiman et al., "LV-MAE", ICCV 2025, §3.2 and §4 (docs/design.md, "Reference facts").
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import Tensor, nn

from lvmae.config import PretrainConfig
from lvmae.mae.losses import reconstruction_loss
from lvmae.mae.masking import decoder_subset, make_mask
from lvmae.mae.sequences import collate, sample_window

Batch = Mapping[str, np.ndarray]


def window_batch(
    batch: Batch, dim: int, config: PretrainConfig, rng: np.random.Generator
) -> tuple[np.ndarray, np.ndarray]:
    """One random contiguous window per video (``config.window`` mode, at most
    ``config.max_tokens`` tokens) → ``x`` float32 ``[B, L, D]`` and ``real`` bool ``[B, L]``
    (False at [PAD])."""
    seqs = []
    for flat, length in zip(batch["embedding"], batch["length"], strict=True):
        seq = np.asarray(flat, dtype=np.float32).reshape(int(length), dim)
        start, end = sample_window(
            len(seq), config.max_tokens, rng, mode=config.window,
            min_window_s=config.min_window_s, segment_s=config.segment_s,
        )  # fmt: skip
        seqs.append(seq[start:end])
    return collate(seqs, config.max_tokens)


def batch_loss(
    model: nn.Module,
    batch: Batch,
    config: PretrainConfig,
    rng: np.random.Generator,
    *,
    dim: int,
    device: torch.device,
    train: bool,
) -> tuple[Tensor, int]:
    """The masked-reconstruction loss of one batch and its number of real tokens.

    Windows, then the mask (``config.masking`` at ``config.mask_ratio`` of each window's real
    tokens), then the forward pass (bf16 autocast on CUDA). In training, with
    ``decoder_fraction < 1`` only a random subset of the masked tokens is scored.

    Returns:
        The scalar loss (float32) and the count of real tokens in the batch.
    """
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
    loss = reconstruction_loss(pred.float(), x, weight, kind=config.loss)
    return loss, int(real.sum())


@dataclass
class EpochResult:
    """What :func:`train_one_epoch` did: the optimizer ``step`` reached, the per-step
    ``losses`` and the real ``tokens`` seen (this process only)."""

    step: int
    losses: list[float] = field(default_factory=list)
    tokens: int = 0


def train_one_epoch(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    batches: Iterable[Batch],
    config: PretrainConfig,
    *,
    epoch: int,
    step: int,
    steps_per_epoch: int,
    rng: np.random.Generator,
    dim: int,
    device: torch.device,
    on_step: Callable[[int, float, int, bool], None] | None = None,
) -> EpochResult:
    """Train one epoch: at most ``steps_per_epoch`` optimizer steps over ``batches``,
    skipping the batches already done when resuming mid-epoch (``step`` counts the steps
    of all epochs so far).

    Args:
        on_step: called after every step with (step, loss, real tokens of the batch,
            whether this was the epoch's last step) — where the caller logs metrics and
            checkpoints.

    Returns:
        The :class:`EpochResult`.

    Raises:
        FloatingPointError: a non-finite loss; training stops loudly (as MAE does).
    """
    model.train()
    result = EpochResult(step=step)
    skip = step - epoch * steps_per_epoch
    for i, batch in enumerate(batches):
        if i >= steps_per_epoch:
            break
        if i < skip:
            continue
        loss, n_tokens = batch_loss(model, batch, config, rng, dim=dim, device=device, train=True)
        if not torch.isfinite(loss):
            raise FloatingPointError(
                f"non-finite training loss ({loss.item()}) at step {result.step} (epoch "
                f"{epoch}); lower the learning rate (blr/lr) or set clip_grad"
            )
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if config.clip_grad:
            nn.utils.clip_grad_norm_(model.parameters(), config.clip_grad)
        optimizer.step()
        scheduler.step()
        result.step += 1
        result.tokens += n_tokens
        result.losses.append(loss.item())
        if on_step is not None:
            on_step(result.step, result.losses[-1], n_tokens, i + 1 >= steps_per_epoch)
    return result


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
    pass a fixed seed to see the same ones every epoch).

    Returns:
        The sum over videos of each batch's loss × its videos, the number of videos (the
        caller averages, possibly across workers), and up to ``keep`` of the sequences
        ``[L, D]`` (L >= 2 tokens) for the reconstruction monitor.
    """
    model.eval()
    total, count, kept = 0.0, 0, []
    for batch in batches:
        loss, _ = batch_loss(model, batch, config, rng, dim=dim, device=device, train=False)
        total += loss.item() * len(batch["length"])
        count += len(batch["length"])
        for flat, length in zip(batch["embedding"], batch["length"], strict=True):
            if len(kept) < keep and length >= 2:
                kept.append(np.asarray(flat, np.float32).reshape(int(length), -1))
    model.train()
    return total, count, kept
