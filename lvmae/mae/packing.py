"""Fixed-shape packed batches for LV-MAE pre-training: what a GPU step needs to be captured once
and replayed.

A batch of training windows (one window = a contiguous run of a video's segment tokens) is
stored as one flat ``[N, D]`` array of real tokens, window after window, padded with unused
rows up to a *capacity*; a ``[S]`` array gives each window's length (0 for unused window
slots). The capacity (:class:`Capacity`: ``N`` token rows, ``S`` window slots, the encoder's
and decoder's row counts) is one of a few fixed *buckets* (:func:`bucket_capacities`), so a
whole run uses a handful of shapes, each compiled and captured once.

On the device, :func:`packed_loss` does the rest with fixed shapes and without reading any
device value on the host: the mask (random or semantic, :mod:`lvmae.mae.masking`'s rules and
counts, ranks within each window by :func:`lvmae.mae.masking.rank_in_sequence`), the decoder
subset, :meth:`lvmae.mae.model.LVMAE.forward_rows` and the masked-token loss sum and count. The
random draws come from the host (``noise`` rows), so a (seed, rank, epoch) triple fixes every
mask, as in :mod:`lvmae.mae.engine`.

Sources: Naiman et al., "LV-MAE", ICCV 2025, §3.2–§3.3 and §4 (model, masking, loss);
"max tokens" batching as in fairseq and Megatron-LM.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from lvmae.mae.losses import token_errors
from lvmae.mae.masking import MASK_KINDS, masked_count, rank_in_sequence, subset_count
from lvmae.mae.sequences import keep_count, max_windows, scored_count

__all__ = [
    "Capacity",
    "PackedWindows",
    "bucket_capacities",
    "draw_noise",
    "needed_capacity",
    "pack_windows",
    "packed_loss",
    "pick_capacity",
    "token_budget_capacity",
]

ROW_QUANTUM = 64  # capacities are multiples of this many rows (kernel-friendly shapes)


@dataclass(frozen=True, order=True)
class Capacity:
    """Fixed shapes of one packed batch.

    Attributes:
        tokens: ``N``, rows of real tokens (the input ``x`` is ``[N, D]``).
        seqs: ``S``, window slots.
        enc_rows: encoder rows ([CLS] + visible tokens of every window, then unused rows).
        dec_rows: decoder rows ([CLS] + every token of every window, then unused rows).
    """

    tokens: int
    seqs: int
    enc_rows: int
    dec_rows: int

    def fits(self, other: Capacity) -> bool:
        """Whether a batch needing ``other`` fits in this capacity."""
        return (
            other.tokens <= self.tokens
            and other.seqs <= self.seqs
            and other.enc_rows <= self.enc_rows
            and other.dec_rows <= self.dec_rows
        )


def needed_capacity(lengths: Sequence[int] | np.ndarray, ratio: float) -> Capacity:
    """The exact :class:`Capacity` of windows of ``lengths`` tokens at mask ratio ``ratio``."""
    n = np.asarray(lengths, dtype=np.int64)
    s = len(n)
    return Capacity(int(n.sum()), s, int(keep_count(n, ratio).sum()) + s, int(n.sum()) + s)


def _round_up(x: float, quantum: int) -> int:
    return max(quantum, math.ceil(x / quantum) * quantum)


def bucket_capacities(largest: Capacity, buckets: int = 4) -> list[Capacity]:
    """``buckets`` capacities growing linearly up to ``largest`` (each row count ``k /
    buckets`` of the largest, rounded up to :data:`ROW_QUANTUM` rows; every bucket keeps all
    the window slots, which cost a few integers each), the last one covering ``largest``. A
    batch runs in the smallest that fits it (:func:`pick_capacity`): with 4 buckets, at most
    about a quarter of a step is padding.

    Raises:
        ValueError: ``buckets < 1``.
    """
    if buckets < 1:
        raise ValueError(f"buckets must be >= 1, got {buckets}")
    out = []
    for k in range(1, buckets + 1):
        f = k / buckets
        cap = Capacity(
            _round_up(largest.tokens * f, ROW_QUANTUM),
            largest.seqs,
            _round_up(largest.enc_rows * f, ROW_QUANTUM),
            _round_up(largest.dec_rows * f, ROW_QUANTUM),
        )
        if not out or cap != out[-1]:
            out.append(cap)
    return out


def pick_capacity(need: Capacity, capacities: Sequence[Capacity] | None) -> Capacity:
    """The first of ``capacities`` that fits ``need`` (they are tried in order); ``need``
    itself when ``capacities`` is None (exact shapes: the eager CPU path).

    Raises:
        ValueError: no capacity fits (the batch is larger than the largest bucket).
    """
    if capacities is None:
        return need
    for cap in capacities:
        if cap.fits(need):
            return cap
    raise ValueError(f"a batch needing {need} fits none of the capacities {list(capacities)}")


def token_budget_capacity(batch_tokens: int, max_tokens: int, ratio: float) -> Capacity:
    """The largest :class:`Capacity` a micro-batch of
    :func:`lvmae.mae.sequences.plan_token_batches` can need: at most ``batch_tokens`` visible
    tokens in at most :func:`lvmae.mae.sequences.max_windows` windows. A window of
    ``n`` tokens keeps ``k`` visible with ``n < (k + 1) / (1 - ratio)``, which bounds the
    token rows."""
    s = max_windows(batch_tokens)
    tokens = min(s * max_tokens, math.floor((batch_tokens + s) / (1.0 - ratio)))
    return Capacity(tokens, s, batch_tokens + s, tokens + s)


@dataclass
class PackedWindows:
    """A host-side packed batch (see the module docstring), ready to copy to the device.

    Attributes:
        x: float32 ``[N, D]`` real tokens window after window, zeros after.
        lengths: int64 ``[S]`` tokens per window (0 for unused slots).
        noise: float32 ``[N]`` uniform draws for random masking (host RNG).
        subset_noise: float32 ``[N]`` uniform draws for the decoder subset.
        capacity: the :class:`Capacity` (``x`` has ``capacity.tokens`` rows).
        real_tokens: real tokens in the batch.
        scored_tokens: masked tokens the loss scores (its normaliser for a plain mean).
        window_lengths: the windows' lengths (host ints, in order).
    """

    x: np.ndarray
    lengths: np.ndarray
    noise: np.ndarray
    subset_noise: np.ndarray
    capacity: Capacity
    real_tokens: int
    scored_tokens: int
    window_lengths: tuple[int, ...]

    def host_lengths(self, ratio: float) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Per-window encoder and decoder row counts (host ints, unused slots 0), for the
        ``split`` attention backend."""
        n = np.asarray(self.lengths)
        used = n > 0
        enc = np.where(used, keep_count(np.maximum(n, 1), ratio) + 1, 0)
        return tuple(int(v) for v in enc), tuple(int(v) for v in np.where(used, n + 1, 0))


def pack_windows(
    windows: Sequence[np.ndarray],
    rng: np.random.Generator,
    *,
    ratio: float,
    decoder_fraction: float = 1.0,
    capacities: Sequence[Capacity] | None = None,
) -> PackedWindows:
    """Pack ``windows`` (B arrays ``[L_i, D]``, ``L_i >= 1``) into the smallest of
    ``capacities`` that fits them (exact shapes when None), drawing the mask noise from
    ``rng``.

    Raises:
        ValueError: no windows, an empty or non-2-D window, mixed ``D``, or no capacity fits.
    """
    if not windows:
        raise ValueError("pack_windows needs at least one window")
    dims = {w.shape[1] for w in windows if np.ndim(w) == 2}
    if any(np.ndim(w) != 2 or len(w) == 0 for w in windows) or len(dims) != 1:
        raise ValueError("windows must be non-empty [L, D] arrays of one D")
    lengths = np.asarray([len(w) for w in windows], dtype=np.int64)
    cap, noise, subset_noise = draw_noise(lengths, rng, ratio=ratio, capacities=capacities)
    x = np.zeros((cap.tokens, dims.pop()), dtype=np.float32)
    np.concatenate(windows, axis=0, out=x[: lengths.sum()])
    slots = np.zeros(cap.seqs, dtype=np.int64)
    slots[: len(lengths)] = lengths
    scored = int(scored_count(lengths, ratio, decoder_fraction).sum())
    return PackedWindows(
        x, slots, noise, subset_noise, cap, int(lengths.sum()), scored, tuple(map(int, lengths))
    )


def draw_noise(
    lengths: Sequence[int] | np.ndarray,
    rng: np.random.Generator,
    *,
    ratio: float,
    capacities: Sequence[Capacity] | None = None,
) -> tuple[Capacity, np.ndarray, np.ndarray]:
    """The capacity :func:`pack_windows` packs windows of ``lengths`` tokens into and the mask
    noise it draws for them from ``rng``: ``(capacity, noise, subset_noise)``, both float32
    ``[capacity.tokens]`` uniform in [0, 1). Called alone, it replays a batch's draws without
    its data (a step done before a resume, :func:`lvmae.mae.engine.train_one_epoch`).

    Raises:
        ValueError: no capacity fits.
    """
    cap = pick_capacity(needed_capacity(lengths, ratio), capacities)
    noise = rng.random(cap.tokens, dtype=np.float32)
    subset_noise = rng.random(cap.tokens, dtype=np.float32)
    return cap, noise, subset_noise


def packed_mask(
    x: Tensor,
    lengths: Tensor,
    noise: Tensor,
    subset_noise: Tensor,
    *,
    kind: str,
    ratio: float,
    decoder_fraction: float = 1.0,
) -> tuple[Tensor, Tensor, Tensor]:
    """The mask of a packed batch, on its device, with fixed shapes (LV-MAE §3.3).

    Same rules and counts as :func:`lvmae.mae.masking.random_mask` /
    :func:`lvmae.mae.masking.semantic_mask` (and :func:`lvmae.mae.masking.decoder_subset` when
    ``decoder_fraction < 1``), per window of the packed rows.

    Args:
        x: float ``[N, D]`` packed tokens; lengths: long ``[S]``; noise, subset_noise: float
            ``[N]`` uniform in [0, 1).

    Returns:
        ``real`` bool ``[N]`` (rows of a window), ``visible`` bool ``[N]`` (real and not
        masked) and ``scored`` bool ``[N]`` (the masked rows the loss scores).

    Raises:
        ValueError: unknown ``kind``.
    """
    if kind not in MASK_KINDS:
        raise ValueError(f"unknown mask kind {kind!r}; expected one of {MASK_KINDS}")
    N, S = x.shape[0], lengths.shape[0]
    rows = torch.arange(N, device=x.device)
    ends = lengths.cumsum(0)
    first = torch.cat([ends - lengths, ends[-1:]])  # [S + 1]; the last: first unused row
    seq = torch.searchsorted(ends, rows, right=True)  # S on unused rows
    real = seq < S
    start = real & (rows == first[seq])  # each window's first token
    if kind == "random":
        key = noise.float()
    else:  # semantic: cos with the previous token; the first token of a window always kept
        xf = x.float()
        cos = torch.nn.functional.cosine_similarity(xf, torch.roll(xf, 1, dims=0), dim=-1)
        key = torch.where(start, float("-inf"), cos)
    key = torch.where(real, key, float("inf"))
    n_masked = masked_count(lengths, ratio)
    keep = torch.cat([lengths - n_masked, lengths.new_zeros(1)])
    visible = real & (rank_in_sequence(key, seq, first) < keep[seq])
    masked = real & ~visible
    if decoder_fraction >= 1.0:
        return real, visible, masked
    chosen = torch.cat([subset_count(n_masked, decoder_fraction), lengths.new_zeros(1)])
    key = torch.where(masked, subset_noise.float(), 2.0)  # masked rows rank first
    return real, visible, masked & (rank_in_sequence(key, seq, first) < chosen[seq])


def packed_loss(
    model: torch.nn.Module,
    x: Tensor,
    lengths: Tensor,
    noise: Tensor,
    subset_noise: Tensor,
    *,
    capacity: Capacity,
    kind: str,
    ratio: float,
    decoder_fraction: float = 1.0,
    loss: str = "mse",
    backend: str = "auto",
    host_lengths: tuple[tuple[int, ...], tuple[int, ...]] | None = None,
) -> tuple[Tensor, Tensor]:
    """Masked-reconstruction error of a packed batch: its sum over the scored tokens and their
    count, both float32 scalars on the device (no host synchronisation; the caller divides,
    by the count for a plain mean, or by a normaliser shared across micro-batches and
    workers). Under ``torch.autocast`` the model runs in the autocast dtype; the loss is
    float32 (:func:`lvmae.mae.losses.token_errors`).

    Args:
        model: an :class:`lvmae.mae.model.LVMAE` (or a module exposing ``forward_rows``).
        x, lengths, noise, subset_noise: the device tensors of a :class:`PackedWindows`.
        capacity: its :class:`Capacity` (the encoder and decoder row counts).
        kind, ratio, decoder_fraction: masking (:func:`packed_mask`).
        loss: ``"mse"`` (paper) or ``"cosine"``.
        backend, host_lengths: attention kernel (:meth:`lvmae.mae.model.LVMAE.forward_rows`).
    """
    _, visible, scored = packed_mask(
        x, lengths, noise, subset_noise, kind=kind, ratio=ratio, decoder_fraction=decoder_fraction
    )
    pred = model.forward_rows(
        x, lengths, visible, enc_rows=capacity.enc_rows, dec_rows=capacity.dec_rows,
        backend=backend, host_lengths=host_lengths,
    )  # fmt: skip
    errors = token_errors(pred, x, scored, loss)
    return errors.sum(), scored.sum().float()
