"""What every probe head shares: the input checks, the mean pool, and :class:`ProbeHead`
with the classifier tail (a norm, dropout, a linear layer) and MAE's init.

Batches of token sequences are ``tokens`` float ``[B, L, W]`` with ``real`` bool ``[B, L]``
(True = real token, False = [PAD]; pads are excluded from attention), padded per batch like
:func:`lvmae.mae.sequences.collate`.
"""

from __future__ import annotations

import torch
from torch import Tensor, nn

from lvmae.mae.model import init_weights

__all__ = ["ProbeHead", "check_heads", "check_tokens", "mean_pool"]


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


def check_tokens(tokens: Tensor, real: Tensor, width: int) -> None:
    """Raises ValueError unless ``tokens`` is ``[B, L, width]`` and ``real`` bool ``[B, L]``."""
    if tokens.dim() != 3 or tokens.shape[-1] != width:
        raise ValueError(f"tokens must be [B, L, {width}]; got {tuple(tokens.shape)}")
    if real.dtype != torch.bool or real.shape != tokens.shape[:2]:
        raise ValueError(
            f"real must be bool {tuple(tokens.shape[:2])}; got {real.dtype} {tuple(real.shape)}"
        )


def check_heads(width: int, heads: int) -> None:
    """Raises ValueError unless ``width`` is a positive multiple of ``heads``."""
    if width < 1 or heads < 1 or width % heads:
        raise ValueError(f"width {width} must be a positive multiple of heads {heads}")


class ProbeHead(nn.Module):
    """Base of the probe heads: the classifier tail and what :func:`lvmae.probes.train.
    train_probe` reads.

    Attributes:
        input_kind: ``"pooled"`` (``forward(pooled)``) or ``"tokens"``
            (``forward(tokens, real[, cls])``).
        wants_cls: ``forward`` needs the frozen encoder's [CLS] as ``cls=``.
        in_features: the width ``W`` of the features it reads.
    """

    input_kind = "tokens"
    wants_cls = False

    def add_classifier(
        self, width: int, n_out: int, dropout: float, norm: nn.Module | None = None
    ) -> None:
        """Register the tail ``norm`` (default ``LayerNorm(width)``), ``dropout`` and
        ``head = Linear(width, n_out)``, read by :meth:`classify`. Called where the
        subclass registers them, so parameter names and init order stay its own."""
        self.norm = nn.LayerNorm(width) if norm is None else norm
        self.dropout = nn.Dropout(dropout)
        self.head = nn.Linear(width, n_out)

    def classify(self, x: Tensor, *, mean_dim: int | None = None) -> Tensor:
        """``x`` ``[B, width]`` → ``[B, n_out]``: the head on the normed, dropped-out ``x``.
        With ``mean_dim``, ``x`` is averaged over that dimension after the norm (the pooler's
        ``[B, Q, width]`` queries)."""
        x = self.norm(x)
        if mean_dim is not None:
            x = x.mean(dim=mean_dim)
        return self.head(self.dropout(x))

    def init_weights(self) -> None:
        """MAE's init (:func:`lvmae.mae.model.init_weights`) over every submodule."""
        init_weights(self)
