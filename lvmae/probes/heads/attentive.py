"""The paper's attentive probe (LV-MAE §8, Table 7): one trainable transformer block over the
frozen encoder's [CLS] + tokens, a LayerNorm and a linear classifier on the [CLS] output.
Registry entry: ``attentive`` in :data:`lvmae.probes.kinds.KINDS`.

Sources: Naiman et al., "LV-MAE", ICCV 2025, §8 (the authors' public ``test_ap_movie_clip.py``
for details the paper leaves open).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lvmae.config import CLS_SOURCES, ProbeConfig
from lvmae.mae.model import Block
from lvmae.probes.heads.base import ProbeHead, check_heads, check_tokens

__all__ = ["AttentiveProbe", "build"]


class AttentiveProbe(ProbeHead):
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

    def __init__(
        self, width: int, n_out: int, *, heads: int = 8, mlp_ratio: float = 4.0,
        dropout: float = 0.0, cls_source: str = "encoder",
    ) -> None:  # fmt: skip
        super().__init__()
        check_heads(width, heads)
        if cls_source not in CLS_SOURCES:
            raise ValueError(f"cls_source must be one of {CLS_SOURCES}; got {cls_source!r}")
        self.in_features = width
        self.cls_source = cls_source
        self.cls_token = nn.Parameter(torch.zeros(1, 1, width)) if cls_source == "learned" else None
        self.block = Block(width, heads, mlp_ratio, dropout)
        self.add_classifier(width, n_out, dropout)
        self.init_weights()
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
        check_tokens(tokens, real, self.in_features)
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
        return self.classify(x[:, 0])


def build(config: ProbeConfig, width: int, n_out: int) -> AttentiveProbe:
    """The attentive probe of ``config`` (``heads``, ``dropout``, ``cls_source``)."""
    return AttentiveProbe(
        width, n_out, heads=config.heads, dropout=config.dropout, cls_source=config.cls_source
    )
