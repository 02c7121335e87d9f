"""Token masking for LV-MAE pre-training: random, semantic and the decoder's dual masking.

A video is a row of segment tokens (one token = one 5-s segment embedding). Every mask here
is a bool tensor ``[B, L]`` with True = masked (hidden from the encoder, to be
reconstructed). ``real`` (bool ``[B, L]``) marks real tokens; [PAD] tokens are never masked
and never visible. All functions work on the whole batch at once (no loop over videos).

Per video with ``n`` real tokens, :func:`random_mask` and :func:`semantic_mask` keep
``int(n * (1 - ratio))`` tokens visible, as the authors' reference code does, and mask the
rest (``ceil(n * ratio)`` up to float rounding; 0.5 of 9 tokens masks 5), with at least one
token kept visible.

Sources: Naiman et al., "LV-MAE", ICCV 2025, §3.3 (random and semantic masking, mask ratio
0.5 in §4); VideoMAE V2 (Wang et al., CVPR 2023) for dual masking (:func:`decoder_subset`);
MAE (He et al., CVPR 2022) for the argsort-of-noise trick.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor

__all__ = [
    "MASK_KINDS",
    "decoder_subset",
    "make_mask",
    "mask_counts",
    "masked_count",
    "random_mask",
    "rank_in_sequence",
    "semantic_mask",
    "subset_count",
]

MASK_KINDS = ("random", "semantic")


def _check_real(real: Tensor) -> None:
    if real.dtype != torch.bool or real.dim() != 2:
        raise ValueError(
            f"real must be a bool tensor [B, L]; got {real.dtype} of shape {tuple(real.shape)}"
        )


def _check_ratio(ratio: float) -> None:
    if not 0.0 < float(ratio) < 1.0:
        raise ValueError(f"mask ratio must be in (0, 1); got {ratio}")


def mask_counts(real: Tensor, ratio: float) -> Tensor:
    """Number of tokens to mask per video: long ``[B]``.

    The authors' reference code keeps ``int(n_i * (1 - ratio))`` of the ``n_i =
    real[i].sum()`` real tokens visible (``1 - ratio`` and the product in float64, as in
    Python) and masks the others, so an odd ``n_i`` at ratio 0.5 masks ``(n_i + 1) / 2``.
    At least one token stays visible: where ``int(n_i * (1 - ratio))`` is 0 (the reference
    skips such videos; a lone token here) one is kept, so a 1-token video masks nothing.
    Every video with ``n_i >= 2`` masks at least one token.

    Args:
        real: bool ``[B, L]``, True for real tokens.
        ratio: mask ratio in (0, 1) (paper §4: 0.5).

    Raises:
        ValueError: ``ratio`` outside (0, 1) or ``real`` not a bool ``[B, L]`` tensor.
    """
    _check_real(real)
    return masked_count(real.sum(dim=1), ratio)


def masked_count(n: Tensor, ratio: float) -> Tensor:
    """Tokens to mask in each of the videos holding ``n`` (long ``[S]``) real tokens: the rule
    of :func:`mask_counts` (keep ``int(n * (1 - ratio))``, at least one), as long ``[S]``.
    Runs on ``n``'s device with no host synchronisation (videos with ``n == 0`` mask 0).

    Raises:
        ValueError: ``ratio`` outside (0, 1).
    """
    _check_ratio(ratio)
    # float64 product = Python's float product, so this equals int(n * (1 - ratio)).
    keep = torch.floor(n.double() * (1.0 - float(ratio))).long()
    keep = torch.minimum(torch.maximum(keep, torch.ones_like(keep)), n)
    return n - keep


def subset_count(m: Tensor, fraction: float) -> Tensor:
    """How many of ``m`` (long ``[S]``) masked tokens :func:`decoder_subset` scores:
    ``ceil(m * fraction)``, at least one where ``m >= 1``, at most ``m``. Long ``[S]``."""
    keep = torch.ceil(m.double() * float(fraction) - 1e-9).long()
    return torch.minimum(torch.maximum(keep, (m > 0).long()), m)


def rank_in_sequence(key: Tensor, seq: Tensor, first: Tensor) -> Tensor:
    """Rank of every row of a packed batch within its own sequence, by ascending ``key``.

    A packed batch stores its videos' tokens row after row (:mod:`lvmae.mae.packing`): row ``r``
    belongs to sequence ``seq[r]`` whose first row is ``first[seq[r]]``. Ties in ``key`` go
    by row order (two stable sorts: by key, then by sequence), so the ranks equal those the
    ``[B, L]`` functions above compute with a stable sort per row. Fixed shapes, no host
    synchronisation (usable inside a captured CUDA graph).

    Args:
        key: float ``[N]`` sort key per row.
        seq: long ``[N]`` sequence of each row; rows past the real ones carry ``S`` (sort last).
        first: long ``[S + 1]`` first row of each sequence (the last entry: the first pad row).

    Returns:
        long ``[N]``: 0 for the lowest key of each sequence, 1 for the next, ...
    """
    by_key = torch.sort(key, stable=True).indices
    order = by_key[torch.sort(seq[by_key], stable=True).indices]
    rows = torch.arange(key.shape[0], device=key.device)
    position = torch.empty_like(order).scatter_(0, order, rows)
    return position - first[seq]


def _mask_from_order(key: Tensor, real: Tensor, n_masked: Tensor) -> Tensor:
    """Mask the real tokens whose rank under ascending ``key`` is ``>= n_i - n_masked_i``.

    ``key`` float ``[B, L]`` must put pads after every real token (e.g. +inf); ties are broken
    by position (stable sort). Returns bool ``[B, L]``.
    """
    order = torch.sort(key, dim=1, stable=True).indices
    positions = torch.arange(key.shape[1], device=key.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, positions)
    n_visible = real.sum(dim=1) - n_masked
    return (rank >= n_visible[:, None]) & real


def random_mask(real: Tensor, ratio: float, generator: torch.Generator | None = None) -> Tensor:
    """Uniformly random mask with exact per-video counts (LV-MAE §3.3, MAE-style).

    Each video masks :func:`mask_counts` of its real tokens, chosen uniformly at random by
    ranking uniform noise with pads pushed to the end.

    Args:
        real: bool ``[B, L]``, True for real tokens (pads False).
        ratio: fraction of real tokens to mask, in (0, 1).
        generator: optional ``torch.Generator`` for reproducible masks; the noise is drawn on
            the generator's device, then moved to ``real.device``.

    Returns:
        bool ``[B, L]``, True = masked; pads are False.

    Raises:
        ValueError: ``ratio`` outside (0, 1) or ``real`` not a bool ``[B, L]`` tensor.
    """
    n_masked = mask_counts(real, ratio)
    device = generator.device if generator is not None else real.device
    noise = torch.rand(real.shape, generator=generator, device=device).to(real.device)
    noise = noise.masked_fill(~real, 2.0)  # noise < 1, so pads rank after every real token
    return _mask_from_order(noise, real, n_masked)


def semantic_mask(x: Tensor, real: Tensor, ratio: float) -> Tensor:
    """Semantic masking (LV-MAE §3.3): hide the most redundant segments, keep scene changes.

    Token ``i`` scores ``cos(x_i, x_{i-1})`` (token 0 scores -inf, so it is always kept);
    the ``n_i - count_i`` tokens with the lowest scores stay visible and the ``count_i``
    most redundant ones (highest scores) are masked, with the counts of
    :func:`mask_counts`. Pads are never scored. Deterministic: ties go by position (the
    earlier token of a tie stays visible first). Scores are computed in float32.

    Args:
        x: float ``[B, L, D]`` segment embeddings.
        real: bool ``[B, L]``, True for real tokens (a prefix of each row).
        ratio: fraction of real tokens to mask, in (0, 1).

    Returns:
        bool ``[B, L]``, True = masked; pads are False.

    Raises:
        ValueError: bad ``ratio``, ``real`` not a bool ``[B, L]``, or ``x`` not ``[B, L, D]``.
    """
    n_masked = mask_counts(real, ratio)
    if x.dim() != 3 or x.shape[:2] != real.shape:
        raise ValueError(
            f"x must be [B, L, D] matching real {tuple(real.shape)}; got {tuple(x.shape)}"
        )
    xf = x.float()
    cos = F.cosine_similarity(xf[:, 1:], xf[:, :-1], dim=-1)  # [B, L-1]
    first = torch.full_like(xf[:, :1, 0], float("-inf"))
    score = torch.cat([first, cos], dim=1).masked_fill(~real, float("inf"))
    return _mask_from_order(score, real, n_masked)


def decoder_subset(
    mask: Tensor, fraction: float, generator: torch.Generator | None = None
) -> Tensor:
    """Dual masking (VideoMAE V2): a random subset of each video's masked tokens to reconstruct.

    Each video keeps ``ceil(fraction * m_i)`` of its ``m_i`` masked tokens (at least 1 when
    ``m_i >= 1``; the ceil tolerates float error, so 0.3 × 10 gives 3), chosen uniformly at
    random. Use the result as the loss weight; ``fraction == 1.0`` returns (a copy of)
    ``mask``. Here the decoder still runs over every token; only the loss is restricted.

    Args:
        mask: bool ``[B, L]``, True = masked.
        fraction: fraction of masked tokens to keep, in (0, 1].
        generator: optional ``torch.Generator`` (noise drawn on its device).

    Returns:
        bool ``[B, L]``, a subset of ``mask``.

    Raises:
        ValueError: ``fraction`` outside (0, 1] or ``mask`` not a bool ``[B, L]`` tensor.
    """
    _check_real(mask)
    if not 0.0 < float(fraction) <= 1.0:
        raise ValueError(f"decoder fraction must be in (0, 1]; got {fraction}")
    if float(fraction) == 1.0:
        return mask.clone()
    keep = subset_count(mask.sum(dim=1), fraction)
    device = generator.device if generator is not None else mask.device
    noise = torch.rand(mask.shape, generator=generator, device=device).to(mask.device)
    noise = noise.masked_fill(~mask, 2.0)
    order = torch.sort(noise, dim=1).indices
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(order)
    rank = torch.empty_like(order).scatter_(1, order, positions)
    return (rank < keep[:, None]) & mask


def make_mask(
    kind: str,
    x: Tensor,
    real: Tensor,
    ratio: float,
    generator: torch.Generator | None = None,
) -> Tensor:
    """Dispatch to :func:`random_mask` (``"random"``) or :func:`semantic_mask` (``"semantic"``).

    Args:
        kind: ``"random"`` or ``"semantic"`` (LV-MAE §3.3).
        x: float ``[B, L, D]`` segment embeddings (used by semantic masking only).
        real: bool ``[B, L]``, True for real tokens.
        ratio: fraction of real tokens to mask, in (0, 1).
        generator: optional ``torch.Generator`` (random masking only).

    Returns:
        bool ``[B, L]``, True = masked.

    Raises:
        ValueError: unknown ``kind``, or the errors of the chosen function.
    """
    if kind == "random":
        return random_mask(real, ratio, generator)
    if kind == "semantic":
        return semantic_mask(x, real, ratio)
    raise ValueError(f"unknown mask kind {kind!r}; expected one of {MASK_KINDS}")
