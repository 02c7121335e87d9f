"""The registry of probe kinds: each kind's name, the module of its head and the paper's
recipe, as plain data (LV-MAE §8, Tables 6–8; docs/design.md "Plug-ins").

Nothing here imports torch or any project module but :mod:`lvmae.errors`, so
:mod:`lvmae.config` validates probe names and fills in the paper's recipes from
:data:`KINDS` without loading a model.
The torch side, :func:`lvmae.probes.heads.build_probe`, imports a kind's ``module`` and
calls its ``build(config, width, n_out)``.

Adding a probe kind: a module under ``lvmae/probes/heads/`` with its head class and a
``build`` function, and one entry here.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any, Literal

from lvmae.errors import UnknownNameError

__all__ = ["KINDS", "PROBE_KINDS", "ProbeKindSpec", "kind_spec"]


@dataclass(frozen=True)
class ProbeKindSpec:
    """One probe kind.

    Attributes:
        module: the dotted module of its head; it defines
            ``build(config: ProbeConfig, width: int, n_out: int) -> nn.Module``.
        recipe: the paper's recipe fields for this kind (``lr``, ``epochs``, ``batch_size``,
            ``gamma``), filled into a :class:`~lvmae.config.ProbeConfig` where unset.
        inputs: what the head is fed: ``"pooled"`` (``[B, W]`` mean-pooled features) or
            ``"tokens"`` (``[B, L, W]`` token sequences with their ``real`` mask).
        reads_cls: with ``cls_source="encoder"`` the head also takes the frozen encoder's
            [CLS] ``[B, W]``; with ``cls_source="learned"`` it learns its own and its results
            row is named ``<kind>-learned``.
    """

    module: str
    recipe: Mapping[str, Any] = field(default_factory=dict)
    inputs: Literal["pooled", "tokens"] = "tokens"
    reads_cls: bool = False

    def __post_init__(self) -> None:
        object.__setattr__(self, "recipe", MappingProxyType(dict(self.recipe)))


KINDS: Mapping[str, ProbeKindSpec] = MappingProxyType(
    {
        "linear": ProbeKindSpec(
            "lvmae.probes.heads.linear",
            {"lr": 1e-4, "epochs": 30, "batch_size": 16, "gamma": None},
            inputs="pooled",
        ),
        "attentive": ProbeKindSpec(
            "lvmae.probes.heads.attentive",
            {"lr": 1e-3, "epochs": 20, "batch_size": 16, "gamma": 0.9},
            reads_cls=True,
        ),
        # The paper has no pooler recipe; it reuses the attentive probe's.
        "pooler": ProbeKindSpec(
            "lvmae.probes.heads.pooler",
            {"lr": 1e-3, "epochs": 20, "batch_size": 16, "gamma": 0.9},
        ),
    }
)
"""Probe kind → :class:`ProbeKindSpec`, in the order the CLI and docs list them."""

PROBE_KINDS: tuple[str, ...] = tuple(KINDS)
"""The known probe kinds' names."""


def kind_spec(kind: str) -> ProbeKindSpec:
    """The registry entry of ``kind``.

    Raises:
        UnknownNameError (a ``ValueError``): an unknown kind; the message lists the known ones.
    """
    if kind not in KINDS:
        raise UnknownNameError("probe kind", kind, PROBE_KINDS)
    return KINDS[kind]
