"""The paper's "LanguageBind-Transformer" baseline (LV-MAE Tables 6–8): a small transformer
trained from scratch on the raw segment embeddings, without LV-MAE. Not a probe kind: the
probe stage trains it as the ``transformer`` baseline."""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lvmae.mae.model import Block, sincos_positions
from lvmae.probes.heads.base import ProbeHead, check_heads, check_tokens

__all__ = ["TransformerBaseline"]


class TransformerBaseline(ProbeHead):
    """The paper's "LanguageBind-Transformer" baseline (LV-MAE Tables 6–8): a small
    transformer trained from scratch on the RAW segment embeddings, without LV-MAE.

    ``Linear(input_dim, width)``, fixed 1-D sin-cos positions (any length: the table is
    computed for the batch's ``L``), a learned [CLS], ``depth`` pre-norm
    :class:`lvmae.mae.model.Block` s over [CLS] + tokens with [PAD] masked out, LayerNorm, and a
    linear layer on the [CLS] output. The sizes are this library's defaults, not the paper's.
    Train it with :func:`lvmae.probes.train.train_probe` (``model=``, an ``"attentive"``
    config) on the segment-embedding sequences.
    """

    def __init__(
        self, input_dim: int, n_out: int, *, width: int = 256, depth: int = 2, heads: int = 8,
        mlp_ratio: float = 4.0, dropout: float = 0.0,
    ) -> None:  # fmt: skip
        super().__init__()
        check_heads(width, heads)
        if width % 2:
            raise ValueError(f"width must be even (sin-cos positions); got {width}")
        if depth < 1:
            raise ValueError(f"depth must be >= 1; got {depth}")
        self.in_features = input_dim
        self.width = width
        self.input_proj = nn.Linear(input_dim, width)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width))
        self.blocks = nn.ModuleList(Block(width, heads, mlp_ratio, dropout) for _ in range(depth))
        self.add_classifier(width, n_out, dropout)
        self.init_weights()
        nn.init.normal_(self.cls_token, std=0.02)

    def forward(self, tokens: Tensor, real: Tensor) -> Tensor:
        """``tokens`` ``[B, L, input_dim]`` segment embeddings, ``real`` bool ``[B, L]`` →
        ``[B, n_out]``. Raises ValueError on mismatched shapes."""
        check_tokens(tokens, real, self.in_features)
        B, L, _ = tokens.shape
        pos = sincos_positions(L, self.width).to(device=tokens.device, dtype=tokens.dtype)
        x = self.input_proj(tokens) + pos
        x = torch.cat([self.cls_token.expand(B, -1, -1).to(x.dtype), x], dim=1)
        attend = torch.cat([real.new_ones(B, 1), real], dim=1)[:, None, None, :]
        for block in self.blocks:
            x = block(x, attend)
        return self.classify(x[:, 0])
