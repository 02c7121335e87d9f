"""Probe heads on frozen long-video features (LV-MAE §8), one module per probe kind.

- :mod:`~lvmae.probes.heads.linear`: :class:`LinearProbe`, ``Linear(W, n_out)`` on the
  mean-pooled features (the paper's linear probe).
- :mod:`~lvmae.probes.heads.attentive`: :class:`AttentiveProbe`, the paper's attentive probe:
  one trainable transformer block over the frozen encoder's [CLS] + its tokens, a LayerNorm
  and a linear classifier on the [CLS] output (a learned [CLS] as an option).
- :mod:`~lvmae.probes.heads.pooler`: :class:`PoolerProbe`, V-JEPA's attentive pooler
  (learned query, cross-attention).
- :mod:`~lvmae.probes.heads.baseline`: :class:`TransformerBaseline`, the paper's
  "LanguageBind-Transformer" row, a small transformer trained from scratch on the raw segment
  embeddings (no LV-MAE).
- :mod:`~lvmae.probes.heads.base`: what they share (:class:`ProbeHead`: the norm / dropout /
  linear tail and MAE's init; :func:`mean_pool`; input checks).

:func:`build_probe` builds the head of a :class:`~lvmae.config.ProbeConfig` through the
registry of kinds (:data:`lvmae.probes.kinds.KINDS`): it imports the kind's module and calls
its ``build(config, width, n_out)``. A new kind is a module here and an entry there.

Sources: Naiman et al., "LV-MAE", ICCV 2025, §8 and Tables 6–8 (the authors' public
``test_ap_movie_clip.py`` for details the paper leaves open); Bardes et al., "V-JEPA", 2024
(attentive pooler); docs/design.md "Reference facts".
"""

from __future__ import annotations

import importlib

from torch import nn

from lvmae.config import ProbeConfig
from lvmae.probes.heads.attentive import AttentiveProbe
from lvmae.probes.heads.base import ProbeHead, mean_pool
from lvmae.probes.heads.baseline import TransformerBaseline
from lvmae.probes.heads.linear import LinearProbe
from lvmae.probes.heads.pooler import PoolerProbe
from lvmae.probes.kinds import kind_spec

__all__ = [
    "AttentiveProbe",
    "LinearProbe",
    "PoolerProbe",
    "ProbeHead",
    "TransformerBaseline",
    "build_probe",
    "mean_pool",
]


def build_probe(config: ProbeConfig, width: int, n_out: int) -> nn.Module:
    """The probe for ``config.kind`` on ``width``-wide features with ``n_out`` outputs: the
    ``build`` of the kind's module in :data:`lvmae.probes.kinds.KINDS`.

    Raises:
        ValueError: an unknown kind (the message lists the known ones), or
            ``config.heads`` does not divide ``width`` (attentive / pooler).
    """
    module = importlib.import_module(kind_spec(config.kind).module)
    return module.build(config, width, n_out)
