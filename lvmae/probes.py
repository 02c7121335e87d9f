"""Probes on frozen long-video features, and the loop that trains them (LV-MAE §8).

After pre-training, the LV-MAE encoder is frozen and its outputs are cached once per video
(:meth:`lvmae.model.LVMAE.encode`): the token sequence ``[L, W]`` with its [CLS] ``[W]``,
and the mean of the tokens over the real positions ``[W]``. Probes are small heads trained on
those cached features, so the encoder never runs inside the probe's epochs:

- :class:`LinearProbe`: ``Linear(W, n_out)`` on the mean-pooled features (the paper's
  linear probe).
- :class:`AttentiveProbe`: the paper's attentive probe, one trainable transformer block
  over [CLS] + tokens, a LayerNorm and a linear classifier on the [CLS] output.
- :class:`PoolerProbe`: V-JEPA's attentive pooler (learned query, cross-attention).
- :class:`TransformerBaseline`: the paper's "LanguageBind-Transformer" row, a small
  transformer trained from scratch on the raw segment embeddings (no LV-MAE).

:func:`train_probe` trains any of them with the paper's protocol: Adam, per-epoch
validation, and test scores reported at the best validation epoch.

Batches of token sequences are ``tokens`` float ``[B, L, W]`` with ``real`` bool ``[B, L]``
(True = real token, False = [PAD]; pads are excluded from attention), padded per batch like
:func:`lvmae.sequences.collate`.

Sources: Naiman et al., "LV-MAE", ICCV 2025, §8 and Tables 6–8 (probe protocol and recipes;
the authors' public ``test_lp_movie_clip.py`` / ``test_ap_movie_clip.py`` for details the
paper leaves open); Bardes et al., "V-JEPA", 2024 (attentive pooler); DESIGN.md
"Reference facts".
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lvmae.metrics import regression_report, top_k_accuracy
from lvmae.model import Block, sincos_positions
from lvmae.sequences import collate

__all__ = [
    "CLS_SOURCES",
    "PROBE_KINDS",
    "TASKS",
    "VAL_METRIC",
    "AttentiveProbe",
    "LinearProbe",
    "PoolerProbe",
    "ProbeConfig",
    "ProbeData",
    "ProbeResult",
    "TransformerBaseline",
    "build_probe",
    "mean_pool",
    "train_probe",
]

PROBE_KINDS = ("linear", "attentive", "pooler")
TASKS = ("classification", "regression")
CLS_SOURCES = ("learned", "encoder")

# The validation metric that picks the best epoch, and whether higher or lower is better
# (e.g. for Ray Tune's ``metric=`` / ``mode=``).
VAL_METRIC: dict[str, tuple[str, str]] = {
    "classification": ("val_top1", "max"),
    "regression": ("val_mse", "min"),
}

# The paper's recipes (LV-MAE §8; DESIGN.md "Reference facts"). The pooler has no recipe of
# its own in the paper; it reuses the attentive probe's.
_PAPER: dict[str, dict[str, Any]] = {
    "linear": dict(lr=1e-4, epochs=30, batch_size=16, gamma=None),
    "attentive": dict(lr=1e-3, epochs=20, batch_size=16, gamma=0.9),
    "pooler": dict(lr=1e-3, epochs=20, batch_size=16, gamma=0.9),
}

_EVAL_BATCH = 64  # videos per forward pass when scoring val/test (no effect on results)


# --------------------------------------------------------------------------------- modules


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

    The block is :class:`lvmae.model.Block` (pre-norm, ``heads`` heads, MLP ratio
    ``mlp_ratio``); [PAD] tokens are masked out of attention, so outputs do not depend on
    how much padding a batch carries. The [CLS] slot is filled by:

    - ``cls_source="learned"`` (default): a learned token prepended to the frozen tokens.
      Needs only the cached token sequence.
    - ``cls_source="encoder"``: the frozen encoder's own [CLS] output, passed as
      ``forward(..., cls=...)``. This is what the authors' public code does (it feeds the
      encoder's whole output, [CLS] first, to the block).

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
        cls_source: str = "learned",
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
    :class:`lvmae.model.Block` s over [CLS] + tokens with [PAD] masked out, LayerNorm, and a
    linear layer on the [CLS] output. The sizes are this library's defaults, not the paper's.
    Train it with :func:`train_probe` (``model=``, an ``"attentive"`` config) on the
    segment-embedding sequences.
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


# ---------------------------------------------------------------------------------- config


@dataclass(frozen=True)
class ProbeConfig:
    """How to train one probe. Fields left as None take the paper's value for ``kind``.

    Paper recipes (LV-MAE §8; DESIGN.md "Reference facts"): linear, Adam lr 1e-4, 30 epochs,
    batch 16, constant lr; attentive, Adam lr 1e-3, ExponentialLR γ 0.9 (stepped per epoch),
    20 epochs, batch 16. The pooler reuses the attentive recipe. (The authors' public code
    differs: AMSGrad, weight decay 1e-3, cosine schedule; this follows the paper's text.)

    Attributes:
        kind: one of :data:`PROBE_KINDS`; picks the model (:func:`build_probe`) and whether
            it takes pooled vectors (``linear``) or token sequences.
        lr: Adam learning rate.
        epochs: passes over the training split.
        batch_size: videos per step.
        weight_decay: Adam's (L2) weight decay; 0 in the paper.
        dropout: probe dropout; 0 in the paper.
        gamma: per-epoch ExponentialLR factor in ``(0, 1]``; None = constant lr.
        seed: seeds the probe's init, the shuffling and dropout.
        heads: attention heads of the attentive / pooler probes (8, as in the authors'
            code); must divide the feature width.
        cls_source: the attentive probe's [CLS]: ``"learned"`` or ``"encoder"`` (see
            :class:`AttentiveProbe`).
        num_queries: learned queries of the pooler.
        batch_norm: the linear probe standardises its input with a BatchNorm without affine
            parameters, as MAE's linear probe does (off in LV-MAE's recipe).

    Raises:
        ValueError: unknown ``kind`` / ``cls_source`` or out-of-range values.
    """

    kind: str
    lr: float | None = None
    epochs: int | None = None
    batch_size: int | None = None
    weight_decay: float = 0.0
    dropout: float = 0.0
    gamma: float | None = None
    seed: int = 0
    heads: int = 8
    cls_source: str = "learned"
    num_queries: int = 1
    batch_norm: bool = False

    def __post_init__(self) -> None:
        if self.kind not in PROBE_KINDS:
            raise ValueError(f"unknown probe kind {self.kind!r}; valid kinds: {PROBE_KINDS}")
        for name, value in _PAPER[self.kind].items():
            if getattr(self, name) is None:
                object.__setattr__(self, name, value)
        if not (isinstance(self.lr, (int, float)) and self.lr > 0 and math.isfinite(self.lr)):
            raise ValueError(f"ProbeConfig.lr must be a positive number; got {self.lr!r}")
        for name in ("epochs", "batch_size", "heads", "num_queries"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"ProbeConfig.{name} must be a positive int; got {value!r}")
        if not self.weight_decay >= 0:
            raise ValueError(f"ProbeConfig.weight_decay must be >= 0; got {self.weight_decay}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"ProbeConfig.dropout must be in [0, 1); got {self.dropout}")
        if self.gamma is not None and not 0.0 < self.gamma <= 1.0:
            raise ValueError(f"ProbeConfig.gamma must be None or in (0, 1]; got {self.gamma}")
        if self.cls_source not in CLS_SOURCES:
            raise ValueError(f"ProbeConfig.cls_source must be one of {CLS_SOURCES}")

    @classmethod
    def paper(cls, kind: str) -> ProbeConfig:
        """The paper's recipe for ``kind`` (see the class docstring)."""
        return cls(kind=kind)

    def to_dict(self) -> dict[str, Any]:
        """The resolved config as a JSON-able dict (for MLflow and run manifests)."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> ProbeConfig:
        """Inverse of :meth:`to_dict`; ValueError on unknown keys or bad values."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise ValueError(f"unknown ProbeConfig keys {unknown}; known: {sorted(known)}")
        return cls(**d)


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


# ------------------------------------------------------------------------------------ data


@dataclass
class ProbeData:
    """One split of cached frozen features and their targets.

    Attributes:
        y: ``[N]`` int64 class ids (classification) or float targets (regression).
        pooled: float32 ``[N, W]`` mean-pooled features (linear probe), or None; when None,
            the linear probe uses the mean of each ``tokens`` sequence.
        tokens: N float32 arrays ``[L_i, W]`` (real tokens only, ``L_i >= 1``) for token
            probes, or None.
        cls: float32 ``[N, W]`` the encoder's [CLS] per video, or None; needed only by an
            attentive probe with ``cls_source="encoder"``.

    Raises:
        ValueError: no features at all, or row counts / shapes that disagree with ``y``.
    """

    y: np.ndarray
    pooled: np.ndarray | None = None
    tokens: list[np.ndarray] | None = None
    cls: np.ndarray | None = None

    def __post_init__(self) -> None:
        self.y = np.asarray(self.y)
        if self.y.ndim != 1:
            raise ValueError(f"y must be [N]; got shape {self.y.shape}")
        n = self.y.shape[0]
        if self.pooled is None and self.tokens is None:
            raise ValueError("ProbeData needs pooled features, token sequences, or both")
        for name in ("pooled", "cls"):
            value = getattr(self, name)
            if value is None:
                continue
            arr = np.asarray(value, dtype=np.float32)
            if arr.ndim != 2 or arr.shape[0] != n:
                raise ValueError(f"{name} must be [N={n}, W]; got shape {arr.shape}")
            setattr(self, name, arr)
        if self.tokens is not None:
            seqs = [np.asarray(t, dtype=np.float32) for t in self.tokens]
            if len(seqs) != n:
                raise ValueError(f"got {len(seqs)} token sequences for {n} targets")
            for i, s in enumerate(seqs):
                if s.ndim != 2 or s.shape[0] == 0:
                    raise ValueError(f"token sequence {i} must be [L >= 1, W]; got {s.shape}")
            if len({s.shape[1] for s in seqs}) > 1:
                raise ValueError("token sequences have different widths W")
            self.tokens = seqs

    def __len__(self) -> int:
        return int(self.y.shape[0])

    def pooled_features(self) -> np.ndarray:
        """``[N, W]``: ``pooled`` if given, else the mean of each token sequence."""
        if self.pooled is not None:
            return self.pooled
        assert self.tokens is not None  # guaranteed by __post_init__
        if not self.tokens:
            return np.zeros((0, 0), dtype=np.float32)
        return np.stack([s.mean(axis=0) for s in self.tokens]).astype(np.float32)


@dataclass
class ProbeResult:
    """What :func:`train_probe` returns.

    Attributes:
        best_epoch: 0-based epoch with the best validation metric (the first, on ties).
        val_metric: that epoch's validation metric (:data:`VAL_METRIC`: ``val_top1`` for
            classification, ``val_mse`` in target units for regression).
        test_metrics: test scores of the best-validation-epoch weights (the paper's
            protocol): ``top1`` (+ ``top5`` when ≥ 5 classes), ``loss``, ``n`` for
            classification; ``mse``, ``mae``, ``n`` for regression.
        history: per epoch, ``epoch``, ``lr``, ``train_loss`` and the validation metrics
            (``val_loss``, ``val_top1``, ``val_top5`` / ``val_mse``, ``val_mae``).
        test_predictions: ``[N_test]`` predicted class ids (int64) or values (float64, target
            units) at the best epoch.
        test_scores: ``[N_test, C]`` float32 test logits at the best epoch (classification;
            None for regression).
        metric: the name of ``val_metric``.
        model: the trained probe, best-epoch weights loaded.
    """

    best_epoch: int
    val_metric: float
    test_metrics: dict[str, float]
    history: list[dict[str, float]]
    test_predictions: np.ndarray
    test_scores: np.ndarray | None = None
    metric: str = "val_top1"
    model: nn.Module | None = field(default=None, repr=False)


# -------------------------------------------------------------------------------- training


class _Split:
    """A split's model inputs, ready to batch: pooled ``[N, W]`` or token sequences."""

    def __init__(self, name: str, data: ProbeData, input_kind: str, wants_cls: bool) -> None:
        if len(data) == 0:
            raise ValueError(f"the {name} split is empty: every split needs at least one video")
        self.name = name
        self.pooled: np.ndarray | None = None
        self.tokens: list[np.ndarray] | None = None
        self.cls: np.ndarray | None = None
        if input_kind == "pooled":
            self.pooled = data.pooled_features()
            self.width = self.pooled.shape[1]
        else:
            if data.tokens is None:
                raise ValueError(
                    f"the {name} split has no token sequences, which token probes need"
                )
            self.tokens = data.tokens
            self.width = self.tokens[0].shape[1]
            self.lengths = np.array([len(t) for t in self.tokens])
            if wants_cls:
                if data.cls is None:
                    raise ValueError(
                        f"the {name} split has no encoder [CLS] features (ProbeData.cls), "
                        "which an attentive probe with cls_source='encoder' needs"
                    )
                if data.cls.shape[1] != self.width:
                    raise ValueError(
                        f"{name}: cls width {data.cls.shape[1]} != token width {self.width}"
                    )
                self.cls = data.cls
        self.n = len(data)

    def batch(self, idx: np.ndarray, device: torch.device) -> tuple[Tensor, ...]:
        """Model inputs for rows ``idx``: ``(pooled,)`` or ``(tokens, real[, cls])``."""
        if self.pooled is not None:
            return (torch.from_numpy(self.pooled[idx]).to(device),)
        assert self.tokens is not None
        x, real = collate([self.tokens[i] for i in idx])
        out = [torch.from_numpy(x).to(device), torch.from_numpy(real).to(device)]
        if self.cls is not None:
            out.append(torch.from_numpy(self.cls[idx]).to(device))
        return tuple(out)

    def eval_order(self) -> np.ndarray:
        """Row order for scoring: by length, so each batch carries little padding."""
        if self.tokens is None:
            return np.arange(self.n)
        return np.argsort(self.lengths, kind="stable")


def _call(model: nn.Module, inputs: tuple[Tensor, ...]) -> Tensor:
    if len(inputs) == 3:
        return model(inputs[0], inputs[1], cls=inputs[2])
    return model(*inputs)


@torch.no_grad()
def _predict(model: nn.Module, split: _Split, device: torch.device) -> np.ndarray:
    """Model outputs ``[N, n_out]`` float32 for the whole split, in the split's row order."""
    model.eval()
    order = split.eval_order()
    outputs = []
    for start in range(0, split.n, _EVAL_BATCH):
        idx = order[start : start + _EVAL_BATCH]
        outputs.append(_call(model, split.batch(idx, device)).float().cpu().numpy())
    out = np.empty((split.n, outputs[0].shape[1]), dtype=np.float32)
    out[order] = np.concatenate(outputs)
    return out


def _targets(name: str, y: np.ndarray, task: str, n_classes: int | None) -> np.ndarray:
    if task == "classification":
        if not np.issubdtype(y.dtype, np.integer):
            raise ValueError(
                f"{name}: classification targets must be integer class ids, got dtype "
                f"{y.dtype}; use task='regression' for real-valued targets"
            )
        y = y.astype(np.int64)
        if n_classes is not None and (y.min() < 0 or y.max() >= n_classes):
            raise ValueError(
                f"{name}: class ids must be in [0, {n_classes}); got min {y.min()}, max {y.max()}"
            )
        return y
    y = y.astype(np.float64)
    if not np.all(np.isfinite(y)):
        raise ValueError(f"{name}: regression targets must be finite")
    return y


def _classification_metrics(logits: np.ndarray, y: np.ndarray, prefix: str) -> dict[str, float]:
    C = logits.shape[1]
    loss = F.cross_entropy(torch.from_numpy(logits).double(), torch.from_numpy(y)).item()
    metrics = {f"{prefix}loss": float(loss), f"{prefix}top1": top_k_accuracy(logits, y, 1)}
    if C >= 5:
        metrics[f"{prefix}top5"] = top_k_accuracy(logits, y, 5)
    return metrics


def train_probe(
    train: ProbeData,
    val: ProbeData,
    test: ProbeData,
    *,
    config: ProbeConfig,
    task: str = "classification",
    n_classes: int | None = None,
    device: str | torch.device = "cpu",
    on_epoch: Callable[[int, dict[str, float]], None] | None = None,
    model: nn.Module | None = None,
) -> ProbeResult:
    """Train a probe on cached frozen features; report test scores at the best val epoch.

    The paper's protocol (LV-MAE §8, Tables 6–8): Adam (``config.lr``, ``weight_decay``),
    an optional per-epoch ExponentialLR (``config.gamma``), ``config.epochs`` passes over
    shuffled training batches of ``config.batch_size`` videos, a validation pass after every
    epoch; the weights of the best validation epoch (the first, on ties) are kept, loaded
    back at the end, and scored on the test split. Token batches are padded per batch
    (:func:`lvmae.sequences.collate`); pads are masked out of attention.

    - ``task="classification"``: cross-entropy on ``n_classes`` logits; the validation
      metric is top-1 accuracy (higher is better).
    - ``task="regression"``: MSE on targets standardised with the training split's mean and
      std (one output); validation and test MSE/MAE are reported in the targets' own units;
      the validation metric is MSE (lower is better).

    Deterministic given ``config.seed`` on a given device (the probe's init, shuffling and
    dropout draw from generators seeded here; the caller's global RNG state is restored).

    Args:
        train, val, test: the splits. ``linear`` probes read ``pooled`` (or the mean of
            ``tokens``); attentive / pooler probes read ``tokens`` (and ``cls`` for
            ``cls_source="encoder"``).
        config: the recipe; ``config.kind`` picks the probe unless ``model`` is given.
        task: ``"classification"`` or ``"regression"``.
        n_classes: number of classes; default: 1 + the largest class id in any split.
        device: where to train (``"cpu"``, ``"cuda"``, ...).
        on_epoch: called after each epoch as ``on_epoch(epoch, metrics)`` with the 0-based
            epoch and that epoch's history row (e.g. to ``ray.tune.report`` it for ASHA).
        model: a probe to train instead of ``build_probe(config, W, n_out)`` (e.g. a
            :class:`TransformerBaseline`); it is trained in place and must output
            ``[B, n_out]``. Its ``input_kind`` (``"pooled"`` / ``"tokens"``) and
            ``wants_cls`` attributes, when present, say what it is fed.

    Returns:
        A :class:`ProbeResult`.

    Raises:
        ValueError: unknown ``task``, an empty split, missing features, feature widths
            differing between splits or from the model, bad targets (non-integer or
            out-of-range class ids, fewer than 2 classes, non-finite values).
        FloatingPointError: a non-finite training loss.
    """
    if task not in TASKS:
        raise ValueError(f"task must be one of {TASKS}; got {task!r}")
    if not isinstance(config, ProbeConfig):
        raise ValueError(f"config must be a ProbeConfig; got {type(config).__name__}")
    dev = torch.device(device)
    default_input = "pooled" if config.kind == "linear" else "tokens"
    default_cls = config.kind == "attentive" and config.cls_source == "encoder"
    input_kind = getattr(model, "input_kind", default_input) if model is not None else default_input
    wants_cls = bool(getattr(model, "wants_cls", False)) if model is not None else default_cls
    if input_kind not in ("pooled", "tokens"):
        raise ValueError(f"model.input_kind must be 'pooled' or 'tokens'; got {input_kind!r}")

    named = {"train": train, "val": val, "test": test}
    splits = {name: _Split(name, data, input_kind, wants_cls) for name, data in named.items()}
    width = splits["train"].width
    for name, split in splits.items():
        if split.width != width:
            raise ValueError(
                f"feature width mismatch: train has W={width}, {name} has W={split.width}"
            )
    in_features = getattr(model, "in_features", width) if model is not None else width
    if in_features != width:
        raise ValueError(f"the model expects {in_features}-wide features; the data has {width}")

    ys = {name: _targets(name, data.y, task, n_classes) for name, data in named.items()}
    if task == "classification":
        if n_classes is None:
            n_classes = 1 + max(int(y.max()) for y in ys.values())
        if n_classes < 2:
            raise ValueError(f"classification needs at least 2 classes; got {n_classes}")
        n_out = n_classes
        y_mean, y_std = 0.0, 1.0
        train_y = torch.from_numpy(ys["train"])
    else:
        n_out = 1
        y_mean = float(ys["train"].mean())
        y_std = float(ys["train"].std()) or 1.0
        train_y = torch.from_numpy((ys["train"] - y_mean) / y_std).float()

    metric_name, mode = VAL_METRIC[task]

    def score(out: np.ndarray, y: np.ndarray, prefix: str) -> dict[str, float]:
        if task == "classification":
            return _classification_metrics(out, y, prefix)
        report = regression_report(out[:, 0].astype(np.float64) * y_std + y_mean, y)
        return {f"{prefix}mse": report["mse"], f"{prefix}mae": report["mae"]}

    devices = []
    if dev.type == "cuda":
        devices = [dev.index if dev.index is not None else torch.cuda.current_device()]
    with torch.random.fork_rng(devices=devices):
        torch.manual_seed(config.seed)
        probe = model if model is not None else build_probe(config, width, n_out)
        probe.to(dev)
        params = [p for p in probe.parameters() if p.requires_grad]
        optimizer = torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
        scheduler = (
            torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=config.gamma)
            if config.gamma is not None
            else None
        )
        rng = np.random.default_rng(config.seed)
        history: list[dict[str, float]] = []
        best_epoch, best_value, best_state = -1, math.nan, None
        tr = splits["train"]
        for epoch in range(config.epochs):
            probe.train()
            lr = optimizer.param_groups[0]["lr"]
            total, seen = 0.0, 0
            order = rng.permutation(tr.n)
            for start in range(0, tr.n, config.batch_size):
                idx = order[start : start + config.batch_size]
                out = _call(probe, tr.batch(idx, dev))
                target = train_y[idx].to(dev)
                if task == "classification":
                    loss = F.cross_entropy(out, target)
                else:
                    loss = F.mse_loss(out[:, 0], target)
                if not torch.isfinite(loss):
                    raise FloatingPointError(
                        f"non-finite training loss {loss.item()} at epoch {epoch}; lower the lr"
                    )
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                total += loss.item() * len(idx)
                seen += len(idx)
            if scheduler is not None:
                scheduler.step()
            row: dict[str, float] = {"epoch": epoch, "lr": lr, "train_loss": total / seen}
            row.update(score(_predict(probe, splits["val"], dev), ys["val"], "val_"))
            history.append(row)
            value = row[metric_name]
            better = value > best_value if mode == "max" else value < best_value
            if best_state is None or better:
                best_epoch, best_value = epoch, value
                best_state = {k: v.detach().clone() for k, v in probe.state_dict().items()}
            if on_epoch is not None:
                on_epoch(epoch, dict(row))

    assert best_state is not None  # epochs >= 1
    probe.load_state_dict(best_state)
    test_out = _predict(probe, splits["test"], dev)
    test_metrics = score(test_out, ys["test"], "")
    test_metrics["n"] = splits["test"].n
    if task == "classification":
        predictions = test_out.argmax(axis=1).astype(np.int64)
        scores: np.ndarray | None = test_out
    else:
        predictions = test_out[:, 0].astype(np.float64) * y_std + y_mean
        scores = None
    return ProbeResult(
        best_epoch=best_epoch,
        val_metric=float(best_value),
        test_metrics=test_metrics,
        history=history,
        test_predictions=predictions,
        test_scores=scores,
        metric=metric_name,
        model=probe,
    )
