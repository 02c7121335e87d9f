"""The LV-MAE model: a masked-embedding autoencoder over a video's segment tokens.

Input is a batch of segment-embedding sequences ``x`` float ``[B, L, D_in]`` (one token =
one 5-s segment embedded by a frozen video encoder, rows L2-normalised) with ``real`` bool
``[B, L]`` (True for real tokens, False for [PAD]; real tokens are a prefix of each row) and
a ``mask`` bool ``[B, L]`` (True = masked, see :mod:`lvmae.mae.masking`).

The encoder sees a learned [CLS] token plus the visible tokens only; a shallower decoder
puts the visible latents back at their positions, fills every other real position with one
shared learned mask token and predicts the segment embeddings. Both sides use fixed 1-D
sin-cos positions and pre-norm transformer blocks built on
``torch.nn.functional.scaled_dot_product_attention`` with a key-padding mask, so [PAD]
tokens are never attended to and the outputs at real tokens do not depend on how much
padding a batch carries.

Compute follows the real tokens (the default, ``packed=True``): the tokens of every video are
packed into one flat ``[T, C]`` sequence (T = the batch's real tokens plus one [CLS] per
video), so every projection, MLP, norm and the output head runs on real tokens only, and
attention is block-diagonal: each video attends over its own contiguous rows (one
``scaled_dot_product_attention`` per video on views of the packed tensor), so nothing is
re-padded between blocks and attention costs ``Σ n²`` rather than ``B · max(n)²``.
``packed=False`` keeps the dense path (every video padded to the batch's longest, key
masks); both give the same outputs to float rounding.

Sources: Naiman et al., "LV-MAE", ICCV 2025, §3.2 (model), §4 (paper sizes: encoder width =
embedding width 1024, depth 32, 16 heads, MLP ratio 4; decoder 512 wide, 8 blocks, 16 heads);
MAE (He et al., CVPR 2022, ``models_mae.py``) for the layout and the initialisation.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

__all__ = [
    "ATTENTION_BACKENDS",
    "LVMAE",
    "PRESETS",
    "Block",
    "LVMAEConfig",
    "Packing",
    "RowLayout",
    "init_weights",
    "model_config",
    "sincos_positions",
    "varlen_available",
]

ATTENTION_BACKENDS = ("auto", "varlen", "padded", "split")
"""Attention kernels over a fixed-shape packed stack (:class:`RowLayout`): ``varlen``
(``torch.nn.attention.varlen.varlen_attn``, FlashAttention-2 on CUDA, bf16/fp16, no
attention dropout), ``padded`` (rows scattered into ``[S, max_len]`` with a key mask, one
``scaled_dot_product_attention``; any device and dtype, fixed shapes), ``split`` (one
``scaled_dot_product_attention`` per sequence over host-known lengths: the fastest on CPU,
not capturable in a CUDA graph). ``auto``: ``varlen`` where it applies, ``split`` when the
host lengths are known, else ``padded``."""


def varlen_available() -> bool:
    """Whether this torch ships ``torch.nn.attention.varlen.varlen_attn`` (2.10 and later)."""
    try:
        from torch.nn.attention.varlen import varlen_attn  # noqa: F401  # optional: torch >= 2.10
    except ImportError:
        return False
    return True

LN_EPS = 1e-6
"""LayerNorm epsilon of every norm in the model: MAE's ``partial(nn.LayerNorm, eps=1e-6)``,
also the authors' reference code's."""


@dataclass(frozen=True)
class LVMAEConfig:
    """Architecture of an :class:`LVMAE` (defaults: the paper's model, LV-MAE §4).

    Attributes:
        input_dim: width of the segment embeddings ``D_in`` (1024 for LanguageBind Huge).
        width: encoder width ``W``; an input projection exists only when it differs from
            ``input_dim``.
        depth: number of encoder blocks.
        heads: encoder attention heads (must divide ``width``).
        mlp_ratio: hidden width of each block's MLP as a multiple of the block width.
        decoder_width: decoder width; ``decoder_depth`` blocks with ``decoder_heads`` heads.
        max_tokens: token cap = length of the position tables (256 tokens ≈ 21 min of 5-s
            segments); longer windows must be split or the cap raised.
        dropout: dropout on attention weights and block outputs, in [0, 1).
        drop_path: maximum stochastic-depth rate (encoder blocks, rising linearly from 0).

    Raises:
        ValueError: non-positive sizes, heads not dividing a width, odd widths (sin-cos
            positions need even widths), or rates outside [0, 1).
    """

    input_dim: int = 1024
    width: int = 1024
    depth: int = 32
    heads: int = 16
    mlp_ratio: float = 4.0
    decoder_width: int = 512
    decoder_depth: int = 8
    decoder_heads: int = 16
    max_tokens: int = 256
    dropout: float = 0.0
    drop_path: float = 0.0

    def __post_init__(self) -> None:
        for name in ("input_dim", "width", "depth", "heads", "decoder_width", "decoder_depth",
                     "decoder_heads", "max_tokens"):  # fmt: skip
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"LVMAEConfig.{name} must be a positive int; got {value!r}")
        for width, heads, side in (
            (self.width, self.heads, "encoder"),
            (self.decoder_width, self.decoder_heads, "decoder"),
        ):
            if width % heads:
                raise ValueError(f"{side} width {width} is not divisible by {heads} heads")
            if width % 2:
                raise ValueError(f"{side} width {width} must be even (sin-cos positions)")
        if not self.mlp_ratio > 0:
            raise ValueError(f"LVMAEConfig.mlp_ratio must be > 0; got {self.mlp_ratio}")
        for name in ("dropout", "drop_path"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"LVMAEConfig.{name} must be in [0, 1); got {value}")

    def to_dict(self) -> dict[str, Any]:
        """The config as a JSON-able dict (for checkpoints and run manifests)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> LVMAEConfig:
        """Inverse of :meth:`to_dict`. Raises ``ValueError`` on unknown keys or bad values."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown LVMAEConfig keys {unknown}; known: {sorted(known)}")
        return cls(**d)


PRESETS: dict[str, dict[str, Any]] = {
    # LV-MAE §4: encoder width = embedding width (1024), 32 blocks, 16 heads, MLP ratio 4;
    # decoder 512 wide, 8 blocks, 16 heads.
    "paper": dict(width=1024, depth=32, heads=16, mlp_ratio=4.0,
                  decoder_width=512, decoder_depth=8, decoder_heads=16),
    "base": dict(width=512, depth=12, heads=8, mlp_ratio=4.0,
                 decoder_width=256, decoder_depth=4, decoder_heads=8),
    "small": dict(width=256, depth=6, heads=4, mlp_ratio=4.0,
                  decoder_width=128, decoder_depth=2, decoder_heads=4),
    "tiny": dict(width=64, depth=2, heads=4, mlp_ratio=4.0,
                 decoder_width=32, decoder_depth=1, decoder_heads=4),
}  # fmt: skip

# Presets whose encoder width is the embedding width (no input projection), as in the paper.
_WIDTH_FOLLOWS_INPUT = frozenset({"paper"})


def model_config(preset: str, **overrides: Any) -> LVMAEConfig:
    """An :class:`LVMAEConfig` from a named preset, with ``overrides`` winning.

    Presets (:data:`PRESETS`): ``paper`` (LV-MAE §4; its encoder width follows
    ``input_dim`` unless ``width`` is overridden), ``base``, ``small``, ``tiny`` (tests).

    Example: ``model_config("tiny", input_dim=64, max_tokens=512)``.

    Raises:
        ValueError: unknown preset (the message names the valid ones), unknown override
            keys or invalid values.
    """
    if preset not in PRESETS:
        raise ValueError(f"unknown model preset {preset!r}; valid presets: {sorted(PRESETS)}")
    values = dict(PRESETS[preset])
    if preset in _WIDTH_FOLLOWS_INPUT and "input_dim" in overrides and "width" not in overrides:
        values["width"] = overrides["input_dim"]
    values.update(overrides)
    return LVMAEConfig.from_dict(values)


def sincos_positions(length: int, dim: int) -> Tensor:
    """Fixed 1-D sin-cos position table ``[length, dim]`` (float32), MAE's 1-D formula.

    Position ``p`` (in tokens) maps to ``[sin(p·ω_k), cos(p·ω_k)]`` with
    ``ω_k = 1 / 10000^(k / (dim/2))`` for ``k < dim/2`` (He et al., 2022; LV-MAE §3.2).

    Raises:
        ValueError: ``dim`` odd or non-positive, or ``length`` negative.
    """
    if dim < 2 or dim % 2:
        raise ValueError(f"sin-cos positions need an even dim >= 2; got {dim}")
    if length < 0:
        raise ValueError(f"length must be >= 0; got {length}")
    omega = torch.arange(dim // 2, dtype=torch.float64) / (dim / 2.0)
    omega = 1.0 / 10000.0**omega
    angles = torch.arange(length, dtype=torch.float64)[:, None] * omega[None, :]
    return torch.cat([torch.sin(angles), torch.cos(angles)], dim=1).float()


def init_weights(module: nn.Module) -> None:
    """MAE's init of every submodule of ``module``, in registration order: xavier-uniform
    ``Linear`` weights, zero biases, ``LayerNorm`` weight 1 and bias 0 (He et al., CVPR 2022;
    the LV-MAE model and the probe heads)."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


@dataclass(frozen=True)
class RowLayout:
    """Layout of a fixed-shape packed stack: ``T`` rows holding ``S`` sequences one after the
    other (sequence ``s`` is rows ``cu_seqlens[s] : cu_seqlens[s + 1]``), then unused rows.

    Every tensor has a shape fixed by the capacity (``T``, ``S``), none depends on the data,
    and nothing here needs the host to read a device value: the stack can run inside a
    captured CUDA graph (:mod:`lvmae.mae.packing`).

    Attributes:
        cu_seqlens: int32 ``[S + 1]`` row offsets (empty sequences repeat an offset).
        max_len: the longest a sequence may be, in rows (a static bound: ``max_tokens + 1``).
        valid: bool ``[T]``, True at the rows of a sequence.
        sample: long ``[T]``, the sequence of each row (``S - 1`` on unused rows).
        n_seqs: ``S``.
        backend: one of :data:`ATTENTION_BACKENDS`.
        lengths: the ``S`` sequence lengths as host ints when known (for ``split``).
    """

    cu_seqlens: Tensor
    max_len: int
    valid: Tensor
    sample: Tensor
    n_seqs: int
    backend: str = "auto"
    lengths: tuple[int, ...] | None = None


class DropPath(nn.Module):
    """Stochastic depth: drop a residual branch per sample with probability ``p`` in training."""

    def __init__(self, p: float = 0.0) -> None:
        super().__init__()
        self.p = p

    def forward(self, x: Tensor, sample: Tensor | None = None) -> Tensor:
        """``x`` ``[B, ...]`` → same shape, rescaled by ``1/(1-p)`` where kept.

        With ``sample`` (long ``[T]``, the video of each row of a packed ``x`` ``[T, C]``,
        videos numbered ``0..B-1``; or a :class:`RowLayout`, whose ``S`` windows each get a
        draw without a host sync), one draw per video is shared by all its rows.
        """
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        if isinstance(sample, RowLayout):  # fixed-shape stack: S draws, no host sync
            draw = x.new_empty(sample.n_seqs).bernoulli_(keep).div_(keep)
            return x * draw[sample.sample][:, None]
        if sample is not None:
            n = int(sample.max()) + 1 if sample.numel() else 0
            draw = x.new_empty(n).bernoulli_(keep).div_(keep)
            return x * draw[sample][:, None]
        shape = (x.shape[0],) + (1,) * (x.dim() - 1)
        return x * x.new_empty(shape).bernoulli_(keep).div_(keep)


@dataclass(frozen=True)
class Packing:
    """Layout of a packed batch: B sequences of different lengths stored as one flat
    ``[T, C]`` tensor, sequence after sequence (row ``t`` of the flat tensor is slot
    ``index[t]`` of the padded ``[B * S]`` layout; sequence ``b`` is the contiguous rows
    ``offsets[b] : offsets[b] + lengths[b]``).

    Attributes:
        index: long ``[T]`` slots ``b * S + s`` of the flat rows in the padded layout.
        sample: long ``[T]``, the sequence ``b`` of each flat row.
        attend: bool ``[B, 1, 1, S]``, True at the slots that hold a row (the attention key
            mask of the padded layout; the packed attention itself does not need it).
        batch: ``B``; ``width``: ``S``, the longest sequence.
        lengths: rows of each sequence (Python ints, so the flat tensor splits into
            per-sequence views without a device sync per block).
        offsets: long ``[B]``, the first row of each sequence.
    """

    index: Tensor
    sample: Tensor
    attend: Tensor
    batch: int
    width: int
    lengths: tuple[int, ...] = ()
    offsets: Tensor | None = None

    @classmethod
    def from_valid(cls, valid: Tensor) -> Packing:
        """The packing of the True slots of ``valid`` bool ``[B, S]`` (row-major order)."""
        B, S = valid.shape
        flat = valid.reshape(-1)
        index = flat.nonzero().squeeze(1)
        counts = valid.sum(dim=1)
        offsets = counts.cumsum(0) - counts
        lengths = tuple(counts.tolist())
        return cls(index, index // max(S, 1), valid[:, None, None, :], B, S, lengths, offsets)

    @classmethod
    def from_counts(cls, counts: Tensor) -> Packing:
        """The packing of sequences of ``counts`` long ``[B]`` rows each (left-aligned)."""
        S = int(counts.max()) if counts.numel() else 0
        return cls.from_valid(torch.arange(S, device=counts.device)[None, :] < counts[:, None])

    def pad(self, x: Tensor) -> Tensor:
        """Flat ``[T, C]`` → padded ``[B, S, C]`` (zeros at empty slots; differentiable)."""
        out = x.new_zeros(self.batch * self.width, x.shape[-1])
        return out.index_copy(0, self.index, x).view(self.batch, self.width, x.shape[-1])

    def unpad(self, x: Tensor) -> Tensor:
        """Padded ``[B, S, C]`` → flat ``[T, C]`` (the inverse of :meth:`pad`)."""
        return x.reshape(self.batch * self.width, x.shape[-1]).index_select(0, self.index)


class Attention(nn.Module):
    """Multi-head self-attention with a key-padding mask (``scaled_dot_product_attention``)."""

    def __init__(self, dim: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.dropout = dropout
        self.proj_drop = nn.Dropout(dropout)

    def forward(
        self, x: Tensor, attend: Tensor | None, packing: Packing | RowLayout | None = None
    ) -> Tensor:
        """``x`` ``[B, S, C]``, ``attend`` bool ``[B, 1, 1, S]`` (True = key may be attended).

        Packed: ``x`` ``[T, C]`` laid out by ``packing`` (``attend`` is then ignored); the
        projections run on the T rows and attention on each sequence's own rows
        (block-diagonal attention, no padding, see :meth:`_packed`). With a
        :class:`RowLayout` the shapes are fixed by capacity (:meth:`_rows`).
        """
        qkv = self.qkv(x)
        p = self.dropout if self.training else 0.0
        if isinstance(packing, RowLayout):
            return self.proj_drop(self.proj(self._rows(qkv, packing, p)))
        if packing is not None:
            return self.proj_drop(self.proj(self._packed(qkv, packing.lengths, p)))
        B, S, C3 = qkv.shape
        C = C3 // 3
        q, k, v = qkv.view(B, S, 3, self.heads, C // self.heads).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(q, k, v, attn_mask=attend, dropout_p=p)
        return self.proj_drop(self.proj(out.transpose(1, 2).reshape(B, S, C)))

    def _packed(self, qkv: Tensor, lengths: tuple[int, ...], dropout_p: float) -> Tensor:
        """Block-diagonal attention over a packed ``qkv`` ``[T, 3C]`` → ``[T, C]``.

        Each sequence attends to its own rows only: ``scaled_dot_product_attention`` runs
        once per sequence on strided views of ``qkv`` (no copies, no key mask, no padding),
        so its cost is ``Σ n_b²`` rather than ``B · max(n_b)²``. On CPU this measured about
        half the time of re-padding to ``[B, S]`` with a key mask; jagged nested tensors
        (no CPU attention kernel) and ``flex_attention`` (no CPU backward) do not train on
        CPU in PyTorch 2.13 (``benchmarks/RESULTS.md``, Pre-training).
        """
        T, C = qkv.shape[0], qkv.shape[1] // 3
        qkv = qkv.view(T, 3, self.heads, C // self.heads)
        q, k, v = (t.split(lengths) for t in qkv.unbind(1))
        out = [
            F.scaled_dot_product_attention(
                qb.transpose(0, 1)[None], kb.transpose(0, 1)[None], vb.transpose(0, 1)[None],
                dropout_p=dropout_p,
            )[0].transpose(0, 1).reshape(-1, C)
            for qb, kb, vb in zip(q, k, v, strict=True)
        ]  # fmt: skip
        if len(out) == 1:
            return out[0]
        return torch.cat(out) if out else qkv.new_empty(T, C)


    def _rows(self, qkv: Tensor, layout: RowLayout, dropout_p: float) -> Tensor:
        """Block-diagonal attention over a fixed-shape packed ``qkv`` ``[T, 3C]`` → ``[T, C]``
        with the kernel of ``layout.backend`` (:data:`ATTENTION_BACKENDS`). Unused rows give
        zeros, and no gradient reaches them from the kernel (whatever it leaves there)."""
        T, C = qkv.shape[0], qkv.shape[1] // 3
        backend = layout.backend
        if backend == "auto":
            backend = _auto_backend(qkv, layout, dropout_p)
        if backend == "split":
            if layout.lengths is None:
                raise ValueError("the 'split' attention backend needs the host lengths")
            used = sum(layout.lengths)
            out = self._packed(qkv[:used], layout.lengths, dropout_p)
            return torch.cat([out, out.new_zeros(T - used, C)]) if used < T else out
        valid = layout.valid[:, None]
        # Unused rows: zero in, zero out, and a where() (not a product) so that whatever a
        # kernel leaves in their gradient stays out of the projections' weight gradients.
        qkv = torch.where(valid, qkv, 0.0).view(T, 3, self.heads, C // self.heads)
        q, k, v = qkv.unbind(1)  # [T, H, Dh] each
        if backend == "varlen":
            if dropout_p:
                raise ValueError("the 'varlen' attention backend has no attention dropout")
            from torch.nn.attention.varlen import varlen_attn  # optional: torch >= 2.10

            cu = layout.cu_seqlens
            out = varlen_attn(q, k, v, cu, cu, layout.max_len, layout.max_len)
        elif backend == "padded":
            out = _padded_attention(q, k, v, layout, dropout_p)
        else:
            raise ValueError(f"unknown attention backend {backend!r}; one of {ATTENTION_BACKENDS}")
        return torch.where(valid, out.reshape(T, C), 0.0)


def _auto_backend(qkv: Tensor, layout: RowLayout, dropout_p: float) -> str:
    """``varlen`` on CUDA in bf16/fp16 without attention dropout (where torch has it), else
    ``split`` when the host lengths are known, else ``padded``."""
    if (
        qkv.is_cuda
        and qkv.dtype in (torch.bfloat16, torch.float16)
        and not dropout_p
        and varlen_available()
    ):
        return "varlen"
    return "split" if layout.lengths is not None else "padded"


def _padded_attention(q: Tensor, k: Tensor, v: Tensor, layout: RowLayout, dropout_p: float):
    """Attention of packed ``q, k, v`` ``[T, H, Dh]`` through a padded ``[S, H, M, Dh]`` copy
    (``M = layout.max_len``) with a key mask: fixed shapes, any device. Returns ``[T, H, Dh]``
    (rows of no sequence: unspecified but finite)."""
    T, H, Dh = q.shape
    S, M = layout.n_seqs, layout.max_len
    start = layout.cu_seqlens[:-1].long()
    rows = torch.arange(T, device=q.device)
    slot = layout.sample * M + (rows - start[layout.sample]).clamp(0, M - 1)
    slot = torch.where(layout.valid, slot, S * M)  # unused rows: a spare slot, dropped

    def pad(t: Tensor) -> Tensor:
        out = t.new_zeros(S * M + 1, H, Dh).index_copy(0, slot, t)[: S * M]
        return out.view(S, M, H, Dh).transpose(1, 2)

    lengths = layout.cu_seqlens[1:] - layout.cu_seqlens[:-1]
    attend = torch.arange(M, device=q.device)[None, :] < lengths[:, None]
    attend[:, 0] = True  # empty sequences attend to a zero key, not to nothing (no NaN)
    out = F.scaled_dot_product_attention(
        pad(q), pad(k), pad(v), attn_mask=attend[:, None, None, :], dropout_p=dropout_p
    )
    out = out.transpose(1, 2).reshape(S * M, H, Dh)
    return out.index_select(0, slot.clamp(max=S * M - 1))


class Block(nn.Module):
    """Pre-norm transformer block: ``x + attn(norm(x))``, then ``x + mlp(norm(x))``."""

    def __init__(
        self, dim: int, heads: int, mlp_ratio: float, dropout: float = 0.0, drop_path: float = 0.0
    ) -> None:
        super().__init__()
        hidden = int(dim * mlp_ratio)
        self.norm1 = nn.LayerNorm(dim, eps=LN_EPS)
        self.attn = Attention(dim, heads, dropout)
        self.norm2 = nn.LayerNorm(dim, eps=LN_EPS)
        self.mlp = nn.Sequential(
            nn.Linear(dim, hidden),
            nn.GELU(),
            nn.Dropout(dropout),
            nn.Linear(hidden, dim),
            nn.Dropout(dropout),
        )
        self.drop_path = DropPath(drop_path)

    def forward(
        self, x: Tensor, attend: Tensor | None, packing: Packing | RowLayout | None = None
    ) -> Tensor:
        """``x`` ``[B, S, C]``, ``attend`` bool ``[B, 1, 1, S]`` → ``[B, S, C]``; or packed
        ``x`` ``[T, C]`` with its ``packing`` → ``[T, C]`` (``attend`` unused, attention per
        sequence; stochastic depth per video)."""
        if isinstance(packing, RowLayout):
            sample = packing
        else:
            sample = packing.sample if packing is not None else None
        x = x + self.drop_path(self.attn(self.norm1(x), attend, packing), sample)
        return x + self.drop_path(self.mlp(self.norm2(x)), sample)

    def rows(self, x: Tensor, layout: RowLayout) -> Tensor:
        """The block over a fixed-shape packed stack ``x`` ``[T, C]`` (:class:`RowLayout`):
        what :meth:`LVMAE.forward_rows` calls, and what :class:`lvmae.mae.step.PackedStep`
        replaces with its compiled version (so the ``[B, L]`` paths stay eager)."""
        return self.forward(x, None, layout)


def _key_mask(valid: Tensor) -> Tensor:
    """bool ``[B, S]`` of valid tokens, with a leading always-valid [CLS] → ``[B, 1, 1, 1+S]``."""
    cls = torch.ones_like(valid[:, :1])
    return torch.cat([cls, valid], dim=1)[:, None, None, :]


class LVMAE(nn.Module):
    """LV-MAE masked-embedding autoencoder (Naiman et al., ICCV 2025, §3.2; MAE layout).

    Encoder: input projection (``Linear(input_dim, width)``, or identity when equal), fixed
    sin-cos positions, a learned [CLS] token, ``depth`` pre-norm blocks over [CLS] + the
    visible tokens, final LayerNorm. Decoder: ``Linear(width, decoder_width)``, visible
    latents scattered back to their positions, one shared learned mask token at every other
    real position, fixed sin-cos positions, ``decoder_depth`` blocks over [CLS] + real tokens,
    LayerNorm, ``Linear(decoder_width, input_dim)`` head. [PAD] tokens are excluded from all
    attention through key masks. Every parameter takes part in every :meth:`forward` (safe for
    DistributedDataParallel without ``find_unused_parameters``).

    Windows longer than ``config.max_tokens`` raise ``ValueError``.
    """

    def __init__(self, config: LVMAEConfig) -> None:
        super().__init__()
        self.config = config
        c = config
        self.input_proj: nn.Module = (
            nn.Linear(c.input_dim, c.width) if c.width != c.input_dim else nn.Identity()
        )
        self.cls_token = nn.Parameter(torch.zeros(1, 1, c.width))
        self.register_buffer("pos_embed", sincos_positions(c.max_tokens, c.width), persistent=False)
        # Plain floats (not torch.linspace) so the model also builds on the meta device.
        rates = [c.drop_path * i / max(c.depth - 1, 1) for i in range(c.depth)]
        if c.depth == 1:
            rates = [c.drop_path]
        self.blocks = nn.ModuleList(
            Block(c.width, c.heads, c.mlp_ratio, c.dropout, rate) for rate in rates
        )
        self.norm = nn.LayerNorm(c.width, eps=LN_EPS)

        self.decoder_embed = nn.Linear(c.width, c.decoder_width)
        self.mask_token = nn.Parameter(torch.zeros(1, 1, c.decoder_width))
        self.register_buffer(
            "decoder_pos_embed", sincos_positions(c.max_tokens, c.decoder_width), persistent=False
        )
        self.decoder_blocks = nn.ModuleList(
            Block(c.decoder_width, c.decoder_heads, c.mlp_ratio, c.dropout)
            for _ in range(c.decoder_depth)
        )
        self.decoder_norm = nn.LayerNorm(c.decoder_width, eps=LN_EPS)
        self.head = nn.Linear(c.decoder_width, c.input_dim)
        self._init_weights()

    def _init_weights(self) -> None:
        """MAE init: tokens N(0, 0.02), then :func:`init_weights`."""
        nn.init.normal_(self.cls_token, std=0.02)
        nn.init.normal_(self.mask_token, std=0.02)
        init_weights(self)

    def _check_inputs(self, x: Tensor | None, real: Tensor, mask: Tensor | None = None) -> None:
        if real.dim() != 2 or real.dtype != torch.bool:
            raise ValueError(f"real must be bool [B, L]; got {real.dtype} {tuple(real.shape)}")
        B, L = real.shape
        if real.shape[1] > self.config.max_tokens:
            raise ValueError(
                f"window of {L} tokens exceeds max_tokens={self.config.max_tokens}: split "
                "windows longer than the token cap, or build the model with a larger max_tokens"
            )
        if x is not None and (x.dim() != 3 or x.shape != (B, L, self.config.input_dim)):
            raise ValueError(
                f"x must be [B, L, input_dim] = [{B}, {L}, {self.config.input_dim}]; "
                f"got {tuple(x.shape)}"
            )
        if mask is not None and (mask.shape != real.shape or mask.dtype != torch.bool):
            raise ValueError(
                f"mask must be bool {tuple(real.shape)}; got {mask.dtype} {tuple(mask.shape)}"
            )

    def forward_encoder(
        self, x: Tensor, real: Tensor, mask: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Encode [CLS] + the visible tokens (real and not masked).

        Positions are added before gathering, so every token keeps its own position. Videos
        have different visible counts; they are gathered (in time order) and padded to the
        batch's largest count ``V``, the padding slots excluded through the key mask.

        Args:
            x: float ``[B, L, input_dim]`` segment embeddings, ``L <= max_tokens``.
            real: bool ``[B, L]``, True for real tokens.
            mask: bool ``[B, L]``, True = masked (hidden from the encoder).

        Returns:
            ``latent`` ``[B, 1+V, W]`` after the final norm ([CLS] first; rows of invalid
            slots are unspecified), ``keep_index`` long ``[B, V]`` (token positions of the
            gathered tokens) and ``keep_valid`` bool ``[B, V]``.

        Raises:
            ValueError: ``L > max_tokens`` or mismatched shapes/dtypes.
        """
        self._check_inputs(x, real, mask)
        B, L = real.shape
        tokens = self.input_proj(x) + self.pos_embed[:L]  # [B, L, W]
        visible = real & ~mask
        n_visible = visible.sum(dim=1)
        V = int(n_visible.max()) if B else 0
        # Visible tokens first, in time order (stable sort on "not visible").
        order = torch.sort((~visible).to(torch.uint8), dim=1, stable=True).indices
        keep_index = order[:, :V]
        keep_valid = torch.arange(V, device=real.device)[None, :] < n_visible[:, None]
        kept = tokens.gather(1, keep_index[..., None].expand(-1, -1, tokens.shape[-1]))
        h = torch.cat([self.cls_token.expand(B, -1, -1).to(kept.dtype), kept], dim=1)
        attend = _key_mask(keep_valid)
        for block in self.blocks:
            h = block(h, attend)
        return self.norm(h), keep_index, keep_valid

    def forward_decoder(
        self, latent: Tensor, keep_index: Tensor, keep_valid: Tensor, real: Tensor
    ) -> Tensor:
        """Reconstruct every token from the encoder's latents.

        Args:
            latent: ``[B, 1+V, W]`` from :meth:`forward_encoder`.
            keep_index: long ``[B, V]`` positions of the visible latents.
            keep_valid: bool ``[B, V]``, which of the ``V`` slots hold a visible token.
            real: bool ``[B, L]``, True for real tokens.

        Returns:
            ``pred`` ``[B, L, input_dim]``: predicted segment embeddings (values at pad
            positions are unspecified).

        Raises:
            ValueError: ``L > max_tokens`` or a bad ``real``.
        """
        self._check_inputs(None, real)
        B, L = real.shape
        h = self.decoder_embed(latent)  # [B, 1+V, Dd]
        cls, kept = h[:, :1], h[:, 1:]
        Dd = h.shape[-1]
        # Invalid slots scatter to a spare position L, dropped afterwards.
        target = torch.where(keep_valid, keep_index, torch.full_like(keep_index, L))
        full = self.mask_token.to(kept.dtype).expand(B, L + 1, Dd)
        full = full.scatter(1, target[..., None].expand(-1, -1, Dd), kept)[:, :L]
        full = full + self.decoder_pos_embed[:L]
        h = torch.cat([cls, full.to(cls.dtype)], dim=1)
        attend = _key_mask(real)
        for block in self.decoder_blocks:
            h = block(h, attend)
        return self.head(self.decoder_norm(h))[:, 1:]

    def _encode_packed(self, x: Tensor, visible: Tensor) -> tuple[Tensor, Packing, Tensor]:
        """Packed encoder over [CLS] + each video's ``visible`` tokens (bool ``[B, L]``).

        Returns the flat latents ``[T, W]`` after the final norm (per video: [CLS], then its
        visible tokens in time order), their :class:`Packing` and ``is_cls`` bool ``[T]``.
        """
        B, _ = visible.shape
        packing = Packing.from_counts(1 + visible.sum(dim=1))
        is_cls = torch.zeros(len(packing.index), dtype=torch.bool, device=visible.device)
        is_cls[packing.offsets] = True
        b, t = visible.nonzero(as_tuple=True)  # row-major: each video's tokens in time order
        tokens = self.input_proj(x[b, t]) + self.pos_embed[t]  # projections on visible rows
        cls = self.cls_token[0].to(tokens.dtype).expand(B, -1)
        rows = torch.cat([packing.offsets, (~is_cls).nonzero().squeeze(1)])
        h = tokens.new_empty(len(packing.index), tokens.shape[-1])
        h = h.index_copy(0, rows, torch.cat([cls, tokens]))
        for block in self.blocks:
            h = block(h, None, packing)
        return self.norm(h), packing, is_cls

    def _forward_packed(self, x: Tensor, real: Tensor, mask: Tensor) -> Tensor:
        """:meth:`forward` with compute on real tokens only (see the module docstring).

        Decoder layout: per video, [CLS] then its real tokens in time order (row
        ``offsets[b] + 1 + rank``), so every index below is closed-form and each gather or
        scatter is an ``index_copy`` / ``index_select`` whose backward is the other one.
        """
        B, L = real.shape
        visible = real & ~mask
        latent, enc, enc_cls = self._encode_packed(x, visible)
        h = self.decoder_embed(latent)  # [T_enc, Dd], real rows only
        Dd = h.shape[-1]
        dec = Packing.from_counts(1 + real.sum(dim=1))
        rank = real.long().cumsum(dim=1) - 1  # rank of each real token within its video
        vb, vt = visible.nonzero(as_tuple=True)
        target = torch.empty(len(enc.index), dtype=torch.long, device=real.device)
        target[enc_cls] = dec.offsets
        target[~enc_cls] = dec.offsets[vb] + 1 + rank[vb, vt]
        rb, rt = real.nonzero(as_tuple=True)
        token_rows = dec.offsets[rb] + 1 + rank[rb, rt]
        pos = torch.zeros(len(dec.index), Dd, device=real.device)
        pos[token_rows] = self.decoder_pos_embed[rt]
        # One shared mask token everywhere, then [CLS] and the visible latents at their rows;
        # positions on the token rows (not on [CLS]), as in the dense path.
        full = self.mask_token[0].to(h.dtype).expand(len(dec.index), Dd)
        h = (full.index_copy(0, target, h) + pos).to(h.dtype)
        for block in self.decoder_blocks:
            h = block.rows(h, dec)
        # The head runs on every row ([CLS] too: B extra rows instead of a gather whose
        # backward is a slow scatter-add); rows go to slots b * (1 + L) + (0 | 1 + t).
        out = self.head(self.decoder_norm(h))  # [T_dec, D_in]
        slot = torch.empty(len(dec.index), dtype=torch.long, device=real.device)
        slot[dec.offsets] = torch.arange(B, device=real.device) * (L + 1)
        slot[token_rows] = rb * (L + 1) + 1 + rt
        pred = out.new_zeros(B * (L + 1), out.shape[-1]).index_copy(0, slot, out)
        return pred.view(B, L + 1, out.shape[-1])[:, 1:]

    def forward_rows(
        self,
        x: Tensor,
        lengths: Tensor,
        visible: Tensor,
        *,
        enc_rows: int,
        dec_rows: int,
        backend: str = "auto",
        host_lengths: tuple[tuple[int, ...], tuple[int, ...]] | None = None,
    ) -> Tensor:
        """Masked reconstruction of a fixed-shape packed batch (the training step's forward).

        The windows' real tokens are stored row after row in ``x`` (window ``s`` holds rows
        ``sum(lengths[:s]) : sum(lengths[:s + 1])``, in time order), then unused rows up to
        the capacity ``N``. The encoder runs over ``enc_rows`` rows (per window: [CLS], then
        its visible tokens in time order; then unused rows), the decoder over ``dec_rows``
        rows (per window: [CLS], then all its tokens, the mask token at masked ones). Every
        shape is fixed by ``N``, ``S``, ``enc_rows`` and ``dec_rows``, every index is computed
        on the device, and nothing reads a device value on the host, so one step can be
        captured in a CUDA graph and replayed for any batch that fits these capacities. At
        real rows the result equals :meth:`forward` on the same windows and mask (float
        rounding aside; LV-MAE §3.2).

        Args:
            x: float ``[N, input_dim]`` packed segment embeddings (unused rows: any finite).
            lengths: long ``[S]`` tokens of each window, each ``<= max_tokens`` (0: no window).
            visible: bool ``[N]``, True at the real rows the encoder sees (not masked).
            enc_rows: encoder capacity, at least ``sum(visible) + (number of windows)``.
            dec_rows: decoder capacity, at least ``sum(lengths) + (number of windows)``.
            backend: attention kernel, one of :data:`ATTENTION_BACKENDS`.
            host_lengths: the encoder's and decoder's per-window row counts as host ints
                (only the ``split`` backend needs them).

        Returns:
            ``pred`` float ``[N, input_dim]``: the reconstruction of every row (unused rows:
            unspecified but finite).

        Raises:
            ValueError: unknown ``backend``; ``split`` without ``host_lengths``. Capacities
            that are too small are not checked (that would need a host sync): the caller
            (:func:`lvmae.mae.packing.pack_windows`) sizes them.
        """
        N, S = x.shape[0], lengths.shape[0]
        device = x.device
        rows = torch.arange(N, device=device)
        ends = lengths.cumsum(0)
        seq = torch.searchsorted(ends, rows, right=True)  # [N]; S on unused rows
        real = seq < S
        seq_c = seq.clamp(max=max(S - 1, 0))
        t = torch.where(real, rows - (ends - lengths)[seq_c], 0)  # token position in window
        vis = visible & real
        occupied = lengths > 0

        # encoder rows: per window [CLS] then its visible tokens
        vis_long = vis.long()
        n_vis = torch.zeros(S, dtype=torch.long, device=device).index_add(0, seq_c, vis_long)
        enc_len = torch.where(occupied, n_vis + 1, 0)
        enc_ends = enc_len.cumsum(0)
        enc_off = enc_ends - enc_len
        before = n_vis.cumsum(0) - n_vis  # visible rows of the windows before each window
        vis_rank = vis_long.cumsum(0) - vis_long - before[seq_c]
        enc_row = torch.where(vis, enc_off[seq_c] + 1 + vis_rank, enc_rows)  # spare: dropped
        cls_row = torch.where(occupied, enc_off, enc_rows)
        tokens = self.input_proj(x) + self.pos_embed[t]
        if torch.is_autocast_enabled(device.type):  # the residual stream in the autocast dtype
            # (bf16 on CUDA: half the activation memory; the loss target stays float32)
            tokens = tokens.to(torch.get_autocast_dtype(device.type))
        cls = self.cls_token[0].to(tokens.dtype).expand(S, -1)
        h = tokens.new_zeros(enc_rows + 1, tokens.shape[-1])
        h = h.index_copy(0, enc_row, tokens).index_copy(0, cls_row, cls)[:enc_rows]
        enc = self._layout(enc_ends, enc_rows, backend, host_lengths and host_lengths[0])
        for block in self.blocks:
            h = block.rows(h, enc)
        h = self.decoder_embed(self.norm(h))  # [E, Dd]
        Dd = h.shape[-1]

        # decoder rows: per window [CLS] then every token
        dec_len = torch.where(occupied, lengths + 1, 0)
        dec_ends = dec_len.cumsum(0)
        dec_off = dec_ends - dec_len
        dec_row = torch.where(real, dec_off[seq_c] + 1 + t, dec_rows)
        h = torch.cat([h, h.new_zeros(1, Dd)])  # row enc_rows: the spare row, zeros
        full = self.mask_token[0].to(h.dtype).expand(dec_rows + 1, Dd)
        to_row = torch.where(vis, dec_row, dec_rows)
        full = full.index_copy(0, to_row, h.index_select(0, enc_row))
        to_row = torch.where(occupied, dec_off, dec_rows)
        full = full.index_copy(0, to_row, h.index_select(0, cls_row))
        pos = torch.zeros(dec_rows + 1, Dd, device=device).index_copy(
            0, dec_row, self.decoder_pos_embed[t]
        )
        h = (full + pos).to(h.dtype)[:dec_rows]
        dec = self._layout(dec_ends, dec_rows, backend, host_lengths and host_lengths[1])
        for block in self.decoder_blocks:
            h = block.rows(h, dec)
        out = self.head(self.decoder_norm(h))  # [Dr, D_in]
        return out.index_select(0, torch.where(real, dec_row, 0))

    def _layout(
        self, ends: Tensor, n_rows: int, backend: str, lengths: tuple[int, ...] | None
    ) -> RowLayout:
        """The :class:`RowLayout` of ``n_rows`` rows holding windows ending at ``ends``."""
        if backend not in ATTENTION_BACKENDS:
            raise ValueError(f"unknown attention backend {backend!r}; one of {ATTENTION_BACKENDS}")
        S = ends.shape[0]
        rows = torch.arange(n_rows, device=ends.device)
        cu = torch.cat([ends.new_zeros(1), ends]).to(torch.int32)
        valid = rows < ends[-1] if S else torch.zeros_like(rows, dtype=torch.bool)
        sample = torch.searchsorted(ends, rows, right=True).clamp(max=max(S - 1, 0))
        return RowLayout(cu, self.config.max_tokens + 1, valid, sample, S, backend, lengths)

    def forward(self, x: Tensor, real: Tensor, mask: Tensor, *, packed: bool = True) -> Tensor:
        """Masked reconstruction: ``x`` ``[B, L, input_dim]``, ``real``/``mask`` bool ``[B, L]``.

        Returns ``pred`` ``[B, L, input_dim]`` (pads unspecified: zeros when ``packed``);
        compare it with the L2-normalised target on masked, real tokens
        (:func:`lvmae.mae.losses.reconstruction_loss`). ``packed=True`` (default) runs every
        projection and MLP on the real tokens only; ``packed=False`` is the dense path over
        the batch padded to its longest video (:meth:`forward_encoder`,
        :meth:`forward_decoder`). Both give the same predictions at real tokens to float
        rounding.

        Raises:
            ValueError: ``L > max_tokens`` or mismatched shapes/dtypes.
        """
        if packed:
            self._check_inputs(x, real, mask)
            return self._forward_packed(x, real, mask)
        latent, keep_index, keep_valid = self.forward_encoder(x, real, mask)
        return self.forward_decoder(latent, keep_index, keep_valid, real)

    def encode(self, x: Tensor, real: Tensor, *, packed: bool = True) -> tuple[Tensor, Tensor]:
        """Encode whole windows without masking (for video embeddings and probes, LV-MAE §4).

        Args:
            x: float ``[B, L, input_dim]`` segment embeddings, ``L <= max_tokens``.
            real: bool ``[B, L]``, True for real tokens.
            packed: compute on real tokens only (default); ``False``: the dense path.

        Returns:
            ``cls`` ``[B, W]`` and ``tokens`` ``[B, L, W]``, both after the final norm;
            ``tokens`` are zeros at pad positions.

        Raises:
            ValueError: ``L > max_tokens`` or mismatched shapes/dtypes.
        """
        B, L = real.shape
        if packed:
            self._check_inputs(x, real)
            latent, _, is_cls = self._encode_packed(x, real)
            rb, rt = real.nonzero(as_tuple=True)
            W = latent.shape[-1]
            tokens = latent.new_zeros(B * L, W).index_copy(0, rb * L + rt, latent[~is_cls])
            return latent[is_cls], tokens.view(B, L, W)
        latent, keep_index, keep_valid = self.forward_encoder(x, real, torch.zeros_like(real))
        W = latent.shape[-1]
        target = torch.where(keep_valid, keep_index, torch.full_like(keep_index, L))
        tokens = latent.new_zeros(B, L + 1, W)
        tokens = tokens.scatter(1, target[..., None].expand(-1, -1, W), latent[:, 1:])[:, :L]
        return latent[:, 0], tokens
