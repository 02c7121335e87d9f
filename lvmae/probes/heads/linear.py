"""The paper's linear probe (LV-MAE §8): ``Linear(W, n_out)`` on the mean-pooled frozen
features. Registry entry: ``linear`` in :data:`lvmae.probes.kinds.KINDS`."""

from __future__ import annotations

from torch import Tensor, nn

from lvmae.config import ProbeConfig
from lvmae.probes.heads.base import ProbeHead

__all__ = ["LinearProbe", "build"]


class LinearProbe(ProbeHead):
    """The paper's linear probe: ``Linear(W, n_out)`` on the mean-pooled frozen features.

    The mean over real tokens (:func:`~lvmae.probes.heads.base.mean_pool`) is computed once,
    when features are cached; the probe takes that ``pooled`` ``[B, W]`` vector. Optional
    dropout before the linear layer (0 in the paper).
    """

    input_kind = "pooled"

    def __init__(
        self, width: int, n_out: int, *, dropout: float = 0.0, batch_norm: bool = False
    ) -> None:
        super().__init__()
        self.in_features = width
        # MAE's linear probe (He et al., CVPR 2022, §A.2): BatchNorm without affine before the
        # head, i.e. features standardised with batch statistics — still a linear classifier
        # at test time. Off in LV-MAE's recipe.
        norm = nn.BatchNorm1d(width, affine=False) if batch_norm else nn.Identity()
        self.add_classifier(width, n_out, dropout, norm)
        self.init_weights()

    def forward(self, pooled: Tensor) -> Tensor:
        """``pooled`` ``[B, W]`` → ``[B, n_out]`` logits (or regression outputs)."""
        if pooled.dim() != 2 or pooled.shape[1] != self.in_features:
            raise ValueError(f"pooled must be [B, {self.in_features}]; got {tuple(pooled.shape)}")
        return self.classify(pooled)


def build(config: ProbeConfig, width: int, n_out: int) -> LinearProbe:
    """The linear probe of ``config`` (``dropout``, ``batch_norm``)."""
    return LinearProbe(width, n_out, dropout=config.dropout, batch_norm=config.batch_norm)
