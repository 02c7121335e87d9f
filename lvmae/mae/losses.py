"""Reconstruction losses for LV-MAE pre-training.

Sources: Naiman et al., "LV-MAE", ICCV 2025, §3.2 and §4 (MSE between the prediction and
the L2-normalised target segment embedding, averaged over masked, non-pad tokens; cosine
loss as an option); MAE (He et al., CVPR 2022) for the per-token mean over masked tokens.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = ["LOSS_KINDS", "reconstruction_loss", "token_errors"]

LOSS_KINDS = ("mse", "cosine")


def reconstruction_loss(pred: Tensor, target: Tensor, weight: Tensor, kind: str = "mse") -> Tensor:
    """Mean reconstruction error over the selected tokens (one token = one 5-s segment).

    The target is L2-normalised along the last dim first. ``"mse"``: mean over selected
    tokens of the per-token mean squared error ``mean_d (pred - target)^2``; ``"cosine"``:
    mean over selected tokens of ``1 - cos(pred, target)``. Unselected tokens (pads,
    visible tokens) do not reach the loss or its gradient, even when they hold NaN/inf.
    Computed in float32 (safe under bfloat16 autocast).

    Args:
        pred: float ``[B, L, D]`` predictions (e.g. :meth:`lvmae.mae.model.LVMAE.forward`).
        target: float ``[B, L, D]`` segment embeddings (the model's input ``x``).
        weight: bool ``[B, L]`` selecting the tokens (masked and real, or the decoder
            subset of :func:`lvmae.mae.masking.decoder_subset`).
        kind: ``"mse"`` (paper) or ``"cosine"``.

    Returns:
        A float32 scalar.

    Raises:
        ValueError: unknown ``kind``, mismatched shapes, ``weight`` not bool, or no token
            selected.
    """
    if kind not in LOSS_KINDS:
        raise ValueError(f"unknown loss kind {kind!r}; expected one of {LOSS_KINDS}")
    if pred.shape != target.shape or pred.dim() != 3:
        raise ValueError(
            f"pred and target must both be [B, L, D]; got {tuple(pred.shape)} and "
            f"{tuple(target.shape)}"
        )
    if weight.dtype != torch.bool or weight.shape != pred.shape[:2]:
        raise ValueError(
            f"weight must be bool {tuple(pred.shape[:2])}; got {weight.dtype} {tuple(weight.shape)}"
        )
    count = weight.sum()
    if not bool(count > 0):
        raise ValueError("reconstruction_loss: no token selected (weight is all False)")
    return token_errors(pred, target, weight, kind).sum() / count


def token_errors(pred: Tensor, target: Tensor, weight: Tensor, kind: str = "mse") -> Tensor:
    """Per-token reconstruction error ``[...]`` of ``pred`` / ``target`` ``[..., D]``: the
    terms :func:`reconstruction_loss` averages (float32, 0 where ``weight`` is False, whatever
    ``pred`` or ``target`` hold there, gradient included). No checks and no host
    synchronisation: the packed training step (:mod:`lvmae.mae.packing`) sums these itself."""
    selected = weight[..., None]
    # where() (not multiplication) keeps NaN/inf at unselected tokens out of the gradient.
    pred = torch.where(selected, pred.float(), 0.0)
    target = F.normalize(torch.where(selected, target.float(), 0.0), dim=-1)
    if kind == "mse":
        per_token = (pred - target).pow(2).mean(dim=-1)
    else:
        per_token = 1.0 - F.cosine_similarity(pred, target, dim=-1)
    return torch.where(weight, per_token, 0.0)
