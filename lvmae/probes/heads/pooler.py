"""V-JEPA's attentive pooler as a probe on frozen tokens (Bardes et al., 2024): learned
queries cross-attend to the tokens. Registry entry: ``pooler`` in
:data:`lvmae.probes.kinds.KINDS`."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from lvmae.config import ProbeConfig
from lvmae.probes.heads.base import ProbeHead, check_heads, check_tokens

__all__ = ["PoolerProbe", "build"]


class PoolerProbe(ProbeHead):
    """V-JEPA's attentive pooler (Bardes et al., 2024) as a probe on frozen tokens.

    ``num_queries`` learned queries cross-attend to the LayerNorm-ed tokens ([PAD] keys
    masked out), ``q = q + proj(attn(q, norm(x)))`` then ``q = q + mlp(norm(q))``, as in
    V-JEPA's ``CrossAttentionBlock``; the queries' outputs are averaged, LayerNorm-ed, and a
    linear layer gives the outputs. ``dropout`` applies on the attention weights, in the MLP
    and before the linear layer. Every row needs at least one real token.
    """

    def __init__(
        self, width: int, n_out: int, *, heads: int = 8, mlp_ratio: float = 4.0,
        num_queries: int = 1, dropout: float = 0.0,
    ) -> None:  # fmt: skip
        super().__init__()
        check_heads(width, heads)
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
        self.add_classifier(width, n_out, dropout)
        self.init_weights()
        nn.init.normal_(self.queries, std=0.02)

    def forward(self, tokens: Tensor, real: Tensor) -> Tensor:
        """``tokens`` ``[B, L, W]``, ``real`` bool ``[B, L]`` → ``[B, n_out]``.

        Raises:
            ValueError: mismatched shapes or a row without real tokens.
        """
        check_tokens(tokens, real, self.in_features)
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
        return self.classify(q, mean_dim=1)


def build(config: ProbeConfig, width: int, n_out: int) -> PoolerProbe:
    """The pooler of ``config`` (``heads``, ``num_queries``, ``dropout``)."""
    return PoolerProbe(
        width, n_out, heads=config.heads, num_queries=config.num_queries, dropout=config.dropout
    )
