"""Probe heads on frozen long-video features (LV-MAE §8).

- :func:`mean_pool`: the linear probe's video feature, the mean of the frozen encoder's
  outputs over real tokens.
- :class:`LinearProbe`: ``Linear(W, n_out)`` on the mean-pooled features (the paper's
  linear probe).
- :class:`AttentiveProbe`: the paper's attentive probe, one trainable transformer block
  over the frozen encoder's [CLS] + its tokens, a LayerNorm and a linear classifier on the
  [CLS] output (a learned [CLS] as an option).
- :class:`PoolerProbe`: V-JEPA's attentive pooler (learned query, cross-attention).
- :class:`TransformerBaseline`: the paper's "LanguageBind-Transformer" row, a small
  transformer trained from scratch on the raw segment embeddings (no LV-MAE).
- :func:`build_probe`: the head for a :class:`~lvmae.config.ProbeConfig`.

Batches of token sequences are ``tokens`` float ``[B, L, W]`` with ``real`` bool ``[B, L]``
(True = real token, False = [PAD]; pads are excluded from attention), padded per batch like
:func:`lvmae.mae.sequences.collate`.

Sources: Naiman et al., "LV-MAE", ICCV 2025, §8 and Tables 6–8 (the authors' public
``test_ap_movie_clip.py`` for details the paper leaves open); Bardes et al., "V-JEPA", 2024
(attentive pooler); docs/design.md "Reference facts".
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lvmae.config import CLS_SOURCES, ProbeConfig
from lvmae.mae.model import Block, sincos_positions

__all__ = [
    "AttentiveProbe",
    "LinearProbe",
    "PoolerProbe",
    "TransformerBaseline",
    "build_probe",
    "mean_pool",
]


def mean_pool(tokens: Tensor, real: Tensor) -> Tensor:
    """Mean of ``tokens`` ``[B, L, W]`` over the real positions of ``real`` bool ``[B, L]``.

    This is the linear probe's video feature (LV-MAE §8): the mean of the frozen encoder's
    outputs over real tokens, [PAD] excluded. Returns ``[B, W]``.

    Raises:
        ValueError: mismatched shapes or a row with no real token.
    """
    if tokens.dim() != 3 or real.shape != tokens.shape[:2]:
        raise ValueError(
            f"tokens must be [B, L, W] and real [B, L]; got {tuple(tokens.shape)} and "
            f"{tuple(real.shape)}"
        )
    counts = real.sum(dim=1, keepdim=True)
    if bool((counts == 0).any()):
        raise ValueError("every row needs at least one real token to mean-pool")
    weights = real.to(tokens.dtype)[..., None]
    return (tokens * weights).sum(dim=1) / counts.to(tokens.dtype)


def _check_tokens(tokens: Tensor, real: Tensor, width: int) -> None:
    if tokens.dim() != 3 or tokens.shape[-1] != width:
        raise ValueError(f"tokens must be [B, L, {width}]; got {tuple(tokens.shape)}")
    if real.dtype != torch.bool or real.shape != tokens.shape[:2]:
        raise ValueError(
            f"real must be bool {tuple(tokens.shape[:2])}; got {real.dtype} {tuple(real.shape)}"
        )


def _init_weights(module: nn.Module) -> None:
    """MAE init: xavier-uniform Linear, zero biases, LayerNorm 1/0."""
    for m in module.modules():
        if isinstance(m, nn.Linear):
            nn.init.xavier_uniform_(m.weight)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
        elif isinstance(m, nn.LayerNorm):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


def _check_heads(width: int, heads: int) -> None:
    if width < 1 or heads < 1 or width % heads:
        raise ValueError(f"width {width} must be a positive multiple of heads {heads}")


class LinearProbe(nn.Module):
    """The paper's linear probe: ``Linear(W, n_out)`` on the mean-pooled frozen features.

    The mean over real tokens (:func:`mean_pool`) is computed once, when features are cached;
    the probe takes that ``pooled`` ``[B, W]`` vector. Optional dropout before the linear
    layer (0 in the paper).
    """

    input_kind = "pooled"
    wants_cls = False

    def __init__(
        self, width: int, n_out: int, *, dropout: float = 0.0, batch_norm: bool = False
    ) -> None:
        super().__init__()
        self.in_features = width
        # MAE's linear probe (He et al., CVPR 2022, §A.2): BatchNorm without affine before the
        # head, i.e. features standardised with batch statistics — still a linear classifier
        # at test time. Off in LV-MAE's recipe.
        self.norm = nn.BatchNorm1d(width, affine=False) if batch_norm else nn.Identity()
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(width, n_out)
        _init_weights(self)

    def forward(self, pooled: Tensor) -> Tensor:
        """``pooled`` ``[B, W]`` → ``[B, n_out]`` logits (or regression outputs)."""
        if pooled.dim() != 2 or pooled.shape[1] != self.in_features:
            raise ValueError(f"pooled must be [B, {self.in_features}]; got {tuple(pooled.shape)}")
        return self.head(self.dropout(self.norm(pooled)))


class AttentiveProbe(nn.Module):
    """The paper's attentive probe: one transformer block over [CLS] + tokens, a LayerNorm,
    and a linear classifier on the [CLS] output (LV-MAE §8).

    The block is :class:`lvmae.mae.model.Block` (pre-norm, ``heads`` heads, MLP ratio
    ``mlp_ratio``); [PAD] tokens are masked out of attention, so outputs do not depend on
    how much padding a batch carries. The [CLS] slot is filled by:

    - ``cls_source="encoder"`` (default, the paper's): the frozen encoder's own [CLS]
      output, passed as ``forward(..., cls=...)``; the block adapts it while attending to
      the encoder's token outputs, and its [CLS] output feeds the classifier (LV-MAE §8,
      Table 7; the authors' public ``test_ap_movie_clip.py`` feeds the encoder's whole
      output, [CLS] first, to the block). Results call it ``attentive``.
    - ``cls_source="learned"``: a new learned token prepended to the frozen tokens; needs
      only the cached token sequence. Results call it ``attentive-learned``.

    The probe adds no positions: the frozen LV-MAE tokens already carry the encoder's.
    ``dropout`` applies inside the block and before the classifier (0 in the paper). The
    authors' code uses 8 heads at width 1024 (the default here).
    """

    input_kind = "tokens"

    def __init__(
        self,
        width: int,
        n_out: int,
        *,
        heads: int = 8,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
        cls_source: str = "encoder",
    ) -> None:
        super().__init__()
        _check_heads(width, heads)
        if cls_source not in CLS_SOURCES:
            raise ValueError(f"cls_source must be one of {CLS_SOURCES}; got {cls_source!r}")
        self.in_features = width
        self.cls_source = cls_source
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width)) if cls_source == "learned" else None
        self.block = Block(width, heads, mlp_ratio, dropout)
        self.norm = nn.LayerNorm(width)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(width, n_out)
        _init_weights(self)
        if self.cls_token is not None:
            nn.init.normal_(self.cls_token, std=0.02)

    @property
    def wants_cls(self) -> bool:
        """True when :meth:`forward` needs the encoder's [CLS] (``cls_source="encoder"``)."""
        return self.cls_source == "encoder"

    def forward(self, tokens: Tensor, real: Tensor, cls: Tensor | None = None) -> Tensor:
        """Classify token sequences.

        Args:
            tokens: float ``[B, L, W]`` frozen encoder outputs (values at pads are ignored).
            real: bool ``[B, L]``, True at real tokens.
            cls: float ``[B, W]`` the encoder's [CLS]; required with ``cls_source="encoder"``,
                must be None otherwise.

        Returns:
            ``[B, n_out]``.

        Raises:
            ValueError: mismatched shapes, or ``cls`` missing / unexpected.
        """
        _check_tokens(tokens, real, self.in_features)
        B = tokens.shape[0]
        if self.cls_token is not None:
            if cls is not None:
                raise ValueError("this probe learns its own [CLS] (cls_source='learned')")
            first = self.cls_token.expand(B, -1, -1).to(tokens.dtype)
        else:
            if cls is None or cls.shape != (B, self.in_features):
                got = None if cls is None else tuple(cls.shape)
                raise ValueError(
                    f"cls_source='encoder' needs the encoder's cls [B, W] = "
                    f"[{B}, {self.in_features}]; got {got}"
                )
            first = cls[:, None].to(tokens.dtype)
        x = torch.cat([first, tokens], dim=1)
        attend = torch.cat([real.new_ones(B, 1), real], dim=1)[:, None, None, :]
        x = self.block(x, attend)
        return self.head(self.dropout(self.norm(x[:, 0])))


class PoolerProbe(nn.Module):
    """V-JEPA's attentive pooler (Bardes et al., 2024) as a probe on frozen tokens.

    ``num_queries`` learned queries cross-attend to the LayerNorm-ed tokens ([PAD] keys
    masked out), ``q = q + proj(attn(q, norm(x)))`` then ``q = q + mlp(norm(q))``, as in
    V-JEPA's ``CrossAttentionBlock``; the queries' outputs are averaged, LayerNorm-ed, and a
    linear layer gives the outputs. ``dropout`` applies on the attention weights, in the MLP
    and before the linear layer. Every row needs at least one real token.
    """

    input_kind = "tokens"
    wants_cls = False

    def __init__(
        self,
        width: int,
        n_out: int,
        *,
        heads: int = 8,
        mlp_ratio: float = 4.0,
        num_queries: int = 1,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        _check_heads(width, heads)
        if num_queries < 1:
            raise ValueError(f"num_queries must be >= 1; got {num_queries}")
        self.in_features = width
        self.heads = heads
        self.attn_dropout = dropout
        self.queries = nn.Parameter(torch.zeros(1, num_queries, width))
        self.norm_kv = nn.LayerNorm(width)
        self.q = nn.Linear(width, width)
        self.kv = nn.Linear(width, 2 * width)
        self.proj = nn.Linear(width, width)
        hidden = int(width * mlp_ratio)
        self.norm_mlp = nn.LayerNorm(width)
        self.mlp = nn.Sequential(
            nn.Linear(width, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, width)
        )
        self.norm = nn.LayerNorm(width)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(width, n_out)
        _init_weights(self)
        nn.init.normal_(self.queries, std=0.02)

    def forward(self, tokens: Tensor, real: Tensor) -> Tensor:
        """``tokens`` ``[B, L, W]``, ``real`` bool ``[B, L]`` → ``[B, n_out]``.

        Raises:
            ValueError: mismatched shapes or a row without real tokens.
        """
        _check_tokens(tokens, real, self.in_features)
        if bool((~real.any(dim=1)).any()):
            raise ValueError("every row needs at least one real token")
        B, L, W = tokens.shape
        H, Q = self.heads, self.queries.shape[1]
        q = self.queries.expand(B, -1, -1).to(tokens.dtype)
        qh = self.q(q).view(B, Q, H, W // H).transpose(1, 2)  # [B, H, Q, W/H]
        k, v = self.kv(self.norm_kv(tokens)).view(B, L, 2, H, W // H).permute(2, 0, 3, 1, 4)
        out = F.scaled_dot_product_attention(
            qh,
            k,
            v,
            attn_mask=real[:, None, None, :],
            dropout_p=self.attn_dropout if self.training else 0.0,
        )
        q = q + self.proj(out.transpose(1, 2).reshape(B, Q, W))
        q = q + self.mlp(self.norm_mlp(q))
        return self.head(self.dropout(self.norm(q).mean(dim=1)))


class TransformerBaseline(nn.Module):
    """The paper's "LanguageBind-Transformer" baseline (LV-MAE Tables 6–8): a small
    transformer trained from scratch on the RAW segment embeddings, without LV-MAE.

    ``Linear(input_dim, width)``, fixed 1-D sin-cos positions (any length: the table is
    computed for the batch's ``L``), a learned [CLS], ``depth`` pre-norm
    :class:`lvmae.mae.model.Block` s over [CLS] + tokens with [PAD] masked out, LayerNorm, and a
    linear layer on the [CLS] output. The sizes are this library's defaults, not the paper's.
    Train it with :func:`lvmae.probes.train.train_probe` (``model=``, an ``"attentive"``
    config) on the segment-embedding sequences.
    """

    input_kind = "tokens"
    wants_cls = False

    def __init__(
        self,
        input_dim: int,
        n_out: int,
        *,
        width: int = 256,
        depth: int = 2,
        heads: int = 8,
        mlp_ratio: float = 4.0,
        dropout: float = 0.0,
    ) -> None:
        super().__init__()
        _check_heads(width, heads)
        if width % 2:
            raise ValueError(f"width must be even (sin-cos positions); got {width}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1; got {depth}")
        self.in_features = input_dim
        self.width = width
        self.input_proj = nn.Linear(input_dim, width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, dropout) for _ in range(depth))
        self.norm = nn.LayerNorm(width)
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(width, n_out)
        _init_weights(self)
        nn.init.normal_(self.cls_token, std=0.02)

    def forward(self, tokens: Tensor, real: Tensor) -> Tensor:
        """``tokens`` ``[B, L, input_dim]`` segment embeddings, ``real`` bool ``[B, L]`` →
        ``[B, n_out]``. Raises ValueError on mismatched shapes."""
        _check_tokens(tokens, real, self.in_features)
        B, L, _ = tokens.shape
        pos = sincos_positions(L, self.width).to(device=tokens.device, dtype=tokens.dtype)
        x = self.input_proj(tokens) + pos
        x = torch.cat([self.cls_token.expand(B, -1, -1).to(x.dtype), x], dim=1)
        attend = torch.cat([real.new_ones(B, 1), real], dim=1)[:, None, None, :]
        for block in self.blocks:
            x = block(x, attend)
        return self.head(self.dropout(self.norm(x[:, 0])))


def build_probe(config: ProbeConfig, width: int, n_out: int) -> nn.Module:
    """The probe for ``config.kind`` on ``width``-wide features with ``n_out`` outputs.

    Raises:
        ValueError: ``config.heads`` does not divide ``width`` (attentive / pooler).
    """
    if config.kind == "linear":
        return LinearProbe(width, n_out, dropout=config.dropout, batch_norm=config.batch_norm)
    if config.kind == "attentive":
        return AttentiveProbe(
            width, n_out, heads=config.heads, dropout=config.dropout, cls_source=config.cls_source
        )
    return PoolerProbe(
        width, n_out, heads=config.heads, num_queries=config.num_queries, dropout=config.dropout
    )
